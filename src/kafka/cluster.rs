//! What the cluster says about itself that decides the group's settings, and
//! the decision: which rebalance protocol the group uses when
//! `kafka.group_protocol = "auto"`, and which settings would make a broker's
//! death or a replica's restart stop the group.
//!
//! * **Protocol.** KIP-848 (`consumer`) moves only the partitions that must
//!   move: a replica that dies, restarts or joins never stops the others'
//!   partitions, where the classic protocol stops every member until the
//!   rebalance completes — and that waits for a dead member's session, longer
//!   when its coordinator moves meanwhile. So `auto` takes `consumer` when
//!   the brokers' `group.coordinator.rebalance.protocols` includes it (Apache
//!   Kafka 4.0+) and `classic` otherwise.
//! * **Static membership** (`group.instance.id`) keeps a restarted classic
//!   member's partitions without a rebalance, so it goes with the classic
//!   protocol. Under KIP-848 a static member killed with -9 cannot rejoin
//!   until its old session ends (the broker answers
//!   `UNRELEASED_INSTANCE_ID`, fatal to librdkafka), while a dynamic member
//!   stops nobody else anyway: the host-name identity is not used there,
//!   and an explicit one is kept with a warning.
//! * **Session timeout.** A member's session must outlast the cluster's
//!   detection of a dead broker (`broker.session.timeout.ms`, 9 s by default,
//!   then an election and a coordinator's load), or every member whose
//!   coordinator died is dropped from the group.
//!
//! The facts are read once at start-up with DescribeConfigs on one broker.
//! A cluster that does not answer (no DescribeConfigs permission, librdkafka's
//! mock cluster) is taken to have Apache Kafka's defaults and to speak the
//! classic protocol only, which every broker speaks.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::FromClientConfig;

use crate::config::{GroupProtocol, KafkaSettings};
use crate::kafka::queries::REQUEST_TIMEOUT;

/// Apache Kafka's `broker.session.timeout.ms`.
const DEFAULT_BROKER_SESSION: Duration = Duration::from_secs(9);
/// How far a member's session must outlast `broker.session.timeout.ms`:
/// the controller fences a dead broker up to ~3.5 s after its session ends
/// (measured 9.4–12.3 s after a kill -9 with 9 s), then a new coordinator
/// loads the group and the members find it.
pub const SESSION_MARGIN: Duration = Duration::from_secs(6);

/// What the cluster said (or what is assumed when it did not answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFacts {
    /// Whether the group coordinators speak KIP-848's `consumer` protocol.
    pub consumer_protocol: bool,
    /// `broker.session.timeout.ms`: how long a dead broker stays a member.
    pub broker_session_timeout: Duration,
    /// `group.consumer.session.timeout.ms`: KIP-848 members' session.
    pub consumer_group_session_timeout: Option<Duration>,
    /// Whether these came from the cluster (false: assumed defaults).
    pub read: bool,
}

impl ClusterFacts {
    /// Apache Kafka's defaults, protocol unknown: for `check-config`, which
    /// does not connect, and for a cluster that did not answer.
    pub fn assumed() -> ClusterFacts {
        ClusterFacts {
            consumer_protocol: false,
            broker_session_timeout: DEFAULT_BROKER_SESSION,
            consumer_group_session_timeout: None,
            read: false,
        }
    }

    /// Reads the facts from one broker's configuration, through an admin
    /// client made of `config` (`kafka::clients::admin`). Blocks (up to
    /// twice the request timeout).
    pub fn read(config: &ClientConfig) -> Result<ClusterFacts, String> {
        let admin = AdminClient::<DefaultClientContext>::from_config(config)
            .map_err(|e| format!("cannot create an admin client: {e}"))?;
        let metadata = admin
            .inner()
            .fetch_metadata(None, REQUEST_TIMEOUT)
            .map_err(|e| format!("cannot read metadata: {e}"))?;
        let broker = metadata
            .brokers()
            .first()
            .ok_or("the metadata names no broker")?
            .id();
        let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
        let described = futures::executor::block_on(
            admin.describe_configs(&[ResourceSpecifier::Broker(broker)], &options),
        )
        .map_err(|e| format!("cannot describe broker {broker}'s configuration: {e}"))?;
        let resource = described
            .into_iter()
            .next()
            .ok_or("no answer for the broker's configuration")?
            .map_err(|e| format!("cannot describe broker {broker}'s configuration: {e}"))?;
        let value = |name: &str| {
            resource
                .get(name)
                .and_then(|entry| entry.value.as_deref())
                .map(str::to_owned)
        };
        let millis = |name: &str| {
            value(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis)
        };
        Ok(ClusterFacts {
            consumer_protocol: value("group.coordinator.rebalance.protocols").is_some_and(|v| {
                v.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("consumer"))
            }),
            broker_session_timeout: millis("broker.session.timeout.ms")
                .unwrap_or(DEFAULT_BROKER_SESSION),
            consumer_group_session_timeout: millis("group.consumer.session.timeout.ms"),
            read: true,
        })
    }
}

/// The protocol the group uses, and why (for the start-up log).
pub fn resolve_protocol(kafka: &KafkaSettings, facts: &ClusterFacts) -> (GroupProtocol, String) {
    match kafka.group_protocol {
        GroupProtocol::Classic | GroupProtocol::Consumer => (
            kafka.group_protocol,
            "set by kafka.group_protocol".to_owned(),
        ),
        GroupProtocol::Auto => {
            if let Some(property) = classic_only_property(kafka) {
                (
                    GroupProtocol::Classic,
                    format!("\"{property}\" is set, which only the classic protocol uses"),
                )
            } else if facts.consumer_protocol {
                (
                    GroupProtocol::Consumer,
                    "the cluster's group coordinators speak KIP-848".to_owned(),
                )
            } else if facts.read {
                (
                    GroupProtocol::Classic,
                    "the cluster's group coordinators speak only the classic protocol".to_owned(),
                )
            } else {
                (
                    GroupProtocol::Classic,
                    "the cluster's configuration could not be read".to_owned(),
                )
            }
        }
    }
}

/// The static identity (`group.instance.id`) the consumer uses under
/// `protocol`: the configured one with the classic protocol; under KIP-848
/// only one set explicitly (`kafka.group_instance_id`).
pub fn static_identity(kafka: &KafkaSettings, protocol: GroupProtocol) -> Option<String> {
    match protocol {
        GroupProtocol::Consumer => kafka.group_instance_id.clone(),
        GroupProtocol::Classic | GroupProtocol::Auto => kafka.instance_id(),
    }
}

/// A pass-through property only the classic protocol accepts, if set.
fn classic_only_property(kafka: &KafkaSettings) -> Option<&'static str> {
    ["partition.assignment.strategy", "heartbeat.interval.ms"]
        .into_iter()
        .find(|name| kafka.librdkafka.contains_key(*name) || kafka.consumer.contains_key(*name))
}

/// Settings that would let a broker's death or a replica's restart stop
/// the group, for `check-config` (with `protocol` as configured and assumed
/// facts) and start-up (resolved, with the cluster's facts).
pub fn group_warnings(
    kafka: &KafkaSettings,
    protocol: GroupProtocol,
    facts: &ClusterFacts,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let needed = facts.broker_session_timeout + SESSION_MARGIN;
    let broker_session = format!(
        "broker.session.timeout.ms ({} ms{}) + {} s",
        facts.broker_session_timeout.as_millis(),
        if facts.read {
            ""
        } else {
            ", Apache Kafka's default"
        },
        SESSION_MARGIN.as_secs()
    );
    let session = match protocol {
        GroupProtocol::Consumer => facts
            .consumer_group_session_timeout
            .map(|timeout| (timeout, "the brokers' group.consumer.session.timeout.ms")),
        GroupProtocol::Classic | GroupProtocol::Auto => {
            Some((kafka.session_timeout_ms, "kafka.session_timeout_ms"))
        }
    };
    if let Some((timeout, name)) = session
        && timeout < needed
    {
        warnings.push(format!(
            "{name} ({} ms) is shorter than the cluster needs to notice a dead broker and move its group coordinator ({broker_session}): a broker's death would drop every replica it coordinates from the group, and their partitions would stop until they rejoin",
            timeout.as_millis()
        ));
    }
    if protocol == GroupProtocol::Consumer
        && let Some(id) = &kafka.group_instance_id
    {
        warnings.push(format!(
            "kafka.group_instance_id ({id:?}) with the KIP-848 protocol: if this replica is killed, its restart cannot join the group until the old member's session ends (the broker answers UNRELEASED_INSTANCE_ID, and paysync exits so its supervisor restarts it), and its partitions wait that long; without an identity a restart stops no one and its partitions move at the session's end"
        ));
    }
    let static_member = kafka.group_instance_id.is_some() || kafka.group_instance_id_from_hostname;
    let classic = match protocol {
        GroupProtocol::Classic => Some(""),
        GroupProtocol::Auto => Some(
            " (kafka.group_protocol = \"auto\" falls back to the classic protocol on clusters before Apache Kafka 4.0)",
        ),
        GroupProtocol::Consumer => None,
    };
    if let Some(when) = classic
        && !static_member
    {
        warnings.push(format!(
            "the classic group protocol without static membership{when}: a replica killed and restarted makes every replica stop until the dead member's session ends (kafka.session_timeout_ms, {} ms; longer if the group coordinator moves meanwhile). Set kafka.group_instance_id or kafka.group_instance_id_from_hostname for replicas with stable names, or use a cluster that speaks KIP-848",
            kafka.session_timeout_ms.as_millis()
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(protocol: GroupProtocol) -> KafkaSettings {
        KafkaSettings {
            group_protocol: protocol,
            ..KafkaSettings::default()
        }
    }

    fn facts(consumer_protocol: bool) -> ClusterFacts {
        ClusterFacts {
            consumer_protocol,
            broker_session_timeout: Duration::from_secs(9),
            consumer_group_session_timeout: Some(Duration::from_secs(45)),
            read: true,
        }
    }

    #[test]
    fn auto_takes_kip_848_where_the_cluster_speaks_it_and_classic_elsewhere() {
        let auto = kafka(GroupProtocol::Auto);
        assert_eq!(
            resolve_protocol(&auto, &facts(true)).0,
            GroupProtocol::Consumer
        );
        assert_eq!(
            resolve_protocol(&auto, &facts(false)).0,
            GroupProtocol::Classic
        );
        let (protocol, why) = resolve_protocol(&auto, &ClusterFacts::assumed());
        assert_eq!(protocol, GroupProtocol::Classic);
        assert!(why.contains("could not be read"), "{why}");
        // A classic-only property decides for the classic protocol.
        let mut assigning = kafka(GroupProtocol::Auto);
        assigning.consumer.insert(
            "partition.assignment.strategy".into(),
            "cooperative-sticky".into(),
        );
        let (protocol, why) = resolve_protocol(&assigning, &facts(true));
        assert_eq!(protocol, GroupProtocol::Classic);
        assert!(why.contains("partition.assignment.strategy"), "{why}");
        // What is set is kept.
        assert_eq!(
            resolve_protocol(&kafka(GroupProtocol::Classic), &facts(true)).0,
            GroupProtocol::Classic
        );
    }

    #[test]
    fn a_session_shorter_than_a_dead_brokers_detection_is_named() {
        let mut short = kafka(GroupProtocol::Classic);
        short.session_timeout_ms = Duration::from_secs(6);
        short.group_instance_id = Some("paysync-0".into());
        let warnings = group_warnings(&short, GroupProtocol::Classic, &facts(false));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("kafka.session_timeout_ms (6000 ms)"));
        assert!(warnings[0].contains("broker.session.timeout.ms (9000 ms) + 6 s"));
        // 15 s is enough; the default 45 s too.
        short.session_timeout_ms = Duration::from_secs(15);
        assert!(group_warnings(&short, GroupProtocol::Classic, &facts(false)).is_empty());
        // With KIP-848 the brokers' session counts, not paysync's.
        short.group_instance_id = None;
        let mut brief = facts(true);
        brief.consumer_group_session_timeout = Some(Duration::from_secs(6));
        let warnings = group_warnings(&short, GroupProtocol::Consumer, &brief);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("group.consumer.session.timeout.ms (6000 ms)"));
    }

    #[test]
    fn the_host_name_identity_goes_with_the_classic_protocol_only() {
        let mut named = kafka(GroupProtocol::Auto);
        named.group_instance_id_from_hostname = true;
        assert_eq!(
            static_identity(&named, GroupProtocol::Classic),
            crate::config::hostname()
        );
        assert_eq!(static_identity(&named, GroupProtocol::Consumer), None);
        named.group_instance_id_from_hostname = false;
        named.group_instance_id = Some("paysync-0".into());
        assert_eq!(
            static_identity(&named, GroupProtocol::Consumer).as_deref(),
            Some("paysync-0")
        );
        let warnings = group_warnings(&named, GroupProtocol::Consumer, &facts(true));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("UNRELEASED_INSTANCE_ID"));
    }

    #[test]
    fn a_restart_that_would_stop_the_group_is_named() {
        let dynamic = kafka(GroupProtocol::Classic);
        let warnings = group_warnings(&dynamic, GroupProtocol::Classic, &facts(false));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("without static membership"));
        // Static membership, or KIP-848, keeps the others going.
        let mut named = dynamic.clone();
        named.group_instance_id_from_hostname = true;
        assert!(group_warnings(&named, GroupProtocol::Classic, &facts(false)).is_empty());
        assert!(group_warnings(&dynamic, GroupProtocol::Consumer, &facts(true)).is_empty());
        // check-config, with "auto", says when it applies.
        let warnings = group_warnings(
            &kafka(GroupProtocol::Auto),
            GroupProtocol::Auto,
            &ClusterFacts::assumed(),
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("before Apache Kafka 4.0"));
    }
}
