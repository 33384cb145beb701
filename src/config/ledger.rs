//! `[ledger]` and `[reconcile]`: what paysync records of each event's outcome
//! (docs/ledger.md), and how the daily `orderamount.sync` report is counted
//! where the API's documentation leaves it open — with their defaults.

use std::time::Duration;

use serde::Deserialize;

use crate::ledger::entry::KeyField;

/// `ledger.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LedgerMode {
    /// No ledger: every event read is sent (at least once).
    Off,
    /// Outcomes recorded after each acceptance or dead letter; an event
    /// whose key was accepted with the same DTO is not sent again.
    #[default]
    Record,
    /// Also an intent before each call: an outcome lost to a crash or an
    /// unanswered call is parked as unknown, never sent again by itself.
    Strict,
}

impl LedgerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerMode::Off => "off",
            LedgerMode::Record => "record",
            LedgerMode::Strict => "strict",
        }
    }
}

/// `[ledger]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSettings {
    pub mode: LedgerMode,
    /// The compacted topic (default `<kafka.group_id>.ledger`).
    pub topic: Option<String>,
    /// The business key entries are filed under.
    pub key_fields: Vec<KeyField>,
    /// Entries older than this many days are forgotten (and deleted from the
    /// topic by tombstones): the horizon within which a duplicate is caught.
    pub retain_days: u32,
    /// Create the topic (compacted, one partition per source partition) at
    /// start when it is missing; off, a missing topic stops the start.
    pub create_topic: bool,
    /// Replication factor of a topic paysync creates (-1: the broker's default).
    pub replication_factor: i32,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings {
            mode: LedgerMode::Record,
            topic: None,
            key_fields: KeyField::DEFAULT.to_vec(),
            // A month and a few days: a monthly reconciliation still finds
            // every entry of its month.
            retain_days: 35,
            create_topic: true,
            replication_factor: -1,
        }
    }
}

impl LedgerSettings {
    /// The ledger topic for consumer group `group_id`.
    pub fn topic(&self, group_id: &str) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("{group_id}.ledger"))
    }

    pub fn retain(&self) -> Duration {
        Duration::from_secs(u64::from(self.retain_days) * 86_400)
    }
}

/// `reconcile.order_ids`: which ids the report lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReportedIds {
    /// None: the documentation says an empty list is not checked, so a
    /// wrong guess of which id it wants cannot fail a report.
    #[default]
    None,
    OrderId,
    PayOrderId,
}

/// `[reconcile]`: how the daily report counts (the API's documentation
/// leaves these open; the defaults are the natural, safe reading).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSettings {
    /// `order_type` of every line.
    pub order_type: String,
    /// Count accepted refunds as orders too (default: payments only).
    pub count_refunds: bool,
    pub order_ids: ReportedIds,
    /// Parks per call (1: one call per park, the reading that cannot be
    /// refused for carrying several).
    pub parks_per_call: usize,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            order_type: "ISV_ORDER".to_owned(),
            count_refunds: false,
            order_ids: ReportedIds::None,
            parks_per_call: 1,
        }
    }
}
