//! Partition ownership: which partitions this consumer owns, each one's
//! unfinished offsets and live tasks, and the librdkafka callbacks that change
//! ownership (rebalance), report commits and publish per-partition statistics.
//!
//! The callbacks live with the state they mutate. On revoke (inside
//! librdkafka's synchronous callback) the revoked partitions stop starting
//! new work; tasks that are waiting give up, calls and dead-letter writes
//! under way finish, up to `kafka.revoke_drain_timeout_ms`; then their
//! positions are committed synchronously and their state is dropped. Only
//! the revoked partitions drain: with incremental assignment the others keep
//! flowing. Late completions for a partition no longer owned are ignored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::offsets::OffsetTracker;
use super::rate::RateBudget;
use super::status::Health;
use crate::kafka::{self, PartitionId};
use crate::labels::RebalanceKind;
use crate::metrics::Metrics;

/// One owned partition.
#[derive(Debug)]
pub(super) struct PartitionState {
    pub(super) tracker: OffsetTracker,
    /// Tasks spawned for this partition that have not ended.
    pub(super) live_tasks: usize,
    /// Distinguishes this ownership from an earlier one of the same partition.
    pub(super) generation: u64,
    /// Tells waiting tasks to give up (revoke, shutdown).
    pub(super) cancel: CancellationToken,
    pub(super) paused: bool,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    /// The event reached its final outcome: delivered or dead-lettered.
    Finished,
    /// It gave up on revoke or shutdown; its offset stays unfinished, so the
    /// next owner (or the next run) sends it.
    Abandoned,
}

/// What a task needs to report its end to the right ownership.
#[derive(Debug, Clone)]
pub(super) struct Ticket {
    pub(super) id: PartitionId,
    pub(super) generation: u64,
    pub(super) offset: i64,
    pub(super) cancel: CancellationToken,
}

/// The owned partitions, shared by the main loop, the rebalance callbacks and the tasks.
pub(super) struct Partitions {
    owned: Mutex<HashMap<PartitionId, PartitionState>>,
    /// Signalled whenever a task ends (the revoke drain waits on it).
    progress: Condvar,
    /// Wakes the main loop.
    pub(super) wake: Arc<Notify>,
    next_generation: AtomicU64,
    revoke_drain: Duration,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    /// Resized to this replica's share whenever ownership changes.
    pub(super) budget: Arc<RateBudget>,
    /// The subscribed topics, whose partitions the budget divides.
    topics: Vec<String>,
}

impl Partitions {
    pub(super) fn new(
        revoke_drain: Duration,
        metrics: Arc<Metrics>,
        budget: Arc<RateBudget>,
        topics: Vec<String>,
    ) -> Partitions {
        Partitions {
            owned: Mutex::new(HashMap::new()),
            progress: Condvar::new(),
            wake: Arc::new(Notify::new()),
            next_generation: AtomicU64::new(0),
            revoke_drain,
            metrics,
            health: Arc::new(Health::default()),
            budget,
            topics,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<PartitionId, PartitionState>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        self.own(kafka::partitions_of(tpl).into_iter().map(|id| {
            tracing::info!(partition = %id, "Partition assigned.");
            (id, OffsetTracker::default())
        }));
    }

    /// Takes ownership of partitions (a partition already owned keeps its state).
    pub(super) fn own(&self, owned: impl IntoIterator<Item = (PartitionId, OffsetTracker)>) {
        self.health.mark_joined();
        let mut partitions = self.lock();
        for (id, tracker) in owned {
            partitions.entry(id).or_insert_with(|| PartitionState {
                tracker,
                live_tasks: 0,
                generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
                cancel: CancellationToken::new(),
                paused: false,
            });
        }
        self.publish_assigned(partitions.len());
    }

    fn publish_assigned(&self, count: usize) {
        self.health.set_assigned(count);
        self.metrics.assigned_partitions.set(count as i64);
        self.budget.set_owned(count);
    }

    /// A message of `id` at `offset` was taken from Kafka: track it, and
    /// give its task a ticket. `None` when the partition is not owned (the
    /// message is the next owner's).
    pub(super) fn start(&self, id: PartitionId, offset: i64) -> Option<Ticket> {
        let mut partitions = self.lock();
        let state = partitions.get_mut(&id)?;
        state.tracker.start(offset);
        state.live_tasks += 1;
        Some(Ticket {
            generation: state.generation,
            cancel: state.cancel.clone(),
            id,
            offset,
        })
    }

    /// A task ended.
    pub(super) fn task_ended(&self, ticket: &Ticket, end: TaskEnd) {
        let mut partitions = self.lock();
        if let Some(state) = partitions
            .get_mut(&ticket.id)
            .filter(|s| s.generation == ticket.generation)
        {
            state.live_tasks -= 1;
            if end == TaskEnd::Finished {
                state.tracker.finish(ticket.offset);
            }
        }
        drop(partitions);
        if end == TaskEnd::Abandoned {
            self.metrics.tasks_abandoned.inc();
        }
        self.progress.notify_all();
        self.wake.notify_one();
    }

    /// Tells every task to give up waiting (shutdown).
    pub(super) fn cancel_all(&self) {
        for state in self.lock().values() {
            state.cancel.cancel();
        }
    }

    /// Tasks not yet ended, over all partitions.
    pub(super) fn live_tasks(&self) -> usize {
        self.lock().values().map(|s| s.live_tasks).sum()
    }

    /// Every owned partition's position (the next offset to consume).
    pub(super) fn positions(&self) -> TopicPartitionList {
        let partitions = self.lock();
        kafka::position_list(
            partitions
                .iter()
                .filter_map(|(id, s)| Some((id, s.tracker.position()?))),
        )
    }

    /// Drains the revoked partitions and drops them; returns their positions.
    /// Blocks until the drain ends or its deadline passes.
    fn drain(&self, revoked: &[PartitionId]) -> TopicPartitionList {
        let mut partitions = self.lock();
        for id in revoked {
            if let Some(state) = partitions.get(id) {
                state.cancel.cancel();
            }
        }
        let deadline = std::time::Instant::now() + self.revoke_drain;
        loop {
            let live: usize = revoked
                .iter()
                .filter_map(|id| partitions.get(id))
                .map(|s| s.live_tasks)
                .sum();
            let now = std::time::Instant::now();
            if live == 0 {
                break;
            }
            if now >= deadline {
                tracing::warn!(
                    live_tasks = live,
                    "Revoke drain deadline reached; unfinished events go to the next owner."
                );
                break;
            }
            partitions = self
                .progress
                .wait_timeout(partitions, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let mut positions = Vec::new();
        for id in revoked {
            self.metrics.forget_partition(&id.topic, id.partition);
            if let Some(state) = partitions.remove(id)
                && let Some(position) = state.tracker.position()
            {
                positions.push((id, position));
            }
        }
        self.publish_assigned(partitions.len());
        kafka::position_list(positions)
    }

    /// Drains the revoked partitions, commits their positions, drops them.
    fn revoke(&self, consumer: &BaseConsumer<PipelineContext>, tpl: &TopicPartitionList) {
        let revoked = kafka::partitions_of(tpl);
        // The drain blocks this thread (librdkafka's callback is synchronous);
        // on a multi-thread runtime, let the other tasks of this worker move on.
        let commit = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.drain(&revoked))
            }
            _ => self.drain(&revoked),
        };
        kafka::commit_sync(consumer, &commit, &self.metrics, "revoked partitions");
        self.wake.notify_one();
    }
}

/// The consumer's context: rebalance, commit and statistics callbacks.
pub struct PipelineContext {
    pub(super) partitions: Arc<Partitions>,
}

impl ClientContext for PipelineContext {
    /// librdkafka's statistics (every `kafka.statistics_interval_ms`): the
    /// committed offset and lag of each owned partition, paused ones included.
    fn stats(&self, statistics: Statistics) {
        // Partitions added to a subscribed topic enlarge the divisor of the quota.
        let known: usize = statistics
            .topics
            .iter()
            .filter(|(name, _)| self.partitions.topics.contains(name))
            .map(|(_, topic)| topic.partitions.keys().filter(|p| **p >= 0).count())
            .sum();
        let budget = &self.partitions.budget;
        if known > budget.total() {
            budget.set_total(known);
        }
        let partitions = self.partitions.lock();
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
                    metrics
                        .partition_lag
                        .with_label_values(&labels)
                        .set((stats.hi_offset - base).max(0));
                }
            }
        }
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

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.partitions.assign(tpl);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        let metrics = &self.partitions.metrics;
        match result {
            Ok(()) => metrics.record_commit(true),
            // Nothing new was stored since the last commit: the group is up to
            // date, which is what "time since the last commit" is about.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {
                metrics.record_commit(true)
            }
            Err(error) => {
                metrics.record_commit(false);
                tracing::warn!(error = %error, "Offset commit failed; it is retried with the next commit.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitScope;

    fn partitions() -> Partitions {
        let metrics = Arc::new(Metrics::new());
        let budget = RateBudget::new(100, 100, RateLimitScope::Group, 4, metrics.clone());
        Partitions::new(
            Duration::from_millis(200),
            metrics,
            Arc::new(budget),
            vec!["t".into()],
        )
    }

    #[test]
    fn ownership_resizes_the_rate_budget() {
        let partitions = partitions();
        own(
            &partitions,
            &[PartitionId::new("t", 0), PartitionId::new("t", 1)],
        );
        assert!((partitions.budget.share().per_sec - 50.0).abs() < 1e-9);
        partitions.drain(&[PartitionId::new("t", 1)]);
        assert!((partitions.budget.share().per_sec - 25.0).abs() < 1e-9);
    }

    fn own(partitions: &Partitions, ids: &[PartitionId]) {
        partitions.own(ids.iter().map(|id| (id.clone(), OffsetTracker::default())));
    }

    #[test]
    fn a_finished_task_moves_the_position_and_an_abandoned_one_does_not() {
        let partitions = partitions();
        let p0 = PartitionId::new("t", 0);
        own(&partitions, std::slice::from_ref(&p0));
        let first = partitions.start(p0.clone(), 10).unwrap();
        let second = partitions.start(p0.clone(), 11).unwrap();
        partitions.task_ended(&second, TaskEnd::Finished);
        partitions.task_ended(&first, TaskEnd::Abandoned);
        assert_eq!(partitions.live_tasks(), 0);
        let positions = partitions.positions();
        let position = positions.find_partition("t", 0).unwrap().offset();
        assert_eq!(position, rdkafka::Offset::Offset(10), "10 was abandoned");
        assert_eq!(partitions.metrics.tasks_abandoned.get(), 1);
    }

    #[test]
    fn messages_of_partitions_not_owned_are_not_started() {
        let partitions = partitions();
        assert!(partitions.start(PartitionId::new("t", 5), 0).is_none());
    }

    #[test]
    fn a_drain_drops_only_the_revoked_partitions_and_ignores_late_completions() {
        let partitions = partitions();
        let (p0, p1) = (PartitionId::new("t", 0), PartitionId::new("t", 1));
        own(&partitions, &[p0.clone(), p1.clone()]);
        let on_p0 = partitions.start(p0.clone(), 4).unwrap();
        let on_p1 = partitions.start(p1.clone(), 7).unwrap();
        let started = std::time::Instant::now();
        // p0's task never ends: the drain waits its deadline, then gives up.
        let committed = partitions.drain(std::slice::from_ref(&p0));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(
            on_p0.cancel.is_cancelled(),
            "waiting tasks are told to give up"
        );
        assert!(
            !on_p1.cancel.is_cancelled(),
            "other partitions keep flowing"
        );
        assert_eq!(
            committed.find_partition("t", 0).unwrap().offset(),
            rdkafka::Offset::Offset(4)
        );
        assert!(committed.find_partition("t", 1).is_none());
        assert_eq!(partitions.health.assigned_partitions(), 1);
        // A late completion of the dropped ownership changes nothing, even
        // after the partition comes back.
        own(&partitions, std::slice::from_ref(&p0));
        partitions.task_ended(&on_p0, TaskEnd::Finished);
        assert_eq!(partitions.live_tasks(), 1, "only p1's task is live");
        partitions.task_ended(&on_p1, TaskEnd::Finished);
        assert_eq!(partitions.live_tasks(), 0);
    }
}
