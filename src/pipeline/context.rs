//! The consumer's librdkafka context: the rebalance callbacks hand ownership
//! changes to [`Ownership`] and the revoked partitions' points to the
//! [`Committer`], commit results go to the committer's one rule, and
//! statistics become per-partition committed-offset and lag metrics and the
//! time the backlog takes to drain at this replica's share of the rate.
//!
//! The callbacks run inside the consumer's poll, on the main loop's task;
//! their blocking work (the revoke drain, reading committed maps) runs under
//! `block_in_place` so the worker's other tasks move on.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use tokio::sync::Notify;

use super::commit::committer::Committer;
use super::ownership::Ownership;
use super::rate::RateBudget;
use crate::labels::RebalanceKind;
use crate::metrics::{Metrics, PartitionGauge};
use crate::partition::{self, PartitionId};

/// How long a revoke's commit is tried again while the coordinator is away.
/// The drain before it is bounded by the session timeout already.
const REVOKE_COMMIT_PATIENCE: Duration = Duration::from_secs(5);

/// Runs blocking work inside one of librdkafka's callbacks (which are
/// synchronous): on a multi-thread runtime the worker's other tasks move on.
fn blocking_in_callback<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// The consumer's context: rebalance, commit and statistics callbacks.
pub(super) struct PipelineContext {
    ownership: Arc<Ownership>,
    committer: Arc<Committer>,
    metrics: Arc<Metrics>,
    /// This replica's share of the rate, for the backlog's drain time.
    budget: Arc<RateBudget>,
    wake: Arc<Notify>,
    /// librdkafka's latest error report: a failed start-up names it, since a
    /// metadata timeout alone does not say that the password was wrong.
    last_error: std::sync::Mutex<Option<String>>,
}

impl PipelineContext {
    pub(super) fn new(
        ownership: Arc<Ownership>,
        committer: Arc<Committer>,
        metrics: Arc<Metrics>,
        budget: Arc<RateBudget>,
        wake: Arc<Notify>,
    ) -> PipelineContext {
        PipelineContext {
            ownership,
            committer,
            metrics,
            budget,
            wake,
            last_error: std::sync::Mutex::new(None),
        }
    }

    /// Drains the revoked partitions, commits their positions, drops them.
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked = partition::partitions_of(tpl);
        let points = blocking_in_callback(|| {
            let points = self.ownership.drain(&revoked);
            self.committer.wait_idle(REVOKE_COMMIT_PATIENCE);
            points
        });
        self.committer.commit_sync(
            consumer,
            &points,
            "revoked partitions",
            REVOKE_COMMIT_PATIENCE,
        );
        blocking_in_callback(|| self.ownership.refresh_counts(consumer));
        self.wake.notify_one();
    }

    /// What librdkafka last reported, if anything.
    pub(super) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ClientContext for PipelineContext {
    /// librdkafka's error reports (a broker down, failed authentication, an
    /// untrusted certificate). librdkafka keeps retrying by itself; these are
    /// logged and the latest kept for start-up's error.
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka client error.");
        // "All brokers are down" follows every other cause; it would hide it.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
        }
    }

    /// librdkafka's log lines, forwarded as the default context does. Error
    /// lines are also kept: librdkafka reports a failed authentication here
    /// from its own threads, while the error callback above only runs once
    /// the consumer is polled, which start-up has not done yet.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {facility} {message}");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(message.to_owned());
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
        }
    }

    /// librdkafka's statistics (every `kafka.statistics_interval_ms`): the
    /// committed offset and lag of each owned partition, paused ones included.
    fn stats(&self, statistics: Statistics) {
        let owned = self.ownership.owned();
        let mut lag = 0;
        let metrics = &self.metrics;
        for (topic_name, topic) in &statistics.topics {
            for (partition, stats) in &topic.partitions {
                let id = PartitionId::new(topic_name, *partition);
                if *partition < 0 || !owned.contains(&id) {
                    continue;
                }
                if stats.committed_offset >= 0 {
                    metrics.set_partition(
                        PartitionGauge::CommittedOffset,
                        &id,
                        stats.committed_offset,
                    );
                }
                if stats.hi_offset >= 0 {
                    // Before the first commit the whole partition counts as lag.
                    let base = if stats.committed_offset >= 0 {
                        stats.committed_offset
                    } else {
                        stats.lo_offset.max(0)
                    };
                    let partition_lag = (stats.hi_offset - base).max(0);
                    lag += partition_lag;
                    metrics.set_partition(PartitionGauge::Lag, &id, partition_lag);
                }
            }
        }
        // The live group's share when busy, not what a backfill leaves it now.
        metrics
            .backlog_drain
            .set(lag as f64 / self.budget.drain_rate());
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let kind = match rebalance {
            Rebalance::Assign(_) => RebalanceKind::Assign,
            Rebalance::Revoke(_) => RebalanceKind::Revoke,
            Rebalance::Error(_) => RebalanceKind::Error,
        };
        self.metrics.record_rebalance(kind);
        match rebalance {
            Rebalance::Revoke(tpl) => self.revoke(consumer, tpl),
            Rebalance::Error(error) => tracing::warn!(error = %error, "Rebalance error."),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // librdkafka keeps a partition's pause across ownerships: one
            // paused by the window when it was revoked (or lost) would stay
            // paused forever when it comes back. A new ownership starts
            // unpaused, in librdkafka as in `Ownership`.
            if let Err(error) = consumer.resume(tpl) {
                tracing::warn!(error = %error, "Resuming newly assigned partitions failed.");
            }
            blocking_in_callback(|| self.ownership.assign(consumer, tpl));
        }
    }

    // No commit callback: librdkafka reports only asynchronous and automatic
    // commits there, and paysync sends neither; each commit's answer is
    // judged once, by the committer that sent it (tests/it/delivery.rs).
}
