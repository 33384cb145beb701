//! The delivery pipeline against librdkafka's in-process mock cluster (real
//! Kafka protocol, consumer groups and commits) and the emulator on port 0.
//! One behaviour per test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use paysync::config::Settings;
use paysync::emulator::journal::Journal;
use paysync::emulator::{Emulator, Faults, Gateway, GatewaySettings, RateLimit};
use paysync::pipeline::dead_letter::header;
use paysync::pipeline::gate::BreakerState;
use paysync::pipeline::{Pipeline, Stats, Summary};
use paysync::top::classify::HaltCause;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use secrecy::SecretString;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const APP_KEY: &str = "12345678";
const SECRET: &str = "helloworld";
const SOURCE: &str = "payments";
const DLQ: &str = "payments.dlq";
const PATIENCE: Duration = Duration::from_secs(60);

/// A mock cluster with the source and dead-letter topics, and an emulator.
struct Harness {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    emulator: Emulator,
    group: String,
    partitions: i32,
}

impl Harness {
    async fn new(partitions: i32, faults: Faults) -> Harness {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(SOURCE, partitions, 1).unwrap();
        cluster.create_topic(DLQ, 1, 1).unwrap();
        let gateway = Gateway::new(
            GatewaySettings {
                apps: HashMap::from([(APP_KEY.to_owned(), SecretString::from(SECRET))]),
                seed: Some(3),
                ..GatewaySettings::default()
            },
            faults,
            Journal::new(None).unwrap(),
        );
        let emulator = Emulator::start("127.0.0.1:0".parse().unwrap(), gateway)
            .await
            .unwrap();
        let group = format!("paysync-test-{}", rand::random::<u32>());
        Harness {
            cluster,
            emulator,
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

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.cluster.bootstrap_servers());
        config
    }

    /// Produces values keyed by order id (so one order stays in one partition).
    async fn produce(&self, records: &[(String, Vec<u8>)]) {
        let producer: FutureProducer = self.client_config().create().unwrap();
        let sends = records.iter().map(|(key, value)| {
            let headers = OwnedHeaders::new().insert(Header {
                key: "source-system",
                value: Some("parking-platform"),
            });
            producer.send(
                FutureRecord::to(SOURCE)
                    .key(key.as_bytes())
                    .payload(value.as_slice())
                    .headers(headers),
                Duration::from_secs(10),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.unwrap();
        }
    }

    fn committed(&self) -> BTreeMap<i32, i64> {
        let mut config = self.client_config();
        config.set("group.id", &self.group);
        let consumer: BaseConsumer = config.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for partition in 0..self.partitions {
            tpl.add_partition(SOURCE, partition);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        committed
            .elements()
            .iter()
            .map(|e| {
                (
                    e.partition(),
                    match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    },
                )
            })
            .collect()
    }

    fn end_offsets(&self) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = self.client_config().create().unwrap();
        (0..self.partitions)
            .map(|p| {
                (
                    p,
                    consumer
                        .fetch_watermarks(SOURCE, p, Duration::from_secs(10))
                        .unwrap()
                        .1,
                )
            })
            .collect()
    }

    /// Every record in the dead-letter topic: (value, headers).
    fn dead_letters(&self) -> Vec<(Option<Vec<u8>>, HashMap<String, String>)> {
        let consumer: BaseConsumer = self.client_config().create().unwrap();
        let (_, high) = consumer
            .fetch_watermarks(DLQ, 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(DLQ, 0, Offset::Beginning).unwrap();
        consumer.assign(&tpl).unwrap();
        let mut records = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (records.len() as i64) < high && std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push((message.payload().map(<[u8]>::to_vec), headers));
            }
        }
        records
    }

    fn accepted_order_ids(&self) -> Vec<String> {
        self.emulator
            .gateway()
            .orders()
            .iter()
            .map(|o| o.order["order_id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A running pipeline and the means to stop it.
struct Running {
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<Summary>>,
    status: Arc<dyn Fn() -> paysync::pipeline::gate::GateStatus + Send + Sync>,
}

impl Running {
    async fn start(settings: Settings) -> Running {
        let pipeline = tokio::task::spawn_blocking(move || Pipeline::build(settings))
            .await
            .unwrap()
            .unwrap();
        let stats = pipeline.stats();
        let gate = pipeline.gate_handle();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(pipeline.run(async move {
            let _ = stopped.await;
        }));
        Running {
            stats,
            stop: Some(stop),
            task,
            status: Arc::new(move || gate.status()),
        }
    }

    async fn stop(mut self) -> Summary {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap()
    }

    fn summary(&self) -> Summary {
        self.stats.snapshot()
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

fn event(order_id: &str, order_type: u8) -> Vec<u8> {
    format!(
        r#"{{"car_no":"浙A888888","order_id":"{order_id}","park_id":"p1","pay_time":"2020-10-10 20:00:00","order_type":{order_type},"pay_fee":1000}}"#
    )
    .into_bytes()
}

fn valid_events(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("{prefix}-{i}"), event(&format!("{prefix}-{i}"), 1)))
        .collect()
}

async fn wait_committed(harness: &Harness, expected: &BTreeMap<i32, i64>) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let committed = harness.committed();
        if &committed == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed {committed:?} never reached {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
