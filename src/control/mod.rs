//! The control topic (`control.topic`, `<kafka.group_id>.control` by
//! default): one compacted partition that every caller on the app key reads
//! and writes — the live replicas, replays, redrives, reconciliations and
//! the operator's `paysync control` commands. docs/control.md tells the
//! operator's side.
//!
//! * [`record`]: what it holds (leases, tuned settings, pauses, the audit
//!   log) and the view each reader folds it into.
//! * [`shares`]: how the rate is split between the callers' leases.
//! * [`tuning`]: the settings that change in place, and their checks.
//!
//! [`Control`] is one caller's connection: a thread follows the topic from
//! its beginning into a [`ControlView`] published on a watch channel (a
//! start waits until it has read to the end, so a pause or a tuned rate
//! holds from the first event), and a durable producer writes. Writes go
//! to partition 0 so one reader sees every change in the order made.

pub mod ops;
pub mod record;
pub mod shares;
pub mod tuning;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use crate::config::{ControlSettings, Settings};
use crate::kafka;
use crate::kafka::compacted::{self, CompactedTopic, CompactedTopicError};
use crate::kafka::follow::{Follow, FollowError, Followed};
use crate::top::classify::Disposition;
pub use record::{Audit, CallerKind, ControlView, Lease, Pause, PauseTarget, Tuning};

/// Why the control topic cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Topic(#[from] CompactedTopicError),
    #[error("cannot create the control topic's clients: {0}")]
    Client(#[source] KafkaError),
    #[error(transparent)]
    Follow(Box<FollowError>),
}

impl From<FollowError> for ControlError {
    fn from(error: FollowError) -> ControlError {
        ControlError::Follow(Box::new(error))
    }
}

/// Paces an operator's command (a redrive to the API, a reconciliation)
/// by its share of the group's rate; the pipeline's tenancy implements it.
pub trait Pace: Send + Sync {
    /// Waits for the next call's turn.
    fn turn(&self) -> futures::future::BoxFuture<'_, ()>;
    /// How the call was answered (a ban slows every caller on the app key).
    fn answered(&self, disposition: &Disposition);
}

/// This process's name on the control topic: `<kind>-<host>-<pid>`.
pub fn caller_name(kind: CallerKind) -> String {
    process_name(kind.as_str())
}

/// `<prefix>-<host>-<pid>`.
pub fn process_name(prefix: &str) -> String {
    let host = crate::config::hostname().unwrap_or_else(|| "paysync".to_owned());
    format!("{prefix}-{host}-{}", std::process::id())
}

/// One caller's connection to the control topic.
pub struct Control {
    topic: String,
    caller: String,
    settings: ControlSettings,
    followed: Followed<ControlView>,
    writer: FutureProducer,
}

impl Control {
    /// Makes sure of the topic, reads it to its end and keeps following it.
    /// `None` when `control.enabled` is off. `consumer` is the caller's,
    /// already connected, for metadata; `writer` a durable producer to share
    /// (each producer has a polling thread: at a quota's pace one more cost
    /// 1 % of a core), or `None` for one of its own. Blocks.
    pub fn open<C: ConsumerContext>(
        settings: &Settings,
        consumer: &impl Consumer<C>,
        caller: String,
        writer: Option<FutureProducer>,
    ) -> Result<Option<Arc<Control>>, ControlError> {
        if !settings.control.enabled {
            return Ok(None);
        }
        let topic = settings.control.topic(&settings.kafka.group_id);
        compacted::ensure(
            settings,
            consumer,
            &CompactedTopic {
                what: "control",
                topic: topic.clone(),
                partitions: 1,
                create: settings.control.create_topic,
                create_key: "control.create_topic",
                replication_factor: settings.control.replication_factor,
                instead: "or set control.enabled = false",
            },
        )?;
        let writer: FutureProducer = match writer {
            Some(writer) => writer,
            None => kafka::clients::durable_producer(settings)
                .create()
                .map_err(ControlError::Client)?,
        };
        let followed = Followed::start(
            settings,
            Follow {
                what: "control",
                topic: topic.clone(),
                group: format!("{}.control-follower", settings.kafka.group_id),
                fold: |view: &mut ControlView, key: &str, value: Option<&[u8]>| {
                    if let Err(error) = view.apply(key, value) {
                        tracing::warn!(error = %error, "A control record could not be read; it is skipped.");
                    }
                },
                initial: ControlView::default(),
            },
        )?;
        Ok(Some(Arc::new(Control {
            topic,
            caller,
            settings: settings.control.clone(),
            followed,
            writer,
        })))
    }

    pub fn caller(&self) -> &str {
        &self.caller
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn settings(&self) -> &ControlSettings {
        &self.settings
    }

    /// The topic as read so far.
    pub fn view(&self) -> Arc<ControlView> {
        self.followed.view()
    }

    /// Every new view, as it is read.
    pub fn changes(&self) -> watch::Receiver<Arc<ControlView>> {
        self.followed.changes()
    }

    /// Writes `value` under `key` (`None`: a tombstone) and waits for the
    /// brokers' acknowledgement.
    pub async fn put(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), KafkaError> {
        let mut record = FutureRecord::<str, Vec<u8>>::to(&self.topic)
            .partition(0)
            .key(key);
        if let Some(value) = value.as_ref() {
            record = record.payload(value);
        }
        self.writer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }

    /// Writes a change and its audit record.
    pub async fn change(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        by: &str,
        what: String,
        why: &str,
    ) -> Result<(), KafkaError> {
        self.put(key, value).await?;
        self.audit(by, what, why, None).await
    }

    /// Writes an audit record: who did what, why, and how it ended.
    pub async fn audit(
        &self,
        by: &str,
        what: String,
        why: &str,
        result: Option<String>,
    ) -> Result<(), KafkaError> {
        let at = Utc::now();
        let audit = Audit {
            at,
            by: by.to_owned(),
            what,
            why: why.to_owned(),
            result,
        };
        self.put(
            &record::audit_key(at, &self.caller),
            Some(record::encode(&audit)),
        )
        .await
    }

    /// Waits until the view satisfies `seen` (a write read back), up to `patience`.
    pub async fn wait_for(&self, patience: Duration, seen: impl Fn(&ControlView) -> bool) -> bool {
        let mut changes = self.changes();
        tokio::time::timeout(patience, changes.wait_for(|view| seen(view)))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// Stops following. Blocks until the reader ends.
    pub fn close(&self) {
        self.followed.close();
    }
}
