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

pub mod record;
pub mod shares;
pub mod tuning;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::{ControlSettings, Settings};
use crate::kafka;
use crate::kafka::compacted::{self, CompactedTopic, CompactedTopicError};
use crate::top::classify::Disposition;
pub use record::{Audit, CallerKind, ControlView, Lease, Pause, PauseTarget, Tuning};

/// How long a start waits to read the topic to its end.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Why the control topic cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Topic(#[from] CompactedTopicError),
    #[error("cannot create the control topic's clients: {0}")]
    Client(#[source] KafkaError),
    #[error("cannot read the control topic {topic:?}: {error}")]
    Read {
        topic: String,
        #[source]
        error: KafkaError,
    },
    #[error("the control topic {topic:?} was not read to its end within {}s", CATCH_UP.as_secs())]
    CatchUp { topic: String },
    #[error("cannot start the control topic's reader: {0}")]
    Thread(#[source] std::io::Error),
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
    view: watch::Sender<Arc<ControlView>>,
    writer: FutureProducer,
    stop: Arc<AtomicBool>,
    follower: Mutex<Option<std::thread::JoinHandle<()>>>,
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
        let mut config = kafka::clients::tool_consumer(
            settings,
            &format!("{}.control-follower", settings.kafka.group_id),
        );
        // Changes are few and small: a fetch waits at most half a refresh for
        // them (100 ms cost 1 % of a core more at a quota's pace).
        config.set("fetch.wait.max.ms", "500");
        let follower: BaseConsumer = config.create().map_err(ControlError::Client)?;
        let read_error = |error| ControlError::Read {
            topic: topic.clone(),
            error,
        };
        let partitions = kafka::queries::topic_partitions(&follower, &topic)
            .map_err(read_error)?
            .unwrap_or_default();
        let mut list = TopicPartitionList::new();
        let mut ends = Vec::new();
        for partition in partitions {
            let (low, high) = follower
                .fetch_watermarks(&topic, partition, kafka::queries::REQUEST_TIMEOUT)
                .map_err(read_error)?;
            if high > low {
                ends.push((partition, high));
            }
            list.add_partition_offset(&topic, partition, Offset::Beginning)
                .map_err(read_error)?;
        }
        follower.assign(&list).map_err(read_error)?;
        let (view, mut changes) = watch::channel(Arc::new(ControlView::default()));
        let (caught_up, caught_up_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (view, stop) = (view.clone(), stop.clone());
            std::thread::Builder::new()
                .name("paysync-control".into())
                .spawn(move || follow(follower, ends, view, caught_up, stop))
                .map_err(ControlError::Thread)?
        };
        if caught_up_rx.recv_timeout(CATCH_UP).is_err() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
            return Err(ControlError::CatchUp { topic });
        }
        changes.mark_unchanged();
        Ok(Some(Arc::new(Control {
            topic,
            caller,
            settings: settings.control.clone(),
            view,
            writer,
            stop,
            follower: Mutex::new(Some(thread)),
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
        self.view.borrow().clone()
    }

    /// Every new view, as it is read.
    pub fn changes(&self) -> watch::Receiver<Arc<ControlView>> {
        self.view.subscribe()
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
        let at = Utc::now();
        let audit = Audit {
            at,
            by: by.to_owned(),
            what,
            why: why.to_owned(),
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
        self.stop.store(true, Ordering::Relaxed);
        let thread = self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The follower thread: folds every record into the view; says when it
/// reached the ends the start saw.
fn follow(
    consumer: BaseConsumer,
    mut ends: Vec<(i32, i64)>,
    view: watch::Sender<Arc<ControlView>>,
    caught_up: std::sync::mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
) {
    let mut caught_up = Some(caught_up);
    let reached = |ends: &mut Vec<(i32, i64)>, partition: i32, next: i64| {
        ends.retain(|(p, end)| !(*p == partition && next >= *end));
    };
    while !stop.load(Ordering::Relaxed) {
        if ends.is_empty()
            && let Some(caught_up) = caught_up.take()
        {
            let _ = caught_up.send(());
        }
        let mut batch = Vec::new();
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                // Compaction may have removed the last records before an end.
                if let Ok(positions) = consumer.position() {
                    for element in positions.elements() {
                        if let Offset::Offset(position) = element.offset() {
                            reached(&mut ends, element.partition(), position);
                        }
                    }
                }
                continue;
            }
            Some(Err(error)) => {
                tracing::warn!(error = %error, "Reading the control topic failed; retrying.");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Some(Ok(message)) => {
                reached(&mut ends, message.partition(), message.offset() + 1);
                let Some(key) = message.key() else { continue };
                batch.push((
                    String::from_utf8_lossy(key).into_owned(),
                    message.payload().map(<[u8]>::to_vec),
                ));
            }
        }
        // More already fetched joins the same new view.
        while let Some(Ok(message)) = consumer.poll(Duration::ZERO) {
            reached(&mut ends, message.partition(), message.offset() + 1);
            if let Some(key) = message.key() {
                batch.push((
                    String::from_utf8_lossy(key).into_owned(),
                    message.payload().map(<[u8]>::to_vec),
                ));
            }
        }
        view.send_modify(|view| {
            let view = Arc::make_mut(view);
            for (key, value) in &batch {
                if let Err(error) = view.apply(key, value.as_deref()) {
                    tracing::warn!(error = %error, "A control record could not be read; it is skipped.");
                }
            }
        });
    }
}
