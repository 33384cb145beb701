//! Reading the dead-letter topic back (`paysync dlq inspect`, the console):
//! the filter, the reads, the table. Reads are blocking librdkafka work:
//! run them on blocking threads.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::{DeadLetterRecord, Payload};
use crate::config::Settings;
use crate::kafka;

/// Which dead letters to select.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub class: Option<String>,
    pub reason: Option<String>,
    pub code: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The TOP sub_code, e.g. `isv.invalid-parameter`.
    pub sub_code: Option<String>,
    /// The event's `park_id`, read from the value.
    pub park: Option<String>,
    /// The event's `order_id`, read from the value.
    pub order: Option<String>,
}

impl Filter {
    /// The group that keeps a redrive's cursor by default: one per filter,
    /// so a filtered redrive never moves the cursor of another filter past
    /// records it did not select.
    pub fn default_group(&self, settings: &Settings) -> String {
        let base = format!("{}.redrive", settings.kafka.group_id);
        if self.is_empty() {
            return base;
        }
        // The first five fields hash as they always did, so a filter keeps
        // its cursor across versions; the later ones join only when set.
        let mut text = format!(
            "Filter {{ class: {:?}, reason: {:?}, code: {:?}, since: {:?}, until: {:?} }}",
            self.class, self.reason, self.code, self.since, self.until
        );
        for (name, value) in [
            ("sub_code", &self.sub_code),
            ("park", &self.park),
            ("order", &self.order),
        ] {
            if let Some(value) = value {
                text.push_str(&format!(" {name}: {value:?}"));
            }
        }
        format!("{base}.{:08x}", crc32fast::hash(text.as_bytes()))
    }

    /// Whether it selects every record.
    pub fn is_empty(&self) -> bool {
        self.class.is_none()
            && self.reason.is_none()
            && self.code.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.sub_code.is_none()
            && self.park.is_none()
            && self.order.is_none()
    }

    pub fn matches(&self, record: &DeadLetterRecord) -> bool {
        self.class.as_ref().is_none_or(|c| *c == record.class)
            && self.reason.as_ref().is_none_or(|r| *r == record.reason)
            && self
                .code
                .as_ref()
                .is_none_or(|c| record.code.as_ref() == Some(c))
            && self
                .since
                .is_none_or(|t| record.dead_lettered_at.is_some_and(|at| at >= t))
            && self
                .until
                .is_none_or(|t| record.dead_lettered_at.is_some_and(|at| at < t))
            && self
                .sub_code
                .as_ref()
                .is_none_or(|c| record.sub_code.as_ref() == Some(c))
            && (self.park.is_none() && self.order.is_none() || self.matches_event(record))
    }

    /// The park and order filters, against the fields of the record's value.
    fn matches_event(&self, record: &DeadLetterRecord) -> bool {
        let value: serde_json::Value = record
            .original
            .value
            .as_deref()
            .and_then(|value| serde_json::from_slice(value).ok())
            .unwrap_or_default();
        self.park
            .as_deref()
            .is_none_or(|p| event_field(&value, "park_id") == Some(p))
            && self
                .order
                .as_deref()
                .is_none_or(|o| event_field(&value, "order_id") == Some(o))
    }
}

pub(super) fn consumer(settings: &Settings, group: &str) -> anyhow::Result<BaseConsumer> {
    kafka::clients::tool_consumer(settings, group)
        .create()
        .context("cannot create a Kafka client")
}

/// What a read of the dead-letter topic kept, and how far it read.
pub(super) struct Scanned {
    /// The records kept, in partition and offset order.
    pub records: Vec<DeadLetterRecord>,
    /// How many records were read, kept or not.
    pub examined: usize,
    /// The end each partition was read to (its high watermark when the
    /// read began); partitions with nothing to read are absent.
    pub ends: HashMap<i32, i64>,
}

/// Reads the dead-letter topic from each partition's `start` (or its
/// beginning) to the high watermark it had when the read began and keeps the
/// records `keep` selects, so memory holds what the caller wants rather than
/// the whole topic. Blocks.
pub(super) fn read_matching(
    consumer: &BaseConsumer,
    topic: &str,
    starts: &HashMap<i32, i64>,
    mut keep: impl FnMut(&DeadLetterRecord) -> bool,
) -> anyhow::Result<Scanned> {
    let mut records = Vec::new();
    let (examined, ends) = scan(consumer, topic, starts, |record| {
        if keep(&record) {
            records.push(record);
        }
    })?;
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(Scanned {
        records,
        examined,
        ends,
    })
}

/// Hands every record from each partition's `start` (or its beginning) to
/// its end when the read began to `visit`, each partition in offset order;
/// returns how many it read and the ends. Blocks.
fn scan(
    consumer: &BaseConsumer,
    topic: &str,
    starts: &HashMap<i32, i64>,
    mut visit: impl FnMut(DeadLetterRecord),
) -> anyhow::Result<(usize, HashMap<i32, i64>)> {
    let Some(partitions) = kafka::queries::topic_partitions(consumer, topic)? else {
        bail!("the dead-letter topic {topic:?} does not exist");
    };
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in partitions {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition, kafka::queries::REQUEST_TIMEOUT)?;
        let start = starts.get(&partition).copied().unwrap_or(low).max(low);
        if start < high {
            tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
            ends.insert(partition, high);
        }
    }
    let mut examined = 0;
    if ends.is_empty() {
        return Ok((examined, ends));
    }
    consumer.assign(&tpl)?;
    let mut unread = ends.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !unread.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading the dead-letter topic timed out"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let Some(end) = unread.get(&message.partition()).copied() else {
            continue;
        };
        if message.offset() >= end {
            continue;
        }
        examined += 1;
        visit(DeadLetterRecord::decode(&message));
        if message.offset() + 1 >= end {
            unread.remove(&message.partition());
        }
    }
    Ok((examined, ends))
}

/// A text field of an event's JSON by its snake_case name, or the
/// camelCase one the decoder accepts too (`park_id` or `parkId`).
pub fn event_field<'a>(value: &'a serde_json::Value, snake: &str) -> Option<&'a str> {
    let camel: String = snake
        .split('_')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part.to_owned()
            } else {
                let mut chars = part.chars();
                chars.next().map_or(String::new(), |c| {
                    c.to_ascii_uppercase().to_string() + chars.as_str()
                })
            }
        })
        .collect();
    value
        .get(snake)
        .or_else(|| value.get(&camel))
        .and_then(|v| v.as_str())
}

fn inspect_consumer(settings: &Settings) -> anyhow::Result<BaseConsumer> {
    consumer(
        settings,
        &format!("{}.dlq-inspect", settings.kafka.group_id),
    )
}

/// Every dead letter matching `filter`. Blocks: run it on a blocking thread.
pub fn inspect(settings: &Settings, filter: &Filter) -> anyhow::Result<Vec<DeadLetterRecord>> {
    let consumer = inspect_consumer(settings)?;
    let scanned = read_matching(&consumer, &settings.kafka.dlq_topic, &HashMap::new(), |r| {
        filter.matches(r)
    })?;
    Ok(scanned.records)
}

/// How many dead letters match a filter, and the newest of them.
#[derive(Default)]
pub struct Newest {
    pub matching: usize,
    /// At most the number asked for, newest dead-lettered first.
    pub records: Vec<DeadLetterRecord>,
}

impl Newest {
    /// Counts a match and keeps it while it may be among the `keep` newest,
    /// holding at most twice `keep` records at any time.
    fn offer(&mut self, record: DeadLetterRecord, keep: usize) {
        self.matching += 1;
        self.records.push(record);
        if self.records.len() >= 2 * keep.max(1) {
            self.trim(keep);
        }
    }

    /// Newest first, `keep` of them.
    fn trim(&mut self, keep: usize) {
        self.records.sort_by(|a, b| {
            (b.dead_lettered_at, b.partition, b.offset).cmp(&(
                a.dead_lettered_at,
                a.partition,
                a.offset,
            ))
        });
        self.records.truncate(keep);
    }
}

/// The `keep` most recently dead-lettered records matching `filter`, and
/// how many match in all; memory holds at most twice `keep` records
/// whatever the topic's size. Blocks: run it on a blocking thread.
pub fn newest(settings: &Settings, filter: &Filter, keep: usize) -> anyhow::Result<Newest> {
    let consumer = inspect_consumer(settings)?;
    let mut newest = Newest::default();
    scan(&consumer, &settings.kafka.dlq_topic, &HashMap::new(), |r| {
        if filter.matches(&r) {
            newest.offer(r, keep);
        }
    })?;
    newest.trim(keep);
    Ok(newest)
}

/// A table for people.
pub fn render_table(records: &[DeadLetterRecord]) -> String {
    let mut out = format!(
        "{:<10} {:<24} {:<17} {:<18} {:<5} {:<28} {:<32} {}\n",
        "DLQ", "DEAD-LETTERED AT", "CLASS", "REASON", "CODE", "SOURCE", "TRACE", "MESSAGE"
    );
    for r in records {
        let source = format!(
            "{}/{}@{}",
            r.source_topic,
            r.source_partition.map_or("?".into(), |p| p.to_string()),
            r.source_offset.map_or("?".into(), |o| o.to_string())
        );
        let at = r
            .dead_lettered_at
            .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        let mut message: String = r.message.chars().take(80).collect();
        if r.left_out {
            // The copy was too large for the topic; redrive reads the source.
            message.insert_str(0, "[value left out] ");
        }
        out.push_str(&format!(
            "{:<10} {:<24} {:<17} {:<18} {:<5} {:<28} {:<32} {}\n",
            format!("{}@{}", r.partition, r.offset),
            at,
            r.class,
            r.reason,
            r.code.as_deref().unwrap_or("-"),
            source,
            r.trace_id.as_deref().unwrap_or("-"),
            message
        ));
    }
    out.push_str(&format!("{} record(s)\n", records.len()));
    out
}

/// The record at `topic`/`partition`@`offset`, read on its own; `None`
/// when it is gone (retention, compaction) or not written yet. Blocks.
fn read_at(
    settings: &Settings,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<Option<OwnedMessage>> {
    let consumer = consumer(settings, &format!("{}.redrive", settings.kafka.group_id))?;
    let (low, high) =
        consumer.fetch_watermarks(topic, partition, kafka::queries::REQUEST_TIMEOUT)?;
    if offset < low || offset >= high {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + kafka::queries::REQUEST_TIMEOUT;
    while std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message?;
            // A later offset: this one was compacted away.
            return Ok((message.offset() == offset).then(|| message.detach()));
        }
    }
    bail!("cannot read the record {topic}/{partition}@{offset} back")
}

/// The source record a dead letter came from, read back from its topic (for
/// a dead letter that left parts of it out); `None` when it is gone. Blocks.
pub(super) fn read_source(
    settings: &Settings,
    record: &DeadLetterRecord,
) -> anyhow::Result<Option<Payload>> {
    let (Some(partition), Some(offset)) = (record.source_partition, record.source_offset) else {
        return Ok(None);
    };
    Ok(read_at(settings, &record.source_topic, partition, offset)?
        .map(|message| Payload::of(&message)))
}

/// One dead letter, by its position in the dead-letter topic. Blocks.
pub fn read_dead_letter(
    settings: &Settings,
    partition: i32,
    offset: i64,
) -> anyhow::Result<Option<DeadLetterRecord>> {
    Ok(
        read_at(settings, &settings.kafka.dlq_topic, partition, offset)?
            .map(|message| DeadLetterRecord::decode(&message)),
    )
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;
    use crate::dead_letter::header;

    fn dead_letter(partition: i32, offset: i64, at_secs: i64) -> DeadLetterRecord {
        let at = DateTime::from_timestamp(at_secs, 0).unwrap().to_rfc3339();
        let headers = OwnedHeaders::new().insert(Header {
            key: header::DEAD_LETTERED_AT,
            value: Some(at.as_str()),
        });
        let message = OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "payments.dlq".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            Some(headers),
        );
        DeadLetterRecord::decode(&message)
    }

    #[test]
    fn the_newest_are_kept_newest_first_and_the_rest_only_counted() {
        let mut newest = Newest::default();
        let mut most_held = 0;
        // Three partitions whose times interleave, as a topic's do.
        for offset in 0..1_000_i64 {
            for partition in 0..3 {
                let at = offset * 3 + i64::from((partition * 2) % 3);
                newest.offer(dead_letter(partition, offset, at), 10);
                most_held = most_held.max(newest.records.len());
            }
        }
        newest.trim(10);
        assert_eq!(newest.matching, 3_000);
        assert!(most_held <= 20, "held {most_held} records at once");
        let times: Vec<i64> = newest
            .records
            .iter()
            .map(|r| r.dead_lettered_at.unwrap().timestamp())
            .collect();
        assert_eq!(times, (2_990..3_000).rev().collect::<Vec<_>>());
    }
}
