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

use super::report::{BenchReport, Throughput, ceiling_per_sec, peak_rss_mb};
use crate::config::Settings;
use crate::event::{OrderType, PaymentEvent};
use crate::pipeline::{Pipeline, Source};
use crate::tools::emulator::Faults;
use crate::tools::emulator::journal::Journal;
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
    let ceiling = ceiling_per_sec(options.max_in_flight, options.latency_ms);
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
        commits_per_sec: None,
        partitions: PARTITIONS,
        orders_per_partition: None,
        ledger: None,
        ledger_write_ms: None,
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
