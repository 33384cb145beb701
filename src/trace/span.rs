//! One event's trace: its `paysync.deliver` span (linked, not parented, to
//! the producer's span), a `paysync.call` child per HTTP attempt, the waits
//! as span events, and the outcome. While the event is delivered its trace
//! is a few plain values, recorded under a lock nobody else takes; as it
//! ends it goes to the export queue whole ([`FinishedTrace`]), and the
//! export thread turns it into the OpenTelemetry SDK's spans. The delivery
//! workers so pay for a few attributes and one push per event, nothing for
//! an event that is not traced, and nothing on the polls of its task. No
//! secret, signature or app key is ever recorded: only codes, statuses and
//! timings.

use std::borrow::Cow;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};

use super::context::Producer;
use super::export::SpanQueue;
use crate::top::classify::{Disposition, Outcome};
use crate::top::response::TopResponse;

/// Where the process's traces go, once tracing is set up (like the
/// process's log subscriber, there is one).
static QUEUE: OnceLock<SpanQueue> = OnceLock::new();

/// Makes `queue` the destination of every event's trace; a second call
/// keeps the first.
pub fn install(queue: SpanQueue) {
    let _ = QUEUE.set(queue);
}

/// Where the event came from, as the delivery span's attributes.
#[derive(Debug, Clone, Copy)]
pub struct EventSource<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub order_id: Option<&'a str>,
    pub park_id: Option<&'a str>,
}

/// One call's beginning: its span id and when it was sent.
#[derive(Debug, Clone, Copy)]
pub struct CallStart {
    span_id: SpanId,
    at: SystemTime,
}

/// An event's `paysync.deliver` span, open until [`EventTrace::end`] (or
/// until dropped: an event dropped before its end is exported as it is).
#[derive(Debug)]
pub struct EventTrace {
    queue: SpanQueue,
    /// The delivery span's own context: a trace of its own.
    context: SpanContext,
    producer: Option<SpanContext>,
    start: SystemTime,
    /// What happened so far; taken by the first end.
    recorded: Mutex<Option<Recorded>>,
}

#[derive(Debug)]
struct Recorded {
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    calls: Vec<FinishedCall>,
    status: Status,
}

#[derive(Debug)]
struct FinishedCall {
    span_id: SpanId,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
}

/// An event's trace once it has ended: what the export thread turns into
/// spans ([`FinishedTrace::into_spans`]).
#[derive(Debug)]
pub struct FinishedTrace {
    context: SpanContext,
    producer: Option<SpanContext>,
    start: SystemTime,
    end: SystemTime,
    recorded: Recorded,
}

impl EventTrace {
    /// Starts the event's trace, when tracing is set up.
    /// Boxed: a job carries it, and an untraced job carries only `None`.
    pub fn start(source: &EventSource<'_>, producer: &Producer) -> Option<Box<EventTrace>> {
        QUEUE
            .get()
            .map(|queue| Box::new(EventTrace::start_into(queue.clone(), source, producer)))
    }

    /// Starts the event's trace, to end in `queue`.
    pub fn start_into(
        queue: SpanQueue,
        source: &EventSource<'_>,
        producer: &Producer,
    ) -> EventTrace {
        let mut attributes = Vec::with_capacity(7);
        attributes.push(KeyValue::new("topic", source.topic.to_owned()));
        attributes.push(KeyValue::new("partition", i64::from(source.partition)));
        attributes.push(KeyValue::new("offset", source.offset));
        if let Some(order_id) = source.order_id {
            attributes.push(KeyValue::new("order_id", order_id.to_owned()));
        }
        if let Some(park_id) = source.park_id {
            attributes.push(KeyValue::new("park_id", park_id.to_owned()));
        }
        let ids = RandomIdGenerator::default();
        // A trace of its own: the Kafka hop is asynchronous, so the producer's
        // span is linked, never the parent.
        let context = SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        EventTrace {
            queue,
            context,
            producer: match producer {
                Producer::Linked(context) => Some(context.clone()),
                Producer::Absent | Producer::Malformed => None,
            },
            start: SystemTime::now(),
            recorded: Mutex::new(Some(Recorded {
                attributes,
                events: Vec::new(),
                calls: Vec::new(),
                status: Status::Unset,
            })),
        }
    }

    /// The trace's id (for the logs and the dead letter's headers).
    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id()
    }

    fn record(&self, change: impl FnOnce(&mut Recorded)) {
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(recorded) = recorded.as_mut() {
            change(recorded);
        }
    }

    /// A wait of the event, as a span event: `what` names it.
    pub fn waited(&self, what: &'static str, waited: Duration) {
        if waited >= Duration::from_millis(1) {
            let wait = KeyValue::new("waited_ms", waited.as_millis() as i64);
            self.note(what, vec![wait]);
        }
    }

    /// Something that happened to the event, as a span event.
    pub fn note(&self, what: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) {
        let event = Event::new(what, SystemTime::now(), attributes, 0);
        self.record(|recorded| recorded.events.push(event));
    }

    /// A call is about to be sent.
    pub fn call_starts(&self) -> CallStart {
        CallStart {
            span_id: RandomIdGenerator::default().new_span_id(),
            at: SystemTime::now(),
        }
    }

    /// One call, answered: its `paysync.call` span, from `start` to now, with
    /// the status, TOP code and sub_code, latency, what the answer means, and
    /// any wait it asked for.
    pub fn call(
        &self,
        start: CallStart,
        outcome: &Outcome,
        disposition: &Disposition,
        elapsed: Duration,
        request_id: Option<&str>,
    ) {
        let end = SystemTime::now();
        self.record(|recorded| {
            let attempt = recorded.calls.len() as u32 + 1;
            recorded.calls.push(FinishedCall {
                span_id: start.span_id,
                start: start.at,
                end,
                attributes: call_attributes(attempt, outcome, disposition, elapsed, request_id),
            });
        });
    }

    /// The event's outcome and how many calls it took; ends its trace (a
    /// second end changes nothing). A dead letter's `reason` becomes the
    /// delivery span's error status.
    pub fn end(&self, outcome: impl Into<opentelemetry::Value>, reason: Option<&str>) {
        let taken = self
            .recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut recorded) = taken {
            let attempts = recorded.calls.len() as i64;
            recorded.attributes.push(KeyValue::new("outcome", outcome));
            recorded
                .attributes
                .push(KeyValue::new("attempts", attempts));
            if let Some(reason) = reason {
                recorded.status = Status::error(reason.to_owned());
            }
            self.finish(recorded);
        }
    }

    fn finish(&self, recorded: Recorded) {
        self.queue.push(FinishedTrace {
            context: self.context.clone(),
            producer: self.producer.clone(),
            start: self.start,
            end: SystemTime::now(),
            recorded,
        });
    }
}

impl Drop for EventTrace {
    fn drop(&mut self) {
        let taken = self
            .recorded
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(recorded) = taken {
            self.finish(recorded);
        }
    }
}

impl FinishedTrace {
    /// How many spans it becomes (the delivery span and one per call).
    pub fn span_count(&self) -> usize {
        1 + self.recorded.calls.len()
    }

    /// Its spans, the delivery span first, appended to `spans`.
    pub fn into_spans(self, scope: &InstrumentationScope, spans: &mut Vec<SpanData>) {
        let FinishedTrace {
            context,
            producer,
            start,
            end,
            recorded,
        } = self;
        let (trace_id, deliver_id) = (context.trace_id(), context.span_id());
        let mut links = SpanLinks::default();
        links.links.extend(producer.map(Link::with_context));
        let mut events = SpanEvents::default();
        events.events = recorded.events;
        spans.push(SpanData {
            span_context: context.clone(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Consumer,
            name: Cow::Borrowed("paysync.deliver"),
            start_time: start,
            end_time: end,
            attributes: recorded.attributes,
            dropped_attributes_count: 0,
            events,
            links,
            status: recorded.status,
            instrumentation_scope: scope.clone(),
        });
        for call in recorded.calls {
            spans.push(SpanData {
                span_context: SpanContext::new(
                    trace_id,
                    call.span_id,
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::NONE,
                ),
                parent_span_id: deliver_id,
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: Cow::Borrowed("paysync.call"),
                start_time: call.start,
                end_time: call.end,
                attributes: call.attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: scope.clone(),
            });
        }
    }
}

/// A call span's attributes (what [`EventTrace::call`] records).
fn call_attributes(
    attempt: u32,
    outcome: &Outcome,
    disposition: &Disposition,
    elapsed: Duration,
    request_id: Option<&str>,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(9);
    attributes.push(KeyValue::new("attempt", i64::from(attempt)));
    attributes.push(KeyValue::new("http.request.method", "POST"));
    attributes.push(KeyValue::new("latency_ms", elapsed.as_millis() as i64));
    // Static labels, not `Disposition::describe`: a call span costs no
    // formatting.
    let (kind, cause) = match disposition {
        Disposition::Delivered => ("delivered", None),
        Disposition::Retry { cause, .. } => ("retry", Some(cause.as_str())),
        Disposition::DeadLetter { cause } => ("dead_letter", Some(cause.as_str())),
        Disposition::Halt { cause } => ("halt", Some(cause.as_str())),
    };
    attributes.push(KeyValue::new("disposition", kind));
    if let Some(cause) = cause {
        attributes.push(KeyValue::new("cause", cause));
    }
    let status = |status: &u16| KeyValue::new("http.response.status_code", i64::from(*status));
    match outcome {
        Outcome::Answered {
            status: code,
            response,
        } => {
            attributes.push(status(code));
            match response {
                TopResponse::Error(error) => {
                    attributes.push(KeyValue::new("top.code", error.code));
                    if let Some(sub_code) = &error.sub_code {
                        attributes.push(KeyValue::new("top.sub_code", sub_code.clone()));
                    }
                }
                TopResponse::Result(result) => {
                    if let Some(code) = &result.code {
                        attributes.push(KeyValue::new("top.code", code.clone()));
                    }
                }
            }
        }
        Outcome::HttpStatus {
            status: code,
            retry_after,
        } => {
            attributes.push(status(code));
            if let Some(wait) = retry_after {
                attributes.push(KeyValue::new("retry_after_s", wait.as_secs() as i64));
            }
        }
        Outcome::UnreadableBody { status: code, .. } => attributes.push(status(code)),
        _ => {}
    }
    if let Some(request_id) = request_id {
        attributes.push(KeyValue::new("request_id", request_id.to_owned()));
    }
    if let Disposition::Retry {
        wait: Some(wait), ..
    } = disposition
    {
        attributes.push(KeyValue::new("wait_ms", wait.as_millis() as i64));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::SpanContext;

    use super::*;
    use crate::top::classify::RetryCause;
    use crate::top::response::ErrorResponse;

    fn attribute(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn a_delivery_span_links_to_its_producer_and_parents_its_calls() {
        let queue = SpanQueue::unexported();
        let producer = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let source = EventSource {
            topic: "payments",
            partition: 3,
            offset: 42,
            order_id: Some("order-1"),
            park_id: None,
        };
        let trace =
            EventTrace::start_into(queue.clone(), &source, &Producer::Linked(producer.clone()));
        let start = trace.call_starts();
        trace.waited("waited for the rate budget", Duration::from_millis(5));
        trace.waited("too short to note", Duration::from_micros(10));
        let outcome = Outcome::Answered {
            status: 200,
            response: TopResponse::Error(ErrorResponse {
                code: 7,
                msg: Some("App Call Limited".into()),
                sub_code: Some("accesscontrol.limited-by-app-access-count".into()),
                sub_msg: None,
            }),
        };
        let disposition = Disposition::Retry {
            cause: RetryCause::Throttled,
            wait: Some(Duration::from_secs(3)),
        };
        trace.call(
            start,
            &outcome,
            &disposition,
            Duration::from_millis(12),
            Some("req-9"),
        );
        let id = trace.trace_id();
        trace.end("dead_lettered:rejected", Some("business_rejected"));
        trace.end("ended twice", None);
        drop(trace);

        let finished = queue.taken();
        assert_eq!(finished.len(), 1, "one trace for the event");
        assert_eq!(finished[0].span_count(), 2);
        let mut spans = Vec::new();
        let scope = InstrumentationScope::builder("paysync").build();
        for trace in finished {
            trace.into_spans(&scope, &mut spans);
        }
        assert_eq!(spans.len(), 2, "one delivery and one call span");
        let deliver = spans.iter().find(|s| s.name == "paysync.deliver").unwrap();
        let call = spans.iter().find(|s| s.name == "paysync.call").unwrap();
        assert_eq!(id, deliver.span_context.trace_id());
        assert_ne!(id, producer.trace_id(), "linked, not parented");
        assert_eq!(deliver.parent_span_id, SpanId::INVALID);
        let links: Vec<_> = deliver
            .links
            .iter()
            .map(|l| l.span_context.clone())
            .collect();
        assert_eq!(links, vec![producer]);
        assert_eq!(attribute(deliver, "order_id").as_deref(), Some("order-1"));
        assert_eq!(attribute(deliver, "attempts").as_deref(), Some("1"));
        assert_eq!(attribute(call, "attempt").as_deref(), Some("1"));
        assert_eq!(attribute(deliver, "park_id"), None);
        assert_eq!(
            attribute(deliver, "outcome").as_deref(),
            Some("dead_lettered:rejected"),
            "the first end counts"
        );
        assert_eq!(
            deliver.status,
            Status::error("business_rejected".to_owned())
        );
        let events: Vec<_> = deliver.events.iter().map(|e| e.name.to_string()).collect();
        assert_eq!(events, vec!["waited for the rate budget"]);
        assert_eq!(call.parent_span_id, deliver.span_context.span_id());
        assert_eq!(call.span_context.trace_id(), id);
        assert!(call.start_time <= call.end_time);
        assert_eq!(
            attribute(call, "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(attribute(call, "top.code").as_deref(), Some("7"));
        assert_eq!(
            attribute(call, "top.sub_code").as_deref(),
            Some("accesscontrol.limited-by-app-access-count")
        );
        assert_eq!(attribute(call, "wait_ms").as_deref(), Some("3000"));
        assert_eq!(attribute(call, "disposition").as_deref(), Some("retry"));
        assert_eq!(attribute(call, "cause").as_deref(), Some("throttled"));
        assert_eq!(attribute(call, "request_id").as_deref(), Some("req-9"));
    }
}
