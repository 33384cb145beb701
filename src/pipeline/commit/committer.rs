//! The committer: when a commit goes out, how, and what its answer changes.
//! What this bounds after a crash is docs/guarantees.md ("Few replays after
//! a crash").
//!
//! * **Commits keep up with progress.** While positions move, a commit goes
//!   out as soon as the previous one ended and `kafka.commit_interval_ms`
//!   passed since that one was sent ([`Committer::next_due`]); a dead letter's
//!   acknowledgement asks for one at once.
//! * **One at a time.** The main loop's commits run on a blocking thread (a
//!   synchronous commit is the only kind whose result librdkafka reports back
//!   for manual commits), one at a time, so commits reach the broker in the
//!   order their points were taken. A commit asked for while one is on its
//!   way goes out when that one ends. The revoke's and the final commit wait
//!   for the one on its way first, so no older point lands after theirs.
//! * **Two paths, one rule.** Every answer is read by [`answer`]. In the
//!   background, a commit that did not land hands its partitions' points out
//!   again with the next commit; a synchronous commit (revoke, shutdown) has
//!   no next time, so it is tried again while the coordinator is briefly
//!   away, up to its patience.
//! * **The map budget.** Completion maps are cut to
//!   `kafka.completion_map_max_bytes`; when the broker refuses one as too
//!   large (`offset.metadata.max.bytes`), maps are turned off and positions
//!   alone are committed from then on, rather than not at all.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use tokio::sync::Notify;

use super::answer::{Answer, answer};
use super::point;
use crate::backoff::backoff;
use crate::metrics::Metrics;
use crate::pipeline::ownership::Ownership;
use crate::pipeline::tracker::CommitPoint;

/// Decides, sends and judges the pipeline's commits.
pub(crate) struct Committer {
    /// Whether a commit of the main loop is on its way, and when the last
    /// one was sent.
    in_flight: Mutex<Flight>,
    /// Signalled when the commit on its way ends.
    idle: Condvar,
    /// A commit was asked for: a dead letter was acknowledged (its offset is
    /// committed at once, so a copy written again after a crash stays
    /// unlikely), or a commit was due while another was on its way.
    asked: AtomicBool,
    /// The largest completion map committed, in bytes (0: maps are off).
    map_budget: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Wakes the main loop, which sends what was asked for.
    wake: Arc<Notify>,
}

impl Committer {
    pub(crate) fn new(map_budget: usize, metrics: Arc<Metrics>, wake: Arc<Notify>) -> Committer {
        Committer {
            in_flight: Mutex::new(Flight {
                busy: false,
                last_sent: None,
                made: Instant::now(),
            }),
            idle: Condvar::new(),
            asked: AtomicBool::new(false),
            map_budget: AtomicUsize::new(map_budget),
            metrics,
            wake,
        }
    }

    /// Asks for a commit as soon as the main loop wakes.
    pub(crate) fn ask(&self) {
        self.asked.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether a commit was asked for since the last time this was called.
    pub(crate) fn take_asked(&self) -> bool {
        self.asked.swap(false, Ordering::Relaxed)
    }

    /// When the main loop's next commit may go out: `spacing` after the
    /// last one was sent (the first: after the committer was made), or now.
    /// (One on its way when this comes is sent again as asked for when it
    /// ends.)
    pub(crate) fn next_due(&self, spacing: Duration) -> Instant {
        let flight = self.lock();
        (flight.last_sent.unwrap_or(flight.made) + spacing).max(Instant::now())
    }

    /// The main loop's commit: the partitions whose point changed, sent on a
    /// blocking thread unless a commit is on its way already (then it goes
    /// out when that one ends).
    pub(crate) fn commit_changed<C, K>(
        self: &Arc<Self>,
        consumer: &Arc<K>,
        ownership: &Arc<Ownership>,
    ) where
        C: ConsumerContext,
        K: Consumer<C> + Send + Sync + 'static,
    {
        if !self.begin() {
            self.asked.store(true, Ordering::Relaxed);
            return;
        }
        let points = ownership.points(true);
        if points.is_empty() {
            // Nothing changed since the last commit: the group is up to date,
            // which is what "time since the last commit" watches.
            self.metrics.record_commit(true);
            self.end();
            return;
        }
        let list = self.list(&points);
        self.lock().last_sent = Some(Instant::now());
        self.metrics.commits_sent.inc();
        let (committer, consumer, ownership) = (self.clone(), consumer.clone(), ownership.clone());
        tokio::task::spawn_blocking(move || {
            let result = consumer.commit(&list, CommitMode::Sync);
            // Released first: the consumer is closed on the pipeline's task
            // at shutdown, which waits for this commit to end.
            drop(consumer);
            committer.settle(&list, &result, &ownership);
            committer.end();
        });
    }

    /// What a background commit's answer changes.
    fn settle(&self, list: &TopicPartitionList, result: &KafkaResult<()>, ownership: &Ownership) {
        match answer(list, result) {
            Answer::Committed => self.metrics.record_commit(true),
            Answer::MapTooLarge => {
                self.refuse_maps();
                ownership.mark_changed(list);
                self.metrics.record_commit(false);
            }
            Answer::Retriable(error) | Answer::Failed(error) => {
                ownership.mark_changed(list);
                self.metrics.record_commit(false);
                tracing::warn!(error = %error, "Offset commit failed; it is retried with the next commit.");
            }
        }
    }

    /// Waits (blocking) until no commit of the main loop is on its way, for
    /// up to `patience`: a synchronous commit made after it then carries the
    /// newest point, and no older one can land after it.
    pub(crate) fn wait_idle(&self, patience: Duration) {
        let flight = self.lock();
        let _ = self
            .idle
            .wait_timeout_while(flight, patience, |flight| flight.busy)
            .unwrap_or_else(|p| p.into_inner());
    }

    /// Commits `points` now and synchronously (`what` names them in the log:
    /// revoked partitions, the final positions), trying again while the
    /// coordinator is briefly unavailable, for up to `patience`; returns
    /// whether they landed. Blocks.
    pub(crate) fn commit_sync<C: ConsumerContext>(
        &self,
        consumer: &impl Consumer<C>,
        points: &[CommitPoint],
        what: &str,
        patience: Duration,
    ) -> bool {
        if points.is_empty() {
            return true;
        }
        let mut list = self.list(points);
        let deadline = Instant::now() + patience;
        let mut attempt = 0;
        loop {
            self.metrics.commits_sent.inc();
            let result = consumer.commit(&list, CommitMode::Sync);
            let error = match answer(&list, &result) {
                Answer::Committed => {
                    self.metrics.record_commit(true);
                    tracing::info!(partitions = list.count(), "Committed {what}.");
                    return true;
                }
                Answer::MapTooLarge if has_maps(&list) => {
                    self.metrics.record_commit(false);
                    self.refuse_maps();
                    list = point::without_maps(&list);
                    continue;
                }
                Answer::MapTooLarge => {
                    self.metrics.record_commit(false);
                    tracing::warn!(
                        "Commit of {what} was refused as too large without maps; events finished since the last commit may be sent again by another replica."
                    );
                    return false;
                }
                Answer::Retriable(error) if Instant::now() < deadline => error,
                Answer::Retriable(error) | Answer::Failed(error) => {
                    self.metrics.record_commit(false);
                    tracing::warn!(error = %error, "Commit of {what} failed; events finished since the last commit may be sent again by another replica.");
                    return false;
                }
            };
            self.metrics.record_commit(false);
            let delay = backoff(attempt, Duration::from_millis(100), Duration::from_secs(1));
            tracing::info!(error = %error, "Commit of {what} failed; trying again.");
            std::thread::sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
            attempt += 1;
        }
    }

    /// The commit list of `points` within the map budget.
    fn list(&self, points: &[CommitPoint]) -> TopicPartitionList {
        let (list, truncated) = point::commit_list(points, self.map_budget.load(Ordering::Relaxed));
        self.metrics.completion_maps_truncated.inc_by(truncated);
        list
    }

    /// The broker refused a completion map as too large: commit positions
    /// alone from now on, rather than not at all.
    fn refuse_maps(&self) {
        if self.map_budget.swap(0, Ordering::Relaxed) > 0 {
            tracing::error!(
                "The broker refused a completion map as too large (offset.metadata.max.bytes); committing positions without maps. Lower kafka.completion_map_max_bytes below the broker's limit."
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, Flight> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a commit of the main loop on its way, unless one is already.
    fn begin(&self) -> bool {
        let mut flight = self.lock();
        if flight.busy {
            return false;
        }
        flight.busy = true;
        true
    }

    /// The commit on its way ended; one asked for meanwhile goes out next.
    fn end(&self) {
        self.lock().busy = false;
        self.idle.notify_all();
        if self.asked.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }
}

/// The main loop's commit on its way, if any, and when the last one was sent.
#[derive(Debug)]
struct Flight {
    busy: bool,
    last_sent: Option<Instant>,
    /// When the committer was made: the first commit's spacing counts from here.
    made: Instant,
}

fn has_maps(list: &TopicPartitionList) -> bool {
    list.elements().iter().any(|e| !e.metadata().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::PartitionId;
    use crate::pipeline::deliver::TaskEnd;
    use crate::pipeline::ownership::tests::{own, ownership, ticket};
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    fn committer() -> Committer {
        Committer::new(4000, Arc::new(Metrics::new()), Arc::new(Notify::new()))
    }

    #[test]
    fn a_map_the_broker_finds_too_large_turns_maps_off_and_the_commit_is_sent_again() {
        let (ownership, committer) = (ownership(), committer());
        let p0 = PartitionId::new("t", 0);
        own(&ownership, std::slice::from_ref(&p0));
        let _first = ticket(ownership.start(p0.clone(), 0));
        let second = ticket(ownership.start(p0.clone(), 1));
        ownership.task_ended(&second, TaskEnd::Finished);
        let list = committer.list(&ownership.points(true));
        assert!(
            !list.elements()[0].metadata().is_empty(),
            "1 is finished above 0"
        );
        committer.settle(
            &list,
            &Err(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::OffsetMetadataTooLarge,
            )),
            &ownership,
        );
        assert_eq!(committer.metrics.commit_failures.get(), 1);
        let again = committer.list(&ownership.points(true));
        assert_eq!(again.count(), 1, "the partition is committed again");
        assert!(again.elements()[0].metadata().is_empty(), "without a map");
    }

    #[test]
    fn a_commit_that_did_not_land_is_handed_out_again_and_one_that_did_is_not() {
        let (ownership, committer) = (ownership(), committer());
        let p0 = PartitionId::new("t", 0);
        own(&ownership, std::slice::from_ref(&p0));
        let t = ticket(ownership.start(p0.clone(), 0));
        ownership.task_ended(&t, TaskEnd::Finished);
        let list = committer.list(&ownership.points(true));
        let moved = Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NotCoordinator));
        committer.settle(&list, &moved, &ownership);
        let list = committer.list(&ownership.points(true));
        assert_eq!(list.count(), 1, "committed again");
        committer.settle(&list, &Ok(()), &ownership);
        assert!(ownership.points(true).is_empty());
        assert_eq!(committer.metrics.commit_failures.get(), 1);
    }

    #[test]
    fn a_commit_is_due_one_spacing_after_the_last_was_sent() {
        let committer = committer();
        let spacing = Duration::from_millis(200);
        let due = committer.next_due(spacing);
        assert!(
            due >= committer.lock().made + spacing,
            "the first after the spacing"
        );
        let sent = Instant::now();
        committer.lock().last_sent = Some(sent);
        assert_eq!(committer.next_due(spacing), sent + spacing);
        committer.lock().last_sent = Some(sent - Duration::from_secs(1));
        let now = Instant::now();
        let due = committer.next_due(spacing);
        assert!(due >= now && due < now + spacing, "overdue: now");
    }

    #[test]
    fn one_commit_at_a_time_and_one_asked_for_meanwhile_follows() {
        let committer = Arc::new(committer());
        assert!(committer.begin());
        assert!(!committer.begin(), "one is on its way");
        committer.asked.store(true, Ordering::Relaxed);
        let waiting = {
            let committer = committer.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                committer.wait_idle(Duration::from_secs(10));
                started.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        committer.end();
        let waited = waiting.join().unwrap();
        assert!(waited >= Duration::from_millis(40), "waited for the end");
        assert!(waited < Duration::from_secs(5), "and no longer");
        assert!(committer.take_asked(), "the asked-for commit goes out next");
        assert!(committer.begin());
    }
}
