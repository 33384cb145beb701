//! The in-process fixture of the pipeline suites: the demo's [`LocalStack`]
//! (librdkafka's mock cluster with a source and a dead-letter topic, an
//! emulator) for the test app, settings with short timings, and a running
//! pipeline with what the tests read while it runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use paysync::config::Settings;
use paysync::pipeline::gate::Gate;
use paysync::pipeline::{Pipeline, RunningPipeline, Source, Summary};
use paysync::tools::emulator::Faults;
use paysync::tools::local::{LocalApp, LocalStack};

use crate::support::{self, APP_KEY, DeadLetter, Kafka, RunConfig, SECRET, wait_until};

pub use paysync::tools::local::{DLQ, TOPIC as SOURCE};

/// The demo's [`LocalStack`] (mock cluster, topics, emulator) for the test
/// app, with a group of its own and the suites' short timings.
pub struct Harness {
    /// The cluster and the emulator.
    pub stack: LocalStack,
    pub kafka: Kafka,
    pub group: String,
    pub partitions: i32,
}

impl Harness {
    pub async fn new(partitions: i32, faults: Faults) -> Harness {
        let group = format!("paysync-test-{}", rand::random::<u32>());
        let app = LocalApp {
            key: APP_KEY,
            secret: SECRET,
        };
        let stack = LocalStack::with_gateway(partitions, support::gateway(faults, 3), app, &group)
            .await
            .unwrap();
        let kafka = Kafka {
            bootstrap: stack.cluster.bootstrap_servers(),
        };
        Harness {
            stack,
            kafka,
            group,
            partitions,
        }
    }

    /// The stack's settings with the suites' timings: short enough that a
    /// rebalance, a breaker or a shutdown is seen in seconds.
    pub fn settings(&self) -> Settings {
        let mut settings = self.stack.settings.clone();
        settings.log = Settings::default().log;
        settings.kafka.session_timeout_ms = Duration::from_millis(6_000);
        settings.kafka.revoke_drain_timeout_ms = Duration::from_millis(3_000);
        settings.kafka.commit_interval_ms = Duration::from_millis(200);
        settings.delivery.rate_limit_per_sec = 10_000;
        settings.delivery.backoff_initial_ms = Duration::from_millis(20);
        settings.delivery.backoff_max_ms = Duration::from_millis(200);
        settings.delivery.breaker_probe_interval_ms = Duration::from_millis(200);
        settings.delivery.halt_probe_interval_ms = Duration::from_millis(500);
        settings.delivery.shutdown_drain_timeout_ms = Duration::from_millis(5_000);
        settings.top.request_timeout_ms = Duration::from_millis(2_000);
        settings.top.connect_timeout_ms = Duration::from_millis(1_000);
        settings
    }

    /// A `paysync run` configuration for this harness.
    pub fn run_config<'a>(
        &'a self,
        url: &'a str,
        delivery: &'a str,
        top: &'a str,
    ) -> RunConfig<'a> {
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

    pub async fn produce(&self, records: &[(String, Vec<u8>)]) {
        self.kafka.produce(SOURCE, records).await;
    }

    pub fn committed(&self) -> BTreeMap<i32, i64> {
        self.kafka.committed(&self.group, SOURCE, self.partitions)
    }

    pub fn end_offsets(&self) -> BTreeMap<i32, i64> {
        self.kafka.end_offsets(SOURCE, self.partitions)
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.kafka.dead_letters(DLQ)
    }

    pub fn accepted_order_ids(&self) -> Vec<String> {
        support::accepted_order_ids(&self.stack.emulator)
    }
}

/// A running pipeline, with what the tests read while it runs.
pub struct Running {
    pub gate: Arc<Gate>,
    /// Dropping it (a failing test) aborts the run, so the mock cluster can shut down.
    pub pipeline: RunningPipeline,
}

impl Running {
    pub async fn start(settings: Settings) -> Running {
        let pipeline = Pipeline::build(settings, Source::Group)
            .await
            .unwrap()
            .spawn(std::future::pending());
        Running {
            gate: pipeline.gate().clone(),
            pipeline,
        }
    }

    pub async fn stop(self) -> Summary {
        self.pipeline.stop().await
    }

    pub fn summary(&self) -> Summary {
        self.pipeline.summary()
    }

    /// This replica's calls per second (its share of the group's quota).
    pub fn rate_share(&self) -> f64 {
        self.pipeline.metrics().rate_limit_share.get()
    }

    pub fn assigned_partitions(&self) -> usize {
        self.pipeline.health().assigned_partitions()
    }

    /// Waits until `done` holds for the summary, or fails after PATIENCE.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&Summary) -> bool) {
        wait_until(what, || done(&self.summary())).await;
    }
}

pub async fn wait_committed(harness: &Harness, expected: &BTreeMap<i32, i64>) {
    harness
        .kafka
        .wait_committed(&harness.group, SOURCE, expected)
        .await;
}

/// The admin server over a running pipeline, on a free port.
pub async fn admin_for(running: &Running) -> (paysync::admin::AdminServer, String) {
    let state = paysync::admin::AdminState::of(&running.pipeline, Duration::from_secs(30));
    let server = paysync::admin::AdminServer::start("127.0.0.1:0".parse().unwrap(), state)
        .await
        .unwrap();
    let base = format!("http://{}", server.addr());
    (server, base)
}

/// The body of a GET (the admin endpoints).
pub async fn get_text(url: &str) -> String {
    crate::support::http_get(url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
