//! End to end against a three-node Apache Kafka cluster as production runs
//! it (`scripts/kafka-cluster start`: RF 3, min.insync.replicas 2, Apache
//! Kafka's own timeouts), with the real `paysync` binary as child processes
//! and the emulator in this process, while events flow: a partition leader
//! killed, a broker stopped gracefully, the group coordinator killed, a
//! replica killed with -9 and restarted, and the dead-letter topic
//! unreadable during a takeover. Built only with `--features e2e`; the
//! cluster's address comes from `PAYSYNC_E2E_CLUSTER_BOOTSTRAP`.
//!
//! Each scenario prints produced / delivered / dead-lettered / duplicates,
//! committed against end offsets, and its longest delivery gaps.

#[allow(dead_code)] // The cluster suite uses part of the shared helpers.
#[path = "it/support.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use paysync::dead_letter::header;
use paysync::tools::emulator::{Emulator, Faults};
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use support::{APP_KEY, Kafka, Process};

/// One scenario at a time: they kill and start the cluster's nodes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PARTITIONS: i32 = 6;
/// The cluster's `offsets.topic.num.partitions` (scripts/kafka-cluster).
const OFFSETS_PARTITIONS: i32 = 6;
/// Apache Kafka's default session of a group member (the classic protocol's
/// `session.timeout.ms` and KIP-848's `group.consumer.session.timeout.ms`).
const SESSION_TIMEOUT: Duration = Duration::from_secs(45);

fn bootstrap() -> String {
    std::env::var("PAYSYNC_E2E_CLUSTER_BOOTSTRAP")
        .unwrap_or_else(|_| "127.0.0.1:29092,127.0.0.1:29192,127.0.0.1:29292".to_owned())
}

fn cluster(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-cluster");
    let status = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/kafka-cluster {args:?} failed");
}

/// Runs a `scripts/kafka-cluster` command off the runtime.
async fn cluster_async(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        cluster(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
}

/// A scenario's topics, group, emulator and the events it produced.
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
    /// Topics at replication factor 3; the dead-letter topic's one replica
    /// on `dlq_node` if given (so it can be made unreadable alone).
    async fn new(name: &str, dlq_node: Option<i32>) -> Scenario {
        let kafka = Kafka {
            bootstrap: bootstrap(),
        };
        let suffix = rand::random::<u32>();
        let topic = format!("cluster-{name}-{suffix}");
        let dlq = format!("{topic}.dlq");
        let pinned = dlq_node.map(|node| [node]);
        let dlq_replication = match &pinned {
            Some(node) => TopicReplication::Variable(&[node]),
            None => TopicReplication::Fixed(3),
        };
        kafka
            .create_topics(&[
                NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(3)),
                NewTopic::new(&dlq, 1, dlq_replication).set(
                    "min.insync.replicas",
                    if pinned.is_some() { "1" } else { "2" },
                ),
            ])
            .await;
        Scenario {
            name: name.to_owned(),
            kafka,
            topic,
            dlq,
            group: format!("cluster-{name}-{suffix}"),
            emulator: support::emulator(Faults {
                latency_ms: 5,
                ..Faults::default()
            })
            .await,
            started: Instant::now(),
        }
    }

    /// A `paysync run` configuration with paysync's defaults for everything
    /// the group's behaviour depends on; `kafka_extra` adds `[kafka]` lines.
    fn config(&self, kafka_extra: &str) -> String {
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\ntopics = [\"{}\"]\ndlq_topic = \"{}\"\n{kafka_extra}\n\n[top]\ngateway_url = \"{}\"\napp_key = \"{APP_KEY}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[delivery]\nrate_limit_per_sec = 5000\nmax_in_flight = 32\n",
            self.kafka.bootstrap,
            self.group,
            self.topic,
            self.dlq,
            self.emulator.url(),
        )
    }

    fn end_offsets(&self) -> BTreeMap<i32, i64> {
        self.kafka.end_offsets(&self.topic, PARTITIONS)
    }

    fn committed(&self) -> BTreeMap<i32, i64> {
        self.kafka.committed(&self.group, &self.topic, PARTITIONS)
    }

    /// The node leading each source partition.
    fn leaders(&self) -> BTreeMap<i32, i32> {
        let consumer: BaseConsumer = self.kafka.client_config().create().unwrap();
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))
            .unwrap();
        metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| (p.id(), p.leader()))
            .collect()
    }

    /// The node coordinating the group: the leader of its partition of
    /// `__consumer_offsets` (Java's `String.hashCode`, made non-negative).
    fn coordinator(&self) -> i32 {
        let hash = self
            .group
            .encode_utf16()
            .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
        let partition = (hash & 0x7fff_ffff) % OFFSETS_PARTITIONS;
        let consumer: BaseConsumer = self.kafka.client_config().create().unwrap();
        let metadata = consumer
            .fetch_metadata(Some("__consumer_offsets"), Duration::from_secs(10))
            .unwrap();
        metadata.topics()[0]
            .partitions()
            .iter()
            .find(|p| p.id() == partition)
            .map(|p| p.leader())
            .expect("the group's offsets partition")
    }

    /// Waits until every valid event was accepted and the group committed
    /// the end of every partition.
    async fn wait_done(&self, flow: &Produced) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let delivered = self.accepted_ids();
            if flow.valid.is_subset(&delivered) && self.committed() == self.end_offsets() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not done: {} of {} delivered, committed {:?}, end {:?}",
                flow.valid.intersection(&delivered).count(),
                flow.valid.len(),
                self.committed(),
                self.end_offsets()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn accepted_ids(&self) -> HashSet<String> {
        support::accepted_order_ids(&self.emulator)
            .into_iter()
            .collect()
    }

    /// Checks and prints what every scenario promises: nothing lost, the
    /// dead-letter topic exact, committed = end. `replica_killed`: a copy on
    /// its way at the kill may be written a second time (the one case the
    /// look-back cannot see); otherwise each is written once.
    fn account(&self, flow: &Produced, replica_killed: bool) {
        let delivered = self.accepted_ids();
        let lost: Vec<_> = flow.valid.difference(&delivered).take(5).collect();
        let mut copies: BTreeMap<(i32, i64), usize> = BTreeMap::new();
        for (_, headers) in self.kafka.dead_letters(&self.dlq) {
            let position = (
                headers[header::SOURCE_PARTITION].parse().unwrap(),
                headers[header::SOURCE_OFFSET].parse().unwrap(),
            );
            *copies.entry(position).or_default() += 1;
        }
        let (accepted, distinct, duplicates) = self.emulator.gateway().order_counts();
        let (committed, end) = (self.committed(), self.end_offsets());
        println!(
            "cluster {}: produced {} ({} valid, {} invalid), delivered {distinct} (calls accepted {accepted}, duplicates {duplicates}), dead-lettered {} copies of {} events, committed {committed:?} vs end {end:?}, {:.1} s",
            self.name,
            flow.valid.len() + flow.invalid.len(),
            flow.valid.len(),
            flow.invalid.len(),
            copies.values().sum::<usize>(),
            copies.len(),
            self.started.elapsed().as_secs_f64()
        );
        assert!(lost.is_empty(), "lost: {lost:?}");
        let dead: BTreeSet<(i32, i64)> = copies.keys().copied().collect();
        assert_eq!(
            dead, flow.invalid,
            "exactly the invalid events are dead-lettered"
        );
        let most = if replica_killed { 2 } else { 1 };
        assert!(
            copies.values().all(|n| *n <= most),
            "a dead letter was written more than {most} times: {copies:?}"
        );
        assert_eq!(committed, end, "committed to the end");
    }

    /// The longest time in `[from, to]` with no first acceptance, on any one
    /// of `partitions` and on all of them together.
    fn gaps(
        &self,
        partitions: &BTreeSet<i32>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> (Duration, Duration) {
        let mut by_partition: HashMap<i32, Vec<DateTime<Utc>>> = HashMap::new();
        for order in self.emulator.gateway().orders() {
            if order.duplicate {
                continue;
            }
            let id = order.order["order_id"].as_str().unwrap_or_default();
            let Some(partition) = partition_of(id) else {
                continue;
            };
            let at: DateTime<Utc> = order.received_at.parse().unwrap();
            if partitions.contains(&partition) && at >= from && at <= to {
                by_partition.entry(partition).or_default().push(at);
            }
        }
        let longest = |times: &mut Vec<DateTime<Utc>>| {
            times.sort();
            let mut edges = vec![from];
            edges.extend(times.iter().copied());
            edges.push(to);
            edges
                .windows(2)
                .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
                .max()
                .unwrap_or_default()
        };
        let any_partition = partitions
            .iter()
            .map(|p| longest(by_partition.entry(*p).or_default()))
            .max()
            .unwrap_or_default();
        let mut all: Vec<DateTime<Utc>> = by_partition.into_values().flatten().collect();
        (any_partition, longest(&mut all))
    }
}

/// What a producer wrote: the valid events' order ids and the invalid
/// events' positions.
#[derive(Default)]
struct Produced {
    valid: HashSet<String>,
    invalid: BTreeSet<(i32, i64)>,
}

/// The partition an order id names (`{prefix}-p{partition}-{seq}`).
fn partition_of(order_id: &str) -> Option<i32> {
    order_id.rsplit('-').nth(1)?.strip_prefix('p')?.parse().ok()
}

/// Events produced at `per_second` until stopped, spread evenly over the
/// partitions, one in a hundred not JSON; idempotent and acknowledged by
/// the in-sync replicas, so a broker's death neither loses nor doubles one.
fn produce_steadily(
    scenario: &Scenario,
    per_second: u32,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Produced>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (kafka, topic, prefix, stopping) = (
        scenario.kafka.clone(),
        scenario.topic.clone(),
        scenario.name.clone(),
        stop.clone(),
    );
    let task = tokio::spawn(async move {
        let producer: FutureProducer = kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "120000")
            .create()
            .unwrap();
        let tick = Duration::from_millis(20);
        let per_tick = (per_second as usize * tick.as_millis() as usize / 1000).max(1);
        let mut sends = Vec::new();
        let mut seq = 0usize;
        let mut ticker = tokio::time::interval(tick);
        while !stopping.load(Ordering::Relaxed) {
            ticker.tick().await;
            for _ in 0..per_tick {
                let partition = (seq % PARTITIONS as usize) as i32;
                let order_id = format!("{prefix}-p{partition}-{seq}");
                let value = if seq % 100 == 99 {
                    b"{not json".to_vec()
                } else {
                    support::event(&order_id, 1)
                };
                let producer = producer.clone();
                let topic = topic.clone();
                sends.push(tokio::spawn(async move {
                    let sent = producer
                        .send(
                            FutureRecord::to(&topic)
                                .key(order_id.as_bytes())
                                .partition(partition)
                                .payload(&value),
                            Duration::from_secs(120),
                        )
                        .await;
                    let delivery = sent.expect("produced");
                    (
                        order_id,
                        value.starts_with(b"{not"),
                        delivery.partition,
                        delivery.offset,
                    )
                }));
                seq += 1;
            }
        }
        let mut produced = Produced::default();
        for send in sends {
            let (order_id, invalid, partition, offset) = send.await.unwrap();
            if invalid {
                produced.invalid.insert((partition, offset));
            } else {
                produced.valid.insert(order_id);
            }
        }
        produced
    });
    (stop, task)
}

/// The partitions a replica owns now, from its partition gauges.
fn owned(replica: &Process) -> BTreeSet<i32> {
    replica
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("paysync_partition_completed_offset{"))
        .filter_map(|l| {
            l.split("partition=\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

async fn wait_owning(replicas: &[&Process]) {
    // Beyond a dead member's session (45 s), restarted when its coordinator moves.
    let deadline = Instant::now() + Duration::from_secs(150);
    while replicas.iter().any(|r| owned(r).is_empty())
        || replicas.iter().map(|r| owned(r).len()).sum::<usize>() != PARTITIONS as usize
    {
        assert!(
            Instant::now() < deadline,
            "the partitions were not spread: {:?}",
            replicas.iter().map(|r| owned(r)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn all_partitions() -> BTreeSet<i32> {
    (0..PARTITIONS).collect()
}

async fn stop_cleanly(replicas: Vec<Process>) {
    for replica in replicas {
        let log = replica.log();
        assert!(!log.contains("halts delivery"), "a replica halted:\n{log}");
        replica.signal("TERM");
        assert_eq!(replica.wait_exit(Duration::from_secs(60)).await, Some(0));
    }
}

/// A partition leader killed, a broker stopped gracefully and the group
/// coordinator killed, one after another while events flow to two replicas
/// with paysync's defaults. (A replica killed with -9 is the next
/// scenario's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brokers_and_a_replica_die_while_events_flow_and_nothing_is_lost() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new("brokers", None).await;
    let (stop, producing) = produce_steadily(&scenario, 300);
    let config = scenario.config("");
    let first = Process::start_toml(&config, &[]);
    let second = Process::start_toml(&config, &[]);
    wait_owning(&[&first, &second]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = all_partitions();
    let mut report = Vec::new();
    let mut phase = |what: &str, from: DateTime<Utc>, bound: Duration| {
        let (partition_gap, any_gap) = scenario.gaps(&all, from, Utc::now());
        println!(
            "cluster brokers: {what}: longest delivery gap {partition_gap:.1?} on one partition, {any_gap:.1?} on all (bound {bound:?})"
        );
        report.push((what.to_owned(), partition_gap, bound));
    };

    // The node leading most source partitions, killed: its partitions
    // wait for the controller to fence it (broker.session.timeout.ms, 9 s)
    // and elect new leaders from the in-sync replicas.
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    for leader in scenario.leaders().values() {
        *counts.entry(*leader).or_default() += 1;
    }
    let leader = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(n, _)| *n)
        .unwrap();
    let from = Utc::now();
    cluster_async(&["kill", &leader.to_string()]).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    cluster_async(&["start-node", &leader.to_string()]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Fencing (≤ 9 s + ~3.5 s), the election, librdkafka finding the new
    // leaders, and the backlog's first calls.
    phase(
        &format!(
            "leader of {} partitions (node {leader}) killed",
            counts[&leader]
        ),
        from,
        Duration::from_secs(25),
    );

    // A broker stopped gracefully moves its leaderships first.
    let graceful = scenario.leaders()[&0];
    let from = Utc::now();
    cluster_async(&["stop-node", &graceful.to_string()]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster_async(&["start-node", &graceful.to_string()]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    phase(
        &format!("node {graceful} stopped gracefully"),
        from,
        Duration::from_secs(10),
    );

    // The group coordinator killed: commits wait for a new coordinator,
    // deliveries go on.
    let coordinator = scenario.coordinator();
    let from = Utc::now();
    cluster_async(&["kill", &coordinator.to_string()]).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    cluster_async(&["start-node", &coordinator.to_string()]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    phase(
        &format!("group coordinator (node {coordinator}) killed"),
        from,
        Duration::from_secs(25),
    );

    stop.store(true, Ordering::Relaxed);
    let flow = producing.await.unwrap();
    scenario.wait_done(&flow).await;
    stop_cleanly(vec![first, second]).await;
    scenario.account(&flow, false);
    for (what, gap, bound) in report {
        assert!(
            gap <= bound,
            "{what}: a delivery gap of {gap:?} exceeds {bound:?}"
        );
    }
}

/// With paysync's defaults (no static identity), one replica killed with
/// -9 and restarted at once, and the group coordinator's node killed a few
/// seconds later while the dead member's session is still pending: the
/// other replica's partitions never stop for a session timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_restart_and_a_coordinator_death_stop_no_other_replicas_partitions() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new("freeze", None).await;
    let (stop, producing) = produce_steadily(&scenario, 300);
    let config = scenario.config("");
    let survivor = Process::start_toml(&config, &[]);
    let victim = Process::start_toml(&config, &[]);
    wait_owning(&[&survivor, &victim]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = owned(&survivor);
    let protocol = survivor
        .log()
        .lines()
        .find(|l| l.contains("Group protocol:"))
        .map(str::to_owned)
        .unwrap_or_default();
    let from = Utc::now();
    victim.kill();
    let restarted = Process::start_toml(&config, &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let coordinator = scenario.coordinator();
    cluster_async(&["kill", &coordinator.to_string()]).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    cluster_async(&["start-node", &coordinator.to_string()]).await;
    // Until every partition is owned again: the dead member's wait for its
    // session to end (or, with the classic protocol, everyone's).
    wait_owning(&[&survivor, &restarted]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let to = Utc::now();
    let (kept_gap, kept_all) = scenario.gaps(&kept, from, to);
    let moved: BTreeSet<i32> = all_partitions().difference(&kept).copied().collect();
    let (moved_gap, _) = scenario.gaps(&moved, from, to);
    println!(
        "cluster freeze: {protocol}; the survivor's partitions {kept:?}: longest delivery gap {kept_gap:.1?} on one, {kept_all:.1?} on all; the killed replica's {moved:?}: {moved_gap:.1?} (one session timeout: {SESSION_TIMEOUT:?})"
    );
    stop.store(true, Ordering::Relaxed);
    let flow = producing.await.unwrap();
    scenario.wait_done(&flow).await;
    stop_cleanly(vec![survivor, restarted]).await;
    scenario.account(&flow, true);
    assert!(
        kept_gap < SESSION_TIMEOUT,
        "the survivor's partitions stopped for {kept_gap:?}"
    );
}

/// The dead-letter topic unreadable while a takeover checks it for copies
/// an earlier owner wrote (its only replica's node stopped): the partition
/// is held and the read tried again, no second copy is written, and
/// delivery resumes once the topic is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_that_cannot_read_the_dead_letter_topic_waits_and_writes_no_second_copy() {
    let _serial = SERIAL.lock().await;
    // The dead-letter topic on a node that leads no source partition would
    // be ideal; any node works, since source partitions fail over.
    let dlq_node = 3;
    let scenario = Scenario::new("readback", Some(dlq_node)).await;
    let mut records = vec![("bad-json".to_owned(), b"{not json".to_vec())];
    records.extend(support::valid_events("readback-p0", 20));
    scenario.kafka.produce(&scenario.topic, &records).await;
    let config = scenario.config("");
    let scenario = &scenario;
    let run = |config: String| async move {
        let process = Process::start_toml(&config, &[]);
        let deadline = Instant::now() + Duration::from_secs(120);
        while scenario.committed() != scenario.end_offsets() {
            assert!(Instant::now() < deadline, "never committed to the end");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let log = process.log();
        process.signal("TERM");
        assert_eq!(process.wait_exit(Duration::from_secs(60)).await, Some(0));
        log
    };
    let before_first = Utc::now().timestamp_millis();
    run(config.clone()).await;
    let copies = scenario.kafka.dead_letters(&scenario.dlq);
    assert_eq!(copies.len(), 1);
    let partition: i32 = copies[0].1[header::SOURCE_PARTITION].parse().unwrap();
    let offset: i64 = copies[0].1[header::SOURCE_OFFSET].parse().unwrap();
    // What a crash between the copy's acknowledgement and its commit
    // leaves: the position back at the dead letter, with the look-back time.
    {
        let mut client = scenario.kafka.client_config();
        client.set("group.id", &scenario.group);
        let consumer: BaseConsumer = client.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&scenario.topic, partition, Offset::Offset(offset))
            .unwrap();
        tpl.find_partition(&scenario.topic, partition)
            .unwrap()
            .set_metadata(format!("~{before_first}"));
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
    }
    cluster_async(&["stop-node", &dlq_node.to_string()]).await;
    let restart = tokio::spawn(async move {
        // Unreadable for a while after the takeover began.
        tokio::time::sleep(Duration::from_secs(12)).await;
        cluster_async(&["start-node", &dlq_node.to_string()]).await;
    });
    let log = run(config).await;
    restart.await.unwrap();
    let retries = log
        .matches("Could not read the dead-letter topic back after a takeover")
        .count();
    let found = log.matches("not writing it again").count();
    let copies = scenario.kafka.dead_letters(&scenario.dlq).len();
    println!(
        "cluster readback: the dead-letter topic's node stopped during a takeover: {retries} failed reads tried again, the earlier copy found {found} time(s), {copies} copy in the topic; committed {:?} vs end {:?}",
        scenario.committed(),
        scenario.end_offsets()
    );
    assert!(
        retries >= 1,
        "the read failed while the node was down:\n{log}"
    );
    assert_eq!(found, 1, "the copy was found once the topic was back");
    assert_eq!(copies, 1, "and not written again");
}
