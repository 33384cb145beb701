//! What the pipeline does to its spans when tracing is on: link the delivery
//! span to the producer's, read its trace id (for logs and the dead-letter
//! headers), and record one call's answer on its `paysync.call` span. The
//! spans themselves are `tracing` spans; the OpenTelemetry layer installed by
//! `telemetry` turns them into OTLP spans. No secret, signature or app key is
//! ever recorded: only codes, statuses and timings.

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TraceId};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::context::Producer;
use crate::top::classify::{Disposition, Outcome};
use crate::top::response::TopResponse;

/// Links `span` to the producer's span, when the headers named one.
pub fn link(span: &tracing::Span, producer: &Producer) {
    if let Producer::Linked(context) = producer {
        span.add_link(context.clone());
    }
}

/// The trace id of `span`, when it has one (tracing on).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let id = context.span().span_context().trace_id();
    (id != TraceId::INVALID).then(|| id.to_string())
}

/// Records one call's answer on its span: status, TOP code and sub_code,
/// latency, what it means, and any wait the answer asked for.
pub fn record_call(
    span: &tracing::Span,
    outcome: &Outcome,
    disposition: &Disposition,
    elapsed: Duration,
) {
    span.record("latency_ms", elapsed.as_millis() as u64);
    span.record("disposition", disposition.describe().as_str());
    match outcome {
        Outcome::Answered { status, response } => {
            span.record("http.response.status_code", *status);
            match response {
                TopResponse::Error(error) => {
                    span.record("top.code", error.code);
                    if let Some(sub_code) = &error.sub_code {
                        span.record("top.sub_code", sub_code.as_str());
                    }
                }
                TopResponse::Result(result) => {
                    if let Some(code) = &result.code {
                        span.record("top.code", code.as_str());
                    }
                }
            }
        }
        Outcome::HttpStatus {
            status,
            retry_after,
        } => {
            span.record("http.response.status_code", *status);
            if let Some(wait) = retry_after {
                span.record("retry_after_s", wait.as_secs());
            }
        }
        Outcome::UnreadableBody { status, .. } => {
            span.record("http.response.status_code", *status);
        }
        _ => {}
    }
    if let Disposition::Retry {
        wait: Some(wait), ..
    } = disposition
    {
        span.record("wait_ms", wait.as_millis() as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, Span as SdkSpan, SpanData, SpanProcessor};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::top::classify::RetryCause;
    use crate::top::response::ErrorResponse;

    /// Keeps every ended span.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Collect {
        fn on_start(&self, _span: &mut SdkSpan, _cx: &opentelemetry::Context) {}
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
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let producer = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let recorded = tracing::subscriber::with_default(subscriber, || {
            let deliver = tracing::info_span!(
                "event",
                otel.name = "paysync.deliver",
                trace_id = tracing::field::Empty
            );
            link(&deliver, &Producer::Linked(producer.clone()));
            let id = trace_id(&deliver).expect("a trace id while tracing");
            deliver.record("trace_id", id.as_str());
            {
                let _inside = deliver.enter();
                let call = tracing::info_span!(
                    "call",
                    otel.name = "paysync.call",
                    http.response.status_code = tracing::field::Empty,
                    top.code = tracing::field::Empty,
                    top.sub_code = tracing::field::Empty,
                    latency_ms = tracing::field::Empty,
                    disposition = tracing::field::Empty,
                    retry_after_s = tracing::field::Empty,
                    wait_ms = tracing::field::Empty,
                );
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
                record_call(&call, &outcome, &disposition, Duration::from_millis(12));
            }
            id
        });
        let spans = spans.0.lock().unwrap().clone();
        let deliver = spans.iter().find(|s| s.name == "paysync.deliver").unwrap();
        let call = spans.iter().find(|s| s.name == "paysync.call").unwrap();
        assert_eq!(recorded, deliver.span_context.trace_id().to_string());
        assert_ne!(
            deliver.span_context.trace_id(),
            producer.trace_id(),
            "linked, not parented: a trace of its own"
        );
        assert_eq!(deliver.parent_span_id, SpanId::INVALID);
        let links: Vec<_> = deliver
            .links
            .iter()
            .map(|l| l.span_context.clone())
            .collect();
        assert_eq!(links, vec![producer]);
        assert_eq!(call.parent_span_id, deliver.span_context.span_id());
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
    }
}
