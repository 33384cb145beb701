//! Blocking reads of the brokers: a topic's partitions, partition counts, a
//! group's committed offsets (with the metadata paysync commits beside them)
//! and partition ends. Each blocks for up to [`REQUEST_TIMEOUT`] per request,
//! so callers run them off the runtime's workers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use crate::partition::PartitionId;

/// How long one metadata or offsets request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The partition ids of `topic`, or `None` when the brokers do not know it.
/// Blocks for up to [`REQUEST_TIMEOUT`].
pub fn topic_partitions<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
) -> KafkaResult<Option<Vec<i32>>> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect()))
}

/// How many partitions each of `topics` has, for those the brokers know.
/// Blocks for up to [`REQUEST_TIMEOUT`] per topic.
pub fn partition_counts<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topics: &[String],
) -> KafkaResult<Vec<(String, usize)>> {
    let mut counts = Vec::with_capacity(topics.len());
    for topic in topics {
        if let Some(partitions) = topic_partitions(consumer, topic)? {
            counts.push((topic.clone(), partitions.len()));
        }
    }
    Ok(counts)
}

/// Like [`topic_partitions`], waiting up to `patience` for a topic created
/// just before start-up (a compose job, a test) to appear in metadata. Blocks.
pub fn wait_for_topic<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    patience: Duration,
) -> KafkaResult<Option<Vec<i32>>> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(partitions) = topic_partitions(consumer, topic)? {
            return Ok(Some(partitions));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The group's committed offset per partition (`None` where it has none). Blocks.
pub fn committed_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partitions: &[i32],
) -> KafkaResult<HashMap<i32, Option<i64>>> {
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, REQUEST_TIMEOUT)?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect())
}

/// What a group committed for one partition: the position and the metadata
/// text beside it (paysync's completion map, or another tool's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
}

/// The group's committed offset and its metadata for each partition that has
/// one. Blocks for up to [`REQUEST_TIMEOUT`].
pub fn committed_with_metadata<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    partitions: &[PartitionId],
) -> KafkaResult<HashMap<PartitionId, Committed>> {
    let mut list = TopicPartitionList::new();
    for id in partitions {
        list.add_partition(&id.topic, id.partition);
    }
    let committed = consumer.committed_offsets(list, REQUEST_TIMEOUT)?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| {
            let Offset::Offset(offset) = e.offset() else {
                return None;
            };
            // rdkafka panics on metadata that is not UTF-8; Apache Kafka
            // stores it as a string, but another client may write raw bytes.
            let metadata =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.metadata().to_owned()))
                    .unwrap_or_default();
            Some((PartitionId::from(e), Committed { offset, metadata }))
        })
        .collect())
}

/// Each partition's end (high watermark) where it could be read; blocks for
/// up to [`REQUEST_TIMEOUT`] per partition.
pub fn end_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    partitions: &[PartitionId],
) -> HashMap<PartitionId, i64> {
    partitions
        .iter()
        .filter_map(|id| {
            let (_, high) = consumer
                .fetch_watermarks(&id.topic, id.partition, REQUEST_TIMEOUT)
                .ok()?;
            Some((id.clone(), high))
        })
        .collect()
}
