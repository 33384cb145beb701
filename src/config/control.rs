//! `[control]` and `[fairness]`: the control topic every caller on the app
//! key shares (tenants of one rate, live tuning, pauses; docs/control.md),
//! and the fair turns between car parks inside a replica — with their
//! defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::millis;

/// `[control]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSettings {
    /// Off: no control topic; a replay, redrive or reconciliation takes its
    /// own rate on top of the group's, and nothing can be tuned or paused
    /// while running.
    pub enabled: bool,
    /// The compacted topic (default `<kafka.group_id>.control`).
    pub topic: Option<String>,
    /// Create the topic (compacted, one partition) at start when it is missing.
    pub create_topic: bool,
    /// Replication factor of a topic paysync creates (-1: the broker's default).
    pub replication_factor: i32,
    /// How often each caller announces what it needs and recomputes its
    /// share; a change of shares reaches every caller within about this long.
    #[serde(deserialize_with = "millis")]
    pub refresh_ms: Duration,
    /// How long an announcement holds: a caller killed without a goodbye
    /// gives its share back this long after its last announcement.
    #[serde(deserialize_with = "millis")]
    pub lease_ms: Duration,
    /// The live group's weight among the callers that want more than their share.
    pub live_weight: u32,
    /// A replay's, redrive's or reconciliation's weight (each may set its own).
    pub backfill_weight: u32,
    /// What a caller that did not wait claims above its busiest recent
    /// second, in percent: more keeps the live group's latency beside a
    /// backfill closer to its latency alone, less gives the backfill more.
    pub headroom_percent: u32,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            enabled: true,
            topic: None,
            create_topic: true,
            replication_factor: -1,
            refresh_ms: Duration::from_millis(1_000),
            lease_ms: Duration::from_millis(6_000),
            // A backfill beside a saturated live group gets a tenth of the rate.
            live_weight: 9,
            backfill_weight: 1,
            // docs/performance.md, "Sharing the quota": beside 200/s of live
            // traffic on a 300/s quota, p99 26 → 60 ms and the backfill ~55/s.
            headroom_percent: 15,
        }
    }
}

impl ControlSettings {
    /// The control topic for consumer group `group_id`.
    pub fn topic(&self, group_id: &str) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("{group_id}.control"))
    }
}

/// Which field of an event names its tenant inside a replica (`fairness.key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FairnessKey {
    /// The car park (`park_id`).
    #[default]
    ParkId,
    /// Payments and refunds as two classes (`order_type`).
    OrderType,
    /// First come, first served.
    None,
}

/// `[fairness]`: weighted max-min fair turns between car parks, in front of
/// the rate budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FairnessSettings {
    pub key: FairnessKey,
    /// Weights of named parks (every other park weighs 1).
    pub weights: BTreeMap<String, u32>,
    /// Calls per second a named park is served first, whatever its weight,
    /// while it has calls waiting.
    pub floors: BTreeMap<String, u32>,
    /// Calls per second a named park never exceeds, whatever is free.
    pub ceilings: BTreeMap<String, u32>,
    /// Parks with their own series in the wait metric (the longest waits);
    /// the others are summed as `park="other"`.
    pub top_parks: usize,
}

impl Default for FairnessSettings {
    fn default() -> Self {
        FairnessSettings {
            key: FairnessKey::ParkId,
            weights: BTreeMap::new(),
            floors: BTreeMap::new(),
            ceilings: BTreeMap::new(),
            top_parks: 10,
        }
    }
}
