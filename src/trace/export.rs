//! Exporting delivery spans over OTLP (gRPC or HTTP/protobuf), through a
//! bounded queue that drops rather than waits: a collector that is down or
//! slow never blocks a delivery or grows paysync's memory. Spans the queue
//! had no room for, and spans of exports that failed, are counted
//! ([`SpanQueue::dropped`]), and the pipeline publishes the counts; the
//! first failed export is logged, and so is each recovery.
//!
//! The queue holds events' finished traces ([`FinishedTrace`]), at most
//! `tracing.queue_size` spans' worth. It is drained by one thread of its own
//! with a one-thread runtime (the OTLP clients are async): it takes
//! everything queued when a batch is full or every 500 ms, turns it into
//! OTLP requests of about `tracing.batch_size` spans and sends them, each
//! export bounded by `tracing.export_timeout_ms`. While it sends, a new
//! queue fills: at most twice `queue_size` spans are held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::otlp;
use super::otlp::FinishedTrace;
pub use super::transport::TraceSetupError;
use super::transport::Transport;

use crate::config::TracingSettings;

/// How often a partial batch is sent.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Starts exporting: the queue every event's trace ends in, and its
/// export thread. Says where traces go.
pub fn start(settings: &TracingSettings) -> Result<SpanQueue, TraceSetupError> {
    let queue = SpanQueue::start(settings)?;
    tracing::info!(to = %settings.describe(), "Delivery traces are exported.");
    Ok(queue)
}

/// What the export thread has been given: the traces waiting (and how many
/// spans they make), and the flushes asked for since it last looked.
#[derive(Default)]
struct Pending {
    traces: Vec<FinishedTrace>,
    spans: usize,
    flushes: Vec<SyncSender<()>>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Spans dropped because the queue was full (or closed).
    dropped_queue_full: AtomicU64,
    /// Spans of exports that failed.
    dropped_export_failed: AtomicU64,
    /// Rung when a batch is full, a flush is asked for, or the queue closes;
    /// never for each trace (waking a thread per event costs more than the
    /// event's spans).
    ready: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

/// The bounded queue of finished traces in front of the OTLP exporter; it
/// drops (and counts) what it has no room for. Cloned, it is the same queue.
#[derive(Debug, Clone)]
pub struct SpanQueue {
    shared: Arc<Shared>,
    capacity: usize,
    batch_size: usize,
    flush_timeout: Duration,
}

impl SpanQueue {
    /// Starts the export thread, which builds the exporter on its own
    /// runtime: the gRPC client's connection tasks, and with them the
    /// encoding and sending of every batch, then run on that thread and
    /// never wake the delivery runtime's workers.
    fn start(settings: &TracingSettings) -> Result<SpanQueue, TraceSetupError> {
        let queue = SpanQueue::new(settings);
        let drained = queue.shared.clone();
        let (built, outcome) = mpsc::sync_channel(1);
        let settings = settings.clone();
        std::thread::Builder::new()
            .name("paysync-span-export".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = built.send(Err(TraceSetupError::Thread(error)));
                        return;
                    }
                };
                let transport = {
                    let _inside = runtime.enter();
                    Transport::new(&settings)
                };
                match transport {
                    Ok(transport) => {
                        let _ = built.send(Ok(()));
                        drain(&runtime, transport, &drained, &settings);
                    }
                    Err(error) => {
                        let _ = built.send(Err(error));
                    }
                }
            })?;
        outcome.recv().map_err(|_| {
            TraceSetupError::Exporter("the span export thread ended while starting".into())
        })??;
        Ok(queue)
    }

    fn new(settings: &TracingSettings) -> SpanQueue {
        SpanQueue {
            shared: Arc::default(),
            capacity: settings.queue_size,
            batch_size: settings.batch_size,
            flush_timeout: settings.export_timeout_ms * 2,
        }
    }

    /// Spans dropped so far: (the queue was full, their export failed).
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.shared.dropped_queue_full.load(Ordering::Relaxed),
            self.shared.dropped_export_failed.load(Ordering::Relaxed),
        )
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an event's trace, or drops it (counting its spans) when the
    /// queue is full or closed.
    pub fn push(&self, trace: FinishedTrace) {
        let spans = trace.span_count();
        let batch_full = {
            let mut pending = self.pending();
            if pending.closed || pending.spans + spans > self.capacity {
                self.shared
                    .dropped_queue_full
                    .fetch_add(spans as u64, Ordering::Relaxed);
                return;
            }
            pending.traces.push(trace);
            let before = pending.spans;
            pending.spans += spans;
            before < self.batch_size && pending.spans >= self.batch_size
        };
        if batch_full {
            self.shared.ready.notify_one();
        }
    }

    /// Sends what is queued (bounded by the export timeout) and stops the
    /// export thread; traces that end later are dropped.
    pub fn shutdown(&self) {
        let _ = self.flush(true);
    }

    /// Asks the export thread to send what is queued (and, when `close`, to
    /// stop), and waits for it, at most the flush timeout; false if it did
    /// not answer in time.
    fn flush(&self, close: bool) -> bool {
        let (done, flushed) = mpsc::sync_channel(1);
        {
            let mut pending = self.pending();
            if pending.closed {
                return true;
            }
            pending.flushes.push(done);
            pending.closed = close;
        }
        self.shared.ready.notify_one();
        flushed.recv_timeout(self.flush_timeout).is_ok()
    }
}

/// The export thread: what is queued, written as OTLP requests of about
/// `batch_size` spans, to the collector, when a batch is full, a flush is
/// asked for, or `FLUSH_EVERY` has passed.
fn drain(
    runtime: &tokio::runtime::Runtime,
    mut transport: Transport,
    shared: &Shared,
    settings: &TracingSettings,
) {
    let (batch_size, timeout) = (settings.batch_size.max(1), settings.export_timeout_ms);
    let source = otlp::Source {
        service_name: settings.service_name(),
        scope_name: "paysync",
        scope_version: env!("CARGO_PKG_VERSION"),
    };
    let mut failing = false;
    loop {
        let (traces, flushes, closed) = {
            let pending = shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let (mut pending, _) = shared
                .ready
                .wait_timeout_while(pending, FLUSH_EVERY, |pending| {
                    pending.spans < batch_size && pending.flushes.is_empty() && !pending.closed
                })
                .unwrap_or_else(PoisonError::into_inner);
            pending.spans = 0;
            (
                std::mem::take(&mut pending.traces),
                std::mem::take(&mut pending.flushes),
                pending.closed,
            )
        };
        let mut rest = traces.as_slice();
        while !rest.is_empty() {
            let (batch, spans) = whole_traces(rest, batch_size);
            rest = &rest[batch.len()..];
            let request = otlp::export_request(&source, batch);
            let sent = runtime.block_on(async {
                tokio::time::timeout(timeout, transport.send(request, timeout)).await
            });
            let failure = match sent {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some(format!(
                    "no answer within tracing.export_timeout_ms ({} ms)",
                    timeout.as_millis()
                )),
            };
            match failure {
                None if failing => {
                    failing = false;
                    tracing::info!("The trace collector answers again; spans are exported.");
                }
                None => {}
                Some(error) => {
                    shared
                        .dropped_export_failed
                        .fetch_add(spans as u64, Ordering::Relaxed);
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %error, "Spans cannot be exported; they are dropped (paysync_trace_spans_dropped_total) until the collector answers.");
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
        if closed {
            return;
        }
    }
}

/// The first traces of `traces` that make at most `batch_size` spans (at
/// least one trace, however many spans it has), and their span count.
fn whole_traces(traces: &[FinishedTrace], batch_size: usize) -> (&[FinishedTrace], usize) {
    let (mut taken, mut spans) = (0, 0);
    for trace in traces {
        if taken > 0 && spans + trace.span_count() > batch_size {
            break;
        }
        spans += trace.span_count();
        taken += 1;
    }
    (&traces[..taken], spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the tests of an event's trace read.
    impl SpanQueue {
        /// A queue nothing drains, with the default limits: what an event's
        /// trace leaves, for tests to read ([`SpanQueue::taken`]).
        pub(crate) fn unexported() -> SpanQueue {
            SpanQueue::new(&TracingSettings::default())
        }

        /// What is queued, taken out.
        pub(crate) fn taken(&self) -> Vec<FinishedTrace> {
            let mut pending = self.pending();
            pending.spans = 0;
            std::mem::take(&mut pending.traces)
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_what_it_has_no_room_for() {
        let queue = SpanQueue::new(&TracingSettings {
            queue_size: 1,
            ..TracingSettings::default()
        });
        let trace = |calls| FinishedTrace {
            context: opentelemetry::trace::SpanContext::empty_context(),
            producer: None,
            start: std::time::SystemTime::now(),
            end: std::time::SystemTime::now(),
            attributes: Vec::new(),
            events: Vec::new(),
            calls,
            error: None,
        };
        queue.push(trace(Vec::new()));
        queue.push(trace(Vec::new()));
        assert_eq!(queue.dropped(), (1, 0));
        assert_eq!(queue.taken().len(), 1);
    }
}
