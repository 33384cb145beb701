//! Helpers shared by the integration suite and the end-to-end suite (mock
//! cluster and real broker): a Kafka handle for producing and reading back,
//! the emulator, event values, waiting for a condition, and `paysync run` as
//! a child process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use paysync::commit_metadata::{CompletionMap, decode_metadata};
use paysync::tools::emulator::journal::Journal;
use paysync::tools::emulator::{Emulator, Faults, Gateway, GatewaySettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use secrecy::SecretString;

pub const APP_KEY: &str = "12345678";
pub const SECRET: &str = "helloworld";
/// How long any wait in these suites may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A record read back from a dead-letter topic: its value and headers.
pub type DeadLetter = (Option<Vec<u8>>, HashMap<String, String>);

/// A record's value and headers (as text).
fn record_of(message: &impl Message) -> DeadLetter {
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (message.payload().map(<[u8]>::to_vec), headers)
}

/// An emulator on a free loopback port that knows the test app.
pub async fn emulator(faults: Faults) -> Emulator {
    emulator_seeded(faults, 3).await
}

/// Like [`emulator`], with the seed of its fault draws and request ids.
pub async fn emulator_seeded(faults: Faults, seed: u64) -> Emulator {
    Emulator::start("127.0.0.1:0".parse().unwrap(), gateway(faults, seed))
        .await
        .unwrap()
}

/// The emulator's gateway for the test app, without a server.
pub fn gateway(faults: Faults, seed: u64) -> Gateway {
    Gateway::new(
        GatewaySettings {
            apps: HashMap::from([(APP_KEY.to_owned(), SecretString::from(SECRET))]),
            seed: Some(seed),
            ..GatewaySettings::default()
        },
        faults,
        Journal::new(None).unwrap(),
    )
}

/// Waits until `done` holds, checking every 50 ms; fails the test after [`PATIENCE`].
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A valid event value.
pub fn event(order_id: &str, order_type: u8) -> Vec<u8> {
    event_in("p1", order_id, order_type)
}

/// A valid payment of `order_id` in car park `park`.
pub fn event_in(park: &str, order_id: &str, order_type: u8) -> Vec<u8> {
    format!(
        r#"{{"car_no":"浙A888888","order_id":"{order_id}","park_id":"{park}","pay_time":"2020-10-10 20:00:00","order_type":{order_type},"pay_fee":1000}}"#
    )
    .into_bytes()
}

/// `n` valid payments keyed by their order ids `{prefix}-{i}`.
pub fn valid_events(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("{prefix}-{i}"), event(&format!("{prefix}-{i}"), 1)))
        .collect()
}

/// A record's key, value and headers.
pub type HeadedRecord = (String, Vec<u8>, Vec<(String, String)>);

/// A Kafka cluster reached through its bootstrap servers.
#[derive(Clone)]
pub struct Kafka {
    pub bootstrap: String,
}

impl Kafka {
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// Creates `topics`; fails the test unless every one was created.
    #[allow(dead_code)] // Used by the end-to-end suites.
    pub async fn create_topics(&self, topics: &[rdkafka::admin::NewTopic<'_>]) {
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            self.client_config().create().unwrap();
        let created = admin
            .create_topics(
                topics,
                &rdkafka::admin::AdminOptions::new()
                    .operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("the broker answers (start it with scripts/kafka or scripts/kafka-cluster)");
        for result in created {
            result.unwrap_or_else(|(topic, error)| panic!("cannot create {topic}: {error}"));
        }
    }

    /// Produces values keyed by order id (one order stays in one partition),
    /// each with a `source-system` header.
    /// Produces records with headers of their own (trace context, say).
    pub async fn produce_with_headers(&self, topic: &str, records: &[HeadedRecord]) {
        let producer: FutureProducer = self.client_config().set("linger.ms", "5").create().unwrap();
        let sends = records.iter().map(|(key, value, headers)| {
            let headers = headers
                .iter()
                .fold(OwnedHeaders::new(), |all, (name, value)| {
                    all.insert(Header {
                        key: name,
                        value: Some(value),
                    })
                });
            producer.send(
                FutureRecord::to(topic)
                    .key(key.as_bytes())
                    .payload(value.as_slice())
                    .headers(headers),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.unwrap();
        }
    }

    pub async fn produce(&self, topic: &str, records: &[(String, Vec<u8>)]) {
        let source = vec![("source-system".to_owned(), "parking-platform".to_owned())];
        for chunk in records.chunks(5_000) {
            let headed: Vec<HeadedRecord> = chunk
                .iter()
                .map(|(key, value)| (key.clone(), value.clone(), source.clone()))
                .collect();
            self.produce_with_headers(topic, &headed).await;
        }
    }

    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
        self.committed_maps(group, topic, partitions)
            .into_iter()
            .map(|(partition, (offset, _))| (partition, offset))
            .collect()
    }

    /// The group's committed offset per partition (0 where none) and the
    /// completion map committed with it, if any.
    pub fn committed_maps(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> BTreeMap<i32, (i64, Option<CompletionMap>)> {
        let mut config = self.client_config();
        config.set("group.id", group);
        let consumer: BaseConsumer = config.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for partition in 0..partitions {
            tpl.add_partition(topic, partition);
        }
        // A broker just started may still be loading the group's coordinator.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let committed = loop {
            match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
                Ok(committed) => break committed,
                Err(error) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "committed offsets: {error}"
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        committed
            .elements()
            .iter()
            .map(|e| {
                let offset = if let Offset::Offset(o) = e.offset() {
                    o
                } else {
                    0
                };
                let map = decode_metadata(e.metadata(), offset).0.ok();
                (e.partition(), (offset, map))
            })
            .collect()
    }

    /// How many offsets of each partition the group knows to be finished:
    /// those below the committed offset and those its completion map names.
    pub fn known_finished(&self, group: &str, topic: &str, partitions: i32) -> i64 {
        self.committed_maps(group, topic, partitions)
            .values()
            .map(|(offset, map)| offset + map.as_ref().map_or(0, |m| m.finished_count() as i64))
            .sum()
    }

    pub fn end_offsets(&self, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = self.client_config().create().unwrap();
        (0..partitions)
            .map(|p| {
                (
                    p,
                    consumer
                        .fetch_watermarks(topic, p, Duration::from_secs(10))
                        .unwrap()
                        .1,
                )
            })
            .collect()
    }

    /// Every record in a one-partition dead-letter topic.
    /// The record at `offset` of one partition, if there is one.
    pub fn read_one(&self, topic: &str, partition: i32, offset: i64) -> Option<DeadLetter> {
        let mut config = self.client_config();
        config
            .set("group.id", format!("reader-{}", rand::random::<u32>()))
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                return Some(record_of(&message));
            }
        }
        None
    }

    pub fn dead_letters(&self, dlq: &str) -> Vec<DeadLetter> {
        let mut config = self.client_config();
        config
            .set("group.id", format!("dlq-reader-{}", rand::random::<u32>()))
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config.create().unwrap();
        let (_, high) = consumer
            .fetch_watermarks(dlq, 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(dlq, 0, Offset::Beginning).unwrap();
        consumer.assign(&tpl).unwrap();
        let mut records = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while (records.len() as i64) < high && std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                records.push(record_of(&message));
            }
        }
        records
    }

    /// Waits until the group's committed offsets equal `expected`.
    pub async fn wait_committed(&self, group: &str, topic: &str, expected: &BTreeMap<i32, i64>) {
        let partitions = expected.len() as i32;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let committed = self.committed(group, topic, partitions);
            if &committed == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "committed {committed:?} never reached {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The `[kafka]` and `[top]` tables of a `paysync run` configuration.
pub struct RunConfig<'a> {
    pub bootstrap: &'a str,
    pub group: &'a str,
    pub topic: &'a str,
    pub dlq: &'a str,
    pub gateway_url: &'a str,
    /// Extra lines for `[delivery]`.
    pub delivery: &'a str,
    /// Extra lines for `[top]`.
    pub top: &'a str,
    pub commit_interval_ms: u64,
}

impl RunConfig<'_> {
    pub fn toml(&self) -> String {
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\ntopics = [\"{}\"]\ndlq_topic = \"{}\"\nsession_timeout_ms = 6000\nrevoke_drain_timeout_ms = 3000\ncommit_interval_ms = {}\n\n[top]\ngateway_url = \"{}\"\napp_key = \"{APP_KEY}\"\n{}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[delivery]\nrate_limit_per_sec = 20000\nbackoff_initial_ms = 20\nbackoff_max_ms = 500\nbreaker_probe_interval_ms = 500\n{}\n",
            self.bootstrap,
            self.group,
            self.topic,
            self.dlq,
            self.commit_interval_ms,
            self.gateway_url,
            self.top,
            self.delivery
        )
    }
}

/// `paysync run` as a child process; killed on drop.
pub struct Process {
    pub child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Process {
    pub fn start(config: &RunConfig<'_>) -> Process {
        Self::start_with_env(config, &[])
    }

    /// With extra environment variables (they win over the defaults here).
    pub fn start_with_env(config: &RunConfig<'_>, env: &[(&str, &str)]) -> Process {
        Self::start_toml(&config.toml(), env)
    }

    /// `paysync run` with this configuration file and extra environment variables.
    pub fn start_toml(toml: &str, env: &[(&str, &str)]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paysync.toml");
        std::fs::write(&path, toml).unwrap();
        let log = std::fs::File::create(dir.path().join("paysync.log")).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_paysync"))
            .args(["run", "--config", path.to_str().unwrap()])
            .env("PAYSYNC_TOP__APP_SECRET", SECRET)
            // Info from paysync itself: start-up (the admin address) and assignments.
            .env("RUST_LOG", "warn,paysync=info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Process { child, _dir: dir }
    }

    /// Everything the process wrote to stderr so far, without colour codes.
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self._dir.path().join("paysync.log")).unwrap_or_default();
        let mut plain = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|c| *c == 'm');
            } else {
                plain.push(c);
            }
        }
        plain
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[allow(dead_code)] // Used by the end-to-end suite.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no drain, no final commit.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub async fn wait_exit(mut self, patience: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the process did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[allow(dead_code)] // Read by the end-to-end suite.
impl Process {
    /// The process's `/metrics` text, from the admin server whose address it
    /// logs at start (empty before that, or once it is gone).
    pub fn metrics_text(&self) -> String {
        metrics_text(&self.log())
    }

    /// The body of `/health/ready` (empty before the admin server is up).
    pub fn readiness(&self) -> String {
        let answer = admin_get(&self.log(), "/health/ready");
        answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// One unlabelled metric's value.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

fn metrics_text(log: &str) -> String {
    admin_get(log, "/metrics")
}

/// One GET to the admin server whose address the log names: the whole answer.
fn admin_get(log: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Some(address) = log
        .split("admin=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|a| a.trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':'))
    else {
        return String::new();
    };
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

/// The pipeline's own figures (for a failing test's report).
fn pipeline_figures(log: &str) -> Vec<String> {
    metrics_text(log)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
        .filter(|l| {
            [
                "consumed",
                "already",
                "window",
                "paused",
                "assigned",
                "delivered",
                "abandoned",
                "rebalances",
                "commit",
            ]
            .iter()
            .any(|name| l.contains(name))
        })
        .map(str::to_owned)
        .collect()
}

impl Drop for Process {
    fn drop(&mut self) {
        // A failing test shows what paysync said and where it stood.
        if std::thread::panicking() {
            let log = self.log();
            eprintln!("--- paysync (pid {}) figures ---", self.child.id());
            for line in pipeline_figures(&log) {
                eprintln!("{line}");
            }
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- paysync (pid {}) stderr, last lines ---",
                self.child.id()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The order ids the emulator accepted, in arrival order.
pub fn accepted_order_ids(emulator: &Emulator) -> Vec<String> {
    emulator
        .gateway()
        .orders()
        .iter()
        .map(|o| o.order["order_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the emulator accepted at least `at_least` distinct orders.
pub async fn wait_accepted(emulator: &Emulator, at_least: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while emulator.gateway().order_counts().1 < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {:?} accepted",
            emulator.gateway().order_counts()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A CA (its PEM) and a server configuration for 127.0.0.1 signed by it.
pub struct TestCa {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn test_ca() -> TestCa {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![server_cert.der().clone(), ca_cert.der().clone()], key)
    .unwrap();
    TestCa {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

/// The emulator serving HTTPS with a certificate `ca` signed.
pub async fn https_emulator(faults: Faults, ca: &TestCa) -> Emulator {
    Emulator::start_tls(
        "127.0.0.1:0".parse().unwrap(),
        gateway(faults, 1),
        ca.server.clone(),
    )
    .await
    .unwrap()
}

/// A GET on loopback (reqwest's own `get` needs a process-wide TLS provider).
pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    paysync::top::client::loopback_client()
        .expect("a loopback client")
        .get(url)
        .send()
        .await
}

/// A request profile for the emulator's app key, signed with `secret`.
pub fn top_profile(
    method: paysync::top::sign::SignMethod,
    secret: &str,
    system_params: paysync::top::request::SystemParams,
) -> paysync::top::request::RequestProfile {
    paysync::top::request::RequestProfile {
        app_key: APP_KEY.into(),
        app_secret: secrecy::SecretString::from(secret.to_owned()),
        sign_method: method,
        session: None,
        partner_id: Some("paysync-test".into()),
        target_app_key: None,
        simplify: false,
        format: paysync::top::request::ResponseFormat::Json,
        system_params,
    }
}

/// A TOP client for `url` that gives up on a call after 2 s.
pub fn top_client(
    url: &str,
    profile: paysync::top::request::RequestProfile,
    egress: paysync::top::client::Egress,
) -> paysync::top::client::TopClient {
    let timeouts = paysync::top::client::Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(2),
    };
    paysync::top::client::TopClient::new(url.parse().unwrap(), profile, timeouts, egress).unwrap()
}
