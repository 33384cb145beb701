//! paysync's settings: one TOML file, overridable by `PAYSYNC_…` environment
//! variables, with every default defined here and nowhere else.
//!
//! Loading has two steps, as `paysync check-config` shows them: [`Settings::load`]
//! parses (unknown keys and wrong types are errors that name the key), then
//! [`Settings::validate`] checks values and combinations and reports every
//! problem at once, field by field. Environment variables map to keys with
//! `__` between levels: `PAYSYNC_TOP__APP_KEY` sets `top.app_key`.
//! The app secret comes from `top.app_secret` (best set through
//! `PAYSYNC_TOP__APP_SECRET`) or `top.app_secret_file`; it is held in a
//! [`SecretString`] whose `Debug` is redacted, so it reaches no log or error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::event::DEFAULT_MAX_EVENT_BYTES;
use crate::top::classify::{Classifier, UnknownErrorPolicy};
use crate::top::client::{ClientBuildError, Timeouts, TopClient};
use crate::top::request::{RequestProfile, ResponseFormat};
use crate::top::sign::SignMethod;

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "PAYSYNC_";
/// Separator between key levels in those variables.
pub const ENV_SEPARATOR: &str = "__";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub delivery: DeliverySettings,
    #[serde(default)]
    pub top: TopSettings,
    #[serde(default)]
    pub event: EventSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub classification: ClassificationSettings,
    #[serde(default)]
    pub log: LogSettings,
}

/// `[kafka]`: where events come from and where dead letters go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    /// The consumer group; replicas with the same group share the partitions.
    pub group_id: String,
    /// Source topics.
    pub topics: Vec<String>,
    /// The dead-letter topic; it must exist before paysync starts.
    pub dlq_topic: String,
    /// librdkafka's group session timeout.
    pub session_timeout_ms: u64,
    /// How often stored (finished) offsets are committed in the background.
    pub commit_interval_ms: u64,
    /// Where a group with no committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// On revoke, how long in-flight calls of the revoked partitions may
    /// finish before their offsets are committed; must stay below the session timeout.
    pub revoke_drain_timeout_ms: u64,
    /// How often librdkafka reports statistics (committed offsets and lag
    /// per partition, exported as metrics).
    pub statistics_interval_ms: u64,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`,
    /// `sasl.mechanism`, `ssl.ca.location`); they override paysync's own.
    pub librdkafka: BTreeMap<String, String>,
    /// Extra librdkafka properties for the consumer only.
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka properties for the dead-letter producer only.
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            bootstrap_servers: "localhost:9092".to_owned(),
            group_id: "paysync".to_owned(),
            topics: vec!["parking-payments".to_owned()],
            dlq_topic: "parking-payments.dlq".to_owned(),
            // librdkafka's default.
            session_timeout_ms: 45_000,
            commit_interval_ms: 1_000,
            auto_offset_reset: "earliest".to_owned(),
            // Half the session timeout, as Vector does: a slow drain must not
            // push the consumer out of its group.
            revoke_drain_timeout_ms: 22_500,
            statistics_interval_ms: 5_000,
            librdkafka: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// `[delivery]`: concurrency, rate, retries, breaker, drains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// Calls in flight at once, over all partitions.
    pub max_in_flight: usize,
    /// Messages taken from Kafka and not finished, per partition; a full
    /// partition is paused until it drains.
    pub partition_window: usize,
    /// The same, over all partitions.
    pub global_window: usize,
    /// Calls per second (a token bucket in front of every call).
    pub rate_limit_per_sec: u32,
    /// Calls allowed at once above the rate; defaults to the rate (one second's worth).
    pub rate_limit_burst: Option<u32>,
    /// Attempts per event (transient failures while the gateway is otherwise
    /// healthy) before it is dead-lettered as `retries_exhausted`.
    pub max_attempts: u32,
    /// Time spent retrying one event (not counting waits for a ban, an open
    /// breaker or a halt) before it is dead-lettered as `retries_exhausted`.
    pub max_retry_elapsed_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Transient failures in a row that open the circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How often an open breaker lets a probe through.
    pub breaker_probe_interval_ms: u64,
    /// How often a halted pipeline probes the gateway again.
    pub halt_probe_interval_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight work may finish.
    pub shutdown_drain_timeout_ms: u64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            max_in_flight: 64,
            partition_window: 1_000,
            global_window: 10_000,
            rate_limit_per_sec: 100,
            rate_limit_burst: None,
            max_attempts: 8,
            max_retry_elapsed_ms: 600_000,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
            breaker_failure_threshold: 10,
            breaker_probe_interval_ms: 2_000,
            halt_probe_interval_ms: 30_000,
            shutdown_drain_timeout_ms: 10_000,
        }
    }
}

impl DeliverySettings {
    pub fn burst(&self) -> u32 {
        self.rate_limit_burst.unwrap_or(self.rate_limit_per_sec)
    }
}

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
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
}

/// The production gateway over HTTPS (top-protocol.md §6).
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
            // Tighter than the Java SDK's 15 s / 30 s: a slow call holds a
            // Kafka offset back, and a retry is cheap.
            connect_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
        }
    }
}

/// `[admin]`: the metrics and health server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address of `/metrics`, `/health/live`, `/health/ready`; keep it private.
    pub listen: String,
    /// `/health/live` fails when the main loop has not turned for this long.
    /// It must exceed `kafka.revoke_drain_timeout_ms`, during which the loop
    /// waits inside librdkafka's rebalance callback.
    pub liveness_timeout_ms: u64,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: "127.0.0.1:9464".to_owned(),
            liveness_timeout_ms: 60_000,
        }
    }
}

/// `[event]`: decoding of Kafka message values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// Larger message values are dead-lettered as invalid without parsing.
    pub max_bytes: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            max_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

/// `[classification]`: choices the protocol leaves open.
#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClassificationSettings {
    /// `retry` (default) or `dead_letter` for remote errors with no row in the table.
    pub unknown_error: UnknownErrorPolicy,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key, e.g. `top.app_key`.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// The configuration could not be used; lists every problem found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![ConfigProblem {
                key: key.into(),
                reason: reason.into(),
            }],
        }
    }
}

impl Settings {
    /// Parses the file (optional) and the process environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::one(
                    "(file)",
                    format!("{} does not exist or is not a file", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Serialized::globals(env_overrides(env)));
        // Lossy: environment values are strings, and "5000" must fill a number.
        let settings: Settings = figment.extract_lossy().map_err(|error| ConfigError {
            problems: error
                .into_iter()
                .map(|e| ConfigProblem {
                    key: if e.path.is_empty() {
                        "(file)".to_owned()
                    } else {
                        e.path.join(".")
                    },
                    reason: e.kind.to_string(),
                })
                .collect(),
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values and their combinations; reports every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, reason: String| {
            problems.push(ConfigProblem {
                key: key.to_owned(),
                reason,
            })
        };
        let top = &self.top;
        match Url::parse(&top.gateway_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.query().is_none() => {}
            Ok(_) => problem(
                "top.gateway_url",
                "must be an http(s) URL without a query string".into(),
            ),
            Err(error) => problem("top.gateway_url", format!("is not a URL: {error}")),
        }
        if top.app_key.trim().is_empty() {
            problem("top.app_key", "is required".into());
        }
        match (&top.app_secret, &top.app_secret_file) {
            (Some(_), Some(_)) => problem(
                "top.app_secret",
                "set either app_secret or app_secret_file, not both".into(),
            ),
            (None, None) => problem(
                "top.app_secret",
                "is required (or top.app_secret_file, or PAYSYNC_TOP__APP_SECRET)".into(),
            ),
            (Some(secret), None) if secret.expose_secret().trim().is_empty() => {
                problem("top.app_secret", "must not be empty".into())
            }
            (None, Some(path)) => {
                if let Err(reason) = read_secret_file(path) {
                    problem("top.app_secret_file", reason);
                }
            }
            (Some(_), None) => {}
        }
        for (key, ms) in [
            ("top.connect_timeout_ms", top.connect_timeout_ms),
            ("top.request_timeout_ms", top.request_timeout_ms),
        ] {
            if ms == 0 {
                problem(key, "must be greater than 0".into());
            }
        }
        if top.connect_timeout_ms > top.request_timeout_ms {
            problem(
                "top.connect_timeout_ms",
                format!(
                    "({}) must not exceed top.request_timeout_ms ({})",
                    top.connect_timeout_ms, top.request_timeout_ms
                ),
            );
        }
        let kafka = &self.kafka;
        for (key, value) in [
            ("kafka.bootstrap_servers", &kafka.bootstrap_servers),
            ("kafka.group_id", &kafka.group_id),
            ("kafka.dlq_topic", &kafka.dlq_topic),
        ] {
            if value.trim().is_empty() {
                problem(key, "is required".into());
            }
        }
        if kafka.topics.is_empty() || kafka.topics.iter().any(|t| t.trim().is_empty()) {
            problem("kafka.topics", "needs at least one non-empty topic".into());
        }
        if kafka.topics.contains(&kafka.dlq_topic) {
            problem(
                "kafka.dlq_topic",
                "must not be one of the source topics".into(),
            );
        }
        if !matches!(kafka.auto_offset_reset.as_str(), "earliest" | "latest") {
            problem(
                "kafka.auto_offset_reset",
                format!(
                    "must be earliest or latest, got {:?}",
                    kafka.auto_offset_reset
                ),
            );
        }
        if kafka.revoke_drain_timeout_ms >= kafka.session_timeout_ms {
            problem(
                "kafka.revoke_drain_timeout_ms",
                format!(
                    "({}) must be below kafka.session_timeout_ms ({}), or a slow drain drops the consumer from its group",
                    kafka.revoke_drain_timeout_ms, kafka.session_timeout_ms
                ),
            );
        }
        for (table, map) in [
            ("kafka.librdkafka", &kafka.librdkafka),
            ("kafka.consumer", &kafka.consumer),
            ("kafka.producer", &kafka.producer),
        ] {
            for name in map.keys() {
                if let Some((_, reason)) = RESERVED_LIBRDKAFKA
                    .iter()
                    .find(|(reserved, _)| reserved == name)
                {
                    problem(&format!("{table}.\"{name}\""), (*reason).to_owned());
                }
            }
        }
        let delivery = &self.delivery;
        for (key, value) in [
            ("delivery.max_in_flight", delivery.max_in_flight as u64),
            (
                "delivery.partition_window",
                delivery.partition_window as u64,
            ),
            ("delivery.global_window", delivery.global_window as u64),
            (
                "delivery.rate_limit_per_sec",
                u64::from(delivery.rate_limit_per_sec),
            ),
            ("delivery.rate_limit_burst", u64::from(delivery.burst())),
            ("delivery.max_attempts", u64::from(delivery.max_attempts)),
            (
                "delivery.breaker_failure_threshold",
                u64::from(delivery.breaker_failure_threshold),
            ),
            (
                "delivery.breaker_probe_interval_ms",
                delivery.breaker_probe_interval_ms,
            ),
            (
                "delivery.halt_probe_interval_ms",
                delivery.halt_probe_interval_ms,
            ),
        ] {
            if value == 0 {
                problem(key, "must be greater than 0".into());
            }
        }
        if delivery.backoff_initial_ms > delivery.backoff_max_ms {
            problem(
                "delivery.backoff_initial_ms",
                "must not exceed delivery.backoff_max_ms".into(),
            );
        }
        if self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            problem(
                "admin.listen",
                format!(
                    "is not an address like 127.0.0.1:9464: {:?}",
                    self.admin.listen
                ),
            );
        }
        if self.admin.liveness_timeout_ms <= self.kafka.revoke_drain_timeout_ms {
            problem(
                "admin.liveness_timeout_ms",
                format!(
                    "({}) must exceed kafka.revoke_drain_timeout_ms ({}), or a rebalance would look like a stuck process",
                    self.admin.liveness_timeout_ms, self.kafka.revoke_drain_timeout_ms
                ),
            );
        }
        if self.event.max_bytes == 0 {
            problem("event.max_bytes", "must be greater than 0".into());
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problem("log.level", format!("is not a valid filter: {error}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

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
        })
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(self.top.connect_timeout_ms),
            request: Duration::from_millis(self.top.request_timeout_ms),
        }
    }

    pub fn classifier(&self) -> Classifier {
        Classifier {
            unknown_error: self.classification.unknown_error,
        }
    }

    /// A client for the configured gateway.
    pub fn top_client(&self) -> Result<TopClient, anyhow::Error> {
        let url = Url::parse(&self.top.gateway_url)
            .map_err(|e| ConfigError::one("top.gateway_url", format!("is not a URL: {e}")))?;
        let client = TopClient::new(url, self.request_profile()?, self.timeouts())
            .map_err(|e: ClientBuildError| anyhow::anyhow!(e))?;
        Ok(client)
    }
}

fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.trim().is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(secret.to_owned()))
}

/// librdkafka properties paysync owns: setting them through the pass-through
/// tables would break a guarantee or bypass a validated setting.
const RESERVED_LIBRDKAFKA: [(&str, &str); 9] = [
    (
        "statistics.interval.ms",
        "set kafka.statistics_interval_ms instead",
    ),
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    ("group.id", "set kafka.group_id instead"),
    (
        "enable.auto.offset.store",
        "paysync stores offsets itself, only after success; this cannot be changed",
    ),
    (
        "enable.auto.commit",
        "paysync commits stored offsets in the background; set kafka.commit_interval_ms",
    ),
    (
        "auto.commit.interval.ms",
        "set kafka.commit_interval_ms instead",
    ),
    (
        "session.timeout.ms",
        "set kafka.session_timeout_ms instead (it is checked against the revoke drain)",
    ),
    (
        "enable.idempotence",
        "the dead-letter producer is always idempotent",
    ),
    (
        "acks",
        "the dead-letter producer always waits for all in-sync replicas",
    ),
];

/// Settings that are lists; from the environment they are comma-separated.
const LIST_KEYS: [&str; 1] = ["kafka.topics"];

/// Settings from the environment: `PAYSYNC_TOP__APP_KEY=x` → `{top: {app_key: "x"}}`, values kept as strings.
fn env_overrides(env: impl IntoIterator<Item = (String, String)>) -> Dict {
    let mut root = Dict::new();
    for (name, value) in env {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        // Every setting lives in a section, so an override has at least one
        // separator; other PAYSYNC_ variables (PAYSYNC_APP_SECRET for `sign`,
        // the test scripts' PAYSYNC_KAFKA_PORT, ...) are not configuration.
        if keys.len() < 2 || keys.iter().any(String::is_empty) {
            continue;
        }
        let value = if LIST_KEYS.contains(&keys.join(".").as_str()) {
            Value::from(
                value
                    .split(',')
                    .map(|item| item.trim().to_owned())
                    .collect::<Vec<String>>(),
            )
        } else {
            Value::from(value)
        };
        insert_path(&mut root, &keys, value);
    }
    root
}

fn insert_path(dict: &mut Dict, keys: &[String], value: Value) {
    match keys {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_config(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/paysync.example.toml");
        let settings =
            Settings::load_from(Some(&path), env(&[("PAYSYNC_TOP__APP_SECRET", "s3cret")]))
                .unwrap();
        assert_eq!(settings.top.sign_method, SignMethod::HmacSha256);
    }

    #[test]
    fn environment_overrides_the_file_and_fills_numbers() {
        let file = write_config("[top]\napp_key = \"from-file\"\nrequest_timeout_ms = 7000\n");
        let settings = Settings::load_from(
            Some(file.path()),
            env(&[
                ("PAYSYNC_TOP__APP_KEY", "12345678"),
                ("PAYSYNC_TOP__APP_SECRET", "s3cret"),
                ("PAYSYNC_TOP__CONNECT_TIMEOUT_MS", "250"),
                ("PAYSYNC_KAFKA__TOPICS", "a, b"),
                ("UNRELATED", "x"),
                ("PAYSYNC_E2E_BOOTSTRAP", "127.0.0.1:19092"),
                ("PAYSYNC_KAFKA_PORT", "19092"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.top.app_key, "12345678");
        assert_eq!(settings.top.connect_timeout_ms, 250);
        assert_eq!(settings.kafka.topics, ["a", "b"]);
        assert_eq!(settings.top.request_timeout_ms, 7000);
        assert_eq!(settings.app_secret().unwrap().expose_secret(), "s3cret");
    }

    #[test]
    fn every_problem_is_named_by_its_key() {
        let file = write_config(
            "[top]\ngateway_url = \"ftp://x\"\nconnect_timeout_ms = 0\n[event]\nmax_bytes = 0\n",
        );
        let error = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "top.gateway_url",
                "top.app_key",
                "top.app_secret",
                "top.connect_timeout_ms",
                "event.max_bytes"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let file = write_config("[top]\napp_kye = \"x\"\n");
        let error = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        assert!(error.to_string().contains("app_kye"), "{error}");
        let file = write_config("[top]\nrequest_timeout_ms = \"soon\"\n");
        let error = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        assert_eq!(error.problems[0].key, "top.request_timeout_ms", "{error}");
        let file = write_config("[top]\nsign_method = \"sha1\"\n");
        let error = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        assert_eq!(error.problems[0].key, "top.sign_method", "{error}");
    }

    #[test]
    fn secret_comes_from_a_file_and_never_shows_in_debug() {
        let secret_file = write_config("from-file-secret\n");
        let file = write_config(&format!(
            "[top]\napp_key = \"k\"\napp_secret_file = {:?}\n",
            secret_file.path().display().to_string()
        ));
        let settings = Settings::load_from(Some(file.path()), env(&[])).unwrap();
        assert_eq!(
            settings.app_secret().unwrap().expose_secret(),
            "from-file-secret"
        );
        let inline = Settings::load_from(
            None,
            env(&[
                ("PAYSYNC_TOP__APP_KEY", "k"),
                ("PAYSYNC_TOP__APP_SECRET", "hunter2"),
            ]),
        )
        .unwrap();
        let debug = format!("{inline:?} {:?}", inline.request_profile().unwrap());
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn librdkafka_properties_that_would_break_a_guarantee_are_refused() {
        let file = write_config(
            "[top]\napp_key = \"k\"\napp_secret = \"s\"\n[kafka.consumer]\n\"enable.auto.offset.store\" = \"true\"\n[kafka.librdkafka]\n\"security.protocol\" = \"SASL_SSL\"\n",
        );
        let error = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        assert_eq!(error.problems.len(), 1, "{error}");
        assert_eq!(
            error.problems[0].key,
            "kafka.consumer.\"enable.auto.offset.store\""
        );
    }

    #[test]
    fn the_revoke_drain_must_stay_below_the_session_timeout() {
        let file = write_config(
            "[top]\napp_key = \"k\"\napp_secret = \"s\"\n[kafka]\nsession_timeout_ms = 10000\nrevoke_drain_timeout_ms = 10000\n",
        );
        let error = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        assert_eq!(
            error.problems[0].key, "kafka.revoke_drain_timeout_ms",
            "{error}"
        );
    }

    #[test]
    fn a_missing_file_is_reported() {
        let error = Settings::load_from(Some(Path::new("/nonexistent/paysync.toml")), env(&[]))
            .unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
    }
}
