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
use std::time::Duration;

use serde::Deserialize;

mod console;
mod control;
mod delivery;
mod environment;
mod ledger;
pub mod librdkafka;
mod load;
mod top;
mod tracing;
mod validate;

pub use console::ConsoleSettings;
pub use control::{ControlSettings, FairnessKey, FairnessSettings};
pub use delivery::{DeliverySettings, RateLimitMode, RateLimitScope};
pub use environment::Environment;
pub use ledger::{LedgerMode, LedgerSettings, ReconcileSettings, ReportedIds};
pub use load::{ENV_PREFIX, ENV_SEPARATOR};
pub use top::{DEFAULT_GATEWAY_URL, TopSettings};
pub use tracing::{OtlpEndpoint, OtlpProtocol, TracingSettings};
pub use validate::{ConfigError, ConfigProblem};

use crate::event::{DEFAULT_MAX_EVENT_BYTES, FieldLengths, Limits};
use crate::top::classify::{Classifier, UnknownErrorPolicy};
use crate::top::client::ClientBuildError;

/// Why a TOP client could not be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum TopClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] ClientBuildError),
}

/// Reads a number of milliseconds (the keys keep their `_ms` names) as a [`Duration`].
fn millis<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

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
    #[serde(default)]
    pub tracing: TracingSettings,
    #[serde(default)]
    pub ledger: LedgerSettings,
    #[serde(default)]
    pub reconcile: ReconcileSettings,
    #[serde(default)]
    pub control: ControlSettings,
    #[serde(default)]
    pub fairness: FairnessSettings,
    #[serde(default)]
    pub console: ConsoleSettings,
    /// The proxy and `OTEL_*` variables of the environment the settings
    /// loaded from (the tracing settings keep their own copy).
    #[serde(skip)]
    pub environment: Environment,
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
    #[serde(deserialize_with = "millis")]
    pub session_timeout_ms: Duration,
    /// The least time between two commits while positions move: a commit
    /// (finished positions with their completion maps) goes out as soon as
    /// the previous one ended and this long passed since it was sent. What
    /// a crash makes the next owner send again is bounded by the calls under
    /// way plus the rate times (this + one commit's round trip).
    #[serde(deserialize_with = "millis")]
    pub commit_interval_ms: Duration,
    /// How long `paysync run` keeps trying to reach Kafka at start-up (with
    /// backoff, readiness 503 meanwhile) before it exits with an error.
    #[serde(deserialize_with = "millis")]
    pub startup_timeout_ms: Duration,
    /// The largest completion map (finished offsets above a committed
    /// position) stored in a commit's metadata, in bytes; 0 stores none.
    /// Must stay below the broker's `offset.metadata.max.bytes` (4096 by default).
    pub completion_map_max_bytes: usize,
    /// Where a group with no committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// On revoke, how long in-flight calls of the revoked partitions may
    /// finish before their offsets are committed; must stay below the session timeout.
    #[serde(deserialize_with = "millis")]
    pub revoke_drain_timeout_ms: Duration,
    /// How often librdkafka reports statistics (committed offsets and lag
    /// per partition, exported as metrics).
    #[serde(deserialize_with = "millis")]
    pub statistics_interval_ms: Duration,
    /// How often the subscribed topics' partition counts are read from
    /// metadata (and librdkafka's `topic.metadata.refresh.interval.ms`): a
    /// topic that grows has its new partitions consumed, and every replica
    /// divides the group's rate by the new count, within about this long.
    #[serde(deserialize_with = "millis")]
    pub metadata_refresh_interval_ms: Duration,
    /// The group protocol: `auto` (default: `consumer` where the cluster
    /// speaks it, `classic` otherwise), `classic`, or `consumer`, the
    /// rebalance protocol of KIP-848 (Apache Kafka 4+), where the broker
    /// assigns partitions incrementally, a member's restart stops no other
    /// member, and the session timeout is the broker's.
    pub group_protocol: GroupProtocol,
    /// Static membership (`group.instance.id`): a stable identity for this
    /// replica, so a restart within the session timeout moves no partitions.
    /// Each replica needs its own.
    pub group_instance_id: Option<String>,
    /// Use the host name (on Kubernetes, the pod name) as `group_instance_id`.
    pub group_instance_id_from_hostname: bool,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`,
    /// `sasl.mechanism`, `ssl.ca.location`); they override paysync's defaults.
    /// The properties paysync owns are refused (see [`crate::config::librdkafka::RESERVED`]).
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
            session_timeout_ms: Duration::from_millis(45_000),
            // 20 commits a second at most per replica while busy: a crash
            // at 2,000 calls/s re-sends about 100 finished calls, not 2,000
            // (docs/performance.md, "Commits").
            commit_interval_ms: Duration::from_millis(50),
            // Long enough for a broker that starts with the stack (compose,
            // a node reboot); a supervisor restarts paysync after it anyway.
            startup_timeout_ms: Duration::from_millis(300_000),
            // Below the broker's default offset.metadata.max.bytes (4096).
            completion_map_max_bytes: 4_000,
            auto_offset_reset: "earliest".to_owned(),
            // Half the session timeout, as Vector does: a slow drain must not
            // push the consumer out of its group.
            revoke_drain_timeout_ms: Duration::from_millis(22_500),
            statistics_interval_ms: Duration::from_millis(5_000),
            metadata_refresh_interval_ms: Duration::from_millis(2_000),
            group_protocol: GroupProtocol::Auto,
            group_instance_id: None,
            group_instance_id_from_hostname: false,
            librdkafka: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// The consumer group protocol (`kafka.group_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    /// `consumer` where the cluster's group coordinators speak it, `classic`
    /// otherwise: read from the brokers at start-up
    /// ([`crate::kafka::cluster::resolve_protocol`]).
    #[default]
    Auto,
    /// The original protocol: the group leader assigns, with the strategy of
    /// `partition.assignment.strategy` (set `cooperative-sticky` in
    /// `[kafka.consumer]` for incremental rebalances).
    Classic,
    /// KIP-848: the broker assigns, incrementally.
    Consumer,
}

impl GroupProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Auto => "auto",
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

impl KafkaSettings {
    /// This replica's static identity in the group, if it has one.
    pub fn instance_id(&self) -> Option<String> {
        if self.group_instance_id_from_hostname {
            return hostname();
        }
        self.group_instance_id.clone()
    }
}

/// The host name: `HOSTNAME` (set by Kubernetes to the pod name), else the kernel's.
pub(crate) fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
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
    #[serde(deserialize_with = "millis")]
    pub liveness_timeout_ms: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: "127.0.0.1:9464".to_owned(),
            liveness_timeout_ms: Duration::from_millis(60_000),
        }
    }
}

/// `[event]`: decoding of Kafka message values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// Larger message values are dead-lettered as invalid without parsing.
    pub max_bytes: usize,
    /// The most characters each text field may hold (`[event.max_chars]`).
    pub max_chars: FieldLengths,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            max_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_chars: FieldLengths::default(),
        }
    }
}

impl EventSettings {
    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_bytes,
            max_chars: self.max_chars,
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

impl Settings {
    pub fn classifier(&self) -> Classifier {
        Classifier {
            unknown_error: self.classification.unknown_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::sign::SignMethod;
    use secrecy::ExposeSecret;
    use std::io::Write;
    use std::path::Path;

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
        assert_eq!(settings.top.connect_timeout_ms, Duration::from_millis(250));
        assert_eq!(settings.kafka.topics, ["a", "b"]);
        assert_eq!(settings.top.request_timeout_ms, Duration::from_millis(7000));
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
    fn every_problem_of_every_section_is_reported_together() {
        let file = write_config(
            "[kafka]\ncommit_interval_ms = \"soon\"\ntopcis = [\"x\"]\nsession_timeout_ms = 3000\n[top]\napp_kye = \"x\"\n[event]\nmax_bytes = 0\n[extra]\na = 1\n",
        );
        let error = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "extra",
                "kafka.commit_interval_ms",
                "kafka.topcis",
                "top.app_kye",
                // The sections with a bad key are still validated from the
                // keys that did read.
                "top.app_key",
                "top.app_secret",
                "kafka.revoke_drain_timeout_ms",
                "event.max_bytes",
            ],
            "{error}"
        );
        let reasons = error.to_string();
        assert!(reasons.contains("`topcis`"), "{reasons}");
        assert!(
            reasons.contains("3000"),
            "the drain is checked against the session timeout read: {reasons}"
        );
        assert!(reasons.contains("unknown section"), "{reasons}");
    }

    #[test]
    fn a_value_that_did_not_read_is_not_judged_as_its_default() {
        // delivery.max_in_flight's default is valid, but it did not read:
        // only the type error is reported for it.
        let file = write_config("[delivery]\nmax_in_flight = \"many\"\n");
        let error = Settings::load_from(
            Some(file.path()),
            env(&[
                ("PAYSYNC_TOP__APP_KEY", "12345678"),
                ("PAYSYNC_TOP__APP_SECRET", "s3cret"),
                ("PAYSYNC_DELIVERY__RATE_LIMIT_PER_SEC", "x"),
            ]),
        )
        .unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["delivery.max_in_flight", "delivery.rate_limit_per_sec"],
            "{error}"
        );
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
    fn a_completion_map_budget_past_what_is_decoded_is_refused() {
        let file = write_config(
            "[top]\napp_key = \"k\"\napp_secret = \"s\"\n[kafka]\ncompletion_map_max_bytes = 100000\n",
        );
        let error = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        assert_eq!(error.problems[0].key, "kafka.completion_map_max_bytes");
        assert!(
            error.problems[0]
                .reason
                .contains("offset.metadata.max.bytes")
        );
        let off = write_config(
            "[top]\napp_key = \"k\"\napp_secret = \"s\"\n[kafka]\ncompletion_map_max_bytes = 0\n",
        );
        assert!(
            Settings::load_from(Some(off.path()), env(&[])).is_ok(),
            "0 turns maps off"
        );
    }

    #[test]
    fn static_membership_and_the_group_protocol_are_checked() {
        let file = write_config(
            "[top]\napp_key = \"k\"\napp_secret = \"s\"\n[kafka]\ngroup_protocol = \"consumer\"\ngroup_instance_id = \"a\"\ngroup_instance_id_from_hostname = true\n[kafka.consumer]\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n",
        );
        let error = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "kafka.group_instance_id",
                "kafka.consumer.\"partition.assignment.strategy\""
            ],
            "{error}"
        );
        let file = write_config(
            "[top]\napp_key = \"k\"\napp_secret = \"s\"\n[kafka]\ngroup_protocol = \"consumer\"\ngroup_instance_id = \"paysync-1\"\n",
        );
        let settings = Settings::load_from(Some(file.path()), env(&[])).unwrap();
        assert_eq!(settings.kafka.group_protocol, GroupProtocol::Consumer);
        assert_eq!(settings.kafka.instance_id().as_deref(), Some("paysync-1"));
    }

    #[test]
    fn a_missing_file_is_reported() {
        let error = Settings::load_from(Some(Path::new("/nonexistent/paysync.toml")), env(&[]))
            .unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
    }
}
