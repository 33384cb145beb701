//! The recording side of [`Metrics`]: the `record_*` and `publish_*`
//! calls the rest of the code makes when something happens, and the few
//! reads tools and tests make of the counts. The metrics themselves (names,
//! help texts, label sets) are defined in `mod.rs`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus::IntGaugeVec;
use prometheus::core::Collector;

use super::{KNOWN_TOP_CODES, Metrics, PartitionGauge};
use crate::labels::{CallKind, DeadLetterClass, RebalanceKind};
use crate::partition::PartitionId;
use crate::top::classify::{Disposition, Outcome};
use crate::top::response::TopResponse;

impl Metrics {
    pub fn record_call(&self, outcome: &Outcome, disposition: &Disposition, duration: Duration) {
        self.call_duration.observe(duration.as_secs_f64());
        let (kind, reason) = disposition.counted_as();
        self.call_outcomes
            .with_label_values(&[kind.as_str(), reason])
            .inc();
        self.tallies.calls[kind.index()].fetch_add(1, Ordering::Relaxed);
        if let Outcome::Answered {
            response: TopResponse::Error(error),
            ..
        } = outcome
        {
            let code = if KNOWN_TOP_CODES.contains(&error.code) {
                error.code.to_string()
            } else {
                "other".to_owned()
            };
            let class = match error.sub_code.as_deref() {
                None | Some("") => "none",
                Some(s) if s.starts_with("isp.") => "isp",
                Some(s) if s.starts_with("isv.") => "isv",
                Some(s) if s.starts_with("accesscontrol.") => "accesscontrol",
                Some(_) => "other",
            };
            self.top_errors.with_label_values(&[&code, class]).inc();
        }
    }

    pub fn record_delivered(&self, latency: Duration) {
        self.events_delivered.inc();
        self.delivery_latency.observe(latency.as_secs_f64());
    }

    pub fn record_dead_lettered(&self, class: DeadLetterClass, reason: &str) {
        self.events_dead_lettered
            .with_label_values(&[class.as_str(), reason])
            .inc();
        self.tallies.dead_lettered[class.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_rebalance(&self, kind: RebalanceKind) {
        self.rebalances.with_label_values(&[kind.as_str()]).inc();
        self.tallies.rebalances[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Events dead-lettered with this class so far.
    pub fn dead_lettered(&self, class: DeadLetterClass) -> u64 {
        self.tallies.dead_lettered[class.index()].load(Ordering::Relaxed)
    }

    /// Calls answered with this disposition so far.
    pub fn calls(&self, kind: CallKind) -> u64 {
        self.tallies.calls[kind.index()].load(Ordering::Relaxed)
    }

    /// Events the ledger kept from being sent again, over every path.
    pub fn ledger_suppressed(&self) -> u64 {
        super::LEDGER_PATHS
            .iter()
            .map(|path| {
                self.ledger_duplicates_suppressed
                    .with_label_values(&[path])
                    .get()
            })
            .sum()
    }

    /// Events strict mode parked (unknown or held).
    pub fn ledger_parked_events(&self) -> u64 {
        ["unknown", "held"]
            .iter()
            .map(|outcome| self.ledger_parked.with_label_values(&[outcome]).get())
            .sum()
    }

    /// Rebalance callbacks of this kind so far.
    pub fn rebalances(&self, kind: RebalanceKind) -> u64 {
        self.tallies.rebalances[kind.index()].load(Ordering::Relaxed)
    }

    /// One turn of the window: the messages in flight, and the partitions
    /// it paused and resumed (only the changes: this runs every turn).
    pub fn publish_window(
        &self,
        in_flight: usize,
        paused: &[PartitionId],
        resumed: &[PartitionId],
    ) {
        self.window_messages.set(in_flight as i64);
        for (ids, value) in [(paused, 1), (resumed, 0)] {
            for id in ids {
                self.set_partition(PartitionGauge::Paused, id, value);
            }
        }
    }

    pub fn record_limiter_wait(&self, waited: Duration, tokens_left: u32) {
        self.limiter_wait.observe(waited.as_secs_f64());
        self.limiter_tokens.set(i64::from(tokens_left));
    }

    pub fn record_commit(&self, succeeded: bool) {
        if succeeded {
            *self.last_commit.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        } else {
            self.commit_failures.inc();
        }
    }

    /// Drops a revoked partition's series, so dashboards do not show stale offsets.
    pub fn forget_partition(&self, id: &PartitionId) {
        let partition = id.partition.to_string();
        let labels = [id.topic.as_str(), partition.as_str()];
        for gauge in PartitionGauge::ALL {
            let _ = self.partition_gauges(gauge).remove_label_values(&labels);
        }
    }

    /// Brings the dropped-span counts up to the process-wide totals
    /// (`queue_full`, `export_failed`).
    pub fn publish_dropped_spans(&self, (queue_full, export_failed): (u64, u64)) {
        for (reason, total) in [("queue_full", queue_full), ("export_failed", export_failed)] {
            let counter = self.trace_spans_dropped.with_label_values(&[reason]);
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }

    /// Sets one partition's series of a per-partition gauge: the one place
    /// those series are labelled (`topic`, `partition`).
    pub fn set_partition(&self, gauge: PartitionGauge, id: &PartitionId, value: i64) {
        let partition = id.partition.to_string();
        self.partition_gauges(gauge)
            .with_label_values(&[id.topic.as_str(), partition.as_str()])
            .set(value);
    }

    fn partition_gauges(&self, gauge: PartitionGauge) -> &IntGaugeVec {
        match gauge {
            PartitionGauge::CommittedOffset => &self.partition_committed_offset,
            PartitionGauge::CompletedOffset => &self.partition_completed_offset,
            PartitionGauge::Lag => &self.partition_lag,
            PartitionGauge::Paused => &self.partition_paused,
        }
    }

    /// Dead letters so far by (class, reason).
    pub fn dead_letter_counts(&self) -> Vec<(String, String, u64)> {
        self.events_dead_lettered
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|metric| {
                let label = |name| label_of(metric, name).unwrap_or_default();
                (
                    label("class"),
                    label("reason"),
                    metric.get_counter().get_value() as u64,
                )
            })
            .collect()
    }
}

impl Metrics {
    /// Every partition's value of a per-partition gauge, as set so far.
    pub fn partition_values(&self, gauge: PartitionGauge) -> Vec<(PartitionId, i64)> {
        self.partition_gauges(gauge)
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter_map(|metric| {
                let partition = label_of(metric, "partition")?.parse().ok()?;
                Some((
                    PartitionId::new(&label_of(metric, "topic")?, partition),
                    metric.get_gauge().get_value() as i64,
                ))
            })
            .collect()
    }
}

/// A series' value of one label.
fn label_of(metric: &prometheus::proto::Metric, name: &str) -> Option<String> {
    metric
        .get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value().to_owned())
}
