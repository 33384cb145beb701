//! The ledger topic: made sure of at start (created compacted when missing
//! and `ledger.create_topic` allows, never silently without it), which of
//! its partitions holds a source partition's entries, and reading it.
//!
//! The ledger is co-partitioned with the source, as Kafka Streams does with
//! its changelogs: source partition *p* (of any source topic) files its
//! entries in ledger partition *p mod n*. A replica restores only the
//! ledger partitions of the source partitions it owns, and an order's events
//! meet their ledger entries as long as the producer keys them by order (what
//! per-order ordering asks already).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::entry::{Entry, LedgerKey};
use crate::config::Settings;
use crate::kafka;
use crate::kafka::compacted::{self, CompactedTopic, CompactedTopicError};

/// The ledger partition that holds source partition `source_partition`'s entries.
pub fn partition_for(source_partition: i32, ledger_partitions: i32) -> i32 {
    source_partition.rem_euclid(ledger_partitions.max(1))
}

/// Makes sure the ledger topic exists and is compacted; returns its
/// partition count. `wanted_partitions` is the most partitions a source
/// topic has (a topic paysync creates gets as many); `consumer` is the
/// caller's, already connected, for the metadata. Blocks.
pub fn ensure<C: ConsumerContext>(
    settings: &Settings,
    consumer: &impl Consumer<C>,
    wanted_partitions: i32,
) -> Result<i32, CompactedTopicError> {
    let spec = CompactedTopic {
        what: "ledger",
        topic: settings.ledger.topic(&settings.kafka.group_id),
        partitions: wanted_partitions,
        create: settings.ledger.create_topic,
        create_key: "ledger.create_topic",
        replication_factor: settings.ledger.replication_factor,
        instead: "or set ledger.mode = \"off\"",
    };
    let partitions = compacted::ensure(settings, consumer, &spec)?;
    if partitions < wanted_partitions {
        tracing::warn!(
            topic = %spec.topic,
            partitions,
            source_partitions = wanted_partitions,
            "The ledger topic has fewer partitions than a source topic: several source partitions share one, and a replica restores more than it owns."
        );
    }
    Ok(partitions)
}

/// Writes entries for an operator's command (`ledger resolve`, a redrive
/// to the API), waiting for each acknowledgement.
pub struct EntryWriter {
    producer: FutureProducer,
    topic: String,
}

impl EntryWriter {
    pub fn new(settings: &Settings) -> anyhow::Result<EntryWriter> {
        Ok(EntryWriter {
            producer: kafka::clients::durable_producer(settings).create()?,
            topic: settings.ledger.topic(&settings.kafka.group_id),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes `entry` under `key` in ledger partition `partition`.
    pub async fn write(&self, partition: i32, key: &str, entry: &Entry) -> anyhow::Result<()> {
        let value = entry.encode();
        let record = FutureRecord::to(&self.topic)
            .partition(partition)
            .key(key.as_bytes())
            .payload(&value);
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)
            .with_context(|| format!("cannot write to the ledger topic {:?}", self.topic))?;
        Ok(())
    }
}

/// One entry as read from the topic.
#[derive(Debug, Clone)]
pub struct ReadEntry {
    pub partition: i32,
    pub offset: i64,
    pub key: LedgerKey,
    /// `None`: a tombstone.
    pub entry: Option<Entry>,
}

impl ReadEntry {
    /// Decodes one ledger record; `None` for a record with no key or a value
    /// this paysync cannot read (logged and skipped: it must not count as a
    /// tombstone).
    pub fn of(message: &impl Message) -> Option<ReadEntry> {
        let key = String::from_utf8_lossy(message.key()?).into_owned();
        let entry = match message.payload().map(Entry::decode) {
            None => None,
            Some(Ok(entry)) => Some(entry),
            Some(Err(error)) => {
                tracing::warn!(
                    partition = message.partition(),
                    offset = message.offset(),
                    error = %error,
                    "A ledger entry could not be read; it is skipped."
                );
                return None;
            }
        };
        let order_id = entry.as_ref().map_or("", |e| e.order_id.as_str());
        let key = LedgerKey::from_text(key, order_id);
        Some(ReadEntry {
            partition: message.partition(),
            offset: message.offset(),
            key,
            entry,
        })
    }
}

/// Every live entry of the topic (the latest per key, tombstones applied),
/// read from the beginning to each partition's end. For the operator's
/// commands, which read the whole ledger. Blocks.
pub fn read_all(settings: &Settings) -> anyhow::Result<Vec<ReadEntry>> {
    let topic = settings.ledger.topic(&settings.kafka.group_id);
    let consumer: BaseConsumer = kafka::clients::tool_consumer(
        settings,
        &format!("{}.ledger-tool", settings.kafka.group_id),
    )
    .create()?;
    let partitions = kafka::queries::topic_partitions(&consumer, &topic)?
        .ok_or_else(|| anyhow::anyhow!("the ledger topic {topic:?} does not exist"))?;
    let mut ends = HashMap::new();
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) =
            consumer.fetch_watermarks(&topic, partition, kafka::queries::REQUEST_TIMEOUT)?;
        if high > low {
            ends.insert(partition, high);
            list.add_partition_offset(&topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&list)?;
    let mut latest: HashMap<String, ReadEntry> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !ends.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading the ledger topic {topic:?} did not finish within 5 minutes"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            // A partition whose last records are gone (compaction) ends at
            // its position.
            if let Ok(positions) = consumer.position() {
                for element in positions.elements() {
                    if let Offset::Offset(position) = element.offset()
                        && ends
                            .get(&element.partition())
                            .is_some_and(|end| position >= *end)
                    {
                        ends.remove(&element.partition());
                    }
                }
            }
            continue;
        };
        let message = message?;
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&message.partition());
        }
        if let Some(read) = ReadEntry::of(&message) {
            match read.entry {
                Some(_) => {
                    latest.insert(read.key.text.clone(), read);
                }
                None => {
                    latest.remove(&read.key.text);
                }
            }
        }
    }
    let mut entries: Vec<ReadEntry> = latest.into_values().collect();
    entries.sort_by_key(|e| (e.partition, e.offset));
    Ok(entries)
}
