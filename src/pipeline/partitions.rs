//! Partition ownership: which partitions this consumer owns, each one's
//! unfinished offsets and live tasks, and the librdkafka callbacks that change
//! ownership (rebalance), report commits and publish per-partition statistics.
//!
//! On assignment the group's committed offset and its completion map
//! ([`super::completion`]) are read, merged with what this process itself
//! finished when it owned the partition before (a revoke whose commit failed,
//! an assignment lost in a broker outage), and the offsets known to be
//! finished are skipped instead of sent again. That memory is trusted only
//! while the partition's log still reaches it (a topic created again starts
//! its offsets over).
//!
//! The callbacks live with the state they mutate. On revoke (inside
//! librdkafka's synchronous callback) the revoked partitions stop starting
//! new work; tasks that are waiting give up, calls and dead-letter writes
//! under way finish, up to `kafka.revoke_drain_timeout_ms`; then their
//! positions are committed synchronously and their state is dropped. Only
//! the revoked partitions drain: with incremental assignment the others keep
//! flowing. Late completions for a partition no longer owned are ignored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::commits::{self, CommitPoint};
use super::completion::CompletionMap;
use super::context::PipelineContext;
use super::offsets::{OffsetTracker, Started};
use super::rate::RateBudget;
use super::status::Health;
use crate::dead_letter::prior::PriorCopies;
use crate::kafka::{self, PartitionId};
use crate::metrics::Metrics;

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
    /// The copies earlier owners may have dead-lettered (when the commit said when).
    prior: Option<Arc<PriorCopies>>,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    /// The event was delivered.
    Finished,
    /// The event's dead-letter copy was acknowledged. Its offset is committed
    /// at once, not at the next interval: a copy written again after a crash
    /// is a duplicate an operator sees, so the window for one stays as short
    /// as a commit's round trip.
    DeadLettered,
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
    /// Set when an earlier owner may have dead-lettered this offset.
    pub(super) prior: Option<Arc<PriorCopies>>,
}

/// The owned partitions, shared by the main loop, the rebalance callbacks and the tasks.
pub(super) struct Partitions {
    owned: Mutex<HashMap<PartitionId, PartitionState>>,
    /// Signalled whenever a task ends (the revoke drain waits on it).
    progress: Condvar,
    /// Wakes the main loop.
    pub(super) wake: Arc<Notify>,
    /// Set when a dead letter finished: the main loop commits when it wakes.
    commit_now: AtomicBool,
    /// Whether a commit from the main loop is on its way (one at a time, so
    /// commits reach the broker in the order their points were taken).
    pub(super) committing: AtomicBool,
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
            commit_now: AtomicBool::new(false),
            committing: AtomicBool::new(false),
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
        let with_memory: Vec<PartitionId> = {
            let remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
            ids.iter()
                .filter(|id| remembered.contains_key(id))
                .cloned()
                .collect()
        };
        let (committed, ends) = blocking_in_callback(|| {
            // Counts first: a new partition is counted only once metadata shows it.
            self.refresh_counts(consumer);
            let committed = kafka::committed_with_metadata(consumer, &ids);
            // The partitions' ends: how far earlier owners can have read,
            // where the commit says when they may have written dead letters,
            // and whether the log still reaches what this process remembers.
            let mut wanted: Vec<PartitionId> = committed
                .iter()
                .flatten()
                .filter(|(_, (_, metadata))| metadata.contains('~'))
                .map(|(id, _)| id.clone())
                .chain(with_memory)
                .collect();
            wanted.sort();
            wanted.dedup();
            (committed, kafka::end_offsets(consumer, &wanted))
        });
        let committed = committed.unwrap_or_else(|error| {
            tracing::warn!(error = %error, "Reading committed completion maps failed; events finished after the last committed offsets may be sent again.");
            HashMap::new()
        });
        let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        let trackers: Vec<(PartitionId, OffsetTracker)> = ids
            .into_iter()
            .map(|id| {
                let tracker = commits::resume_tracker(
                    &id,
                    committed.get(&id),
                    remembered.remove(&id),
                    ends.get(&id).copied(),
                );
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
            partitions
                .entry(id.clone())
                .or_insert_with(|| PartitionState {
                    prior: tracker
                        .inherited()
                        .map(|look_back| Arc::new(PriorCopies::new(id, look_back))),
                    tracker,
                    live_tasks: 0,
                    generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
                    cancel: CancellationToken::new(),
                    paused: false,
                });
        }
        self.publish_assigned(&partitions);
    }

    fn publish_assigned(&self, partitions: &HashMap<PartitionId, PartitionState>) {
        self.health.set_assigned(partitions.len());
        self.metrics
            .assigned_partitions
            .set(partitions.len() as i64);
        self.budget.set_owned(partitions.keys().cloned());
    }

    /// Reads the subscribed topics' partition counts for the rate budget. Blocks.
    pub(super) fn refresh_counts(&self, consumer: &impl Consumer<PipelineContext>) {
        self.budget.refresh_counts(consumer, &self.topics);
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
            prior: state
                .prior
                .clone()
                .filter(|prior| prior.look_back.covers(offset)),
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
            if end != TaskEnd::Abandoned {
                state.tracker.finish(ticket.offset);
            }
        }
        drop(partitions);
        match end {
            TaskEnd::Finished => {}
            TaskEnd::DeadLettered => self.commit_now.store(true, Ordering::Relaxed),
            TaskEnd::Abandoned => self.metrics.tasks_abandoned.inc(),
        }
        self.progress.notify_all();
        self.wake.notify_one();
    }

    /// Whether a commit was asked for since the last time this was called.
    pub(super) fn take_commit_now(&self) -> bool {
        self.commit_now.swap(false, Ordering::Relaxed)
    }

    /// Asks the main loop for a commit as soon as it wakes.
    pub(super) fn ask_commit(&self) {
        self.commit_now.store(true, Ordering::Relaxed);
    }

    /// A commit of the main loop ended: what its result means for what is
    /// committed next. Wakes the main loop if a commit was asked for meanwhile.
    pub(super) fn commit_ended(&self, list: &TopicPartitionList, result: &KafkaResult<()>) {
        self.commit_result(list, result);
        self.committing.store(false, Ordering::Release);
        if self.commit_now.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Waits (blocking) until no commit of the main loop is on its way, for
    /// up to `patience`: a synchronous commit made after it then carries the
    /// newest point, and no older one can land after it.
    pub(super) fn wait_for_commit(&self, patience: Duration) {
        let deadline = std::time::Instant::now() + patience;
        while self.committing.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// What a commit's result means: a failed one commits its partitions
    /// again next time; a completion map the broker finds too large turns
    /// maps off.
    pub(super) fn commit_result(&self, list: &TopicPartitionList, result: &KafkaResult<()>) {
        if commits::too_large(list, result) {
            self.refuse_maps();
        }
        match result {
            Ok(()) => self.metrics.record_commit(true),
            // Nothing new was stored since the last commit: the group is up to
            // date, which is what "time since the last commit" is about.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {
                self.metrics.record_commit(true)
            }
            Err(error) => {
                self.commit_failed(list);
                self.metrics.record_commit(false);
                tracing::warn!(error = %error, "Offset commit failed; it is retried with the next commit.");
            }
        }
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
        let now = std::time::Instant::now();
        let points: Vec<CommitPoint> = self
            .lock()
            .iter_mut()
            .filter_map(|(id, state)| {
                let changed = state.tracker.take_changed();
                if only_changed && !changed {
                    return None;
                }
                let map = state.tracker.completion_map()?;
                Some((id.clone(), map, state.tracker.dead_letters_since(now)))
            })
            .collect();
        // Encoded outside the lock: the tasks need it to report their ends.
        commits::encode_points(
            points,
            self.map_budget.load(Ordering::Relaxed),
            &self.metrics,
        )
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
        let now = std::time::Instant::now();
        let mut points = Vec::new();
        for id in revoked {
            self.metrics.forget_partition(&id.topic, id.partition);
            if let Some(state) = partitions.remove(id)
                && let Some(map) = state.tracker.completion_map()
            {
                points.push((id.clone(), map, state.tracker.dead_letters_since(now)));
            }
        }
        self.publish_assigned(&partitions);
        drop(partitions);
        let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        for (id, map, _) in &points {
            remembered.insert(id.clone(), map.clone());
        }
        drop(remembered);
        commits::encode_points(
            points,
            self.map_budget.load(Ordering::Relaxed),
            &self.metrics,
        )
    }

    /// Drains the revoked partitions, commits their positions, drops them.
    pub(super) fn revoke(
        &self,
        consumer: &BaseConsumer<PipelineContext>,
        tpl: &TopicPartitionList,
    ) {
        let revoked = kafka::partitions_of(tpl);
        let commit = blocking_in_callback(|| {
            let points = self.drain(&revoked);
            self.wait_for_commit(REVOKE_COMMIT_PATIENCE);
            points
        });
        kafka::commit_sync(
            consumer,
            &commit,
            &self.metrics,
            "revoked partitions",
            REVOKE_COMMIT_PATIENCE,
        );
        blocking_in_callback(|| self.refresh_counts(consumer));
        self.wake.notify_one();
    }
}

#[cfg(test)]
// Single ranges of offsets are meant, not vectors of their offsets.
#[allow(clippy::single_range_in_vec_init)]
pub(super) mod tests {
    use super::*;
    use crate::config::{DeliverySettings, RateLimitScope};
    use crate::pipeline::commits::resume_map;
    use crate::pipeline::rate::RateSettings;

    pub(in crate::pipeline) fn partitions() -> Partitions {
        let metrics = Arc::new(Metrics::new());
        let budget = RateBudget::new(
            RateSettings::of(
                &DeliverySettings {
                    rate_limit_per_sec: 100,
                    rate_limit_burst: Some(100),
                    ..DeliverySettings::default()
                },
                RateLimitScope::Group,
                Duration::from_secs(2),
            ),
            metrics.clone(),
        );
        budget.observe_counts([("t", 4)]);
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
        let (map, since) = crate::pipeline::completion::decode_metadata(point.metadata(), 10);
        assert_eq!(map.unwrap().finished, vec![11..12], "11 finished above it");
        assert!(
            since.is_some(),
            "the dead-letter look-back time is committed too"
        );
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
        let (map, since) = resume_map(&p0, 10, "", known);
        assert_eq!((map.base, since), (10, None));
        assert_eq!(map.finished, vec![10..20, 21..25]);
        let mut tracker = OffsetTracker::resuming(map, None);
        let sent: Vec<i64> = (10..26)
            .filter(|o| tracker.start(*o) == Started::InFlight)
            .collect();
        assert_eq!(sent, vec![20, 25], "only the unfinished are sent again");
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
