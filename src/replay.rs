//! `paysync replay`: send a bounded range of a source topic to the API again
//! (backfill), with the same signing, classification and dead-letter topic.
//!
//! The range is per partition: from an offset or a time (`offsets_for_times`)
//! up to an offset or a time, or the high watermark when replay starts, so it
//! always ends (transaction markers included). Replay uses its own consumer
//! group only to remember its progress; by default one per request
//! (`<kafka.group_id>.replay.<hash of topic, partitions and bounds>`), so the
//! same request resumes where it stopped and a different range sends exactly
//! what it names. Partitions are assigned directly, so it never joins or
//! moves the live group. The report's first line says whether a run is new or
//! resumed.
//!
//! With the control topic on (the default), a replay is a tenant of the live
//! group's rate: it announces itself and takes what its weight gets, the
//! whole headroom while live traffic is idle, never more than the group's
//! rate in all (docs/control.md); `--rate` caps it. Without the control
//! topic its rate is its own, by default a quarter of the live one, on top
//! of the group's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::event;
use crate::kafka;
use crate::pipeline::{OffsetRange, Pipeline, Source, Summary};

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayRequest {
    /// Defaults to the only entry of `kafka.topics`.
    pub topic: Option<String>,
    /// Empty: every partition.
    pub partitions: Vec<i32>,
    pub from_offset: Option<i64>,
    pub to_offset: Option<i64>,
    pub from_time: Option<DateTime<Utc>>,
    pub to_time: Option<DateTime<Utc>>,
    /// Defaults to one group per request: `<kafka.group_id>.replay.<hash>`.
    pub group: Option<String>,
    /// Sharing the group's rate: the most calls per second it may take.
    /// Without the control topic: its own rate, by default `rate_fraction`
    /// of the live rate.
    pub rate: Option<u32>,
    pub rate_fraction: f64,
    /// Its weight among the callers sharing the rate (default `control.backfill_weight`).
    pub weight: Option<u32>,
    pub dry_run: bool,
    /// Send events the ledger holds as accepted with the same DTO too.
    pub resend_delivered: bool,
}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub ranges: Vec<OffsetRange>,
    pub group: String,
    /// How it is paced: its share of the group's rate, or its own rate.
    pub pacing: String,
    /// Messages of the requested range the group had finished before (a
    /// resumed run); 0 for a new one.
    pub already_done: i64,
    /// Filled for a real run.
    pub summary: Option<Summary>,
    /// Filled for a dry run: (valid, invalid) and the first problems found.
    pub checked: Option<Checked>,
}

impl ReplayReport {
    /// Whether the run is new or resumes the group's progress, and how much.
    pub fn headline(&self) -> String {
        let messages: i64 = self.ranges.iter().map(|r| r.end - r.start).sum();
        let run = if self.already_done > 0 {
            format!(
                "resumed run ({} messages of the range were finished before)",
                self.already_done
            )
        } else {
            "new run".to_owned()
        };
        format!(
            "paysync replay: {run}, {messages} messages, group {}, {}",
            self.group, self.pacing
        )
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&self.headline());
        out.push('\n');
        for range in &self.ranges {
            out.push_str(&format!(
                "  {}/{}  offsets {}..{}\n",
                range.topic, range.partition, range.start, range.end
            ));
        }
        if let Some(summary) = &self.summary {
            out.push_str(&format!(
                "  delivered {}, dead-lettered {} (invalid {}, rejected {}, retries exhausted {}), calls {}, retried calls {}\n",
                summary.delivered,
                summary.dead_lettered(),
                summary.dead_lettered_invalid_event,
                summary.dead_lettered_rejected,
                summary.dead_lettered_retries_exhausted,
                summary.calls,
                summary.retried_calls
            ));
            if summary.duplicates_suppressed + summary.parked > 0 {
                out.push_str(&format!(
                    "  not sent: {} accepted before with the same DTO (--resend-delivered sends them), {} parked as unknown or held\n",
                    summary.duplicates_suppressed, summary.parked
                ));
            }
        }
        if let Some((valid, invalid, problems)) = &self.checked {
            out.push_str(&format!(
                "  dry run: {valid} valid, {invalid} invalid (nothing was sent)\n"
            ));
            for problem in problems {
                out.push_str(&format!("    {problem}\n"));
            }
        }
        out
    }
}

/// The default replay group: one per request (topic, partitions, bounds), so
/// a run resumes only the same request's progress and a different range
/// starts new, sending exactly what it names.
fn default_group(settings: &Settings, request: &ReplayRequest) -> String {
    let spec = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        request.topic,
        request.partitions,
        request.from_offset,
        request.to_offset,
        request.from_time.map(|t| t.timestamp_millis()),
        request.to_time.map(|t| t.timestamp_millis()),
    );
    format!(
        "{}.replay.{:08x}",
        settings.kafka.group_id,
        crc32fast::hash(spec.as_bytes())
    )
}

/// Resolves the request into offset ranges, using `consumer` for metadata,
/// and says how many messages of them the group had finished before. Blocks.
fn resolve(
    settings: &Settings,
    request: &ReplayRequest,
    consumer: &BaseConsumer,
) -> anyhow::Result<(Vec<OffsetRange>, i64)> {
    let timeout = kafka::queries::REQUEST_TIMEOUT;
    let topic = match (&request.topic, settings.kafka.topics.as_slice()) {
        (Some(topic), _) => topic.clone(),
        (None, [only]) => only.clone(),
        (None, _) => bail!("kafka.topics names several topics: choose one with --topic"),
    };
    let Some(all) =
        kafka::queries::topic_partitions(consumer, &topic).context("cannot read Kafka metadata")?
    else {
        bail!("topic {topic:?} does not exist");
    };
    let partitions = if request.partitions.is_empty() {
        all.clone()
    } else {
        request.partitions.clone()
    };
    for partition in &partitions {
        ensure!(
            all.contains(partition),
            "topic {topic:?} has no partition {partition}"
        );
    }
    let by_time = |time: DateTime<Utc>| -> anyhow::Result<Vec<Option<i64>>> {
        let mut tpl = TopicPartitionList::new();
        for partition in &partitions {
            tpl.add_partition_offset(&topic, *partition, Offset::Offset(time.timestamp_millis()))?;
        }
        let found = consumer.offsets_for_times(tpl, timeout)?;
        Ok(partitions
            .iter()
            .map(
                |p| match found.find_partition(&topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(offset)) => Some(offset),
                    _ => None,
                },
            )
            .collect())
    };
    let from_times = request.from_time.map(by_time).transpose()?;
    let to_times = request.to_time.map(by_time).transpose()?;
    let committed = kafka::queries::committed_offsets(consumer, &topic, &partitions)?;
    let mut ranges = Vec::new();
    let mut already_done = 0;
    for (i, partition) in partitions.iter().enumerate() {
        let (low, high) = consumer.fetch_watermarks(&topic, *partition, timeout)?;
        // A time with no message at or after it means "the end".
        let start = request
            .from_offset
            .or_else(|| from_times.as_ref().map(|t| t[i].unwrap_or(high)))
            .unwrap_or(low)
            .clamp(low, high);
        let end = request
            .to_offset
            .or_else(|| to_times.as_ref().map(|t| t[i].unwrap_or(high)))
            .unwrap_or(high)
            .clamp(start, high);
        // Continue an interrupted replay from its own committed progress.
        let resumed = match committed.get(partition).copied().flatten() {
            Some(done) if done > start && done <= end => done,
            _ => start,
        };
        already_done += resumed - start;
        ranges.push(OffsetRange {
            topic: topic.clone(),
            partition: *partition,
            start: resumed,
            end,
        });
    }
    Ok((ranges, already_done))
}

/// Runs a replay (or a dry run) to the end of its range, or until `shutdown`.
pub async fn run(
    mut settings: Settings,
    request: ReplayRequest,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ReplayReport> {
    ensure!(
        request.rate_fraction > 0.0 && request.rate_fraction <= 1.0,
        "--rate-fraction must be in (0, 1]"
    );
    let group = request
        .group
        .clone()
        .unwrap_or_else(|| default_group(&settings, &request));
    ensure!(
        group != settings.kafka.group_id,
        "the replay group must differ from the live group {:?}",
        settings.kafka.group_id
    );
    let shares = settings.control.enabled;
    let weight = request
        .weight
        .unwrap_or(settings.control.backfill_weight)
        .max(1);
    let rate = request.rate.unwrap_or_else(|| {
        ((f64::from(settings.delivery.rate_limit_per_sec) * request.rate_fraction) as u32).max(1)
    });
    let pacing = if shares {
        format!(
            "sharing the group's {} calls/s (weight {weight}{})",
            settings.delivery.rate_limit_per_sec,
            request
                .rate
                .map(|cap| format!(", at most {cap} calls/s"))
                .unwrap_or_default()
        )
    } else {
        format!("at its own {rate} calls/s, on top of the group's")
    };
    // Planning (and a dry run's reading) blocks; a signal stops it too.
    let mut shutdown = Box::pin(shutdown);
    let stop = Arc::new(AtomicBool::new(false));
    let mut planning = {
        let (settings, request, group) = (settings.clone(), request.clone(), group.clone());
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || plan(&settings, &request, &group, &stop))
    };
    let planned = tokio::select! {
        planned = &mut planning => planned??,
        _ = &mut shutdown => {
            stop.store(true, Ordering::Relaxed);
            // Wait for the blocking work to notice, then stop here.
            let _ = planning.await;
            bail!("interrupted before the replay started");
        }
    };
    let (ranges, already_done, checked) = planned;
    let mut report = ReplayReport {
        ranges: ranges.clone(),
        group: group.clone(),
        pacing,
        already_done,
        summary: None,
        checked: None,
    };
    tracing::info!("{}", report.headline());
    if checked.is_some() {
        report.checked = checked;
        return Ok(report);
    }
    let total: i64 = ranges.iter().map(|r| r.end - r.start).sum();
    if total == 0 {
        report.summary = Some(Summary::default());
        return Ok(report);
    }
    // The live group's ledger and control topic, whatever group keeps the
    // replay's progress.
    settings.ledger.topic = Some(settings.ledger.topic(&settings.kafka.group_id));
    settings.control.topic = Some(settings.control.topic(&settings.kafka.group_id));
    settings.kafka.group_id = group.clone();
    if !shares {
        settings.delivery.rate_limit_per_sec = rate;
        settings.delivery.rate_limit_burst = Some((rate / 10).max(1));
    }
    let mut pipeline = Pipeline::build(settings, Source::Range(ranges.clone()))
        .await?
        .tenant(weight, request.rate);
    if request.resend_delivered {
        pipeline = pipeline.resend_delivered();
    }
    let running = pipeline.spawn(shutdown);
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} ETA {eta} {msg}",
        )
        .expect("a valid template"),
    );
    while !running.is_finished() {
        let summary = running.summary();
        bar.set_position(summary.finished());
        bar.set_message(format!(
            "delivered {}, dead-lettered {}",
            summary.delivered,
            summary.dead_lettered()
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    let summary = running.finished().await;
    report.summary = Some(summary);
    Ok(report)
}

/// The dry run's findings: (valid, invalid, the first problems found).
pub type Checked = (u64, u64, Vec<String>);

/// Resolves the ranges and, for a dry run, checks them. Blocks; gives up
/// when `stop` is set.
fn plan(
    settings: &Settings,
    request: &ReplayRequest,
    group: &str,
    stop: &AtomicBool,
) -> anyhow::Result<(Vec<OffsetRange>, i64, Option<Checked>)> {
    let consumer: BaseConsumer = kafka::clients::tool_consumer(settings, group)
        .create()
        .context("cannot create a Kafka client")?;
    let (ranges, already_done) = resolve(settings, request, &consumer)?;
    let checked = if request.dry_run {
        Some(dry_run(&consumer, &ranges, &settings.event.limits(), stop)?)
    } else {
        None
    };
    Ok((ranges, already_done, checked))
}

/// Reads the ranges and decodes every message; sends nothing, commits
/// nothing. Blocks; gives up when `stop` is set (a signal).
fn dry_run(
    consumer: &BaseConsumer,
    ranges: &[OffsetRange],
    limits: &event::Limits,
    stop: &AtomicBool,
) -> anyhow::Result<Checked> {
    let mut tpl = TopicPartitionList::new();
    let mut open = std::collections::HashSet::new();
    for range in ranges.iter().filter(|r| r.end > r.start) {
        tpl.add_partition_offset(&range.topic, range.partition, Offset::Offset(range.start))?;
        open.insert(range.partition);
    }
    consumer.assign(&tpl)?;
    let (mut valid, mut invalid, mut problems) = (0u64, 0u64, Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while !open.is_empty() {
        ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        ensure!(
            std::time::Instant::now() < deadline,
            "the dry run did not reach the end of the range"
        );
        let polled = consumer.poll(Duration::from_millis(200));
        // librdkafka's position passes transaction markers, which no
        // message occupies: a range may end with one.
        for element in consumer.position()?.elements() {
            let finished = ranges.iter().any(|r| {
                r.partition == element.partition()
                    && matches!(element.offset(), Offset::Offset(position) if position >= r.end)
            });
            if finished {
                open.remove(&element.partition());
            }
        }
        let Some(message) = polled else {
            continue;
        };
        let message = message?;
        let Some(range) = ranges.iter().find(|r| r.partition == message.partition()) else {
            continue;
        };
        if message.offset() >= range.end {
            continue;
        }
        match event::decode(message.payload(), limits) {
            Ok(_) => valid += 1,
            Err(error) => {
                invalid += 1;
                if problems.len() < 20 {
                    problems.push(format!(
                        "{}/{}@{}: {error}",
                        message.topic(),
                        message.partition(),
                        message.offset()
                    ));
                }
            }
        }
        if message.offset() + 1 >= range.end {
            open.remove(&message.partition());
        }
    }
    Ok((valid, invalid, problems))
}
