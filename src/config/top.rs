//! `[top]`: the gateway, the app's credentials and how calls leave the host
//! (proxy, trusted roots), with their defaults, and the TOP client built
//! from them.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::validate::read_secret_file;
use super::{ConfigError, Settings, TopClientError, millis};
use crate::top::client::{Egress, Timeouts, TopClient};
use crate::top::egress::{self, ProxySettings, TlsRoots, TlsTrust};
use crate::top::request::{RequestProfile, ResponseFormat, SystemParams};
use crate::top::sign::SignMethod;

/// `[top]`: the gateway and the app's credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopSettings {
    /// Gateway URL. Production HTTPS by default; the sandbox is
    /// `https://gw.api.tbsandbox.com/router/rest` (with the sandbox app key).
    pub gateway_url: String,
    pub app_key: String,
    /// The app secret itself; prefer `PAYSYNC_TOP__APP_SECRET` or `app_secret_file`.
    pub app_secret: Option<SecretString>,
    /// A file holding the app secret (trailing newline ignored).
    pub app_secret_file: Option<PathBuf>,
    pub sign_method: SignMethod,
    /// The user's SessionKey, only if the app's API package needs authorization.
    pub session: Option<SecretString>,
    /// Sent as `partner_id` (signed); identifies the caller in gateway logs.
    pub partner_id: String,
    pub target_app_key: Option<String>,
    /// Ask for `simplify=true` JSON bodies (both shapes are read either way).
    pub simplify: bool,
    pub format: ResponseFormat,
    /// Where the system parameters go: `body` (the default) or `query`.
    pub system_params: SystemParams,
    #[serde(deserialize_with = "millis")]
    pub connect_timeout_ms: Duration,
    #[serde(deserialize_with = "millis")]
    pub request_timeout_ms: Duration,
    /// Requests larger than this (query string and body, in bytes) are not
    /// sent: the event is dead-lettered as `request_too_large`. 0: no limit
    /// (the gateway's limit is not documented; its HTTP 413 answer
    /// dead-letters the event the same way).
    pub max_request_bytes: usize,
    /// A forward proxy for calls (`http://host:port`), instead of what
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` say. No credentials in the URL.
    pub proxy_url: Option<String>,
    pub proxy_username: Option<String>,
    /// The proxy's password; prefer `PAYSYNC_TOP__PROXY_PASSWORD` or `proxy_password_file`.
    pub proxy_password: Option<SecretString>,
    pub proxy_password_file: Option<PathBuf>,
    /// Hosts that go direct (the `NO_PROXY` syntax), instead of what `NO_PROXY` says.
    pub no_proxy: Option<String>,
    /// Whether `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` are read.
    pub proxy_from_env: bool,
    /// A PEM bundle of certificate authorities to trust for the gateway.
    pub ca_file: Option<PathBuf>,
    /// `builtin` (Mozilla's roots, compiled in), `system` (the host's store)
    /// or `file` (only `ca_file`); `ca_file` adds to the first two.
    pub tls_roots: TlsRoots,
}

/// The production gateway over HTTPS (`docs/top-protocol.md` §6).
pub const DEFAULT_GATEWAY_URL: &str = "https://eco.taobao.com/router/rest";

impl Default for TopSettings {
    fn default() -> Self {
        TopSettings {
            gateway_url: DEFAULT_GATEWAY_URL.to_owned(),
            app_key: String::new(),
            app_secret: None,
            app_secret_file: None,
            // The official Java and Go SDKs' default.
            sign_method: SignMethod::HmacSha256,
            session: None,
            partner_id: concat!("paysync-", env!("CARGO_PKG_VERSION")).to_owned(),
            target_app_key: None,
            simplify: false,
            format: ResponseFormat::Json,
            system_params: SystemParams::Body,
            // Tighter than the Java SDK's 15 s / 30 s: a slow call holds a
            // Kafka offset back, and a retry is cheap.
            connect_timeout_ms: Duration::from_millis(5_000),
            request_timeout_ms: Duration::from_millis(10_000),
            max_request_bytes: 0,
            proxy_url: None,
            proxy_username: None,
            proxy_password: None,
            proxy_password_file: None,
            no_proxy: None,
            proxy_from_env: true,
            ca_file: None,
            tls_roots: TlsRoots::Builtin,
        }
    }
}

impl Settings {
    /// The app secret, from the setting or the file.
    pub fn app_secret(&self) -> Result<SecretString, ConfigError> {
        match (&self.top.app_secret, &self.top.app_secret_file) {
            (Some(secret), _) => Ok(secret.clone()),
            (None, Some(path)) => read_secret_file(path)
                .map_err(|reason| ConfigError::one("top.app_secret_file", reason)),
            (None, None) => Err(ConfigError::one("top.app_secret", "is required")),
        }
    }

    /// The signing profile for requests.
    pub fn request_profile(&self) -> Result<RequestProfile, ConfigError> {
        let top = &self.top;
        Ok(RequestProfile {
            app_key: top.app_key.trim().to_owned(),
            app_secret: self.app_secret()?,
            sign_method: top.sign_method,
            session: top.session.clone(),
            partner_id: Some(top.partner_id.clone()),
            target_app_key: top.target_app_key.clone(),
            simplify: top.simplify,
            format: top.format,
            system_params: top.system_params,
        })
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.top.connect_timeout_ms,
            request: self.top.request_timeout_ms,
        }
    }

    /// The proxy (decided now, from the settings and the environment) and the trust.
    pub fn egress(&self) -> Result<Egress, ConfigError> {
        let top = &self.top;
        let gateway = Url::parse(&top.gateway_url)
            .map_err(|e| ConfigError::one("top.gateway_url", format!("is not a URL: {e}")))?;
        let password = match (&top.proxy_password, &top.proxy_password_file) {
            (Some(password), _) => Some(password.clone()),
            (None, Some(path)) => Some(
                read_secret_file(path)
                    .map_err(|reason| ConfigError::one("top.proxy_password_file", reason))?,
            ),
            (None, None) => None,
        };
        let proxy = ProxySettings {
            url: top.proxy_url.clone(),
            username: top.proxy_username.clone(),
            password,
            no_proxy: top.no_proxy.clone(),
            from_env: top.proxy_from_env,
        };
        let environment = &self.environment;
        let proxy = egress::decide_proxy(&gateway, &proxy, |name| {
            environment.get(name).map(str::to_owned)
        })
        .map_err(|error| ConfigError::one(error.key, error.reason))?;
        Ok(Egress {
            proxy,
            trust: TlsTrust {
                roots: top.tls_roots,
                ca_file: top.ca_file.clone(),
            },
        })
    }

    /// A client for the configured gateway.
    pub fn top_client(&self) -> Result<TopClient, TopClientError> {
        let url = Url::parse(&self.top.gateway_url)
            .map_err(|e| ConfigError::one("top.gateway_url", format!("is not a URL: {e}")))?;
        let limit = (self.top.max_request_bytes > 0).then_some(self.top.max_request_bytes);
        Ok(TopClient::new(
            url,
            self.request_profile()?,
            self.timeouts(),
            self.egress()?,
        )?
        .with_max_request_bytes(limit))
    }
}
