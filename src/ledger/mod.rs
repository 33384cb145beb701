//! The delivery ledger: what Miaojie was sent and what it answered, per
//! business key, kept in a compacted Kafka topic (docs/ledger.md).
//!
//! * [`entry`]: the key, the entry's JSON, the hashes.
//! * [`store`]: one ledger partition in memory (a fixed-size slot per key).
//! * [`topic`]: the topic made sure of at start, co-partitioned with the
//!   source, and read whole by the operator's commands.
//! * [`report`]: the operator's views (`ledger show|unknown|stats`), the
//!   resolution of unknown outcomes, and the daily reconciliation.
//! * `follower`: the thread that restores and follows the held ledger
//!   partitions, and the state it shares with the pipeline's tasks.
//!
//! This file is the pipeline's side: [`Ledger`] restores the ledger
//! partitions of the source partitions this replica owns (reading them to
//! their end before any event of them is judged, then following them),
//! answers [`Ledger::admit`] for each event — send it, it is a duplicate, or
//! park it — and writes outcomes, waiting for the broker's acknowledgement
//! like the dead-letter writer does.

pub mod entry;
mod follower;
pub mod report;
pub mod store;
pub mod topic;

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::backoff::backoff;
use crate::config::{LedgerMode, Settings};
use crate::event::PaymentEvent;
use crate::kafka;
pub use crate::kafka::compacted::CompactedTopicError as LedgerTopicError;
use crate::kafka::record::SourceRecord;
use crate::metrics::Metrics;
use crate::partition::PartitionId;
use entry::{Entry, KeyField, LedgerKey, Outcome, Position};
use follower::{Follow, FollowerContext, Held, Shared};
use store::{PartitionStore, Slot};

/// First and longest pause between attempts to write one entry.
const RETRY_INITIAL: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(8);
/// What to do with an event, by what the ledger holds of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Send it; `correction` when its key was accepted with another DTO.
    Send { correction: bool },
    /// Its key was accepted with the same DTO, read at this offset of its
    /// source partition.
    Duplicate { earlier_offset: i64 },
    /// Strict mode: park it with this outcome (unknown, or held behind the
    /// key named) — the ledger will hold it, the offset passes.
    Park {
        outcome: Outcome,
        behind: Option<String>,
    },
    /// Strict mode: this very event is parked already.
    AlreadyParked { outcome: Outcome },
    /// The partition was revoked or the pipeline stops.
    Cancelled,
}

/// The pipeline's ledger.
pub struct Ledger {
    mode: LedgerMode,
    key_fields: Vec<KeyField>,
    ledger_partitions: i32,
    shared: Arc<Shared>,
    follow: mpsc::Sender<Follow>,
    follower: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Ledger {
    /// Makes sure of the topic, starts the follower. `None` when the mode
    /// is off. Blocks.
    pub fn open<C: rdkafka::consumer::ConsumerContext>(
        settings: &Settings,
        consumer: &impl Consumer<C>,
        source_partitions: i32,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Ledger>>, LedgerError> {
        if settings.ledger.mode == LedgerMode::Off {
            return Ok(None);
        }
        let ledger_partitions = topic::ensure(settings, consumer, source_partitions.max(1))?;
        let topic = settings.ledger.topic(&settings.kafka.group_id);
        let writer: FutureProducer = kafka::clients::durable_producer(settings)
            .create()
            .map_err(LedgerError::Client)?;
        let mut config = kafka::clients::tool_consumer(
            settings,
            &format!("{}.ledger-follower", settings.kafka.group_id),
        );
        config.set("enable.partition.eof", "true");
        // Following, the entries come a few at a time: fetch them in
        // batches (a restore's end is still seen within half a second).
        config.set("fetch.min.bytes", "65536");
        config.set("fetch.wait.max.ms", "500");
        // A restore reads ahead 24 MiB, not librdkafka's default 64 MiB
        // (docs/performance.md, "The delivery ledger": 8 MiB saved 38 MiB
        // of RSS but took a million entries 4 s longer).
        config.set("queued.max.messages.kbytes", "24576");
        let consumer: BaseConsumer<FollowerContext> = config
            .create_with_context(FollowerContext)
            .map_err(LedgerError::Client)?;
        let shared = Arc::new(Shared {
            topic: topic.clone(),
            retain: settings.ledger.retain(),
            partitions: Mutex::new(HashMap::new()),
            restored: tokio::sync::watch::channel(0).0,
            metrics,
            writer,
        });
        let (follow, commands) = mpsc::channel();
        let follower = shared.clone();
        let follower = std::thread::Builder::new()
            .name("paysync-ledger".into())
            .spawn(move || follower.follow(consumer, commands))
            .map_err(LedgerError::Thread)?;
        tracing::info!(
            topic = %topic,
            partitions = ledger_partitions,
            mode = settings.ledger.mode.as_str(),
            key = settings.ledger.key_fields.iter().map(|f| f.as_str()).collect::<Vec<_>>().join("+"),
            retain_days = settings.ledger.retain_days,
            "Delivery ledger on."
        );
        Ok(Some(Arc::new(Ledger {
            mode: settings.ledger.mode,
            key_fields: settings.ledger.key_fields.clone(),
            ledger_partitions,
            shared,
            follow,
            follower: Mutex::new(Some(follower)),
        })))
    }

    pub fn mode(&self) -> LedgerMode {
        self.mode
    }

    pub fn key(&self, event: &PaymentEvent) -> LedgerKey {
        LedgerKey::of(event, &self.key_fields)
    }

    fn ledger_partition(&self, source: &PartitionId) -> i32 {
        topic::partition_for(source.partition, self.ledger_partitions)
    }

    /// The source partitions this replica owns now: their ledger partitions
    /// are restored (the new ones); those no longer needed are released.
    pub fn set_owned<'a>(&self, owned: impl IntoIterator<Item = &'a PartitionId>) {
        let wanted: HashSet<i32> = owned
            .into_iter()
            .map(|id| self.ledger_partition(id))
            .collect();
        let now = Instant::now();
        let mut added = Vec::new();
        {
            let mut partitions = self.shared.lock();
            for (partition, held) in partitions.iter_mut() {
                if wanted.contains(partition) {
                    held.released = None;
                } else {
                    held.released.get_or_insert(now);
                }
            }
            for partition in wanted {
                partitions.entry(partition).or_insert_with(|| {
                    added.push(partition);
                    Held {
                        store: PartitionStore::default(),
                        ready: false,
                        started: now,
                        released: None,
                    }
                });
            }
        }
        if !added.is_empty() {
            let _ = self.follow.send(Follow::Add(added));
        }
        self.shared.publish();
    }

    /// Waits until the event's ledger partition is restored, then judges the
    /// event by what its key holds.
    pub async fn admit(
        &self,
        source: &SourceRecord,
        key: &LedgerKey,
        dto_hash: u64,
        resend_delivered: bool,
        cancel: &CancellationToken,
    ) -> Admit {
        let partition = self.ledger_partition(&source.id);
        let mut restored = self.shared.restored.subscribe();
        loop {
            match self.shared.lock().get(&partition) {
                Some(held) if held.ready => {
                    return judge(
                        &held.store,
                        self.mode == LedgerMode::Strict,
                        source.offset,
                        key,
                        dto_hash,
                        resend_delivered,
                    );
                }
                Some(_) => {}
                // Not owned any more: the partition is being revoked.
                None => return Admit::Cancelled,
            }
            tokio::select! {
                changed = restored.changed() => if changed.is_err() { return Admit::Cancelled },
                _ = cancel.cancelled() => return Admit::Cancelled,
            }
        }
    }

    /// Writes `entry` under `key` for source partition `source`, retrying
    /// until the broker acknowledges it or `cancel` fires; then applies it
    /// to memory. Returns whether it was written.
    pub async fn write(
        &self,
        source: &PartitionId,
        key: &LedgerKey,
        entry: &Entry,
        cancel: &CancellationToken,
    ) -> bool {
        let partition = self.ledger_partition(source);
        let value = entry.encode();
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let record = FutureRecord::to(&self.shared.topic)
                .partition(partition)
                .key(key.text.as_bytes())
                .payload(&value);
            let sent = tokio::select! {
                sent = self.shared.writer.send(record, Timeout::After(Duration::from_secs(30))) => sent,
                _ = cancel.cancelled() => return false,
            };
            match sent {
                Ok(delivery) => {
                    self.shared
                        .metrics
                        .ledger_write_duration
                        .observe(started.elapsed().as_secs_f64());
                    self.shared
                        .metrics
                        .ledger_writes
                        .with_label_values(&[entry.outcome.as_str()])
                        .inc();
                    let mine = entry.outcome == Outcome::Intent;
                    let slot = Slot::of(entry, delivery.offset, mine);
                    if let Some(held) = self.shared.lock().get_mut(&partition) {
                        held.store
                            .apply(key.hash, key.order, delivery.offset, Some(slot));
                    }
                    return true;
                }
                Err((error, _)) => {
                    self.shared.metrics.ledger_write_failures.inc();
                    tracing::error!(
                        error = %error,
                        topic = %self.shared.topic,
                        source = %source,
                        attempt = attempt + 1,
                        "Ledger write failed; the event's offset is held until it succeeds."
                    );
                    let delay = backoff(attempt, RETRY_INITIAL, RETRY_MAX);
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return false,
                    }
                }
            }
        }
    }

    /// Publishes the ledger's gauges.
    pub fn publish(&self) {
        self.shared.publish();
    }

    /// Stops following the topic and waits for the writes under way (the
    /// pipeline's shutdown, after its final commit). Blocks.
    pub fn close(&self, timeout: Duration) {
        let _ = self.follow.send(Follow::Stop);
        if let Some(follower) = self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = follower.join();
        }
        if let Err(error) =
            rdkafka::producer::Producer::flush(&self.shared.writer, Timeout::After(timeout))
        {
            tracing::warn!(error = %error, "Flushing the ledger's writes failed.");
        }
    }
}

/// What to do with the event at `source_offset` filed under `key`, sent as
/// a DTO of `dto_hash`, by what `store` holds.
fn judge(
    store: &PartitionStore,
    strict: bool,
    source_offset: i64,
    key: &LedgerKey,
    dto_hash: u64,
    resend_delivered: bool,
) -> Admit {
    let slot = store.get(key.hash).copied();
    if strict && let Some(slot) = slot {
        let same_event = slot.source_offset == source_offset;
        match slot.outcome {
            Outcome::Unknown | Outcome::Held if same_event => {
                return Admit::AlreadyParked {
                    outcome: slot.outcome,
                };
            }
            // A call of this event went out and its answer is lost.
            Outcome::Intent if !slot.mine && same_event => {
                return Admit::Park {
                    outcome: Outcome::Unknown,
                    behind: None,
                };
            }
            Outcome::Intent | Outcome::Unknown | Outcome::Held => {
                return Admit::Park {
                    outcome: Outcome::Held,
                    behind: Some(key.shown()),
                };
            }
            Outcome::Accepted | Outcome::DeadLettered | Outcome::Failed => {}
        }
    }
    if strict && store.order_blocked(key.order) {
        return Admit::Park {
            outcome: Outcome::Held,
            behind: Some("an earlier event of the order".into()),
        };
    }
    match slot {
        Some(slot) if slot.outcome == Outcome::Accepted && slot.dto_hash == dto_hash => {
            if resend_delivered {
                Admit::Send { correction: false }
            } else {
                Admit::Duplicate {
                    earlier_offset: slot.source_offset,
                }
            }
        }
        Some(slot) if slot.outcome == Outcome::Accepted => Admit::Send { correction: true },
        _ => Admit::Send { correction: false },
    }
}

#[derive(Debug, thiserror::Error)]
/// Why the ledger could not start.
pub enum LedgerError {
    #[error(transparent)]
    Topic(#[from] LedgerTopicError),
    #[error("cannot create the ledger's Kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("cannot start the ledger's follower thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The position of a source record, as entries name it.
pub fn position_of(source: &SourceRecord) -> Position {
    Position {
        topic: source.id.topic.clone(),
        partition: source.id.partition,
        offset: source.offset,
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::event::OrderType;

    fn key(order_id: &str, order_type: OrderType) -> LedgerKey {
        let event = PaymentEvent {
            car_no: "浙A1".into(),
            order_id: order_id.into(),
            park_id: "p1".into(),
            pay_time: Utc::now(),
            order_type,
            pay_fee: 1,
            pay_order_id: None,
            pay_method: None,
        };
        LedgerKey::of(&event, &KeyField::DEFAULT)
    }

    fn file(store: &mut PartitionStore, key: &LedgerKey, at: i64, outcome: Outcome, mine: bool) {
        let slot = Slot {
            ledger_offset: at,
            source_offset: at,
            dto_hash: 7,
            at_secs: 1,
            outcome,
            mine,
        };
        store.apply(key.hash, key.order, at, Some(slot));
    }

    #[test]
    fn an_accepted_key_is_a_duplicate_with_its_dto_and_a_correction_without() {
        let mut store = PartitionStore::default();
        let payment = key("o1", OrderType::Payment);
        file(&mut store, &payment, 3, Outcome::Accepted, false);
        for strict in [false, true] {
            assert_eq!(
                judge(&store, strict, 9, &payment, 7, false),
                Admit::Duplicate { earlier_offset: 3 }
            );
            assert_eq!(
                judge(&store, strict, 9, &payment, 8, false),
                Admit::Send { correction: true }
            );
            assert_eq!(
                judge(&store, strict, 9, &payment, 7, true),
                Admit::Send { correction: false },
                "--resend-delivered"
            );
        }
        let refund = key("o1", OrderType::Refund);
        assert_eq!(
            judge(&store, true, 10, &refund, 7, false),
            Admit::Send { correction: false }
        );
    }

    #[test]
    fn strict_mode_parks_a_lost_answer_and_holds_its_order_record_mode_sends() {
        let mut store = PartitionStore::default();
        let payment = key("o1", OrderType::Payment);
        let refund = key("o1", OrderType::Refund);
        // An intent read back (a replica died during the call).
        file(&mut store, &payment, 5, Outcome::Intent, false);
        assert_eq!(
            judge(&store, true, 5, &payment, 7, false),
            Admit::Park {
                outcome: Outcome::Unknown,
                behind: None
            }
        );
        assert_eq!(
            judge(&store, false, 5, &payment, 7, false),
            Admit::Send { correction: false },
            "record mode sends again"
        );
        // The same payment published again, and the order's refund, wait behind it.
        assert!(matches!(
            judge(&store, true, 6, &payment, 7, false),
            Admit::Park {
                outcome: Outcome::Held,
                ..
            }
        ));
        assert!(matches!(
            judge(&store, true, 7, &refund, 7, false),
            Admit::Park {
                outcome: Outcome::Held,
                ..
            }
        ));
        // Parked already: the same event read again is not filed twice.
        file(&mut store, &payment, 8, Outcome::Unknown, false);
        assert_eq!(
            judge(&store, true, 8, &payment, 7, false),
            Admit::AlreadyParked {
                outcome: Outcome::Unknown
            }
        );
        // Resolved: the order flows again.
        file(&mut store, &payment, 9, Outcome::Accepted, false);
        assert_eq!(
            judge(&store, true, 7, &refund, 7, false),
            Admit::Send { correction: false }
        );
        // This process's own intent (a call under way here) holds nothing.
        let other = key("o2", OrderType::Payment);
        file(&mut store, &other, 10, Outcome::Intent, true);
        assert_eq!(
            judge(&store, true, 11, &key("o2", OrderType::Refund), 7, false),
            Admit::Send { correction: false }
        );
    }
}
