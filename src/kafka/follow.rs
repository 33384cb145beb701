//! Following a compacted topic into a view: a thread reads the topic from
//! its beginning and folds every record into a value published on a tokio
//! watch channel. A start waits until the ends it saw are read, so the
//! first view already holds everything written before it. The control
//! topic and the group status topic are read this way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::Settings;
use crate::kafka;

/// How long a start waits to read the topic to its end.
pub const CATCH_UP: Duration = Duration::from_secs(30);

/// Why a topic cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot create the {what} topic's reader: {error}")]
    Client {
        what: &'static str,
        #[source]
        error: KafkaError,
    },
    #[error("cannot read the {what} topic {topic:?}: {error}")]
    Read {
        what: &'static str,
        topic: String,
        #[source]
        error: KafkaError,
    },
    #[error("the {what} topic {topic:?} was not read to its end within {}s", CATCH_UP.as_secs())]
    CatchUp { what: &'static str, topic: String },
    #[error("cannot start the {what} topic's reader: {error}")]
    Thread {
        what: &'static str,
        #[source]
        error: std::io::Error,
    },
}

/// What is followed and how each record changes the view.
pub struct Follow<V, F> {
    /// Says what the topic is, in errors and the thread's name.
    pub what: &'static str,
    pub topic: String,
    /// The reader's group (it assigns partitions itself and never commits).
    pub group: String,
    /// Folds one record in (`None`: a tombstone).
    pub fold: F,
    pub initial: V,
}

/// A followed topic: its latest view, until stopped or dropped.
pub struct Followed<V> {
    view: watch::Sender<Arc<V>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<V: Clone + Send + Sync + 'static> Followed<V> {
    /// Reads the topic to its end and keeps following it. Blocks.
    pub fn start<F>(settings: &Settings, follow: Follow<V, F>) -> Result<Followed<V>, FollowError>
    where
        F: FnMut(&mut V, &str, Option<&[u8]>) + Send + 'static,
    {
        let Follow {
            what,
            topic,
            group,
            fold,
            initial,
        } = follow;
        let mut config = kafka::clients::tool_consumer(settings, &group);
        // Changes are few and small: a fetch waits at most half a second for
        // them (100 ms cost 1 % of a core more at a quota's pace).
        config.set("fetch.wait.max.ms", "500");
        let consumer: BaseConsumer = config
            .create()
            .map_err(|error| FollowError::Client { what, error })?;
        let read_error = |error| FollowError::Read {
            what,
            topic: topic.clone(),
            error,
        };
        let partitions = kafka::queries::topic_partitions(&consumer, &topic)
            .map_err(read_error)?
            .unwrap_or_default();
        let mut list = TopicPartitionList::new();
        let mut ends = Vec::new();
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, kafka::queries::REQUEST_TIMEOUT)
                .map_err(read_error)?;
            if high > low {
                ends.push((partition, high));
            }
            list.add_partition_offset(&topic, partition, Offset::Beginning)
                .map_err(read_error)?;
        }
        consumer.assign(&list).map_err(read_error)?;
        let (view, mut changes) = watch::channel(Arc::new(initial));
        let (caught_up, caught_up_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (view, stop) = (view.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("paysync-{what}"))
                .spawn(move || run(consumer, ends, view, fold, caught_up, stop))
                .map_err(|error| FollowError::Thread { what, error })?
        };
        if caught_up_rx.recv_timeout(CATCH_UP).is_err() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
            return Err(FollowError::CatchUp { what, topic });
        }
        changes.mark_unchanged();
        Ok(Followed {
            view,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The topic as read so far.
    pub fn view(&self) -> Arc<V> {
        self.view.borrow().clone()
    }

    /// Every new view, as it is read.
    pub fn changes(&self) -> watch::Receiver<Arc<V>> {
        self.view.subscribe()
    }

    /// Stops following. Blocks until the reader ends.
    pub fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl<V> Drop for Followed<V> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The reader thread: folds every record into the view; says when it
/// reached the ends the start saw.
fn run<V: Clone>(
    consumer: BaseConsumer,
    mut ends: Vec<(i32, i64)>,
    view: watch::Sender<Arc<V>>,
    mut fold: impl FnMut(&mut V, &str, Option<&[u8]>),
    caught_up: std::sync::mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
) {
    let mut caught_up = Some(caught_up);
    let reached = |ends: &mut Vec<(i32, i64)>, partition: i32, next: i64| {
        ends.retain(|(p, end)| !(*p == partition && next >= *end));
    };
    let mut batch: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if ends.is_empty()
            && let Some(caught_up) = caught_up.take()
        {
            let _ = caught_up.send(());
        }
        let mut timeout = Duration::from_millis(100);
        // Everything already fetched joins the same new view.
        loop {
            match consumer.poll(timeout) {
                None => break,
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "Reading a followed topic failed; retrying.");
                    std::thread::sleep(Duration::from_millis(200));
                    break;
                }
                Some(Ok(message)) => {
                    reached(&mut ends, message.partition(), message.offset() + 1);
                    if let Some(key) = message.key() {
                        batch.push((
                            String::from_utf8_lossy(key).into_owned(),
                            message.payload().map(<[u8]>::to_vec),
                        ));
                    }
                }
            }
            timeout = Duration::ZERO;
        }
        if batch.is_empty() {
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
        view.send_modify(|view| {
            let view = Arc::make_mut(view);
            for (key, value) in batch.drain(..) {
                fold(view, &key, value.as_deref());
            }
        });
    }
}
