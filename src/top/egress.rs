//! How calls leave the host: which forward proxy (if any) carries them to the
//! gateway and which certificate authorities the gateway's certificate must
//! chain to. Both are decided once, at start-up, for the one gateway URL, so
//! `check-config`, the start-up log and the client agree on what is used.
//!
//! * The proxy: `top.proxy_url` when set, otherwise the standard variables
//!   (`https_proxy`/`HTTPS_PROXY` for an https gateway, `http_proxy`/
//!   `HTTP_PROXY` for http, then `all_proxy`/`ALL_PROXY`), unless `no_proxy`/
//!   `NO_PROXY` (or `top.no_proxy`) names the gateway's host. Lower case wins,
//!   as in curl. Credentials are never part of what is shown: a
//!   [`ProxyRoute`] displays its URL without them.
//! * Trust: the roots compiled in (Mozilla's, from `webpki-roots`), the
//!   system's store, or only `top.ca_file`; a `top.ca_file` bundle is added to
//!   the first two.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

/// Which certificate authorities are trusted for the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsRoots {
    /// Mozilla's roots, compiled into paysync (the same on every host).
    #[default]
    Builtin,
    /// The host's certificate store (`/etc/ssl/certs`, `SSL_CERT_FILE`, …).
    System,
    /// Only the certificates of `top.ca_file`.
    File,
}

impl TlsRoots {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsRoots::Builtin => "builtin",
            TlsRoots::System => "system",
            TlsRoots::File => "file",
        }
    }
}

/// The trust settings, as configured.
#[derive(Debug, Clone, Default)]
pub struct TlsTrust {
    pub roots: TlsRoots,
    pub ca_file: Option<PathBuf>,
}

impl TlsTrust {
    /// The rustls configuration for calls: these roots, HTTP/2 and HTTP/1.1 by ALPN.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, EgressError> {
        let mut roots = rustls::RootCertStore::empty();
        match self.roots {
            TlsRoots::Builtin => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            TlsRoots::System => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map(|error| format!(": {error}"))
                        .unwrap_or_default();
                    return Err(problem(
                        "top.tls_roots",
                        format!(
                            "= \"system\" found no usable certificate in the host's store{why}"
                        ),
                    ));
                }
            }
            TlsRoots::File => {}
        }
        match (&self.ca_file, self.roots) {
            (Some(path), _) => {
                for certificate in read_ca_file(path)? {
                    roots.add(certificate).map_err(|error| {
                        problem(
                            "top.ca_file",
                            format!("{}: a certificate is not usable: {error}", path.display()),
                        )
                    })?;
                }
            }
            (None, TlsRoots::File) => {
                return Err(problem("top.tls_roots", "= \"file\" needs top.ca_file"));
            }
            (None, _) => {}
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| problem("top.tls_roots", format!("cannot set up TLS: {error}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// One line for `check-config` and the start-up log.
    pub fn describe(&self) -> String {
        match (&self.ca_file, self.roots) {
            (None, roots) => format!("{} roots", roots.as_str()),
            (Some(path), TlsRoots::File) => format!("only {}", path.display()),
            (Some(path), roots) => format!("{} roots and {}", roots.as_str(), path.display()),
        }
    }
}

/// Reads a PEM bundle: at least one certificate, every block readable.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, EgressError> {
    let shown = path.display();
    let blocks = CertificateDer::pem_file_iter(path)
        .map_err(|error| problem("top.ca_file", format!("{shown}: cannot read it: {error}")))?;
    let certificates = blocks.collect::<Result<Vec<_>, _>>().map_err(|error| {
        problem(
            "top.ca_file",
            format!("{shown}: not a PEM certificate bundle: {error}"),
        )
    })?;
    if certificates.is_empty() {
        return Err(problem(
            "top.ca_file",
            format!("{shown}: holds no PEM certificate"),
        ));
    }
    Ok(certificates)
}

/// A proxy or trust setting that cannot be used: the key (or environment
/// variable) and why. Never holds a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {reason}")]
pub struct EgressError {
    pub key: String,
    pub reason: String,
}

fn problem(key: impl Into<String>, reason: impl Into<String>) -> EgressError {
    EgressError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Where the proxy setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySource {
    /// `top.proxy_url`.
    Setting,
    /// The named environment variable.
    Environment(&'static str),
}

/// A forward proxy to send calls through. `Display` never shows credentials.
#[derive(Clone)]
pub struct ProxyRoute {
    /// The proxy's URL without user info.
    url: Url,
    username: Option<String>,
    password: Option<SecretString>,
    source: ProxySource,
}

impl ProxyRoute {
    /// The proxy's URL, without credentials.
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn source(&self) -> &ProxySource {
        &self.source
    }

    pub fn has_credentials(&self) -> bool {
        self.username.is_some()
    }

    /// The reqwest proxy for every scheme (there is one gateway).
    pub fn to_reqwest(&self) -> reqwest::Result<reqwest::Proxy> {
        use secrecy::ExposeSecret;
        let proxy = reqwest::Proxy::all(self.url.clone())?;
        Ok(match &self.username {
            Some(username) => {
                let password = self
                    .password
                    .as_ref()
                    .map(|p| p.expose_secret())
                    .unwrap_or("");
                proxy.basic_auth(username, password)
            }
            None => proxy,
        })
    }
}

impl fmt::Display for ProxyRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.url.as_str().trim_end_matches('/');
        match &self.source {
            ProxySource::Setting => write!(f, "{url} (top.proxy_url")?,
            ProxySource::Environment(name) => write!(f, "{url} ({name}")?,
        }
        if self.has_credentials() {
            f.write_str(", with credentials")?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for ProxyRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyRoute({self})")
    }
}

/// How calls reach the gateway.
#[derive(Debug, Clone)]
pub enum ProxyDecision {
    Direct { why: String },
    Via(ProxyRoute),
}

impl ProxyDecision {
    pub fn route(&self) -> Option<&ProxyRoute> {
        match self {
            ProxyDecision::Via(route) => Some(route),
            ProxyDecision::Direct { .. } => None,
        }
    }
}

impl fmt::Display for ProxyDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyDecision::Direct { why } => write!(f, "none, direct ({why})"),
            ProxyDecision::Via(route) => route.fmt(f),
        }
    }
}

/// The proxy settings, as configured.
#[derive(Debug, Clone, Default)]
pub struct ProxySettings {
    /// `top.proxy_url`: overrides the environment.
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// `top.no_proxy`: overrides `NO_PROXY`.
    pub no_proxy: Option<String>,
    /// `top.proxy_from_env`: whether the standard variables are read at all.
    pub from_env: bool,
}

/// Decides the proxy for `gateway`, reading variables through `env`.
/// Errors name the setting or variable and never show credentials.
pub fn decide_proxy(
    gateway: &Url,
    settings: &ProxySettings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ProxyDecision, EgressError> {
    let nonempty = |name: &'static str| {
        env(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
            .map(|value| (name, value))
    };
    let host = gateway.host_str().unwrap_or("");
    let bypass = match &settings.no_proxy {
        Some(list) => Some(("top.no_proxy", list.clone())),
        None if settings.from_env => nonempty("no_proxy").or_else(|| nonempty("NO_PROXY")),
        None => None,
    };
    if let Some((name, list)) = &bypass
        && no_proxy_matches(list, host)
    {
        return Ok(ProxyDecision::Direct {
            why: format!("{name} names {host}"),
        });
    }
    if let Some(url) = settings.url.as_deref().filter(|url| !url.trim().is_empty()) {
        let mut url = parse_proxy_url(url).map_err(|reason| problem("top.proxy_url", reason))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(problem(
                "top.proxy_url",
                "must not hold credentials: set top.proxy_username and top.proxy_password_file (or PAYSYNC_TOP__PROXY_PASSWORD)",
            ));
        }
        url.set_path("");
        return Ok(ProxyDecision::Via(ProxyRoute {
            url,
            username: settings.username.clone(),
            password: settings.password.clone(),
            source: ProxySource::Setting,
        }));
    }
    if !settings.from_env {
        return Ok(ProxyDecision::Direct {
            why: "top.proxy_from_env = false".to_owned(),
        });
    }
    let names: &[&'static str] = if gateway.scheme() == "https" {
        &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
    } else {
        &["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
    };
    let Some((name, value)) = names.iter().find_map(|name| nonempty(name)) else {
        return Ok(ProxyDecision::Direct {
            why: "no proxy variable is set".to_owned(),
        });
    };
    let mut url = parse_proxy_url(&value).map_err(|reason| problem(name, reason))?;
    let username = (!url.username().is_empty()).then(|| percent_decoded(url.username()));
    let password = url
        .password()
        .map(|password| SecretString::from(percent_decoded(password)));
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_path("");
    Ok(ProxyDecision::Via(ProxyRoute {
        url,
        username,
        password,
        source: ProxySource::Environment(name),
    }))
}

/// Reads a proxy URL; `host:port` alone means `http://host:port`, as curl reads it.
fn parse_proxy_url(text: &str) -> Result<Url, String> {
    let text = text.trim();
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    // Never echo the text: it may hold a password.
    let url = Url::parse(&with_scheme).map_err(|error| format!("is not a URL: {error}"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "uses the scheme {other}: only http:// and https:// proxies are supported"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    Ok(url)
}

/// `text` with its `%XX` escapes decoded (invalid UTF-8 replaced).
pub(crate) fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Whether a `NO_PROXY` list names `host`: `*`, a host or domain (a leading
/// `.` or `*.` is optional; `example.com` also covers `api.example.com`), an
/// IP address or a CIDR block. Ports in entries are ignored.
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host_lower = host.to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some(ip) = host_ip {
                return ip_entry_matches(entry, ip);
            }
            let name = strip_port(entry)
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .to_ascii_lowercase();
            !name.is_empty()
                && (host_lower == name
                    || host_lower
                        .strip_suffix(&name)
                        .is_some_and(|prefix| prefix.ends_with('.')))
        })
}

fn ip_entry_matches(entry: &str, ip: IpAddr) -> bool {
    let entry = entry.trim_start_matches('[');
    if let Some((network, bits)) = entry.split_once('/') {
        let (Ok(network), Ok(bits)) = (network.parse::<IpAddr>(), bits.parse::<u32>()) else {
            return false;
        };
        return match (network, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) if bits <= 32 => {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) if bits <= 128 => {
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        };
    }
    let address = entry.split(']').next().unwrap_or(entry);
    address.parse::<IpAddr>().ok() == Some(ip)
        || strip_port(address).parse::<IpAddr>().ok() == Some(ip)
}

/// `host:port` → `host` (an IPv6 address without brackets has several colons and is kept).
fn strip_port(entry: &str) -> &str {
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => entry,
    }
}

/// The reason, when an error chain holds a refused server certificate: the
/// gateway (or something in its place) is not trusted with the configured roots.
pub fn untrusted_certificate(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    causes(error).find_map(|cause| match cause.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::InvalidCertificate(why)) => Some(format!(
            "the gateway's TLS certificate is not trusted ({why:?}); check top.ca_file and top.tls_roots"
        )),
        _ => None,
    })
}

/// How hyper-util's CONNECT tunnel reports a 407 (its error type is private;
/// `tests/it/egress.rs` holds this text to what the tunnel really says).
const TUNNEL_407: &str = "tunnel error: proxy authorization required";

/// Whether an error chain holds a forward proxy's 407 to a CONNECT.
pub fn proxy_refused_credentials(error: &(dyn std::error::Error + 'static)) -> bool {
    causes(error).any(|cause| cause.to_string() == TUNNEL_407)
}

/// An error and its causes, looking inside I/O errors (whose `source` skips
/// the error they wrap, where TLS and tunnel errors travel).
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut next = Some(error);
    let mut out = Vec::new();
    while let Some(cause) = next {
        out.push(cause);
        // An I/O error may wrap another I/O error before the TLS error.
        next = match cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => cause.source(),
        };
    }
    out.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn decide(
        gateway: &str,
        settings: &ProxySettings,
        vars: &[(&str, &str)],
    ) -> Result<ProxyDecision, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        decide_proxy(&Url::parse(gateway).unwrap(), settings, |name| {
            vars.get(name).cloned()
        })
        .map_err(|error| error.to_string())
    }

    fn from_env() -> ProxySettings {
        ProxySettings {
            from_env: true,
            ..ProxySettings::default()
        }
    }

    #[test]
    fn the_scheme_picks_the_variable_and_lower_case_wins() {
        let vars = [
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "http://lower:3128"),
            ("HTTP_PROXY", "http://plain:3128"),
        ];
        let https = decide("https://eco.taobao.com/router/rest", &from_env(), &vars).unwrap();
        assert_eq!(https.route().unwrap().url().as_str(), "http://lower:3128/");
        assert_eq!(
            https.route().unwrap().source(),
            &ProxySource::Environment("https_proxy")
        );
        let http = decide("http://127.0.0.1:9/router/rest", &from_env(), &vars).unwrap();
        assert_eq!(http.route().unwrap().url().host_str(), Some("plain"));
        let all = decide(
            "http://gw/router/rest",
            &from_env(),
            &[("ALL_PROXY", "proxy:8080")],
        )
        .unwrap();
        assert_eq!(all.route().unwrap().url().as_str(), "http://proxy:8080/");
    }

    #[test]
    fn credentials_from_the_environment_are_kept_but_never_shown() {
        let decision = decide(
            "https://eco.taobao.com/router/rest",
            &from_env(),
            &[("HTTPS_PROXY", "http://alice:s%40cret@proxy.corp:3128")],
        )
        .unwrap();
        let shown = decision.to_string();
        assert_eq!(
            shown,
            "http://proxy.corp:3128 (HTTPS_PROXY, with credentials)"
        );
        assert!(!format!("{decision:?}").contains("cret"));
        let route = decision.route().unwrap();
        assert_eq!(route.username.as_deref(), Some("alice"));
        use secrecy::ExposeSecret;
        assert_eq!(route.password.as_ref().unwrap().expose_secret(), "s@cret");
    }

    #[test]
    fn the_setting_overrides_the_environment_and_refuses_credentials_in_its_url() {
        let settings = ProxySettings {
            url: Some("http://egress:3128".into()),
            username: Some("svc".into()),
            password: Some(SecretString::from("pw")),
            ..from_env()
        };
        let decision = decide(
            "https://gw/router/rest",
            &settings,
            &[("HTTPS_PROXY", "http://other:1")],
        )
        .unwrap();
        assert_eq!(
            decision.to_string(),
            "http://egress:3128 (top.proxy_url, with credentials)"
        );
        let inline = ProxySettings {
            url: Some("http://svc:pw@egress:3128".into()),
            ..from_env()
        };
        let error = decide("https://gw/router/rest", &inline, &[]).unwrap_err();
        assert!(error.contains("must not hold credentials"), "{error}");
        assert!(!error.contains("pw@"), "{error}");
    }

    #[test]
    fn no_proxy_bypasses_and_bad_proxies_name_their_source() {
        let vars = [
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "localhost,.taobao.com"),
        ];
        let decision = decide("https://eco.taobao.com/router/rest", &from_env(), &vars).unwrap();
        assert!(decision.route().is_none());
        assert_eq!(
            decision.to_string(),
            "none, direct (NO_PROXY names eco.taobao.com)"
        );
        let settings = ProxySettings {
            from_env: false,
            ..ProxySettings::default()
        };
        assert!(
            decide("https://gw/r", &settings, &vars)
                .unwrap()
                .route()
                .is_none()
        );
        let socks = decide(
            "https://gw/r",
            &from_env(),
            &[("HTTPS_PROXY", "socks5://u:secret@p:1080")],
        )
        .unwrap_err();
        assert!(
            socks.starts_with("HTTPS_PROXY uses the scheme socks5"),
            "{socks}"
        );
        assert!(!socks.contains("secret"));
    }

    #[test]
    fn no_proxy_entries_match_hosts_domains_addresses_and_blocks() {
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("example.com", "example.com"));
        assert!(no_proxy_matches("example.com", "API.example.com"));
        assert!(no_proxy_matches(".example.com", "api.example.com"));
        assert!(no_proxy_matches("*.example.com", "api.example.com"));
        assert!(!no_proxy_matches("example.com", "badexample.com"));
        assert!(no_proxy_matches("gw:8443", "gw"));
        assert!(no_proxy_matches("127.0.0.1", "127.0.0.1"));
        assert!(no_proxy_matches("10.0.0.0/8", "10.2.3.4"));
        assert!(!no_proxy_matches("10.0.0.0/8", "11.2.3.4"));
        assert!(no_proxy_matches("::1", "[::1]"));
        assert!(no_proxy_matches("fd00::/8", "fd12::1"));
        assert!(!no_proxy_matches("localhost", "127.0.0.1"));
        assert!(!no_proxy_matches(" , ", "host"));
    }

    #[test]
    fn trust_needs_a_readable_bundle_when_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let only_file = TlsTrust {
            roots: TlsRoots::File,
            ca_file: None,
        };
        assert!(
            only_file
                .client_config()
                .unwrap_err()
                .to_string()
                .contains("needs top.ca_file")
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let error = TlsTrust {
            roots: TlsRoots::Builtin,
            ca_file: Some(junk),
        }
        .client_config()
        .unwrap_err();
        assert_eq!(error.key, "top.ca_file");
        assert!(error.reason.contains("holds no PEM certificate"), "{error}");
        let missing = TlsTrust {
            roots: TlsRoots::File,
            ca_file: Some(dir.path().join("absent.pem")),
        };
        assert!(
            missing
                .client_config()
                .unwrap_err()
                .to_string()
                .contains("cannot read it")
        );
        let builtin = TlsTrust::default().client_config().unwrap();
        assert_eq!(builtin.alpn_protocols[0], b"h2");
    }

    #[test]
    fn a_certificate_error_is_found_inside_nested_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(inner);
        let reason = untrusted_certificate(&outer).expect("found");
        assert!(reason.contains("UnknownIssuer"), "{reason}");
        assert!(reason.contains("top.ca_file"), "{reason}");

        let unrelated = std::io::Error::other("connection reset");
        assert_eq!(untrusted_certificate(&unrelated), None);
        assert!(!proxy_refused_credentials(&unrelated));
        assert!(proxy_refused_credentials(&std::io::Error::other(
            TUNNEL_407
        )));
    }
}
