//! Redriving dead letters (`paysync dlq redrive`, the console's redrive):
//! sending selected records back to their source topic, or straight to the
//! API through the group's rate and the ledger. Reading and committing are
//! blocking librdkafka work, done on blocking threads; only the calls and
//! the writes are awaited.
//!
//! A redrive by filter keeps its own cursor as the committed offsets of a
//! consumer group (default `<kafka.group_id>.redrive`): records before the
//! cursor were redriven, or passed over by that run's filter, so running the
//! same redrive twice sends nothing twice. Use another `--group` to select
//! again from the start. Records chosen one by one (the console) are read on
//! their own and move no cursor: the ledger keeps them from going twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::reader::{Filter, Scanned, consumer, read_dead_letter, read_matching, read_source};
use super::redrive_ledger::{Filed, RedriveLedger};
use super::{DeadLetterRecord, Payload, header};
use crate::config::{LedgerMode, Settings};
use crate::control::Pace;
use crate::event;
use crate::kafka;
use crate::top::classify::Disposition;
use crate::top::request::dto_json;

/// Where redriven records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Back to the source topic (the live pipeline sends them again).
    Source,
    /// Straight to the API, signed and classified like the pipeline does.
    Api,
}

/// A dead letter's position in the dead-letter topic: (partition, offset).
pub type DeadLetterAt = (i32, i64);

/// Called with each record's result as it is known.
pub type Progress = Arc<dyn Fn(&RecordResult) + Send + Sync>;

/// How to redrive (`paysync dlq redrive`'s flags, the console's choices).
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
    /// Records chosen one by one: read on their own, with no cursor (the
    /// filter still applies).
    pub records: Option<Vec<DeadLetterAt>>,
    /// Values sent instead of a record's own (an operator's checked edit).
    pub replacements: HashMap<DeadLetterAt, Vec<u8>>,
    /// Told each record's result as it is known.
    pub progress: Option<Progress>,
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
            records: None,
            replacements: HashMap::new(),
            progress: None,
        }
    }
}

/// What happened to one selected record.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum RecordOutcome {
    /// Written back to the source, or accepted by the API.
    Sent,
    /// A dry run: it would be sent.
    WouldSend,
    /// The ledger holds its key as accepted with the same DTO.
    SkippedDelivered,
    /// Redriven `max_redrives` times already.
    HeldBack(String),
    /// Not accepted (or not readable); it stays in the dead-letter topic.
    Failed(String),
}

/// One selected record's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordResult {
    pub partition: i32,
    pub offset: i64,
    /// Whether the value sent was an operator's edit.
    pub edited: bool,
    #[serde(flatten)]
    pub outcome: RecordOutcome,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedriveReport {
    /// The cursor's group (empty: records chosen one by one).
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
    /// Every selected record's result, in order.
    pub results: Vec<RecordResult>,
    pub dry_run: bool,
}

impl RedriveReport {
    fn record(&mut self, result: RecordResult, progress: Option<&Progress>) {
        let at = format!("{}@{}", result.partition, result.offset);
        match &result.outcome {
            RecordOutcome::Sent => self.redriven += 1,
            RecordOutcome::WouldSend => {}
            RecordOutcome::SkippedDelivered => self.skipped_delivered.push(format!(
                "{at}: the ledger holds its key as accepted with the same DTO"
            )),
            RecordOutcome::HeldBack(why) => self.held_back.push(format!("{at}: {why}")),
            RecordOutcome::Failed(why) => self.failed.push(format!("{at}: {why}")),
        }
        if let Some(progress) = progress {
            progress(&result);
        }
        self.results.push(result);
    }
}

/// The redrive's consumer and the records after its cursor that `filter`
/// selects. Blocks.
fn read_after_cursor(
    settings: &Settings,
    group: &str,
    filter: &Filter,
) -> anyhow::Result<(BaseConsumer, Scanned)> {
    let topic = &settings.kafka.dlq_topic;
    let consumer = consumer(settings, group)?;
    let partitions = kafka::queries::topic_partitions(&consumer, topic)?.unwrap_or_default();
    let starts: HashMap<i32, i64> =
        kafka::queries::committed_offsets(&consumer, topic, &partitions)?
            .into_iter()
            .filter_map(|(partition, offset)| Some((partition, offset?)))
            .collect();
    let scanned = read_matching(&consumer, topic, &starts, |r| filter.matches(r))?;
    Ok((consumer, scanned))
}

/// Moves the redrive's cursor to `positions` (partition, next offset). Blocks.
async fn move_cursor(
    consumer: &Arc<BaseConsumer>,
    topic: &str,
    positions: impl IntoIterator<Item = (i32, i64)>,
) -> anyhow::Result<()> {
    let mut list = TopicPartitionList::new();
    for (partition, next) in positions {
        list.add_partition_offset(topic, partition, Offset::Offset(next))?;
    }
    if list.count() == 0 {
        return Ok(());
    }
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
        .await?
        .context("cannot save the redrive's progress")
}

/// The chosen records, each read on its own. Blocks.
fn read_chosen(
    settings: &Settings,
    chosen: &[DeadLetterAt],
) -> anyhow::Result<Vec<DeadLetterRecord>> {
    let mut records = Vec::new();
    for (partition, offset) in chosen {
        match read_dead_letter(settings, *partition, *offset)? {
            Some(record) => records.push(record),
            None => anyhow::bail!("dead letter {partition}@{offset} is not in the topic"),
        }
    }
    Ok(records)
}

/// Redrives the selected dead letters: after the group's cursor and
/// matching `filter`, or the records chosen in `options.records`. A dead
/// letter that left its value out is redriven with the source record, read
/// back from the source topic while it is still there.
pub async fn redrive(
    settings: &Settings,
    filter: &Filter,
    options: &Redrive,
) -> anyhow::Result<RedriveReport> {
    let dry_run = options.dry_run;
    let topic = settings.kafka.dlq_topic.clone();
    let (cursor, records, examined, group) = match &options.records {
        Some(chosen) => {
            let (settings, chosen) = (settings.clone(), chosen.clone());
            let records =
                tokio::task::spawn_blocking(move || read_chosen(&settings, &chosen)).await??;
            let examined = records.len();
            (None, records, examined, String::new())
        }
        None => {
            let group = options
                .group
                .clone()
                .unwrap_or_else(|| filter.default_group(settings));
            let (settings, for_read, filter) = (settings.clone(), group.clone(), filter.clone());
            let (consumer, scanned) = tokio::task::spawn_blocking(move || {
                read_after_cursor(&settings, &for_read, &filter)
            })
            .await??;
            let Scanned {
                records,
                examined,
                ends,
            } = scanned;
            (Some((Arc::new(consumer), ends)), records, examined, group)
        }
    };
    let mut report = RedriveReport {
        group,
        examined,
        dry_run,
        ..RedriveReport::default()
    };
    let mut sender = Sender::new(settings, options).await?;
    for record in &records {
        if !filter.matches(record) {
            continue;
        }
        report.selected += 1;
        let result = sender.redrive(settings, record).await?;
        report.record(result, options.progress.as_ref());
        if let (Some((consumer, _)), false) = (&cursor, dry_run) {
            // Past this record and every unselected one before it.
            move_cursor(consumer, &topic, [(record.partition, record.offset + 1)]).await?;
        }
    }
    if let (Some((consumer, ends)), false) = (&cursor, dry_run) {
        // Past the unselected records after the last selected one.
        move_cursor(consumer, &topic, ends.iter().map(|(p, end)| (*p, *end))).await?;
    }
    Ok(report)
}

/// Sends one record at a time, to the source or the API.
struct Sender<'a> {
    options: &'a Redrive,
    producer: FutureProducer,
    client: Option<crate::top::client::TopClient>,
    classifier: crate::top::classify::Classifier,
    ledger: Option<RedriveLedger>,
}

impl<'a> Sender<'a> {
    async fn new(settings: &Settings, options: &'a Redrive) -> anyhow::Result<Sender<'a>> {
        let producer: FutureProducer = kafka::clients::durable_producer(settings).create()?;
        let client = match (options.target, options.dry_run) {
            (Target::Api, false) => Some(settings.top_client()?),
            _ => None,
        };
        // To the API, the ledger is read here: a key accepted since it was
        // dead-lettered is not sent again (the live pipeline judges the
        // records written back to the source itself).
        let ledger = match (options.target, settings.ledger.mode) {
            (Target::Api, mode) if mode != LedgerMode::Off => {
                Some(RedriveLedger::read(settings).await?)
            }
            _ => None,
        };
        Ok(Sender {
            options,
            producer,
            client,
            classifier: settings.classifier(),
            ledger,
        })
    }

    async fn redrive(
        &mut self,
        settings: &Settings,
        record: &DeadLetterRecord,
    ) -> anyhow::Result<RecordResult> {
        let position = (record.partition, record.offset);
        let replacement = self.options.replacements.get(&position);
        let result = |outcome| RecordResult {
            partition: record.partition,
            offset: record.offset,
            edited: replacement.is_some(),
            outcome,
        };
        if record.redrives >= self.options.max_redrives {
            return Ok(result(RecordOutcome::HeldBack(format!(
                "redriven {} times already",
                record.redrives
            ))));
        }
        let original = match (replacement, record.left_out) {
            (Some(value), _) => Payload {
                value: Some(value.clone()),
                ..record.original.clone()
            },
            (None, false) => record.original.clone(),
            (None, true) => {
                let (settings, copy) = (settings.clone(), record.clone());
                match tokio::task::spawn_blocking(move || read_source(&settings, &copy)).await?? {
                    Some(source) => source,
                    None => {
                        return Ok(result(RecordOutcome::Failed(format!(
                            "the dead letter left its value out and the source record {}/{}@{} is gone",
                            record.source_topic,
                            record.source_partition.unwrap_or(-1),
                            record.source_offset.unwrap_or(-1)
                        ))));
                    }
                }
            }
        };
        let outcome = match self.options.target {
            Target::Source if self.options.dry_run => RecordOutcome::WouldSend,
            Target::Source => {
                self.to_source(record, &original).await?;
                RecordOutcome::Sent
            }
            Target::Api => self.to_api(settings, record, &original).await?,
        };
        Ok(result(outcome))
    }

    async fn to_source(&self, record: &DeadLetterRecord, original: &Payload) -> anyhow::Result<()> {
        let origin = format!("{}@{}", record.partition, record.offset);
        let count = (record.redrives + 1).to_string();
        let mut extra = vec![(header::REDRIVEN_FROM, origin), (header::REDRIVES, count)];
        if self.options.resend_delivered {
            extra.push((header::RESEND_DELIVERED, "true".to_owned()));
        }
        let out = original.to_record(&record.source_topic, &extra);
        self.producer
            .send(out, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)
            .with_context(|| {
                format!(
                    "cannot write dead letter {}@{} back to {}",
                    record.partition, record.offset, record.source_topic
                )
            })?;
        Ok(())
    }

    async fn to_api(
        &self,
        settings: &Settings,
        record: &DeadLetterRecord,
        original: &Payload,
    ) -> anyhow::Result<RecordOutcome> {
        let event = match event::decode(original.value.as_deref(), &settings.event.limits()) {
            Ok(event) => event,
            Err(invalid) => return Ok(RecordOutcome::Failed(format!("invalid event: {invalid}"))),
        };
        let dto = dto_json(&event);
        let filed = self
            .ledger
            .as_ref()
            .map(|ledger| ledger.file(settings, record, &event, &dto));
        if matches!(filed, Some(Filed::Accepted)) && !self.options.resend_delivered {
            return Ok(RecordOutcome::SkippedDelivered);
        }
        let Some(client) = &self.client else {
            return Ok(RecordOutcome::WouldSend);
        };
        if let Some(pace) = &self.options.pace {
            pace.turn().await;
        }
        let call = client.send(&dto).await;
        let disposition = self.classifier.classify(&call.outcome);
        if let Some(pace) = &self.options.pace {
            pace.answered(&disposition);
        }
        Ok(match disposition {
            Disposition::Delivered => {
                if let (Some(ledger), Some(filed)) = (&self.ledger, filed) {
                    ledger.accepted(filed, call.request_id.clone()).await?;
                }
                RecordOutcome::Sent
            }
            other => RecordOutcome::Failed(format!("{other:?}")),
        })
    }
}
