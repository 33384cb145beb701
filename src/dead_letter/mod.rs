//! The dead-letter contract, in one place: a dead letter is a copy of the
//! original record (key, value and headers unchanged) plus `paysync.*`
//! headers saying why and where from, as `schemas/dead-letter-headers.md`
//! documents. This module holds the record types and both directions of the
//! header format; [`producer`] writes dead letters for the pipeline and
//! [`reader`] reads them back for `paysync dlq inspect` and the console;
//! [`redrive`] sends them again.
//!
//! Nothing secret goes in: no app secret, no signature, no session — only the
//! API's own answer.

pub(crate) mod prior;
pub(crate) mod producer;
pub mod reader;
pub mod redrive;
mod redrive_ledger;

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::Message;

use crate::event::InvalidEvent;
pub use crate::kafka::record::{Payload, SourceRecord};
pub use crate::labels::DeadLetterClass;
use crate::top::classify::Outcome;
use crate::top::response::TopResponse;
pub use producer::{DeadLetterProducer, OldestStall, StalledWrites, Written};

/// `payload` cut down to `level` (0: whole; 1: without its value; 2:
/// without value, key and headers), with the headers that say what was
/// left out. For a copy too large for the dead-letter topic.
pub fn shrunk(payload: &Payload, level: u8) -> (Payload, Vec<(&'static str, String)>) {
    let mut said = Vec::new();
    let mut payload = payload.clone();
    if level >= 1
        && let Some(value) = payload.value.take()
    {
        said.push((header::VALUE_OMITTED_BYTES, value.len().to_string()));
    }
    if level >= 2 {
        if let Some(key) = payload.key.take() {
            said.push((header::KEY_OMITTED_BYTES, key.len().to_string()));
        }
        if !payload.headers.is_empty() {
            said.push((header::HEADERS_OMITTED, payload.headers.len().to_string()));
            payload.headers.clear();
        }
    }
    (payload, said)
}

/// Why and how it failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: DeadLetterClass,
    /// A closed-set reason: a reject or retry cause, or `invalid_event`.
    pub reason: String,
    /// For people: the decoder's field problems, or the API's message.
    pub message: String,
    pub top_code: Option<String>,
    pub top_sub_code: Option<String>,
    pub request_id: Option<String>,
    pub attempts: u32,
    pub first_attempt: Option<DateTime<Utc>>,
    pub last_attempt: Option<DateTime<Utc>>,
    /// The trace of the delivery that gave up (tracing on).
    pub trace_id: Option<String>,
}

impl Failure {
    pub fn invalid_event(invalid: &InvalidEvent) -> Failure {
        Failure {
            class: DeadLetterClass::InvalidEvent,
            reason: DeadLetterClass::InvalidEvent.as_str().to_owned(),
            message: invalid.to_string(),
            top_code: None,
            top_sub_code: None,
            request_id: None,
            attempts: 0,
            first_attempt: None,
            last_attempt: None,
            trace_id: None,
        }
    }

    /// Fills the TOP fields from a call's outcome.
    pub fn with_outcome(mut self, outcome: &Outcome, request_id: Option<&str>) -> Failure {
        self.request_id = request_id.map(str::to_owned);
        match outcome {
            Outcome::Answered {
                response: TopResponse::Error(error),
                ..
            } => {
                self.top_code = Some(error.code.to_string());
                self.top_sub_code = error.sub_code.clone();
                self.message = [error.msg.as_deref(), error.sub_msg.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ");
            }
            Outcome::Answered {
                response: TopResponse::Result(result),
                ..
            } => {
                self.top_code = result.code.clone();
                self.message = format!(
                    "success={} model={} message={}",
                    flag(result.success),
                    flag(result.model),
                    result.message.as_deref().unwrap_or("")
                );
            }
            Outcome::HttpStatus { status, .. } => self.message = format!("HTTP {status}"),
            Outcome::UnreadableBody { status, reason } => {
                self.message = format!("HTTP {status}: {reason}")
            }
            Outcome::Timeout => self.message = "timed out".to_owned(),
            Outcome::TooLarge { bytes, limit } => {
                self.message = format!(
                    "not sent: the request is {bytes} bytes, top.max_request_bytes is {limit}"
                )
            }
            Outcome::Connect { reason }
            | Outcome::Transport { reason }
            | Outcome::Untrusted { reason }
            | Outcome::ProxyAuth { reason } => self.message = reason.clone(),
        }
        self
    }
}

fn flag(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "true",
        Some(false) => "false",
        None => "absent",
    }
}

/// Header names, in one place.
pub mod header {
    /// Every `paysync.*` header a dead letter may carry, in the order written.
    pub const ALL: [&str; 20] = [
        CLASS,
        REASON,
        MESSAGE,
        TOP_CODE,
        TOP_SUB_CODE,
        TOP_REQUEST_ID,
        ATTEMPTS,
        FIRST_ATTEMPT_AT,
        LAST_ATTEMPT_AT,
        DEAD_LETTERED_AT,
        SOURCE_TOPIC,
        SOURCE_PARTITION,
        SOURCE_OFFSET,
        SOURCE_TIMESTAMP,
        CONSUMER_GROUP,
        TRACE_ID,
        VERSION,
        VALUE_OMITTED_BYTES,
        KEY_OMITTED_BYTES,
        HEADERS_OMITTED,
    ];
    /// Set by `paysync dlq redrive --to source` on the record it writes back.
    pub const REDRIVEN_FROM: &str = "paysync.redriven_from";
    /// How many times the record was redriven to its source (set with
    /// [`REDRIVEN_FROM`]; a dead letter of it carries it along).
    pub const REDRIVES: &str = "paysync.redrives";
    /// Set by `paysync dlq redrive --to source --resend-delivered`: the
    /// pipeline sends the record even if the ledger holds its key as accepted.
    pub const RESEND_DELIVERED: &str = "paysync.resend_delivered";
    /// The prefix of every header paysync adds.
    pub const PREFIX: &str = "paysync.";

    pub const CLASS: &str = "paysync.error.class";
    pub const REASON: &str = "paysync.error.reason";
    pub const MESSAGE: &str = "paysync.error.message";
    pub const TOP_CODE: &str = "paysync.top.code";
    pub const TOP_SUB_CODE: &str = "paysync.top.sub_code";
    pub const TOP_REQUEST_ID: &str = "paysync.top.request_id";
    /// The trace id of the delivery that gave up (when tracing is on).
    pub const TRACE_ID: &str = "paysync.trace_id";
    pub const ATTEMPTS: &str = "paysync.attempts";
    pub const FIRST_ATTEMPT_AT: &str = "paysync.first_attempt_at";
    pub const LAST_ATTEMPT_AT: &str = "paysync.last_attempt_at";
    pub const DEAD_LETTERED_AT: &str = "paysync.dead_lettered_at";
    pub const SOURCE_TOPIC: &str = "paysync.source.topic";
    pub const SOURCE_PARTITION: &str = "paysync.source.partition";
    pub const SOURCE_OFFSET: &str = "paysync.source.offset";
    pub const SOURCE_TIMESTAMP: &str = "paysync.source.timestamp";
    pub const CONSUMER_GROUP: &str = "paysync.consumer_group";
    pub const VERSION: &str = "paysync.version";
    /// The copy was too large for the dead-letter topic: its value was left
    /// out (this many bytes); the source record keeps it for its retention.
    pub const VALUE_OMITTED_BYTES: &str = "paysync.value.omitted_bytes";
    /// Still too large without its value: the key was left out too.
    pub const KEY_OMITTED_BYTES: &str = "paysync.key.omitted_bytes";
    /// ... and the source's own headers (this many).
    pub const HEADERS_OMITTED: &str = "paysync.headers.omitted";
}

/// Longest `paysync.error.message`; the rest is cut (a header is not a log).
const MAX_MESSAGE_CHARS: usize = 1_000;

/// The `paysync.*` headers for a dead letter, in a stable order.
pub fn encode_headers(
    source: &SourceRecord,
    failure: &Failure,
    group: &str,
    now: DateTime<Utc>,
) -> Vec<(&'static str, String)> {
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut headers = vec![
        (header::CLASS, failure.class.as_str().to_owned()),
        (header::REASON, failure.reason.clone()),
        (
            header::MESSAGE,
            failure.message.chars().take(MAX_MESSAGE_CHARS).collect(),
        ),
    ];
    let optional = [
        (header::TOP_CODE, failure.top_code.clone()),
        (header::TOP_SUB_CODE, failure.top_sub_code.clone()),
        (header::TOP_REQUEST_ID, failure.request_id.clone()),
    ];
    headers.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v))),
    );
    headers.push((header::ATTEMPTS, failure.attempts.to_string()));
    if let Some(first) = failure.first_attempt {
        headers.push((header::FIRST_ATTEMPT_AT, time(first)));
    }
    if let Some(last) = failure.last_attempt {
        headers.push((header::LAST_ATTEMPT_AT, time(last)));
    }
    headers.push((header::DEAD_LETTERED_AT, time(now)));
    headers.push((header::SOURCE_TOPIC, source.id.topic.clone()));
    headers.push((header::SOURCE_PARTITION, source.id.partition.to_string()));
    headers.push((header::SOURCE_OFFSET, source.offset.to_string()));
    if let Some(timestamp) = source.timestamp {
        headers.push((header::SOURCE_TIMESTAMP, timestamp.to_string()));
    }
    headers.push((header::CONSUMER_GROUP, group.to_owned()));
    if let Some(trace_id) = &failure.trace_id {
        headers.push((header::TRACE_ID, trace_id.clone()));
    }
    headers.push((header::VERSION, env!("CARGO_PKG_VERSION").to_owned()));
    headers
}

/// A dead letter as read back: the failure headers parsed, and the original
/// content (its `paysync.*` headers removed).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterRecord {
    /// Where the dead letter itself is, in the dead-letter topic.
    pub partition: i32,
    pub offset: i64,
    pub class: String,
    pub reason: String,
    pub code: Option<String>,
    /// The TOP sub_code, when the API gave one.
    pub sub_code: Option<String>,
    pub message: String,
    pub source_topic: String,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    /// The consumer group whose pipeline wrote it.
    pub consumer_group: Option<String>,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// The copy left parts of the source record out (it was too large for
    /// the dead-letter topic): `original` is not the whole record.
    pub left_out: bool,
    /// How many times this record was redriven to its source before.
    pub redrives: u32,
    /// The trace of the delivery that gave up, when tracing was on.
    pub trace_id: Option<String>,
    /// Every `paysync.*` header, as written (the failure's whole story).
    pub failure_headers: Vec<(String, String)>,
    /// The original key, value and headers, as the source had them.
    #[serde(skip)]
    pub original: Payload,
}

impl DeadLetterRecord {
    /// Reads a dead letter; missing or unreadable headers leave fields empty.
    pub fn decode(message: &impl Message) -> DeadLetterRecord {
        let mut payload = Payload::of(message);
        let mut paysync = HashMap::new();
        let mut failure_headers = Vec::new();
        payload.headers.retain(|(key, value)| {
            if key.starts_with(header::PREFIX) {
                let text = String::from_utf8_lossy(value.as_deref().unwrap_or_default());
                failure_headers.push((key.clone(), text.clone().into_owned()));
                paysync.insert(key.clone(), text.into_owned());
                false
            } else {
                true
            }
        });
        let get = |name: &str| paysync.get(name).cloned();
        DeadLetterRecord {
            partition: message.partition(),
            offset: message.offset(),
            class: get(header::CLASS).unwrap_or_default(),
            reason: get(header::REASON).unwrap_or_default(),
            code: get(header::TOP_CODE),
            sub_code: get(header::TOP_SUB_CODE),
            message: get(header::MESSAGE).unwrap_or_default(),
            source_topic: get(header::SOURCE_TOPIC).unwrap_or_default(),
            source_partition: get(header::SOURCE_PARTITION).and_then(|p| p.parse().ok()),
            source_offset: get(header::SOURCE_OFFSET).and_then(|o| o.parse().ok()),
            consumer_group: get(header::CONSUMER_GROUP),
            dead_lettered_at: get(header::DEAD_LETTERED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            left_out: [
                header::VALUE_OMITTED_BYTES,
                header::KEY_OMITTED_BYTES,
                header::HEADERS_OMITTED,
            ]
            .iter()
            .any(|name| paysync.contains_key(*name)),
            redrives: get(header::REDRIVES)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            trace_id: get(header::TRACE_ID),
            failure_headers,
            original: payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::response::ErrorResponse;
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    #[test]
    fn a_shrunk_payload_says_what_it_left_out() {
        let payload = Payload {
            key: Some(b"order-1".to_vec()),
            value: Some(vec![b'x'; 5_000]),
            headers: vec![("a".into(), None), ("b".into(), Some(b"1".to_vec()))],
        };
        assert_eq!(shrunk(&payload, 0), (payload.clone(), vec![]));
        let (without_value, said) = shrunk(&payload, 1);
        assert_eq!(without_value.value, None);
        assert_eq!(without_value.key, payload.key);
        assert_eq!(said, vec![(header::VALUE_OMITTED_BYTES, "5000".to_owned())]);
        let (bare, said) = shrunk(&payload, 2);
        assert_eq!(bare, Payload::default());
        assert_eq!(
            said,
            vec![
                (header::VALUE_OMITTED_BYTES, "5000".to_owned()),
                (header::KEY_OMITTED_BYTES, "7".to_owned()),
                (header::HEADERS_OMITTED, "2".to_owned()),
            ]
        );
    }

    fn source() -> SourceRecord {
        SourceRecord {
            id: crate::partition::PartitionId::new("payments", 3),
            offset: 42,
            timestamp: Some(1_602_331_200_000),
            payload: Payload {
                key: Some(b"PK1".to_vec()),
                value: Some(b"{}".to_vec()),
                headers: vec![
                    ("source-system".into(), Some(b"parking".to_vec())),
                    ("empty".into(), None),
                ],
            },
        }
    }

    fn rejected() -> Failure {
        Failure {
            class: DeadLetterClass::Rejected,
            reason: "invalid_arguments".into(),
            message: String::new(),
            top_code: None,
            top_sub_code: None,
            request_id: None,
            attempts: 1,
            first_attempt: None,
            last_attempt: None,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        }
        .with_outcome(
            &Outcome::Answered {
                status: 200,
                response: TopResponse::Error(ErrorResponse {
                    code: 41,
                    msg: Some("Invalid arguments:pay_fee".into()),
                    sub_code: None,
                    sub_msg: None,
                }),
            },
            Some("abc123"),
        )
    }

    #[test]
    fn headers_carry_the_api_answer_and_the_source_position() {
        let headers: HashMap<_, _> = encode_headers(&source(), &rejected(), "g1", Utc::now())
            .into_iter()
            .collect();
        assert_eq!(headers[header::CLASS], "rejected");
        assert_eq!(headers[header::TOP_CODE], "41");
        assert_eq!(headers[header::MESSAGE], "Invalid arguments:pay_fee");
        assert_eq!(headers[header::TOP_REQUEST_ID], "abc123");
        assert_eq!(headers[header::SOURCE_OFFSET], "42");
        assert_eq!(headers[header::SOURCE_PARTITION], "3");
        assert_eq!(headers[header::CONSUMER_GROUP], "g1");
        assert!(!headers.contains_key(header::TOP_SUB_CODE));
    }

    /// What the writer puts on a record, the reader gets back: the failure,
    /// the source position and the original content, unchanged.
    #[test]
    fn a_dead_letter_reads_back_as_it_was_written() {
        let source = source();
        let now = Utc::now();
        let extra = encode_headers(&source, &rejected(), "g1", now);
        let record = source.payload.to_record("payments.dlq", &extra);
        let message = OwnedMessage::new(
            record.payload.map(<[u8]>::to_vec),
            record.key.map(<[u8]>::to_vec),
            "payments.dlq".into(),
            Timestamp::CreateTime(source.timestamp.unwrap()),
            0,
            7,
            record.headers,
        );
        let read = DeadLetterRecord::decode(&message);
        assert_eq!((read.partition, read.offset), (0, 7));
        assert_eq!(read.class, "rejected");
        assert_eq!(read.reason, "invalid_arguments");
        assert_eq!(read.code.as_deref(), Some("41"));
        assert_eq!(read.message, "Invalid arguments:pay_fee");
        assert_eq!(read.source_topic, "payments");
        assert_eq!(read.source_partition, Some(3));
        assert_eq!(read.source_offset, Some(42));
        let at = read.dead_lettered_at.expect("the time reads back");
        assert!((at - now).num_milliseconds().abs() <= 1, "{at} vs {now}");
        assert_eq!(
            read.original, source.payload,
            "the original content is unchanged"
        );
    }

    /// The header names in code are exactly the documented ones.
    #[test]
    fn the_schema_documents_every_header() {
        let schema = include_str!("../../schemas/dead-letter-headers.md");
        let documented: Vec<&str> = schema
            .lines()
            .filter(|l| l.starts_with("| `paysync."))
            .filter_map(|l| l.split('`').nth(1))
            .collect();
        assert_eq!(documented, header::ALL);
        // Every header the writer can emit is one of them.
        let mut failure = rejected();
        failure.top_sub_code = Some("isv.x".into());
        failure.first_attempt = Some(Utc::now());
        failure.last_attempt = Some(Utc::now());
        for (name, _) in encode_headers(&source(), &failure, "g", Utc::now()) {
            assert!(header::ALL.contains(&name), "{name} is not documented");
        }
    }
}
