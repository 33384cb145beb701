//! The pipeline's dead-letter writer.
//!
//! A dead letter counts only once the broker acknowledged it (`acks=all`,
//! idempotent producer, see [`crate::kafka::clients::durable_producer`]); until then
//! the source offset is not committed. A failed write is retried with backoff
//! for as long as it takes: the partition waits rather than losing the message.
//! A copy too large for the topic is written without its value (then without
//! key and source headers too), with headers that say what was left out: the
//! source record keeps it for its retention, and a stuck partition would help
//! no one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;

use super::prior::PriorCopies;
use super::{Failure, SourceRecord, encode_headers};
use crate::backoff::backoff;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::partition::PartitionId;

/// First and longest pause between attempts to write one dead letter.
const RETRY_INITIAL: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(8);
/// The most a copy is cut down ([`super::shrunk`]).
const MAX_SHRINK: u8 = 2;
/// How long a takeover keeps trying to read the dead-letter topic back
/// before it writes copies without checking: longer than a broker's
/// fencing and a leader's election (tens of seconds), short enough that a
/// topic unreadable for good does not hold a partition for ever.
pub const READ_BACK_PATIENCE: Duration = Duration::from_secs(120);

/// How a dead-letter write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The broker acknowledged the copy: the source offset may pass.
    Acknowledged,
    /// Given up on revoke or shutdown; the next owner sends the event again.
    Cancelled,
}

/// Source partitions whose dead-letter writes are failing (each holds its
/// partition's offset), and since when: for readiness and the alert.
#[derive(Debug, Default)]
pub struct StalledWrites {
    /// The dead-letter topic written to (readiness names it).
    dead_letter_topic: String,
    stalls: Mutex<Stalls>,
}

#[derive(Debug, Default)]
struct Stalls {
    /// Source partition → (first failure of the oldest write, writes failing).
    failing: HashMap<PartitionId, (Instant, usize)>,
    /// What the broker said to the latest failing write.
    last_error: String,
}

/// The source partition held longest by failing dead-letter writes.
#[derive(Debug, Clone, PartialEq)]
pub struct OldestStall {
    pub source: PartitionId,
    pub held: Duration,
    pub dead_letter_topic: String,
    pub last_error: String,
}

impl StalledWrites {
    pub fn new(dead_letter_topic: &str) -> StalledWrites {
        StalledWrites {
            dead_letter_topic: dead_letter_topic.to_owned(),
            ..StalledWrites::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stalls> {
        self.stalls.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, error: &KafkaError) {
        self.lock().last_error = error.to_string();
    }

    /// Holds `source` as failing until the returned guard is dropped.
    fn hold(&self, source: &PartitionId) -> Failing<'_> {
        self.lock()
            .failing
            .entry(source.clone())
            .or_insert((Instant::now(), 0))
            .1 += 1;
        Failing {
            stalled: self,
            source: source.clone(),
        }
    }

    fn ended(&self, source: &PartitionId) {
        let mut stalls = self.lock();
        if let Some(entry) = stalls.failing.get_mut(source) {
            entry.1 -= 1;
            if entry.1 == 0 {
                stalls.failing.remove(source);
            }
        }
    }

    /// The source partition held longest by a failing write, and for how long.
    pub fn oldest(&self) -> Option<OldestStall> {
        let stalls = self.lock();
        let (source, (since, _)) = stalls.failing.iter().min_by_key(|(_, (since, _))| *since)?;
        Some(OldestStall {
            source: source.clone(),
            held: since.elapsed(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            last_error: stalls.last_error.clone(),
        })
    }
}

/// Marks a write as failing until it ends, however it ends.
struct Failing<'a> {
    stalled: &'a StalledWrites,
    source: PartitionId,
}

impl Drop for Failing<'_> {
    fn drop(&mut self) {
        self.stalled.ended(&self.source);
    }
}

/// Writes dead letters and waits for the broker's acknowledgement.
#[derive(Clone)]
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
    group: String,
    metrics: Arc<Metrics>,
    stalled: Arc<StalledWrites>,
    /// For reading the topic back ([`PriorCopies`]).
    settings: Arc<Settings>,
}

impl DeadLetterProducer {
    /// The durable producer underneath, for other records that need the same
    /// acknowledgement (the control topic's): one polling thread fewer.
    pub fn client(&self) -> &FutureProducer {
        &self.producer
    }

    /// A producer for `kafka.dlq_topic`, signing records with `kafka.group_id`.
    pub fn new(
        settings: &Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(DeadLetterProducer {
            producer: crate::kafka::clients::durable_producer(settings).create()?,
            topic: settings.kafka.dlq_topic.clone(),
            group: settings.kafka.group_id.clone(),
            metrics,
            stalled: Arc::new(StalledWrites::new(&settings.kafka.dlq_topic)),
            settings: Arc::new(settings.clone()),
        })
    }

    /// Whether an earlier owner of the source partition already wrote a copy
    /// of `offset` (see [`PriorCopies`]). While the dead-letter topic cannot
    /// be read back, the read is tried again with the source partition held
    /// (readiness names the topic and the error), for up to
    /// [`READ_BACK_PATIENCE`]; past it the copy is written, loudly and
    /// counted: a second copy is safe, a missing one is not.
    pub async fn written_before(&self, prior: &PriorCopies, offset: i64) -> bool {
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut failing = None;
        loop {
            let error = match prior.holds(&self.settings, offset).await {
                Ok(held) => return held,
                Err(error) => error,
            };
            self.stalled.lock().last_error = format!("reading the topic back: {error:#}");
            if failing.is_none() {
                failing = Some(self.stalled.hold(prior.source()));
            }
            if started.elapsed() >= READ_BACK_PATIENCE {
                self.metrics.dead_letter_read_back_failures.inc();
                tracing::error!(
                    partition = %prior.source(),
                    topic = %self.topic,
                    error = format!("{error:#}"),
                    patience_s = READ_BACK_PATIENCE.as_secs(),
                    "The dead-letter topic stayed unreadable after a takeover; writing this partition's dead letters without checking for copies an earlier owner wrote (some may be written twice)."
                );
                prior.give_up();
                return false;
            }
            tracing::warn!(
                partition = %prior.source(),
                topic = %self.topic,
                error = format!("{error:#}"),
                attempt = attempt + 1,
                "Could not read the dead-letter topic back after a takeover; the source offset is held and the read is tried again."
            );
            let delay = backoff(attempt, RETRY_INITIAL, RETRY_MAX);
            attempt += 1;
            tokio::time::sleep(delay).await;
        }
    }

    /// The source partitions held by failing writes.
    pub fn stalled(&self) -> &Arc<StalledWrites> {
        &self.stalled
    }

    /// Writes one dead letter; retries until the broker acknowledges it or
    /// `cancelled` resolves.
    pub async fn send(
        &self,
        source: &SourceRecord,
        failure: &Failure,
        cancelled: impl std::future::Future<Output = ()>,
    ) -> Written {
        tokio::pin!(cancelled);
        let headers = encode_headers(source, failure, &self.group, Utc::now());
        let mut attempt = 0u32;
        let mut level = 0u8;
        let mut failing = None;
        loop {
            let (payload, mut extra) = super::shrunk(&source.payload, level);
            extra.splice(0..0, headers.iter().cloned());
            let mut record = payload.to_record(&self.topic, &extra);
            if let Some(timestamp) = source.timestamp {
                record = record.timestamp(timestamp);
            }
            let sent = tokio::select! {
                sent = self.producer.send(record, Timeout::After(Duration::from_secs(30))) => sent,
                _ = &mut cancelled => return Written::Cancelled,
            };
            let Err((error, _)) = sent else {
                return Written::Acknowledged;
            };
            self.metrics.dlq_produce_failures.inc();
            self.stalled.failed(&error);
            if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
                && level < MAX_SHRINK
            {
                level += 1;
                tracing::warn!(
                    source_topic = %source.id.topic,
                    source_partition = source.id.partition,
                    source_offset = source.offset,
                    left_out = if level == 1 { "the value" } else { "the value, key and source headers" },
                    "The dead-letter copy is too large for the topic; writing it with less."
                );
                continue;
            }
            if failing.is_none() {
                failing = Some(self.stalled.hold(&source.id));
            }
            tracing::error!(
                error = %error,
                topic = %self.topic,
                source_topic = %source.id.topic,
                source_partition = source.id.partition,
                source_offset = source.offset,
                attempt = attempt + 1,
                "Dead-letter write failed; the source offset is held until it succeeds."
            );
            let delay = backoff(attempt, RETRY_INITIAL, RETRY_MAX);
            attempt += 1;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut cancelled => return Written::Cancelled,
            }
        }
    }

    /// Waits for queued dead letters to be acknowledged. Blocks.
    pub fn flush(&self, timeout: Duration) -> Result<(), rdkafka::error::KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }
}
