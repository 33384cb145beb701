//! Request signing for the TOP gateway (`docs/top-protocol.md` §2).
//!
//! The signature covers every parameter that is sent except `sign` itself,
//! system and business parameters alike. Empty values are dropped (the Java
//! SDK never sends them), the remaining names are sorted in byte order, and
//! `name1value1name2value2…` is built from the *decoded* values. That string is
//! then digested with the app secret according to `sign_method` and written as
//! uppercase hex. Everything here is pure so it can be checked against the
//! published known-answer vectors.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The digest named by the `sign_method` system parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SignMethod {
    /// `MD5(secret + S + secret)`.
    #[serde(rename = "md5")]
    Md5,
    /// `HMAC-MD5(key = secret, S)`; no secret wrapping.
    #[serde(rename = "hmac")]
    HmacMd5,
    /// `HMAC-SHA256(key = secret, S)`; the official Java and Go SDKs' default.
    #[serde(rename = "hmac-sha256")]
    #[default]
    HmacSha256,
}

impl SignMethod {
    /// Every method, in the order the docs list them.
    pub const ALL: [SignMethod; 3] = [SignMethod::Md5, SignMethod::HmacMd5, SignMethod::HmacSha256];

    /// The value sent as `sign_method`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignMethod::Md5 => "md5",
            SignMethod::HmacMd5 => "hmac",
            SignMethod::HmacSha256 => "hmac-sha256",
        }
    }
}

impl fmt::Display for SignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `sign_method` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sign method {0:?}: expected md5, hmac or hmac-sha256")]
pub struct UnknownSignMethod(pub String);

impl FromStr for SignMethod {
    type Err = UnknownSignMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "md5" => Ok(SignMethod::Md5),
            "hmac" => Ok(SignMethod::HmacMd5),
            "hmac-sha256" => Ok(SignMethod::HmacSha256),
            other => Err(UnknownSignMethod(other.to_owned())),
        }
    }
}

/// How empty values are treated when the string to sign is built.
///
/// The official Java and .NET SDKs drop them (and never send them); the
/// official PHP and Python SDKs sign them as `name` followed by nothing. paysync
/// itself never sends an empty value, so this only matters to the emulator,
/// which accepts either style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyValues {
    Drop,
    Keep,
}

/// Builds the string that is digested: sorted `name + value` pairs, `sign` excluded.
pub fn string_to_sign<'a, I>(params: I, empty: EmptyValues) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut pairs: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(name, value)| {
            *name != "sign"
                && !name.is_empty()
                && (empty == EmptyValues::Keep || !value.trim().is_empty())
        })
        .collect();
    // `str` ordering is byte order, which is what every SDK uses for ASCII names.
    pairs.sort_unstable();
    let mut out = String::with_capacity(pairs.iter().map(|(n, v)| n.len() + v.len()).sum());
    for (name, value) in pairs {
        out.push_str(name);
        out.push_str(value);
    }
    out
}

/// Digests an already built string to sign; returns uppercase hex.
pub fn digest(method: SignMethod, secret: &SecretString, string_to_sign: &str) -> String {
    let secret = secret.expose_secret().as_bytes();
    let bytes: Vec<u8> = match method {
        SignMethod::Md5 => {
            let mut hasher = Md5::new();
            hasher.update(secret);
            hasher.update(string_to_sign.as_bytes());
            hasher.update(secret);
            hasher.finalize().to_vec()
        }
        SignMethod::HmacMd5 => {
            // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
            let mut mac = Hmac::<Md5>::new_from_slice(secret).expect("HMAC takes any key length");
            mac.update(string_to_sign.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        SignMethod::HmacSha256 => {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
            mac.update(string_to_sign.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    upper_hex(&bytes)
}

/// Signs a parameter set the way the official Java SDK does.
pub fn sign<'a, I>(method: SignMethod, secret: &SecretString, params: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    digest(method, secret, &string_to_sign(params, EmptyValues::Drop))
}

/// The exact bytes that are hashed, for `paysync sign --show-base`: for md5 the
/// secret wraps the string, and is shown as `<secret>` so it never reaches a terminal.
pub fn describe_base(method: SignMethod, string_to_sign: &str) -> String {
    match method {
        SignMethod::Md5 => format!("<secret>{string_to_sign}<secret>"),
        SignMethod::HmacMd5 | SignMethod::HmacSha256 => string_to_sign.to_owned(),
    }
}

fn upper_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> SecretString {
        SecretString::from("helloworld")
    }

    /// The parameters of the published vector (open.taobao.com docId=101617).
    fn published_params(method: SignMethod) -> Vec<(&'static str, &'static str)> {
        vec![
            ("method", "taobao.item.seller.get"),
            ("app_key", "12345678"),
            ("session", "test"),
            ("timestamp", "2016-01-01 12:00:00"),
            ("format", "json"),
            ("v", "2.0"),
            ("sign_method", method.as_str()),
            ("fields", "num_iid,title,nick,price,num"),
            ("num_iid", "11223344"),
        ]
    }

    #[test]
    fn published_md5_vector_matches() {
        let params = published_params(SignMethod::Md5);
        assert_eq!(
            string_to_sign(params.iter().copied(), EmptyValues::Drop),
            "app_key12345678fieldsnum_iid,title,nick,price,numformatjsonmethodtaobao.item.seller.getnum_iid11223344sessiontestsign_methodmd5timestamp2016-01-01 12:00:00v2.0"
        );
        assert_eq!(
            sign(SignMethod::Md5, &secret(), params),
            "66987CB115214E59E6EC978214934FB8"
        );
    }

    #[test]
    fn published_parameters_under_hmac_methods_match_reference_values() {
        assert_eq!(
            sign(
                SignMethod::HmacMd5,
                &secret(),
                published_params(SignMethod::HmacMd5)
            ),
            "D56D7858309C31B6251083A874D48273"
        );
        assert_eq!(
            sign(
                SignMethod::HmacSha256,
                &secret(),
                published_params(SignMethod::HmacSha256)
            ),
            "04DB15AD0774D5CFCE2C837DE43E3FCEA9011ED74F3038FB6AB5F3C4CEA119E8"
        );
    }

    const DTO: &str = r#"{"car_no":"浙A888888","order_id":"BK212132334343","order_type":1,"park_id":"p123456","pay_fee":1000,"pay_method":"WX","pay_order_id":"2020111112323232323","pay_time":"2020-10-10 20:00:00"}"#;

    fn payinfo_params(method: SignMethod) -> Vec<(&'static str, &'static str)> {
        vec![
            ("app_key", "12345678"),
            ("method", "taobao.taojie.parking.order.payinfo.sync"),
            ("timestamp", "2020-10-10 20:00:05"),
            ("format", "json"),
            ("v", "2.0"),
            ("sign_method", method.as_str()),
            ("pay_order_info_dto", DTO),
        ]
    }

    #[test]
    fn payinfo_vectors_match_for_every_method() {
        let expected = [
            (SignMethod::Md5, "EF7AB1CCFA9B58D34111433BC6CFF80D", 344),
            (SignMethod::HmacMd5, "68F30F5AC06C74DDD0C2D59026F15CB3", 325),
            (
                SignMethod::HmacSha256,
                "FF6612D01176548FBC8727F5C594D52FD37843F06649AAEE4EC9D60DB94AD112",
                332,
            ),
        ];
        for (method, sign_hex, hashed_len) in expected {
            let params = payinfo_params(method);
            let base = string_to_sign(params.iter().copied(), EmptyValues::Drop);
            let hashed = match method {
                SignMethod::Md5 => base.len() + 2 * "helloworld".len(),
                _ => base.len(),
            };
            assert_eq!(hashed, hashed_len, "{method}: length of the hashed string");
            assert_eq!(sign(method, &secret(), params), sign_hex, "{method}");
        }
    }

    #[test]
    fn sign_and_empty_values_are_excluded() {
        let with_extras = [
            ("b", "2"),
            ("sign", "XYZ"),
            ("a", "1"),
            ("empty", ""),
            ("blank", "  "),
        ];
        assert_eq!(string_to_sign(with_extras, EmptyValues::Drop), "a1b2");
        assert_eq!(
            string_to_sign(with_extras, EmptyValues::Keep),
            "a1b2blank  empty"
        );
    }

    #[test]
    fn names_sort_in_byte_order_not_case_insensitively() {
        let params = [("b", "1"), ("B", "2"), ("a_b", "3"), ("ab", "4")];
        assert_eq!(string_to_sign(params, EmptyValues::Drop), "B2a_b3ab4b1");
    }

    #[test]
    fn sign_method_round_trips_through_its_wire_name() {
        for method in SignMethod::ALL {
            assert_eq!(method.as_str().parse::<SignMethod>(), Ok(method));
        }
        assert!("sha1".parse::<SignMethod>().is_err());
    }

    #[test]
    fn show_base_never_prints_the_secret() {
        let base = describe_base(SignMethod::Md5, "a1");
        assert_eq!(base, "<secret>a1<secret>");
        assert!(!base.contains("helloworld"));
    }
}
