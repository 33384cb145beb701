//! A consumed message, detached from the consumer: where it came from
//! ([`SourceRecord`]) and its content ([`Payload`]). Every event's task
//! carries one; a dead letter copies it, and a redrive writes it back.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::partition::PartitionId;

/// A source record: where it came from, and its content.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub id: PartitionId,
    pub offset: i64,
    /// Milliseconds since the epoch, when the broker gave one.
    pub timestamp: Option<i64>,
    pub payload: Payload,
}

impl SourceRecord {
    /// A detached copy of a consumed message of partition `id`.
    pub fn of(id: PartitionId, message: &impl Message) -> SourceRecord {
        SourceRecord {
            id,
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            payload: Payload::of(message),
        }
    }
}

/// A record's own content: key, value and headers (what a dead letter
/// copies unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Payload {
    /// A copy of a message's key, value and every header.
    pub fn of(message: &impl Message) -> Payload {
        Payload {
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// A record to `topic` with this key and value, this payload's headers
    /// and then `extra`.
    pub fn to_record<'a>(
        &'a self,
        topic: &'a str,
        extra: &[(&str, String)],
    ) -> FutureRecord<'a, [u8], [u8]> {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len() + extra.len());
        for (key, value) in &self.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        for (key, value) in extra {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(topic).headers(headers);
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &self.value {
            record = record.payload(value.as_slice());
        }
        record
    }
}
