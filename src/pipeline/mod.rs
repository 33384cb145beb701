//! The delivery pipeline: a Kafka consumer group → decoded events →
//! rate-limited, signed calls → offsets committed only after success, hard
//! failures to a dead-letter topic. `ARCHITECTURE.md` follows one event
//! through it; the guarantees are listed in the README.
//!
//! This file holds the main loop and its life cycle: [`Pipeline::build`]
//! connects and checks, [`Pipeline::spawn`] runs it and returns a
//! [`RunningPipeline`] handle, and the loop takes messages, stores finished
//! positions, applies the window, and on shutdown drains and commits. Each
//! concept it uses has its own module:
//!
//! * [`partitions`]: ownership, the rebalance drain, librdkafka's callbacks.
//! * [`deliver`]: one event's task, its retry budget.
//! * [`window`]: when to pause fetching (backpressure).
//! * [`ordering`]: one order's events one after another.
//! * [`gate`]: ban, circuit breaker and halt, in front of every call.
//! * [`rate`]: the replica's share of the group's rate quota.
//! * [`offsets`]: the lowest unfinished offset per partition.
//! * [`status`]: health and the run summary.
//!
//! Offsets: `enable.auto.offset.store` is off; each turn the loop stores the
//! lowest unfinished offset of each partition, and librdkafka commits stored
//! offsets every `kafka.commit_interval_ms`. On revoke and at shutdown the
//! positions are committed synchronously. A task that gives up never marks
//! its offset finished, so the committed position stays at or below it.

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
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument;

use crate::config::{ConfigError, Settings, TopClientError};
use crate::dead_letter::{DeadLetterProducer, SourceRecord};
use crate::event;
use crate::kafka::{self, PartitionId};
use crate::metrics::Metrics;
use deliver::{Deliverer, DeliveryObserver, Job};
use gate::{Gate, GateSettings};
use offsets::OffsetTracker;
use ordering::OrderChains;
use partitions::{Partitions, PipelineContext};
use rate::{RateBudget, RateLimitScope};
pub use running::RunningPipeline;
pub use status::{Health, Summary};
use window::Window;

/// How long start-up waits for the dead-letter topic to appear in metadata.
const DLQ_TOPIC_WAIT: Duration = Duration::from_secs(10);

/// Why a pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    TopClient(#[from] TopClientError),
    #[error("cannot create the Kafka consumer: {0}")]
    CreateConsumer(#[source] KafkaError),
    #[error("cannot read Kafka metadata (is kafka.bootstrap_servers right?): {0}")]
    Metadata(#[source] KafkaError),
    #[error("the dead-letter topic {topic:?} does not exist: create it before starting paysync")]
    MissingDeadLetterTopic { topic: String },
    #[error("cannot subscribe to the source topics: {0}")]
    Subscribe(#[source] KafkaError),
    #[error("cannot assign the replay range: {0}")]
    Assign(#[source] KafkaError),
    #[error("cannot create the dead-letter producer: {0}")]
    CreateProducer(#[source] KafkaError),
    #[error("start-up did not complete: {0}")]
    Interrupted(#[from] tokio::task::JoinError),
}

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
    consumer: StreamConsumer<PipelineContext>,
    /// For a bounded range: each partition's `[start, end)`.
    ranges: HashMap<PartitionId, (i64, i64)>,
    partitions: Arc<Partitions>,
    /// Shared with the event tasks (which never hold the consumer).
    deliverer: Arc<Deliverer>,
    settings: Settings,
}

impl Pipeline {
    /// Connects to Kafka, checks the dead-letter topic exists, subscribes (or
    /// assigns a range). The blocking librdkafka work runs on a blocking thread.
    pub async fn build(settings: Settings, source: Source) -> Result<Pipeline, StartError> {
        tokio::task::spawn_blocking(move || Self::build_blocking(settings, source)).await?
    }

    fn build_blocking(settings: Settings, source: Source) -> Result<Pipeline, StartError> {
        let kafka = &settings.kafka;
        let delivery = &settings.delivery;
        // Checked before anything connects.
        let rate = NonZeroU32::new(delivery.rate_limit_per_sec)
            .ok_or_else(|| ConfigError::one("delivery.rate_limit_per_sec", "must be above 0"))?;
        let burst = NonZeroU32::new(delivery.burst())
            .ok_or_else(|| ConfigError::one("delivery.rate_limit_burst", "must be above 0"))?;
        let client = settings.top_client()?;
        let metrics = Arc::new(Metrics::new());
        // A replay is its own client with its own rate, not a share of the group's.
        let scope = match source {
            Source::Group => delivery.rate_limit_scope,
            Source::Range(_) => RateLimitScope::Replica,
        };
        let budget = Arc::new(RateBudget::new(
            rate.get(),
            burst.get(),
            scope,
            0,
            metrics.clone(),
        ));
        let partitions = Arc::new(Partitions::new(
            kafka.revoke_drain_timeout_ms,
            metrics.clone(),
            budget.clone(),
            kafka.topics.clone(),
        ));
        let consumer: StreamConsumer<PipelineContext> = kafka::group_consumer(&settings)
            .create_with_context(PipelineContext {
                partitions: partitions.clone(),
            })
            .map_err(StartError::CreateConsumer)?;
        if kafka::wait_for_topic(&consumer, &kafka.dlq_topic, DLQ_TOPIC_WAIT)
            .map_err(StartError::Metadata)?
            .is_none()
        {
            return Err(StartError::MissingDeadLetterTopic {
                topic: kafka.dlq_topic.clone(),
            });
        }
        let mut ranges_by_partition = HashMap::new();
        match &source {
            Source::Group => {
                let mut total = 0;
                for topic in &kafka.topics {
                    total += kafka::topic_partitions(&consumer, topic)
                        .map_err(StartError::Metadata)?
                        .map_or(0, |partitions| partitions.len());
                }
                budget.set_total(total);
                let topics: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
                consumer.subscribe(&topics).map_err(StartError::Subscribe)?;
            }
            Source::Range(ranges) => {
                // No group membership: the ranges are assigned directly, and
                // the group only keeps the committed progress (for resuming).
                let mut tpl = TopicPartitionList::new();
                for range in ranges {
                    let id = PartitionId::new(&range.topic, range.partition);
                    tpl.add_partition_offset(&id.topic, id.partition, Offset::Offset(range.start))
                        .map_err(StartError::Assign)?;
                    ranges_by_partition.insert(id, (range.start, range.end));
                }
                partitions.own(ranges.iter().map(|range| {
                    (
                        PartitionId::new(&range.topic, range.partition),
                        OffsetTracker::starting_at(range.start),
                    )
                }));
                consumer.assign(&tpl).map_err(StartError::Assign)?;
            }
        }
        let dead_letters = DeadLetterProducer::new(&settings, metrics.clone())
            .map_err(StartError::CreateProducer)?;
        let gate = Arc::new(Gate::new(
            GateSettings {
                failure_threshold: delivery.breaker_failure_threshold,
                probe_interval: delivery.breaker_probe_interval_ms,
                halt_probe_interval: delivery.halt_probe_interval_ms,
            },
            partitions.wake.clone(),
        ));
        let deliverer = Arc::new(Deliverer {
            client,
            classifier: settings.classifier(),
            gate,
            budget,
            calls: Semaphore::new(delivery.max_in_flight),
            dead_letters,
            delivery: delivery.clone(),
            metrics,
            observer: None,
        });
        Ok(Pipeline {
            consumer,
            ranges: ranges_by_partition,
            partitions,
            deliverer,
            settings,
        })
    }

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
        self.refresh_gauges();
        loop {
            let may_poll = self.store_and_pause(&mut window);
            if !self.ranges.is_empty() && self.range_done() {
                break;
            }
            // Shutdown first, then housekeeping, then new messages: completions
            // are handled before more work is taken on.
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = wake.notified() => {}
                _ = tick.tick() => {
                    orders.prune();
                    self.refresh_gauges();
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
        // A message of a partition this consumer no longer owns is the next owner's.
        let Some(ticket) = self.partitions.start(id, offset) else {
            return;
        };
        self.partitions.metrics.events_consumed.inc();
        let received = Instant::now();
        let source = SourceRecord::of(message);
        let event = event::decode(
            source.payload.value.as_deref(),
            self.settings.event.max_bytes,
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

    /// Periodic gauges and the liveness mark (every tick of the main loop).
    fn refresh_gauges(&self) {
        let metrics = &self.partitions.metrics;
        self.partitions.health.progressed();
        self.deliverer.gate.status().publish(metrics);
        let oldest = self
            .partitions
            .lock()
            .values()
            .filter_map(|s| s.tracker.oldest_start())
            .min();
        metrics
            .oldest_in_flight_age
            .set(oldest.map_or(0.0, |t| t.elapsed().as_secs_f64()));
    }

    /// Stores advanced positions, pauses or resumes partitions as the
    /// [`Window`] decides, and says whether the main loop may take another message.
    fn store_and_pause(&self, window: &mut Window) -> bool {
        let gate_closed = self.deliverer.gate.status().closed();
        let metrics = &self.partitions.metrics;
        let mut store = TopicPartitionList::new();
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        let (total, may_poll) = {
            let mut partitions = self.partitions.lock();
            let total: usize = partitions.values().map(|s| s.tracker.in_flight()).sum();
            let may_poll = window.update(total, gate_closed, Instant::now());
            for (id, state) in partitions.iter_mut() {
                // Label values only when a series changes: this runs every turn.
                let labels = || [id.topic.clone(), id.partition.to_string()];
                if let Some(position) = state.tracker.take_advance() {
                    let _ = store.add_partition_offset(
                        &id.topic,
                        id.partition,
                        Offset::Offset(position),
                    );
                    metrics
                        .partition_completed_offset
                        .with_label_values(&labels())
                        .set(position);
                }
                let want_paused =
                    window.wants_paused(state.tracker.in_flight(), state.paused, gate_closed);
                if want_paused != state.paused {
                    state.paused = want_paused;
                    let list = if want_paused { &mut pause } else { &mut resume };
                    list.add_partition(&id.topic, id.partition);
                    metrics
                        .partition_paused
                        .with_label_values(&labels())
                        .set(i64::from(want_paused));
                }
            }
            (total, may_poll)
        };
        metrics.window_messages.set(total as i64);
        if store.count() > 0
            && let Err(error) = self.consumer.store_offsets(&store)
        {
            tracing::debug!(error = %error, "Storing offsets failed (partition probably revoked).");
        }
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
        let consumer = Arc::new(consumer);
        let committed = {
            let (consumer, metrics) = (consumer.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || {
                let positions = partitions.positions();
                kafka::commit_sync(&*consumer, &positions, &metrics, "final positions");
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
