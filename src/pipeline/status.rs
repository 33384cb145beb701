//! What a running pipeline reports: [`Health`] for the admin server's
//! liveness and readiness, and [`Summary`], the counts a run ends with.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;

use crate::dead_letter::StalledWrites;
use crate::labels::{CallKind, DeadLetterClass, RebalanceKind};
use crate::metrics::Metrics;

/// What the health endpoints need to know, updated by the pipeline.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix milliseconds of the main loop's last turn (liveness).
    last_progress_ms: AtomicU64,
    /// Set once the consumer has been through its first assignment.
    joined: AtomicBool,
    assigned: AtomicUsize,
    /// Failing dead-letter writes, and how long one may hold its partition
    /// before readiness says so.
    dead_letters: OnceLock<(std::sync::Arc<StalledWrites>, Duration)>,
    /// A fatal error of the Kafka client: the pipeline stopped on it.
    failed: OnceLock<String>,
    /// The tuned settings and pauses in force (with the control topic on),
    /// and the view they were read from.
    control: std::sync::Mutex<Option<(ControlStatus, std::sync::Arc<crate::control::ControlView>)>>,
}

/// The tuned settings and pauses in force, for the readiness detail.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ControlStatus {
    pub version: u64,
    pub tuned: std::collections::BTreeMap<String, String>,
    pub pauses: Vec<String>,
}

/// A source partition held by a failing dead-letter write.
pub use crate::dead_letter::OldestStall as DeadLetterStall;

fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

impl Health {
    pub(super) fn progressed(&self) {
        self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(super) fn mark_joined(&self) {
        self.joined.store(true, Ordering::Relaxed);
    }

    pub(super) fn set_assigned(&self, count: usize) {
        self.assigned.store(count, Ordering::Relaxed);
    }

    /// The control topic's view, as readiness and the pause gauge show it;
    /// read again only when the view changed (it is called every tick).
    pub(super) fn publish_control(
        &self,
        view: &std::sync::Arc<crate::control::ControlView>,
        metrics: &Metrics,
    ) {
        let mut current = self.control.lock().unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_some_and(|(_, seen)| std::sync::Arc::ptr_eq(seen, view))
        {
            return;
        }
        metrics.control_pauses.set(view.pauses.len() as i64);
        let status = ControlStatus {
            version: view.tuning.version,
            tuned: view.tuning.values.clone(),
            pauses: view.pauses.keys().map(|target| target.describe()).collect(),
        };
        *current = Some((status, view.clone()));
    }

    /// The tuned settings and pauses in force (`None`: no control topic).
    pub fn control(&self) -> Option<ControlStatus> {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(status, _)| status.clone())
    }

    /// Time since the main loop last turned (None before it started).
    pub fn since_progress(&self) -> Option<Duration> {
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        (last > 0).then(|| Duration::from_millis(now_ms().saturating_sub(last)))
    }

    /// The pipeline stopped on a fatal Kafka client error (the first one).
    pub(super) fn fail(&self, cause: String) {
        let _ = self.failed.set(cause);
    }

    /// Why the pipeline stopped by itself, if it did on a fatal error.
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    pub fn assigned_partitions(&self) -> usize {
        self.assigned.load(Ordering::Relaxed)
    }

    pub(super) fn watch_dead_letters(
        &self,
        writes: std::sync::Arc<StalledWrites>,
        after: Duration,
    ) {
        let _ = self.dead_letters.set((writes, after));
    }

    /// The partition held longest by a failing dead-letter write, if any.
    pub fn dead_letter_held(&self) -> Option<DeadLetterStall> {
        let (writes, _) = self.dead_letters.get()?;
        writes.oldest()
    }

    /// Sets `paysync_dead_letter_stalled_seconds` (each tick, and at scrape time).
    pub fn publish_dead_letter_stall(&self, metrics: &Metrics) {
        let held = self.dead_letter_held();
        metrics
            .dead_letter_stalled
            .set(held.map_or(0.0, |stall| stall.held.as_secs_f64()));
    }

    /// The same, once it has lasted `delivery.dead_letter_stall_ms`.
    pub fn dead_letter_stall(&self) -> Option<DeadLetterStall> {
        let (_, after) = self.dead_letters.get()?;
        self.dead_letter_held().filter(|stall| stall.held >= *after)
    }
}

/// What the pipeline did so far, read from its metrics' typed totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub consumed: u64,
    /// Skipped because a completion map says they were finished before.
    pub already_finished: u64,
    pub delivered: u64,
    pub dead_lettered_invalid_event: u64,
    pub dead_lettered_rejected: u64,
    pub dead_lettered_retries_exhausted: u64,
    pub calls: u64,
    /// Calls that did not settle their event: retried, or answered with a halt.
    pub retried_calls: u64,
    pub abandoned: u64,
    pub rebalances: u64,
    /// Not sent: the ledger holds their key as accepted with the same DTO.
    pub duplicates_suppressed: u64,
    /// Strict ledger mode: parked as unknown or held.
    pub parked: u64,
}

impl Summary {
    pub fn of(metrics: &Metrics) -> Summary {
        let retried_calls = metrics.calls(CallKind::Retry) + metrics.calls(CallKind::Halt);
        Summary {
            consumed: metrics.events_consumed.get(),
            already_finished: metrics.events_already_finished.get(),
            delivered: metrics.events_delivered.get(),
            dead_lettered_invalid_event: metrics.dead_lettered(DeadLetterClass::InvalidEvent),
            dead_lettered_rejected: metrics.dead_lettered(DeadLetterClass::Rejected),
            dead_lettered_retries_exhausted: metrics
                .dead_lettered(DeadLetterClass::RetriesExhausted),
            calls: metrics.calls(CallKind::Delivered)
                + metrics.calls(CallKind::DeadLetter)
                + retried_calls,
            retried_calls,
            abandoned: metrics.tasks_abandoned.get(),
            rebalances: metrics.rebalances(RebalanceKind::Assign)
                + metrics.rebalances(RebalanceKind::Revoke),
            duplicates_suppressed: metrics.ledger_suppressed(),
            parked: metrics.ledger_parked_events(),
        }
    }

    /// Events taken to an end: delivered, dead-lettered, suppressed as a
    /// duplicate, or parked in the ledger.
    pub fn finished(&self) -> u64 {
        self.delivered + self.dead_lettered() + self.duplicates_suppressed + self.parked
    }

    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered_invalid_event
            + self.dead_lettered_rejected
            + self.dead_lettered_retries_exhausted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::classify::{Disposition, HaltCause, Outcome, RetryCause};

    #[test]
    fn the_summary_counts_by_kind_not_by_label_text() {
        let metrics = Metrics::new();
        let timeout = Outcome::Timeout;
        let call = |disposition: Disposition| {
            metrics.record_call(&timeout, &disposition, Duration::from_millis(1))
        };
        call(Disposition::Delivered);
        call(Disposition::Retry {
            cause: RetryCause::Timeout,
            wait: None,
        });
        call(Disposition::Halt {
            cause: HaltCause::Signature,
        });
        metrics.record_dead_lettered(DeadLetterClass::Rejected, "business_rejected");
        metrics.record_dead_lettered(DeadLetterClass::InvalidEvent, "invalid_event");
        metrics.record_rebalance(RebalanceKind::Assign);
        metrics.record_rebalance(RebalanceKind::Error);
        let summary = Summary::of(&metrics);
        assert_eq!(summary.calls, 3);
        assert_eq!(summary.retried_calls, 2);
        assert_eq!(summary.dead_lettered_rejected, 1);
        assert_eq!(summary.dead_lettered(), 2);
        assert_eq!(summary.rebalances, 1, "errors are not rebalances");
    }

    #[test]
    fn liveness_counts_from_the_last_turn() {
        let health = Health::default();
        assert_eq!(health.since_progress(), None);
        health.progressed();
        assert!(health.since_progress().unwrap() < Duration::from_secs(5));
    }
}
