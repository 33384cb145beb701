//! The consumer's librdkafka context: the rebalance callbacks hand ownership
//! changes to [`Partitions`], commit results decide what is committed again
//! (and whether completion maps still fit the broker), and statistics become
//! per-partition committed-offset and lag metrics and the time the backlog
//! takes to drain at this replica's share of the rate.

use std::sync::Arc;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use super::partitions::Partitions;
use crate::kafka::PartitionId;
use crate::labels::RebalanceKind;

/// The consumer's context: rebalance, commit and statistics callbacks.
pub(super) struct PipelineContext {
    pub(super) partitions: Arc<Partitions>,
    /// librdkafka's latest error report: a failed start-up names it, since a
    /// metadata timeout alone does not say that the password was wrong.
    pub(super) last_error: std::sync::Mutex<Option<String>>,
}

impl PipelineContext {
    pub(super) fn new(partitions: Arc<Partitions>) -> PipelineContext {
        PipelineContext {
            partitions,
            last_error: std::sync::Mutex::new(None),
        }
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
        let partitions = self.partitions.lock();
        let mut lag = 0;
        let metrics = &self.partitions.metrics;
        for (topic_name, topic) in &statistics.topics {
            for (partition, stats) in &topic.partitions {
                if *partition < 0
                    || !partitions.contains_key(&PartitionId::new(topic_name, *partition))
                {
                    continue;
                }
                let labels = [topic_name.as_str(), &partition.to_string()];
                if stats.committed_offset >= 0 {
                    metrics
                        .partition_committed_offset
                        .with_label_values(&labels)
                        .set(stats.committed_offset);
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
                    metrics
                        .partition_lag
                        .with_label_values(&labels)
                        .set(partition_lag);
                }
            }
        }
        drop(partitions);
        let share = self.partitions.budget.share();
        metrics.backlog_drain.set(lag as f64 / share.per_sec);
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let kind = match rebalance {
            Rebalance::Assign(_) => RebalanceKind::Assign,
            Rebalance::Revoke(_) => RebalanceKind::Revoke,
            Rebalance::Error(_) => RebalanceKind::Error,
        };
        self.partitions.metrics.record_rebalance(kind);
        match rebalance {
            Rebalance::Revoke(tpl) => self.partitions.revoke(consumer, tpl),
            Rebalance::Error(error) => tracing::warn!(error = %error, "Rebalance error."),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // librdkafka keeps a partition's pause across ownerships: one
            // paused by the window when it was revoked (or lost) would stay
            // paused forever when it comes back. A new ownership starts
            // unpaused, in librdkafka as in `Partitions`.
            if let Err(error) = consumer.resume(tpl) {
                tracing::warn!(error = %error, "Resuming newly assigned partitions failed.");
            }
            self.partitions.assign(consumer, tpl);
        }
    }

    /// Only librdkafka's own (auto) commits report here; paysync's commits
    /// are synchronous and report to [`Partitions::commit_result`] directly.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.partitions.commit_result(offsets, &result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::partitions::tests::{partitions, ticket};
    use crate::pipeline::partitions::{Start, TaskEnd};

    #[test]
    fn a_map_the_broker_finds_too_large_turns_maps_off_and_the_commit_is_sent_again() {
        let context = PipelineContext::new(Arc::new(partitions()));
        let partitions = &context.partitions;
        let p0 = PartitionId::new("t", 0);
        partitions.own([(p0.clone(), Default::default())]);
        let first = ticket(partitions.start(p0.clone(), 0));
        let second = ticket(partitions.start(p0.clone(), 1));
        partitions.task_ended(&second, TaskEnd::Finished);
        let list = partitions.commit_list(true);
        assert!(
            !list.elements()[0].metadata().is_empty(),
            "1 is finished above 0"
        );
        partitions.commit_result(
            &list,
            &Err(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::OffsetMetadataTooLarge,
            )),
        );
        assert_eq!(partitions.metrics.commit_failures.get(), 1);
        let again = partitions.commit_list(true);
        assert_eq!(again.count(), 1, "the partition is committed again");
        assert!(again.elements()[0].metadata().is_empty(), "without a map");
        partitions.task_ended(&first, TaskEnd::Finished);
        assert!(matches!(partitions.start(p0, 2), Start::Deliver(_)));
    }
}
