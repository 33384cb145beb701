//! The delivery pipeline: a Kafka consumer group → decoded events →
//! rate-limited, signed calls → offsets committed only after success, hard
//! failures to a dead-letter topic. `ARCHITECTURE.md` follows one event
//! through it; the guarantees are docs/guarantees.md.
//!
//! This file holds the main loop and its life cycle: [`Pipeline::build`]
//! connects and checks, [`Pipeline::spawn`] runs it and returns a
//! [`RunningPipeline`] handle, and the loop takes messages, commits finished
//! positions, applies the window, and on shutdown drains and commits. Each
//! concept it uses has its own module:
//!
//! * memory: [`tracker`], one partition's unfinished offsets, its position
//!   and the finished offsets above it (the wire format of those is
//!   [`crate::commit_metadata`]).
//! * read side: [`resume`], what a newly assigned partition skips.
//! * ownership: [`ownership`], the owned partitions, their live tasks, the
//!   revoke drain, what this process remembers of partitions it gave up.
//! * protocol: [`commit`], when a commit goes out, how, and what its answer
//!   means.
//! * [`context`]: librdkafka's callbacks (rebalance, statistics).
//! * [`deliver`]: one event's task, its retry budget, how it ended.
//! * [`watch`]: what is told about each event (its log span, its trace, the
//!   metrics), one method per thing that happens.
//! * [`window`]: when to pause fetching (backpressure).
//! * [`ordering`]: one order's events one after another.
//! * [`gate`]: ban, circuit breaker and halt, in front of every call.
//! * [`fair`]: fair turns between car parks for the call slots and the rate.
//! * [`rate`]: the replica's share of the group's rate quota, and the
//!   adaptive controller that finds the quota.
//! * [`status`]: health and the run summary.
//!
//! Offsets: librdkafka stores and commits nothing by itself; what is
//! committed, and when, is the committer's ([`commit`]), and what that
//! promises is docs/guarantees.md. A task that gives up never marks its
//! offset finished, so the committed position stays at or below it and the
//! map never claims it.

mod build;
pub(crate) mod commit;
mod context;
pub(crate) mod deliver;
pub(crate) mod fair;
pub(crate) mod filing;
pub mod gate;
pub(crate) mod ordering;
pub(crate) mod ownership;
pub mod rate;
pub(crate) mod resume;
pub(crate) mod retry;
mod running;
pub(crate) mod status;
pub(crate) mod tracker;
mod watch;
pub(crate) mod window;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Settings;
use crate::dead_letter::SourceRecord;
use crate::event;
use crate::metrics::Metrics;
use crate::partition::{self, PartitionId};
pub use build::StartError;
use commit::committer::Committer;
use context::PipelineContext;
use deliver::{Deliverer, Job, TaskEnd};
use ordering::OrderChains;
use ownership::{Ownership, Start};
use rate::RateBudget;
pub use running::RunningPipeline;
pub use status::{Health, Summary};
pub use watch::DeliveryObserver;
use watch::Watchers;
use window::Window;

/// How long the final commit is tried again while the coordinator is away.
const SHUTDOWN_COMMIT_PATIENCE: Duration = Duration::from_secs(10);

/// Where a pipeline's messages come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The consumer group, subscribed to `kafka.topics` (`paysync run`).
    Group,
    /// Fixed offset ranges, assigned directly; the run ends when all are done
    /// (`paysync replay`).
    Range(Vec<OffsetRange>),
}

/// Offsets `[start, end)` of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRange {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// The main loop's next commit: a timer set for the earliest time any
/// wake-up asked for.
struct NextCommit {
    timer: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl Default for NextCommit {
    fn default() -> NextCommit {
        NextCommit {
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: false,
        }
    }
}

impl NextCommit {
    /// A commit is wanted at `due`, or earlier if one is set already.
    fn arm(&mut self, due: tokio::time::Instant) {
        if !self.armed || due < self.timer.deadline() {
            self.timer.as_mut().reset(due);
            self.armed = true;
        }
    }

    /// Resolves when the armed commit is due (poll only while armed).
    async fn fired(&mut self) {
        self.timer.as_mut().await;
        self.armed = false;
    }
}

/// A built pipeline, ready to [`Pipeline::spawn`].
pub struct Pipeline {
    consumer: Arc<StreamConsumer<PipelineContext>>,
    /// For a bounded range: each partition's `[start, end)`.
    ranges: HashMap<PartitionId, (i64, i64)>,
    ownership: Arc<Ownership>,
    committer: Arc<Committer>,
    /// Shared with the event tasks (which never hold the consumer).
    deliverer: Arc<Deliverer>,
    /// Shared with the event tasks: each event's watch is made from it.
    watchers: Arc<Watchers>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    budget: Arc<RateBudget>,
    /// Wakes the main loop: a task ended, a commit was asked for, the gate opened.
    wake: Arc<Notify>,
    /// Who this pipeline is among the callers on the app key.
    role: rate::tenancy::Role,
    settings: Settings,
}

impl Pipeline {
    /// Calls `observer` with the Kafka→acceptance latency of every delivery.
    pub fn observe_deliveries(mut self, observer: DeliveryObserver) -> Pipeline {
        Arc::get_mut(&mut self.watchers)
            .expect("the watchers are shared only once the pipeline runs")
            .observe_deliveries(observer);
        self
    }

    /// Sends events whose key the ledger holds as accepted with the same DTO
    /// too (`paysync replay --resend-delivered`); they are still recorded.
    pub fn resend_delivered(mut self) -> Pipeline {
        Arc::get_mut(&mut self.deliverer)
            .expect("the deliverer is shared only once the pipeline runs")
            .resend_delivered = true;
        self
    }

    /// A replay's part of the app key's rate: its weight among the callers,
    /// and the most calls per second it may take.
    pub fn tenant(mut self, weight: u32, ceiling: Option<u32>) -> Pipeline {
        if let rate::tenancy::Role::Tenant { kind, .. } = self.role {
            self.role = rate::tenancy::Role::Tenant {
                kind,
                weight: weight.max(1),
                ceiling: ceiling.map(f64::from),
            };
        }
        self
    }

    /// Whether this pipeline shares the rate through the control topic.
    pub fn shares_the_rate(&self) -> bool {
        self.deliverer.control.is_some()
    }

    /// Starts the tenancy of the rate (with the control topic on); the
    /// token stops it, and the handle ends once its lease is withdrawn.
    fn start_tenancy(&self) -> Option<(CancellationToken, tokio::task::JoinHandle<()>)> {
        let control = self.deliverer.control.clone()?;
        let deliverer = self.deliverer.clone();
        let apply: rate::tenancy::ApplyTuned =
            Box::new(move |tuned: &Settings| deliverer.retune(&tuned.delivery));
        let view = control.view();
        tracing::info!(
            topic = control.topic(),
            caller = control.caller(),
            tuned_version = view.tuning.version,
            tuned = ?view.tuning.values,
            pauses = ?view.pauses.keys().map(|target| target.describe()).collect::<Vec<_>>(),
            "Control topic read: the rate is shared with the other callers on the app key."
        );
        let tenancy = rate::tenancy::Tenancy::new(
            control,
            self.budget.clone(),
            self.metrics.clone(),
            self.role,
            self.settings.clone(),
            apply,
        );
        let stop = CancellationToken::new();
        Some((stop.clone(), tokio::spawn(tenancy.run(stop))))
    }

    /// Runs the pipeline on the runtime until `shutdown` resolves, the handle
    /// is stopped, or (for a range) every message is finished.
    pub fn spawn(self, shutdown: impl Future<Output = ()> + Send + 'static) -> RunningPipeline {
        let shared = running::Shared {
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            gate: self.deliverer.gate.clone(),
            control: self.deliverer.control.clone(),
            producer: self.deliverer.dead_letters.client().clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stopped => {}
            }
        }));
        RunningPipeline::new(shared, stop, task)
    }

    /// The main loop; then drains and commits.
    async fn run(self, shutdown: impl Future<Output = ()>) -> Summary {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut orders = OrderChains::default();
        let wake = self.wake.clone();
        let delivery = &self.settings.delivery;
        let mut window = Window::new(delivery.partition_window, delivery.global_window);
        // The next commit: armed by every wake-up (a task ended, a commit
        // ended, a dead letter asked for one) and by the tick, due when the
        // committer allows ([`Committer::next_due`]).
        let spacing = self.settings.kafka.commit_interval_ms;
        let mut next_commit = NextCommit::default();
        // Partition counts for the rate budget (a replay's ranges need none).
        let mut metadata_tick =
            tokio::time::interval(self.settings.kafka.metadata_refresh_interval_ms);
        metadata_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut counts_read: Option<tokio::task::JoinHandle<()>> = None;
        let tenancy = self.start_tenancy();
        self.refresh_gauges();
        loop {
            let may_poll = self.apply_window(&mut window);
            if !self.ranges.is_empty() && self.range_done() {
                break;
            }
            // Shutdown first, then housekeeping, then new messages: completions
            // are handled before more work is taken on.
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = wake.notified() => {
                    next_commit.arm(if self.committer.take_asked() {
                        tokio::time::Instant::now()
                    } else {
                        self.committer.next_due(spacing).into()
                    });
                }
                _ = next_commit.fired(), if next_commit.armed => self.commit_changed(),
                _ = metadata_tick.tick(), if self.ranges.is_empty() => {
                    // One read at a time: a slow broker does not pile them up.
                    if counts_read.as_ref().is_none_or(|read| read.is_finished()) {
                        let consumer = self.consumer.clone();
                        let ownership = self.ownership.clone();
                        counts_read = Some(tokio::task::spawn_blocking(move || {
                            ownership.refresh_counts(&*consumer);
                        }));
                    }
                }
                _ = tick.tick() => {
                    orders.prune();
                    // Transaction markers move positions without a task's end.
                    self.skip_control_records();
                    // A drained window commits at once: an idle group is up
                    // to date now, not an interval later.
                    next_commit.arm(if self.refresh_gauges() == 0 {
                        tokio::time::Instant::now()
                    } else {
                        self.committer.next_due(spacing).into()
                    });
                }
                message = self.consumer.recv(), if may_poll => match message {
                    Ok(message) => self.dispatch(&message, &mut orders),
                    // A fatal error ends the consumer for good (a static
                    // identity still held by a killed predecessor, fenced
                    // by another member): stop, so a supervisor starts a
                    // new process, rather than stay up consuming nothing.
                    Err(error @ KafkaError::MessageConsumptionFatal(_)) => {
                        tracing::error!(error = %error, "The Kafka consumer failed for good; stopping (exit status 1) so the process can be started again.");
                        self.health.fail(error.to_string());
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "Kafka consumer error.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        let summary = self.shutdown().await;
        if let Some((stop, task)) = tenancy {
            stop.cancel();
            let _ = task.await;
        }
        summary
    }

    fn dispatch(&self, message: &BorrowedMessage<'_>, orders: &mut OrderChains) {
        let id = PartitionId::of(message);
        let offset = message.offset();
        if self.ranges.get(&id).is_some_and(|(_, end)| offset >= *end) {
            // Past a replay range's end: not ours to send.
            return;
        }
        let ticket = match self.ownership.start(id, offset) {
            Start::Deliver(ticket) => ticket,
            // Finished before a crash or a rebalance: its completion is committed.
            Start::AlreadyFinished => return,
            // A message of a partition this consumer no longer owns is the next owner's.
            Start::NotOwned => return,
        };
        let source = SourceRecord::of(ticket.id.clone(), message);
        let event = event::decode(
            source.payload.value.as_deref(),
            &self.settings.event.limits(),
        );
        let watch = self
            .watchers
            .watch(message, &ticket.id, event.as_ref().ok());
        let order_id = event.as_ref().ok().map(|e| e.order_id.as_str());
        let (predecessor, turn) = orders.link(&ticket.id, order_id);
        let (deliverer, ownership, committer) = (
            self.deliverer.clone(),
            self.ownership.clone(),
            self.committer.clone(),
        );
        let span = watch.span();
        let task = async move {
            let job = Job {
                source,
                event,
                prior: ticket.prior.clone(),
                watch,
            };
            let end = deliverer.run(job, predecessor, ticket.cancel.clone()).await;
            ownership.task_ended(&ticket, end);
            if end == TaskEnd::DeadLettered {
                committer.ask();
            }
            drop(turn);
        };
        tokio::spawn(task.instrument(span));
    }

    /// Whether every partition of a bounded range is finished up to its end
    /// (offsets, so gaps from compaction count as finished).
    fn range_done(&self) -> bool {
        self.ranges
            .iter()
            .all(|(id, (start, end))| self.ownership.position(id).unwrap_or(*start) >= *end)
    }

    /// Periodic gauges and the liveness mark (every tick of the main loop);
    /// returns how many messages are in flight.
    fn refresh_gauges(&self) -> usize {
        self.health.progressed();
        self.budget.tick();
        self.deliverer.gate.status().publish(&self.metrics);
        self.watchers.publish();
        if let Some(ledger) = &self.deliverer.ledger {
            ledger.publish();
        }
        self.deliverer.waits.publish(&self.metrics);
        if let Some(control) = &self.deliverer.control {
            self.health.publish_control(&control.view(), &self.metrics);
        }
        let in_flight = self.ownership.publish_progress();
        self.health.publish_dead_letter_stall(&self.metrics);
        in_flight
    }

    /// Moves each partition's position past offsets librdkafka consumed that
    /// are not messages (transaction markers): see
    /// [`tracker::OffsetTracker::skip_to`].
    fn skip_control_records(&self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        self.ownership
            .skip_to(positions.elements().iter().filter_map(|element| {
                let Offset::Offset(position) = element.offset() else {
                    return None;
                };
                let id = PartitionId::from(element);
                // A replay range ends at its end, whatever librdkafka read past it.
                let position = match self.ranges.get(&id) {
                    Some((_, end)) => position.min(*end),
                    None => position,
                };
                Some((id, position))
            }));
    }

    /// Commits the partitions whose commit point changed ([`Committer`]).
    fn commit_changed(&self) {
        self.committer
            .commit_changed(&self.consumer, &self.ownership);
    }

    /// Pauses or resumes partitions as the [`Window`] decides from their
    /// loads, and says whether the main loop may take another message.
    fn apply_window(&self, window: &mut Window) -> bool {
        let gate_closed = self.deliverer.gate.status().closed();
        let now = std::time::Instant::now();
        let turn = self
            .ownership
            .with_loads(|loads| window.turn(loads, gate_closed, now));
        self.metrics
            .publish_window(turn.in_flight, &turn.pause, &turn.resume);
        if !turn.pause.is_empty()
            && let Err(error) = self.consumer.pause(&partition::list_of(&turn.pause))
        {
            tracing::warn!(error = %error, "Pausing partitions failed.");
        }
        if !turn.resume.is_empty()
            && let Err(error) = self.consumer.resume(&partition::list_of(&turn.resume))
        {
            tracing::warn!(error = %error, "Resuming partitions failed.");
        }
        turn.may_poll
    }

    /// Stops taking work; waiting tasks give up and work under way finishes,
    /// up to `delivery.shutdown_drain_timeout_ms`; commits synchronously and
    /// flushes the dead-letter producer (both on a blocking thread).
    async fn shutdown(self) -> Summary {
        let drain = self.settings.delivery.shutdown_drain_timeout_ms;
        tracing::info!(
            drain_s = drain.as_secs_f64(),
            "Shutting down: finishing calls under way."
        );
        self.ownership.cancel_all();
        let deadline = tokio::time::Instant::now() + drain;
        // Every task's end wakes this loop (a wake-up sent before the wait is
        // kept), so it needs no poll.
        loop {
            let live = self.ownership.live_tasks();
            if live == 0 {
                break;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        live_tasks = live,
                        "Shutdown drain deadline reached; unfinished events will be sent again after restart."
                    );
                    break;
                }
            }
        }
        let Pipeline {
            consumer,
            ownership,
            committer,
            deliverer,
            watchers,
            metrics,
            ..
        } = self;
        let committed = {
            let consumer = consumer.clone();
            tokio::task::spawn_blocking(move || {
                committer.wait_idle(SHUTDOWN_COMMIT_PATIENCE);
                let points = ownership.points(false);
                committer.commit_sync(
                    &*consumer,
                    &points,
                    "final positions",
                    SHUTDOWN_COMMIT_PATIENCE,
                );
                ownership.release_all();
                if let Err(error) = deliverer.dead_letters.flush(Duration::from_secs(10)) {
                    tracing::warn!(error = %error, "Flushing the dead-letter producer failed.");
                }
                if let Some(ledger) = &deliverer.ledger {
                    ledger.close(Duration::from_secs(10));
                }
                // The spans still queued go out (bounded by tracing.export_timeout_ms).
                watchers.shutdown();
            })
            .await
        };
        if let Err(error) = committed {
            tracing::warn!(error = %error, "The final commit did not complete.");
        }
        // Closed here, on this task: closing inside the blocking closure stalled
        // in librdkafka's destroy. The consumer leaves its group now, even if
        // a task still lingers.
        drop(consumer);
        let summary = Summary::of(&metrics);
        tracing::info!(?summary, "Stopped.");
        summary
    }
}
