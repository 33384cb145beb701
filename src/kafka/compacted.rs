//! The compacted topics paysync keeps its state in (the delivery ledger,
//! the control topic): made sure of at start — created compacted when
//! missing and the settings allow, never silently without it, and refused
//! when their `cleanup.policy` would delete entries by age.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

use crate::config::Settings;
use crate::kafka;

/// How long the topic's creation and metadata are waited for.
const TOPIC_WAIT: Duration = Duration::from_secs(30);

/// One compacted topic and how to make it.
#[derive(Debug, Clone)]
pub struct CompactedTopic {
    /// What it is called in messages: `ledger`, `control`.
    pub what: &'static str,
    pub topic: String,
    /// Partitions of a topic paysync creates.
    pub partitions: i32,
    /// Whether paysync may create it.
    pub create: bool,
    /// The setting that allows it, named when it does not.
    pub create_key: &'static str,
    pub replication_factor: i32,
    /// The way out that needs no topic, for the error.
    pub instead: &'static str,
}

/// Why a compacted topic cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CompactedTopicError {
    #[error(
        "the {what} topic {topic:?} does not exist{why}; create it compacted:\n  kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {topic} --partitions {partitions} --config cleanup.policy=compact\n{instead}"
    )]
    Missing {
        what: &'static str,
        topic: String,
        bootstrap: String,
        partitions: i32,
        why: String,
        instead: &'static str,
    },
    #[error(
        "the {what} topic {topic:?} has cleanup.policy={policy}: its entries would be deleted by age, not kept per key; make it compacted:\n  kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact"
    )]
    NotCompacted {
        what: &'static str,
        topic: String,
        bootstrap: String,
        policy: String,
    },
    #[error("cannot read the {what} topic {topic:?}: {error}")]
    Kafka {
        what: &'static str,
        topic: String,
        #[source]
        error: KafkaError,
    },
}

/// Makes sure `spec`'s topic exists and is compacted; returns its partition
/// count. `consumer` is the caller's, already connected, for the metadata.
/// Blocks.
pub fn ensure<C: ConsumerContext>(
    settings: &Settings,
    consumer: &impl Consumer<C>,
    spec: &CompactedTopic,
) -> Result<i32, CompactedTopicError> {
    let topic = spec.topic.clone();
    let bootstrap = settings.kafka.bootstrap_servers.clone();
    let kafka_error = |error| CompactedTopicError::Kafka {
        what: spec.what,
        topic: topic.clone(),
        error,
    };
    let admin: AdminClient<DefaultClientContext> = kafka::clients::admin(settings)
        .create()
        .map_err(kafka_error)?;
    let found = kafka::queries::topic_partitions(consumer, &topic).map_err(kafka_error)?;
    let missing = |why: String| CompactedTopicError::Missing {
        what: spec.what,
        topic: topic.clone(),
        bootstrap: bootstrap.clone(),
        partitions: spec.partitions,
        why,
        instead: spec.instead,
    };
    let partitions = match found {
        Some(partitions) => partitions.len() as i32,
        None if !spec.create => {
            return Err(missing(format!(" and {} is off", spec.create_key)));
        }
        None => {
            create(&admin, consumer, spec)
                .map_err(|why| missing(format!(" and paysync could not create it ({why})")))?;
            tracing::info!(topic = %topic, partitions = spec.partitions, "Created the {} topic (compacted).", spec.what);
            spec.partitions
        }
    };
    if let Some(policy) = cleanup_policy(&admin, &topic)
        && !policy.split(',').any(|p| p.trim() == "compact")
    {
        return Err(CompactedTopicError::NotCompacted {
            what: spec.what,
            topic,
            bootstrap,
            policy,
        });
    }
    Ok(partitions)
}

/// Creates the topic compacted and waits until metadata shows it, so the
/// first write finds a leader. Blocks.
fn create<C: ConsumerContext>(
    admin: &AdminClient<DefaultClientContext>,
    consumer: &impl Consumer<C>,
    spec: &CompactedTopic,
) -> Result<(), String> {
    let replication = TopicReplication::Fixed(spec.replication_factor);
    let new = NewTopic::new(&spec.topic, spec.partitions.max(1), replication)
        .set("cleanup.policy", "compact");
    let options = AdminOptions::new().operation_timeout(Some(TOPIC_WAIT));
    let created = futures::executor::block_on(admin.create_topics(&[new], &options))
        .map_err(|error| error.to_string())?;
    for result in created {
        match result {
            Ok(_) => {}
            // Another replica created it first.
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(code.to_string()),
        }
    }
    match kafka::queries::wait_for_topic(consumer, &spec.topic, TOPIC_WAIT) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("it did not appear in metadata".into()),
        Err(error) => Err(error.to_string()),
    }
}

/// The topic's `cleanup.policy`, when the brokers say (the in-process mock
/// cluster and a locked-down cluster may not). Asked of one named broker:
/// sent to "any broker", a request no broker supports waits for its whole
/// timeout instead of failing at once.
fn cleanup_policy(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Option<String> {
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), kafka::queries::REQUEST_TIMEOUT)
        .ok()?;
    let broker = metadata.brokers().first()?.id();
    let options = AdminOptions::new()
        .request_timeout(Some(kafka::queries::REQUEST_TIMEOUT))
        .broker_id(broker);
    let described = futures::executor::block_on(
        admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options),
    )
    .ok()?;
    let resource = described.into_iter().next()?.ok()?;
    resource
        .get("cleanup.policy")
        .and_then(|entry| entry.value.clone())
}
