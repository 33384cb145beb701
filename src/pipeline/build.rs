//! Building a pipeline: every check that can fail before anything runs
//! (configuration, the TOP client, the brokers, the dead-letter topic), the
//! consumer subscribed to its topics or assigned its replay ranges, and the
//! parts the main loop shares with the tasks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use super::commit::committer::Committer;
use super::context::PipelineContext;
use super::deliver::Deliverer;
use super::fair::{FairQueue, ParkPolicy, ParkWaits};
use super::gate::{Gate, GateSettings};
use super::ownership::{Ownership, Publish};
use super::rate::tenancy::Role;
use super::rate::{RateBudget, RateLimitScope, RateSettings};
use super::status::Health;
use super::tracker::OffsetTracker;
use super::watch::Watchers;
use super::{Pipeline, Source};
use crate::config::{ConfigError, GroupProtocol, Settings, TopClientError};
use crate::control::{self, CallerKind, Control, ControlError};
use crate::dead_letter::DeadLetterProducer;
use crate::kafka;
use crate::kafka::cluster::{self, ClusterFacts};
use crate::ledger::{Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::partition::PartitionId;
use crate::trace::export::TraceSetupError;

/// How long start-up waits for the dead-letter topic to appear in metadata.
const DLQ_TOPIC_WAIT: Duration = Duration::from_secs(10);

/// How long a failed start-up serves the consumer's queued events to learn
/// what librdkafka reported.
const CLIENT_EVENTS_WAIT: Duration = Duration::from_millis(200);

/// A metadata failure with what librdkafka reported meanwhile (a failed
/// authentication, an untrusted certificate). Those reports wait in the
/// consumer's queue until it is polled, and nothing polls it before the
/// subscription, so they are served here first; no message can be in the
/// queue yet.
/// Runs on start-up's blocking thread, inside the runtime.
fn metadata_failure(consumer: &StreamConsumer<PipelineContext>, error: KafkaError) -> StartError {
    let serve_events = async {
        loop {
            let _event_or_error = consumer.recv().await;
        }
    };
    let _elapsed = tokio::runtime::Handle::current()
        .block_on(async { tokio::time::timeout(CLIENT_EVENTS_WAIT, serve_events).await });
    StartError::Metadata {
        error,
        client_said: consumer.context().last_error(),
    }
}

/// Why a pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    TopClient(#[from] TopClientError),
    #[error("cannot create the Kafka consumer: {0}")]
    CreateConsumer(#[source] KafkaError),
    #[error("cannot read Kafka metadata (is kafka.bootstrap_servers right?): {error}{}", client_said.as_ref().map(|said| format!("; librdkafka said: {said}")).unwrap_or_default())]
    Metadata {
        #[source]
        error: KafkaError,
        /// librdkafka's latest error report (an authentication failure, say).
        client_said: Option<String>,
    },
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
    #[error("tracing: {0}")]
    Tracing(#[from] TraceSetupError),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("control topic: {0}")]
    Control(#[from] ControlError),
}

/// The group protocol to speak (`auto` decided from the cluster's
/// configuration), logged with why, and a warning for each group setting
/// that would let a broker's death or a replica's restart stop the group.
fn group_protocol(settings: &Settings) -> GroupProtocol {
    let kafka = &settings.kafka;
    let facts = ClusterFacts::read(&kafka::clients::admin(settings)).unwrap_or_else(|error| {
        tracing::info!(%error, "Could not read the cluster's configuration; assuming Apache Kafka's defaults.");
        ClusterFacts::assumed()
    });
    let (protocol, why) = cluster::resolve_protocol(kafka, &facts);
    tracing::info!(
        protocol = protocol.as_str(),
        static_identity = cluster::static_identity(kafka, protocol)
            .as_deref()
            .unwrap_or("none"),
        "Group protocol: {why}."
    );
    for warning in cluster::group_warnings(kafka, protocol, &facts) {
        tracing::warn!("{warning}.");
    }
    protocol
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
        if delivery.rate_limit_per_sec == 0 {
            return Err(ConfigError::one("delivery.rate_limit_per_sec", "must be above 0").into());
        }
        if delivery.burst() == 0 {
            return Err(ConfigError::one("delivery.rate_limit_burst", "must be above 0").into());
        }
        let client = settings.top_client()?;
        let metrics = Arc::new(Metrics::new());
        let parks = Arc::new(ParkPolicy::of(&settings.fairness));
        // A replay is not a member: with the control topic its part of the
        // group's rate is its tenancy's, without it its own rate.
        let scope = match source {
            Source::Group => delivery.rate_limit_scope,
            Source::Range(_) => RateLimitScope::Replica,
        };
        let budget = Arc::new(RateBudget::new(
            RateSettings::of(delivery, scope, kafka.metadata_refresh_interval_ms),
            metrics.clone(),
            parks.clone(),
        ));
        let health = Arc::new(Health::default());
        let wake = Arc::new(Notify::new());
        let ownership = Arc::new(Ownership::new(
            kafka.revoke_drain_timeout_ms,
            kafka.topics.clone(),
            Publish {
                metrics: metrics.clone(),
                health: health.clone(),
                budget: budget.clone(),
                wake: wake.clone(),
            },
        ));
        let committer = Arc::new(Committer::new(
            kafka.completion_map_max_bytes,
            metrics.clone(),
            wake.clone(),
        ));
        let context = || {
            PipelineContext::new(
                ownership.clone(),
                committer.clone(),
                metrics.clone(),
                budget.clone(),
                wake.clone(),
            )
        };
        // The consumer reaches the brokers first (joining nothing yet) with
        // the protocol as set; `auto` is decided once they answered, and
        // the consumer made again if the cluster speaks KIP-848.
        let create = |protocol| {
            kafka::clients::group_consumer(&settings, protocol)
                .create_with_context(context())
                .map_err(StartError::CreateConsumer)
        };
        let mut consumer: StreamConsumer<PipelineContext> = create(kafka.group_protocol)?;
        let dlq_found =
            match kafka::queries::wait_for_topic(&consumer, &kafka.dlq_topic, DLQ_TOPIC_WAIT) {
                Ok(found) => found,
                Err(error) => return Err(metadata_failure(&consumer, error)),
            };
        if matches!(source, Source::Group) {
            let protocol = group_protocol(&settings);
            if kafka.group_protocol == GroupProtocol::Auto && protocol == GroupProtocol::Consumer {
                consumer = create(protocol)?;
            }
        }
        if dlq_found.is_none() {
            return Err(StartError::MissingDeadLetterTopic {
                topic: kafka.dlq_topic.clone(),
            });
        }
        // The ledger before any partition is owned: owning one restores its entries.
        let source_topics: Vec<String> = match &source {
            Source::Group => kafka.topics.clone(),
            Source::Range(ranges) => ranges.iter().map(|range| range.topic.clone()).collect(),
        };
        // Read once: the ledger's partitions follow them, and the group's
        // rate budget divides by them.
        let counts = match kafka::queries::partition_counts(&consumer, &source_topics) {
            Ok(counts) => counts,
            Err(error) => return Err(metadata_failure(&consumer, error)),
        };
        let most_partitions = counts.iter().map(|(_, count)| *count as i32).max();
        let ledger = Ledger::open(
            &settings,
            &consumer,
            most_partitions.unwrap_or(1),
            metrics.clone(),
        )?;
        if let Some(ledger) = &ledger {
            ownership.file_in(ledger.clone());
        }
        // Read to its end before the first event: a pause or a tuned rate
        // holds from the start.
        let role = match &source {
            Source::Group => Role::Member,
            Source::Range(_) => Role::Tenant {
                kind: CallerKind::Replay,
                weight: settings.control.backfill_weight,
                ceiling: None,
            },
        };
        let caller = control::caller_name(match role {
            Role::Member => CallerKind::Member,
            Role::Tenant { kind, .. } => kind,
        });
        let dead_letters = DeadLetterProducer::new(&settings, metrics.clone())
            .map_err(StartError::CreateProducer)?;
        let control = Control::open(
            &settings,
            &consumer,
            caller,
            Some(dead_letters.client().clone()),
        )?;
        let mut ranges_by_partition = HashMap::new();
        match &source {
            Source::Group => {
                budget.observe_counts(counts.iter().map(|(topic, count)| (topic.as_str(), *count)));
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
                ownership.own(ranges.iter().map(|range| {
                    (
                        PartitionId::new(&range.topic, range.partition),
                        OffsetTracker::starting_at(range.start),
                    )
                }));
                consumer.assign(&tpl).map_err(StartError::Assign)?;
            }
        }
        health.watch_dead_letters(
            dead_letters.stalled().clone(),
            delivery.dead_letter_stall_ms,
        );
        let gate = Arc::new(Gate::new(
            GateSettings {
                failure_threshold: delivery.breaker_failure_threshold,
                probe_interval: delivery.breaker_probe_interval_ms,
                halt_probe_interval: delivery.halt_probe_interval_ms,
            },
            wake.clone(),
        ));
        let deliverer = Arc::new(Deliverer {
            client,
            classifier: settings.classifier(),
            gate,
            budget: budget.clone(),
            calls: FairQueue::new(delivery.max_in_flight, parks.clone(), false),
            parks,
            waits: ParkWaits::new(settings.fairness.top_parks),
            dead_letters,
            delivery: std::sync::RwLock::new(delivery.clone()),
            control,
            metrics: metrics.clone(),
            ledger,
            replay: matches!(source, Source::Range(_)),
            resend_delivered: false,
        });
        // Last: a start-up that waits for Kafka starts no exporter per attempt.
        let watchers = Arc::new(Watchers::start(metrics.clone(), &settings.tracing)?);
        Ok(Pipeline {
            consumer: Arc::new(consumer),
            ranges: ranges_by_partition,
            ownership,
            committer,
            deliverer,
            watchers,
            metrics,
            health,
            budget,
            wake,
            role,
            settings,
        })
    }
}
