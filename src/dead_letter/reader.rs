//! `paysync dlq inspect` and `paysync dlq redrive`: reading the dead-letter
//! topic back, and sending selected records to their source topic or
//! straight to the API. Reading and committing are blocking librdkafka work,
//! done on blocking threads; only the calls and the writes are awaited.
//!
//! A redrive keeps its own cursor as the committed offsets of a consumer
//! group (default `<kafka.group_id>.redrive`): records before the cursor were
//! redriven, or passed over by that run's filter, so running the same redrive
//! twice sends nothing twice. Use another `--group` to select again from the
//! start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::{DeadLetterRecord, Payload, header};
use crate::config::{LedgerMode, Settings};
use crate::control::Pace;
use crate::event::{self, PaymentEvent};
use crate::kafka;
use crate::ledger::entry::{Entry, LedgerKey, Outcome, Path, Position, dto_hash};
use crate::ledger::topic::EntryWriter;
use crate::top::classify::Disposition;
use crate::top::request::dto_json;

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
    /// The group that keeps a redrive's cursor by default: one per filter,
    /// so a filtered redrive never moves the cursor of another filter past
    /// records it did not select.
    pub fn default_group(&self, settings: &Settings) -> String {
        let base = format!("{}.redrive", settings.kafka.group_id);
        if self.class.is_none()
            && self.reason.is_none()
            && self.code.is_none()
            && self.since.is_none()
            && self.until.is_none()
        {
            return base;
        }
        format!(
            "{base}.{:08x}",
            crc32fast::hash(format!("{self:?}").as_bytes())
        )
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
    }
}

pub(super) fn consumer(settings: &Settings, group: &str) -> anyhow::Result<BaseConsumer> {
    kafka::clients::tool_consumer(settings, group)
        .create()
        .context("cannot create a Kafka client")
}

/// Reads the dead-letter topic from each partition's `start` (or its
/// beginning) to the high watermark, in partition and offset order. Blocks.
pub(super) fn read_from(
    consumer: &BaseConsumer,
    topic: &str,
    starts: &HashMap<i32, i64>,
) -> anyhow::Result<Vec<DeadLetterRecord>> {
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
        records.push(DeadLetterRecord::decode(&message));
        if message.offset() + 1 >= end {
            ends.remove(&message.partition());
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

/// Every dead letter matching `filter`. Blocks: run it on a blocking thread.
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

/// Where redriven records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Back to the source topic (the live pipeline sends them again).
    Source,
    /// Straight to the API, signed and classified like the pipeline does.
    Api,
}

/// How to redrive (`paysync dlq redrive`'s flags).
#[derive(Clone)]
pub struct Redrive {
    pub target: Target,
    /// The group that keeps the cursor (default: one per filter).
    pub group: Option<String>,
    /// Records already redriven this many times are held back.
    pub max_redrives: u32,
    /// Show what would be redriven; send nothing, keep the cursor.
    pub dry_run: bool,
    /// Send records the ledger holds as accepted with the same DTO too.
    pub resend_delivered: bool,
    /// To the API: the share of the group's rate the calls take (`None`:
    /// one call at a time, on top of the group's rate).
    pub pace: Option<Arc<dyn Pace>>,
}

impl Default for Redrive {
    fn default() -> Redrive {
        Redrive {
            target: Target::Source,
            group: None,
            max_redrives: 3,
            dry_run: false,
            resend_delivered: false,
            pace: None,
        }
    }
}

/// What a redrive did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedriveReport {
    /// The cursor's group.
    pub group: String,
    pub examined: usize,
    pub selected: usize,
    pub redriven: usize,
    /// Selected records already redriven `--max-redrives` times: not sent
    /// again (they stay in the dead-letter topic).
    pub held_back: Vec<String>,
    /// Records sent to the API that it did not accept (they stay in the DLQ).
    pub failed: Vec<String>,
    /// Records not sent to the API: the ledger holds their key as accepted
    /// with the same DTO (`--resend-delivered` sends them).
    pub skipped_delivered: Vec<String>,
    pub dry_run: bool,
}

/// The redrive's consumer and what it found after its cursor. Blocks.
fn read_after_cursor(
    settings: &Settings,
    group: &str,
) -> anyhow::Result<(BaseConsumer, Vec<DeadLetterRecord>)> {
    let topic = &settings.kafka.dlq_topic;
    let consumer = consumer(settings, group)?;
    let partitions = kafka::queries::topic_partitions(&consumer, topic)?.unwrap_or_default();
    let starts: HashMap<i32, i64> =
        kafka::queries::committed_offsets(&consumer, topic, &partitions)?
            .into_iter()
            .filter_map(|(partition, offset)| Some((partition, offset?)))
            .collect();
    let records = read_from(&consumer, topic, &starts)?;
    Ok((consumer, records))
}

/// The source record a dead letter came from, read back from its topic (for
/// a dead letter that left parts of it out); `None` when it is gone
/// (retention, compaction). Blocks.
fn read_source(settings: &Settings, record: &DeadLetterRecord) -> anyhow::Result<Option<Payload>> {
    let (Some(partition), Some(offset)) = (record.source_partition, record.source_offset) else {
        return Ok(None);
    };
    let topic = &record.source_topic;
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
            return Ok((message.offset() == offset).then(|| Payload::of(&message)));
        }
    }
    bail!("cannot read the source record {topic}/{partition}@{offset} back")
}

/// Redrives the dead letters after the group's cursor that match `filter`.
/// A dead letter that left its value out is redriven with the source
/// record, read back from the source topic while it is still there.
pub async fn redrive(
    settings: &Settings,
    filter: &Filter,
    options: &Redrive,
) -> anyhow::Result<RedriveReport> {
    let Redrive {
        target,
        max_redrives,
        dry_run,
        resend_delivered,
        ..
    } = *options;
    let group = options
        .group
        .clone()
        .unwrap_or_else(|| filter.default_group(settings));
    let topic = settings.kafka.dlq_topic.clone();
    let (consumer, records) = {
        let (settings, group) = (settings.clone(), group.clone());
        tokio::task::spawn_blocking(move || read_after_cursor(&settings, &group)).await??
    };
    let consumer = Arc::new(consumer);
    let mut report = RedriveReport {
        group: group.clone(),
        examined: records.len(),
        dry_run,
        ..RedriveReport::default()
    };
    let producer: FutureProducer = kafka::clients::durable_producer(settings).create()?;
    let client = match target {
        Target::Api => Some(settings.top_client()?),
        Target::Source => None,
    };
    let classifier = settings.classifier();
    // To the API, the ledger is read here: a key accepted since it was
    // dead-lettered is not sent again (the live pipeline judges the records
    // written back to the source itself).
    let ledger = match (target, settings.ledger.mode) {
        (Target::Api, mode) if mode != LedgerMode::Off && !dry_run => {
            Some(RedriveLedger::read(settings, &consumer).await?)
        }
        _ => None,
    };
    for record in &records {
        if filter.matches(record) {
            report.selected += 1;
            if record.redrives >= max_redrives {
                report.held_back.push(format!(
                    "{}@{}: redriven {} times already",
                    record.partition, record.offset, record.redrives
                ));
            }
            let original = match (dry_run, record.left_out) {
                _ if record.redrives >= max_redrives => None,
                (true, _) => None,
                (false, false) => Some(record.original.clone()),
                (false, true) => {
                    let (settings, copy) = (settings.clone(), record.clone());
                    let source = tokio::task::spawn_blocking(move || read_source(&settings, &copy))
                        .await??;
                    if source.is_none() {
                        report.failed.push(format!(
                            "{}@{}: the dead letter left its value out and the source record {}/{}@{} is gone",
                            record.partition,
                            record.offset,
                            record.source_topic,
                            record.source_partition.unwrap_or(-1),
                            record.source_offset.unwrap_or(-1)
                        ));
                    }
                    source
                }
            };
            if let Some(original) = original {
                match target {
                    Target::Source => {
                        let origin = format!("{}@{}", record.partition, record.offset);
                        let count = (record.redrives + 1).to_string();
                        let mut extra =
                            vec![(header::REDRIVEN_FROM, origin), (header::REDRIVES, count)];
                        if resend_delivered {
                            extra.push((header::RESEND_DELIVERED, "true".to_owned()));
                        }
                        let out = original.to_record(&record.source_topic, &extra);
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
                            original.value.as_deref(),
                            &settings.event.limits(),
                        ) {
                            Ok(event) => {
                                let dto = dto_json(&event);
                                let filed = ledger
                                    .as_ref()
                                    .map(|ledger| ledger.file(settings, record, &event, &dto));
                                match &filed {
                                    Some(Filed::Accepted) if !resend_delivered => {
                                        report.skipped_delivered.push(format!(
                                            "{}@{}: the ledger holds its key as accepted with the same DTO",
                                            record.partition, record.offset
                                        ));
                                        Ok(())
                                    }
                                    _ => {
                                        if let Some(pace) = &options.pace {
                                            pace.turn().await;
                                        }
                                        let call = client.send(&dto).await;
                                        let disposition = classifier.classify(&call.outcome);
                                        if let Some(pace) = &options.pace {
                                            pace.answered(&disposition);
                                        }
                                        match disposition {
                                            Disposition::Delivered => {
                                                if let (Some(ledger), Some(filed)) =
                                                    (&ledger, filed)
                                                {
                                                    ledger
                                                        .accepted(filed, call.request_id.clone())
                                                        .await?;
                                                }
                                                report.redriven += 1;
                                                Ok(())
                                            }
                                            other => Err(format!("{other:?}")),
                                        }
                                    }
                                }
                            }
                            Err(invalid) => Err(format!("invalid event: {invalid}")),
                        };
                        match outcome {
                            Ok(()) => {}
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
            let consumer = consumer.clone();
            tokio::task::spawn_blocking(move || consumer.commit(&position, CommitMode::Sync))
                .await?
                .context("cannot save the redrive's progress")?;
        }
    }
    Ok(report)
}

/// The ledger as a redrive to the API reads it: what each key holds, and the
/// writer of the outcomes it adds.
struct RedriveLedger {
    /// Key text → (outcome, DTO hash).
    keys: HashMap<String, (Outcome, Option<u64>)>,
    partitions: i32,
    writer: EntryWriter,
}

/// A redriven event as the ledger files it.
enum Filed {
    Accepted,
    Send {
        key: LedgerKey,
        entry: Box<Entry>,
        ledger_partition: i32,
    },
}

impl RedriveLedger {
    async fn read(settings: &Settings, consumer: &BaseConsumer) -> anyhow::Result<RedriveLedger> {
        let writer = EntryWriter::new(settings)?;
        let partitions = kafka::queries::topic_partitions(consumer, writer.topic())?
            .map_or(1, |partitions| partitions.len() as i32);
        let entries = crate::ledger::report::read(settings).await?;
        let keys = entries
            .into_iter()
            .filter_map(|read| {
                let entry = read.entry?;
                Some((read.key.text, (entry.outcome, entry.dto_hash_value())))
            })
            .collect();
        Ok(RedriveLedger {
            keys,
            partitions,
            writer,
        })
    }

    fn file(
        &self,
        settings: &Settings,
        record: &DeadLetterRecord,
        event: &PaymentEvent,
        dto: &str,
    ) -> Filed {
        let key = LedgerKey::of(event, &settings.ledger.key_fields);
        if let Some((Outcome::Accepted, Some(hash))) = self.keys.get(&key.text)
            && *hash == dto_hash(dto)
        {
            return Filed::Accepted;
        }
        let source_partition = record.source_partition.unwrap_or(0);
        let position = Position {
            topic: record.source_topic.clone(),
            partition: source_partition,
            offset: record.source_offset.unwrap_or(-1),
        };
        Filed::Send {
            entry: Box::new(Entry::of(
                Outcome::Accepted,
                event,
                dto,
                position,
                Path::Redrive,
            )),
            key,
            ledger_partition: crate::ledger::topic::partition_for(
                source_partition,
                self.partitions,
            ),
        }
    }

    /// Records an accepted redrive.
    async fn accepted(&self, filed: Filed, request_id: Option<String>) -> anyhow::Result<()> {
        let Filed::Send {
            key,
            mut entry,
            ledger_partition,
        } = filed
        else {
            return Ok(());
        };
        entry.request_id = request_id;
        self.writer
            .write(ledger_partition, &key.text, &entry)
            .await
            .context("cannot record the redrive in the ledger")
    }
}
