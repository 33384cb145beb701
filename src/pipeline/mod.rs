//! The delivery pipeline: a Kafka consumer group → decoded events →
//! rate-limited, signed calls → offsets committed only after success, hard
//! failures to a dead-letter topic.
//!
//! # The contract
//!
//! * **At-least-once.** A message's offset may be committed only after the
//!   API accepted it or the dead-letter topic acknowledged its copy.
//!   `enable.auto.offset.store` is off; for each partition the main loop
//!   stores the lowest offset still unfinished ([`offsets::OffsetTracker`])
//!   and librdkafka commits stored offsets every `kafka.commit_interval_ms`.
//! * **Bounded memory.** A partition with `delivery.partition_window`
//!   unfinished messages is paused, and all are paused when the total reaches
//!   `delivery.global_window`; the consumer keeps polling, so the group never
//!   sees it as dead.
//! * **Order per order.** Events with the same `order_id` in a partition are
//!   sent one after another, in offset order; different orders run
//!   concurrently (up to `delivery.max_in_flight` calls).
//! * **Outage is not poison.** See [`gate`]: bans, the circuit breaker and
//!   halts make calls wait without spending retry attempts, and pause every
//!   partition; only bad data is dead-lettered.
//! * **Rebalance.** On revoke (inside librdkafka's callback) the revoked
//!   partitions stop starting new work; tasks that are waiting give up, calls
//!   and dead-letter writes under way finish, up to
//!   `kafka.revoke_drain_timeout_ms`; then their positions are committed
//!   synchronously and their state is dropped. Late completions for a
//!   partition no longer owned are ignored.
//! * **Shutdown.** Stop fetching; waiting tasks give up and work under way
//!   finishes, up to `delivery.shutdown_drain_timeout_ms`; commit
//!   synchronously; flush the dead-letter producer.
//!
//! A task that gives up never marks its offset finished, so the committed
//! position stays at or below it and the next owner (or the next run) sends it.

pub mod dead_letter;
pub mod gate;
pub mod offsets;

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use governor::clock::DefaultClock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Settings;
use crate::event::{self, InvalidEvent, PaymentEvent};
use crate::metrics::Metrics;
use crate::top::classify::{Classifier, Disposition};
use crate::top::client::TopClient;
use crate::top::request::dto_json;
use dead_letter::{DeadLetterClass, DeadLetterProducer, Failure, SourceRecord};
use gate::{Gate, GateSettings, GateStatus, Pass};
use offsets::{OffsetTracker, PartitionId};

/// What the health endpoints need to know, updated by the pipeline.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix milliseconds of the main loop's last turn (liveness).
    last_progress_ms: AtomicU64,
    /// Set once the consumer has been through its first assignment.
    joined: AtomicBool,
    assigned: AtomicUsize,
}

impl Health {
    fn progressed(&self) {
        let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        self.last_progress_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the main loop last turned (None before it started).
    pub fn since_progress(&self) -> Option<Duration> {
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        (last > 0).then(|| {
            let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
            Duration::from_millis(now.saturating_sub(last))
        })
    }

    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    pub fn assigned_partitions(&self) -> usize {
        self.assigned.load(Ordering::Relaxed)
    }
}

/// What the pipeline did so far, read from its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub consumed: u64,
    pub delivered: u64,
    pub dead_lettered_invalid_event: u64,
    pub dead_lettered_rejected: u64,
    pub dead_lettered_retries_exhausted: u64,
    pub calls: u64,
    pub failed_calls: u64,
    pub abandoned: u64,
    pub rebalances: u64,
}

impl Summary {
    pub fn of(metrics: &Metrics) -> Summary {
        let dead = |class: DeadLetterClass| {
            Metrics::sum_where(&metrics.events_dead_lettered, "class", class.as_str())
        };
        let calls_by = |disposition: &str| {
            Metrics::sum_where(&metrics.call_outcomes, "disposition", disposition)
        };
        let failed_calls = calls_by("retry") + calls_by("halt");
        Summary {
            consumed: metrics.events_consumed.get(),
            delivered: metrics.events_delivered.get(),
            dead_lettered_invalid_event: dead(DeadLetterClass::InvalidEvent),
            dead_lettered_rejected: dead(DeadLetterClass::Rejected),
            dead_lettered_retries_exhausted: dead(DeadLetterClass::RetriesExhausted),
            calls: calls_by("delivered") + calls_by("dead_letter") + failed_calls,
            failed_calls,
            abandoned: metrics.tasks_abandoned.get(),
            rebalances: Metrics::sum_where(&metrics.rebalances, "kind", "assign")
                + Metrics::sum_where(&metrics.rebalances, "kind", "revoke"),
        }
    }

    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered_invalid_event
            + self.dead_lettered_rejected
            + self.dead_lettered_retries_exhausted
    }
}

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
    paused: bool,
}

/// State shared by the main loop, the rebalance callbacks and the tasks.
struct Shared {
    partitions: Mutex<HashMap<PartitionId, PartitionState>>,
    /// Signalled whenever a task ends (the revoke drain waits on it).
    progress: Condvar,
    /// Wakes the main loop.
    wake: Arc<Notify>,
    next_generation: AtomicU64,
    revoke_drain: Duration,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<PartitionId, PartitionState>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        self.own(tpl.elements().iter().map(|element| {
            let id = PartitionId {
                topic: element.topic().to_owned(),
                partition: element.partition(),
            };
            tracing::info!(partition = %id, "Partition assigned.");
            (id, OffsetTracker::default())
        }));
    }

    /// Owns the partitions of a bounded range, starting at their start offsets.
    fn assign_from(&self, ranges: &[OffsetRange]) {
        self.own(ranges.iter().map(|range| {
            let id = PartitionId {
                topic: range.topic.clone(),
                partition: range.partition,
            };
            (id, OffsetTracker::starting_at(range.start))
        }));
    }

    /// Takes ownership of partitions (a partition already owned keeps its state).
    fn own(&self, owned: impl IntoIterator<Item = (PartitionId, OffsetTracker)>) {
        self.health.joined.store(true, Ordering::Relaxed);
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
        self.health.assigned.store(count, Ordering::Relaxed);
        self.metrics.assigned_partitions.set(count as i64);
    }

    /// Drains the revoked partitions, commits their positions, drops them.
    fn revoke(&self, consumer: &BaseConsumer<PipelineContext>, tpl: &TopicPartitionList) {
        let revoked: Vec<PartitionId> = tpl
            .elements()
            .iter()
            .map(|e| PartitionId {
                topic: e.topic().to_owned(),
                partition: e.partition(),
            })
            .collect();
        let drain = || {
            let mut partitions = self.lock();
            for id in &revoked {
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
            let mut commit = TopicPartitionList::new();
            for id in &revoked {
                self.metrics.forget_partition(&id.topic, id.partition);
                if let Some(state) = partitions.remove(id)
                    && let Some(position) = state.tracker.position()
                {
                    let _ = commit.add_partition_offset(
                        &id.topic,
                        id.partition,
                        Offset::Offset(position),
                    );
                }
            }
            self.publish_assigned(partitions.len());
            commit
        };
        // The drain blocks this thread (librdkafka's callback is synchronous);
        // on a multi-thread runtime, let the other tasks of this worker move on.
        let commit = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(drain)
            }
            _ => drain(),
        };
        commit_positions(consumer, &commit, &self.metrics, "revoked partitions");
        self.wake.notify_one();
    }

    /// A task ended; `finished` means its event reached a final outcome.
    fn task_ended(&self, id: &PartitionId, generation: u64, offset: i64, finished: bool) {
        let mut partitions = self.lock();
        if let Some(state) = partitions
            .get_mut(id)
            .filter(|s| s.generation == generation)
        {
            state.live_tasks -= 1;
            if finished {
                state.tracker.finish(offset);
            }
        }
        drop(partitions);
        if !finished {
            self.metrics.tasks_abandoned.inc();
        }
        self.progress.notify_all();
        self.wake.notify_one();
    }
}

/// The consumer's context: rebalance and commit callbacks.
pub struct PipelineContext {
    shared: Arc<Shared>,
}

impl ClientContext for PipelineContext {
    /// librdkafka's statistics (every `kafka.statistics_interval_ms`): the
    /// committed offset and lag of each owned partition, paused ones included.
    fn stats(&self, statistics: Statistics) {
        let partitions = self.shared.lock();
        for (topic_name, topic) in &statistics.topics {
            for (partition, stats) in &topic.partitions {
                let id = PartitionId {
                    topic: topic_name.clone(),
                    partition: *partition,
                };
                if *partition < 0 || !partitions.contains_key(&id) {
                    continue;
                }
                let labels = [topic_name.as_str(), &partition.to_string()];
                let metrics = &self.shared.metrics;
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
            Rebalance::Assign(_) => "assign",
            Rebalance::Revoke(_) => "revoke",
            Rebalance::Error(_) => "error",
        };
        self.shared
            .metrics
            .rebalances
            .with_label_values(&[kind])
            .inc();
        match rebalance {
            Rebalance::Revoke(tpl) => self.shared.revoke(consumer, tpl),
            Rebalance::Error(error) => tracing::warn!(error = %error, "Rebalance error."),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.shared.assign(tpl);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        let metrics = &self.shared.metrics;
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

/// Stores and synchronously commits finished positions (on revoke and at
/// shutdown, where waiting for the background commit is not enough).
fn commit_positions<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    positions: &TopicPartitionList,
    metrics: &Metrics,
    what: &str,
) {
    if positions.count() == 0 {
        return;
    }
    let _ = consumer.store_offsets(positions);
    let committed = consumer.commit(positions, CommitMode::Sync);
    metrics.record_commit(committed.is_ok());
    match committed {
        Ok(()) => tracing::info!(partitions = positions.count(), "Committed {what}."),
        Err(error) => {
            tracing::warn!(error = %error, "Commit of {what} failed; finished events may be sent again.")
        }
    }
}

/// What a task needs to deliver or dead-letter one event.
struct Deliverer {
    client: TopClient,
    classifier: Classifier,
    gate: Arc<Gate>,
    limiter: RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>,
    calls: Semaphore,
    dead_letters: DeadLetterProducer,
    max_attempts: u32,
    max_retry_elapsed: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    metrics: Arc<Metrics>,
}

/// One message, detached from the consumer.
struct Job {
    /// When the message was taken from Kafka.
    received: Instant,
    source: SourceRecord,
    event: Result<PaymentEvent, InvalidEvent>,
}

impl Deliverer {
    /// Runs one event to its final outcome; false if it gave up when cancelled.
    async fn run(
        &self,
        job: Job,
        predecessor: Option<oneshot::Receiver<()>>,
        cancel: CancellationToken,
    ) -> bool {
        if let Some(predecessor) = predecessor {
            tokio::select! {
                _ = predecessor => {}
                _ = cancel.cancelled() => return false,
            }
        }
        match &job.event {
            Err(invalid) => {
                tracing::warn!(error = %invalid, "Invalid event; dead-lettering it.");
                self.dead_letter(&job.source, Failure::invalid_event(invalid), &cancel)
                    .await
            }
            Ok(event) => self.deliver(&job, event, &cancel).await,
        }
    }

    async fn dead_letter(
        &self,
        source: &SourceRecord,
        failure: Failure,
        cancel: &CancellationToken,
    ) -> bool {
        let class = failure.class;
        let written = self
            .dead_letters
            .send(source, &failure, cancel.cancelled())
            .await;
        if written {
            self.metrics.record_dead_lettered(class, &failure.reason);
            tracing::warn!(class = class.as_str(), reason = %failure.reason, "Event dead-lettered.");
        }
        written
    }

    async fn deliver(&self, job: &Job, event: &PaymentEvent, cancel: &CancellationToken) -> bool {
        let source = &job.source;
        let dto = dto_json(event);
        let mut counted_failures = 0u32;
        let mut calls = 0u32;
        let mut retry_time = Duration::ZERO;
        let mut first_attempt = None;
        loop {
            // The call slot first, then the gate: at most `max_in_flight` calls
            // are past the gate, so a ban or an open breaker stops everyone else.
            let permit = tokio::select! {
                permit = self.calls.acquire() => permit.expect("the semaphore is never closed"),
                _ = cancel.cancelled() => return false,
            };
            let pass = tokio::select! {
                pass = self.gate.pass() => pass,
                _ = cancel.cancelled() => return false,
            };
            let waiting = Instant::now();
            let snapshot = tokio::select! {
                snapshot = self.limiter.until_ready() => snapshot,
                _ = cancel.cancelled() => { self.gate.release(pass); return false; }
            };
            self.metrics
                .record_limiter_wait(waiting.elapsed(), snapshot.remaining_burst_capacity());
            if pass == Pass::Normal && self.gate.status().closed() {
                // A ban, a halt or an open breaker began while this call waited for a token.
                continue;
            }
            // Signed here, after every wait: the timestamp is fresh on each attempt.
            self.metrics.calls_in_flight.inc();
            let report = self.client.send(&dto).await;
            self.metrics.calls_in_flight.dec();
            drop(permit);
            calls += 1;
            let now = Utc::now();
            first_attempt.get_or_insert(now);
            let disposition = self.classifier.classify(&report.outcome);
            self.metrics
                .record_call(&report.outcome, &disposition, report.elapsed);
            let counts = self.gate.record(pass, &disposition);
            // The event's span carries the gateway's id of its latest call.
            tracing::Span::current()
                .record("request_id", report.request_id.as_deref().unwrap_or("-"));
            tracing::debug!(
                ?disposition,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "Call answered."
            );
            let failure = |class: DeadLetterClass, reason: &str| {
                Failure {
                    class,
                    reason: reason.to_owned(),
                    message: String::new(),
                    top_code: None,
                    top_sub_code: None,
                    request_id: None,
                    attempts: calls,
                    first_attempt,
                    last_attempt: Some(now),
                }
                .with_outcome(&report.outcome, report.request_id.as_deref())
            };
            match disposition {
                Disposition::Delivered => {
                    self.metrics.record_delivered(job.received);
                    return true;
                }
                Disposition::DeadLetter { cause } => {
                    return self
                        .dead_letter(
                            source,
                            failure(DeadLetterClass::Rejected, cause.as_str()),
                            cancel,
                        )
                        .await;
                }
                Disposition::Halt { .. } => {
                    // The gate is now halted; the loop waits there for a probe.
                }
                Disposition::Retry { cause, wait } => {
                    if !counts {
                        continue;
                    }
                    counted_failures += 1;
                    retry_time += report.elapsed;
                    if counted_failures >= self.max_attempts || retry_time >= self.max_retry_elapsed
                    {
                        return self
                            .dead_letter(
                                source,
                                failure(DeadLetterClass::RetriesExhausted, cause.as_str()),
                                cancel,
                            )
                            .await;
                    }
                    let delay = wait.unwrap_or_else(|| {
                        gate::backoff(counted_failures - 1, self.backoff_initial, self.backoff_max)
                    });
                    retry_time += delay;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return false,
                    }
                }
            }
        }
    }
}

/// How long start-up waits for the dead-letter topic to appear in metadata.
const DLQ_TOPIC_WAIT: Duration = Duration::from_secs(10);

/// How long the global window may stay full before every partition is paused.
const STALL_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// The main loop's memory of the global window.
#[derive(Debug, Default)]
struct Flow {
    full_since: Option<Instant>,
    paused_all: bool,
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

/// A built pipeline, ready to [`Pipeline::run`].
pub struct Pipeline {
    consumer: StreamConsumer<PipelineContext>,
    /// For a bounded range: each partition's `[start, end)`.
    ranges: HashMap<PartitionId, (i64, i64)>,
    shared: Arc<Shared>,
    deliverer: Arc<Deliverer>,
    settings: Settings,
}

/// The librdkafka settings every client gets: bootstrap servers, then the
/// user's pass-through properties.
pub fn client_config(
    settings: &Settings,
    extra: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.kafka.bootstrap_servers);
    config.set("client.id", concat!("paysync-", env!("CARGO_PKG_VERSION")));
    for (key, value) in settings.kafka.librdkafka.iter().chain(extra.iter()) {
        config.set(key, value);
    }
    config
}

impl Pipeline {
    /// Connects to Kafka, checks the dead-letter topic exists, subscribes.
    pub fn build(settings: Settings) -> anyhow::Result<Pipeline> {
        Self::build_with(settings, Source::Group)
    }

    /// Like [`Pipeline::build`], for the group or for a bounded range.
    pub fn build_with(settings: Settings, source: Source) -> anyhow::Result<Pipeline> {
        let kafka = &settings.kafka;
        let delivery = &settings.delivery;
        let metrics = Arc::new(Metrics::new());
        let wake = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            partitions: Mutex::new(HashMap::new()),
            progress: Condvar::new(),
            wake: wake.clone(),
            next_generation: AtomicU64::new(0),
            revoke_drain: Duration::from_millis(kafka.revoke_drain_timeout_ms),
            metrics: metrics.clone(),
            health: Arc::new(Health::default()),
        });
        let mut consumer_config = ClientConfig::new();
        consumer_config
            .set("group.id", &kafka.group_id)
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                kafka.commit_interval_ms.to_string(),
            )
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &kafka.auto_offset_reset)
            .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
            .set("enable.partition.eof", "false")
            .set(
                "statistics.interval.ms",
                kafka.statistics_interval_ms.to_string(),
            );
        for (key, value) in client_config(&settings, &kafka.consumer).config_map() {
            consumer_config.set(key, value);
        }
        let consumer: StreamConsumer<PipelineContext> = consumer_config
            .create_with_context(PipelineContext {
                shared: shared.clone(),
            })
            .context("cannot create the Kafka consumer")?;
        // A topic created just before start-up (a compose job, a test) can take
        // a moment to appear in the brokers' metadata; wait a little for it.
        let deadline = Instant::now() + DLQ_TOPIC_WAIT;
        loop {
            let metadata = consumer
                .fetch_metadata(Some(&kafka.dlq_topic), Duration::from_secs(10))
                .context("cannot read Kafka metadata (is kafka.bootstrap_servers right?)")?;
            let dlq_ok = metadata.topics().iter().any(|t| {
                t.name() == kafka.dlq_topic && t.error().is_none() && !t.partitions().is_empty()
            });
            if dlq_ok {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the dead-letter topic {:?} does not exist: create it before starting paysync",
                    kafka.dlq_topic
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let mut ranges_by_partition = HashMap::new();
        match &source {
            Source::Group => {
                let topics: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
                consumer
                    .subscribe(&topics)
                    .context("cannot subscribe to the source topics")?;
            }
            Source::Range(ranges) => {
                // No group membership: the ranges are assigned directly, and
                // the group only keeps the committed progress (for resuming).
                let mut tpl = TopicPartitionList::new();
                for range in ranges {
                    tpl.add_partition_offset(
                        &range.topic,
                        range.partition,
                        Offset::Offset(range.start),
                    )?;
                    ranges_by_partition.insert(
                        PartitionId {
                            topic: range.topic.clone(),
                            partition: range.partition,
                        },
                        (range.start, range.end),
                    );
                }
                shared.assign_from(ranges);
                consumer
                    .assign(&tpl)
                    .context("cannot assign the replay range")?;
            }
        }
        let dead_letters = DeadLetterProducer::new(
            client_config(&settings, &kafka.producer),
            kafka.dlq_topic.clone(),
            kafka.group_id.clone(),
            metrics.clone(),
        )
        .context("cannot create the dead-letter producer")?;
        let gate = Arc::new(Gate::new(
            GateSettings {
                failure_threshold: delivery.breaker_failure_threshold,
                probe_interval: Duration::from_millis(delivery.breaker_probe_interval_ms),
                halt_probe_interval: Duration::from_millis(delivery.halt_probe_interval_ms),
            },
            wake,
        ));
        let rate = NonZeroU32::new(delivery.rate_limit_per_sec)
            .context("delivery.rate_limit_per_sec must be above 0")?;
        let burst = NonZeroU32::new(delivery.burst())
            .context("delivery.rate_limit_burst must be above 0")?;
        let deliverer = Arc::new(Deliverer {
            client: settings.top_client()?,
            classifier: settings.classifier(),
            gate,
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
                .with_middleware::<StateInformationMiddleware>(),
            calls: Semaphore::new(delivery.max_in_flight),
            dead_letters,
            max_attempts: delivery.max_attempts,
            max_retry_elapsed: Duration::from_millis(delivery.max_retry_elapsed_ms),
            backoff_initial: Duration::from_millis(delivery.backoff_initial_ms),
            backoff_max: Duration::from_millis(delivery.backoff_max_ms),
            metrics: metrics.clone(),
        });
        Ok(Pipeline {
            consumer,
            ranges: ranges_by_partition,
            shared,
            deliverer,
            settings,
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    pub fn health(&self) -> Arc<Health> {
        self.shared.health.clone()
    }

    pub fn gate_status(&self) -> GateStatus {
        self.deliverer.gate.status()
    }

    /// The gate, to watch its state while the pipeline runs.
    pub fn gate_handle(&self) -> Arc<Gate> {
        self.deliverer.gate.clone()
    }

    /// Runs until `shutdown` resolves, then drains and commits.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Summary> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Per (partition, order_id): the completion signal of the latest event.
        let mut chains: HashMap<(PartitionId, String), oneshot::Receiver<()>> = HashMap::new();
        let wake = self.shared.wake.clone();
        let mut flow = Flow::default();
        self.observe();
        loop {
            let may_poll = self.store_and_pause(&mut flow);
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
                    chains.retain(|_, done| matches!(done.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
                    self.observe();
                }
                message = self.consumer.recv(), if may_poll => match message {
                    Ok(message) => self.dispatch(&message, &mut chains),
                    Err(error) => {
                        tracing::warn!(error = %error, "Kafka consumer error.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        self.shutdown().await
    }

    fn dispatch(
        &self,
        message: &BorrowedMessage<'_>,
        chains: &mut HashMap<(PartitionId, String), oneshot::Receiver<()>>,
    ) {
        let id = PartitionId {
            topic: message.topic().to_owned(),
            partition: message.partition(),
        };
        let offset = message.offset();
        if self.ranges.get(&id).is_some_and(|(_, end)| offset >= *end) {
            // Past a replay range's end: not ours to send.
            return;
        }
        let (generation, cancel) = {
            let mut partitions = self.shared.lock();
            // A message of a partition this consumer no longer owns is the next owner's.
            let Some(state) = partitions.get_mut(&id) else {
                return;
            };
            state.tracker.start(offset);
            state.live_tasks += 1;
            (state.generation, state.cancel.clone())
        };
        self.shared.metrics.events_consumed.inc();
        let received = Instant::now();
        let source = SourceRecord {
            topic: id.topic.clone(),
            partition: id.partition,
            offset,
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let event = event::decode(source.value.as_deref(), self.settings.event.max_bytes);
        let order_id = event.as_ref().ok().map(|e| e.order_id.clone());
        let span = tracing::info_span!(
            "event",
            topic = %id.topic,
            partition = id.partition,
            offset,
            order_id = order_id.as_deref().unwrap_or("-"),
            request_id = tracing::field::Empty,
        );
        let (done, done_signal) = oneshot::channel::<()>();
        let predecessor =
            order_id.and_then(|order_id| chains.insert((id.clone(), order_id), done_signal));
        let deliverer = self.deliverer.clone();
        let shared = self.shared.clone();
        tokio::spawn(
            async move {
                let finished = deliverer
                    .run(
                        Job {
                            received,
                            source,
                            event,
                        },
                        predecessor,
                        cancel,
                    )
                    .await;
                shared.task_ended(&id, generation, offset, finished);
                drop(done);
            }
            .instrument(span),
        );
    }

    /// Whether every partition of a bounded range is finished up to its end.
    fn range_done(&self) -> bool {
        let (done, total) = self.range_progress();
        done >= total
    }

    /// How many messages of a bounded range are finished, and how many there
    /// are (offsets, so gaps from compaction count as finished).
    fn range_progress(&self) -> (u64, u64) {
        let partitions = self.shared.lock();
        let mut done = 0;
        let mut total = 0;
        for (id, (start, end)) in &self.ranges {
            let position = partitions
                .get(id)
                .and_then(|s| s.tracker.position())
                .unwrap_or(*start);
            total += (end - start).max(0) as u64;
            done += (position.min(*end) - start).max(0) as u64;
        }
        (done, total)
    }

    /// Periodic gauges and the liveness mark (every tick of the main loop).
    fn observe(&self) {
        let metrics = &self.shared.metrics;
        self.shared.health.progressed();
        metrics.set_gate(&self.deliverer.gate.status());
        let oldest = self
            .shared
            .lock()
            .values()
            .filter_map(|s| s.tracker.oldest_start())
            .min();
        metrics
            .oldest_in_flight_age
            .set(oldest.map_or(0.0, |t| t.elapsed().as_secs_f64()));
    }

    /// Stores advanced positions, pauses or resumes partitions, and says
    /// whether the main loop may take another message.
    ///
    /// A full global window is first handled by not polling: completions
    /// free room within milliseconds, and a pause would drop librdkafka's
    /// prefetched messages only to fetch them again. If the window stays full
    /// for [`STALL_BEFORE_PAUSE`] (calls stuck in backoff), every partition is
    /// paused instead, so the consumer can keep polling and take part in
    /// rebalances. Pauses end at half the window, not at the edge, so they do
    /// not flap. A closed gate (ban, open breaker, halt) pauses everything.
    fn store_and_pause(&self, flow: &mut Flow) -> bool {
        let delivery = &self.settings.delivery;
        let gate_closed = self.deliverer.gate.status().closed();
        let mut store = TopicPartitionList::new();
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        let total = {
            let mut partitions = self.shared.lock();
            let total: usize = partitions.values().map(|s| s.tracker.in_flight()).sum();
            let now = Instant::now();
            if total >= delivery.global_window {
                let since = *flow.full_since.get_or_insert(now);
                if now.duration_since(since) >= STALL_BEFORE_PAUSE {
                    flow.paused_all = true;
                }
            } else {
                // Room appeared: the window is moving, not stuck.
                flow.full_since = None;
                if total <= delivery.global_window / 2 {
                    flow.paused_all = false;
                }
            }
            for (id, state) in partitions.iter_mut() {
                if let Some(position) = state.tracker.take_advance() {
                    let _ = store.add_partition_offset(
                        &id.topic,
                        id.partition,
                        Offset::Offset(position),
                    );
                    self.shared
                        .metrics
                        .partition_completed_offset
                        .with_label_values(&[id.topic.as_str(), &id.partition.to_string()])
                        .set(position);
                }
                let in_flight = state.tracker.in_flight();
                let partition_full = if state.paused {
                    in_flight > delivery.partition_window / 2
                } else {
                    in_flight >= delivery.partition_window
                };
                let want_paused = gate_closed || flow.paused_all || partition_full;
                if want_paused != state.paused {
                    state.paused = want_paused;
                    let list = if want_paused { &mut pause } else { &mut resume };
                    list.add_partition(&id.topic, id.partition);
                    self.shared
                        .metrics
                        .partition_paused
                        .with_label_values(&[id.topic.as_str(), &id.partition.to_string()])
                        .set(i64::from(want_paused));
                }
            }
            total
        };
        self.shared.metrics.window_messages.set(total as i64);
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
        total < delivery.global_window || flow.paused_all || gate_closed
    }

    async fn shutdown(self) -> anyhow::Result<Summary> {
        let drain = Duration::from_millis(self.settings.delivery.shutdown_drain_timeout_ms);
        tracing::info!(
            drain_s = drain.as_secs_f64(),
            "Shutting down: finishing calls under way."
        );
        for state in self.shared.lock().values() {
            state.cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            let live: usize = self.shared.lock().values().map(|s| s.live_tasks).sum();
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
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let mut commit = TopicPartitionList::new();
        for (id, state) in self.shared.lock().iter() {
            if let Some(position) = state.tracker.position() {
                let _ =
                    commit.add_partition_offset(&id.topic, id.partition, Offset::Offset(position));
            }
        }
        commit_positions(
            &self.consumer,
            &commit,
            &self.shared.metrics,
            "final positions",
        );
        if let Err(error) = self.deliverer.dead_letters.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %error, "Flushing the dead-letter producer failed.");
        }
        let summary = Summary::of(&self.shared.metrics);
        tracing::info!(?summary, "Stopped.");
        Ok(summary)
    }
}
