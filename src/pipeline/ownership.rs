//! Partition ownership: which partitions this consumer owns, each one's
//! tracker ([`super::tracker`]) and live tasks, the generation that tells one
//! ownership of a partition from a later one, the revoke drain, and what this
//! process remembers finishing in partitions it no longer owns.
//!
//! On assignment the group's committed offsets and maps are read and the
//! resume decision ([`super::resume`]) gives each partition the tracker it
//! resumes with, merged with what this process finished there before (a
//! revoke whose commit failed, an assignment lost in a broker outage).
//!
//! On revoke (inside librdkafka's synchronous callback) the revoked
//! partitions stop starting new work; tasks that are waiting give up, calls
//! and dead-letter writes under way finish, up to
//! `kafka.revoke_drain_timeout_ms`; then their commit points are handed to
//! the committer and their state is dropped. Only the revoked partitions
//! drain: with incremental assignment the others keep flowing. Late
//! completions for a partition no longer owned are ignored.
//!
//! Ownership publishes what it changes (assigned partitions, the rate
//! budget's owned set, per-partition gauges) into the handles it is given;
//! it knows nothing of commits beyond the points it hands out.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, ConsumerContext};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::deliver::TaskEnd;
use super::rate::RateBudget;
use super::resume;
use super::status::Health;
use super::tracker::{CommitPoint, OffsetTracker, Started};
use super::window::PartitionLoad;
use crate::commit_metadata::{self, CompletionMap};
use crate::dead_letter::prior::PriorCopies;
use crate::kafka::queries;
use crate::ledger::Ledger;
use crate::metrics::{Metrics, PartitionGauge};
use crate::partition::{self, PartitionId};

/// One owned partition.
#[derive(Debug)]
struct PartitionState {
    tracker: OffsetTracker,
    /// Tasks spawned for this partition that have not ended.
    live_tasks: usize,
    /// Distinguishes this ownership from an earlier one of the same partition.
    generation: u64,
    /// Tells waiting tasks to give up (revoke, shutdown).
    cancel: CancellationToken,
    /// The copies earlier owners may have dead-lettered (when the commit said when).
    prior: Option<Arc<PriorCopies>>,
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

/// The handles ownership publishes into.
pub(super) struct Publish {
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    /// Resized to this replica's share whenever ownership changes.
    pub(super) budget: Arc<RateBudget>,
    /// Wakes the main loop when a task ends.
    pub(super) wake: Arc<Notify>,
}

/// The owned partitions, shared by the main loop, the rebalance callbacks and the tasks.
pub(crate) struct Ownership {
    owned: Mutex<HashMap<PartitionId, PartitionState>>,
    /// Signalled whenever a task ends (the revoke drain waits on it).
    progress: Condvar,
    next_generation: AtomicU64,
    revoke_drain: Duration,
    /// The subscribed topics, whose partitions the budget divides.
    topics: Vec<String>,
    /// What this process finished in partitions it no longer owns, for when
    /// they come back (a commit that failed on revoke is not lost knowledge).
    remembered: Mutex<HashMap<PartitionId, CompletionMap>>,
    publish: Publish,
    /// The delivery ledger, once opened: told of every change of the owned set.
    ledger: OnceLock<Arc<Ledger>>,
}

impl Ownership {
    pub(super) fn new(revoke_drain: Duration, topics: Vec<String>, publish: Publish) -> Ownership {
        Ownership {
            owned: Mutex::new(HashMap::new()),
            progress: Condvar::new(),
            next_generation: AtomicU64::new(0),
            revoke_drain,
            topics,
            remembered: Mutex::new(HashMap::new()),
            publish,
            ledger: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PartitionId, PartitionState>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remembered(&self) -> MutexGuard<'_, HashMap<PartitionId, CompletionMap>> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the assigned partitions, resuming each from the group's
    /// committed offset and completion map, merged with what this process
    /// remembers finishing there. Blocks on the group coordinator (inside a
    /// rebalance callback, the caller moves it off the runtime's workers).
    pub(super) fn assign<C: ConsumerContext>(
        &self,
        consumer: &impl Consumer<C>,
        tpl: &TopicPartitionList,
    ) {
        let ids = partition::partitions_of(tpl);
        let with_memory: Vec<PartitionId> = {
            let remembered = self.remembered();
            ids.iter()
                .filter(|id| remembered.contains_key(id))
                .cloned()
                .collect()
        };
        // Counts first: a new partition is counted only once metadata shows it.
        self.refresh_counts(consumer);
        let committed = queries::committed_with_metadata(consumer, &ids);
        // The partitions' ends: how far earlier owners can have read, where
        // the commit says when they may have written dead letters, and
        // whether the log still reaches what this process remembers.
        let mut wanted: Vec<PartitionId> = committed
            .iter()
            .flatten()
            .filter(|(_, committed)| commit_metadata::has_look_back(&committed.metadata))
            .map(|(id, _)| id.clone())
            .chain(with_memory)
            .collect();
        wanted.sort();
        wanted.dedup();
        let ends = queries::end_offsets(consumer, &wanted);
        let committed = committed.unwrap_or_else(|error| {
            tracing::warn!(error = %error, "Reading committed completion maps failed; events finished after the last committed offsets may be sent again.");
            HashMap::new()
        });
        let mut remembered = self.remembered();
        let trackers: Vec<(PartitionId, OffsetTracker)> = ids
            .into_iter()
            .map(|id| {
                let tracker = resume::resume_tracker(
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
        self.publish.health.mark_joined();
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
                });
        }
        self.publish_assigned(&partitions);
    }

    /// Files the owned partitions' events in `ledger`: owning a partition
    /// restores its ledger partition.
    pub(super) fn file_in(&self, ledger: Arc<Ledger>) {
        let partitions = self.lock();
        ledger.set_owned(partitions.keys());
        let _already = self.ledger.set(ledger);
    }

    fn publish_assigned(&self, partitions: &HashMap<PartitionId, PartitionState>) {
        let publish = &self.publish;
        if let Some(ledger) = self.ledger.get() {
            ledger.set_owned(partitions.keys());
        }
        publish.health.set_assigned(partitions.len());
        publish
            .metrics
            .assigned_partitions
            .set(partitions.len() as i64);
        publish.budget.set_owned(partitions.keys().cloned());
    }

    /// Reads the subscribed topics' partition counts for the rate budget. Blocks.
    pub(super) fn refresh_counts<C: ConsumerContext>(&self, consumer: &impl Consumer<C>) {
        self.publish.budget.refresh_counts(consumer, &self.topics);
    }

    /// The owned partitions.
    pub(super) fn owned(&self) -> HashSet<PartitionId> {
        self.lock().keys().cloned().collect()
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
            self.publish.metrics.events_already_finished.inc();
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

    /// A task ended. Only here does an offset become finished, and only for
    /// a task that ended [`TaskEnd::Finished`] or [`TaskEnd::DeadLettered`].
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
        if end == TaskEnd::Abandoned {
            self.publish.metrics.tasks_abandoned.inc();
        }
        self.progress.notify_all();
        self.publish.wake.notify_one();
    }

    /// Gives up every partition after the final commit (shutdown): a revoke
    /// that librdkafka reports while the consumer closes then has nothing
    /// left to commit, and cannot block on a broker that is gone.
    pub(super) fn release_all(&self) {
        let mut partitions = self.lock();
        for (id, state) in partitions.drain() {
            state.cancel.cancel();
            self.publish.metrics.forget_partition(&id);
        }
        self.publish_assigned(&partitions);
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

    /// The position a partition is finished up to, if owned and known.
    pub(super) fn position(&self, id: &PartitionId) -> Option<i64> {
        self.lock().get(id).and_then(|s| s.tracker.position())
    }

    /// Moves partitions' positions past offsets librdkafka consumed that are
    /// not messages (see [`OffsetTracker::skip_to`]).
    pub(super) fn skip_to(&self, positions: impl IntoIterator<Item = (PartitionId, i64)>) {
        let mut partitions = self.lock();
        for (id, position) in positions {
            if let Some(state) = partitions.get_mut(&id) {
                state.tracker.skip_to(position);
            }
        }
    }

    /// Publishes each partition's finished position where it moved and the
    /// oldest message in flight; returns how many messages are in flight.
    pub(super) fn publish_progress(&self) -> usize {
        let metrics = &self.publish.metrics;
        let mut oldest: Option<Instant> = None;
        let mut in_flight = 0;
        for (id, state) in self.lock().iter_mut() {
            in_flight += state.tracker.in_flight();
            oldest = oldest.into_iter().chain(state.tracker.oldest_start()).min();
            if let Some(position) = state.tracker.take_advance() {
                metrics.set_partition(PartitionGauge::CompletedOffset, id, position);
            }
        }
        metrics
            .oldest_in_flight_age
            .set(oldest.map_or(0.0, |t| t.elapsed().as_secs_f64()));
        in_flight
    }

    /// The owned partitions' loads, for `decide` (the window) to judge
    /// under the lock.
    pub(super) fn with_loads<R>(&self, decide: impl FnOnce(&[PartitionLoad<'_>]) -> R) -> R {
        let partitions = self.lock();
        let loads: Vec<PartitionLoad<'_>> = partitions
            .iter()
            .map(|(id, state)| PartitionLoad {
                id,
                generation: state.generation,
                in_flight: state.tracker.in_flight(),
            })
            .collect();
        decide(&loads)
    }

    /// The commit points of the owned partitions: all of them, or only those
    /// that changed since last asked.
    pub(super) fn points(&self, only_changed: bool) -> Vec<CommitPoint> {
        let now = Instant::now();
        self.lock()
            .iter_mut()
            .filter_map(|(id, state)| {
                let changed = state.tracker.take_changed();
                if only_changed && !changed {
                    return None;
                }
                state.tracker.commit_point(id, now)
            })
            .collect()
    }

    /// A commit of these partitions did not land: hand their points out
    /// again next time.
    pub(super) fn mark_changed(&self, list: &TopicPartitionList) {
        let mut partitions = self.lock();
        for id in partition::partitions_of(list) {
            if let Some(state) = partitions.get_mut(&id) {
                state.tracker.mark_changed();
            }
        }
    }

    /// Drains the revoked partitions and drops them, remembering what they
    /// finished; returns their commit points. Blocks until the drain ends or
    /// its deadline passes.
    pub(super) fn drain(&self, revoked: &[PartitionId]) -> Vec<CommitPoint> {
        let mut partitions = self.lock();
        for id in revoked {
            if let Some(state) = partitions.get(id) {
                state.cancel.cancel();
            }
        }
        let deadline = Instant::now() + self.revoke_drain;
        loop {
            let live: usize = revoked
                .iter()
                .filter_map(|id| partitions.get(id))
                .map(|s| s.live_tasks)
                .sum();
            let now = Instant::now();
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
        let now = Instant::now();
        let mut points = Vec::new();
        for id in revoked {
            self.publish.metrics.forget_partition(id);
            if let Some(state) = partitions.remove(id)
                && let Some(point) = state.tracker.commit_point(id, now)
            {
                points.push(point);
            }
        }
        self.publish_assigned(&partitions);
        drop(partitions);
        let mut remembered = self.remembered();
        for point in &points {
            remembered.insert(point.id.clone(), point.map.clone());
        }
        points
    }
}

#[cfg(test)]
// Single ranges of offsets are meant, not vectors of their offsets.
#[allow(clippy::single_range_in_vec_init)]
pub(super) mod tests {
    use super::*;
    use crate::config::{DeliverySettings, RateLimitScope};
    use crate::pipeline::rate::RateSettings;
    use crate::pipeline::resume::resume_map;

    pub(in crate::pipeline) fn ownership() -> Ownership {
        let metrics = Arc::new(Metrics::new());
        let budget = RateBudget::plain(
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
        Ownership::new(
            Duration::from_millis(200),
            vec!["t".into()],
            Publish {
                metrics,
                health: Arc::new(Health::default()),
                budget: Arc::new(budget),
                wake: Arc::new(Notify::new()),
            },
        )
    }

    pub(in crate::pipeline) fn ticket(start: Start) -> Ticket {
        match start {
            Start::Deliver(ticket) => ticket,
            other => panic!("expected a ticket, got {other:?}"),
        }
    }

    pub(in crate::pipeline) fn own(ownership: &Ownership, ids: &[PartitionId]) {
        ownership.own(ids.iter().map(|id| (id.clone(), OffsetTracker::default())));
    }

    fn point_of(points: &[CommitPoint], id: &PartitionId) -> CommitPoint {
        points
            .iter()
            .find(|point| point.id == *id)
            .cloned()
            .unwrap_or_else(|| panic!("no point for {id}"))
    }

    #[test]
    fn ownership_resizes_the_rate_budget() {
        let ownership = ownership();
        own(
            &ownership,
            &[PartitionId::new("t", 0), PartitionId::new("t", 1)],
        );
        assert!((ownership.publish.budget.share().per_sec - 50.0).abs() < 1e-9);
        ownership.drain(&[PartitionId::new("t", 1)]);
        assert!((ownership.publish.budget.share().per_sec - 25.0).abs() < 1e-9);
    }

    #[test]
    fn a_finished_task_moves_the_position_and_an_abandoned_one_does_not() {
        let ownership = ownership();
        let p0 = PartitionId::new("t", 0);
        own(&ownership, std::slice::from_ref(&p0));
        let first = ticket(ownership.start(p0.clone(), 10));
        let second = ticket(ownership.start(p0.clone(), 11));
        ownership.task_ended(&second, TaskEnd::Finished);
        ownership.task_ended(&first, TaskEnd::Abandoned);
        assert_eq!(ownership.live_tasks(), 0);
        let point = point_of(&ownership.points(false), &p0);
        assert_eq!(point.map.base, 10, "10 was abandoned");
        assert_eq!(point.map.finished, vec![11..12], "11 finished above it");
        assert!(
            point.look_back_since > 0,
            "the dead-letter look-back time is committed too"
        );
        assert_eq!(ownership.publish.metrics.tasks_abandoned.get(), 1);
    }

    #[test]
    fn after_the_final_commit_nothing_is_owned_and_nothing_is_left_to_commit() {
        let ownership = ownership();
        let p0 = PartitionId::new("t", 0);
        own(&ownership, std::slice::from_ref(&p0));
        let t = ticket(ownership.start(p0.clone(), 3));
        ownership.task_ended(&t, TaskEnd::Finished);
        assert_eq!(ownership.points(false).len(), 1);
        ownership.release_all();
        assert!(ownership.points(false).is_empty());
        assert!(ownership.drain(std::slice::from_ref(&p0)).is_empty());
        assert_eq!(ownership.publish.health.assigned_partitions(), 0);
    }

    #[test]
    fn messages_of_partitions_not_owned_are_not_started() {
        let ownership = ownership();
        assert!(matches!(
            ownership.start(PartitionId::new("t", 5), 0),
            Start::NotOwned
        ));
    }

    #[test]
    fn a_drain_drops_only_the_revoked_partitions_and_ignores_late_completions() {
        let ownership = ownership();
        let (p0, p1) = (PartitionId::new("t", 0), PartitionId::new("t", 1));
        own(&ownership, &[p0.clone(), p1.clone()]);
        let on_p0 = ticket(ownership.start(p0.clone(), 4));
        let on_p1 = ticket(ownership.start(p1.clone(), 7));
        let started = Instant::now();
        // p0's task never ends: the drain waits its deadline, then gives up.
        let points = ownership.drain(std::slice::from_ref(&p0));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(
            on_p0.cancel.is_cancelled(),
            "waiting tasks are told to give up"
        );
        assert!(
            !on_p1.cancel.is_cancelled(),
            "other partitions keep flowing"
        );
        assert_eq!(point_of(&points, &p0).map.base, 4);
        assert!(points.iter().all(|point| point.id != p1));
        assert_eq!(ownership.publish.health.assigned_partitions(), 1);
        // A late completion of the dropped ownership changes nothing, even
        // after the partition comes back.
        own(&ownership, std::slice::from_ref(&p0));
        ownership.task_ended(&on_p0, TaskEnd::Finished);
        assert_eq!(ownership.live_tasks(), 1, "only p1's task is live");
        ownership.task_ended(&on_p1, TaskEnd::Finished);
        assert_eq!(ownership.live_tasks(), 0);
    }

    #[test]
    fn a_revoked_partition_is_remembered_and_resumes_with_what_it_finished() {
        let ownership = ownership();
        let p0 = PartitionId::new("t", 0);
        own(&ownership, std::slice::from_ref(&p0));
        let tickets: Vec<Ticket> = (20..25)
            .map(|o| ticket(ownership.start(p0.clone(), o)))
            .collect();
        for t in &tickets[1..] {
            ownership.task_ended(t, TaskEnd::Finished);
        }
        // The revoke's commit fails (the group moved on during an outage):
        // the group still has 10 committed.
        let (stuck, rest) = tickets.split_first().unwrap();
        let dropped = std::thread::scope(|scope| {
            let drain = scope.spawn(|| ownership.drain(std::slice::from_ref(&p0)));
            std::thread::sleep(Duration::from_millis(20));
            ownership.task_ended(stuck, TaskEnd::Abandoned);
            drain.join().unwrap()
        });
        assert_eq!(rest.len(), 4);
        assert_eq!(point_of(&dropped, &p0).map.base, 20);
        let known = ownership.remembered().remove(&p0);
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
    fn only_changed_partitions_are_handed_out_until_a_commit_fails() {
        let ownership = ownership();
        let (p0, p1) = (PartitionId::new("t", 0), PartitionId::new("t", 1));
        own(&ownership, &[p0.clone(), p1.clone()]);
        let t = ticket(ownership.start(p0.clone(), 0));
        assert_eq!(ownership.points(true).len(), 1, "only p0 changed");
        assert_eq!(ownership.points(true).len(), 0);
        ownership.task_ended(&t, TaskEnd::Finished);
        let points = ownership.points(true);
        assert_eq!(point_of(&points, &p0).map.base, 1);
        let mut list = TopicPartitionList::new();
        list.add_partition("t", 0);
        ownership.mark_changed(&list);
        assert_eq!(ownership.points(true).len(), 1, "handed out again");
        assert_eq!(ownership.points(false).len(), 1, "p1 has no position yet");
    }

    #[test]
    fn the_loads_are_the_owned_partitions_unfinished_messages() {
        let ownership = ownership();
        let (p0, p1) = (PartitionId::new("t", 0), PartitionId::new("t", 1));
        own(&ownership, &[p0.clone(), p1.clone()]);
        let tickets: Vec<Ticket> = (0..2)
            .map(|o| ticket(ownership.start(p0.clone(), o)))
            .collect();
        let loads = |ownership: &Ownership| {
            ownership.with_loads(|loads| {
                let mut loads: Vec<_> = loads.iter().map(|l| (l.id.clone(), l.in_flight)).collect();
                loads.sort();
                loads
            })
        };
        assert_eq!(loads(&ownership), [(p0.clone(), 2), (p1.clone(), 0)]);
        for t in &tickets {
            ownership.task_ended(t, TaskEnd::Finished);
        }
        assert_eq!(loads(&ownership), [(p0, 0), (p1, 0)]);
    }
}
