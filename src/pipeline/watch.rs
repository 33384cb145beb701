//! What paysync tells about each event, in one place: its `tracing` span
//! (every log line of the event carries its topic, partition, offset, order
//! and latest request id), its OTLP trace when it is sampled, and the
//! metrics. [`Watchers`] is built once with the pipeline and owns the span
//! export ([`crate::trace`]); [`Watchers::watch`] makes an event's
//! [`EventWatch`] as the message is taken, and the event's task carries it.
//! Each thing that happens to an event is one method, which writes the log
//! line, the span event and the counter together, so the delivery code says
//! only what happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::gate::Hold;
use crate::config::TracingSettings;
use crate::dead_letter::DeadLetterClass;
use crate::event::{InvalidEvent, PaymentEvent};
use crate::ledger::entry::{Outcome, Path};
use crate::metrics::Metrics;
use crate::partition::PartitionId;
use crate::top::classify::{Disposition, HaltCause};
use crate::top::client::CallReport;
use crate::trace::context::{Producer, producer_context};
use crate::trace::export::{self, SpanQueue, TraceSetupError};
use crate::trace::otlp::Attribute;
use crate::trace::span::{CallStart, EventSource, EventTrace};

/// Told the Kafka→acceptance latency of every delivered event (for the
/// in-process tools' exact quantiles; the service itself has a histogram).
pub type DeliveryObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// How an event's task ended, with what the watcher tells about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventEnd {
    /// The API accepted the event.
    Delivered,
    /// The dead-letter topic acknowledged the event's copy.
    DeadLettered {
        class: DeadLetterClass,
        reason: String,
    },
    /// An earlier owner of the partition wrote the copy; it is not written again.
    DeadLetteredBefore {
        class: DeadLetterClass,
        reason: String,
    },
    /// The ledger holds the event's key as accepted with the same DTO (at
    /// `earlier`): it is not sent again.
    Duplicate { path: Path, earlier: String },
    /// Strict ledger mode: parked with this outcome (unknown or held); the
    /// ledger holds it until someone resolves it.
    Parked { outcome: Outcome, why: String },
    /// Revoked or shut down before an outcome: the next owner sends it.
    Abandoned,
}

/// The pipeline's observers of events: the metrics, the span export when
/// tracing is on, and an optional latency observer.
pub(super) struct Watchers {
    metrics: Arc<Metrics>,
    spans: Option<SpanQueue>,
    sampling_ratio: f64,
    observer: Option<DeliveryObserver>,
}

impl Watchers {
    /// The observers, starting the span export when `tracing.enabled`.
    pub(super) fn start(
        metrics: Arc<Metrics>,
        tracing: &TracingSettings,
    ) -> Result<Watchers, TraceSetupError> {
        let spans = if tracing.enabled {
            Some(export::start(tracing)?)
        } else {
            None
        };
        Ok(Watchers {
            metrics,
            spans,
            sampling_ratio: tracing.sampling_ratio,
            observer: None,
        })
    }

    pub(super) fn observe_deliveries(&mut self, observer: DeliveryObserver) {
        self.observer = Some(observer);
    }

    /// The watch of a message just taken from Kafka: counted, its producer's
    /// trace context read, sampled (before any span work: an event left out
    /// costs reading its headers and a random number), its trace started.
    pub(super) fn watch(
        self: &Arc<Self>,
        message: &BorrowedMessage<'_>,
        id: &PartitionId,
        event: Option<&PaymentEvent>,
    ) -> EventWatch {
        self.metrics.events_consumed.inc();
        let offset = message.offset();
        let trace = self.spans.as_ref().and_then(|spans| {
            let headers = message.headers();
            let producer = producer_context(
                headers
                    .iter()
                    .flat_map(|headers| headers.iter())
                    .map(|header| (header.key, header.value.unwrap_or_default())),
            );
            if producer == Producer::Malformed {
                self.metrics.trace_context_malformed.inc();
            }
            if self.sampling_ratio < 1.0 && rand::random::<f64>() >= self.sampling_ratio {
                return None;
            }
            let source = EventSource {
                id,
                offset,
                order_id: event.map(|e| e.order_id.as_str()),
                park_id: event.map(|e| e.park_id.as_str()),
            };
            Some(Box::new(EventTrace::start(
                spans.clone(),
                &source,
                &producer,
            )))
        });
        let span = tracing::info_span!(
            "event",
            topic = %id.topic,
            partition = id.partition,
            offset,
            order_id = event.map_or("-", |e| e.order_id.as_str()),
            request_id = tracing::field::Empty,
            trace_id = trace.as_ref().map(|trace| tracing::field::display(trace.trace_id())),
        );
        EventWatch {
            watchers: self.clone(),
            received: Instant::now(),
            span,
            trace,
        }
    }

    /// Publishes the spans dropped so far (every tick of the main loop).
    pub(super) fn publish(&self) {
        if let Some(spans) = &self.spans {
            self.metrics.publish_dropped_spans(spans.dropped());
        }
    }

    /// Sends the spans still queued (bounded by `tracing.export_timeout_ms`)
    /// and stops exporting. Blocks.
    pub(super) fn shutdown(&self) {
        if let Some(spans) = &self.spans {
            spans.shutdown();
            self.metrics.publish_dropped_spans(spans.dropped());
        }
    }
}

/// One event's observers, from the moment it is taken from Kafka to its end.
pub(super) struct EventWatch {
    watchers: Arc<Watchers>,
    received: Instant,
    span: tracing::Span,
    /// Boxed: an untraced event carries only `None`.
    trace: Option<Box<EventTrace>>,
}

/// A call on its way: started in the trace, counted in flight.
pub(super) struct CallWatch(Option<CallStart>);

impl EventWatch {
    fn metrics(&self) -> &Metrics {
        &self.watchers.metrics
    }

    /// The event's `tracing` span, for its task to run in.
    pub(super) fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    /// The trace id, for the dead letter's headers.
    pub(super) fn trace_id(&self) -> Option<String> {
        self.trace
            .as_ref()
            .map(|trace| trace.trace_id().to_string())
    }

    pub(super) fn invalid(&self, error: &InvalidEvent) {
        tracing::warn!(error = %error, "Invalid event; dead-lettering it.");
    }

    /// The gate let the call through, after holding it for `waited` if it did.
    pub(super) fn passed_gate(&self, held: Option<Hold>, waited: Duration) {
        if let Some(hold) = held {
            self.waited(hold.waited_for(), waited);
        }
    }

    /// A token from the rate budget, after `waited`; `tokens_left` after it.
    pub(super) fn took_token(&self, waited: Duration, tokens_left: u32) {
        self.metrics().record_limiter_wait(waited, tokens_left);
        self.waited("waited for the rate budget", waited);
    }

    /// The signed call is about to be sent.
    pub(super) fn sending(&self) -> CallWatch {
        self.metrics().calls_in_flight.inc();
        CallWatch(self.trace.as_ref().map(|trace| trace.call_starts()))
    }

    /// The call's answer and what it means.
    pub(super) fn answered(&self, call: CallWatch, report: &CallReport, disposition: &Disposition) {
        let metrics = self.metrics();
        metrics.calls_in_flight.dec();
        if let (Some(trace), Some(start)) = (&self.trace, call.0) {
            trace.call(
                start,
                &report.outcome,
                disposition,
                report.elapsed,
                report.request_id.as_deref(),
            );
        }
        metrics.record_call(&report.outcome, disposition, report.elapsed);
        // The event's span carries the gateway's id of its latest call.
        self.span
            .record("request_id", report.request_id.as_deref().unwrap_or("-"));
        tracing::debug!(
            ?disposition,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "Call answered."
        );
    }

    /// The answer halts delivery; `first` when this call began the halt.
    pub(super) fn halted(&self, cause: HaltCause, first: bool, gateway: &str, report: &CallReport) {
        if let Some(trace) = &self.trace {
            trace.note(
                "halted: waiting at the gate for a probe",
                vec![Attribute::text("cause", cause.as_str())],
            );
        }
        if first {
            tracing::error!(
                gateway,
                cause = cause.as_str(),
                why = cause.explain(),
                outcome = ?report.outcome,
                "The gateway's answer halts delivery."
            );
        }
    }

    /// The next attempt waits `delay`.
    /// The event's key was accepted before with another DTO: it is sent.
    pub(super) fn correction(&self, path: Path) {
        self.metrics()
            .ledger_corrections
            .with_label_values(&[path.as_str()])
            .inc();
        tracing::info!(
            path = path.as_str(),
            "Sending a correction: the ledger holds this key as accepted with another DTO."
        );
    }

    /// A pause on the control topic holds the event (logged at debug: a
    /// paused park can hold thousands; `paysync_events_held` counts them).
    pub(super) fn held(&self) {
        tracing::debug!("Held by a pause on the control topic until it is resumed.");
    }

    pub(super) fn backing_off(&self, delay: Duration) {
        self.waited("waited for the backoff before the next attempt", delay);
    }

    fn waited(&self, what: &'static str, waited: Duration) {
        if let Some(trace) = &self.trace {
            trace.waited(what, waited);
        }
    }

    /// The event's end: its log line, its counters and its trace's outcome.
    pub(super) fn ended(&self, end: &EventEnd) {
        let metrics = self.metrics();
        let (outcome, reason) = match end {
            EventEnd::Delivered => {
                let latency = self.received.elapsed();
                metrics.record_delivered(latency);
                if let Some(observer) = &self.watchers.observer {
                    observer(latency);
                }
                ("delivered", None)
            }
            EventEnd::DeadLettered { class, reason } => {
                metrics.record_dead_lettered(*class, reason);
                tracing::warn!(class = class.as_str(), reason = %reason, "Event dead-lettered.");
                (dead_lettered_outcome(*class), Some(reason.as_str()))
            }
            EventEnd::DeadLetteredBefore { class, reason } => {
                metrics.dead_letters_written_before.inc();
                tracing::info!(class = class.as_str(), reason = %reason, "Event already dead-lettered by an earlier owner; not writing it again.");
                (dead_lettered_outcome(*class), Some(reason.as_str()))
            }
            EventEnd::Duplicate { path, earlier } => {
                metrics
                    .ledger_duplicates_suppressed
                    .with_label_values(&[path.as_str()])
                    .inc();
                tracing::info!(path = path.as_str(), earlier = %earlier, "Not sent: the ledger holds this key as accepted with the same DTO.");
                ("duplicate", None)
            }
            EventEnd::Parked { outcome, why } => {
                metrics
                    .ledger_parked
                    .with_label_values(&[outcome.as_str()])
                    .inc();
                tracing::warn!(outcome = outcome.as_str(), why = %why, "Event parked in the ledger; paysync ledger resolve releases it.");
                (parked_outcome(*outcome), Some(why.as_str()))
            }
            // The next owner of the partition delivers the event again, under
            // a trace of its own.
            EventEnd::Abandoned => ("abandoned", None),
        };
        if let Some(trace) = &self.trace {
            trace.end(outcome, reason);
        }
    }
}

/// The delivery span's `outcome` for an event parked as `outcome`.
fn parked_outcome(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Held => "parked:held",
        _ => "parked:unknown",
    }
}

/// The delivery span's `outcome` for a dead letter of `class`.
fn dead_lettered_outcome(class: DeadLetterClass) -> &'static str {
    match class {
        DeadLetterClass::InvalidEvent => "dead_lettered:invalid_event",
        DeadLetterClass::Rejected => "dead_lettered:rejected",
        DeadLetterClass::RetriesExhausted => "dead_lettered:retries_exhausted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_outcome_names_its_class() {
        for class in [
            DeadLetterClass::InvalidEvent,
            DeadLetterClass::Rejected,
            DeadLetterClass::RetriesExhausted,
        ] {
            assert_eq!(
                dead_lettered_outcome(class),
                format!("dead_lettered:{}", class.as_str())
            );
        }
    }
}
