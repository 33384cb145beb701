//! One ledger entry: the business key it is filed under (an event's
//! `order_id`, `order_type` and `pay_order_id`, as `ledger.key_fields`
//! chooses), what happened to the event (the JSON value), and the two small
//! hashes the replica's memory keeps instead of the text: the key's and the
//! DTO's.
//!
//! The value is self-describing JSON so that `kafka-console-consumer` shows
//! it and a later paysync reads an earlier one's entries. It carries no
//! secret: the DTO is the business parameter as sent, never the signed
//! request.

use std::fmt;

use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::event::PaymentEvent;
use crate::gmt8;

/// Between the key's fields: a control character, which no event field may
/// hold (the decoder refuses them), so two different events never make the
/// same key text.
const KEY_SEPARATOR: char = '\u{1f}';

/// A field of the business key (`ledger.key_fields`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyField {
    OrderId,
    /// A refund is never a duplicate of its payment.
    OrderType,
    /// Absent on some events: then it adds an empty part.
    PayOrderId,
    /// Tells apart two events of one order that differ only in fee (two
    /// identical partial refunds stay one key even so).
    PayTime,
}

impl KeyField {
    pub const DEFAULT: [KeyField; 3] =
        [KeyField::OrderId, KeyField::OrderType, KeyField::PayOrderId];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyField::OrderId => "order_id",
            KeyField::OrderType => "order_type",
            KeyField::PayOrderId => "pay_order_id",
            KeyField::PayTime => "pay_time",
        }
    }
}

/// An event's key in the ledger: the Kafka record key, and the hashes memory
/// keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerKey {
    pub text: String,
    pub hash: u128,
    /// The order's hash: per-order holds look it up.
    pub order: u64,
}

impl LedgerKey {
    pub fn of(event: &PaymentEvent, fields: &[KeyField]) -> LedgerKey {
        let mut text = String::with_capacity(event.order_id.len() + 32);
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                text.push(KEY_SEPARATOR);
            }
            match field {
                KeyField::OrderId => text.push_str(&event.order_id),
                KeyField::OrderType => text.push_str(&event.order_type.code().to_string()),
                KeyField::PayOrderId => text.push_str(event.pay_order_id.as_deref().unwrap_or("")),
                KeyField::PayTime => text.push_str(&gmt8::format(event.pay_time)),
            }
        }
        LedgerKey::from_text(text, &event.order_id)
    }

    /// A key read back from the topic, with its entry's order id.
    pub fn from_text(text: String, order_id: &str) -> LedgerKey {
        LedgerKey {
            hash: key_hash(text.as_bytes()),
            order: order_hash(order_id),
            text,
        }
    }

    /// The key as people read it: its parts joined by `/`.
    pub fn shown(&self) -> String {
        self.text.replace(KEY_SEPARATOR, "/")
    }
}

/// The 128-bit hash memory keeps of a key's text.
pub fn key_hash(text: &[u8]) -> u128 {
    u128::from_be_bytes(Md5::digest(text).into())
}

/// A 64-bit hash of an order id.
pub fn order_hash(order_id: &str) -> u64 {
    let digest = Md5::digest(order_id.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("16 bytes"))
}

/// A 64-bit hash of the DTO as sent: the same key with another hash is a
/// correction, not a duplicate.
pub fn dto_hash(dto_json: &str) -> u64 {
    let digest = Md5::digest(dto_json.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("16 bytes"))
}

/// What the ledger knows about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Strict mode: the call is about to go out. An intent with no outcome
    /// after it is an unknown outcome.
    Intent,
    /// The API accepted it.
    Accepted,
    /// The dead-letter topic holds it.
    DeadLettered,
    /// The call may or may not have been accepted (a crash or a lost answer
    /// in strict mode): parked until someone resolves it.
    Unknown,
    /// A later event of an order whose earlier event is unknown: parked
    /// behind it, released by the same resolution.
    Held,
    /// Strict mode: the last call was refused by the platform (not
    /// accepted) and will be tried again; withdraws the intent.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Intent,
        Outcome::Accepted,
        Outcome::DeadLettered,
        Outcome::Unknown,
        Outcome::Held,
        Outcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Intent => "intent",
            Outcome::Accepted => "accepted",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Unknown => "unknown",
            Outcome::Held => "held",
            Outcome::Failed => "failed",
        }
    }

    /// Parked: the offset passed it, and only a resolution sends it.
    pub fn parked(self) -> bool {
        matches!(self, Outcome::Unknown | Outcome::Held)
    }
}

/// Which way an event came: the metrics' `path` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// The consumer group (`paysync run`).
    Live,
    /// `paysync replay`.
    Replay,
    /// `paysync dlq redrive` (to the source topic or to the API).
    Redrive,
    /// `paysync ledger resolve`.
    Resolve,
}

impl Path {
    pub const ALL: [Path; 4] = [Path::Live, Path::Replay, Path::Redrive, Path::Resolve];

    pub fn as_str(self) -> &'static str {
        match self {
            Path::Live => "live",
            Path::Replay => "replay",
            Path::Redrive => "redrive",
            Path::Resolve => "resolve",
        }
    }
}

/// Where an event was read: topic, partition, offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// One entry's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub outcome: Outcome,
    pub order_id: String,
    /// 1 = payment, 2 = refund.
    pub order_type: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_order_id: Option<String>,
    pub park_id: String,
    /// GMT+8 `yyyy-MM-dd HH:mm:ss`, as sent.
    pub pay_time: String,
    pub pay_fee: u64,
    /// [`dto_hash`] in hex.
    pub dto_hash: String,
    pub source: Position,
    /// When the entry was written.
    pub at: DateTime<Utc>,
    pub path: Path,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// A dead letter's class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Why: an unknown outcome's cause, a resolution's operator note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The DTO as sent, kept by intents and parked events so that a
    /// resolution can send it without the source record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dto: Option<String>,
    /// A held event: the key (as shown) of the unknown event it waits behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<String>,
}

impl Entry {
    /// An entry for `event`, read at `source`, sent as `dto_json`.
    pub fn of(
        outcome: Outcome,
        event: &PaymentEvent,
        dto_json: &str,
        source: Position,
        path: Path,
    ) -> Entry {
        Entry {
            outcome,
            order_id: event.order_id.clone(),
            order_type: event.order_type.code(),
            pay_order_id: event.pay_order_id.clone(),
            park_id: event.park_id.clone(),
            pay_time: gmt8::format(event.pay_time),
            pay_fee: event.pay_fee,
            dto_hash: format!("{:016x}", dto_hash(dto_json)),
            source,
            at: Utc::now(),
            path,
            request_id: None,
            trace_id: None,
            class: None,
            reason: None,
            dto: matches!(outcome, Outcome::Intent | Outcome::Unknown | Outcome::Held)
                .then(|| dto_json.to_owned()),
            behind: None,
        }
    }

    /// The same event with another outcome, written now (the DTO kept only
    /// where a resolution may need it).
    pub fn becomes(&self, outcome: Outcome, path: Path) -> Entry {
        Entry {
            outcome,
            at: Utc::now(),
            path,
            dto: if outcome.parked() || outcome == Outcome::Intent {
                self.dto.clone()
            } else {
                None
            },
            behind: None,
            request_id: None,
            trace_id: None,
            class: None,
            reason: None,
            ..self.clone()
        }
    }

    pub fn dto_hash_value(&self) -> Option<u64> {
        u64::from_str_radix(&self.dto_hash, 16).ok()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an entry of strings and numbers always serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::OrderType;
    use chrono::TimeZone;

    pub(crate) fn event(order_id: &str, order_type: OrderType, pay: Option<&str>) -> PaymentEvent {
        PaymentEvent {
            car_no: "浙A12345".into(),
            order_id: order_id.into(),
            park_id: "p1".into(),
            pay_time: Utc.with_ymd_and_hms(2026, 12, 5, 16, 30, 0).unwrap(),
            order_type,
            pay_fee: 1000,
            pay_order_id: pay.map(str::to_owned),
            pay_method: None,
        }
    }

    #[test]
    fn the_metrics_label_values_are_the_paths_and_outcomes() {
        let paths: Vec<&str> = Path::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(paths, crate::metrics::LEDGER_PATHS);
        let outcomes: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(outcomes, crate::metrics::LEDGER_OUTCOMES);
    }

    #[test]
    fn a_refund_is_never_the_key_of_its_payment_and_the_fields_are_configurable() {
        let fields = KeyField::DEFAULT;
        let payment = LedgerKey::of(&event("o1", OrderType::Payment, Some("w1")), &fields);
        let refund = LedgerKey::of(&event("o1", OrderType::Refund, Some("w1")), &fields);
        assert_ne!(payment.hash, refund.hash);
        assert_eq!(payment.order, refund.order, "one order, for holds");
        assert_eq!(payment.shown(), "o1/1/w1");
        let by_order = LedgerKey::of(&event("o1", OrderType::Refund, None), &[KeyField::OrderId]);
        assert_eq!(by_order.shown(), "o1");
        // Without a pay_order_id, two partial refunds are one key.
        let first = LedgerKey::of(&event("o1", OrderType::Refund, None), &fields);
        let second = LedgerKey::of(&event("o1", OrderType::Refund, None), &fields);
        assert_eq!(first, second);
    }

    #[test]
    fn an_entry_round_trips_and_keeps_the_dto_only_while_it_may_be_sent() {
        let event = event("o1", OrderType::Payment, None);
        let position = Position {
            topic: "t".into(),
            partition: 3,
            offset: 42,
        };
        let intent = Entry::of(Outcome::Intent, &event, "{\"a\":1}", position, Path::Live);
        assert_eq!(intent.dto.as_deref(), Some("{\"a\":1}"));
        assert_eq!(Entry::decode(&intent.encode()).unwrap(), intent);
        let accepted = intent.becomes(Outcome::Accepted, Path::Live);
        assert_eq!(accepted.dto, None);
        assert_eq!(accepted.dto_hash_value(), Some(dto_hash("{\"a\":1}")));
        assert_eq!(accepted.pay_time, "2026-12-06 00:30:00", "GMT+8");
        let text = String::from_utf8(accepted.encode()).unwrap();
        assert!(text.contains("\"outcome\":\"accepted\""), "{text}");
        assert!(!text.contains("request_id"), "absent fields are left out");
    }
}
