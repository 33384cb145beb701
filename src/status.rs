//! The group status topic (`console.status_topic`, `<kafka.group_id>.status`
//! by default): one compacted partition where every replica publishes what
//! it holds and how it is doing — its partitions and their lag, its share of
//! the rate and the quota it learned, bans, the breaker, a halt, and a
//! minute-by-minute hour of history — so any console, embedded in a replica
//! or standalone, draws the whole group from the same records. A replica
//! that stops withdraws its record; one killed stops publishing and shows
//! as gone after three intervals.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use crate::admin::{AdminState, readiness};
use crate::config::Settings;
use crate::kafka::compacted::{self, CompactedTopic};
use crate::kafka::follow::{Follow, FollowError, Followed};
use crate::labels::DeadLetterClass;
use crate::metrics::PartitionGauge;

/// Minutes of history a record carries.
const HISTORY_MINUTES: usize = 60;

/// One replica's published state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub caller: String,
    pub host: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub published_at: DateTime<Utc>,
    /// How often it publishes, so a reader knows when it is overdue.
    pub interval_ms: u64,
    /// `ready`, `degraded`, `halted`, `starting` or `failed`, as readiness says.
    pub state: String,
    pub reasons: Vec<String>,
    pub breaker: String,
    pub halted: Option<String>,
    pub ban_remaining_s: f64,
    pub partitions: Vec<PartitionStatus>,
    /// Its share of the rate now, in calls/s.
    pub share_per_sec: f64,
    /// The group's rate as this replica has it.
    pub group_per_sec: f64,
    /// The quota adaptive mode learned (0: not adaptive or not learned).
    pub learned_per_sec: f64,
    pub bans_total: u64,
    pub delivered_total: u64,
    pub dead_lettered_total: u64,
    /// One sample a minute, oldest first; the last is the minute under way.
    pub history: Vec<Sample>,
}

/// A partition a replica holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub lag: i64,
    pub paused: bool,
}

/// One minute of a replica's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The minute's start, Unix seconds.
    pub minute: i64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub bans: u64,
    /// At the minute's last publication.
    pub lag: i64,
    pub share_per_sec: f64,
}

impl ReplicaStatus {
    /// Whether it missed three publications by `now`: killed or cut off.
    pub fn gone(&self, now: DateTime<Utc>) -> bool {
        (now - self.published_at).num_milliseconds() > 3 * self.interval_ms as i64 + 2_000
    }
}

/// The status topic as read so far: the latest record of each replica.
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    pub replicas: BTreeMap<String, ReplicaStatus>,
}

impl GroupView {
    /// Folds one record in (`None`: a replica that stopped).
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let Some(caller) = key.strip_prefix(REPLICA_PREFIX) else {
            return;
        };
        match value.map(serde_json::from_slice::<ReplicaStatus>) {
            None => {
                self.replicas.remove(caller);
            }
            Some(Ok(status)) => {
                self.replicas.insert(caller.to_owned(), status);
            }
            Some(Err(error)) => {
                tracing::warn!(key, error = %error, "A status record could not be read; it is skipped.");
            }
        }
    }
}

const REPLICA_PREFIX: &str = "replica/";

fn topic(settings: &Settings) -> CompactedTopic {
    CompactedTopic {
        what: "status",
        topic: settings.console.status_topic(&settings.kafka.group_id),
        partitions: 1,
        create: settings.console.create_status_topic,
        create_key: "console.create_status_topic",
        replication_factor: settings.control.replication_factor,
        instead: "or set console.publish_status = false",
    }
}

/// Why a console cannot read the status topic.
#[derive(Debug, thiserror::Error)]
pub enum StatusTopicError {
    #[error(transparent)]
    Topic(#[from] compacted::CompactedTopicError),
    #[error(transparent)]
    Follow(#[from] FollowError),
}

/// Makes sure of the status topic (a console may start before any replica
/// made it) and follows it (a console's reader). `consumer` is connected,
/// for metadata. Blocks.
pub fn follow<C: rdkafka::consumer::ConsumerContext>(
    settings: &Settings,
    consumer: &impl rdkafka::consumer::Consumer<C>,
) -> Result<Followed<GroupView>, StatusTopicError> {
    compacted::ensure(settings, consumer, &topic(settings))?;
    Ok(Followed::start(
        settings,
        Follow {
            what: "status",
            topic: settings.console.status_topic(&settings.kafka.group_id),
            group: format!("{}.status-reader", settings.kafka.group_id),
            fold: GroupView::apply,
            initial: GroupView::default(),
        },
    )?)
}

/// A replica's publisher: every `console.status_interval_ms` it writes its
/// state; stopped, it withdraws it.
pub struct StatusPublisher {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusPublisher {
    /// Starts publishing through `producer` (the dead-letter producer: no
    /// polling thread of its own), once the topic is made sure of in the
    /// background. A topic that cannot be used is warned about and nothing
    /// is published: the status is for people, and delivery goes on
    /// without it. `None` when `console.publish_status` is off.
    pub fn start(
        settings: &Settings,
        admin: AdminState,
        producer: FutureProducer,
    ) -> Option<StatusPublisher> {
        if !settings.console.publish_status {
            return None;
        }
        let settings = settings.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let ensured = {
                let settings = settings.clone();
                tokio::task::spawn_blocking(move || -> Result<i32, String> {
                    let consumer: rdkafka::consumer::BaseConsumer =
                        crate::kafka::clients::tool_consumer(
                            &settings,
                            &format!("{}.status-writer", settings.kafka.group_id),
                        )
                        .create()
                        .map_err(|error| error.to_string())?;
                    compacted::ensure(&settings, &consumer, &topic(&settings))
                        .map_err(|error| error.to_string())
                })
            };
            tokio::select! {
                ensured = ensured => match ensured {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(error, "The group status topic cannot be used; this replica will not show in a console.");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "The group status topic cannot be used; this replica will not show in a console.");
                        return;
                    }
                },
                _ = &mut stopped => return,
            }
            let mut writer = Writer {
                topic: settings.console.status_topic(&settings.kafka.group_id),
                key: format!(
                    "{REPLICA_PREFIX}{}",
                    crate::control::caller_name(crate::control::CallerKind::Member)
                ),
                producer,
                admin,
                interval: settings.console.status_interval_ms,
                started_at: Utc::now(),
                history: VecDeque::new(),
                last_totals: None,
            };
            let mut tick = tokio::time::interval(writer.interval);
            // A write that waited on a slow broker is not followed by a burst.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => writer.publish().await,
                    _ = &mut stopped => break,
                }
            }
            writer.withdraw().await;
        });
        Some(StatusPublisher { stop, task })
    }

    /// Withdraws this replica's record and stops.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

struct Writer {
    topic: String,
    key: String,
    producer: FutureProducer,
    admin: AdminState,
    interval: Duration,
    started_at: DateTime<Utc>,
    history: VecDeque<Sample>,
    /// (delivered, dead-lettered, bans) at the last publication.
    last_totals: Option<(u64, u64, u64)>,
}

impl Writer {
    fn status(&mut self) -> ReplicaStatus {
        let metrics = &self.admin.metrics;
        let (_, ready) = readiness(&self.admin);
        let committed: BTreeMap<_, _> = metrics
            .partition_values(PartitionGauge::CommittedOffset)
            .into_iter()
            .collect();
        let paused: BTreeMap<_, _> = metrics
            .partition_values(PartitionGauge::Paused)
            .into_iter()
            .collect();
        let partitions: Vec<PartitionStatus> = metrics
            .partition_values(PartitionGauge::Lag)
            .into_iter()
            .map(|(id, lag)| PartitionStatus {
                committed: committed.get(&id).copied().unwrap_or(-1),
                paused: paused.get(&id).is_some_and(|p| *p > 0),
                topic: id.topic,
                partition: id.partition,
                lag,
            })
            .collect();
        let delivered = metrics.events_delivered.get();
        let dead_lettered: u64 = DeadLetterClass::ALL
            .iter()
            .map(|class| metrics.dead_lettered(*class))
            .sum();
        let bans = metrics.rate_limit_bans.get();
        let share = metrics.rate_limit_share.get();
        let lag = partitions.iter().map(|p| p.lag).sum();
        let now = Utc::now();
        let minute = now.timestamp() / 60 * 60;
        let (d0, x0, b0) = self
            .last_totals
            .replace((delivered, dead_lettered, bans))
            .unwrap_or((delivered, dead_lettered, bans));
        if self.history.back().is_none_or(|last| last.minute != minute) {
            self.history.push_back(Sample {
                minute,
                delivered: 0,
                dead_lettered: 0,
                bans: 0,
                lag,
                share_per_sec: share,
            });
            if self.history.len() > HISTORY_MINUTES {
                self.history.pop_front();
            }
        }
        let current = self.history.back_mut().expect("pushed above");
        current.delivered += delivered.saturating_sub(d0);
        current.dead_lettered += dead_lettered.saturating_sub(x0);
        current.bans += bans.saturating_sub(b0);
        current.lag = lag;
        current.share_per_sec = share;
        ReplicaStatus {
            caller: self.key[REPLICA_PREFIX.len()..].to_owned(),
            host: crate::config::hostname().unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at,
            published_at: now,
            interval_ms: self.interval.as_millis() as u64,
            state: ready.status,
            reasons: ready.reasons,
            breaker: ready.breaker,
            halted: ready.halted,
            ban_remaining_s: ready.ban_remaining_s,
            partitions,
            share_per_sec: share,
            group_per_sec: metrics.rate_limit_group.get(),
            learned_per_sec: metrics.rate_limit_learned.get(),
            bans_total: bans,
            delivered_total: delivered,
            dead_lettered_total: dead_lettered,
            history: self.history.iter().cloned().collect(),
        }
    }

    async fn write(&self, value: Option<Vec<u8>>) {
        let mut record = FutureRecord::<str, Vec<u8>>::to(&self.topic)
            .partition(0)
            .key(&self.key);
        if let Some(value) = value.as_ref() {
            record = record.payload(value);
        }
        if let Err((error, _)) = self.producer.send(record, Duration::from_secs(10)).await {
            tracing::debug!(error = %error, "Publishing this replica's status failed; the next interval tries again.");
        }
    }

    async fn publish(&mut self) {
        let status = self.status();
        let value = serde_json::to_vec(&status).expect("status records serialise");
        self.write(Some(value)).await;
    }

    async fn withdraw(&self) {
        self.write(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(caller: &str, published_at: DateTime<Utc>) -> ReplicaStatus {
        ReplicaStatus {
            caller: caller.to_owned(),
            host: "h".to_owned(),
            version: "0".to_owned(),
            started_at: published_at,
            published_at,
            interval_ms: 1_000,
            state: "ready".to_owned(),
            reasons: vec![],
            breaker: "closed".to_owned(),
            halted: None,
            ban_remaining_s: 0.0,
            partitions: vec![],
            share_per_sec: 10.0,
            group_per_sec: 20.0,
            learned_per_sec: 0.0,
            bans_total: 0,
            delivered_total: 5,
            dead_lettered_total: 0,
            history: vec![],
        }
    }

    #[test]
    fn a_replica_appears_goes_when_it_stops_and_is_gone_when_it_goes_quiet() {
        let now = Utc::now();
        let mut view = GroupView::default();
        let record = serde_json::to_vec(&status("a", now)).unwrap();
        view.apply("replica/a", Some(&record));
        view.apply("replica/b", Some(b"not json"));
        view.apply("other/c", Some(&record));
        assert_eq!(view.replicas.keys().collect::<Vec<_>>(), ["a"]);
        let replica = &view.replicas["a"];
        assert!(!replica.gone(now + chrono::Duration::milliseconds(4_000)));
        assert!(replica.gone(now + chrono::Duration::milliseconds(5_500)));
        view.apply("replica/a", None);
        assert!(
            view.replicas.is_empty(),
            "a stopped replica withdraws its record"
        );
    }
}
