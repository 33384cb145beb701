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

#[path = "e2e/quota.rs"]
mod quota;

#[path = "e2e/egress.rs"]
mod egress;

#[path = "e2e/secured.rs"]
mod secured;

#[path = "e2e/traces.rs"]
mod traces;

#[path = "e2e/catch_up.rs"]
mod catch_up;

#[path = "e2e/ledger.rs"]
mod ledger;

#[path = "e2e/control.rs"]
mod control;

#[path = "e2e/console.rs"]
mod console;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use paysync::dead_letter::header;
use paysync::tools::emulator::{Emulator, Faults};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
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
        Self::with_dlq_config(name, faults, &[]).await
    }

    /// With topic configuration for the dead-letter topic (a size limit, say).
    async fn with_dlq_config(name: &str, faults: Faults, dlq_config: &[(&str, &str)]) -> Scenario {
        Self::build(name, dlq_config, support::emulator(faults).await).await
    }

    /// With an emulator made elsewhere (one serving HTTPS, say).
    async fn serving(name: &str, emulator: Emulator) -> Scenario {
        Self::build(name, &[], emulator).await
    }

    async fn build(name: &str, dlq_config: &[(&str, &str)], emulator: Emulator) -> Scenario {
        let kafka = Kafka {
            bootstrap: bootstrap(),
        };
        let suffix = rand::random::<u32>();
        let topic = format!("e2e-{name}-{suffix}");
        let dlq = format!("{topic}.dlq");
        kafka
            .create_topics(&[
                NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1)),
                dlq_config.iter().fold(
                    NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
                    |topic, (key, value)| topic.set(key, value),
                ),
            ])
            .await;
        Scenario {
            name: name.to_owned(),
            kafka,
            topic,
            dlq,
            group: format!("e2e-{name}-{suffix}"),
            emulator,
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
    bulk("classic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bulk_scenario_passes_with_the_kip_848_group_protocol() {
    bulk("consumer").await;
}

/// The environment that selects a group protocol.
fn protocol_env(protocol: &str) -> [(&'static str, &str); 1] {
    [("PAYSYNC_KAFKA__GROUP_PROTOCOL", protocol)]
}

async fn bulk(protocol: &str) {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new(
        &format!("bulk-{protocol}"),
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
    let process = Process::start_with_env(
        &scenario.config(&url, "max_in_flight = 128"),
        &protocol_env(protocol),
    );
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
    // One order in a hundred is refused by the API: dead letters are written
    // around the kills too.
    let rejected: HashSet<String> = (0..120).map(|i| format!("kill9-{}", i * 100)).collect();
    let faults = Faults {
        isp_error_rate: 0.05,
        http_502_rate: 0.02,
        drop_connection_rate: 0.01,
        latency_ms: 2,
        reject_order_ids: rejected.iter().cloned().collect(),
        ..Faults::default()
    };
    let scenario = Scenario::new("kill9", faults).await;
    let records = valid_events("kill9", 12_000);
    let url = scenario.emulator.url();
    const MAX_IN_FLIGHT: u64 = 32;
    const KILLS: u64 = 4;
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
    for round in 0..KILLS {
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
    let produced: HashSet<String> = records.iter().map(|r| r.0.clone()).collect();
    let expected: HashSet<String> = produced.difference(&rejected).cloned().collect();
    let last = Process::start(&config);
    wait_accepted(&scenario.emulator, expected.len()).await;
    scenario.wait_committed_to_end().await;
    let suppressed_by_the_ledger = last
        .metric("paysync_ledger_duplicates_suppressed_total{path=\"live\"}")
        .unwrap_or(0.0);
    last.signal("TERM");
    assert_eq!(last.wait_exit(Duration::from_secs(30)).await, Some(0));
    let delivered = scenario.accepted_ids();
    let mut dead_copies: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (_, headers) in scenario.dead_letters() {
        let position = (
            headers[header::SOURCE_PARTITION].clone(),
            headers[header::SOURCE_OFFSET].clone(),
        );
        *dead_copies.entry(position).or_default() += 1;
    }
    assert!(
        expected.is_subset(&delivered),
        "lost: {:?}",
        expected.difference(&delivered).take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        dead_copies.len(),
        rejected.len(),
        "exactly the refused events are dead-lettered; transient faults never are"
    );
    // A dead letter's offset is committed as soon as its copy is
    // acknowledged, and a takeover reads back the copies its predecessors
    // wrote without committing them: a second copy needs a kill while the
    // copy itself was on its way.
    let most_copies = dead_copies.values().max().copied().unwrap_or(0);
    assert!(
        most_copies <= 2,
        "a dead letter was written {most_copies} times"
    );

    // What a kill can make paysync send again: the calls under way, and
    // the acceptances whose ledger entries were on their way. What finished
    // since the last commit is not sent again: the ledger (record mode, the
    // default) holds those keys as accepted.
    let bound_per_kill = 2 * MAX_IN_FLIGHT;
    let duplicates = scenario.emulator.gateway().order_counts().2 as u64;
    println!(
        "e2e kill9: {duplicates} duplicate calls over {KILLS} kills ({} per kill; bound per kill {bound_per_kill} = max_in_flight {MAX_IN_FLIGHT} calls under way + as many entries on their way); the last replica's ledger suppressed {suppressed_by_the_ledger} events finished before a kill; dead letters {} for {} refused events, at most {most_copies} copies of one",
        duplicates / KILLS,
        dead_copies.values().sum::<u64>(),
        rejected.len(),
    );
    assert!(
        duplicates <= KILLS * bound_per_kill,
        "{duplicates} duplicate calls exceed {KILLS} × {bound_per_kill}"
    );
    scenario.report(records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_survivor_of_two_replicas_takes_over_the_partitions_of_the_killed_one() {
    takeover("classic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_takeover_scenario_passes_with_the_kip_848_group_protocol() {
    takeover("consumer").await;
}

async fn takeover(protocol: &str) {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new(
        &format!("takeover-{protocol}"),
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
    let first = Process::start_with_env(&config, &protocol_env(protocol));
    let second = Process::start_with_env(&config, &protocol_env(protocol));
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
    // The survivor restores the ledger of the partitions it takes over
    // before it sends from them: what the killed replica had recorded as
    // accepted is not sent again. What is: its calls under way (16) and the
    // acceptances whose entries were on their way.
    let duplicates = scenario.emulator.gateway().order_counts().2;
    println!("e2e takeover: {duplicates} calls sent twice (max_in_flight 16)");
    assert!(duplicates <= 2 * 16, "{duplicates} calls sent twice");
    scenario.report(records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paysync_recovers_by_itself_when_the_broker_restarts_mid_stream() {
    broker_restart("restart", 100, "auto").await;
}

/// A new group whose commits never landed before the outage (the interval
/// is longer than the run): librdkafka starts the partitions again at
/// `auto.offset.reset`'s end, and what the process finished is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_before_any_commit_landed_resends_only_calls_under_way() {
    // The classic protocol: its members lose their partitions when the
    // outage outlasts the session (a KIP-848 coordinator gives its members
    // a new session when it loads the group, so they keep theirs).
    let resumed_without_commit = broker_restart("restart-uncommitted", 600_000, "classic").await;
    assert!(
        resumed_without_commit > 0,
        "the scenario reached a partition with no committed offset"
    );
}

/// Stops the broker for twice the session timeout while paysync (committing
/// every `commit_interval_ms`) works through a backlog; returns how many
/// partitions it resumed with no committed offset, from its own memory.
async fn broker_restart(name: &str, commit_interval_ms: u64, protocol: &str) -> usize {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new(
        name,
        Faults {
            latency_ms: 5,
            ..Faults::default()
        },
    )
    .await;
    let records = valid_events(name, 10_000);
    scenario.kafka.produce(&scenario.topic, &records).await;
    let url = scenario.emulator.url();
    let process = Process::start_with_env(
        &RunConfig {
            commit_interval_ms,
            ..scenario.config(&url, "max_in_flight = 16")
        },
        &protocol_env(protocol),
    );
    wait_accepted(&scenario.emulator, 2_000).await;
    kafka_script("stop");
    let at_stop = scenario.emulator.gateway().order_counts();
    // Twice the session timeout (6 s): the consumer loses its assignment.
    tokio::time::sleep(Duration::from_secs(12)).await;
    kafka_script("start");
    println!("e2e {name}: broker stopped at {at_stop:?} for 12 s and started again");
    wait_accepted(&scenario.emulator, records.len()).await;
    scenario.wait_committed_to_end().await;
    let resumed_without_commit = process
        .log()
        .matches("The group has no committed offset here")
        .count();
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));
    let produced: HashSet<String> = records.iter().map(|r| r.0.clone()).collect();
    assert_eq!(scenario.accepted_ids(), produced);
    assert!(scenario.dead_letters().is_empty());
    // What it finished while its commits failed, it remembers: when the
    // same partitions come back, only calls cut off by the drain repeat.
    let duplicates = scenario.emulator.gateway().order_counts().2;
    println!(
        "e2e {name}: {duplicates} duplicate calls after an outage longer than the session; {resumed_without_commit} partition assignments resumed with no committed offset"
    );
    assert!(
        duplicates <= 16,
        "{duplicates} duplicate calls after the outage (max_in_flight is 16)"
    );
    scenario.report(records.len());
    resumed_without_commit
}

/// A topic deleted and created again while paysync runs starts its offsets
/// over, and the group's commits for it are gone: what paysync remembers
/// finishing in the old log must not skip the new log's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_created_again_has_every_new_event_delivered() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new("recreated", Faults::default()).await;
    let old = valid_events("recreated-old", 3_000);
    scenario.kafka.produce(&scenario.topic, &old).await;
    let url = scenario.emulator.url();
    // Metadata every second: the deletion and the new topic are seen at once.
    let process = Process::start_with_env(
        &scenario.config(&url, ""),
        &[("PAYSYNC_KAFKA__METADATA_REFRESH_INTERVAL_MS", "1000")],
    );
    wait_accepted(&scenario.emulator, old.len()).await;
    scenario.wait_committed_to_end().await;
    let admin: AdminClient<DefaultClientContext> = scenario.kafka.client_config().create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin
        .delete_topics(&[&scenario.topic], &options)
        .await
        .unwrap()
    {
        result.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    // The revoke's commit fails (the topic is gone): its log line either way.
    while !process.log().contains("revoked partitions") {
        assert!(
            Instant::now() < deadline,
            "the deleted topic's partitions were never revoked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Created again as soon as the broker lets it (deletion is asynchronous).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let topic = NewTopic::new(&scenario.topic, PARTITIONS, TopicReplication::Fixed(1));
        match admin
            .create_topics(&[topic], &options)
            .await
            .unwrap()
            .remove(0)
        {
            Ok(_) => break,
            Err((_, error)) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot create the topic again: {error}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let new = valid_events("recreated-new", 120);
    scenario.kafka.produce(&scenario.topic, &new).await;
    wait_accepted(&scenario.emulator, old.len() + new.len()).await;
    scenario.wait_committed_to_end().await;
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));
    let accepted = scenario.accepted_ids();
    let missing = new.iter().filter(|(id, _)| !accepted.contains(id)).count();
    println!(
        "e2e recreated: 3,000 events, the topic deleted and created again, {} new events; {missing} of them not delivered",
        new.len()
    );
    assert_eq!(missing, 0);
    scenario.report(old.len() + new.len());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_finds_the_dead_letters_its_predecessor_wrote_before_committing() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new("lookback", Faults::default()).await;
    let mut records = vec![("bad-json".to_owned(), b"{not json".to_vec())];
    records.extend(valid_events("lookback", 20));
    scenario.kafka.produce(&scenario.topic, &records).await;
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "");
    let before_first = chrono::Utc::now().timestamp_millis();
    let run_to_the_end = || async {
        let process = Process::start(&config);
        scenario.wait_committed_to_end().await;
        let log = process.log();
        process.signal("TERM");
        assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));
        log.matches("not writing it again").count()
    };
    assert_eq!(run_to_the_end().await, 0);
    let copies = scenario.dead_letters();
    assert_eq!(copies.len(), 1);
    let partition: i32 = copies[0].1[header::SOURCE_PARTITION].parse().unwrap();
    let offset: i64 = copies[0].1[header::SOURCE_OFFSET].parse().unwrap();

    // What a crash between the copy's acknowledgement and its commit leaves:
    // the position back at the dead letter, with the time since which copies
    // of offsets from there on may have been written.
    let rewind = |metadata: String| {
        // The group has no members now: a plain commit, as a tool makes.
        let mut config = scenario.kafka.client_config();
        config.set("group.id", &scenario.group);
        let consumer: BaseConsumer = config.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&scenario.topic, partition, Offset::Offset(offset))
            .unwrap();
        tpl.find_partition(&scenario.topic, partition)
            .unwrap()
            .set_metadata(metadata);
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
    };
    rewind(format!("~{before_first}"));
    assert_eq!(run_to_the_end().await, 1, "the copy was found");
    assert_eq!(scenario.dead_letters().len(), 1, "and not written again");

    // A look-back time after the copy finds nothing, and a copy is written:
    // a second copy is safe, a missing one is not.
    rewind(format!(
        "~{}",
        chrono::Utc::now().timestamp_millis() + 600_000
    ));
    assert_eq!(run_to_the_end().await, 0);
    let copies = scenario.dead_letters().len();
    assert_eq!(copies, 2);
    println!(
        "e2e lookback: a takeover found the copy its predecessor wrote (1 copy); with a later look-back time it wrote another ({copies} copies)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_broker_benchmark_accounts_for_every_event_and_measures_paysync_alone() {
    let _serial = SERIAL.lock().await;
    let bootstrap = bootstrap();
    // It fails unless every event was accepted and the group committed the end.
    let (code, output) = paysync_command(&[
        "bench",
        "--bootstrap",
        &bootstrap,
        "--events",
        "3000",
        "--max-in-flight",
        "16",
        // One order per partition: every partition one chain, the strictest
        // ordering, and every partition must still get its events.
        "--orders-per-partition",
        "1",
        "--json",
    ])
    .await;
    assert_eq!(code, Some(0), "{output}");
    let json = output
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON report");
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(report["mode"], "broker");
    assert_eq!(report["events"], 3000);
    assert_eq!(report["orders_per_partition"], 1);
    let cpu = report["cpu_seconds"].as_f64().unwrap();
    let rss = report["peak_rss_mb"].as_f64().unwrap();
    assert!(cpu > 0.0 && rss > 1.0, "{report}");
    // Six chains, one call each at a time: at most 6 of the 16 slots busy.
    let busy = report["slots_busy_ratio"].as_f64().unwrap();
    assert!(busy > 0.0 && busy <= 6.0 / 16.0 + 0.05, "{report}");
    println!(
        "e2e bench: 3000 events through paysync run against the broker, {cpu:.2} CPU-s, peak RSS {rss:.1} MiB"
    );
}

/// Calls accepted by the emulator during `span`, per second.
async fn accepted_rate(emulator: &Emulator, span: Duration) -> f64 {
    let before = emulator.gateway().order_counts().0;
    tokio::time::sleep(span).await;
    let after = emulator.gateway().order_counts().0;
    (after - before) as f64 / span.as_secs_f64()
}

/// How many partitions a replica owns, from its latest rate-budget log line.
fn owned_partitions(replica: &Process) -> Option<usize> {
    let log = replica.log();
    let line = log.lines().rev().find(|l| l.contains("Rate budget"))?;
    let owned = line.split("owned=").nth(1)?;
    owned.split_whitespace().next()?.parse().ok()
}

/// The partitions a replica owns now: its latest assignment, from its log
/// (an eager assignment logs all its partitions, then the new share).
fn current_partitions(replica: &Process) -> Vec<String> {
    let owned = owned_partitions(replica).unwrap_or(0);
    let all = assigned(replica);
    let mut current = all[all.len().saturating_sub(owned)..].to_vec();
    current.sort();
    current
}

/// The partitions a replica was assigned, from its log, in order.
fn assigned(replica: &Process) -> Vec<String> {
    replica
        .log()
        .lines()
        .filter(|l| l.contains("Partition assigned."))
        .filter_map(|l| l.split("partition=").nth(1).map(str::to_owned))
        .collect()
}

/// Waits until each replica owns `each` partitions.
async fn wait_owned(replicas: &[Process], each: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !replicas.iter().all(|r| owned_partitions(r) == Some(each)) {
        assert!(
            Instant::now() < deadline,
            "the partitions were not spread: {:?}",
            replicas.iter().map(owned_partitions).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn bans(emulator: &Emulator) -> u64 {
    let stats = emulator.gateway().stats();
    stats.answers.get("error_7").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_quota_and_the_survivors_take_over_the_share() {
    let _serial = SERIAL.lock().await;
    // The gateway's quota for the app: a bucket of 300 calls refilled at 300/s.
    const QUOTA: u32 = 300;
    let scenario = Scenario::new(
        "quota",
        Faults {
            latency_ms: 2,
            rate_limit: Some(paysync::tools::emulator::RateLimit {
                calls_per_second: QUOTA,
                burst: None,
                ban_seconds: 2,
            }),
            ..Faults::default()
        },
    )
    .await;
    let records = valid_events("quota", 9_000);
    scenario.kafka.produce(&scenario.topic, &records).await;
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "max_in_flight = 32\nrate_limit_burst = 30");
    let rate = QUOTA.to_string();
    // Info logs: the replicas say when their share changes.
    let env = [
        ("PAYSYNC_DELIVERY__RATE_LIMIT_PER_SEC", rate.as_str()),
        ("RUST_LOG", "info"),
    ];
    let mut replicas: Vec<Process> = (0..3)
        .map(|_| Process::start_with_env(&config, &env))
        .collect();
    wait_owned(&replicas, 2).await;
    // A moment for the buckets to reach their pace after the rebalance.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let three = accepted_rate(&scenario.emulator, Duration::from_secs(5)).await;
    let bans_with_three = bans(&scenario.emulator);
    replicas.remove(0).kill();
    // The killed replica's partitions move after the session timeout (6 s).
    wait_owned(&replicas, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let two = accepted_rate(&scenario.emulator, Duration::from_secs(5)).await;
    let total_bans = bans(&scenario.emulator);
    println!(
        "e2e quota: quota {QUOTA}/s; 3 replicas {three:.0} calls/s, then 2 survivors {two:.0} calls/s; code-7 answers {bans_with_three} with three, {total_bans} in all"
    );
    for survivor in replicas {
        survivor.signal("TERM");
        assert_eq!(survivor.wait_exit(Duration::from_secs(30)).await, Some(0));
    }
    assert_eq!(total_bans, 0, "the group stayed within its quota");
    let floor = 0.9 * f64::from(QUOTA);
    assert!(three >= floor, "3 replicas delivered {three:.0}/s");
    assert!(two >= floor, "2 survivors delivered {two:.0}/s");
    let (accepted, unique, _) = scenario.emulator.gateway().order_counts();
    assert!(accepted >= unique && unique > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_with_static_membership_sends_nothing_twice() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new(
        "rolling",
        Faults {
            latency_ms: 5,
            ..Faults::default()
        },
    )
    .await;
    let records = valid_events("rolling", 9_000);
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "max_in_flight = 16");
    let ids = ["paysync-0", "paysync-1", "paysync-2"];
    // Info logs: the replicas say which partitions they are assigned.
    let start = |id: &str| {
        Process::start_with_env(
            &config,
            &[
                ("PAYSYNC_KAFKA__GROUP_INSTANCE_ID", id),
                // Static membership is the classic protocol's (under
                // KIP-848 a restart stops no one without it).
                ("PAYSYNC_KAFKA__GROUP_PROTOCOL", "classic"),
                ("RUST_LOG", "info"),
            ],
        )
    };
    // Started one after another, as a deployment does: the first ones own
    // more partitions for a moment.
    let mut replicas = Vec::new();
    for id in ids {
        replicas.push(start(id));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    wait_owned(&replicas, 2).await;
    scenario
        .kafka
        .produce(&scenario.topic, &records[..1_000])
        .await;
    wait_accepted(&scenario.emulator, 1_000).await;
    // Events keep flowing while each replica is restarted in turn.
    let producer = {
        let kafka = scenario.kafka.clone();
        let topic = scenario.topic.clone();
        let rest = records[1_000..].to_vec();
        tokio::spawn(async move {
            for chunk in rest.chunks(100) {
                kafka.produce(&topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
        })
    };
    let mut longest_restart = Duration::ZERO;
    for (index, id) in ids.iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let began = Instant::now();
        let old = replicas.remove(index);
        let before: Vec<Vec<String>> = replicas.iter().map(assigned).collect();
        let owned = current_partitions(&old);
        old.signal("TERM");
        assert_eq!(old.wait_exit(Duration::from_secs(30)).await, Some(0));
        let new = start(id);
        // The restart ends when the replica has its partitions back.
        let deadline = Instant::now() + Duration::from_secs(30);
        while owned_partitions(&new) != Some(2) {
            assert!(Instant::now() < deadline, "{id} got no partitions back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        longest_restart = longest_restart.max(began.elapsed());
        let back = current_partitions(&new);
        assert_eq!(back, owned, "{id} came back to its own partitions");
        let after: Vec<Vec<String>> = replicas.iter().map(assigned).collect();
        assert_eq!(before, after, "the other replicas saw no rebalance");
        replicas.insert(index, new);
    }
    producer.await.unwrap();
    wait_accepted(&scenario.emulator, records.len()).await;
    scenario.wait_committed_to_end().await;
    for replica in replicas {
        replica.signal("TERM");
        assert_eq!(replica.wait_exit(Duration::from_secs(30)).await, Some(0));
    }
    let mut accepted_at: Vec<chrono::DateTime<chrono::FixedOffset>> = scenario
        .emulator
        .gateway()
        .orders()
        .iter()
        .map(|o| chrono::DateTime::parse_from_rfc3339(&o.received_at).unwrap())
        .collect();
    accepted_at.sort();
    let longest_gap = accepted_at
        .windows(2)
        .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
        .max()
        .unwrap_or_default();
    let (accepted, unique, duplicates) = scenario.emulator.gateway().order_counts();
    println!(
        "e2e rolling: 3 static members restarted one at a time; accepted {accepted}, distinct {unique}, duplicates {duplicates}; longest pause in deliveries {longest_gap:?}, longest restart {longest_restart:?}"
    );
    let produced: HashSet<String> = records.iter().map(|r| r.0.clone()).collect();
    assert_eq!(scenario.accepted_ids(), produced, "nothing lost");
    assert_eq!(duplicates, 0, "a restart sent finished events again");
    // A restart here takes 0.2–0.6 s; on this 2-core machine, with three
    // replicas, the broker and a producer, a scheduling hiccup alone can
    // pause deliveries for a few hundred ms, so a restart counts as 1 s at least.
    let one_restart = longest_restart.max(Duration::from_secs(1));
    assert!(
        longest_gap < one_restart,
        "deliveries stopped for {longest_gap:?}, longer than one restart ({longest_restart:?})"
    );
    scenario.report(records.len());
}

/// Runs a `paysync` command to its end (at most a minute); its exit status and output.
async fn paysync_command(args: &[&str]) -> (Option<i32>, String) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_paysync"))
        .args(args)
        .env("PAYSYNC_TOP__APP_SECRET", support::SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read while it runs: a long answer must not fill the pipe and stall it.
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(Duration::from_secs(120), output).await {
        Ok(output) => output.unwrap().unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("paysync {args:?} did not end within two minutes");
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transactional_topic_is_committed_and_replayed_to_its_end() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new("transactional", Faults::default()).await;
    let records = valid_events("tx", 600);
    // Six transactions: each leaves a commit marker in every partition it wrote.
    {
        let mut config = scenario.kafka.client_config();
        config.set("transactional.id", format!("{}-producer", scenario.topic));
        let producer: BaseProducer = config.create().unwrap();
        producer.init_transactions(Duration::from_secs(30)).unwrap();
        for chunk in records.chunks(100) {
            producer.begin_transaction().unwrap();
            for (key, value) in chunk {
                producer
                    .send(BaseRecord::to(&scenario.topic).key(key).payload(value))
                    .unwrap();
            }
            producer
                .commit_transaction(Duration::from_secs(30))
                .unwrap();
        }
    }
    let end: i64 = scenario.end_offsets().values().sum();
    assert!(end > 600, "the markers occupy offsets ({end})");
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "");
    let process = Process::start(&config);
    wait_accepted(&scenario.emulator, records.len()).await;
    // The committed offsets pass the last markers: no lag of 1 for ever.
    scenario.wait_committed_to_end().await;
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));

    // Replays to the end (a marker) end, dry and real.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paysync.toml");
    std::fs::write(&path, config.toml()).unwrap();
    let path = path.to_str().unwrap();
    let (dry, said) = paysync_command(&[
        "replay",
        "--config",
        path,
        "--from-offset",
        "0",
        "--dry-run",
    ])
    .await;
    assert_eq!(dry, Some(0), "{said}");
    let (real, said) = paysync_command(&[
        "replay",
        "--config",
        path,
        "--from-offset",
        "0",
        "--rate",
        "5000",
        // Every event again, though the ledger holds them all as accepted.
        "--resend-delivered",
    ])
    .await;
    assert_eq!(real, Some(0), "{said}");
    let (accepted, unique, _) = scenario.emulator.gateway().order_counts();
    println!(
        "e2e transactional: 600 events in 6 transactions, {end} offsets; committed to the end; a dry and a real replay to the end finished; accepted {accepted} ({unique} distinct)"
    );
    assert_eq!(
        accepted,
        2 * records.len(),
        "the replay sent every event once more"
    );
    scenario.report(records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_too_large_to_send_or_to_copy_are_dead_lettered_and_the_rest_flow() {
    let _serial = SERIAL.lock().await;
    // The gateway refuses requests over 700 bytes (HTTP 413); the
    // dead-letter topic takes records of at most 50,000 bytes.
    let scenario = Scenario::with_dlq_config(
        "oversized",
        Faults {
            max_request_bytes: Some(700),
            ..Faults::default()
        },
        &[("max.message.bytes", "50000")],
    )
    .await;
    let mut records = valid_events("big", 2_000);
    let long = "x".repeat(120);
    records.insert(
        500,
        (
            "big-request".into(),
            format!(
                r#"{{"car_no":"浙A888888","order_id":"big-request","park_id":"p-{long}","pay_order_id":"po-{long}","pay_time":"2020-10-10 20:00:00","order_type":1,"pay_fee":1000}}"#
            )
            .into_bytes(),
        ),
    );
    records.insert(1_000, ("big-value".into(), vec![b'x'; 200_000]));
    scenario.kafka.produce(&scenario.topic, &records).await;
    let url = scenario.emulator.url();
    let process = Process::start(&scenario.config(&url, ""));
    wait_accepted(&scenario.emulator, 2_000).await;
    scenario.wait_committed_to_end().await;
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));
    let dead = scenario.dead_letters();
    assert_eq!(
        dead.len(),
        2,
        "one too large to send, one too large to copy"
    );
    let reasons: HashSet<String> = dead
        .iter()
        .map(|(_, h)| h[header::REASON].clone())
        .collect();
    assert_eq!(
        reasons,
        HashSet::from(["request_too_large".to_owned(), "invalid_event".to_owned()])
    );
    let copy = dead
        .iter()
        .find(|(_, h)| h[header::REASON] == "invalid_event")
        .unwrap();
    assert_eq!(copy.0, None, "the value was left out");
    assert_eq!(copy.1[header::VALUE_OMITTED_BYTES], "200000");
    let answers = scenario.emulator.gateway().stats().answers;
    println!(
        "e2e oversized: 2,002 events; 2,000 delivered, 1 dead-lettered after HTTP 413 ({:?} answers 413), 1 of 200,000 bytes dead-lettered without its value under the topic's 50,000-byte limit; committed to the end",
        answers.get("http_413")
    );
    scenario.report(records.len());
}
