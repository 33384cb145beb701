//! One event's trace, built on the OpenTelemetry SDK: its `paysync.deliver`
//! span (linked, not parented, to the producer's span), a `paysync.call`
//! child per HTTP attempt, the waits as span events, and the outcome. The
//! spans are made here, from what the pipeline knows, and not from the
//! `tracing` spans of the logs: an event's trace costs a span builder and an
//! end per span, and nothing at all when the event is not traced (nor on
//! every poll of its task). No secret, signature or app key is ever
//! recorded: only codes, statuses and timings.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Link, SpanKind, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use super::context::Producer;
use crate::top::classify::{Disposition, Outcome};
use crate::top::response::TopResponse;

/// The process's tracer, once tracing is set up (like the process's log
/// subscriber, there is one).
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Makes `provider` the source of every event's trace; a second call keeps
/// the first.
pub fn install(provider: &SdkTracerProvider) {
    let _ = TRACER.set(provider.tracer("paysync"));
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

/// One call's beginning: the attempt number and when it was sent.
#[derive(Debug, Clone, Copy)]
pub struct CallStart {
    attempt: u32,
    at: SystemTime,
}

/// An event's `paysync.deliver` span, open until [`EventTrace::end`] (or
/// until dropped: an abandoned event's span is exported as it is).
#[derive(Debug)]
pub struct EventTrace {
    tracer: &'static SdkTracer,
    /// Holds the open span; the parent of every call span.
    cx: Context,
    /// Calls recorded so far (the span's `attempts`).
    calls: AtomicU32,
}

impl EventTrace {
    /// Starts the event's span, when tracing is set up.
    pub fn start(source: &EventSource<'_>, producer: &Producer) -> Option<EventTrace> {
        let tracer = TRACER.get()?;
        let mut attributes = Vec::with_capacity(5);
        attributes.push(KeyValue::new("topic", source.topic.to_owned()));
        attributes.push(KeyValue::new("partition", i64::from(source.partition)));
        attributes.push(KeyValue::new("offset", source.offset));
        if let Some(order_id) = source.order_id {
            attributes.push(KeyValue::new("order_id", order_id.to_owned()));
        }
        if let Some(park_id) = source.park_id {
            attributes.push(KeyValue::new("park_id", park_id.to_owned()));
        }
        let mut builder = tracer
            .span_builder("paysync.deliver")
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes);
        if let Producer::Linked(context) = producer {
            builder = builder.with_links(vec![Link::with_context(context.clone())]);
        }
        // A trace of its own: the Kafka hop is asynchronous, so the producer's
        // span is linked, never the parent.
        let span = builder.start_with_context(tracer, &Context::new());
        Some(EventTrace {
            tracer,
            cx: Context::new().with_span(span),
            calls: AtomicU32::new(0),
        })
    }

    /// The trace's id (for the logs and the dead letter's headers).
    pub fn trace_id(&self) -> TraceId {
        self.cx.span().span_context().trace_id()
    }

    /// A wait of the event, as a span event: `what` names it.
    pub fn waited(&self, what: &'static str, waited: Duration) {
        if waited >= Duration::from_millis(1) {
            self.cx.span().add_event(
                what,
                vec![KeyValue::new("waited_ms", waited.as_millis() as i64)],
            );
        }
    }

    /// Something that happened to the event, as a span event.
    pub fn note(&self, what: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) {
        self.cx.span().add_event(what, attributes);
    }

    /// A call is about to be sent.
    pub fn call_starts(&self) -> CallStart {
        CallStart {
            attempt: self.calls.load(Ordering::Relaxed) + 1,
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
        let attributes = call_attributes(start.attempt, outcome, disposition, elapsed, request_id);
        let mut span = self
            .tracer
            .span_builder("paysync.call")
            .with_kind(SpanKind::Client)
            .with_start_time(start.at)
            .with_attributes(attributes)
            .start_with_context(self.tracer, &self.cx);
        opentelemetry::trace::Span::end(&mut span);
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// The event's outcome and how many calls it took; ends its span (a
    /// second end changes nothing). A dead letter's `reason` becomes the
    /// span's error status.
    pub fn end(&self, outcome: &str, reason: Option<&str>) {
        let span = self.cx.span();
        span.set_attributes([
            KeyValue::new("outcome", outcome.to_owned()),
            KeyValue::new("attempts", i64::from(self.calls.load(Ordering::Relaxed))),
        ]);
        if let Some(reason) = reason {
            span.set_status(Status::error(reason.to_owned()));
        }
        span.end();
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
    attributes.push(KeyValue::new("disposition", disposition.describe()));
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
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{Span as SdkSpan, SpanData, SpanProcessor};

    use super::*;
    use crate::top::classify::RetryCause;
    use crate::top::response::ErrorResponse;

    /// Keeps every ended span.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Collect {
        fn on_start(&self, _span: &mut SdkSpan, _cx: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn attribute(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn a_delivery_span_links_to_its_producer_and_parents_its_calls() {
        let spans = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(spans.clone())
            .build();
        install(&provider);
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
        let trace = EventTrace::start(&source, &Producer::Linked(producer.clone()))
            .expect("a trace once installed");
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

        let spans = spans.0.lock().unwrap().clone();
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
        assert_eq!(attribute(call, "request_id").as_deref(), Some("req-9"));
    }
}
