//! Validation: every value and combination checked at once, each problem
//! named by its dotted key.

use std::fmt;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::Settings;
use crate::commit_metadata::MAX_TEXT as MAX_COMPLETION_MAP_BYTES;
use crate::ledger::entry::KeyField;

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
    pub fn one(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![ConfigProblem {
                key: key.into(),
                reason: reason.into(),
            }],
        }
    }
}

impl Settings {
    /// Checks values and their combinations; reports every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, reason: String| {
            problems.push(ConfigProblem {
                key: key.to_owned(),
                reason,
            })
        };
        let tracing = &self.tracing;
        if !(0.0..=1.0).contains(&tracing.sampling_ratio) {
            problem(
                "tracing.sampling_ratio",
                "must be between 0.0 and 1.0".into(),
            );
        }
        if tracing.queue_size == 0 {
            problem("tracing.queue_size", "must be above 0".into());
        }
        if tracing.batch_size == 0 || tracing.batch_size > tracing.queue_size {
            problem(
                "tracing.batch_size",
                "must be above 0 and at most tracing.queue_size".into(),
            );
        }
        if let Some(endpoint) = &tracing.endpoint {
            match Url::parse(endpoint) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                _ => problem(
                    "tracing.endpoint",
                    "must be an http(s) URL, e.g. http://127.0.0.1:4317".into(),
                ),
            }
        }
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
            if ms.is_zero() {
                problem(key, "must be greater than 0".into());
            }
        }
        if top.connect_timeout_ms > top.request_timeout_ms {
            problem(
                "top.connect_timeout_ms",
                format!(
                    "({}) must not exceed top.request_timeout_ms ({})",
                    top.connect_timeout_ms.as_millis(),
                    top.request_timeout_ms.as_millis()
                ),
            );
        }
        if top.proxy_password.is_some() && top.proxy_password_file.is_some() {
            problem(
                "top.proxy_password",
                "set either proxy_password or proxy_password_file, not both".into(),
            );
        }
        if (top.proxy_password.is_some() || top.proxy_password_file.is_some())
            && top.proxy_username.is_none()
        {
            problem(
                "top.proxy_username",
                "is required with a proxy password".into(),
            );
        }
        // How calls leave the host: the proxy decision (which reads the
        // environment) and the trusted roots (which read top.ca_file).
        match self.egress() {
            Ok(egress) => {
                if let Err(error) = egress.trust.client_config() {
                    problem(&error.key, error.reason);
                }
            }
            Err(error) => {
                for found in error.problems {
                    // A bad gateway URL is reported above.
                    if found.key != "top.gateway_url" {
                        problem(&found.key, found.reason);
                    }
                }
            }
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
        self.validate_console(&mut problem);
        let control = &self.control;
        if control.replication_factor == 0 || control.replication_factor < -1 {
            problem(
                "control.replication_factor",
                "must be -1 (the broker's default) or at least 1".into(),
            );
        }
        if control.refresh_ms.is_zero() {
            problem("control.refresh_ms", "must be above 0".into());
        }
        if control.lease_ms < control.refresh_ms * 3 {
            problem(
                "control.lease_ms",
                format!(
                    "({}) must be at least three control.refresh_ms ({}): a caller renews its lease every refresh, and one late renewal must not expire it",
                    control.lease_ms.as_millis(),
                    control.refresh_ms.as_millis()
                ),
            );
        }
        for (key, weight) in [
            ("control.live_weight", control.live_weight),
            ("control.backfill_weight", control.backfill_weight),
        ] {
            if weight == 0 {
                problem(key, "must be at least 1".into());
            }
        }
        if control.headroom_percent > 500 {
            problem(
                "control.headroom_percent",
                "must be at most 500 (a caller would claim six times what it uses)".into(),
            );
        }
        let control_topic = control.topic(&kafka.group_id);
        if kafka.topics.contains(&control_topic)
            || kafka.dlq_topic == control_topic
            || self.ledger.topic(&kafka.group_id) == control_topic
        {
            problem(
                "control.topic",
                format!("{control_topic:?} is already a source, dead-letter or ledger topic"),
            );
        }
        let fairness = &self.fairness;
        for (table, map) in [
            ("fairness.weights", &fairness.weights),
            ("fairness.floors", &fairness.floors),
            ("fairness.ceilings", &fairness.ceilings),
        ] {
            for (park, value) in map {
                if *value == 0 {
                    problem(&format!("{table}.\"{park}\""), "must be at least 1".into());
                }
            }
        }
        for (park, floor) in &fairness.floors {
            if let Some(ceiling) = fairness.ceilings.get(park)
                && floor > ceiling
            {
                problem(
                    &format!("fairness.floors.\"{park}\""),
                    format!("({floor}) must not exceed its ceiling ({ceiling})"),
                );
            }
        }
        let ledger = &self.ledger;
        if !ledger.key_fields.contains(&KeyField::OrderId) {
            problem(
                "ledger.key_fields",
                "must include order_id (every key names its order)".into(),
            );
        }
        if ledger.retain_days == 0 {
            problem("ledger.retain_days", "must be at least 1".into());
        }
        if ledger.replication_factor == 0 || ledger.replication_factor < -1 {
            problem(
                "ledger.replication_factor",
                "must be -1 (the broker's default) or at least 1".into(),
            );
        }
        let ledger_topic = ledger.topic(&kafka.group_id);
        if kafka.topics.contains(&ledger_topic) || kafka.dlq_topic == ledger_topic {
            problem(
                "ledger.topic",
                format!("{ledger_topic:?} is a source or the dead-letter topic"),
            );
        }
        if self.reconcile.parks_per_call == 0 {
            problem("reconcile.parks_per_call", "must be at least 1".into());
        }
        if !matches!(
            self.reconcile.order_type.as_str(),
            "ISV_ORDER" | "CITY_BRAIN_ORDER" | "MIAOJIE_ORDER"
        ) {
            problem(
                "reconcile.order_type",
                "must be ISV_ORDER, CITY_BRAIN_ORDER or MIAOJIE_ORDER".into(),
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
        if kafka.completion_map_max_bytes > MAX_COMPLETION_MAP_BYTES {
            problem(
                "kafka.completion_map_max_bytes",
                format!(
                    "({}) must be at most {MAX_COMPLETION_MAP_BYTES} (and below the broker's offset.metadata.max.bytes, 4096 by default)",
                    kafka.completion_map_max_bytes
                ),
            );
        }
        if kafka.revoke_drain_timeout_ms >= kafka.session_timeout_ms {
            problem(
                "kafka.revoke_drain_timeout_ms",
                format!(
                    "({}) must be below kafka.session_timeout_ms ({}), or a slow drain drops the consumer from its group",
                    kafka.revoke_drain_timeout_ms.as_millis(),
                    kafka.session_timeout_ms.as_millis()
                ),
            );
        }
        match (&kafka.group_instance_id, kafka.group_instance_id_from_hostname) {
            (Some(_), true) => problem(
                "kafka.group_instance_id",
                "set either group_instance_id or group_instance_id_from_hostname, not both".into(),
            ),
            (Some(id), false) if id.trim().is_empty() => {
                problem("kafka.group_instance_id", "must not be empty".into())
            }
            (None, true) if super::hostname().is_none() => problem(
                "kafka.group_instance_id_from_hostname",
                "the host name is unknown (HOSTNAME is unset and /proc/sys/kernel/hostname unreadable)"
                    .into(),
            ),
            _ => {}
        }
        if kafka.group_protocol == super::GroupProtocol::Consumer {
            for (table, map) in [
                ("kafka.librdkafka", &kafka.librdkafka),
                ("kafka.consumer", &kafka.consumer),
            ] {
                for name in ["partition.assignment.strategy", "heartbeat.interval.ms"] {
                    if map.contains_key(name) {
                        problem(
                            &format!("{table}.\"{name}\""),
                            "is not supported with kafka.group_protocol = \"consumer\": the broker assigns partitions and sets the heartbeat".into(),
                        );
                    }
                }
            }
        }
        for (table, map) in [
            ("kafka.librdkafka", &kafka.librdkafka),
            ("kafka.consumer", &kafka.consumer),
            ("kafka.producer", &kafka.producer),
        ] {
            for name in map.keys() {
                if let Some(reason) = crate::config::librdkafka::reserved_reason(name) {
                    problem(&format!("{table}.\"{name}\""), reason.to_owned());
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
            (
                "delivery.rate_limit_min_per_sec",
                u64::from(delivery.min_rate()),
            ),
            (
                "delivery.rate_probe_interval_ms",
                delivery.rate_probe_interval_ms.as_millis() as u64,
            ),
            (
                "kafka.metadata_refresh_interval_ms",
                kafka.metadata_refresh_interval_ms.as_millis() as u64,
            ),
            ("delivery.max_attempts", u64::from(delivery.max_attempts)),
            (
                "delivery.breaker_failure_threshold",
                u64::from(delivery.breaker_failure_threshold),
            ),
            (
                "delivery.breaker_probe_interval_ms",
                delivery.breaker_probe_interval_ms.as_millis() as u64,
            ),
            (
                "delivery.halt_probe_interval_ms",
                delivery.halt_probe_interval_ms.as_millis() as u64,
            ),
        ] {
            if value == 0 {
                problem(key, "must be greater than 0".into());
            }
        }
        if delivery.min_rate() > delivery.rate_limit_per_sec {
            problem(
                "delivery.rate_limit_min_per_sec",
                "must not exceed delivery.rate_limit_per_sec (the adaptive ceiling)".into(),
            );
        }
        if delivery.rate_probe_interval_ms > delivery.rate_probe_interval_max_ms {
            problem(
                "delivery.rate_probe_interval_ms",
                "must not exceed delivery.rate_probe_interval_max_ms".into(),
            );
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
                    self.admin.liveness_timeout_ms.as_millis(),
                    self.kafka.revoke_drain_timeout_ms.as_millis()
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
}

pub(super) fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.trim().is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(secret.to_owned()))
}
