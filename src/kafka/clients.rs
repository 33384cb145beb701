//! Every librdkafka client configuration paysync builds: the pipeline's group
//! consumer, the tools' consumers, the durable producer. Each is layered by
//! [`crate::config::librdkafka`]' rule: defaults, the user's tables, then the
//! owned properties.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use crate::config::librdkafka::PREFETCH_DEFAULTS;
use crate::config::{GroupProtocol, Settings};

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

/// The pipeline's group consumer, speaking `protocol` (resolved: `auto` is
/// decided by [`crate::kafka::cluster::resolve_protocol`] before this). paysync commits itself (positions with
/// their completion maps, which librdkafka's auto-commit would not send
/// while a position stands still), so nothing is stored or committed
/// automatically.
pub fn group_consumer(settings: &Settings, protocol: GroupProtocol) -> ClientConfig {
    let kafka = &settings.kafka;
    // An unresolved `auto` speaks what every broker speaks.
    let protocol = match protocol {
        GroupProtocol::Auto => GroupProtocol::Classic,
        resolved => resolved,
    };
    let mut owned = vec![
        ("group.id", kafka.group_id.clone()),
        ("group.protocol", protocol.as_str().to_owned()),
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
    if protocol == GroupProtocol::Classic {
        owned.push((
            "session.timeout.ms",
            kafka.session_timeout_ms.as_millis().to_string(),
        ));
    }
    if let Some(id) = crate::kafka::cluster::static_identity(kafka, protocol) {
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

/// An admin client (reading the cluster's configuration): the connection
/// and security properties every client shares, nothing of its own.
pub fn admin(settings: &Settings) -> ClientConfig {
    layered(settings, &BTreeMap::new(), &[], &[])
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::librdkafka::reserved_reason;

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

        let consumer = group_consumer(&settings, settings.kafka.group_protocol);
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
        let consumer = group_consumer(&settings, GroupProtocol::Consumer);
        assert_eq!(get(&consumer, "group.instance.id"), Some("paysync-0"));
        assert_eq!(get(&consumer, "group.protocol"), Some("consumer"));
        assert_eq!(
            get(&consumer, "session.timeout.ms"),
            None,
            "the broker's to set under KIP-848"
        );
        settings.kafka.group_instance_id = None;
        settings.kafka.group_instance_id_from_hostname = true;
        let consumer = group_consumer(&settings, GroupProtocol::Classic);
        assert_eq!(
            get(&consumer, "group.instance.id").map(str::to_owned),
            crate::config::hostname()
        );
    }

    #[test]
    fn the_prefetch_defaults_apply_and_yield_to_the_users_table() {
        let mut settings = Settings::default();
        let consumer = group_consumer(&settings, settings.kafka.group_protocol);
        for (key, value) in PREFETCH_DEFAULTS {
            assert_eq!(get(&consumer, key), Some(value), "{key}");
        }
        settings
            .kafka
            .consumer
            .insert("queued.max.messages.kbytes".into(), "65536".into());
        let consumer = group_consumer(&settings, settings.kafka.group_protocol);
        assert_eq!(get(&consumer, "queued.max.messages.kbytes"), Some("65536"));
    }

    #[test]
    fn every_owned_property_is_reserved() {
        let settings = Settings::default();
        for config in [
            group_consumer(&settings, settings.kafka.group_protocol),
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
