//! The librdkafka properties paysync owns and the defaults it sets, next to
//! the rule that users may not override the owned ones: configuration, which
//! validation checks the pass-through tables against and the Kafka clients
//! ([`crate::kafka::clients`]) apply. Imports nothing from the crate.
//!
//! # The property rule
//!
//! A client's configuration is built in three layers, the same for every
//! client ([`crate::kafka::clients`]): paysync's *defaults* (which the user
//! may change), then the user's pass-through tables (`kafka.librdkafka`, then
//! `kafka.consumer` or `kafka.producer`), then the properties paysync *owns*.
//! Owned properties carry a guarantee or mirror a validated setting;
//! configuration that names one is refused by
//! [`crate::config::Settings::validate`] with the setting to use instead
//! ([`RESERVED`]), and setting them last means nothing can override them even
//! so.

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
