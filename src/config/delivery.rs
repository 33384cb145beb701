//! `[delivery]`: how calls go out — concurrency, the rate and how it is
//! chosen, retries, the breaker, drains — with its defaults.

use std::time::Duration;

use serde::Deserialize;

use super::millis;

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
    /// Calls per second (a token bucket in front of every call); in adaptive
    /// mode the ceiling the group's rate may reach.
    pub rate_limit_per_sec: u32,
    /// Calls allowed at once above the rate; defaults to a tenth of a
    /// second's worth, which leaves a gateway bucket of the same rate room
    /// for the jitter of the network.
    pub rate_limit_burst: Option<u32>,
    /// `fixed`: the rate is `rate_limit_per_sec`. `adaptive`: the rate is
    /// found from the gateway's bans, between `rate_limit_min_per_sec` and
    /// `rate_limit_per_sec` (docs/adaptive-rate.md).
    pub rate_limit_mode: RateLimitMode,
    /// Adaptive mode: the group's rate never goes below this, and starts
    /// here (default: a twentieth of `rate_limit_per_sec`, at least 1).
    pub rate_limit_min_per_sec: Option<u32>,
    /// Adaptive mode: how long the rate holds below a measured quota before
    /// it probes for more (doubling, up to the maximum, while probes find
    /// the same quota).
    #[serde(deserialize_with = "millis")]
    pub rate_probe_interval_ms: Duration,
    #[serde(deserialize_with = "millis")]
    pub rate_probe_interval_max_ms: Duration,
    /// Whose quota the rate and burst are: `group` (the whole consumer group;
    /// each replica takes its partitions' share) or `replica` (each process's).
    pub rate_limit_scope: RateLimitScope,
    /// Attempts per event (transient failures while the gateway is otherwise
    /// healthy) before it is dead-lettered as `retries_exhausted`.
    pub max_attempts: u32,
    /// Time spent retrying one event (not counting waits for a ban, an open
    /// breaker or a halt) before it is dead-lettered as `retries_exhausted`.
    #[serde(deserialize_with = "millis")]
    pub max_retry_elapsed_ms: Duration,
    #[serde(deserialize_with = "millis")]
    pub backoff_initial_ms: Duration,
    #[serde(deserialize_with = "millis")]
    pub backoff_max_ms: Duration,
    /// Transient failures in a row that open the circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How often an open breaker lets a probe through.
    #[serde(deserialize_with = "millis")]
    pub breaker_probe_interval_ms: Duration,
    /// How often a halted pipeline probes the gateway again.
    #[serde(deserialize_with = "millis")]
    pub halt_probe_interval_ms: Duration,
    /// On SIGTERM/SIGINT, how long in-flight work may finish.
    #[serde(deserialize_with = "millis")]
    pub shutdown_drain_timeout_ms: Duration,
    /// A partition held this long by a failing dead-letter write makes
    /// `/health/ready` report `degraded`, naming it.
    #[serde(deserialize_with = "millis")]
    pub dead_letter_stall_ms: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            max_in_flight: 64,
            partition_window: 1_000,
            global_window: 2_000,
            rate_limit_per_sec: 100,
            rate_limit_burst: None,
            rate_limit_scope: RateLimitScope::Group,
            rate_limit_mode: RateLimitMode::Fixed,
            rate_limit_min_per_sec: None,
            rate_probe_interval_ms: Duration::from_millis(15_000),
            rate_probe_interval_max_ms: Duration::from_millis(240_000),
            max_attempts: 8,
            max_retry_elapsed_ms: Duration::from_millis(600_000),
            backoff_initial_ms: Duration::from_millis(200),
            backoff_max_ms: Duration::from_millis(30_000),
            breaker_failure_threshold: 10,
            breaker_probe_interval_ms: Duration::from_millis(2_000),
            halt_probe_interval_ms: Duration::from_millis(30_000),
            shutdown_drain_timeout_ms: Duration::from_millis(10_000),
            dead_letter_stall_ms: Duration::from_millis(60_000),
        }
    }
}

/// Whose quota `delivery.rate_limit_per_sec` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    /// The whole consumer group's; each replica takes its partitions' share.
    #[default]
    Group,
    /// Each replica's.
    Replica,
}

/// How the group's rate is chosen (`delivery.rate_limit_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitMode {
    /// `rate_limit_per_sec` is the quota.
    #[default]
    Fixed,
    /// The quota is found from the gateway's bans, up to `rate_limit_per_sec`.
    Adaptive,
}

impl DeliverySettings {
    /// The burst: configured, or a tenth of the rate (at least 1).
    pub fn burst(&self) -> u32 {
        self.rate_limit_burst
            .unwrap_or((self.rate_limit_per_sec / 10).max(1))
    }

    /// The adaptive floor: configured, or a twentieth of the ceiling (at least 1).
    pub fn min_rate(&self) -> u32 {
        self.rate_limit_min_per_sec
            .unwrap_or((self.rate_limit_per_sec / 20).max(1))
    }
}
