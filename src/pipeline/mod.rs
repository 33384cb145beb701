//! The delivery pipeline: a Kafka consumer group → decoded events →
//! rate-limited, signed calls → offsets committed only after success, hard
//! failures to a dead-letter topic. `ARCHITECTURE.md` follows one event
//! through it; the guarantees are listed in the README.
//!
//! This file holds the main loop and its life cycle: [`Pipeline::build`]
//! connects and checks, [`Pipeline::spawn`] runs it and returns a
//! [`RunningPipeline`] handle, and the loop takes messages, commits finished
//! positions, applies the window, and on shutdown drains and commits. Each
//! concept it uses has its own module:
//!
//! * [`partitions`]: ownership, the rebalance drain, commit points.
//! * [`context`]: librdkafka's callbacks (rebalance, commit, statistics).
//! * [`deliver`]: one event's task, its retry budget.
//! * [`window`]: when to pause fetching (backpressure).
//! * [`ordering`]: one order's events one after another.
//! * [`gate`]: ban, circuit breaker and halt, in front of every call.
//! * [`rate`]: the replica's share of the group's rate quota, and the
//!   adaptive controller that finds the quota.
//! * [`offsets`]: the lowest unfinished offset per partition.
//! * [`completion`]: the finished offsets above it, as commit metadata.
//! * [`commits`]: what a commit carries and what its answer means.
//! * [`status`]: health and the run summary.
//!
//! Offsets: librdkafka stores and commits nothing by itself. Every
//! `kafka.commit_interval_ms`, as soon as the window drains, and right after
//! a dead-letter copy is acknowledged, the loop commits each changed partition's lowest unfinished offset with its
//! completion map (which offsets above it are finished) in the metadata;
//! on revoke and at shutdown the same is committed synchronously, tried
//! again while the coordinator is briefly away. A task that gives up never
//! marks its offset finished, so the committed position stays at or below
//! it and the map never claims it.

mod build;
mod commits;
pub mod completion;
mod context;
pub mod deliver;
pub mod gate;
pub mod offsets;
pub mod ordering;
pub mod partitions;
pub mod rate;
mod running;
pub mod status;
pub mod window;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::config::Settings;
use crate::dead_letter::SourceRecord;
use crate::event;
use crate::kafka::{self, PartitionId};
pub use build::StartError;
use context::PipelineContext;
use deliver::{Deliverer, DeliveryObserver, Job};
use ordering::OrderChains;
use partitions::{Partitions, Start};
pub use running::RunningPipeline;
pub use status::{Health, Summary};
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

/// A built pipeline, ready to [`Pipeline::spawn`].
pub struct Pipeline {
    consumer: Arc<StreamConsumer<PipelineContext>>,
    /// For a bounded range: each partition's `[start, end)`.
    ranges: HashMap<PartitionId, (i64, i64)>,
    partitions: Arc<Partitions>,
    /// Shared with the event tasks (which never hold the consumer).
    deliverer: Arc<Deliverer>,
    settings: Settings,
}

impl Pipeline {
    /// Calls `observer` with the Kafka→acceptance latency of every delivery.
    pub fn observe_deliveries(mut self, observer: DeliveryObserver) -> Pipeline {
        Arc::get_mut(&mut self.deliverer)
            .expect("the deliverer is shared only once the pipeline runs")
            .observer = Some(observer);
        self
    }

    /// Runs the pipeline on the runtime until `shutdown` resolves, the handle
    /// is stopped, or (for a range) every message is finished.
    pub fn spawn(self, shutdown: impl Future<Output = ()> + Send + 'static) -> RunningPipeline {
        let metrics = self.partitions.metrics.clone();
        let health = self.partitions.health.clone();
        let gate = self.deliverer.gate.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stopped => {}
            }
        }));
        RunningPipeline::new(metrics, health, gate, stop, task)
    }

    /// The main loop; then drains and commits.
    async fn run(self, shutdown: impl Future<Output = ()>) -> Summary {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut orders = OrderChains::default();
        let wake = self.partitions.wake.clone();
        let delivery = &self.settings.delivery;
        let mut window = Window::new(delivery.partition_window, delivery.global_window);
        // Commits every interval, and at the next tick after the window
        // drains (so an idle group is up to date at once).
        let mut commit_tick = tokio::time::interval(self.settings.kafka.commit_interval_ms);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Partition counts for the rate budget (a replay's ranges need none).
        let mut metadata_tick =
            tokio::time::interval(self.settings.kafka.metadata_refresh_interval_ms);
        metadata_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut counts_read: Option<tokio::task::JoinHandle<()>> = None;
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
                    if self.partitions.take_commit_now() {
                        self.commit_changed();
                    }
                }
                _ = commit_tick.tick() => self.commit_changed(),
                _ = metadata_tick.tick(), if self.ranges.is_empty() => {
                    // One read at a time: a slow broker does not pile them up.
                    if counts_read.as_ref().is_none_or(|read| read.is_finished()) {
                        let consumer = self.consumer.clone();
                        let partitions = self.partitions.clone();
                        counts_read = Some(tokio::task::spawn_blocking(move || {
                            partitions.refresh_counts(&*consumer);
                        }));
                    }
                }
                _ = tick.tick() => {
                    orders.prune();
                    self.skip_control_records();
                    if self.refresh_gauges() == 0 {
                        self.commit_changed();
                    }
                }
                message = self.consumer.recv(), if may_poll => match message {
                    Ok(message) => self.dispatch(&message, &mut orders),
                    Err(error) => {
                        tracing::warn!(error = %error, "Kafka consumer error.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        self.shutdown().await
    }

    fn dispatch(&self, message: &BorrowedMessage<'_>, orders: &mut OrderChains) {
        let id = PartitionId::of(message);
        let offset = message.offset();
        if self.ranges.get(&id).is_some_and(|(_, end)| offset >= *end) {
            // Past a replay range's end: not ours to send.
            return;
        }
        let ticket = match self.partitions.start(id, offset) {
            Start::Deliver(ticket) => ticket,
            // Finished before a crash or a rebalance: its completion is committed.
            Start::AlreadyFinished => return,
            // A message of a partition this consumer no longer owns is the next owner's.
            Start::NotOwned => return,
        };
        self.partitions.metrics.events_consumed.inc();
        let received = Instant::now();
        let source = SourceRecord::of(message);
        let event = event::decode(
            source.payload.value.as_deref(),
            &self.settings.event.limits(),
        );
        let order_id = event.as_ref().ok().map(|e| e.order_id.as_str());
        let span = tracing::info_span!(
            "event",
            topic = %ticket.id.topic,
            partition = ticket.id.partition,
            offset,
            order_id = order_id.unwrap_or("-"),
            request_id = tracing::field::Empty,
        );
        let (predecessor, turn) = orders.link(&ticket.id, order_id);
        let deliverer = self.deliverer.clone();
        let partitions = self.partitions.clone();
        tokio::spawn(
            async move {
                let job = Job {
                    received,
                    source,
                    event,
                    prior: ticket.prior.clone(),
                };
                let end = deliverer.run(job, predecessor, ticket.cancel.clone()).await;
                partitions.task_ended(&ticket, end);
                drop(turn);
            }
            .instrument(span),
        );
    }

    /// Whether every partition of a bounded range is finished up to its end
    /// (offsets, so gaps from compaction count as finished).
    fn range_done(&self) -> bool {
        let partitions = self.partitions.lock();
        self.ranges.iter().all(|(id, (start, end))| {
            let position = partitions
                .get(id)
                .and_then(|s| s.tracker.position())
                .unwrap_or(*start);
            position >= *end
        })
    }

    /// Periodic gauges and the liveness mark (every tick of the main loop);
    /// returns how many messages are in flight.
    fn refresh_gauges(&self) -> usize {
        let metrics = &self.partitions.metrics;
        self.partitions.health.progressed();
        self.partitions.budget.tick();
        self.deliverer.gate.status().publish(metrics);
        let mut oldest: Option<Instant> = None;
        let mut in_flight = 0;
        for (id, state) in self.partitions.lock().iter_mut() {
            in_flight += state.tracker.in_flight();
            oldest = oldest.into_iter().chain(state.tracker.oldest_start()).min();
            if let Some(position) = state.tracker.take_advance() {
                metrics
                    .partition_completed_offset
                    .with_label_values(&[id.topic.as_str(), &id.partition.to_string()])
                    .set(position);
            }
        }
        metrics
            .oldest_in_flight_age
            .set(oldest.map_or(0.0, |t| t.elapsed().as_secs_f64()));
        self.partitions.health.publish_dead_letter_stall(metrics);
        in_flight
    }

    /// Moves each partition's position past offsets librdkafka consumed that
    /// are not messages (transaction markers): see
    /// [`offsets::OffsetTracker::skip_to`].
    fn skip_control_records(&self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let mut partitions = self.partitions.lock();
        for element in positions.elements() {
            let Offset::Offset(position) = element.offset() else {
                continue;
            };
            let id = PartitionId::from(&element);
            // A replay range ends at its end, whatever librdkafka read past it.
            let position = match self.ranges.get(&id) {
                Some((_, end)) => position.min(*end),
                None => position,
            };
            if let Some(state) = partitions.get_mut(&id) {
                state.tracker.skip_to(position);
            }
        }
    }

    /// Commits the partitions whose commit point changed, on a blocking
    /// thread (a synchronous commit is the only kind whose result librdkafka
    /// reports back for manual commits), one commit at a time; a failure
    /// commits them again next time.
    fn commit_changed(&self) {
        let partitions = &self.partitions;
        if partitions.committing.swap(true, Ordering::AcqRel) {
            // Committed when the one on its way ends.
            partitions.ask_commit();
            return;
        }
        let list = partitions.commit_list(true);
        if list.count() == 0 {
            // Nothing changed since the last commit: the group is up to date,
            // which is what "time since the last commit" watches.
            partitions.commit_ended(&list, &Ok(()));
            return;
        }
        let (consumer, partitions) = (self.consumer.clone(), partitions.clone());
        tokio::task::spawn_blocking(move || {
            let result = consumer.commit(&list, CommitMode::Sync);
            // Released first: the consumer is closed on the pipeline's task
            // at shutdown, which waits for this commit to end.
            drop(consumer);
            partitions.commit_ended(&list, &result);
        });
    }

    /// Pauses or resumes partitions as the [`Window`] decides, and says
    /// whether the main loop may take another message.
    fn apply_window(&self, window: &mut Window) -> bool {
        let gate_closed = self.deliverer.gate.status().closed();
        let metrics = &self.partitions.metrics;
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        let (total, may_poll) = {
            let mut partitions = self.partitions.lock();
            let total: usize = partitions.values().map(|s| s.tracker.in_flight()).sum();
            let may_poll = window.update(total, gate_closed, Instant::now());
            for (id, state) in partitions.iter_mut() {
                let want_paused =
                    window.wants_paused(state.tracker.in_flight(), state.paused, gate_closed);
                if want_paused != state.paused {
                    state.paused = want_paused;
                    let list = if want_paused { &mut pause } else { &mut resume };
                    list.add_partition(&id.topic, id.partition);
                    // Label values only when a series changes: this runs every turn.
                    metrics
                        .partition_paused
                        .with_label_values(&[id.topic.as_str(), &id.partition.to_string()])
                        .set(i64::from(want_paused));
                }
            }
            (total, may_poll)
        };
        metrics.window_messages.set(total as i64);
        if pause.count() > 0
            && let Err(error) = self.consumer.pause(&pause)
        {
            tracing::warn!(error = %error, "Pausing partitions failed.");
        }
        if resume.count() > 0
            && let Err(error) = self.consumer.resume(&resume)
        {
            tracing::warn!(error = %error, "Resuming partitions failed.");
        }
        may_poll
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
        self.partitions.cancel_all();
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            let live = self.partitions.live_tasks();
            if live == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    live_tasks = live,
                    "Shutdown drain deadline reached; unfinished events will be sent again after restart."
                );
                break;
            }
            tokio::select! {
                _ = self.partitions.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let Pipeline {
            consumer,
            partitions,
            deliverer,
            ..
        } = self;
        let metrics = partitions.metrics.clone();
        let committed = {
            let (consumer, metrics) = (consumer.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || {
                partitions.wait_for_commit(SHUTDOWN_COMMIT_PATIENCE);
                let points = partitions.commit_list(false);
                kafka::commit_sync(
                    &*consumer,
                    &points,
                    &metrics,
                    "final positions",
                    SHUTDOWN_COMMIT_PATIENCE,
                );
                if let Err(error) = deliverer.dead_letters.flush(Duration::from_secs(10)) {
                    tracing::warn!(error = %error, "Flushing the dead-letter producer failed.");
                }
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
