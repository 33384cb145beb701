//! `paysync dlq inspect` and `paysync dlq redrive`: reading the dead-letter
//! topic back, and sending selected records to their source topic or
//! straight to the API.
//!
//! A redrive keeps its own cursor as the committed offsets of a consumer
//! group (default `<kafka.group_id>.redrive`): records before the cursor were
//! redriven, or passed over by that run's filter, so running the same redrive
//! twice sends nothing twice. Use another `--group` to select again from the
//! start.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Settings;
use crate::event;
use crate::pipeline::client_config;
use crate::pipeline::dead_letter::header;
use crate::top::classify::Disposition;
use crate::top::request::dto_json;

/// One dead letter, as read back.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterRecord {
    pub partition: i32,
    pub offset: i64,
    pub class: String,
    pub reason: String,
    pub code: Option<String>,
    pub message: String,
    pub source_topic: String,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    #[serde(skip)]
    pub value: Option<Vec<u8>>,
    /// The original headers (without `paysync.*`).
    #[serde(skip)]
    pub original_headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Which dead letters to select.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub class: Option<String>,
    pub reason: Option<String>,
    pub code: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
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
    }
}

fn consumer(settings: &Settings, group: &str) -> anyhow::Result<BaseConsumer> {
    let mut config = client_config(settings, &settings.kafka.consumer);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config.create().context("cannot create a Kafka client")
}

/// Reads the dead-letter topic from each partition's `start` (or its
/// beginning) to the high watermark, in partition and offset order.
fn read_from(
    consumer: &BaseConsumer,
    topic: &str,
    starts: &HashMap<i32, i64>,
) -> anyhow::Result<Vec<DeadLetterRecord>> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(found) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    else {
        bail!("the dead-letter topic {topic:?} does not exist");
    };
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in found.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
        let start = starts.get(&partition.id()).copied().unwrap_or(low).max(low);
        if start < high {
            tpl.add_partition_offset(topic, partition.id(), Offset::Offset(start))?;
            ends.insert(partition.id(), high);
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !ends.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading the dead-letter topic timed out"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let Some(end) = ends.get(&message.partition()).copied() else {
            continue;
        };
        if message.offset() >= end {
            continue;
        }
        records.push(parse(&message));
        if message.offset() + 1 >= end {
            ends.remove(&message.partition());
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

fn parse(message: &impl Message) -> DeadLetterRecord {
    let mut paysync = HashMap::new();
    let mut original_headers = Vec::new();
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            if h.key.starts_with("paysync.") {
                paysync.insert(
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                );
            } else {
                original_headers.push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
            }
        }
    }
    let get = |name: &str| paysync.get(name).cloned();
    DeadLetterRecord {
        partition: message.partition(),
        offset: message.offset(),
        class: get(header::CLASS).unwrap_or_default(),
        reason: get(header::REASON).unwrap_or_default(),
        code: get(header::TOP_CODE),
        message: get(header::MESSAGE).unwrap_or_default(),
        source_topic: get(header::SOURCE_TOPIC).unwrap_or_default(),
        source_partition: get(header::SOURCE_PARTITION).and_then(|p| p.parse().ok()),
        source_offset: get(header::SOURCE_OFFSET).and_then(|o| o.parse().ok()),
        dead_lettered_at: get(header::DEAD_LETTERED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        original_headers,
    }
}

/// Every dead letter matching `filter`.
pub fn inspect(settings: &Settings, filter: &Filter) -> anyhow::Result<Vec<DeadLetterRecord>> {
    let consumer = consumer(
        settings,
        &format!("{}.dlq-inspect", settings.kafka.group_id),
    )?;
    Ok(
        read_from(&consumer, &settings.kafka.dlq_topic, &HashMap::new())?
            .into_iter()
            .filter(|r| filter.matches(r))
            .collect(),
    )
}

/// A table for people.
pub fn render_table(records: &[DeadLetterRecord]) -> String {
    let mut out = format!(
        "{:<10} {:<24} {:<17} {:<18} {:<5} {:<28} {}\n",
        "DLQ", "DEAD-LETTERED AT", "CLASS", "REASON", "CODE", "SOURCE", "MESSAGE"
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
        let message: String = r.message.chars().take(80).collect();
        out.push_str(&format!(
            "{:<10} {:<24} {:<17} {:<18} {:<5} {:<28} {}\n",
            format!("{}@{}", r.partition, r.offset),
            at,
            r.class,
            r.reason,
            r.code.as_deref().unwrap_or("-"),
            source,
            message
        ));
    }
    out.push_str(&format!("{} record(s)\n", records.len()));
    out
}

/// Where redriven records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Back to the source topic (the live pipeline sends them again).
    Source,
    /// Straight to the API, signed and classified like the pipeline does.
    Api,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedriveReport {
    pub examined: usize,
    pub selected: usize,
    pub redriven: usize,
    /// Records sent to the API that it did not accept (they stay in the DLQ).
    pub failed: Vec<String>,
    pub dry_run: bool,
}

/// Redrives the dead letters after the group's cursor that match `filter`.
pub async fn redrive(
    settings: &Settings,
    filter: &Filter,
    target: Target,
    group: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<RedriveReport> {
    let group = group.map_or_else(
        || format!("{}.redrive", settings.kafka.group_id),
        str::to_owned,
    );
    let topic = settings.kafka.dlq_topic.clone();
    let consumer = consumer(settings, &group)?;
    let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let mut cursor = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            cursor.add_partition(&topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(cursor, Duration::from_secs(10))?;
    let starts: HashMap<i32, i64> = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    let records = read_from(&consumer, &topic, &starts)?;
    let mut report = RedriveReport {
        examined: records.len(),
        dry_run,
        ..RedriveReport::default()
    };
    let producer: FutureProducer = client_config(settings, &settings.kafka.producer)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    let client = match target {
        Target::Api => Some(settings.top_client()?),
        Target::Source => None,
    };
    let classifier = settings.classifier();
    for record in &records {
        if filter.matches(record) {
            report.selected += 1;
            if !dry_run {
                match target {
                    Target::Source => {
                        let mut headers = OwnedHeaders::new();
                        for (key, value) in &record.original_headers {
                            headers = headers.insert(Header {
                                key,
                                value: value.as_deref(),
                            });
                        }
                        let origin = format!("{}@{}", record.partition, record.offset);
                        headers = headers.insert(Header {
                            key: "paysync.redriven_from",
                            value: Some(origin.as_bytes()),
                        });
                        let mut out: FutureRecord<'_, [u8], [u8]> =
                            FutureRecord::to(&record.source_topic).headers(headers);
                        if let Some(key) = &record.key {
                            out = out.key(key.as_slice());
                        }
                        if let Some(value) = &record.value {
                            out = out.payload(value.as_slice());
                        }
                        producer
                            .send(out, Duration::from_secs(30))
                            .await
                            .map_err(|(error, _)| error)
                            .with_context(|| {
                                format!(
                                    "cannot write dead letter {}@{} back to {}",
                                    record.partition, record.offset, record.source_topic
                                )
                            })?;
                        report.redriven += 1;
                    }
                    Target::Api => {
                        let client = client.as_ref().expect("built for the API target");
                        let outcome = match event::decode(
                            record.value.as_deref(),
                            settings.event.max_bytes,
                        ) {
                            Ok(event) => {
                                let call = client.send(&dto_json(&event)).await;
                                match classifier.classify(&call.outcome) {
                                    Disposition::Delivered => Ok(()),
                                    other => Err(format!("{other:?}")),
                                }
                            }
                            Err(invalid) => Err(format!("invalid event: {invalid}")),
                        };
                        match outcome {
                            Ok(()) => report.redriven += 1,
                            Err(reason) => report
                                .failed
                                .push(format!("{}@{}: {reason}", record.partition, record.offset)),
                        }
                    }
                }
            }
        }
        if !dry_run {
            // The cursor moves past every examined record, redriven or not selected.
            let mut position = TopicPartitionList::new();
            position.add_partition_offset(
                &topic,
                record.partition,
                Offset::Offset(record.offset + 1),
            )?;
            consumer
                .commit(&position, CommitMode::Sync)
                .context("cannot save the redrive's progress")?;
        }
    }
    Ok(report)
}
