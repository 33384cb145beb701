//! The delivery pipeline against librdkafka's in-process mock cluster (real
//! Kafka protocol, consumer groups and commits) and the emulator on port 0.
//! One behaviour per test.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use paysync::config::Settings;
use paysync::emulator::{Emulator, Faults, RateLimit};
use paysync::metrics::Metrics;
use paysync::pipeline::dead_letter::header;
use paysync::pipeline::gate::{BreakerState, Gate};
use paysync::pipeline::{Health, Pipeline, Summary};
use paysync::top::classify::HaltCause;
use rdkafka::mocking::MockCluster;
use secrecy::SecretString;
use support::{
    APP_KEY, DeadLetter, Kafka, PATIENCE, Process, RunConfig, SECRET, event, valid_events,
    wait_accepted,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SOURCE: &str = "payments";
const DLQ: &str = "payments.dlq";

/// A mock cluster with the source and dead-letter topics, and an emulator.
struct Harness {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    kafka: Kafka,
    emulator: Emulator,
    group: String,
    partitions: i32,
}

impl Harness {
    async fn new(partitions: i32, faults: Faults) -> Harness {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(SOURCE, partitions, 1).unwrap();
        cluster.create_topic(DLQ, 1, 1).unwrap();
        let kafka = Kafka {
            bootstrap: cluster.bootstrap_servers(),
        };
        let group = format!("paysync-test-{}", rand::random::<u32>());
        Harness {
            cluster,
            kafka,
            emulator: support::emulator(faults).await,
            group,
            partitions,
        }
    }

    fn settings(&self) -> Settings {
        let mut settings = Settings::default();
        settings.kafka.bootstrap_servers = self.cluster.bootstrap_servers();
        settings.kafka.group_id = self.group.clone();
        settings.kafka.topics = vec![SOURCE.to_owned()];
        settings.kafka.dlq_topic = DLQ.to_owned();
        settings.kafka.session_timeout_ms = 6_000;
        settings.kafka.revoke_drain_timeout_ms = 3_000;
        settings.kafka.commit_interval_ms = 200;
        settings.delivery.rate_limit_per_sec = 10_000;
        settings.delivery.backoff_initial_ms = 20;
        settings.delivery.backoff_max_ms = 200;
        settings.delivery.breaker_probe_interval_ms = 200;
        settings.delivery.halt_probe_interval_ms = 500;
        settings.delivery.shutdown_drain_timeout_ms = 5_000;
        settings.top.gateway_url = self.emulator.url();
        settings.top.app_key = APP_KEY.to_owned();
        settings.top.app_secret = Some(SecretString::from(SECRET));
        settings.top.request_timeout_ms = 2_000;
        settings.top.connect_timeout_ms = 1_000;
        settings
    }

    /// A `paysync run` configuration for this harness.
    fn run_config<'a>(&'a self, url: &'a str, delivery: &'a str, top: &'a str) -> RunConfig<'a> {
        RunConfig {
            bootstrap: &self.kafka.bootstrap,
            group: &self.group,
            topic: SOURCE,
            dlq: DLQ,
            gateway_url: url,
            delivery,
            top,
            commit_interval_ms: 100,
        }
    }

    async fn produce(&self, records: &[(String, Vec<u8>)]) {
        self.kafka.produce(SOURCE, records).await;
    }

    fn committed(&self) -> BTreeMap<i32, i64> {
        self.kafka.committed(&self.group, SOURCE, self.partitions)
    }

    fn end_offsets(&self) -> BTreeMap<i32, i64> {
        self.kafka.end_offsets(SOURCE, self.partitions)
    }

    fn dead_letters(&self) -> Vec<DeadLetter> {
        self.kafka.dead_letters(DLQ)
    }

    fn accepted_order_ids(&self) -> Vec<String> {
        support::accepted_order_ids(&self.emulator)
    }
}

/// A running pipeline and the means to stop it.
struct Running {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    gate: Arc<Gate>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<Summary>>>,
}

/// A failing test drops a running pipeline: stop it so the mock cluster can shut down.
impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Running {
    async fn start(settings: Settings) -> Running {
        let pipeline = tokio::task::spawn_blocking(move || Pipeline::build(settings))
            .await
            .unwrap()
            .unwrap();
        let metrics = pipeline.metrics();
        let health = pipeline.health();
        let gate = pipeline.gate_handle();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(pipeline.run(async move {
            let _ = stopped.await;
        }));
        Running {
            metrics,
            health,
            gate,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) -> Summary {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap()
    }

    fn summary(&self) -> Summary {
        Summary::of(&self.metrics)
    }

    /// Waits until `done` holds for the stats, or fails after PATIENCE.
    async fn wait_for(&self, what: &str, done: impl Fn(&Summary) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(&self.summary()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.summary()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn wait_committed(harness: &Harness, expected: &BTreeMap<i32, i64>) {
    harness
        .kafka
        .wait_committed(&harness.group, SOURCE, expected)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_delivers_every_event_of_many_partitions_and_commits_the_end() {
    let harness = Harness::new(6, Faults::default()).await;
    let events = valid_events("ok", 600);
    harness.produce(&events).await;
    let running = Running::start(harness.settings()).await;
    running
        .wait_for("600 deliveries", |s| s.delivered == 600)
        .await;
    let ends = harness.end_offsets();
    wait_committed(&harness, &ends).await;
    let summary = running.stop().await;
    assert_eq!(summary.dead_lettered(), 0);
    let accepted: HashSet<String> = harness.accepted_order_ids().into_iter().collect();
    assert_eq!(accepted, events.iter().map(|(k, _)| k.clone()).collect());
    assert_eq!(ends.values().sum::<i64>(), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_goes_to_the_dlq_with_every_header_and_does_not_block_its_partition() {
    let faults = Faults {
        reject_order_ids: vec!["refused-by-api".into()],
        ..Faults::default()
    };
    let harness = Harness::new(1, faults).await;
    let mut records = valid_events("before", 20);
    records.push(("bad-json".into(), b"{not json".to_vec()));
    records.push((
        "negative-fee".into(),
        event("negative-fee", 1)
            .into_iter()
            .collect::<Vec<u8>>()
            .replace_fee(),
    ));
    records.push(("refused-by-api".into(), event("refused-by-api", 1)));
    records.extend(valid_events("after", 20));
    harness.produce(&records).await;
    let running = Running::start(harness.settings()).await;
    running
        .wait_for("40 deliveries and 3 dead letters", |s| {
            s.delivered == 40 && s.dead_lettered() == 3
        })
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    let summary = running.stop().await;
    assert_eq!(summary.dead_lettered_invalid_event, 2);
    assert_eq!(summary.dead_lettered_rejected, 1);

    let dead = harness.dead_letters();
    assert_eq!(dead.len(), 3);
    let by_offset: HashMap<String, &DeadLetter> = dead
        .iter()
        .map(|d| (d.1[header::SOURCE_OFFSET].clone(), d))
        .collect();
    let (value, headers) = by_offset["20"];
    assert_eq!(
        value.as_deref(),
        Some(&b"{not json"[..]),
        "the original value is kept unchanged"
    );
    assert_eq!(headers[header::CLASS], "invalid_event");
    assert!(headers[header::MESSAGE].contains("not valid JSON"));
    assert_eq!(
        headers["source-system"], "parking-platform",
        "original headers are kept"
    );
    let (_, headers) = by_offset["21"];
    assert!(headers[header::MESSAGE].contains("pay_fee"), "{headers:?}");
    let (_, headers) = by_offset["22"];
    assert_eq!(headers[header::CLASS], "rejected");
    assert_eq!(headers[header::REASON], "business_rejected");
    assert_eq!(headers[header::TOP_CODE], "404");
    assert_eq!(headers[header::ATTEMPTS], "1");
    assert_eq!(headers[header::TOP_REQUEST_ID].len(), 13);
    for name in [
        header::SOURCE_TOPIC,
        header::SOURCE_PARTITION,
        header::SOURCE_TIMESTAMP,
        header::CONSUMER_GROUP,
        header::FIRST_ATTEMPT_AT,
        header::LAST_ATTEMPT_AT,
        header::DEAD_LETTERED_AT,
    ] {
        assert!(headers.contains_key(name), "{name} missing: {headers:?}");
    }
    assert_eq!(headers[header::CONSUMER_GROUP], harness.group);
    for (_, headers) in &dead {
        for value in headers.values() {
            assert!(
                !value.contains(SECRET),
                "the secret leaked into a dead letter"
            );
        }
        assert!(
            !headers.keys().any(|k| k.contains("sign")),
            "no signature header"
        );
    }
}

trait ReplaceFee {
    fn replace_fee(self) -> Vec<u8>;
}

impl ReplaceFee for Vec<u8> {
    fn replace_fee(self) -> Vec<u8> {
        String::from_utf8(self)
            .unwrap()
            .replace("\"pay_fee\":1000", "\"pay_fee\":-5")
            .into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_are_retried_then_committed() {
    let faults = Faults {
        isp_error_rate: 0.3,
        unavailable_rate: 0.1,
        http_502_rate: 0.1,
        ..Faults::default()
    };
    let harness = Harness::new(3, faults).await;
    harness.produce(&valid_events("flaky", 200)).await;
    let mut settings = harness.settings();
    settings.delivery.max_attempts = 50;
    settings.delivery.breaker_failure_threshold = 1_000;
    let running = Running::start(settings).await;
    running
        .wait_for("200 deliveries", |s| s.delivered == 200)
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    let summary = running.stop().await;
    assert_eq!(summary.dead_lettered(), 0);
    assert!(
        summary.failed_calls > 20,
        "faults were injected: {summary:?}"
    );
    assert_eq!(summary.calls, summary.delivered + summary.failed_calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_total_gateway_outage_dead_letters_nothing_and_delivery_resumes() {
    let harness = Harness::new(
        2,
        Faults {
            drop_connection_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("outage", 100)).await;
    let mut settings = harness.settings();
    settings.delivery.max_attempts = 3;
    settings.delivery.breaker_failure_threshold = 5;
    let running = Running::start(settings).await;
    running
        .wait_for("the breaker to see failures", |s| s.failed_calls >= 5)
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while running.gate.status().breaker == BreakerState::Closed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for many probes and far more than max_attempts per event.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = running.summary();
    assert_eq!(
        during.dead_lettered(),
        0,
        "an outage is not poison: {during:?}"
    );
    assert_eq!(during.delivered, 0);
    assert_eq!(
        harness.committed().values().sum::<i64>(),
        0,
        "nothing committed past unsent messages"
    );
    harness.emulator.gateway().set_faults(Faults::default());
    running.wait_for("recovery", |s| s.delivered == 100).await;
    wait_committed(&harness, &harness.end_offsets()).await;
    assert_eq!(running.gate.status().breaker, BreakerState::Closed);
    assert_eq!(running.stop().await.dead_lettered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_secret_halts_with_zero_dead_letters() {
    let harness = Harness::new(2, Faults::default()).await;
    harness.produce(&valid_events("halt", 50)).await;
    let mut settings = harness.settings();
    settings.top.app_secret = Some(SecretString::from("not-the-secret"));
    let running = Running::start(settings).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while running.gate.status().halted.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never halted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running.gate.status().halted, Some(HaltCause::Signature));
    // Calls already under way finish; after that only one probe per interval (500 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls_when_halted = running.summary().calls;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let summary = running.summary();
    assert_eq!(summary.dead_lettered(), 0);
    assert_eq!(summary.delivered, 0);
    assert!(
        summary.calls - calls_when_halted <= 5,
        "a halt probes slowly: {summary:?}"
    );
    assert_eq!(harness.committed().values().sum::<i64>(), 0);
    let summary = running.stop().await;
    assert_eq!(summary.dead_lettered(), 0);
    assert!(harness.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_7_ban_pauses_every_call_for_the_announced_time() {
    let faults = Faults {
        rate_limit: Some(RateLimit {
            calls_per_second: 30,
            ban_seconds: 2,
        }),
        ..Faults::default()
    };
    let harness = Harness::new(4, faults).await;
    harness.produce(&valid_events("ban", 120)).await;
    let mut settings = harness.settings();
    settings.delivery.max_in_flight = 8;
    settings.delivery.max_attempts = 2;
    let running = Running::start(settings).await;
    running
        .wait_for("120 deliveries", |s| s.delivered == 120)
        .await;
    let summary = running.stop().await;
    assert_eq!(
        summary.dead_lettered(),
        0,
        "waiting for a ban spends no attempts"
    );
    let stats = harness.emulator.gateway().stats();
    let bans = stats.answers.get("error_7").copied().unwrap_or(0);
    assert!(bans >= 1, "the limit was reached: {stats:?}");
    // Everyone waits for the ban: only the calls already in flight meet it.
    let windows = 120 / 30;
    assert!(
        bans <= (8 + 1) * windows as u64,
        "calls kept hitting the ban: {bans}"
    );
    // Accepted orders never arrive during a ban: each 2 s ban follows at most 30 accepted.
    let times: Vec<chrono::DateTime<chrono::Utc>> = harness
        .emulator
        .gateway()
        .orders()
        .iter()
        .map(|o| o.received_at.parse().unwrap())
        .collect();
    let span = *times.last().unwrap() - times[0];
    assert!(
        span >= chrono::Duration::seconds(2 * (windows as i64 - 1)),
        "bans were honoured: {span}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_never_overtakes_its_payment() {
    let faults = Faults {
        latency_ms: 1,
        latency_jitter_ms: 20,
        isp_error_rate: 0.2,
        ..Faults::default()
    };
    let harness = Harness::new(3, faults).await;
    let mut records = Vec::new();
    for i in 0..60 {
        let order = format!("ord-{i}");
        records.push((order.clone(), event(&order, 1)));
        records.push((order.clone(), event(&order, 2)));
    }
    harness.produce(&records).await;
    let mut settings = harness.settings();
    settings.delivery.max_in_flight = 64;
    settings.delivery.max_attempts = 50;
    settings.delivery.breaker_failure_threshold = 1_000;
    let running = Running::start(settings).await;
    running
        .wait_for("120 deliveries", |s| s.delivered == 120)
        .await;
    running.stop().await;
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for order in harness.emulator.gateway().orders() {
        seen.entry(order.order["order_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(order.order["order_type"].as_u64().unwrap());
    }
    assert_eq!(seen.len(), 60);
    for (order, types) in seen {
        assert_eq!(
            types,
            vec![1, 2],
            "{order}: the refund overtook the payment"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limit_holds() {
    let harness = Harness::new(2, Faults::default()).await;
    harness.produce(&valid_events("rate", 150)).await;
    let mut settings = harness.settings();
    settings.delivery.rate_limit_per_sec = 50;
    settings.delivery.rate_limit_burst = Some(5);
    let running = Running::start(settings).await;
    running
        .wait_for("150 deliveries", |s| s.delivered == 150)
        .await;
    running.stop().await;
    let times: Vec<chrono::DateTime<chrono::Utc>> = harness
        .emulator
        .gateway()
        .orders()
        .iter()
        .map(|o| o.received_at.parse().unwrap())
        .collect();
    // In any one-second window, no more than the rate plus the burst.
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| **t - *start < chrono::Duration::seconds(1))
            .count();
        assert!(in_window <= 55, "{in_window} calls within one second");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_consumer_joining_mid_stream_loses_nothing() {
    let harness = Harness::new(
        6,
        Faults {
            latency_ms: 5,
            ..Faults::default()
        },
    )
    .await;
    let events = valid_events("join", 400);
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.delivery.max_in_flight = 4;
    let first = Running::start(settings.clone()).await;
    first
        .wait_for("some deliveries", |s| s.delivered >= 50)
        .await;
    let second = Running::start(settings).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let accepted: HashSet<String> = harness.accepted_order_ids().into_iter().collect();
        if accepted.len() == events.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} delivered",
            accepted.len(),
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_committed(&harness, &harness.end_offsets()).await;
    let (a, b) = (first.stop().await, second.stop().await);
    assert!(a.rebalances >= 1, "the first consumer saw the rebalance");
    assert!(
        b.delivered > 0,
        "the second consumer took partitions over: {b:?}"
    );
    assert_eq!(a.dead_lettered() + b.dead_lettered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_and_commits_so_a_restart_sends_nothing_again() {
    let harness = Harness::new(
        3,
        Faults {
            latency_ms: 20,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("drain", 150)).await;
    let mut settings = harness.settings();
    settings.kafka.commit_interval_ms = 60_000;
    let running = Running::start(settings.clone()).await;
    running
        .wait_for("all deliveries", |s| s.delivered == 150)
        .await;
    running.stop().await;
    assert_eq!(
        harness.committed(),
        harness.end_offsets(),
        "the final commit covers everything delivered"
    );
    let again = Running::start(settings).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = again.stop().await;
    assert_eq!(summary.consumed, 0, "nothing was redelivered: {summary:?}");
    assert_eq!(harness.emulator.gateway().order_counts(), (150, 150, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_redelivers_everything_uncommitted_and_loses_nothing() {
    let harness = Harness::new(
        3,
        Faults {
            latency_ms: 5,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("crash", 500)).await;
    let url = harness.emulator.url();
    let config = harness.run_config(&url, "max_in_flight = 8", "");
    let process = Process::start(&config);
    wait_accepted(&harness.emulator, 150).await;
    process.kill(); // SIGKILL: no drain, no final commit.
    let accepted_before = harness.emulator.gateway().order_counts().0;
    let committed_at_crash: i64 = harness.committed().values().sum();
    assert!(committed_at_crash < 500, "the crash came before the end");
    assert!(
        committed_at_crash as usize <= accepted_before,
        "nothing is committed before it is accepted"
    );

    let restarted = Process::start(&config);
    wait_accepted(&harness.emulator, 500).await;
    wait_committed(&harness, &harness.end_offsets()).await;
    restarted.signal("TERM");
    assert_eq!(restarted.wait_exit(Duration::from_secs(20)).await, Some(0));

    let (accepted, unique, duplicates) = harness.emulator.gateway().order_counts();
    assert_eq!(unique, 500, "nothing lost");
    let sent_after_restart = accepted - accepted_before;
    assert!(
        sent_after_restart as i64 >= 500 - committed_at_crash,
        "everything from the committed position was sent again: {sent_after_restart} after restart, {committed_at_crash} committed"
    );
    println!("crash: accepted {accepted}, unique {unique}, duplicates {duplicates}");
    assert!(harness.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_signal_exits_at_once_without_committing_unfinished_work() {
    // Calls that take 30 s keep the first signal's drain waiting.
    let harness = Harness::new(
        1,
        Faults {
            latency_ms: 30_000,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("signal", 5)).await;
    let url = harness.emulator.url();
    let mut process = Process::start(&harness.run_config(
        &url,
        "shutdown_drain_timeout_ms = 60000",
        "request_timeout_ms = 60000",
    ));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while harness.emulator.gateway().stats().received == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no call was made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        harness.emulator.gateway().stats().requests,
        0,
        "the calls are still under way"
    );
    assert!(
        process.child.try_wait().unwrap().is_none(),
        "the first signal waits for calls under way"
    );
    process.signal("TERM");
    let started = tokio::time::Instant::now();
    assert_eq!(process.wait_exit(Duration::from_secs(10)).await, Some(130));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        harness.committed().values().sum::<i64>(),
        0,
        "nothing unfinished was committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_dead_letter_topic_is_a_clear_start_up_error() {
    let harness = Harness::new(1, Faults::default()).await;
    let mut settings = harness.settings();
    settings.kafka.dlq_topic = "no-such-topic".to_owned();
    let built = tokio::task::spawn_blocking(move || Pipeline::build(settings))
        .await
        .unwrap();
    let error = format!("{:#}", built.err().expect("start-up must fail"));
    assert!(
        error.contains("\"no-such-topic\" does not exist"),
        "{error}"
    );
}

/// The admin server over a running pipeline, on a free port.
async fn admin_for(running: &Running) -> (paysync::admin::AdminServer, String) {
    let state = paysync::admin::AdminState {
        metrics: running.metrics.clone(),
        health: running.health.clone(),
        gate: running.gate.clone(),
        liveness_timeout: Duration::from_secs(30),
    };
    let server = paysync::admin::AdminServer::start("127.0.0.1:0".parse().unwrap(), state)
        .await
        .unwrap();
    let base = format!("http://{}", server.addr());
    (server, base)
}

/// The value of one series in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_after_a_run_show_every_documented_series_with_sane_values() {
    let faults = Faults {
        isp_error_rate: 0.2,
        reject_order_ids: vec!["metrics-7".into()],
        ..Faults::default()
    };
    let harness = Harness::new(3, faults).await;
    let mut records = valid_events("metrics", 100);
    records.push(("broken".into(), b"not json".to_vec()));
    harness.produce(&records).await;
    let mut settings = harness.settings();
    settings.kafka.statistics_interval_ms = 200;
    settings.delivery.max_attempts = 50;
    settings.delivery.breaker_failure_threshold = 1_000;
    let running = Running::start(settings).await;
    running
        .wait_for("all outcomes", |s| {
            s.delivered == 99 && s.dead_lettered() == 2
        })
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    let (admin, base) = admin_for(&running).await;
    // Statistics arrive every 200 ms; wait for the committed offsets to show.
    let ends = harness.end_offsets();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let text = loop {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let all_committed = ends.iter().all(|(p, end)| {
            sample(
                &text,
                &format!(
                    r#"paysync_partition_committed_offset{{partition="{p}",topic="payments"}}"#
                ),
            ) == Some(*end as f64)
        });
        if all_committed {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed offsets never showed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
    assert_eq!(value("paysync_events_consumed_total"), 101.0);
    assert_eq!(value("paysync_events_delivered_total"), 99.0);
    assert_eq!(
        value(
            r#"paysync_events_dead_lettered_total{class="invalid_event",reason="invalid_event"}"#
        ),
        1.0
    );
    assert_eq!(
        value(r#"paysync_events_dead_lettered_total{class="rejected",reason="business_rejected"}"#),
        1.0
    );
    assert_eq!(
        value(r#"paysync_call_outcomes_total{disposition="delivered",reason="accepted"}"#),
        99.0
    );
    assert!(
        value(r#"paysync_call_outcomes_total{disposition="retry",reason="server_error"}"#) >= 1.0
    );
    assert!(value(r#"paysync_top_errors_total{code="15",sub_code_class="isp"}"#) >= 1.0);
    assert!(value("paysync_call_duration_seconds_count") >= 100.0);
    assert_eq!(value("paysync_delivery_latency_seconds_count"), 99.0);
    assert!(value("paysync_rate_limiter_wait_seconds_count") >= 100.0);
    assert!(value("paysync_rate_limiter_tokens") >= 0.0);
    assert_eq!(value("paysync_calls_in_flight"), 0.0);
    assert_eq!(value("paysync_window_messages"), 0.0);
    assert_eq!(value("paysync_oldest_in_flight_age_seconds"), 0.0);
    assert_eq!(value(r#"paysync_breaker_state{state="closed"}"#), 1.0);
    assert_eq!(value(r#"paysync_halted{cause="signature"}"#), 0.0);
    assert_eq!(value("paysync_ban_remaining_seconds"), 0.0);
    assert_eq!(value("paysync_assigned_partitions"), 3.0);
    for (partition, end) in &ends {
        let labels = format!(r#"{{partition="{partition}",topic="payments"}}"#);
        assert_eq!(
            value(&format!("paysync_partition_completed_offset{labels}")),
            *end as f64
        );
        assert_eq!(
            value(&format!("paysync_partition_lag_messages{labels}")),
            0.0
        );
    }
    assert!(value(r#"paysync_rebalances_total{kind="assign"}"#) >= 1.0);
    assert_eq!(value("paysync_dlq_produce_failures_total"), 0.0);
    assert!(value("paysync_seconds_since_last_commit") < 10.0);
    assert_eq!(
        value(&format!(
            r#"paysync_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert!(
        !text.contains("metrics-1"),
        "no order id may become a label"
    );
    admin.stop().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_is_degraded_while_the_breaker_is_open_and_liveness_holds() {
    let harness = Harness::new(
        1,
        Faults {
            http_503_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("ready", 20)).await;
    let mut settings = harness.settings();
    settings.delivery.breaker_failure_threshold = 3;
    let running = Running::start(settings).await;
    let (admin, base) = admin_for(&running).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let body: paysync::admin::Readiness = loop {
        let response = reqwest::get(format!("{base}/health/ready")).await.unwrap();
        let code = response.status();
        let body: paysync::admin::Readiness =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        if body.status == "degraded" {
            assert_eq!(
                code, 200,
                "degraded is still ready: no restarts during an outage"
            );
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never degraded: {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.joined);
    assert_eq!(body.assigned_partitions, 1);
    assert!(
        body.reasons.iter().any(|r| r.contains("circuit breaker")),
        "{body:?}"
    );
    assert_eq!(
        reqwest::get(format!("{base}/health/live"))
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&metrics, r#"paysync_breaker_state{state="closed"}"#),
        Some(0.0),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("breaker") || l.contains("halted"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    harness.emulator.gateway().set_faults(Faults::default());
    running.wait_for("recovery", |s| s.delivered == 20).await;
    let ready: paysync::admin::Readiness = serde_json::from_str(
        &reqwest::get(format!("{base}/health/ready"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ready.status, "ready");
    admin.stop().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_reports_a_halt_as_not_ready_with_its_cause() {
    let harness = Harness::new(1, Faults::default()).await;
    harness.produce(&valid_events("halted", 5)).await;
    let mut settings = harness.settings();
    settings.top.app_secret = Some(SecretString::from("wrong"));
    let running = Running::start(settings).await;
    let (admin, base) = admin_for(&running).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = reqwest::get(format!("{base}/health/ready")).await.unwrap();
        let code = response.status();
        let body: paysync::admin::Readiness =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        if body.status == "halted" {
            assert_eq!(code, 503);
            assert_eq!(body.halted.as_deref(), Some("signature"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never halted: {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        reqwest::get(format!("{base}/health/live"))
            .await
            .unwrap()
            .status(),
        200,
        "a halt is not a stuck process"
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&metrics, r#"paysync_halted{cause="signature"}"#),
        Some(1.0)
    );
    assert!(
        !metrics.contains("wrong"),
        "the secret never reaches the metrics"
    );
    admin.stop().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_sends_exactly_the_range_once_and_leaves_the_live_group_alone() {
    use paysync::replay::{ReplayRequest, run as replay};
    let harness = Harness::new(1, Faults::default()).await;
    let mut records = valid_events("replay", 60);
    records[15].1 = b"{broken".to_vec();
    harness.produce(&records).await;
    // The live group delivers everything first.
    let running = Running::start(harness.settings()).await;
    running
        .wait_for("the live run", |s| s.delivered + s.dead_lettered() == 60)
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    running.stop().await;
    let live_committed = harness.committed();
    let accepted_live = harness.emulator.gateway().orders().len();

    let request = ReplayRequest {
        partitions: vec![0],
        from_offset: Some(10),
        to_offset: Some(30),
        rate: Some(1_000),
        rate_fraction: 0.25,
        ..ReplayRequest::default()
    };
    // A dry run decodes the range and sends nothing.
    let dry = replay(
        harness.settings(),
        ReplayRequest {
            dry_run: true,
            ..request.clone()
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    let (valid, invalid, problems) = dry.checked.clone().unwrap();
    assert_eq!((valid, invalid), (19, 1));
    assert!(problems[0].contains("@15"), "{problems:?}");
    assert_eq!(harness.emulator.gateway().orders().len(), accepted_live);

    let report = replay(harness.settings(), request.clone(), std::future::pending())
        .await
        .unwrap();
    let summary = report.summary.unwrap();
    assert_eq!(
        (summary.delivered, summary.dead_lettered_invalid_event),
        (19, 1)
    );
    let replayed: Vec<String> = harness.emulator.gateway().orders()[accepted_live..]
        .iter()
        .map(|o| o.order["order_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (10..30)
        .filter(|i| *i != 15)
        .map(|i| format!("replay-{i}"))
        .collect();
    let mut sorted = replayed.clone();
    sorted.sort_by_key(|id| id.trim_start_matches("replay-").parse::<u32>().unwrap());
    assert_eq!(sorted, expected, "exactly the range, not one event more");
    assert_eq!(
        harness.committed(),
        live_committed,
        "the live group's offsets are untouched"
    );
    let progress = harness
        .kafka
        .committed(&format!("{}.replay", harness.group), SOURCE, 1);
    assert_eq!(progress.get(&0), Some(&30));

    // Run again: the replay continues from its progress, which is the end.
    let again = replay(harness.settings(), request, std::future::pending())
        .await
        .unwrap();
    assert_eq!(again.ranges[0].start, 30);
    assert_eq!(
        harness.emulator.gateway().orders().len(),
        accepted_live + 19
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_inspect_lists_dead_letters_and_redrive_moves_only_the_selected_ones_once() {
    use paysync::dlq::{Filter, Target, inspect, redrive};
    let harness = Harness::new(
        1,
        Faults {
            reject_order_ids: vec!["dlq-5".into()],
            ..Faults::default()
        },
    )
    .await;
    let mut records = valid_events("dlq", 10);
    records[3].1 = b"not json".to_vec();
    harness.produce(&records).await;
    let running = Running::start(harness.settings()).await;
    running
        .wait_for("8 deliveries and 2 dead letters", |s| {
            s.delivered == 8 && s.dead_lettered() == 2
        })
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    running.stop().await;
    let settings = harness.settings();

    let all = tokio::task::spawn_blocking({
        let settings = settings.clone();
        move || inspect(&settings, &Filter::default())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(all.len(), 2);
    let rejected_only = Filter {
        class: Some("rejected".into()),
        ..Filter::default()
    };
    let rejected: Vec<_> = all.iter().filter(|r| rejected_only.matches(r)).collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].code.as_deref(), Some("404"));
    assert_eq!(rejected[0].source_offset, Some(5));
    assert_eq!(rejected[0].reason, "business_rejected");
    assert!(paysync::dlq::render_table(&all).contains("invalid_event"));

    let source_end = harness.end_offsets()[&0];
    let dry = redrive(&settings, &rejected_only, Target::Source, None, true)
        .await
        .unwrap();
    assert_eq!((dry.selected, dry.redriven), (1, 0));
    assert_eq!(
        harness.end_offsets()[&0],
        source_end,
        "a dry run sends nothing"
    );

    // The API takes the order now; redrive it to the source topic, once.
    harness.emulator.gateway().set_faults(Faults::default());
    let done = redrive(&settings, &rejected_only, Target::Source, None, false)
        .await
        .unwrap();
    assert_eq!((done.examined, done.selected, done.redriven), (2, 1, 1));
    assert_eq!(harness.end_offsets()[&0], source_end + 1);
    let again = redrive(&settings, &rejected_only, Target::Source, None, false)
        .await
        .unwrap();
    assert_eq!(
        (again.examined, again.redriven),
        (0, 0),
        "a record is redriven once"
    );

    let running = Running::start(settings.clone()).await;
    running
        .wait_for("the redriven event", |s| s.delivered == 1)
        .await;
    running.stop().await;
    assert_eq!(
        harness
            .accepted_order_ids()
            .iter()
            .filter(|id| *id == "dlq-5")
            .count(),
        1
    );

    // Straight to the API: an invalid event is reported, not accepted.
    let invalid_only = Filter {
        class: Some("invalid_event".into()),
        ..Filter::default()
    };
    let api = redrive(
        &settings,
        &invalid_only,
        Target::Api,
        Some("api-redrive"),
        false,
    )
    .await
    .unwrap();
    assert_eq!((api.selected, api.redriven, api.failed.len()), (1, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_carry_each_events_position_and_never_a_secret() {
    const SESSION: &str = "session-token-never-logged";
    const WRONG: &str = "wrong-secret-never-logged";
    let harness = Harness::new(1, Faults::default()).await;
    let mut records = valid_events("logs", 3);
    records.push(("logs-bad".into(), b"{\"pay_fee\": -1}".to_vec()));
    harness.produce(&records).await;
    let url = harness.emulator.url();
    let top = format!("session = \"{SESSION}\"");
    let config = harness.run_config(&url, "", &top);
    let json_debug = [
        ("RUST_LOG", "paysync=debug"),
        ("PAYSYNC_LOG__FORMAT", "json"),
    ];
    let process = Process::start_with_env(&config, &json_debug);
    wait_accepted(&harness.emulator, 3).await;
    wait_committed(&harness, &harness.end_offsets()).await;
    process.signal("TERM");
    let log = process.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let answered = lines
        .iter()
        .find(|l| l["message"] == "Call answered.")
        .expect("a debug line per call");
    let span = &answered["span"];
    assert_eq!(span["topic"], SOURCE);
    assert_eq!(span["partition"], 0);
    assert!(
        span["order_id"].as_str().unwrap().starts_with("logs-"),
        "{answered}"
    );
    assert_eq!(
        span["request_id"].as_str().map(str::len),
        Some(13),
        "{answered}"
    );
    let dead = lines
        .iter()
        .find(|l| l["message"] == "Event dead-lettered.")
        .expect("the dead letter is logged");
    assert_eq!(dead["span"]["offset"], 3);
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));

    // A wrong secret halts, and the halt's log names the cause, not the secret.
    let halting = Process::start_with_env(
        &config,
        &[
            json_debug[0],
            json_debug[1],
            ("PAYSYNC_TOP__APP_SECRET", WRONG),
        ],
    );
    harness.produce(&valid_events("logs-halt", 2)).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !halting.log().contains("Delivery halted") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never halted:\n{}",
            halting.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = format!("{log}\n{}", halting.log());
    for secret in [SECRET, WRONG, SESSION] {
        assert!(!all.contains(secret), "{secret} reached the logs");
    }
    assert!(!all.contains("sign="), "no signature in the logs");
    halting.kill();
}
