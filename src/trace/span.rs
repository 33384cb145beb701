//! One event's trace: its `paysync.deliver` span (linked, not parented, to
//! the producer's span), a `paysync.call` child per HTTP attempt, the waits
//! as span events, and the outcome. While the event is delivered its trace
//! is a few plain values, recorded under a lock nobody else takes; as it
//! ends it goes to the export queue whole ([`FinishedTrace`]), and the
//! export thread writes it in OTLP. The delivery workers
//! so pay for a few attributes and one push per event, nothing for an event
//! that is not traced, and nothing on the polls of its task. No secret,
//! signature or app key is ever recorded: only codes, statuses and timings.

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

use super::context::Producer;
use super::export::SpanQueue;
use super::otlp::{Attribute, FinishedCall, FinishedTrace, SpanEvent};
use crate::partition::PartitionId;
use crate::top::classify::{Disposition, Outcome};
use crate::top::response::TopResponse;

/// Where the event came from, as the delivery span's attributes.
#[derive(Debug, Clone, Copy)]
pub struct EventSource<'a> {
    pub id: &'a PartitionId,
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

#[derive(Debug, Default)]
struct Recorded {
    attributes: Vec<Attribute>,
    events: Vec<SpanEvent>,
    calls: Vec<FinishedCall>,
    error: Option<String>,
}

/// A random id that is not all zeros (the invalid id).
fn random_nonzero<T: Default + PartialEq>(make: impl Fn() -> T) -> T {
    loop {
        let id = make();
        if id != T::default() {
            return id;
        }
    }
}

fn new_span_id() -> SpanId {
    SpanId::from_bytes(random_nonzero(rand::random::<u64>).to_be_bytes())
}

impl EventTrace {
    /// Starts the event's trace, to end in `queue`.
    pub fn start(queue: SpanQueue, source: &EventSource<'_>, producer: &Producer) -> EventTrace {
        let mut attributes = Vec::with_capacity(7);
        attributes.push(Attribute::text("topic", source.id.topic.clone()));
        attributes.push(Attribute::int("partition", i64::from(source.id.partition)));
        attributes.push(Attribute::int("offset", source.offset));
        if let Some(order_id) = source.order_id {
            attributes.push(Attribute::text("order_id", order_id.to_owned()));
        }
        if let Some(park_id) = source.park_id {
            attributes.push(Attribute::text("park_id", park_id.to_owned()));
        }
        // A trace of its own: the Kafka hop is asynchronous, so the producer's
        // span is linked, never the parent.
        let context = SpanContext::new(
            TraceId::from_bytes(random_nonzero(rand::random::<u128>).to_be_bytes()),
            new_span_id(),
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
                ..Recorded::default()
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
            let wait = Attribute::int("waited_ms", waited.as_millis() as i64);
            self.note(what, vec![wait]);
        }
    }

    /// Something that happened to the event, as a span event.
    pub fn note(&self, what: impl Into<Cow<'static, str>>, attributes: Vec<Attribute>) {
        let event = SpanEvent {
            name: what.into(),
            at: SystemTime::now(),
            attributes,
        };
        self.record(|recorded| recorded.events.push(event));
    }

    /// A call is about to be sent.
    pub fn call_starts(&self) -> CallStart {
        CallStart {
            span_id: new_span_id(),
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
    pub fn end(&self, outcome: &'static str, reason: Option<&str>) {
        let taken = self
            .recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut recorded) = taken {
            let attempts = recorded.calls.len() as i64;
            recorded
                .attributes
                .push(Attribute::text("outcome", outcome));
            recorded
                .attributes
                .push(Attribute::int("attempts", attempts));
            recorded.error = reason.map(str::to_owned);
            self.finish(recorded);
        }
    }

    fn finish(&self, recorded: Recorded) {
        self.queue.push(FinishedTrace {
            context: self.context.clone(),
            producer: self.producer.clone(),
            start: self.start,
            end: SystemTime::now(),
            attributes: recorded.attributes,
            events: recorded.events,
            calls: recorded.calls,
            error: recorded.error,
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

/// A call span's attributes (what [`EventTrace::call`] records).
fn call_attributes(
    attempt: u32,
    outcome: &Outcome,
    disposition: &Disposition,
    elapsed: Duration,
    request_id: Option<&str>,
) -> Vec<Attribute> {
    let mut attributes = Vec::with_capacity(9);
    attributes.push(Attribute::int("attempt", i64::from(attempt)));
    attributes.push(Attribute::text("http.request.method", "POST"));
    attributes.push(Attribute::int("latency_ms", elapsed.as_millis() as i64));
    // The metrics' labels, not `Disposition::describe`: a call span costs no
    // formatting.
    let (kind, cause) = disposition.counted_as();
    attributes.push(Attribute::text("disposition", kind.as_str()));
    attributes.push(Attribute::text("cause", cause));
    let status = |status: &u16| Attribute::int("http.response.status_code", i64::from(*status));
    match outcome {
        Outcome::Answered {
            status: code,
            response,
        } => {
            attributes.push(status(code));
            match response {
                TopResponse::Error(error) => {
                    // Text, like a business result's code: one type per attribute.
                    attributes.push(Attribute::text("top.code", error.code.to_string()));
                    if let Some(sub_code) = &error.sub_code {
                        attributes.push(Attribute::text("top.sub_code", sub_code.clone()));
                    }
                }
                TopResponse::Result(result) => {
                    if let Some(code) = &result.code {
                        attributes.push(Attribute::text("top.code", code.clone()));
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
                attributes.push(Attribute::int("retry_after_s", wait.as_secs() as i64));
            }
        }
        Outcome::UnreadableBody { status: code, .. } => attributes.push(status(code)),
        _ => {}
    }
    if let Some(request_id) = request_id {
        attributes.push(Attribute::text("request_id", request_id.to_owned()));
    }
    if let Disposition::Retry {
        wait: Some(wait), ..
    } = disposition
    {
        attributes.push(Attribute::int("wait_ms", wait.as_millis() as i64));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::KeyValue as ProtoAttribute;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as ProtoValue;
    use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
    use prost::Message as _;

    use super::*;
    use crate::top::classify::RetryCause;
    use crate::top::response::ErrorResponse;
    use crate::trace::otlp;

    /// `traces` as a collector reads them: written by paysync, decoded with
    /// the OTLP project's generated types.
    fn as_collector_reads(traces: &[FinishedTrace]) -> ExportTraceServiceRequest {
        let source = otlp::Source {
            service_name: "paysync-test".into(),
            scope_name: "paysync",
            scope_version: "1.2.3",
        };
        let bytes = otlp::export_request(&source, traces).encode_to_vec();
        ExportTraceServiceRequest::decode(bytes.as_slice()).expect("a valid OTLP request")
    }

    fn value(attributes: &[ProtoAttribute], key: &str) -> Option<String> {
        let found = attributes.iter().find(|kv| kv.key == key)?;
        match found.value.as_ref()?.value.as_ref()? {
            ProtoValue::StringValue(text) => Some(text.clone()),
            ProtoValue::IntValue(int) => Some(int.to_string()),
            other => Some(format!("{other:?}")),
        }
    }

    fn attribute(span: &ProtoSpan, key: &str) -> Option<String> {
        value(&span.attributes, key)
    }

    fn source() -> EventSource<'static> {
        static ID: std::sync::LazyLock<PartitionId> =
            std::sync::LazyLock::new(|| PartitionId::new("payments", 3));
        EventSource {
            id: &ID,
            offset: 42,
            order_id: Some("order-1"),
            park_id: None,
        }
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
        let trace = EventTrace::start(
            queue.clone(),
            &source(),
            &Producer::Linked(producer.clone()),
        );
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
        let request = as_collector_reads(&finished);
        let resource_spans = &request.resource_spans[0];
        let resource = resource_spans.resource.as_ref().unwrap();
        assert_eq!(
            value(&resource.attributes, "service.name").as_deref(),
            Some("paysync-test")
        );
        let scope_spans = &resource_spans.scope_spans[0];
        assert_eq!(scope_spans.scope.as_ref().unwrap().name, "paysync");
        assert_eq!(scope_spans.scope.as_ref().unwrap().version, "1.2.3");
        let spans = &scope_spans.spans;
        assert_eq!(spans.len(), 2, "one delivery and one call span");
        let deliver = spans.iter().find(|s| s.name == "paysync.deliver").unwrap();
        let call = spans.iter().find(|s| s.name == "paysync.call").unwrap();

        assert_eq!(deliver.trace_id, id.to_bytes());
        assert_ne!(id, producer.trace_id(), "linked, not parented");
        assert!(deliver.parent_span_id.is_empty(), "a root");
        assert_eq!(deliver.kind, 5, "SPAN_KIND_CONSUMER");
        assert_eq!(deliver.links.len(), 1);
        let link = &deliver.links[0];
        assert_eq!(link.trace_id, producer.trace_id().to_bytes());
        assert_eq!(link.span_id, producer.span_id().to_bytes());
        assert_eq!(link.flags, 0x301, "sampled, remote");
        assert_eq!(attribute(deliver, "topic").as_deref(), Some("payments"));
        assert_eq!(attribute(deliver, "partition").as_deref(), Some("3"));
        assert_eq!(attribute(deliver, "offset").as_deref(), Some("42"));
        assert_eq!(attribute(deliver, "order_id").as_deref(), Some("order-1"));
        assert_eq!(attribute(deliver, "park_id"), None);
        assert_eq!(attribute(deliver, "attempts").as_deref(), Some("1"));
        assert_eq!(
            attribute(deliver, "outcome").as_deref(),
            Some("dead_lettered:rejected"),
            "the first end counts"
        );
        let status = deliver.status.as_ref().unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (2, "business_rejected")
        );
        let events: Vec<_> = deliver.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(events, vec!["waited for the rate budget"]);
        assert_eq!(
            value(&deliver.events[0].attributes, "waited_ms").as_deref(),
            Some("5")
        );
        assert!(deliver.start_time_unix_nano > 0);
        assert!(deliver.start_time_unix_nano <= deliver.end_time_unix_nano);

        assert_eq!(call.trace_id, id.to_bytes());
        assert_eq!(call.parent_span_id, deliver.span_id);
        assert_ne!(call.span_id, deliver.span_id);
        assert_eq!(call.kind, 3, "SPAN_KIND_CLIENT");
        assert!(call.start_time_unix_nano <= call.end_time_unix_nano);
        assert!(deliver.start_time_unix_nano <= call.start_time_unix_nano);
        assert_eq!(attribute(call, "attempt").as_deref(), Some("1"));
        assert_eq!(
            attribute(call, "http.request.method").as_deref(),
            Some("POST")
        );
        assert_eq!(
            attribute(call, "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(attribute(call, "top.code").as_deref(), Some("7"));
        let top_code = call
            .attributes
            .iter()
            .find(|kv| kv.key == "top.code")
            .unwrap();
        assert!(
            matches!(
                top_code.value.as_ref().unwrap().value,
                Some(ProtoValue::StringValue(_))
            ),
            "an error's code is text, like a business result's"
        );
        assert_eq!(
            attribute(call, "top.sub_code").as_deref(),
            Some("accesscontrol.limited-by-app-access-count")
        );
        assert_eq!(attribute(call, "latency_ms").as_deref(), Some("12"));
        assert_eq!(attribute(call, "wait_ms").as_deref(), Some("3000"));
        assert_eq!(attribute(call, "disposition").as_deref(), Some("retry"));
        assert_eq!(attribute(call, "cause").as_deref(), Some("throttled"));
        assert_eq!(attribute(call, "request_id").as_deref(), Some("req-9"));
    }

    #[test]
    fn a_trace_dropped_before_its_end_is_exported_without_an_outcome() {
        let queue = SpanQueue::unexported();
        let trace = EventTrace::start(queue.clone(), &source(), &Producer::Absent);
        drop(trace);
        let request = as_collector_reads(&queue.taken());
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 1);
        assert_eq!(attribute(&spans[0], "outcome"), None);
        assert!(spans[0].links.is_empty(), "no producer, no link");
        assert!(spans[0].status.is_none());
    }
}
