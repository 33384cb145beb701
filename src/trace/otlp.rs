//! An event's finished trace ([`FinishedTrace`]: its delivery span and its
//! call spans, as plain values) and its OTLP wire format: an
//! `ExportTraceServiceRequest` (opentelemetry-proto's `collector/trace/v1`),
//! written as protobuf bytes straight from the traces. Pure: no I/O, no
//! clock. Written by hand
//! rather than through the SDK's `SpanData` and the generated message types
//! because those cost some twenty allocations per span, which was most of
//! what tracing cost a delivery (docs/performance.md, "Tracing"); the field
//! numbers below are the ones of `opentelemetry/proto/trace/v1/trace.proto`
//! and `common/v1/common.proto`, and the tests decode the bytes with the
//! generated types.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId};

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

/// The protobuf wire types used here.
#[derive(Clone, Copy)]
enum Wire {
    Varint = 0,
    Fixed64 = 1,
    Delimited = 2,
    Fixed32 = 5,
}

/// `SpanKind` values (trace.proto).
const SPAN_KIND_CLIENT: u64 = 3;
const SPAN_KIND_CONSUMER: u64 = 5;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_CODE_ERROR: u64 = 2;
/// `SpanFlags`: the W3C sampled bit, and "the parent is known and local".
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// A protobuf message being written.
struct Message<'a>(&'a mut Vec<u8>);

impl Message<'_> {
    fn key(&mut self, field: u32, wire: Wire) {
        varint(self.0, u64::from(field << 3 | wire as u32));
    }

    fn uint(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.key(field, Wire::Varint);
            varint(self.0, value);
        }
    }

    fn fixed64(&mut self, field: u32, value: u64) {
        self.key(field, Wire::Fixed64);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn fixed32(&mut self, field: u32, value: u32) {
        self.key(field, Wire::Fixed32);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn bytes(&mut self, field: u32, value: &[u8]) {
        if !value.is_empty() {
            self.key(field, Wire::Delimited);
            varint(self.0, value.len() as u64);
            self.0.extend_from_slice(value);
        }
    }

    fn text(&mut self, field: u32, value: &str) {
        self.bytes(field, value.as_bytes());
    }

    /// A nested message: written in place, its length put in front after.
    fn nested(&mut self, field: u32, body: impl FnOnce(&mut Message<'_>)) {
        self.key(field, Wire::Delimited);
        let start = self.0.len();
        body(&mut Message(self.0));
        let (length, used) = varint_bytes((self.0.len() - start) as u64);
        self.0.splice(start..start, length[..used].iter().copied());
    }

    fn attribute(&mut self, field: u32, attribute: &Attribute) {
        self.nested(field, |kv| {
            kv.text(1, attribute.key);
            kv.nested(2, |any| match &attribute.value {
                AttributeValue::Text(text) => {
                    // Written even when empty: an empty string is a value.
                    any.key(1, Wire::Delimited);
                    varint(any.0, text.len() as u64);
                    any.0.extend_from_slice(text.as_bytes());
                }
                AttributeValue::Int(int) => {
                    any.key(3, Wire::Varint);
                    varint(any.0, *int as u64);
                }
            });
        });
    }
}

/// `value` as a protobuf varint: the bytes, and how many are used.
fn varint_bytes(mut value: u64) -> ([u8; 10], usize) {
    let (mut bytes, mut used) = ([0u8; 10], 0);
    while value >= 0x80 {
        bytes[used] = (value as u8) | 0x80;
        value >>= 7;
        used += 1;
    }
    bytes[used] = value as u8;
    (bytes, used + 1)
}

fn varint(buffer: &mut Vec<u8>, value: u64) {
    let (bytes, used) = varint_bytes(value);
    buffer.extend_from_slice(&bytes[..used]);
}

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// The request for `traces`, appended to `buffer`.
pub fn export_request(source: &Source, traces: &[FinishedTrace], buffer: &mut Vec<u8>) {
    let mut request = Message(buffer);
    // ExportTraceServiceRequest.resource_spans
    request.nested(1, |resource_spans| {
        // ResourceSpans.resource
        resource_spans.nested(1, |resource| {
            resource.attribute(
                1,
                &Attribute::text("service.name", source.service_name.clone()),
            );
        });
        // ResourceSpans.scope_spans
        resource_spans.nested(2, |scope_spans| {
            scope_spans.nested(1, |scope| {
                scope.text(1, source.scope_name);
                scope.text(2, source.scope_version);
            });
            for trace in traces {
                write_trace(scope_spans, trace);
            }
        });
    });
}

/// An event's delivery span and its call spans, as `ScopeSpans.spans`.
fn write_trace(scope_spans: &mut Message<'_>, trace: &FinishedTrace) {
    let context = &trace.context;
    let trace_id = context.trace_id().to_bytes();
    let deliver_id = context.span_id().to_bytes();
    let local_root = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE;
    scope_spans.nested(2, |span| {
        span.bytes(1, &trace_id);
        span.bytes(2, &deliver_id);
        span.common(
            "paysync.deliver",
            SPAN_KIND_CONSUMER,
            trace.start,
            trace.end,
            &trace.attributes,
        );
        for event in &trace.events {
            write_event(span, event);
        }
        if let Some(producer) = &trace.producer {
            span.nested(13, |link| {
                link.bytes(1, &producer.trace_id().to_bytes());
                link.bytes(2, &producer.span_id().to_bytes());
                link.text(3, &producer.trace_state().header());
                let remote = if producer.is_remote() {
                    FLAG_IS_REMOTE
                } else {
                    0
                };
                let sampled = u32::from(producer.trace_flags().to_u8()) & FLAG_SAMPLED;
                link.fixed32(6, sampled | FLAG_HAS_IS_REMOTE | remote);
            });
        }
        if let Some(error) = &trace.error {
            span.nested(15, |status| {
                status.text(2, error);
                status.uint(3, STATUS_CODE_ERROR);
            });
        }
        span.fixed32(16, local_root);
    });
    for call in &trace.calls {
        scope_spans.nested(2, |span| {
            span.bytes(1, &trace_id);
            span.bytes(2, &call.span_id.to_bytes());
            span.bytes(4, &deliver_id);
            span.common(
                "paysync.call",
                SPAN_KIND_CLIENT,
                call.start,
                call.end,
                &call.attributes,
            );
            span.fixed32(16, local_root);
        });
    }
}

impl Message<'_> {
    /// A `Span`'s name, kind, times and attributes (fields 5 to 9).
    fn common(
        &mut self,
        name: &str,
        kind: u64,
        start: SystemTime,
        end: SystemTime,
        attributes: &[Attribute],
    ) {
        self.text(5, name);
        self.uint(6, kind);
        self.fixed64(7, nanos(start));
        self.fixed64(8, nanos(end));
        for attribute in attributes {
            self.attribute(9, attribute);
        }
    }
}

fn write_event(span: &mut Message<'_>, event: &SpanEvent) {
    span.nested(11, |written| {
        written.fixed64(1, nanos(event.at));
        written.text(2, &event.name);
        for attribute in &event.attributes {
            written.attribute(3, attribute);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_groups_of_seven_bits() {
        let mut buffer = Vec::new();
        varint(&mut buffer, 1);
        varint(&mut buffer, 300);
        varint(&mut buffer, u64::MAX);
        assert_eq!(&buffer[..3], &[0x01, 0xac, 0x02]);
        assert_eq!(buffer.len(), 3 + 10);
    }

    #[test]
    fn a_nested_message_is_prefixed_with_its_length() {
        let mut buffer = Vec::new();
        let mut message = Message(&mut buffer);
        message.nested(1, |inner| inner.text(2, &"x".repeat(200)));
        // key 1/delimited, length 203 as a two-byte varint, key 2, length 200.
        assert_eq!(&buffer[..6], &[0x0a, 0xcb, 0x01, 0x12, 0xc8, 0x01]);
        assert_eq!(buffer.len(), 3 + 203);
    }
}
