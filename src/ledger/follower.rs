//! The ledger's follower: the state the pipeline's tasks and the follower
//! thread share, the ledger partitions this replica holds, and the thread
//! that restores them to their end, keeps following them, drops what passes
//! the horizon and releases what no owned partition needs.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::entry;
use super::store::{PartitionStore, Slot, seconds};
use super::topic;
use crate::kafka;
use crate::metrics::Metrics;

/// How often the follower drops entries past the horizon from memory.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);
/// How long a ledger partition no owned source partition needs is still
/// followed: a rebalance that revokes every partition and assigns most of
/// them back (the classic protocol's) restores nothing again.
pub(super) const RELEASE_GRACE: Duration = Duration::from_secs(60);

/// One ledger partition as this replica holds it.
pub(super) struct Held {
    pub(super) store: PartitionStore,
    /// Read to its end since it was assigned: events may be judged.
    pub(super) ready: bool,
    pub(super) started: Instant,
    /// Since when no owned source partition needs it (followed
    /// [`RELEASE_GRACE`] longer, then dropped).
    pub(super) released: Option<Instant>,
}

/// What the follower thread is told.
pub(super) enum Follow {
    Add(Vec<i32>),
    Stop,
}

/// The state the pipeline's tasks and the follower thread share.
pub(super) struct Shared {
    pub(super) topic: String,
    pub(super) retain: Duration,
    pub(super) partitions: Mutex<HashMap<i32, Held>>,
    /// Bumped when a partition finishes its restore.
    pub(super) restored: tokio::sync::watch::Sender<u64>,
    pub(super) metrics: Arc<Metrics>,
    /// For the follower's tombstones of entries past the horizon.
    pub(super) writer: FutureProducer,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<i32, Held>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn horizon(&self) -> u32 {
        seconds(Utc::now().timestamp() - self.retain.as_secs() as i64)
    }

    /// The follower: reads the wanted ledger partitions from their start,
    /// marks each restored at its end, and keeps following them (the
    /// operator's resolutions, another replica's writes). Runs on its own
    /// thread until the ledger is dropped.
    pub(super) fn follow(
        self: Arc<Self>,
        consumer: BaseConsumer<FollowerContext>,
        commands: mpsc::Receiver<Follow>,
    ) {
        let mut pruned = Instant::now();
        loop {
            loop {
                match commands.try_recv() {
                    Ok(Follow::Add(partitions)) => self.assign(&consumer, &partitions, true),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Ok(Follow::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            match consumer.poll(Duration::from_millis(100)) {
                // This replica's own writes come back too: memory has them
                // already, and they are not decoded again.
                Some(Ok(message)) if self.applied_already(&message) => {}
                Some(Ok(message)) => {
                    if let Some(read) = topic::ReadEntry::of(&message) {
                        self.apply_read(read);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => self.restored(partition),
                Some(Err(error)) => {
                    tracing::warn!(error = %error, topic = %self.topic, "Reading the ledger failed; retrying.");
                }
                None => {}
            }
            let expired = self.drop_released();
            if !expired.is_empty() {
                self.assign(&consumer, &expired, false);
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = Instant::now();
                let horizon = self.horizon();
                let dropped: usize = self
                    .lock()
                    .values_mut()
                    .map(|held| held.store.prune(horizon))
                    .sum();
                if dropped > 0 {
                    tracing::info!(
                        entries = dropped,
                        "Ledger entries past the horizon dropped from memory."
                    );
                }
                self.publish();
            }
        }
    }

    /// Whether memory holds this record's key at its offset or later.
    pub(super) fn applied_already(&self, message: &impl Message) -> bool {
        let Some(key) = message.key() else {
            return false;
        };
        let hash = entry::key_hash(key);
        self.lock()
            .get(&message.partition())
            .and_then(|held| held.store.get(hash))
            .is_some_and(|slot| slot.ledger_offset >= message.offset())
    }

    /// Drops the partitions released longer than [`RELEASE_GRACE`] ago;
    /// returns them.
    pub(super) fn drop_released(&self) -> Vec<i32> {
        let mut partitions = self.lock();
        let expired: Vec<i32> = partitions
            .iter()
            .filter(|(_, held)| {
                held.released
                    .is_some_and(|at| at.elapsed() >= RELEASE_GRACE)
            })
            .map(|(partition, _)| *partition)
            .collect();
        for partition in &expired {
            partitions.remove(partition);
        }
        expired
    }

    pub(super) fn assign(
        &self,
        consumer: &BaseConsumer<FollowerContext>,
        partitions: &[i32],
        add: bool,
    ) {
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            let offset = if add {
                Offset::Beginning
            } else {
                Offset::Invalid
            };
            if let Err(error) = list.add_partition_offset(&self.topic, *partition, offset) {
                tracing::warn!(error = %error, "Cannot list a ledger partition.");
            }
        }
        let changed = if add {
            consumer.incremental_assign(&list)
        } else {
            consumer.incremental_unassign(&list)
        };
        if let Err(error) = changed {
            tracing::error!(error = %error, topic = %self.topic, "Cannot follow the ledger's partitions.");
        }
        if add {
            // An empty partition is restored at once; the others at their end.
            for partition in partitions {
                if let Ok((low, high)) = consumer.fetch_watermarks(
                    &self.topic,
                    *partition,
                    kafka::queries::REQUEST_TIMEOUT,
                ) && high <= low
                {
                    self.restored(*partition);
                }
            }
        }
    }

    /// Applies one entry read from the topic. An entry past the horizon is
    /// dropped, and a tombstone written so compaction removes it.
    pub(super) fn apply_read(&self, read: topic::ReadEntry) {
        let horizon = self.horizon();
        let slot = read
            .entry
            .as_ref()
            .map(|entry| Slot::of(entry, read.offset, false))
            .filter(|slot| slot.at_secs >= horizon);
        if slot.is_none() && read.entry.is_some() {
            let tombstone: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                .partition(read.partition)
                .key(read.key.text.as_bytes());
            // Compaction's business: nothing waits for it.
            drop(self.writer.send_result(tombstone));
        }
        if let Some(held) = self.lock().get_mut(&read.partition) {
            held.store
                .apply(read.key.hash, read.key.order, read.offset, slot);
        }
    }

    pub(super) fn restored(&self, partition: i32) {
        let mut partitions = self.lock();
        let Some(held) = partitions.get_mut(&partition) else {
            return;
        };
        if held.ready {
            return;
        }
        held.ready = true;
        let took = held.started.elapsed();
        self.metrics.ledger_restore_seconds.set(took.as_secs_f64());
        tracing::info!(
            topic = %self.topic,
            partition,
            entries = held.store.len(),
            unknown = held.store.unknown(),
            took_ms = took.as_millis() as u64,
            "Ledger partition restored; its events may be sent."
        );
        drop(partitions);
        self.restored.send_modify(|generation| *generation += 1);
        self.publish();
    }

    pub(super) fn publish(&self) {
        let partitions = self.lock();
        let metrics = &self.metrics;
        let (mut entries, mut unknown, mut held_events, mut bytes, mut restoring) = (0, 0, 0, 0, 0);
        for held in partitions.values() {
            entries += held.store.len();
            unknown += held.store.unknown();
            held_events += held.store.held();
            bytes += held.store.memory_bytes();
            restoring += usize::from(!held.ready);
        }
        metrics.ledger_entries.set(entries as i64);
        metrics.ledger_unknown_outcomes.set(unknown as i64);
        metrics.ledger_held_events.set(held_events as i64);
        metrics.ledger_memory_bytes.set(bytes as i64);
        metrics.ledger_restoring_partitions.set(restoring as i64);
    }
}

/// The follower's client context: librdkafka reports each partition's end
/// as an error too, and for the follower it is the news it waits for.
pub(super) struct FollowerContext;

impl rdkafka::ClientContext for FollowerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(error = %error, reason, "Ledger reader: Kafka client error.");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for FollowerContext {}
