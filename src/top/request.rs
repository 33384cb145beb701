//! Building the signed HTTP request for `taobao.taojie.parking.order.payinfo.sync`.
//!
//! The business parameter `pay_order_info_dto` is one form field whose value
//! is compact JSON with snake_case keys, absent optionals omitted and
//! `pay_time` written as GMT+8 `yyyy-MM-dd HH:mm:ss` (`docs/top-protocol.md` §3.2).
//! The business parameter goes in a form-urlencoded UTF-8 body; the system
//! parameters, the signature among them, go in that body too by default
//! (`top.system_params = "body"`, as the .NET and Node SDKs send them, so
//! they never appear in a URL or a proxy's log), or in the query string
//! (`"query"`, as the Java, PHP, Python and Go SDKs do). The `timestamp` and
//! `sign` are computed by [`RequestProfile::sign`]
//! at the moment of sending, so a request delayed by a rate limiter or a retry
//! never carries a stale signature.

use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::event::PaymentEvent;
use crate::gmt8;
use crate::top::sign::{self, SignMethod};

/// The API this crate speaks to.
pub const API_METHOD: &str = "taobao.taojie.parking.order.payinfo.sync";
/// The business parameter's name.
pub const DTO_PARAM: &str = "pay_order_info_dto";
/// The companion API for the ISV's daily order count (reconciliation).
pub const ORDER_AMOUNT_METHOD: &str = "taobao.taojie.parking.orderamount.sync";
/// Its business parameter's name.
pub const ORDER_AMOUNT_PARAM: &str = "parking_order_amount_dto";
/// The protocol version every call sends.
pub const API_VERSION: &str = "2.0";

/// Every system parameter name; a 40 "Missing required arguments" that names
/// one of these points at the client, not at the event's data.
pub const SYSTEM_PARAMS: [&str; 11] = [
    "method",
    "app_key",
    "timestamp",
    "v",
    "sign_method",
    "sign",
    "session",
    "format",
    "simplify",
    "partner_id",
    "target_app_key",
];

/// The response format asked for with `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResponseFormat {
    #[default]
    Json,
    Xml,
}

impl ResponseFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFormat::Json => "json",
            ResponseFormat::Xml => "xml",
        }
    }
}

/// Where the system parameters (`method`, `app_key`, `timestamp`, `sign`, the
/// session, …) travel. The gateway reads both places (the Java, PHP, Python
/// and Go SDKs use the query, .NET and Node the body). In the body, the
/// signature and the session token stay out of the URL, and so out of
/// egress proxies' access logs; the URL stays short, which keeps the client
/// from parsing the signed query on every call (docs/performance.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SystemParams {
    #[default]
    Body,
    Query,
}

/// The DTO exactly as it is serialised; fields are declared in alphabetical
/// order so the JSON matches what the Java SDK writes.
#[derive(Serialize)]
struct PayOrderInfoDto<'a> {
    car_no: &'a str,
    order_id: &'a str,
    order_type: u8,
    park_id: &'a str,
    pay_fee: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pay_method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pay_order_id: Option<&'a str>,
    pay_time: String,
}

/// The value of `pay_order_info_dto` for an event.
pub fn dto_json(event: &PaymentEvent) -> String {
    let dto = PayOrderInfoDto {
        car_no: &event.car_no,
        order_id: &event.order_id,
        order_type: event.order_type.code(),
        park_id: &event.park_id,
        pay_fee: event.pay_fee,
        pay_method: event.pay_method.as_deref(),
        pay_order_id: event.pay_order_id.as_deref(),
        pay_time: gmt8::format(event.pay_time),
    };
    serde_json::to_string(&dto).expect("a struct of strings and integers always serialises")
}

/// Everything about the caller that goes into each request, secrets included.
#[derive(Clone)]
pub struct RequestProfile {
    pub app_key: String,
    pub app_secret: SecretString,
    pub sign_method: SignMethod,
    pub session: Option<SecretString>,
    pub partner_id: Option<String>,
    pub target_app_key: Option<String>,
    pub simplify: bool,
    pub format: ResponseFormat,
    pub system_params: SystemParams,
}

impl fmt::Debug for RequestProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestProfile")
            .field("app_key", &self.app_key)
            .field("app_secret", &"[redacted]")
            .field("sign_method", &self.sign_method)
            .field("session", &self.session.as_ref().map(|_| "[redacted]"))
            .field("partner_id", &self.partner_id)
            .field("target_app_key", &self.target_app_key)
            .field("simplify", &self.simplify)
            .field("system_params", &self.system_params)
            .field("format", &self.format)
            .finish()
    }
}

/// A request ready to send: the system parameters (with `sign`), which go
/// in the body or the query string as `top.system_params` says, and the
/// business parameter for the body.
#[derive(Clone)]
pub struct SignedRequest {
    pub query: Vec<(&'static str, String)>,
    pub body: Vec<(&'static str, String)>,
}

impl RequestProfile {
    /// Builds and signs the request for one DTO at instant `now`.
    pub fn sign(&self, dto_json: &str, now: DateTime<Utc>) -> SignedRequest {
        self.sign_call(API_METHOD, DTO_PARAM, dto_json, now)
    }

    /// Builds and signs a call of `method` with one business parameter.
    pub fn sign_call(
        &self,
        method: &'static str,
        param: &'static str,
        value: &str,
        now: DateTime<Utc>,
    ) -> SignedRequest {
        let mut query: Vec<(&'static str, String)> = vec![
            ("method", method.to_owned()),
            ("app_key", self.app_key.clone()),
            ("timestamp", gmt8::format(now)),
            ("v", API_VERSION.to_owned()),
            ("sign_method", self.sign_method.as_str().to_owned()),
            ("format", self.format.as_str().to_owned()),
        ];
        let optional = [
            (
                "session",
                self.session.as_ref().map(|s| s.expose_secret().to_owned()),
            ),
            ("partner_id", self.partner_id.clone()),
            ("target_app_key", self.target_app_key.clone()),
            ("simplify", self.simplify.then(|| "true".to_owned())),
        ];
        // Empty values are neither signed nor sent (the Java SDK's rule).
        query.extend(
            optional.into_iter().filter_map(|(name, value)| {
                value.filter(|v| !v.trim().is_empty()).map(|v| (name, v))
            }),
        );
        let mut body = vec![(param, value.to_owned())];
        let signature = sign::sign(
            self.sign_method,
            &self.app_secret,
            query
                .iter()
                .chain(body.iter())
                .map(|(n, v)| (*n, v.as_str())),
        );
        query.push(("sign", signature));
        if self.system_params == SystemParams::Body {
            query.append(&mut body);
            body = query;
            query = Vec::new();
        }
        SignedRequest { query, body }
    }
}

impl fmt::Debug for SignedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignedRequest {\n")?;
        f.write_str(&self.describe())?;
        f.write_str("}")
    }
}

impl SignedRequest {
    /// The form-urlencoded query string (UTF-8, space as `+`).
    pub fn query_string(&self) -> String {
        encode(&self.query)
    }

    /// The form-urlencoded body.
    pub fn body_string(&self) -> String {
        encode(&self.body)
    }

    /// A parameter's value, wherever it is.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .chain(self.body.iter())
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Human-readable lines for debugging, with the session token redacted.
    /// The app secret is never part of a request, so it cannot leak here.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (place, params) in [("query", &self.query), ("body", &self.body)] {
            for (name, value) in params.iter() {
                let shown = if *name == "session" {
                    "[redacted]"
                } else {
                    value.as_str()
                };
                out.push_str(&format!("  {place:<5} {name} = {shown}\n"));
            }
        }
        out
    }
}

fn encode(params: &[(&'static str, String)]) -> String {
    // Sized once for the usual case (JSON punctuation encodes to 3 bytes),
    // rather than grown and copied while encoding.
    let plain: usize = params
        .iter()
        .map(|(name, value)| name.len() + value.len() + 2)
        .sum();
    let mut serializer = form_urlencoded::Serializer::new(String::with_capacity(plain * 3 / 2));
    for (name, value) in params {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{OrderType, PaymentEvent};
    use chrono::TimeZone;

    fn seed_event() -> PaymentEvent {
        PaymentEvent {
            car_no: "浙A888888".into(),
            order_id: "BK212132334343".into(),
            park_id: "p123456".into(),
            pay_time: Utc.with_ymd_and_hms(2020, 10, 10, 12, 0, 0).unwrap(),
            order_type: OrderType::Payment,
            pay_fee: 1000,
            pay_order_id: Some("2020111112323232323".into()),
            pay_method: Some("WX".into()),
        }
    }

    fn profile(method: SignMethod) -> RequestProfile {
        RequestProfile {
            app_key: "12345678".into(),
            app_secret: SecretString::from("helloworld"),
            sign_method: method,
            session: None,
            partner_id: None,
            target_app_key: None,
            simplify: false,
            format: ResponseFormat::Json,
            system_params: SystemParams::Query,
        }
    }

    #[test]
    fn dto_json_matches_the_java_sdk_output() {
        assert_eq!(
            dto_json(&seed_event()),
            r#"{"car_no":"浙A888888","order_id":"BK212132334343","order_type":1,"park_id":"p123456","pay_fee":1000,"pay_method":"WX","pay_order_id":"2020111112323232323","pay_time":"2020-10-10 20:00:00"}"#
        );
    }

    #[test]
    fn absent_optionals_are_omitted_from_the_dto() {
        let mut event = seed_event();
        event.pay_method = None;
        event.pay_order_id = None;
        let json = dto_json(&event);
        assert!(
            !json.contains("pay_method") && !json.contains("pay_order_id"),
            "{json}"
        );
    }

    #[test]
    fn signed_request_reproduces_the_worked_examples() {
        // `docs/top-protocol.md` §2.3: timestamp 2020-10-10 20:00:05 GMT+8.
        let now = Utc.with_ymd_and_hms(2020, 10, 10, 12, 0, 5).unwrap();
        let dto = dto_json(&seed_event());
        for (method, expected) in [
            (SignMethod::Md5, "EF7AB1CCFA9B58D34111433BC6CFF80D"),
            (SignMethod::HmacMd5, "68F30F5AC06C74DDD0C2D59026F15CB3"),
            (
                SignMethod::HmacSha256,
                "FF6612D01176548FBC8727F5C594D52FD37843F06649AAEE4EC9D60DB94AD112",
            ),
        ] {
            let request = profile(method).sign(&dto, now);
            assert_eq!(request.param("sign"), Some(expected), "{method}");
            assert_eq!(request.param("timestamp"), Some("2020-10-10 20:00:05"));
        }
    }

    #[test]
    fn wire_form_matches_the_java_sdk() {
        let now = Utc.with_ymd_and_hms(2020, 10, 10, 12, 0, 5).unwrap();
        let request = profile(SignMethod::Md5).sign(&dto_json(&seed_event()), now);
        assert_eq!(
            request.query_string(),
            "method=taobao.taojie.parking.order.payinfo.sync&app_key=12345678&timestamp=2020-10-10+20%3A00%3A05&v=2.0&sign_method=md5&format=json&sign=EF7AB1CCFA9B58D34111433BC6CFF80D"
        );
        assert_eq!(
            request.body_string(),
            "pay_order_info_dto=%7B%22car_no%22%3A%22%E6%B5%99A888888%22%2C%22order_id%22%3A%22BK212132334343%22%2C%22order_type%22%3A1%2C%22park_id%22%3A%22p123456%22%2C%22pay_fee%22%3A1000%2C%22pay_method%22%3A%22WX%22%2C%22pay_order_id%22%3A%222020111112323232323%22%2C%22pay_time%22%3A%222020-10-10+20%3A00%3A00%22%7D"
        );
    }

    #[test]
    fn optional_system_parameters_are_sent_and_signed_only_when_set() {
        let now = Utc.with_ymd_and_hms(2020, 10, 10, 12, 0, 5).unwrap();
        let mut with = profile(SignMethod::HmacSha256);
        with.session = Some(SecretString::from("tok"));
        with.partner_id = Some("paysync".into());
        with.simplify = true;
        with.target_app_key = Some(" ".into());
        let request = with.sign("{}", now);
        assert_eq!(request.param("session"), Some("tok"));
        assert_eq!(request.param("simplify"), Some("true"));
        assert_eq!(request.param("target_app_key"), None);
        let bare = profile(SignMethod::HmacSha256).sign("{}", now);
        assert_ne!(request.param("sign"), bare.param("sign"));
        assert!(request.describe().contains("session = [redacted]"));
        assert!(!request.describe().contains("tok"));
        assert!(!format!("{with:?}").contains("helloworld"));
    }

    #[test]
    fn in_the_body_the_same_signed_parameters_leave_the_url_empty() {
        let now = Utc.with_ymd_and_hms(2020, 10, 10, 12, 0, 5).unwrap();
        let dto = dto_json(&seed_event());
        let in_query = profile(SignMethod::Md5).sign(&dto, now);
        let mut body_profile = profile(SignMethod::Md5);
        body_profile.system_params = SystemParams::Body;
        body_profile.session = Some(SecretString::from("tok"));
        let mut query_profile = body_profile.clone();
        query_profile.system_params = SystemParams::Query;
        let in_body = body_profile.sign(&dto, now);
        assert_eq!(in_body.query_string(), "");
        // The signature does not depend on where the parameters travel.
        assert_eq!(
            in_body.param("sign"),
            query_profile.sign(&dto, now).param("sign")
        );
        assert_ne!(in_body.param("sign"), in_query.param("sign"));
        let body = in_body.body_string();
        assert!(
            body.starts_with("method=taobao.taojie.parking.order.payinfo.sync&app_key=12345678&")
                && body.contains("&session=tok&")
                && body.contains("&pay_order_info_dto=%7B"),
            "{body}"
        );
    }
}
