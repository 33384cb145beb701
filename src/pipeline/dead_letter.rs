//! The dead-letter topic: a copy of the original record (key, value and
//! headers unchanged) plus `paysync.*` headers saying why and where from.
//! The header set is documented in `schemas/dead-letter-headers.md`.
//!
//! A dead letter counts only once the broker acknowledged it (`acks=all`,
//! idempotent producer); until then the source offset is not committed. A
//! failed write is retried with backoff for as long as it takes: the
//! partition waits rather than losing the message. Nothing secret goes in: no
//! app secret, no signature, no session — only the API's own answer.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::event::InvalidEvent;
use crate::metrics::Metrics;
use crate::top::classify::Outcome;
use crate::top::response::TopResponse;

/// Why a record was dead-lettered (`paysync.error.class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterClass {
    /// The message could not be decoded into a payment event.
    InvalidEvent,
    /// The API refused the event's data.
    Rejected,
    /// Transient failures outlasted the retry budget.
    RetriesExhausted,
}

impl DeadLetterClass {
    pub const ALL: [DeadLetterClass; 3] = [
        DeadLetterClass::InvalidEvent,
        DeadLetterClass::Rejected,
        DeadLetterClass::RetriesExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterClass::InvalidEvent => "invalid_event",
            DeadLetterClass::Rejected => "rejected",
            DeadLetterClass::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// Where the record came from.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, when the broker gave one.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
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
            Outcome::Connect { reason } | Outcome::Transport { reason } => {
                self.message = reason.clone()
            }
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
    pub const CLASS: &str = "paysync.error.class";
    pub const REASON: &str = "paysync.error.reason";
    pub const MESSAGE: &str = "paysync.error.message";
    pub const TOP_CODE: &str = "paysync.top.code";
    pub const TOP_SUB_CODE: &str = "paysync.top.sub_code";
    pub const TOP_REQUEST_ID: &str = "paysync.top.request_id";
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
}

/// Longest `paysync.error.message`; the rest is cut (a header is not a log).
const MAX_MESSAGE_CHARS: usize = 1_000;

/// The `paysync.*` headers for a dead letter, in a stable order.
pub fn paysync_headers(
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
    headers.push((header::SOURCE_TOPIC, source.topic.clone()));
    headers.push((header::SOURCE_PARTITION, source.partition.to_string()));
    headers.push((header::SOURCE_OFFSET, source.offset.to_string()));
    if let Some(timestamp) = source.timestamp {
        headers.push((header::SOURCE_TIMESTAMP, timestamp.to_string()));
    }
    headers.push((header::CONSUMER_GROUP, group.to_owned()));
    headers.push((header::VERSION, env!("CARGO_PKG_VERSION").to_owned()));
    headers
}

/// Writes dead letters and waits for the broker's acknowledgement.
#[derive(Clone)]
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
    group: String,
    metrics: Arc<Metrics>,
}

impl DeadLetterProducer {
    /// `config` holds the connection settings; delivery settings are added here.
    pub fn new(
        mut config: ClientConfig,
        topic: String,
        group: String,
        metrics: Arc<Metrics>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        // Durable and in order: a dead letter is the only copy once the offset moves.
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000");
        let producer: FutureProducer = config.create()?;
        Ok(DeadLetterProducer {
            producer,
            topic,
            group,
            metrics,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes one dead letter; retries until the broker acknowledges it or
    /// `cancelled` resolves. Returns false only when cancelled.
    pub async fn send(
        &self,
        source: &SourceRecord,
        failure: &Failure,
        cancelled: impl std::future::Future<Output = ()>,
    ) -> bool {
        tokio::pin!(cancelled);
        let extra = paysync_headers(source, failure, &self.group, Utc::now());
        let mut attempt = 0u32;
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(source.headers.len() + extra.len());
            for (key, value) in &source.headers {
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
            for (key, value) in &extra {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = &source.key {
                record = record.key(key.as_slice());
            }
            if let Some(value) = &source.value {
                record = record.payload(value.as_slice());
            }
            if let Some(timestamp) = source.timestamp {
                record = record.timestamp(timestamp);
            }
            let sent = tokio::select! {
                sent = self.producer.send(record, Timeout::After(Duration::from_secs(30))) => sent,
                _ = &mut cancelled => return false,
            };
            match sent {
                Ok(_) => return true,
                Err((error, _)) => {
                    attempt += 1;
                    self.metrics.dlq_produce_failures.inc();
                    tracing::error!(
                        error = %error,
                        topic = %self.topic,
                        source_topic = %source.topic,
                        source_partition = source.partition,
                        source_offset = source.offset,
                        attempt,
                        "Dead-letter write failed; the source offset is held until it succeeds."
                    );
                    let delay = Duration::from_millis(250u64.saturating_mul(1 << attempt.min(5)));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = &mut cancelled => return false,
                    }
                }
            }
        }
    }

    /// Waits for queued dead letters to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), rdkafka::error::KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::response::ErrorResponse;

    #[test]
    fn headers_carry_the_api_answer_and_the_source_position() {
        let source = SourceRecord {
            topic: "payments".into(),
            partition: 3,
            offset: 42,
            timestamp: Some(1_602_331_200_000),
            key: None,
            value: Some(b"{}".to_vec()),
            headers: vec![],
        };
        let failure = Failure {
            class: DeadLetterClass::Rejected,
            reason: "invalid_arguments".into(),
            message: String::new(),
            top_code: None,
            top_sub_code: None,
            request_id: None,
            attempts: 1,
            first_attempt: None,
            last_attempt: None,
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
        );
        let headers: std::collections::HashMap<_, _> =
            paysync_headers(&source, &failure, "g1", Utc::now())
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
}
