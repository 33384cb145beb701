//! One home for librdkafka plumbing: every `ClientConfig` paysync builds, the
//! properties paysync owns next to the rule that users may not override them,
//! partition identities, topic metadata, committed offsets and synchronous
//! commits.
//!
//! # The property rule
//!
//! A client's configuration is built in three layers, the same for every
//! client: paysync's *defaults* (which the user may change), then the user's
//! pass-through tables (`kafka.librdkafka`, then `kafka.consumer` or
//! `kafka.producer`), then the properties paysync *owns*. Owned properties
//! carry a guarantee or mirror a validated setting; configuration that names
//! one is refused by [`crate::config::Settings::validate`] with the setting
//! to use instead ([`RESERVED`]), and setting them last means nothing can
//! override them even so.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionListElem;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::{GroupProtocol, Settings};
use crate::metrics::Metrics;

/// How long one metadata or offsets request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka properties paysync owns, and what to set instead. Setting them
/// through the pass-through tables would break a guarantee or bypass a
/// validated setting.
pub const RESERVED: [(&str, &str); 12] = [
    ("group.protocol", "set kafka.group_protocol instead"),
    (
        "group.instance.id",
        "set kafka.group_instance_id or kafka.group_instance_id_from_hostname instead",
    ),
    (
        "statistics.interval.ms",
        "set kafka.statistics_interval_ms instead",
    ),
    (
        "topic.metadata.refresh.interval.ms",
        "set kafka.metadata_refresh_interval_ms instead (the rate budget reads partition counts as often)",
    ),
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    ("group.id", "set kafka.group_id instead"),
    (
        "enable.auto.offset.store",
        "paysync stores offsets itself, only after success; this cannot be changed",
    ),
    (
        "enable.auto.commit",
        "paysync commits positions and completion maps itself; set kafka.commit_interval_ms",
    ),
    (
        "auto.commit.interval.ms",
        "set kafka.commit_interval_ms instead",
    ),
    (
        "session.timeout.ms",
        "set kafka.session_timeout_ms instead (it is checked against the revoke drain)",
    ),
    (
        "enable.idempotence",
        "the dead-letter producer is always idempotent",
    ),
    (
        "acks",
        "the dead-letter producer always waits for all in-sync replicas",
    ),
];

/// Why a pass-through property is refused, if paysync owns it.
pub fn reserved_reason(property: &str) -> Option<&'static str> {
    RESERVED
        .iter()
        .find(|(reserved, _)| *reserved == property)
        .map(|(_, reason)| *reason)
}

/// Builds a client: `defaults`, then the user's tables, then `owned`.
fn layered(
    settings: &Settings,
    role_table: &BTreeMap<String, String>,
    defaults: &[(&str, String)],
    owned: &[(&str, String)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("client.id", concat!("paysync-", env!("CARGO_PKG_VERSION")));
    for (key, value) in defaults {
        config.set(*key, value);
    }
    for (key, value) in settings.kafka.librdkafka.iter().chain(role_table) {
        config.set(key, value);
    }
    config.set("bootstrap.servers", &settings.kafka.bootstrap_servers);
    for (key, value) in owned {
        config.set(*key, value);
    }
    config
}

/// The pipeline's group consumer. paysync commits itself (positions with
/// their completion maps, which librdkafka's auto-commit would not send
/// while a position stands still), so nothing is stored or committed
/// automatically.
pub fn group_consumer(settings: &Settings) -> ClientConfig {
    let kafka = &settings.kafka;
    let mut owned = vec![
        ("group.id", kafka.group_id.clone()),
        ("group.protocol", kafka.group_protocol.as_str().to_owned()),
        ("enable.auto.commit", "false".to_owned()),
        ("enable.auto.offset.store", "false".to_owned()),
        (
            "statistics.interval.ms",
            kafka.statistics_interval_ms.as_millis().to_string(),
        ),
        // The classic protocol's leader notices a grown topic (and rebalances
        // its new partitions in) only at a metadata refresh.
        (
            "topic.metadata.refresh.interval.ms",
            kafka.metadata_refresh_interval_ms.as_millis().to_string(),
        ),
    ];
    // With KIP-848 the session timeout is the broker's to set.
    if kafka.group_protocol == GroupProtocol::Classic {
        owned.push((
            "session.timeout.ms",
            kafka.session_timeout_ms.as_millis().to_string(),
        ));
    }
    if let Some(id) = kafka.instance_id() {
        owned.push(("group.instance.id", id));
    }
    layered(
        settings,
        &kafka.consumer,
        &[
            ("auto.offset.reset", kafka.auto_offset_reset.clone()),
            ("enable.partition.eof", "false".to_owned()),
        ]
        .into_iter()
        .chain(PREFETCH_DEFAULTS.map(|(key, value)| (key, value.to_owned())))
        .collect::<Vec<_>>(),
        &owned,
    )
}

/// The group consumer's prefetch, sized for a bridge rather than a stream
/// processor: paysync's windows hold the work, so librdkafka's queue only
/// has to keep them fed (its own defaults, 64 MiB and 100,000 messages,
/// hold a whole backlog in memory). Small per-partition fetches keep the
/// queue interleaved across partitions, and a partition whose queue filled
/// up is fetched again after 10 ms instead of librdkafka's 1 s, which
/// stalled every partition resumed after a pause. Users may change them in
/// `[kafka.consumer]`; docs/performance.md gives what they cost.
pub const PREFETCH_DEFAULTS: [(&str, &str); 4] = [
    ("queued.max.messages.kbytes", "4096"),
    ("queued.min.messages", "10000"),
    ("max.partition.fetch.bytes", "65536"),
    ("fetch.queue.backoff.ms", "10"),
];

/// A tool's consumer (replay's planning, dead-letter reading): it joins no
/// group and commits only when the tool says so, under `group`.
pub fn tool_consumer(settings: &Settings, group: &str) -> ClientConfig {
    layered(
        settings,
        &settings.kafka.consumer,
        &[],
        &[
            ("group.id", group.to_owned()),
            ("enable.auto.commit", "false".to_owned()),
            ("enable.auto.offset.store", "false".to_owned()),
        ],
    )
}

/// A producer whose acknowledgement means the record is durable: the
/// dead-letter producer and redrive's.
pub fn durable_producer(settings: &Settings) -> ClientConfig {
    layered(
        settings,
        &settings.kafka.producer,
        &[("message.timeout.ms", "30000".to_owned())],
        // A dead letter is the only copy once the source offset moves.
        &[
            ("enable.idempotence", "true".to_owned()),
            ("acks", "all".to_owned()),
        ],
    )
}

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: String,
    pub partition: i32,
}

impl PartitionId {
    pub fn new(topic: impl Into<String>, partition: i32) -> PartitionId {
        PartitionId {
            topic: topic.into(),
            partition,
        }
    }

    /// The partition a message came from.
    pub fn of(message: &impl Message) -> PartitionId {
        PartitionId::new(message.topic(), message.partition())
    }
}

impl From<&TopicPartitionListElem<'_>> for PartitionId {
    fn from(element: &TopicPartitionListElem<'_>) -> PartitionId {
        PartitionId::new(element.topic(), element.partition())
    }
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// The partitions of a list.
pub fn partitions_of(list: &TopicPartitionList) -> Vec<PartitionId> {
    list.elements().iter().map(PartitionId::from).collect()
}

/// A list of positions (the next offset to read) to store or commit.
pub fn position_list<'a>(
    positions: impl IntoIterator<Item = (&'a PartitionId, i64)>,
) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (id, position) in positions {
        // Adding an offset to a fresh element cannot fail.
        let _ = list.add_partition_offset(&id.topic, id.partition, Offset::Offset(position));
    }
    list
}

/// The partition ids of `topic`, or `None` when the brokers do not know it.
/// Blocks for up to [`REQUEST_TIMEOUT`].
pub fn topic_partitions<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
) -> KafkaResult<Option<Vec<i32>>> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect()))
}

/// How many partitions each of `topics` has, for those the brokers know.
/// Blocks for up to [`REQUEST_TIMEOUT`] per topic.
pub fn partition_counts<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topics: &[String],
) -> KafkaResult<Vec<(String, usize)>> {
    let mut counts = Vec::with_capacity(topics.len());
    for topic in topics {
        if let Some(partitions) = topic_partitions(consumer, topic)? {
            counts.push((topic.clone(), partitions.len()));
        }
    }
    Ok(counts)
}

/// Like [`topic_partitions`], waiting up to `patience` for a topic created
/// just before start-up (a compose job, a test) to appear in metadata. Blocks.
pub fn wait_for_topic<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    patience: Duration,
) -> KafkaResult<Option<Vec<i32>>> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(partitions) = topic_partitions(consumer, topic)? {
            return Ok(Some(partitions));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The group's committed offset per partition (`None` where it has none). Blocks.
pub fn committed_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partitions: &[i32],
) -> KafkaResult<HashMap<i32, Option<i64>>> {
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, REQUEST_TIMEOUT)?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect())
}

/// The group's committed offset and its metadata for each partition that has
/// one. Blocks for up to [`REQUEST_TIMEOUT`].
pub fn committed_with_metadata<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    partitions: &[PartitionId],
) -> KafkaResult<HashMap<PartitionId, (i64, String)>> {
    let mut list = TopicPartitionList::new();
    for id in partitions {
        list.add_partition(&id.topic, id.partition);
    }
    let committed = consumer.committed_offsets(list, REQUEST_TIMEOUT)?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| {
            let Offset::Offset(offset) = e.offset() else {
                return None;
            };
            // rdkafka panics on metadata that is not UTF-8; Apache Kafka
            // stores it as a string, but another client may write raw bytes.
            let metadata =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.metadata().to_owned()))
                    .unwrap_or_default();
            Some((PartitionId::from(e), (offset, metadata)))
        })
        .collect())
}

/// Each partition's end (high watermark) where it could be read; blocks for
/// up to [`REQUEST_TIMEOUT`] per partition.
pub fn end_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    partitions: &[PartitionId],
) -> HashMap<PartitionId, i64> {
    partitions
        .iter()
        .filter_map(|id| {
            let (_, high) = consumer
                .fetch_watermarks(&id.topic, id.partition, REQUEST_TIMEOUT)
                .ok()?;
            Some((id.clone(), high))
        })
        .collect()
}

/// Whether a failed commit may succeed if tried again soon: the coordinator
/// is moving, loading or briefly unreachable.
pub fn commit_retriable(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            CoordinatorNotAvailable
                | NotCoordinator
                | CoordinatorLoadInProgress
                | RequestTimedOut
                | OperationTimedOut
                | BrokerTransportFailure
                | AllBrokersDown
                | NetworkException
                | WaitingForCoordinator
        )
    )
}

/// Commits a list synchronously (on revoke and at shutdown), trying again
/// while the coordinator is briefly unavailable, for up to `patience`. Blocks.
pub fn commit_sync<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    list: &TopicPartitionList,
    metrics: &Metrics,
    what: &str,
    patience: Duration,
) -> bool {
    if list.count() == 0 {
        return true;
    }
    let deadline = Instant::now() + patience;
    let mut attempt = 0;
    loop {
        let committed = consumer.commit(list, rdkafka::consumer::CommitMode::Sync);
        metrics.record_commit(committed.is_ok());
        match committed {
            Ok(()) => {
                tracing::info!(partitions = list.count(), "Committed {what}.");
                return true;
            }
            Err(error) if commit_retriable(&error) && Instant::now() < deadline => {
                let delay = crate::backoff::backoff(
                    attempt,
                    Duration::from_millis(100),
                    Duration::from_secs(1),
                );
                tracing::info!(error = %error, "Commit of {what} failed; trying again.");
                std::thread::sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
                attempt += 1;
            }
            Err(error) => {
                tracing::warn!(error = %error, "Commit of {what} failed; events finished since the last commit may be sent again by another replica.");
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(config: &'a ClientConfig, key: &str) -> Option<&'a str> {
        config.get(key)
    }

    #[test]
    fn user_tables_override_defaults_but_never_owned_properties() {
        let mut settings = Settings::default();
        settings
            .kafka
            .librdkafka
            .insert("security.protocol".into(), "SASL_SSL".into());
        settings
            .kafka
            .consumer
            .insert("auto.offset.reset".into(), "latest".into());
        // Refused by validation; even unvalidated, the owned value wins.
        settings
            .kafka
            .consumer
            .insert("enable.auto.offset.store".into(), "true".into());
        settings
            .kafka
            .producer
            .insert("message.timeout.ms".into(), "5000".into());
        settings.kafka.producer.insert("acks".into(), "1".into());

        let consumer = group_consumer(&settings);
        assert_eq!(get(&consumer, "security.protocol"), Some("SASL_SSL"));
        assert_eq!(get(&consumer, "auto.offset.reset"), Some("latest"));
        assert_eq!(get(&consumer, "enable.auto.offset.store"), Some("false"));
        assert_eq!(get(&consumer, "group.id"), Some("paysync"));

        let producer = durable_producer(&settings);
        assert_eq!(get(&producer, "security.protocol"), Some("SASL_SSL"));
        assert_eq!(get(&producer, "message.timeout.ms"), Some("5000"));
        assert_eq!(get(&producer, "acks"), Some("all"));
        assert_eq!(get(&producer, "enable.idempotence"), Some("true"));
        assert_eq!(get(&producer, "auto.offset.reset"), None);

        assert_eq!(get(&consumer, "group.protocol"), Some("classic"));
        assert_eq!(get(&consumer, "session.timeout.ms"), Some("45000"));
        assert_eq!(get(&consumer, "group.instance.id"), None);

        let tool = tool_consumer(&settings, "paysync.replay");
        assert_eq!(get(&tool, "group.id"), Some("paysync.replay"));
        assert_eq!(get(&tool, "enable.auto.commit"), Some("false"));
    }

    #[test]
    fn static_membership_and_the_consumer_protocol() {
        let mut settings = Settings::default();
        settings.kafka.group_instance_id = Some("paysync-0".into());
        settings.kafka.group_protocol = GroupProtocol::Consumer;
        let consumer = group_consumer(&settings);
        assert_eq!(get(&consumer, "group.instance.id"), Some("paysync-0"));
        assert_eq!(get(&consumer, "group.protocol"), Some("consumer"));
        assert_eq!(
            get(&consumer, "session.timeout.ms"),
            None,
            "the broker's to set under KIP-848"
        );
        settings.kafka.group_instance_id = None;
        settings.kafka.group_instance_id_from_hostname = true;
        let consumer = group_consumer(&settings);
        assert_eq!(
            get(&consumer, "group.instance.id").map(str::to_owned),
            crate::config::hostname()
        );
    }

    #[test]
    fn the_prefetch_defaults_apply_and_yield_to_the_users_table() {
        let mut settings = Settings::default();
        let consumer = group_consumer(&settings);
        for (key, value) in PREFETCH_DEFAULTS {
            assert_eq!(get(&consumer, key), Some(value), "{key}");
        }
        settings
            .kafka
            .consumer
            .insert("queued.max.messages.kbytes".into(), "65536".into());
        let consumer = group_consumer(&settings);
        assert_eq!(get(&consumer, "queued.max.messages.kbytes"), Some("65536"));
    }

    #[test]
    fn every_owned_property_is_reserved() {
        let settings = Settings::default();
        for config in [
            group_consumer(&settings),
            tool_consumer(&settings, "g"),
            durable_producer(&settings),
        ] {
            for (key, _) in config.config_map() {
                let key: &str = key;
                let owned_by_setting =
                    matches!(
                        key,
                        "client.id"
                            | "auto.offset.reset"
                            | "enable.partition.eof"
                            | "message.timeout.ms"
                    ) || PREFETCH_DEFAULTS.iter().any(|(default, _)| *default == key);
                assert!(
                    owned_by_setting || reserved_reason(key).is_some(),
                    "{key} is set by paysync but not reserved"
                );
            }
        }
    }
}
