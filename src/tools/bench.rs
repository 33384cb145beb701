//! `paysync bench`: the real pipeline, in-process, against librdkafka's mock
//! cluster and the emulator, next to a raw HTTP baseline.
//!
//! The baseline sends the same signed POSTs straight to the emulator with the
//! same concurrency and no Kafka, so `ratio` says how much of the HTTP path's
//! speed the bridge keeps. Latency is measured from the moment the pipeline
//! takes a message from Kafka to the API's acceptance (events are produced
//! before the run, so time spent waiting in the topic is not counted). Peak
//! RSS is the whole process: pipeline, emulator and mock broker together.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use chrono::Utc;
use rdkafka::producer::FutureRecord;
use serde::Serialize;

use crate::config::Settings;
use crate::event::{OrderType, PaymentEvent};
use crate::pipeline::{Pipeline, Source};
use crate::tools::emulator::journal::Journal;
use crate::tools::emulator::{Emulator, Faults};
use crate::tools::latency::LatencyRecorder;
use crate::tools::local::{LocalStack, TOPIC};
use crate::top::classify::{Classifier, Disposition};
use crate::top::request::dto_json;

const PARTITIONS: i32 = 12;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub events: usize,
    pub latency_ms: u64,
    pub max_in_flight: usize,
    /// Calls per second; `None` for no limit.
    pub rate: Option<u32>,
    /// Token-bucket burst; defaults to a fiftieth of the rate (at least 1).
    pub burst: Option<u32>,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `in-process` (mock cluster, one process) or `broker` (`paysync run`
    /// as a child process against a real broker).
    pub mode: &'static str,
    pub events: usize,
    pub latency_ms: u64,
    pub max_in_flight: usize,
    pub rate_limit: Option<u32>,
    pub burst: Option<u32>,
    /// Pipeline throughput from the first to the last acceptance.
    pub events_per_sec: f64,
    /// Mean acceptances per whole wall-clock second (first and last seconds left out).
    pub sustained_per_sec: f64,
    /// Raw signed POSTs to the emulator, same concurrency, no Kafka.
    pub baseline_per_sec: f64,
    pub ratio: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Most acceptances in one wall-clock second.
    pub max_in_one_second: u64,
    /// In process: the whole process (pipeline, emulator and mock broker);
    /// against a broker: `paysync run` alone.
    pub peak_rss_mb: f64,
    /// CPU seconds of `paysync run` (broker mode only).
    pub cpu_seconds: Option<f64>,
    pub events_per_cpu_second: Option<f64>,
    /// `max_in_flight / latency` (when the emulator adds latency).
    pub ceiling_per_sec: Option<f64>,
    /// Throughput over the ceiling.
    pub ceiling_ratio: Option<f64>,
    /// Mean gateway call as `paysync run` timed it (broker mode): the
    /// emulator's latency plus what the machine adds to it.
    pub call_mean_ms: Option<f64>,
    /// Share of the `max_in_flight` call slots in use on average (Little's
    /// law: events/s × mean call ÷ slots; broker mode). Near 1, paysync kept
    /// every slot busy and the gateway's answer time is the limit.
    pub slots_busy_ratio: Option<f64>,
    pub partitions: i32,
    /// Distinct order ids per partition (`None`: one event per order).
    pub orders_per_partition: Option<usize>,
}

/// Throughput figures of a run, from its first and last acceptance and the
/// emulator's acceptances per wall-clock second; both modes use them.
pub(super) struct Throughput {
    pub(super) events_per_sec: f64,
    /// Mean acceptances per whole second (the first and last are partial).
    pub(super) sustained_per_sec: f64,
    pub(super) max_in_one_second: u64,
}

impl Throughput {
    pub(super) fn measure(
        events: usize,
        first: Option<Instant>,
        last: Instant,
        emulator: &Emulator,
    ) -> Throughput {
        let elapsed = last
            .duration_since(first.unwrap_or(last))
            .as_secs_f64()
            .max(1e-3);
        // n acceptances span n - 1 intervals.
        let events_per_sec = (events.saturating_sub(1)).max(1) as f64 / elapsed;
        let per_second: Vec<u64> = emulator
            .gateway()
            .stats()
            .accepted_per_second
            .values()
            .copied()
            .collect();
        let interior = per_second
            .get(1..per_second.len().saturating_sub(1))
            .unwrap_or_default();
        let sustained_per_sec = if interior.is_empty() {
            events_per_sec
        } else {
            interior.iter().sum::<u64>() as f64 / interior.len() as f64
        };
        Throughput {
            events_per_sec,
            sustained_per_sec,
            max_in_one_second: per_second.iter().copied().max().unwrap_or(0),
        }
    }
}

fn event(index: usize, prefix: &str) -> PaymentEvent {
    PaymentEvent {
        car_no: format!("浙A{:05}", index % 100_000),
        order_id: format!("{prefix}-{index}"),
        park_id: format!("p{}", index % 17),
        pay_time: Utc::now(),
        order_type: if index % 10 == 9 {
            OrderType::Refund
        } else {
            OrderType::Payment
        },
        pay_fee: (index as u64 % 5_000) * 10,
        pay_order_id: Some(format!("PO{index:012}")),
        pay_method: Some("WX".to_owned()),
    }
}

/// Runs the benchmark. Must run inside a multi-thread tokio runtime; the mock
/// cluster stays on the calling task.
pub async fn run(options: BenchOptions) -> anyhow::Result<BenchReport> {
    ensure!(options.events > 0, "--events must be above 0");
    ensure!(options.max_in_flight > 0, "--max-in-flight must be above 0");
    let journal = Journal::new(None)?.without_retention();
    let faults = Faults {
        latency_ms: options.latency_ms,
        ..Faults::default()
    };
    let stack = LocalStack::start(PARTITIONS, faults, journal, "paysync-bench").await?;
    let emulator = &stack.emulator;
    let mut settings = stack.settings.clone();
    settings.delivery.max_in_flight = options.max_in_flight;
    // A window of a few calls per slot keeps every slot busy without queueing
    // thousands of messages (which would only add to the measured latency).
    settings.delivery.global_window = (options.max_in_flight * 8).max(256);
    settings.delivery.partition_window = settings.delivery.global_window;
    let burst = options
        .rate
        .map(|rate| options.burst.unwrap_or((rate / 50).max(1)));
    settings.delivery.rate_limit_per_sec = options.rate.unwrap_or(1_000_000);
    settings.delivery.rate_limit_burst = Some(burst.unwrap_or(1_000_000));
    settings.kafka.commit_interval_ms = Duration::from_secs(1);
    settings.validate()?;

    let baseline_per_sec =
        baseline(&settings, options.events.min(20_000), options.max_in_flight).await?;

    produce(&stack, options.events).await?;
    emulator.gateway().reset_stats();
    let accepted_before = emulator.gateway().order_counts().0;
    let latency = LatencyRecorder::default();
    let running = Pipeline::build(settings, Source::Group)
        .await?
        .observe_deliveries(latency.observer())
        .spawn(std::future::pending());
    let metrics = running.metrics().clone();
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let last = loop {
        let delivered = metrics.events_delivered.get() as usize;
        if delivered > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if delivered >= options.events {
            break Instant::now();
        }
        ensure!(
            Instant::now() < deadline,
            "the pipeline did not finish in 10 minutes ({delivered} delivered)"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let summary = running.stop().await;
    ensure!(
        summary.dead_lettered() == 0,
        "events were dead-lettered: {summary:?}"
    );
    let accepted = emulator.gateway().order_counts().0 - accepted_before;
    ensure!(
        accepted >= options.events,
        "the emulator accepted {accepted} of {}",
        options.events
    );
    let Throughput {
        events_per_sec,
        sustained_per_sec,
        max_in_one_second,
    } = Throughput::measure(options.events, first, last, emulator);
    let ceiling = super::bench_broker::ceiling_per_sec(options.max_in_flight, options.latency_ms);
    Ok(BenchReport {
        mode: "in-process",
        events: options.events,
        latency_ms: options.latency_ms,
        max_in_flight: options.max_in_flight,
        rate_limit: options.rate,
        burst,
        events_per_sec,
        sustained_per_sec,
        baseline_per_sec,
        ratio: events_per_sec / baseline_per_sec,
        p50_ms: latency.quantile_ms(0.50),
        p99_ms: latency.quantile_ms(0.99),
        max_in_one_second,
        peak_rss_mb: peak_rss_mb(),
        cpu_seconds: None,
        events_per_cpu_second: None,
        ceiling_per_sec: ceiling,
        ceiling_ratio: ceiling.map(|c| events_per_sec / c),
        call_mean_ms: None,
        slots_busy_ratio: None,
        partitions: PARTITIONS,
        orders_per_partition: None,
    })
}

/// Signed POSTs straight to the emulator with `concurrency` workers.
pub(super) async fn baseline(
    settings: &Settings,
    calls: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let client = Arc::new(settings.top_client()?);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= calls {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let report = client.send(&dto_json(&event(index, "baseline"))).await;
                    let disposition = Classifier::default().classify(&report.outcome);
                    ensure!(
                        disposition == Disposition::Delivered,
                        "baseline call failed: {:?}",
                        report.outcome
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(calls as f64 / started.elapsed().as_secs_f64())
}

/// The `index`th benchmark event as a Kafka record: its order id (the key)
/// and its JSON value. `order_id` puts it in that order (events of one order
/// are delivered one after another); `None` makes it an order of its own.
pub(super) fn record(index: usize, order_id: Option<String>) -> (String, String) {
    let mut event = event(index, "bench");
    if let Some(order_id) = order_id {
        event.order_id = order_id;
    }
    let value = serde_json::json!({
        "carNo": event.car_no,
        "orderId": event.order_id,
        "parkId": event.park_id,
        "payTime": event.pay_time.timestamp_millis(),
        "orderType": event.order_type.code(),
        "payFee": event.pay_fee,
        "payOrderId": event.pay_order_id,
        "payMethod": event.pay_method,
    })
    .to_string();
    (event.order_id, value)
}

async fn produce(stack: &LocalStack, events: usize) -> anyhow::Result<()> {
    let producer = stack.producer()?;
    let mut pending = Vec::with_capacity(events);
    for index in 0..events {
        let (key, value) = record(index, None);
        let producer = producer.clone();
        pending.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(TOPIC).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(error, _)| error)
        }));
    }
    for sent in pending {
        sent.await??;
    }
    Ok(())
}

/// The process's peak resident set (VmHWM), in MiB; 0 where /proc is missing.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

impl BenchReport {
    /// A few lines for people.
    pub fn render(&self) -> String {
        let limit = match (self.rate_limit, self.burst) {
            (Some(rate), Some(burst)) => format!("{rate}/s (burst {burst})"),
            _ => "none".to_owned(),
        };
        let cpu = match (self.cpu_seconds, self.events_per_cpu_second) {
            (Some(seconds), Some(per)) => {
                format!("{seconds:.2} s ({per:.0} events per CPU-second)")
            }
            _ => "not measured (in-process mode)".to_owned(),
        };
        let ceiling = match (self.ceiling_per_sec, self.ceiling_ratio) {
            (Some(c), Some(r)) => format!("{c:.0}/s (reached {:.0} %)", r * 100.0),
            _ => "none (no emulator latency)".to_owned(),
        };
        let slots = match (self.call_mean_ms, self.slots_busy_ratio) {
            (Some(call), Some(busy)) => {
                format!("{:.0} % busy (mean call {call:.1} ms)", busy * 100.0)
            }
            _ => "not measured (in-process mode)".to_owned(),
        };
        format!(
            "mode              {}\nevents            {}\nemulator latency  {} ms\nmax in flight     {}\nrate limit        {limit}\nthroughput        {:.0} events/s (sustained {:.0}/s)\nbaseline (HTTP)   {:.0} calls/s\nratio             {:.2}\nlatency p50/p99   {:.1} / {:.1} ms (Kafka → API acceptance)\nmost in 1 s       {}\npeak RSS          {:.1} MiB\npaysync CPU       {cpu}\nceiling           {ceiling}\ncall slots        {slots}\n",
            self.mode,
            self.events,
            self.latency_ms,
            self.max_in_flight,
            self.events_per_sec,
            self.sustained_per_sec,
            self.baseline_per_sec,
            self.ratio,
            self.p50_ms,
            self.p99_ms,
            self.max_in_one_second,
            self.peak_rss_mb
        )
    }
}
