//! What the control topic holds, record by record, and the view every
//! caller folds it into: the leases of the callers sharing the app key's
//! rate, the tuned settings and their version, the pauses, and the audit
//! log of every change. Pure: decoding and folding, no Kafka.
//!
//! Keys (the topic is compacted, so each key keeps its latest record):
//! * `lease/<caller>`: a caller's announcement of what it needs (a
//!   tombstone when it stops cleanly; otherwise it expires by itself);
//! * `settings`: the tuned settings, all of them, with their version;
//! * `pause/all`, `pause/park/<park>`, `pause/partition/<topic>/<n>`: a
//!   pause (a tombstone resumes);
//! * `audit/<version or time>-<caller>`: one change, who made it, when and
//!   why (unique keys: compaction keeps them all).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::partition::PartitionId;

/// How many audit records the view keeps for `control show`.
const AUDIT_KEPT: usize = 50;

/// Who a lease belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallerKind {
    /// A replica of the live consumer group.
    Member,
    Replay,
    Redrive,
    Reconcile,
}

impl CallerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CallerKind::Member => "member",
            CallerKind::Replay => "replay",
            CallerKind::Redrive => "redrive",
            CallerKind::Reconcile => "reconcile",
        }
    }
}

/// A caller's announcement: what it needs of the rate, until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub caller: String,
    pub kind: CallerKind,
    pub weight: u32,
    /// Calls per second it would use if it could (`None`: as many as it gets).
    pub demand_per_sec: Option<f64>,
    /// A busy live replica's need as its part of the group's rate (its
    /// partitions' share): every caller multiplies it by the rate as it has
    /// it now, so a need does not lag behind an adaptive rate that moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_share: Option<f64>,
    /// The quota this caller's adaptive controller measured, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_per_sec: Option<f64>,
    /// The group's rate as this caller has it now (adaptive: what its
    /// controller allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_rate_per_sec: Option<f64>,
    /// Wall-clock milliseconds after which the lease no longer holds.
    pub expires_at_ms: i64,
}

/// The tuned settings: full keys (`delivery.rate_limit_per_sec`) to values
/// as typed, applied over every caller's configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    pub version: u64,
    pub values: BTreeMap<String, String>,
    /// A rate raise that is rolled back when bans follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
}

/// The values a guarded raise replaced, and how long the guard watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    pub until_ms: i64,
    pub previous: BTreeMap<String, String>,
}

impl Guard {
    /// A guard that keeps the `previous` values for `watch` from now.
    pub fn watching(previous: BTreeMap<String, String>, watch: std::time::Duration) -> Guard {
        Guard {
            until_ms: Utc::now().timestamp_millis() + watch.as_millis() as i64,
            previous,
        }
    }
}

/// What a pause holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PauseTarget {
    All,
    Park(String),
    Partition(PartitionId),
}

impl PauseTarget {
    pub fn key(&self) -> String {
        match self {
            PauseTarget::All => "pause/all".to_owned(),
            PauseTarget::Park(park) => format!("pause/park/{park}"),
            PauseTarget::Partition(id) => format!("pause/partition/{}/{}", id.topic, id.partition),
        }
    }

    pub fn of_key(rest: &str) -> Option<PauseTarget> {
        if rest == "all" {
            return Some(PauseTarget::All);
        }
        if let Some(park) = rest.strip_prefix("park/") {
            return Some(PauseTarget::Park(park.to_owned()));
        }
        let partition = rest.strip_prefix("partition/")?;
        let (topic, number) = partition.rsplit_once('/')?;
        Some(PauseTarget::Partition(PartitionId::new(
            topic,
            number.parse().ok()?,
        )))
    }

    /// `--park P`, `--partition TOPIC/N` or `--all`, as the operator wrote it.
    pub fn describe(&self) -> String {
        match self {
            PauseTarget::All => "every event".to_owned(),
            PauseTarget::Park(park) => format!("park {park}"),
            PauseTarget::Partition(id) => format!("partition {id}"),
        }
    }
}

/// A pause: who asked, when, why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    pub by: String,
    pub at: DateTime<Utc>,
    pub why: String,
}

/// One change, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    pub at: DateTime<Utc>,
    pub by: String,
    pub what: String,
    pub why: String,
    /// How it ended, for an action that runs (a console redrive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// The control topic as read so far.
#[derive(Debug, Clone, Default)]
pub struct ControlView {
    pub leases: BTreeMap<String, Lease>,
    pub tuning: Tuning,
    pub pauses: BTreeMap<PauseTarget, Pause>,
    /// The latest changes, oldest first.
    pub audit: Vec<Audit>,
}

/// Why a record was not folded in.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("record {key:?}: {error}")]
    Unreadable {
        key: String,
        #[source]
        error: serde_json::Error,
    },
}

impl ControlView {
    /// Folds one record in (`value` `None`: a tombstone).
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), RecordError> {
        fn decode<T: for<'de> Deserialize<'de>>(key: &str, value: &[u8]) -> Result<T, RecordError> {
            serde_json::from_slice(value).map_err(|error| RecordError::Unreadable {
                key: key.to_owned(),
                error,
            })
        }
        let (kind, rest) = key.split_once('/').unwrap_or((key, ""));
        match (kind, value) {
            ("lease", None) => {
                self.leases.remove(rest);
            }
            ("lease", Some(value)) => {
                self.leases.insert(rest.to_owned(), decode(key, value)?);
            }
            ("settings", None) => self.tuning = Tuning::default(),
            ("settings", Some(value)) => self.tuning = decode(key, value)?,
            ("pause", value) => {
                let target =
                    PauseTarget::of_key(rest).ok_or_else(|| RecordError::UnknownKey(key.into()))?;
                match value {
                    None => {
                        self.pauses.remove(&target);
                    }
                    Some(value) => {
                        self.pauses.insert(target, decode(key, value)?);
                    }
                }
            }
            ("audit", None) => {}
            ("audit", Some(value)) => {
                self.audit.push(decode(key, value)?);
                if self.audit.len() > AUDIT_KEPT {
                    self.audit.remove(0);
                }
            }
            _ => return Err(RecordError::UnknownKey(key.to_owned())),
        }
        Ok(())
    }

    /// The leases that still hold at wall-clock `now_ms`.
    pub fn live_leases(&self, now_ms: i64) -> impl Iterator<Item = &Lease> + '_ {
        self.leases
            .values()
            .filter(move |lease| lease.expires_at_ms > now_ms)
    }

    /// Whether an event of `partition` and fairness key `park` is held.
    pub fn holds(&self, partition: &PartitionId, park: Option<&str>) -> bool {
        if self.pauses.is_empty() {
            return false;
        }
        self.pauses.contains_key(&PauseTarget::All)
            || self
                .pauses
                .contains_key(&PauseTarget::Partition(partition.clone()))
            || park.is_some_and(|park| self.pauses.contains_key(&PauseTarget::Park(park.into())))
    }

    /// The live group's rate now, as its slowest replica has it (`None`: no
    /// live replica announced one): what an adaptive caller outside the
    /// group follows, so one controller learns the quota for everyone.
    pub fn live_group_rate(&self, now_ms: i64) -> Option<f64> {
        self.live_leases(now_ms)
            .filter(|lease| lease.kind == CallerKind::Member)
            .filter_map(|lease| lease.group_rate_per_sec)
            .reduce(f64::min)
    }

    /// The quota an adaptive caller measured, for one that starts without
    /// its own: the most recent callers agree, so the largest is taken.
    pub fn learned(&self, now_ms: i64) -> Option<f64> {
        self.live_leases(now_ms)
            .filter_map(|lease| lease.learned_per_sec)
            .reduce(f64::max)
    }
}

/// The key of `caller`'s lease.
pub fn lease_key(caller: &str) -> String {
    format!("lease/{caller}")
}

/// The key of the tuned settings.
pub const SETTINGS_KEY: &str = "settings";

/// A unique audit key for a change made at `at` by `caller`.
pub fn audit_key(at: DateTime<Utc>, caller: &str) -> String {
    format!("audit/{}-{caller}", at.timestamp_micros())
}

/// JSON of a record (what every writer sends).
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("control records always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(caller: &str, expires_at_ms: i64) -> Lease {
        Lease {
            caller: caller.into(),
            kind: CallerKind::Replay,
            weight: 1,
            demand_per_sec: None,
            busy_share: None,
            learned_per_sec: Some(120.0),
            group_rate_per_sec: None,
            expires_at_ms,
        }
    }

    #[test]
    fn leases_fold_in_expire_and_leave_on_a_tombstone() {
        let mut view = ControlView::default();
        view.apply("lease/a", Some(&encode(&lease("a", 1_000))))
            .unwrap();
        view.apply("lease/b", Some(&encode(&lease("b", 5_000))))
            .unwrap();
        let live: Vec<&str> = view.live_leases(2_000).map(|l| l.caller.as_str()).collect();
        assert_eq!(live, ["b"], "a expired at 1,000");
        assert_eq!(view.learned(2_000), Some(120.0));
        view.apply("lease/b", None).unwrap();
        assert_eq!(view.live_leases(0).count(), 1);
    }

    #[test]
    fn pauses_hold_their_park_their_partition_or_everything() {
        let mut view = ControlView::default();
        let pause = Pause {
            by: "ops".into(),
            at: Utc::now(),
            why: "bad data".into(),
        };
        let p3 = PartitionId::new("payments", 3);
        let p4 = PartitionId::new("payments", 4);
        assert!(!view.holds(&p3, Some("P1")));
        view.apply(&PauseTarget::Park("P1".into()).key(), Some(&encode(&pause)))
            .unwrap();
        assert!(view.holds(&p3, Some("P1")));
        assert!(!view.holds(&p3, Some("P2")));
        view.apply(
            &PauseTarget::Partition(p4.clone()).key(),
            Some(&encode(&pause)),
        )
        .unwrap();
        assert!(view.holds(&p4, Some("P2")));
        view.apply("pause/park/P1", None).unwrap();
        assert!(!view.holds(&p3, Some("P1")));
        view.apply("pause/all", Some(&encode(&pause))).unwrap();
        assert!(view.holds(&p3, None));
    }

    #[test]
    fn a_topic_name_with_slashes_keeps_its_partition() {
        let target = PauseTarget::Partition(PartitionId::new("a/b", 7));
        let rest = target.key().strip_prefix("pause/").unwrap().to_owned();
        assert_eq!(PauseTarget::of_key(&rest), Some(target));
    }

    #[test]
    fn unknown_and_unreadable_records_are_refused_by_name() {
        let mut view = ControlView::default();
        let unknown = view.apply("nonsense", Some(b"{}")).unwrap_err();
        assert!(unknown.to_string().contains("nonsense"));
        let unreadable = view.apply("settings", Some(b"not json")).unwrap_err();
        assert!(unreadable.to_string().contains("settings"), "{unreadable}");
        assert_eq!(view.tuning, Tuning::default());
    }
}
