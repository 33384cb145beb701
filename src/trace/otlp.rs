//! An event's finished trace ([`FinishedTrace`]: its delivery span and its
//! call spans, as plain values) and its OTLP form: an
//! `ExportTraceServiceRequest` of opentelemetry-proto's generated types,
//! which prost encodes. Pure: no I/O, no clock.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, SpanFlags, Status};

/// A span attribute's value: the two kinds paysync records.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    Text(Cow<'static, str>),
    Int(i64),
}

/// A span or span event attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub key: &'static str,
    pub value: AttributeValue,
}

impl Attribute {
    pub fn text(key: &'static str, value: impl Into<Cow<'static, str>>) -> Attribute {
        Attribute {
            key,
            value: AttributeValue::Text(value.into()),
        }
    }

    pub fn int(key: &'static str, value: i64) -> Attribute {
        Attribute {
            key,
            value: AttributeValue::Int(value),
        }
    }
}

/// Something that happened to the event, at a moment of its span.
#[derive(Debug, Clone)]
pub struct SpanEvent {
    pub name: Cow<'static, str>,
    pub at: SystemTime,
    pub attributes: Vec<Attribute>,
}

/// A `paysync.call` span.
#[derive(Debug, Clone)]
pub struct FinishedCall {
    pub span_id: SpanId,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<Attribute>,
}

/// An event's trace once it has ended: what the export thread writes out.
#[derive(Debug, Clone)]
pub struct FinishedTrace {
    pub context: SpanContext,
    pub producer: Option<SpanContext>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<Attribute>,
    pub events: Vec<SpanEvent>,
    pub calls: Vec<FinishedCall>,
    /// The delivery span's error status (a dead letter's reason).
    pub error: Option<String>,
}

impl FinishedTrace {
    /// How many spans it is (the delivery span and one per call).
    pub fn span_count(&self) -> usize {
        1 + self.calls.len()
    }
}

/// What every request says about its source: the resource's
/// `service.name` and the instrumentation scope.
#[derive(Debug, Clone)]
pub struct Source {
    pub service_name: String,
    pub scope_name: &'static str,
    pub scope_version: &'static str,
}

/// The request for `traces`.
pub fn export_request(source: &Source, traces: &[FinishedTrace]) -> ExportTraceServiceRequest {
    let spans = traces.iter().flat_map(spans_of).collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![key_value(&Attribute::text(
                    "service.name",
                    source.service_name.clone(),
                ))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: source.scope_name.to_owned(),
                    version: source.scope_version.to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// `SpanFlags` of a span whose parent, if any, is in this process: the W3C
/// sampled bit, and "whether the parent is remote is known".
const LOCAL_SAMPLED: u32 = 0x01 | SpanFlags::ContextHasIsRemoteMask as u32;

/// An event's delivery span and its call spans.
fn spans_of(trace: &FinishedTrace) -> impl Iterator<Item = Span> + '_ {
    let trace_id = trace.context.trace_id().to_bytes().to_vec();
    let deliver_id = trace.context.span_id().to_bytes().to_vec();
    let links = trace
        .producer
        .iter()
        .map(|producer| {
            let remote = if producer.is_remote() {
                SpanFlags::ContextIsRemoteMask as u32
            } else {
                0
            };
            Link {
                trace_id: producer.trace_id().to_bytes().to_vec(),
                span_id: producer.span_id().to_bytes().to_vec(),
                trace_state: producer.trace_state().header(),
                flags: u32::from(producer.trace_flags().to_u8() & 0x01)
                    | SpanFlags::ContextHasIsRemoteMask as u32
                    | remote,
                ..Link::default()
            }
        })
        .collect();
    let delivery = Span {
        trace_id: trace_id.clone(),
        span_id: deliver_id.clone(),
        flags: LOCAL_SAMPLED,
        name: "paysync.deliver".to_owned(),
        kind: SpanKind::Consumer as i32,
        start_time_unix_nano: nanos(trace.start),
        end_time_unix_nano: nanos(trace.end),
        attributes: trace.attributes.iter().map(key_value).collect(),
        events: trace.events.iter().map(event).collect(),
        links,
        status: trace.error.as_ref().map(|error| Status {
            message: error.clone(),
            code: StatusCode::Error as i32,
        }),
        ..Span::default()
    };
    let calls = trace.calls.iter().map(move |call| Span {
        trace_id: trace_id.clone(),
        span_id: call.span_id.to_bytes().to_vec(),
        parent_span_id: deliver_id.clone(),
        flags: LOCAL_SAMPLED,
        name: "paysync.call".to_owned(),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: nanos(call.start),
        end_time_unix_nano: nanos(call.end),
        attributes: call.attributes.iter().map(key_value).collect(),
        ..Span::default()
    });
    std::iter::once(delivery).chain(calls)
}

fn event(event: &SpanEvent) -> Event {
    Event {
        time_unix_nano: nanos(event.at),
        name: event.name.clone().into_owned(),
        attributes: event.attributes.iter().map(key_value).collect(),
        ..Event::default()
    }
}

fn key_value(attribute: &Attribute) -> KeyValue {
    let value = match &attribute.value {
        AttributeValue::Text(text) => any_value::Value::StringValue(text.clone().into_owned()),
        AttributeValue::Int(int) => any_value::Value::IntValue(*int),
    };
    KeyValue {
        key: attribute.key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}
