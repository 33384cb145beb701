//! End to end against a real Apache Kafka broker (`scripts/kafka start`), with
//! the real `paysync` binary as a child process and the emulator in this
//! process. Built only with `--features e2e`; the broker's address comes from
//! `PAYSYNC_E2E_BOOTSTRAP` (default `127.0.0.1:19092`, the script's default).
//!
//! Each test creates its own topics and group. The tests run one at a time
//! (one of them restarts the broker) and print their counts.

#[allow(dead_code)] // The end-to-end suite uses part of the shared helpers.
#[path = "it/support.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use paysync::dead_letter::header;
use paysync::tools::emulator::{Emulator, Faults};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use support::{DeadLetter, Kafka, Process, RunConfig, valid_events, wait_accepted};

/// One test at a time: one of them stops the broker.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PARTITIONS: i32 = 6;

fn bootstrap() -> String {
    std::env::var("PAYSYNC_E2E_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
}

/// A test's own topics, group and emulator.
struct Scenario {
    name: String,
    kafka: Kafka,
    topic: String,
    dlq: String,
    group: String,
    emulator: Emulator,
    started: Instant,
}

impl Scenario {
    async fn new(name: &str, faults: Faults) -> Scenario {
        let kafka = Kafka {
            bootstrap: bootstrap(),
        };
        let suffix = rand::random::<u32>();
        let topic = format!("e2e-{name}-{suffix}");
        let dlq = format!("{topic}.dlq");
        let admin: AdminClient<DefaultClientContext> = kafka.client_config().create().unwrap();
        let created = admin
            .create_topics(
                &[
                    NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1)),
                    NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
                ],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("the broker answers (run scripts/kafka start first)");
        for result in created {
            result.unwrap_or_else(|(topic, error)| panic!("cannot create {topic}: {error}"));
        }
        Scenario {
            name: name.to_owned(),
            kafka,
            topic,
            dlq,
            group: format!("e2e-{name}-{suffix}"),
            emulator: support::emulator(faults).await,
            started: Instant::now(),
        }
    }

    fn config<'a>(&'a self, url: &'a str, delivery: &'a str) -> RunConfig<'a> {
        RunConfig {
            bootstrap: &self.kafka.bootstrap,
            group: &self.group,
            topic: &self.topic,
            dlq: &self.dlq,
            gateway_url: url,
            delivery,
            top: "",
            commit_interval_ms: 100,
        }
    }

    fn end_offsets(&self) -> BTreeMap<i32, i64> {
        self.kafka.end_offsets(&self.topic, PARTITIONS)
    }

    fn committed(&self) -> BTreeMap<i32, i64> {
        self.kafka.committed(&self.group, &self.topic, PARTITIONS)
    }

    async fn wait_committed_to_end(&self) {
        self.kafka
            .wait_committed(&self.group, &self.topic, &self.end_offsets())
            .await;
    }

    fn dead_letters(&self) -> Vec<DeadLetter> {
        self.kafka.dead_letters(&self.dlq)
    }

    fn accepted_ids(&self) -> HashSet<String> {
        support::accepted_order_ids(&self.emulator)
            .into_iter()
            .collect()
    }

    /// Prints the scenario's counts for the run log.
    fn report(&self, produced: usize) {
        let (accepted, unique, duplicates) = self.emulator.gateway().order_counts();
        println!(
            "e2e {}: produced {produced}, delivered {unique} (calls accepted {accepted}, duplicates {duplicates}), dead-lettered {}, {:.1} s",
            self.name,
            self.dead_letters().len(),
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn kafka_script(command: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(command)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/kafka {command} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_events_reach_the_api_or_the_dlq_and_offsets_reach_the_end() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new(
        "bulk",
        Faults {
            reject_order_ids: (0..20).map(|i| format!("bulk-{}", i * 997)).collect(),
            ..Faults::default()
        },
    )
    .await;
    let mut records = valid_events("bulk", 20_000);
    let mut bad_offsets_expected = 0;
    for (i, record) in records.iter_mut().enumerate() {
        if i % 1000 == 500 {
            record.1 = b"{\"car_no\": broken".to_vec();
            bad_offsets_expected += 1;
        }
    }
    scenario.kafka.produce(&scenario.topic, &records).await;
    let url = scenario.emulator.url();
    let process = Process::start(&scenario.config(&url, "max_in_flight = 128"));
    let rejected: HashSet<String> = (0..20).map(|i| format!("bulk-{}", i * 997)).collect();
    let invalid: HashSet<String> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 1000 == 500)
        .map(|(_, r)| r.0.clone())
        .collect();
    let valid: HashSet<String> = records
        .iter()
        .map(|r| r.0.clone())
        .filter(|id| !rejected.contains(id) && !invalid.contains(id))
        .collect();
    wait_accepted(&scenario.emulator, valid.len()).await;
    scenario.wait_committed_to_end().await;
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));

    assert_eq!(
        scenario.accepted_ids(),
        valid,
        "every valid event reached the API, nothing else did"
    );
    let dead = scenario.dead_letters();
    assert_eq!(dead.len(), rejected.len() + bad_offsets_expected);
    let mut classes = BTreeMap::new();
    for (value, headers) in &dead {
        *classes.entry(headers[header::CLASS].clone()).or_insert(0) += 1;
        assert_eq!(headers[header::SOURCE_TOPIC], scenario.topic);
        assert_eq!(headers[header::CONSUMER_GROUP], scenario.group);
        assert_eq!(headers["source-system"], "parking-platform");
        assert!(value.is_some());
    }
    assert_eq!(classes.get("invalid_event"), Some(&invalid.len()));
    assert_eq!(classes.get("rejected"), Some(&rejected.len()));
    assert_eq!(scenario.committed(), scenario.end_offsets());
    scenario.report(records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_kill_9_under_faults_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let faults = Faults {
        isp_error_rate: 0.05,
        http_502_rate: 0.02,
        drop_connection_rate: 0.01,
        latency_ms: 2,
        ..Faults::default()
    };
    let scenario = Scenario::new("kill9", faults).await;
    let records = valid_events("kill9", 12_000);
    let url = scenario.emulator.url();
    let delivery = "max_in_flight = 32\nmax_attempts = 100\nbreaker_failure_threshold = 1000";
    let config = scenario.config(&url, delivery);
    // Events keep flowing while paysync is killed and restarted.
    let producer = {
        let kafka = scenario.kafka.clone();
        let topic = scenario.topic.clone();
        let records = records.clone();
        tokio::spawn(async move {
            for chunk in records.chunks(1_000) {
                kafka.produce(&topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    for round in 0..4 {
        let process = Process::start(&config);
        // Kill it while it delivers: after it made progress, at a random moment.
        let before = scenario.emulator.gateway().order_counts().1;
        wait_accepted(&scenario.emulator, (before + 400).min(records.len())).await;
        let pause = Duration::from_millis(rand::random::<u64>() % 1_500);
        tokio::time::sleep(pause).await;
        process.kill();
        println!(
            "e2e kill9: round {round} killed {pause:?} after making progress; (accepted, distinct, duplicates) so far {:?}",
            scenario.emulator.gateway().order_counts()
        );
    }
    producer.await.unwrap();
    let last = Process::start(&config);
    wait_accepted(&scenario.emulator, records.len()).await;
    scenario.wait_committed_to_end().await;
    last.signal("TERM");
    assert_eq!(last.wait_exit(Duration::from_secs(30)).await, Some(0));
    let delivered = scenario.accepted_ids();
    let dead: HashSet<usize> = scenario
        .dead_letters()
        .iter()
        .map(|(_, h)| h[header::SOURCE_OFFSET].parse().unwrap())
        .collect();
    let produced: HashSet<String> = records.iter().map(|r| r.0.clone()).collect();
    assert!(
        produced.is_subset(&delivered),
        "lost: {:?}",
        produced.difference(&delivered).take(5).collect::<Vec<_>>()
    );
    assert!(
        dead.is_empty(),
        "transient faults must not dead-letter anything"
    );
    scenario.report(records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_survivor_of_two_replicas_takes_over_the_partitions_of_the_killed_one() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new(
        "takeover",
        Faults {
            latency_ms: 5,
            ..Faults::default()
        },
    )
    .await;
    let records = valid_events("takeover", 10_000);
    scenario.kafka.produce(&scenario.topic, &records).await;
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "max_in_flight = 16");
    let first = Process::start(&config);
    let second = Process::start(&config);
    wait_accepted(&scenario.emulator, 3_000).await;
    first.kill();
    println!(
        "e2e takeover: first replica killed at {:?}",
        scenario.emulator.gateway().order_counts()
    );
    wait_accepted(&scenario.emulator, records.len()).await;
    scenario.wait_committed_to_end().await;
    second.signal("TERM");
    assert_eq!(second.wait_exit(Duration::from_secs(30)).await, Some(0));
    let produced: HashSet<String> = records.iter().map(|r| r.0.clone()).collect();
    assert_eq!(scenario.accepted_ids(), produced);
    assert!(scenario.dead_letters().is_empty());
    scenario.report(records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paysync_recovers_by_itself_when_the_broker_restarts_mid_stream() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new(
        "restart",
        Faults {
            latency_ms: 5,
            ..Faults::default()
        },
    )
    .await;
    let records = valid_events("restart", 10_000);
    scenario.kafka.produce(&scenario.topic, &records).await;
    let url = scenario.emulator.url();
    let process = Process::start(&scenario.config(&url, "max_in_flight = 16"));
    wait_accepted(&scenario.emulator, 2_000).await;
    kafka_script("stop");
    let at_stop = scenario.emulator.gateway().order_counts();
    tokio::time::sleep(Duration::from_secs(5)).await;
    kafka_script("start");
    println!("e2e restart: broker stopped at {at_stop:?} for 5 s and started again");
    wait_accepted(&scenario.emulator, records.len()).await;
    scenario.wait_committed_to_end().await;
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));
    let produced: HashSet<String> = records.iter().map(|r| r.0.clone()).collect();
    assert_eq!(scenario.accepted_ids(), produced);
    assert!(scenario.dead_letters().is_empty());
    scenario.report(records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_and_commits_so_a_restart_redelivers_nothing() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new(
        "sigterm",
        Faults {
            latency_ms: 20,
            ..Faults::default()
        },
    )
    .await;
    let records = valid_events("sigterm", 5_000);
    scenario.kafka.produce(&scenario.topic, &records).await;
    let url = scenario.emulator.url();
    // A long commit interval: only the final commit on SIGTERM can cover the end.
    let config = RunConfig {
        commit_interval_ms: 600_000,
        ..scenario.config(&url, "max_in_flight = 64")
    };
    let process = Process::start(&config);
    wait_accepted(&scenario.emulator, records.len()).await;
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));
    assert_eq!(
        scenario.committed(),
        scenario.end_offsets(),
        "the final commit covers every accepted event"
    );
    let accepted = scenario.emulator.gateway().order_counts().0;
    let again = Process::start(&config);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        scenario.emulator.gateway().order_counts().0,
        accepted,
        "a restart redelivered accepted events"
    );
    again.kill();
    scenario.report(records.len());
}
