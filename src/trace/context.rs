//! The producer's trace context, read from a Kafka message's headers: W3C
//! `traceparent` / `tracestate`, and B3 in its single (`b3`) and multi
//! (`X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`) forms. Header names match
//! case-insensitively (Kafka clients write them in any case). A malformed
//! value is ignored — the event is delivered all the same — and said so, so
//! the caller can count it. Pure: nothing here knows Kafka or a tracer.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// What the headers say about the producer's span.
#[derive(Debug, Clone, PartialEq)]
pub enum Producer {
    /// A valid context: the delivery span links to it.
    Linked(SpanContext),
    /// No trace header at all.
    Absent,
    /// A trace header whose value could not be read (ignored).
    Malformed,
}

/// Reads the producer's context from `(name, value)` headers. W3C wins over
/// B3 when both are present and valid.
pub fn producer_context<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Producer {
    let mut found = Found::default();
    for (name, value) in headers {
        let Ok(value) = std::str::from_utf8(value) else {
            if is_trace_header(name) {
                found.malformed = true;
            }
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "traceparent" => found.traceparent = Some(value),
            "tracestate" => found.tracestate = Some(value),
            "b3" => found.b3 = Some(value),
            "x-b3-traceid" => found.b3_trace = Some(value),
            "x-b3-spanid" => found.b3_span = Some(value),
            "x-b3-sampled" => found.b3_sampled = Some(value),
            "x-b3-flags" => found.b3_debug = value == "1",
            _ => {}
        }
    }
    found.context()
}

fn is_trace_header(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "traceparent" | "tracestate" | "b3" | "x-b3-traceid" | "x-b3-spanid" | "x-b3-sampled"
    )
}

#[derive(Default)]
struct Found<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
    b3: Option<&'a str>,
    b3_trace: Option<&'a str>,
    b3_span: Option<&'a str>,
    b3_sampled: Option<&'a str>,
    b3_debug: bool,
    malformed: bool,
}

impl Found<'_> {
    fn context(&self) -> Producer {
        let w3c = self
            .traceparent
            .map(|value| traceparent(value, self.tracestate));
        // A lone sampling decision (`b3: 0`, `1` or `d`, which Brave sends
        // when it does not sample) is valid B3 with no context to link to.
        let b3_context = self.b3.filter(|value| !matches!(*value, "0" | "1" | "d"));
        let b3 = b3_context.map(b3_single).or_else(|| {
            (self.b3_trace.is_some() || self.b3_span.is_some()).then(|| {
                b3_multi(
                    self.b3_trace.unwrap_or(""),
                    self.b3_span.unwrap_or(""),
                    self.b3_sampled,
                    self.b3_debug,
                )
            })
        });
        match (w3c, b3) {
            (Some(Some(context)), _) | (_, Some(Some(context))) => Producer::Linked(context),
            (Some(None), _) | (_, Some(None)) => Producer::Malformed,
            (None, None) if self.malformed => Producer::Malformed,
            (None, None) => Producer::Absent,
        }
    }
}

/// `version-traceid-spanid-flags` (W3C Trace Context §3.2): lower-case hex,
/// version `ff` invalid, all-zero ids invalid; a future version may carry
/// more fields after these four.
fn traceparent(value: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = value.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || !lower_hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !(lower_hex(trace) && lower_hex(span) && lower_hex(flags)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    // A malformed tracestate is dropped, not the parent (W3C §3.3).
    let state = tracestate
        .and_then(|state| state.parse::<TraceState>().ok())
        .unwrap_or_default();
    valid(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 0x01),
        true,
        state,
    ))
}

/// `b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]`.
fn b3_single(value: &str) -> Option<SpanContext> {
    let mut parts = value.split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    let sampled = parts.next();
    b3_multi(trace, span, sampled, false)
}

/// B3's ids: a 64- or 128-bit trace id and a 64-bit span id, in hex.
fn b3_multi(trace: &str, span: &str, sampled: Option<&str>, debug: bool) -> Option<SpanContext> {
    let trace = trace.to_ascii_lowercase();
    let span = span.to_ascii_lowercase();
    if !matches!(trace.len(), 16 | 32)
        || span.len() != 16
        || !lower_hex(&trace)
        || !lower_hex(&span)
    {
        return None;
    }
    let trace = format!("{trace:0>32}");
    let sampled = match sampled {
        None => false,
        Some("1" | "true" | "d") => true,
        Some("0" | "false") => false,
        Some(_) => return None,
    };
    valid(SpanContext::new(
        TraceId::from_hex(&trace).ok()?,
        SpanId::from_hex(&span).ok()?,
        if sampled || debug {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    ))
}

fn valid(context: SpanContext) -> Option<SpanContext> {
    context.is_valid().then_some(context)
}

fn lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(headers: &[(&str, &str)]) -> Producer {
        producer_context(headers.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    fn linked(headers: &[(&str, &str)]) -> SpanContext {
        match read(headers) {
            Producer::Linked(context) => context,
            other => panic!("expected a context from {headers:?}, got {other:?}"),
        }
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn w3c_traceparent_and_tracestate_in_any_case() {
        let context = linked(&[("TraceParent", PARENT), ("tracestate", "congo=t61rcWkgMzE")]);
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(context.trace_state().get("congo"), Some("t61rcWkgMzE"));
        // A malformed tracestate is dropped, the parent kept.
        let context = linked(&[("traceparent", PARENT), ("tracestate", "not a list=")]);
        assert_eq!(context.trace_state().header(), "");
        // A later version may add fields.
        linked(&[("traceparent", &format!("cc{}-what-ever", &PARENT[2..]))]);
    }

    #[test]
    fn b3_single_and_multi() {
        let single = linked(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        assert_eq!(single.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(single.is_sampled());
        // A 64-bit trace id is padded on the left.
        let multi = linked(&[
            ("X-B3-TraceId", "A3CE929D0E0E4736"),
            ("X-B3-SpanId", "00F067AA0BA902B7"),
            ("X-B3-Sampled", "0"),
        ]);
        assert_eq!(
            multi.trace_id().to_string(),
            "0000000000000000a3ce929d0e0e4736"
        );
        assert!(!multi.is_sampled());
        // W3C wins when both are there.
        let both = linked(&[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1"),
            ("traceparent", PARENT),
        ]);
        assert_eq!(both.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn malformed_values_are_told_apart_from_no_context() {
        assert_eq!(read(&[("key", "x")]), Producer::Absent);
        assert_eq!(read(&[]), Producer::Absent);
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert_eq!(read(&[("traceparent", bad)]), Producer::Malformed, "{bad}");
        }
        assert_eq!(
            read(&[("b3", "nothex-e457b5a2e4d86bd1")]),
            Producer::Malformed
        );
        for decision in ["0", "1", "d"] {
            assert_eq!(
                read(&[("b3", decision)]),
                Producer::Absent,
                "a sampling decision alone is valid B3 that links nothing: {decision}"
            );
        }
        assert_eq!(read(&[("b3", "2")]), Producer::Malformed);
        assert_eq!(
            read(&[("X-B3-SpanId", "e457b5a2e4d86bd1")]),
            Producer::Malformed
        );
        assert_eq!(
            producer_context([("traceparent", &[0xff, 0xfe][..])]),
            Producer::Malformed
        );
        // A malformed W3C value does not hide a valid B3 one.
        linked(&[
            ("traceparent", "garbage"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]);
    }
}
