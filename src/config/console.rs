//! `[console]`: the operator console (docs/console.md) and the group status
//! every replica publishes for it — with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Settings, millis};

/// `[console]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// Serve the console under `/console` on the admin listener (`paysync
    /// run`); `paysync console` serves it on its own whatever this says.
    pub enabled: bool,
    /// The users and their roles: a TOML file of `[[user]]` tables with
    /// `name`, `role` (`viewer` or `operator`) and an argon2 `password_hash`
    /// (`paysync console hash-password` makes one). Required when enabled.
    pub users_file: Option<PathBuf>,
    /// Where `paysync console` listens.
    pub listen: String,
    /// Serve peers that are not on this host. Off, a console on an address
    /// that is not loopback is refused by check-config: put TLS in front
    /// (an Ingress) and turn this on.
    pub allow_remote: bool,
    /// Mark the session cookie `Secure` (only sent over HTTPS). Defaults to
    /// on when `allow_remote` (a remote console is reached through TLS) or
    /// when `paysync console` serves HTTPS itself.
    pub secure_cookie: Option<bool>,
    /// `paysync console` serves HTTPS with this PEM certificate chain…
    pub tls_cert_file: Option<PathBuf>,
    /// …and this PEM private key (both or neither).
    pub tls_key_file: Option<PathBuf>,
    /// How long a login lasts.
    #[serde(deserialize_with = "millis")]
    pub session_ttl_ms: Duration,
    /// Logins allowed per user name each minute (four times as many per
    /// client address).
    pub login_attempts_per_minute: u32,
    /// Show licence plates (`car_no`) to viewers masked (operators see them whole).
    pub mask_car_no: bool,
    /// A link to a trace in a tracing UI; `{trace_id}` is replaced, e.g.
    /// `http://jaeger:16686/trace/{trace_id}`.
    pub trace_url: Option<String>,
    /// Every replica publishes its state (partitions and lag, rate, quota,
    /// bans, breaker, halts, the last hour) to the status topic, whether or
    /// not it serves the console, so any console draws the whole group.
    pub publish_status: bool,
    /// The compacted status topic (default `<kafka.group_id>.status`).
    pub status_topic: Option<String>,
    /// Create the status topic at start when it is missing.
    pub create_status_topic: bool,
    /// How often each replica publishes; one missing for three intervals
    /// shows as gone.
    #[serde(deserialize_with = "millis")]
    pub status_interval_ms: Duration,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            enabled: false,
            users_file: None,
            listen: "127.0.0.1:9480".to_owned(),
            allow_remote: false,
            secure_cookie: None,
            tls_cert_file: None,
            tls_key_file: None,
            session_ttl_ms: Duration::from_millis(8 * 3_600_000),
            login_attempts_per_minute: 5,
            mask_car_no: true,
            trace_url: None,
            publish_status: true,
            status_topic: None,
            create_status_topic: true,
            status_interval_ms: Duration::from_millis(5_000),
        }
    }
}

impl ConsoleSettings {
    /// The status topic's name for `group`.
    pub fn status_topic(&self, group: &str) -> String {
        self.status_topic
            .clone()
            .unwrap_or_else(|| format!("{group}.status"))
    }

    /// Whether the session cookie is marked `Secure`.
    pub fn secure_cookie(&self) -> bool {
        self.secure_cookie
            .unwrap_or(self.allow_remote || self.tls_cert_file.is_some())
    }
}

impl Settings {
    /// `[console]`: a console needs users, and stays on this host unless
    /// `console.allow_remote` says it is reached through TLS.
    pub(super) fn validate_console(&self, problem: &mut impl FnMut(&str, String)) {
        let console = &self.console;
        let loopback = |address: &str| {
            address
                .parse::<std::net::SocketAddr>()
                .map(|address| address.ip().is_loopback())
        };
        match loopback(&console.listen) {
            Err(_) => problem(
                "console.listen",
                format!(
                    "is not an address like 127.0.0.1:9480: {:?}",
                    console.listen
                ),
            ),
            Ok(false) if !console.allow_remote => problem(
                "console.listen",
                format!(
                    "{} is not a loopback address: put TLS in front and set console.allow_remote = true",
                    console.listen
                ),
            ),
            Ok(_) => {}
        }
        if console.enabled {
            if !self.control.enabled {
                problem(
                    "console.enabled",
                    "needs control.enabled: the console's audit log, pauses and tuning live in the control topic".into(),
                );
            }
            if console.users_file.is_none() {
                problem(
                    "console.users_file",
                    "is required when console.enabled: the console has no open mode".into(),
                );
            }
            if loopback(&self.admin.listen) == Ok(false) && !console.allow_remote {
                problem(
                    "console.allow_remote",
                    format!(
                        "must be true to serve the console on admin.listen {}, which is not a loopback address (put TLS in front)",
                        self.admin.listen
                    ),
                );
            }
        }
        if console.tls_cert_file.is_some() != console.tls_key_file.is_some() {
            problem(
                "console.tls_key_file",
                "console.tls_cert_file and console.tls_key_file go together: set both or neither"
                    .into(),
            );
        }
        if console.status_interval_ms.is_zero() {
            problem("console.status_interval_ms", "must be above 0".into());
        }
        if console.session_ttl_ms.is_zero() {
            problem("console.session_ttl_ms", "must be above 0".into());
        }
        if console.login_attempts_per_minute == 0 {
            problem(
                "console.login_attempts_per_minute",
                "must be at least 1".into(),
            );
        }
        if let Some(url) = &console.trace_url
            && !url.contains("{trace_id}")
        {
            problem(
                "console.trace_url",
                format!("{url:?} has no {{trace_id}} to replace"),
            );
        }
    }
}
