//! One payment followed from its producer to the API, against Apache Kafka
//! and a real Jaeger (`scripts/jaeger`, built from its Go module): events
//! produced with W3C and B3 trace headers, some answered with transient
//! errors, one dead-lettered; then Jaeger's query API is read back. And the
//! collector going away mid-run: delivery goes on, dropped spans are
//! counted. Each prints its counts.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use paysync::dead_letter::header;
use paysync::tools::emulator::Faults;
use serde_json::Value;

use super::support::{Process, event, wait_accepted, wait_until};
use super::{SERIAL, Scenario};

/// Jaeger on its own ports and directory; stopped on drop.
struct Jaeger {
    dir: tempfile::TempDir,
    port: u16,
}

impl Jaeger {
    fn start(port: u16) -> Jaeger {
        let jaeger = Jaeger {
            dir: tempfile::tempdir().unwrap(),
            port,
        };
        jaeger.script("start");
        jaeger
    }

    fn script(&self, command: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/jaeger");
        let status = std::process::Command::new("bash")
            .arg(script)
            .arg(command)
            .env("PAYSYNC_JAEGER_DIR", self.dir.path())
            .env("PAYSYNC_JAEGER_PORT", self.port.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "scripts/jaeger {command} failed");
    }

    fn otlp_grpc(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span of `service`'s traces, by span id.
    async fn spans(&self, service: &str) -> HashMap<String, Value> {
        let url = format!(
            "http://127.0.0.1:{}/api/traces?service={service}&limit=5000&lookback=1h",
            self.port + 2
        );
        let text = super::support::http_get(&url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|trace| trace["spans"].as_array().cloned().unwrap_or_default())
            .map(|span| (span["spanID"].as_str().unwrap_or("").to_owned(), span))
            .collect()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        self.script("stop");
    }
}

fn tag(span: &Value, key: &str) -> Option<String> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| match &t["value"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
}

fn references(span: &Value, kind: &str) -> Vec<(String, String)> {
    span["references"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["refType"] == kind)
        .map(|r| {
            (
                r["traceID"].as_str().unwrap_or("").to_owned(),
                r["spanID"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// A producer's span context, as a producer's tracer would write it.
fn producer_ids(i: usize) -> (String, String) {
    (
        format!("{:032x}", 0xa11ce_u128 << 64 | (i as u128 + 1)),
        format!("{:016x}", 0xb0b0_0000_u64 + i as u64 + 1),
    )
}

const EVENTS: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_delivery_is_a_span_linked_to_its_producer_with_one_child_per_attempt() {
    let _serial = SERIAL.lock().await;
    let jaeger = Jaeger::start(24317);
    let scenario = Scenario::new(
        "traces",
        Faults {
            isp_error_rate: 0.25,
            ..Faults::default()
        },
    )
    .await;
    // Even events carry W3C traceparent, odd ones B3 (single header, in
    // upper case); two carry a malformed traceparent; one is bad data.
    let mut records = Vec::new();
    for i in 0..EVENTS {
        let (trace, span) = producer_ids(i);
        let headers = if i % 2 == 0 {
            vec![("traceparent".to_owned(), format!("00-{trace}-{span}-01"))]
        } else {
            vec![("B3".to_owned(), format!("{trace}-{span}-1"))]
        };
        let key = format!("traces-{i}");
        records.push((key.clone(), event(&key, 1), headers));
    }
    for i in 0..2 {
        let key = format!("traces-malformed-{i}");
        records.push((
            key.clone(),
            event(&key, 1),
            vec![("traceparent".to_owned(), "00-nothex".to_owned())],
        ));
    }
    let (bad_trace, bad_span) = producer_ids(999);
    records.push((
        "traces-bad".to_owned(),
        b"{\"car_no\": broken".to_vec(),
        vec![(
            "traceparent".to_owned(),
            format!("00-{bad_trace}-{bad_span}-01"),
        )],
    ));
    scenario
        .kafka
        .produce_with_headers(&scenario.topic, &records)
        .await;
    let service = format!("paysync-e2e-{}", rand::random::<u32>());
    let endpoint = jaeger.otlp_grpc();
    let url = scenario.emulator.url();
    let process = Process::start_with_env(
        &scenario.config(&url, "max_attempts = 20"),
        &[
            ("PAYSYNC_TRACING__ENABLED", "true"),
            ("PAYSYNC_TRACING__ENDPOINT", endpoint.as_str()),
            ("PAYSYNC_TRACING__SERVICE_NAME", service.as_str()),
        ],
    );
    wait_accepted(&scenario.emulator, EVENTS + 2).await;
    scenario.wait_committed_to_end().await;
    let dead_letters = scenario.dead_letters();
    assert_eq!(dead_letters.len(), 1, "{}", process.log());
    assert_eq!(
        process.metric("paysync_trace_context_malformed_total"),
        Some(2.0)
    );
    let log = process.log();
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));

    // Jaeger's batch and the export queue flush within a second or two.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let spans = loop {
        let spans = jaeger.spans(&service).await;
        let deliveries = spans
            .values()
            .filter(|s| s["operationName"] == "paysync.deliver")
            .count();
        if deliveries >= EVENTS + 3 {
            break spans;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Jaeger holds {deliveries} delivery spans of {}",
            EVENTS + 3
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let deliveries: Vec<&Value> = spans
        .values()
        .filter(|s| s["operationName"] == "paysync.deliver")
        .collect();
    let calls: Vec<&Value> = spans
        .values()
        .filter(|s| s["operationName"] == "paysync.call")
        .collect();
    // Every delivery links to its producer's span: by trace id and span id.
    let mut linked = 0;
    let mut retried = 0;
    for i in 0..EVENTS {
        let (trace, span) = producer_ids(i);
        let delivery = deliveries
            .iter()
            .find(|d| references(d, "FOLLOWS_FROM").contains(&(trace.clone(), span.clone())))
            .unwrap_or_else(|| panic!("no delivery span links to producer span {trace}/{span}"));
        linked += 1;
        assert_ne!(
            delivery["traceID"].as_str(),
            Some(trace.as_str()),
            "linked, not parented"
        );
        assert_eq!(tag(delivery, "outcome").as_deref(), Some("delivered"));
        let attempts: usize = tag(delivery, "attempts").unwrap().parse().unwrap();
        let mine: Vec<&&Value> = calls
            .iter()
            .filter(|c| {
                references(c, "CHILD_OF")
                    .iter()
                    .any(|(_, s)| Some(s.as_str()) == delivery["spanID"].as_str())
            })
            .collect();
        assert_eq!(mine.len(), attempts, "one call span per attempt");
        if attempts > 1 {
            retried += 1;
            let failed = mine
                .iter()
                .filter(|c| tag(c, "top.code").as_deref() == Some("15"))
                .count();
            assert_eq!(
                failed,
                attempts - 1,
                "every attempt but the last answered isp error 15"
            );
            assert!(
                mine.iter()
                    .all(|c| tag(c, "http.response.status_code").as_deref() == Some("200"))
            );
            assert!(
                mine.iter()
                    .filter(|c| tag(c, "top.code").as_deref() == Some("15"))
                    .all(|c| tag(c, "top.sub_code").as_deref()
                        == Some("isp.top-remote-connection-error"))
            );
        }
    }
    assert!(retried > 0, "some events were retried");
    // The dead letter names the trace of the delivery that gave up.
    let (_, headers) = &dead_letters[0];
    let trace_id = headers
        .get(header::TRACE_ID)
        .expect("the dead letter carries its trace id");
    let gave_up = deliveries
        .iter()
        .find(|d| d["traceID"].as_str() == Some(trace_id.as_str()))
        .expect("the dead letter's trace is in Jaeger");
    assert_eq!(
        references(gave_up, "FOLLOWS_FROM"),
        vec![(bad_trace, bad_span)]
    );
    assert_eq!(
        tag(gave_up, "outcome").as_deref(),
        Some("dead_lettered:invalid_event")
    );
    assert!(
        log.lines()
            .any(|line| line.contains("dead-lettered") && line.contains(trace_id.as_str())),
        "the event's log lines carry its trace id"
    );
    for secret in [super::support::SECRET, "sign="] {
        assert!(
            !serde_json::to_string(&spans.values().collect::<Vec<_>>())
                .unwrap()
                .contains(secret)
        );
    }
    println!(
        "e2e traces: {} delivery spans ({linked} linked to their producer's W3C or B3 span, {retried} retried with one call span per attempt), {} call spans, 2 malformed headers counted, the dead letter's trace {trace_id} found",
        deliveries.len(),
        calls.len()
    );
    scenario.report(EVENTS + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_that_goes_away_drops_spans_and_delivery_goes_on() {
    let _serial = SERIAL.lock().await;
    let jaeger = Jaeger::start(25317);
    let scenario = Scenario::new("traces-down", Faults::default()).await;
    let first: Vec<(String, Vec<u8>)> = super::support::valid_events("down-a", 2_000);
    scenario.kafka.produce(&scenario.topic, &first).await;
    let endpoint = jaeger.otlp_grpc();
    let url = scenario.emulator.url();
    let process = Process::start_with_env(
        &scenario.config(&url, ""),
        &[
            ("PAYSYNC_DELIVERY__RATE_LIMIT_PER_SEC", "1000"),
            ("PAYSYNC_TRACING__ENABLED", "true"),
            ("PAYSYNC_TRACING__ENDPOINT", endpoint.as_str()),
            ("PAYSYNC_TRACING__EXPORT_TIMEOUT_MS", "500"),
        ],
    );
    wait_accepted(&scenario.emulator, 2_000).await;
    let with_collector = scenario.started.elapsed();
    drop(jaeger);
    let second: Vec<(String, Vec<u8>)> = super::support::valid_events("down-b", 4_000);
    let produced_at = std::time::Instant::now();
    scenario.kafka.produce(&scenario.topic, &second).await;
    wait_accepted(&scenario.emulator, 6_000).await;
    let without_collector = produced_at.elapsed();
    scenario.wait_committed_to_end().await;
    wait_until("dropped spans are counted", || {
        process
            .metric("paysync_trace_spans_dropped_total{reason=\"export_failed\"}")
            .is_some_and(|dropped| dropped > 0.0)
    })
    .await;
    let dropped = process
        .metric("paysync_trace_spans_dropped_total{reason=\"export_failed\"}")
        .unwrap_or(0.0)
        + process
            .metric("paysync_trace_spans_dropped_total{reason=\"queue_full\"}")
            .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{}/status", process.pid()))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0);
    // 4,000 events at 1,000/s: the rate, not the collector, sets the pace.
    assert!(
        without_collector < Duration::from_secs(15),
        "delivery slowed without the collector: {without_collector:?}"
    );
    assert!(
        rss < 200.0,
        "memory grew without the collector: {rss:.0} MiB"
    );
    let log = process.log();
    assert!(
        log.contains("Delivery traces are exported.") && log.contains(&endpoint),
        "start-up says where traces go"
    );
    assert_eq!(
        log.matches("Spans cannot be exported").count(),
        1,
        "the first failed export is logged, not every one"
    );
    println!(
        "e2e traces-down: 2,000 delivered with Jaeger ({:.1} s), 4,000 after it stopped in {:.1} s at 1,000/s, {dropped:.0} spans dropped and counted, RSS {rss:.0} MiB",
        with_collector.as_secs_f64(),
        without_collector.as_secs_f64()
    );
    scenario.report(6_000);
    process.kill();
}
