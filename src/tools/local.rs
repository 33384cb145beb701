//! An in-process stack for `paysync demo`, `paysync bench` and the
//! integration tests: librdkafka's
//! mock cluster holding the source and dead-letter topics, the emulator on a
//! free loopback port, and settings that point the real pipeline at both.
//!
//! The mock cluster is not `Send`: keep a [`LocalStack`] on the task that made it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer};
use secrecy::SecretString;

use crate::config::Settings;
use crate::kafka;
use crate::tools::emulator::journal::Journal;
use crate::tools::emulator::{Emulator, Faults, Gateway, GatewaySettings};

pub const APP_KEY: &str = "local-app";
pub const APP_SECRET: &str = "local-secret";
pub const TOPIC: &str = "parking-payments";
pub const DLQ: &str = "parking-payments.dlq";

/// A mock cluster with the source and dead-letter topics, an emulator, and
/// the settings of a pipeline on them. The demo, the in-process benchmark and
/// the integration tests' harness all stand on it.
pub struct LocalStack {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub emulator: Emulator,
    /// Settings for a pipeline on this stack (group, topics, gateway, secret).
    pub settings: Settings,
    pub partitions: i32,
}

/// The TOP app a pipeline on the stack calls as; the gateway must know it.
#[derive(Debug, Clone, Copy)]
pub struct LocalApp<'a> {
    pub key: &'a str,
    pub secret: &'a str,
}

impl LocalStack {
    /// The demo's and benchmark's stack: the local app, fault draws seeded.
    pub async fn start(
        partitions: i32,
        faults: Faults,
        journal: Journal,
        group: &str,
    ) -> anyhow::Result<LocalStack> {
        let gateway = Gateway::new(
            GatewaySettings {
                apps: HashMap::from([(APP_KEY.to_owned(), SecretString::from(APP_SECRET))]),
                seed: Some(1),
                ..GatewaySettings::default()
            },
            faults,
            journal,
        );
        let app = LocalApp {
            key: APP_KEY,
            secret: APP_SECRET,
        };
        Self::with_gateway(partitions, gateway, app, group).await
    }

    /// A stack whose emulator serves `gateway`, with a pipeline calling as `app`.
    pub async fn with_gateway(
        partitions: i32,
        gateway: Gateway,
        app: LocalApp<'_>,
        group: &str,
    ) -> anyhow::Result<LocalStack> {
        let cluster = MockCluster::new(1).context("cannot start the in-process Kafka cluster")?;
        cluster.create_topic(TOPIC, partitions, 1)?;
        cluster.create_topic(DLQ, 1, 1)?;
        // The mock cluster cannot create topics on request: the ledger's is
        // made here, co-partitioned with the source.
        cluster.create_topic(&format!("{group}.ledger"), partitions, 1)?;
        cluster.create_topic(&format!("{group}.control"), 1, 1)?;
        cluster.create_topic(&format!("{group}.status"), 1, 1)?;
        let emulator = Emulator::start("127.0.0.1:0".parse()?, gateway).await?;
        let mut settings = Settings::default();
        settings.kafka.bootstrap_servers = cluster.bootstrap_servers();
        settings.kafka.group_id = group.to_owned();
        settings.kafka.topics = vec![TOPIC.to_owned()];
        settings.kafka.dlq_topic = DLQ.to_owned();
        settings.kafka.session_timeout_ms = Duration::from_millis(10_000);
        settings.kafka.revoke_drain_timeout_ms = Duration::from_millis(5_000);
        settings.kafka.commit_interval_ms = Duration::from_millis(200);
        settings.top.gateway_url = emulator.url();
        settings.top.app_key = app.key.to_owned();
        settings.top.app_secret = Some(SecretString::from(app.secret));
        settings.delivery.backoff_initial_ms = Duration::from_millis(50);
        settings.delivery.backoff_max_ms = Duration::from_millis(1_000);
        settings.delivery.breaker_probe_interval_ms = Duration::from_millis(500);
        settings.log.level = "warn".to_owned();
        Ok(LocalStack {
            cluster,
            emulator,
            settings,
            partitions,
        })
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.cluster.bootstrap_servers());
        config
    }

    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        Ok(self
            .client_config()
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()?)
    }

    /// A probe of the pipeline group's committed offsets, for a blocking thread.
    pub fn commit_probe(&self) -> CommitProbe {
        CommitProbe {
            bootstrap: self.cluster.bootstrap_servers(),
            group: self.settings.kafka.group_id.clone(),
            partitions: self.partitions,
        }
    }
}

/// Reads a group's committed offsets on the stack's source topic.
#[derive(Debug, Clone)]
pub struct CommitProbe {
    bootstrap: String,
    group: String,
    partitions: i32,
}

impl CommitProbe {
    /// Whether the group has committed every partition to its end. Blocks.
    pub fn committed_to_end(&self) -> anyhow::Result<bool> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", &self.group)
            .create()?;
        let partitions: Vec<i32> = (0..self.partitions).collect();
        let committed = kafka::queries::committed_offsets(&consumer, TOPIC, &partitions)?;
        for (partition, at) in committed {
            let (_, high) =
                consumer.fetch_watermarks(TOPIC, partition, kafka::queries::REQUEST_TIMEOUT)?;
            if at.unwrap_or(0) < high {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
