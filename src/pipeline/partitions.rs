//! Partition ownership: which partitions this consumer owns, each one's
//! unfinished offsets and live tasks, and the librdkafka callbacks that change
//! ownership (rebalance), report commits and publish per-partition statistics.
//!
//! On assignment the group's committed offset and its completion map
//! ([`super::completion`]) are read, merged with what this process itself
//! finished when it owned the partition before (a revoke whose commit failed,
//! an assignment lost in a broker outage), and the offsets known to be
//! finished are skipped instead of sent again.
//!
//! The callbacks live with the state they mutate. On revoke (inside
//! librdkafka's synchronous callback) the revoked partitions stop starting
//! new work; tasks that are waiting give up, calls and dead-letter writes
//! under way finish, up to `kafka.revoke_drain_timeout_ms`; then their
//! positions are committed synchronously and their state is dropped. Only
//! the revoked partitions drain: with incremental assignment the others keep
//! flowing. Late completions for a partition no longer owned are ignored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::completion::CompletionMap;
use super::context::PipelineContext;
use super::offsets::{OffsetTracker, Started};
use super::rate::RateBudget;
use super::status::Health;
use crate::kafka::{self, PartitionId};
use crate::metrics::Metrics;

/// How long a revoke's commit is tried again while the coordinator is away.
/// The drain before it is bounded by the session timeout already.
const REVOKE_COMMIT_PATIENCE: Duration = Duration::from_secs(5);

/// The completion map to resume a partition with: the group's committed map
/// (ignored with a warning when it is not a valid one for `committed`),
/// merged with what this process remembers finishing there.
fn resume_map(
    id: &PartitionId,
    committed: i64,
    metadata: &str,
    remembered: Option<CompletionMap>,
) -> CompletionMap {
    let group = match metadata {
        "" => None,
        text => CompletionMap::decode(text, committed)
            .inspect_err(|error| {
                tracing::warn!(partition = %id, %error, "Ignoring the committed completion map; resuming from the committed offset alone.");
            })
            .ok(),
    };
    CompletionMap::union_at(committed, group.iter().chain(remembered.iter()))
}

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

/// What to do with a message taken from Kafka.
#[derive(Debug)]
pub(super) enum Start {
    /// Deliver it; the ticket reports its end.
    Deliver(Ticket),
    /// The completion map says it was finished before.
    AlreadyFinished,
    /// Its partition is not owned (the message is the next owner's).
    NotOwned,
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
    pub(super) topics: Vec<String>,
    /// The largest completion map committed, in bytes (0: none).
    map_budget: AtomicUsize,
    /// What this process finished in partitions it no longer owns, for when
    /// they come back (a commit that failed on revoke is not lost knowledge).
    remembered: Mutex<HashMap<PartitionId, CompletionMap>>,
}

impl Partitions {
    pub(super) fn new(
        revoke_drain: Duration,
        metrics: Arc<Metrics>,
        budget: Arc<RateBudget>,
        topics: Vec<String>,
        map_budget: usize,
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
            map_budget: AtomicUsize::new(map_budget),
            remembered: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<PartitionId, PartitionState>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the assigned partitions, resuming each from the group's
    /// committed offset and completion map, merged with what this process
    /// remembers finishing there. Blocks on the group coordinator.
    pub(super) fn assign(
        &self,
        consumer: &BaseConsumer<PipelineContext>,
        tpl: &TopicPartitionList,
    ) {
        let ids = kafka::partitions_of(tpl);
        let committed = blocking_in_callback(|| kafka::committed_with_metadata(consumer, &ids));
        let committed = committed.unwrap_or_else(|error| {
            tracing::warn!(error = %error, "Reading committed completion maps failed; events finished after the last committed offsets may be sent again.");
            HashMap::new()
        });
        let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        let trackers: Vec<(PartitionId, OffsetTracker)> = ids
            .into_iter()
            .map(|id| {
                let known = remembered.remove(&id);
                let tracker = match committed.get(&id) {
                    Some((offset, metadata)) => {
                        OffsetTracker::resuming(resume_map(&id, *offset, metadata, known))
                    }
                    None => OffsetTracker::default(),
                };
                tracing::info!(partition = %id, "Partition assigned.");
                (id, tracker)
            })
            .collect();
        drop(remembered);
        self.own(trackers);
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
    /// give its task a ticket unless it is finished already or not ours.
    pub(super) fn start(&self, id: PartitionId, offset: i64) -> Start {
        let mut partitions = self.lock();
        let Some(state) = partitions.get_mut(&id) else {
            return Start::NotOwned;
        };
        if state.tracker.start(offset) == Started::AlreadyFinished {
            drop(partitions);
            self.metrics.events_already_finished.inc();
            return Start::AlreadyFinished;
        }
        state.live_tasks += 1;
        Start::Deliver(Ticket {
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

    /// The commit points (position and completion map) of the owned
    /// partitions: all of them, or only those that changed since last asked.
    pub(super) fn commit_list(&self, only_changed: bool) -> TopicPartitionList {
        let points: Vec<(PartitionId, CompletionMap)> = self
            .lock()
            .iter_mut()
            .filter_map(|(id, state)| {
                let changed = state.tracker.take_changed();
                if only_changed && !changed {
                    return None;
                }
                Some((id.clone(), state.tracker.completion_map()?))
            })
            .collect();
        // Encoded outside the lock: the tasks need it to report their ends.
        self.encode_points(points.iter().map(|(id, map)| (id, map.clone())))
    }

    /// The commit list of completion maps, each within the byte budget.
    fn encode_points<'a>(
        &self,
        points: impl IntoIterator<Item = (&'a PartitionId, CompletionMap)>,
    ) -> TopicPartitionList {
        let budget = self.map_budget.load(Ordering::Relaxed);
        let mut list = TopicPartitionList::new();
        for (id, map) in points {
            let mut element = list.add_partition(&id.topic, id.partition);
            // Setting the offset of a fresh element cannot fail.
            let _ = element.set_offset(Offset::Offset(map.base));
            if let Some((text, kept)) = map.encode(budget) {
                if kept < map.finished.len() {
                    self.metrics.completion_maps_truncated.inc();
                }
                element.set_metadata(text);
            }
        }
        list
    }

    /// A commit failed: commit these partitions again next time.
    pub(super) fn commit_failed(&self, list: &TopicPartitionList) {
        let mut partitions = self.lock();
        for id in kafka::partitions_of(list) {
            if let Some(state) = partitions.get_mut(&id) {
                state.tracker.mark_changed();
            }
        }
    }

    /// The broker refused a completion map as too large: commit positions
    /// alone from now on, rather than not at all.
    pub(super) fn refuse_maps(&self) {
        if self.map_budget.swap(0, Ordering::Relaxed) > 0 {
            tracing::error!(
                "The broker refused a completion map as too large (offset.metadata.max.bytes); committing positions without maps. Lower kafka.completion_map_max_bytes below the broker's limit."
            );
        }
    }

    /// Drains the revoked partitions and drops them, remembering what they
    /// finished; returns their commit points. Blocks until the drain ends or
    /// its deadline passes.
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
        let mut points = Vec::new();
        for id in revoked {
            self.metrics.forget_partition(&id.topic, id.partition);
            if let Some(state) = partitions.remove(id)
                && let Some(map) = state.tracker.completion_map()
            {
                points.push((id, map));
            }
        }
        self.publish_assigned(partitions.len());
        drop(partitions);
        let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        for (id, map) in &points {
            remembered.insert((*id).clone(), map.clone());
        }
        drop(remembered);
        self.encode_points(points)
    }

    /// Drains the revoked partitions, commits their positions, drops them.
    pub(super) fn revoke(
        &self,
        consumer: &BaseConsumer<PipelineContext>,
        tpl: &TopicPartitionList,
    ) {
        let revoked = kafka::partitions_of(tpl);
        let commit = blocking_in_callback(|| self.drain(&revoked));
        kafka::commit_sync(
            consumer,
            &commit,
            &self.metrics,
            "revoked partitions",
            REVOKE_COMMIT_PATIENCE,
        );
        self.wake.notify_one();
    }
}

#[cfg(test)]
// Single ranges of offsets are meant, not vectors of their offsets.
#[allow(clippy::single_range_in_vec_init)]
pub(super) mod tests {
    use super::*;
    use crate::config::RateLimitScope;

    pub(in crate::pipeline) fn partitions() -> Partitions {
        let metrics = Arc::new(Metrics::new());
        let budget = RateBudget::new(100, 100, RateLimitScope::Group, 4, metrics.clone());
        Partitions::new(
            Duration::from_millis(200),
            metrics,
            Arc::new(budget),
            vec!["t".into()],
            4000,
        )
    }

    pub(in crate::pipeline) fn ticket(start: Start) -> Ticket {
        match start {
            Start::Deliver(ticket) => ticket,
            other => panic!("expected a ticket, got {other:?}"),
        }
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
        let first = ticket(partitions.start(p0.clone(), 10));
        let second = ticket(partitions.start(p0.clone(), 11));
        partitions.task_ended(&second, TaskEnd::Finished);
        partitions.task_ended(&first, TaskEnd::Abandoned);
        assert_eq!(partitions.live_tasks(), 0);
        let points = partitions.commit_list(false);
        let point = points.find_partition("t", 0).unwrap();
        assert_eq!(
            point.offset(),
            rdkafka::Offset::Offset(10),
            "10 was abandoned"
        );
        let map = CompletionMap::decode(point.metadata(), 10).unwrap();
        assert_eq!(map.finished, vec![11..12], "11 finished above it");
        assert_eq!(partitions.metrics.tasks_abandoned.get(), 1);
    }

    #[test]
    fn messages_of_partitions_not_owned_are_not_started() {
        let partitions = partitions();
        assert!(matches!(
            partitions.start(PartitionId::new("t", 5), 0),
            Start::NotOwned
        ));
    }

    #[test]
    fn a_drain_drops_only_the_revoked_partitions_and_ignores_late_completions() {
        let partitions = partitions();
        let (p0, p1) = (PartitionId::new("t", 0), PartitionId::new("t", 1));
        own(&partitions, &[p0.clone(), p1.clone()]);
        let on_p0 = ticket(partitions.start(p0.clone(), 4));
        let on_p1 = ticket(partitions.start(p1.clone(), 7));
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

    #[test]
    fn a_revoked_partition_is_remembered_and_resumes_with_what_it_finished() {
        let partitions = partitions();
        let p0 = PartitionId::new("t", 0);
        own(&partitions, std::slice::from_ref(&p0));
        let tickets: Vec<Ticket> = (20..25)
            .map(|o| ticket(partitions.start(p0.clone(), o)))
            .collect();
        for t in &tickets[1..] {
            partitions.task_ended(t, TaskEnd::Finished);
        }
        // The revoke's commit fails (the group moved on during an outage):
        // the group still has 10 committed.
        let (stuck, rest) = tickets.split_first().unwrap();
        let dropped = std::thread::scope(|scope| {
            let drain = scope.spawn(|| partitions.drain(std::slice::from_ref(&p0)));
            std::thread::sleep(Duration::from_millis(20));
            partitions.task_ended(stuck, TaskEnd::Abandoned);
            drain.join().unwrap()
        });
        assert_eq!(rest.len(), 4);
        assert_eq!(
            dropped.find_partition("t", 0).unwrap().offset(),
            rdkafka::Offset::Offset(20)
        );
        let known = partitions.remembered.lock().unwrap().remove(&p0);
        let map = resume_map(&p0, 10, "", known);
        assert_eq!(map.base, 10);
        assert_eq!(map.finished, vec![10..20, 21..25]);
        let mut tracker = OffsetTracker::resuming(map);
        let sent: Vec<i64> = (10..26)
            .filter(|o| tracker.start(*o) == Started::InFlight)
            .collect();
        assert_eq!(sent, vec![20, 25], "only the unfinished are sent again");
    }

    #[test]
    fn a_foreign_committed_map_is_ignored() {
        let id = PartitionId::new("t", 0);
        let map = resume_map(&id, 7, "written by another tool", None);
        assert_eq!(
            map,
            CompletionMap {
                base: 7,
                finished: vec![]
            }
        );
        let (text, _) = CompletionMap {
            base: 7,
            finished: vec![9..10],
        }
        .encode(4000)
        .unwrap();
        assert_eq!(resume_map(&id, 7, &text, None).finished, vec![9..10]);
        // The same map under another committed offset (offsets reset by a tool).
        assert!(resume_map(&id, 3, &text, None).finished.is_empty());
    }

    #[test]
    fn only_changed_partitions_are_committed_until_a_commit_fails() {
        let partitions = partitions();
        let (p0, p1) = (PartitionId::new("t", 0), PartitionId::new("t", 1));
        own(&partitions, &[p0.clone(), p1.clone()]);
        let t = ticket(partitions.start(p0.clone(), 0));
        assert_eq!(partitions.commit_list(true).count(), 1, "only p0 changed");
        assert_eq!(partitions.commit_list(true).count(), 0);
        partitions.task_ended(&t, TaskEnd::Finished);
        let list = partitions.commit_list(true);
        assert_eq!(
            list.find_partition("t", 0).unwrap().offset(),
            rdkafka::Offset::Offset(1)
        );
        partitions.commit_failed(&list);
        assert_eq!(partitions.commit_list(true).count(), 1, "sent again");
        assert_eq!(
            partitions.commit_list(false).count(),
            1,
            "p1 has no position yet"
        );
    }
}
