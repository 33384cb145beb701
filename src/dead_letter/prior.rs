//! Dead letters an earlier owner of a partition may have written without
//! the group learning of it: it stopped (a crash, a lost session) after the
//! copy was acknowledged and before a commit named the offset finished.
//!
//! Each commit carries a look-back time (see `commit_metadata`): no
//! copy of an offset at or above the committed one was written before it.
//! A new owner about to dead-letter such an offset reads the dead-letter
//! topic from that time on, once per partition it took over, and does not
//! write a copy of an offset it finds there. A copy's timestamp comes from
//! the writer's clock, the same clock as the look-back time; the margin
//! covers topics stamped by the broker (`LogAppendTime`). A read that fails
//! is not remembered: the writer tries again while the partition is held
//! (`DeadLetterProducer::written_before`), and only when the topic stays
//! unreadable past its patience is the answer "not found": a second copy
//! is safe, a missing one is not.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::OnceCell;

use super::reader;
use crate::commit_metadata::LookBack;
use crate::config::Settings;
use crate::kafka;
use crate::partition::PartitionId;

/// How far before the look-back time the dead-letter topic is read.
const CLOCK_MARGIN: Duration = Duration::from_secs(60);

/// One ownership's view of the copies earlier owners wrote, read when first needed.
#[derive(Debug)]
pub struct PriorCopies {
    source: PartitionId,
    pub look_back: LookBack,
    found: OnceCell<HashSet<i64>>,
}

impl PriorCopies {
    pub fn new(source: PartitionId, look_back: LookBack) -> PriorCopies {
        PriorCopies {
            source,
            look_back,
            found: OnceCell::new(),
        }
    }

    /// The source partition taken over.
    pub fn source(&self) -> &PartitionId {
        &self.source
    }

    /// Whether this group's dead-letter topic holds a copy of `offset` of
    /// the source partition written since the look-back time. The first
    /// call that succeeds reads the topic (on a blocking thread); a failed
    /// read is returned and the next call reads again.
    pub async fn holds(&self, settings: &Settings, offset: i64) -> anyhow::Result<bool> {
        if !self.look_back.covers(offset) {
            return Ok(false);
        }
        let found = self
            .found
            .get_or_try_init(|| async {
                let (settings, source, since_ms) = (
                    settings.clone(),
                    self.source.clone(),
                    self.look_back.since_ms,
                );
                tokio::task::spawn_blocking(move || copies_since(&settings, &source, since_ms))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|read| read)
            })
            .await?;
        Ok(found.contains(&offset))
    }

    /// The topic stayed unreadable: from now on nothing counts as written
    /// before, so copies are written (perhaps a second time).
    pub fn give_up(&self) {
        let _ = self.found.set(HashSet::new());
    }
}

/// The source offsets of `source` that this group dead-lettered since
/// `since_ms` (less the clock margin). Blocks.
fn copies_since(
    settings: &Settings,
    source: &PartitionId,
    since_ms: i64,
) -> anyhow::Result<HashSet<i64>> {
    let topic = &settings.kafka.dlq_topic;
    let group = &settings.kafka.group_id;
    let consumer = reader::consumer(settings, &format!("{group}.dlq-look-back"))?;
    let partitions = kafka::queries::topic_partitions(&consumer, topic)?.unwrap_or_default();
    let from = since_ms.saturating_sub(CLOCK_MARGIN.as_millis() as i64);
    let mut times = TopicPartitionList::new();
    for partition in &partitions {
        times.add_partition_offset(topic, *partition, Offset::Offset(from))?;
    }
    let starts: HashMap<i32, i64> = consumer
        .offsets_for_times(times, kafka::queries::REQUEST_TIMEOUT)
        .context("cannot look up dead-letter offsets by time")?
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => (e.partition(), offset),
            // Nothing written since: start past the end.
            _ => (e.partition(), i64::MAX),
        })
        .collect();
    let copies = reader::read_matching(&consumer, topic, &starts, |r| {
        r.source_topic == source.topic
            && r.source_partition == Some(source.partition)
            && r.consumer_group.as_deref() == Some(group.as_str())
    })?
    .records
    .into_iter()
    .filter_map(|r| r.source_offset)
    .collect::<HashSet<i64>>();
    tracing::info!(partition = %source, copies = copies.len(), "Read the dead-letter topic for copies written before the takeover.");
    Ok(copies)
}
