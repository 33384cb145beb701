//! The payment event: what a parking platform publishes to Kafka, decoded and
//! validated before anything is sent.
//!
//! A Kafka message value is one JSON object carrying the fields of the API's
//! `PayOrderInfoDto`. Both snake_case (`car_no`) and camelCase (`carNo`) names
//! are accepted because Java platforms publish the latter; fields this model
//! does not know are ignored. `pay_time` may be GMT+8 `yyyy-MM-dd HH:mm:ss`,
//! RFC 3339 with an offset, or epoch milliseconds, and is normalised to an
//! instant, which must fall in 2000..2100 whatever its form. Text fields have
//! length limits ([`FieldLengths`], configurable) and may not hold control
//! characters; an object that gives a key twice is refused (which one was
//! meant?). Decoding never panics: every problem becomes a [`FieldProblem`]
//! naming the field and the reason, and all of them are reported together.
//! `schemas/payment-event.schema.json` describes the same contract; a test keeps
//! the two in agreement over the corpus under `tests/corpus/`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::gmt8;
use object::TopLevel;

mod limits;
mod object;

pub use limits::{FieldLengths, Limits};

/// Default cap on a message value, in bytes; a real event is a few hundred.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;

/// The largest fee accepted, in fen: 2^53 - 1, so every JSON reader
/// (including JavaScript's) holds it exactly.
pub const MAX_PAY_FEE: u64 = (1 << 53) - 1;

/// `pay_time` must fall in [2000-01-01, 2100-01-01), whatever its form. For
/// epoch milliseconds the lower bound catches the common bug of sending
/// epoch *seconds*; for text it catches years like 0001.
pub const MIN_EPOCH_MILLIS: i64 = 946_684_800_000;
/// See [`MIN_EPOCH_MILLIS`].
pub const MAX_EPOCH_MILLIS: i64 = 4_102_444_800_000;

/// 1 = payment (缴款), 2 = refund (退款).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderType {
    Payment,
    Refund,
}

impl OrderType {
    /// The number the API expects.
    pub fn code(self) -> u8 {
        match self {
            OrderType::Payment => 1,
            OrderType::Refund => 2,
        }
    }
}

/// A validated payment or refund event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentEvent {
    pub car_no: String,
    pub order_id: String,
    pub park_id: String,
    pub pay_time: DateTime<Utc>,
    pub order_type: OrderType,
    /// Amount in fen (1/100 yuan).
    pub pay_fee: u64,
    pub pay_order_id: Option<String>,
    pub pay_method: Option<String>,
}

/// One thing wrong with an event: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field's snake_case name, or `event` for the message as a whole.
    pub field: &'static str,
    pub reason: String,
}

/// Why an event was refused; carries every problem found, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidEvent {
    pub problems: Vec<FieldProblem>,
}

impl InvalidEvent {
    fn whole(reason: impl Into<String>) -> Self {
        InvalidEvent {
            problems: vec![FieldProblem {
                field: WHOLE_EVENT,
                reason: reason.into(),
            }],
        }
    }

    /// The fields named, in order, without repeats.
    pub fn fields(&self) -> Vec<&'static str> {
        let mut fields: Vec<&'static str> = Vec::new();
        for problem in &self.problems {
            if !fields.contains(&problem.field) {
                fields.push(problem.field);
            }
        }
        fields
    }
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", problem.field, problem.reason)?;
        }
        Ok(())
    }
}

/// The pseudo-field used for problems with the message as a whole.
pub const WHOLE_EVENT: &str = "event";

/// Decodes and validates one Kafka message value.
pub fn decode(value: Option<&[u8]>, limits: &Limits) -> Result<PaymentEvent, InvalidEvent> {
    let max_bytes = limits.max_bytes;
    let bytes = match value {
        None => return Err(InvalidEvent::whole("has no value (a tombstone)")),
        Some([]) => return Err(InvalidEvent::whole("is empty")),
        Some(bytes) => bytes,
    };
    if bytes.len() > max_bytes {
        return Err(InvalidEvent::whole(format!(
            "is {} bytes, more than the {max_bytes} allowed",
            bytes.len()
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|error| {
        InvalidEvent::whole(format!(
            "is not valid UTF-8 (invalid byte at offset {})",
            error.valid_up_to()
        ))
    })?;
    let top: TopLevel = serde_json::from_str(text)
        .map_err(|error| InvalidEvent::whole(format!("is not valid JSON: {error}")))?;
    let object = match top {
        TopLevel::Object(object) => object,
        TopLevel::Other(kind) => {
            return Err(InvalidEvent::whole(format!(
                "must be a JSON object, got {kind}"
            )));
        }
    };
    let mut fields = Fields::new(&object.map, limits.max_chars);
    for key in &object.repeated {
        fields.repeated(key);
    }
    fields.event()
}

/// The DTO's fields: snake_case name and the camelCase alias.
const CAR_NO: (&str, &str) = ("car_no", "carNo");
const ORDER_ID: (&str, &str) = ("order_id", "orderId");
const PARK_ID: (&str, &str) = ("park_id", "parkId");
const PAY_TIME: (&str, &str) = ("pay_time", "payTime");
const ORDER_TYPE: (&str, &str) = ("order_type", "orderType");
const PAY_FEE: (&str, &str) = ("pay_fee", "payFee");
const PAY_ORDER_ID: (&str, &str) = ("pay_order_id", "payOrderId");
const PAY_METHOD: (&str, &str) = ("pay_method", "payMethod");

/// Every field's names, in the order problems are reported.
const ALL_FIELDS: [(&str, &str); 8] = [
    CAR_NO,
    ORDER_ID,
    PARK_ID,
    PAY_TIME,
    ORDER_TYPE,
    PAY_FEE,
    PAY_ORDER_ID,
    PAY_METHOD,
];

/// Collects problems while reading fields, so one pass reports all of them.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    max_chars: FieldLengths,
    problems: Vec<FieldProblem>,
}

impl<'a> Fields<'a> {
    fn new(object: &'a Map<String, Value>, max_chars: FieldLengths) -> Self {
        Fields {
            object,
            max_chars,
            problems: Vec::new(),
        }
    }

    /// A key the object gives more than once: ambiguous, so refused (keys
    /// this model does not know are ignored, repeated or not).
    fn repeated(&mut self, key: &str) {
        if let Some((snake, _)) = ALL_FIELDS
            .iter()
            .find(|(snake, camel)| key == *snake || key == *camel)
        {
            self.problem(snake, format!("is given more than once (as {key:?})"));
        }
    }

    fn event(mut self) -> Result<PaymentEvent, InvalidEvent> {
        let car_no = self.required_string(CAR_NO);
        let order_id = self.required_string(ORDER_ID);
        let park_id = self.required_string(PARK_ID);
        let pay_time = self.pay_time();
        let order_type = self.order_type();
        let pay_fee = self.pay_fee();
        let pay_order_id = self.optional_string(PAY_ORDER_ID);
        let pay_method = self.optional_string(PAY_METHOD);
        match (car_no, order_id, park_id, pay_time, order_type, pay_fee) {
            (
                Some(car_no),
                Some(order_id),
                Some(park_id),
                Some(pay_time),
                Some(order_type),
                Some(pay_fee),
            ) if self.problems.is_empty() => Ok(PaymentEvent {
                car_no,
                order_id,
                park_id,
                pay_time,
                order_type,
                pay_fee,
                pay_order_id,
                pay_method,
            }),
            _ => Err(InvalidEvent {
                problems: self.problems,
            }),
        }
    }

    fn problem(&mut self, field: &'static str, reason: impl Into<String>) {
        self.problems.push(FieldProblem {
            field,
            reason: reason.into(),
        });
    }

    /// The field's value under either name; `null` counts as absent.
    fn lookup(&mut self, (snake, camel): (&'static str, &'static str)) -> Option<&'a Value> {
        let by_snake = self.object.get(snake).filter(|v| !v.is_null());
        let by_camel = self.object.get(camel).filter(|v| !v.is_null());
        match (by_snake, by_camel) {
            (Some(_), Some(_)) => {
                self.problem(snake, format!("is given twice, as {snake} and {camel}"));
                None
            }
            (found, None) | (None, found) => found,
        }
    }

    fn required(&mut self, names: (&'static str, &'static str)) -> Option<&'a Value> {
        let duplicates_before = self.problems.len();
        let value = self.lookup(names);
        if value.is_none() && self.problems.len() == duplicates_before {
            self.problem(names.0, "is required");
        }
        value
    }

    fn required_string(&mut self, names: (&'static str, &'static str)) -> Option<String> {
        let value = self.required(names)?;
        match value {
            Value::String(s) if s.trim().is_empty() => {
                self.problem(names.0, "must not be empty");
                None
            }
            other => self.string(names.0, other),
        }
    }

    fn optional_string(&mut self, names: (&'static str, &'static str)) -> Option<String> {
        match self.lookup(names)? {
            // An empty optional value is the same as leaving it out: it is not sent.
            Value::String(s) if s.trim().is_empty() => None,
            other => self.string(names.0, other),
        }
    }

    /// A string value within its length and without control characters,
    /// or the problem with it.
    fn string(&mut self, field: &'static str, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => {
                let limit = self.max_chars.of(field);
                let length = s.chars().count();
                if length > limit {
                    self.problem(
                        field,
                        format!("is {length} characters long, more than the {limit} allowed"),
                    );
                    return None;
                }
                if let Some(position) = s.chars().position(char::is_control) {
                    self.problem(
                        field,
                        format!(
                            "must not contain control characters (one at character {position})"
                        ),
                    );
                    return None;
                }
                Some(s.clone())
            }
            other => {
                self.problem(field, format!("must be a string, got {}", type_name(other)));
                None
            }
        }
    }

    fn pay_time(&mut self) -> Option<DateTime<Utc>> {
        let field = PAY_TIME.0;
        let time = self.pay_time_any()?;
        let millis = time.timestamp_millis();
        if (MIN_EPOCH_MILLIS..MAX_EPOCH_MILLIS).contains(&millis) {
            return Some(time);
        }
        self.problem(
            field,
            format!("{} is outside 2000-01-01..2100-01-01", time.to_rfc3339()),
        );
        None
    }

    /// `pay_time` in any of its forms, before the plausibility check.
    fn pay_time_any(&mut self) -> Option<DateTime<Utc>> {
        let field = PAY_TIME.0;
        match self.required(PAY_TIME)? {
            Value::String(text) => {
                let parsed = gmt8::parse(text).or_else(|| {
                    DateTime::parse_from_rfc3339(text)
                        .ok()
                        .map(|t| t.with_timezone(&Utc))
                });
                if parsed.is_none() {
                    self.problem(
                        field,
                        format!(
                            "cannot be read as a time: {text:?} is neither \"yyyy-MM-dd HH:mm:ss\" (GMT+8) nor RFC 3339 with an offset"
                        ),
                    );
                }
                parsed
            }
            Value::Number(n) => match integer(n) {
                Some(millis) if (MIN_EPOCH_MILLIS..MAX_EPOCH_MILLIS).contains(&millis) => {
                    gmt8::from_epoch_millis(millis)
                }
                Some(millis) => {
                    self.problem(
                        field,
                        format!(
                            "epoch milliseconds {millis} is outside 2000-01-01..2100-01-01 (epoch seconds sent by mistake?)"
                        ),
                    );
                    None
                }
                None => {
                    self.problem(field, format!("must be whole epoch milliseconds, got {n}"));
                    None
                }
            },
            other => {
                self.problem(
                    field,
                    format!(
                        "must be a string or epoch milliseconds, got {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn order_type(&mut self) -> Option<OrderType> {
        let field = ORDER_TYPE.0;
        let value = self.required(ORDER_TYPE)?;
        let parsed = match value {
            Value::Number(n) => match integer(n) {
                Some(1) => Some(OrderType::Payment),
                Some(2) => Some(OrderType::Refund),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            self.problem(
                field,
                format!("must be 1 (payment) or 2 (refund), got {}", describe(value)),
            );
        }
        parsed
    }

    fn pay_fee(&mut self) -> Option<u64> {
        let field = PAY_FEE.0;
        match self.required(PAY_FEE)? {
            Value::Number(n) => match integer(n) {
                Some(fee) if fee < 0 => {
                    self.problem(field, format!("must not be negative, got {fee}"));
                    None
                }
                Some(fee) if fee as u64 > MAX_PAY_FEE => {
                    self.problem(
                        field,
                        format!("is too large ({fee} fen, at most {MAX_PAY_FEE})"),
                    );
                    None
                }
                Some(fee) => Some(fee as u64),
                None => {
                    self.problem(field, format!("must be a whole number of fen, got {n}"));
                    None
                }
            },
            other => {
                self.problem(
                    field,
                    format!("must be a whole number of fen, got {}", type_name(other)),
                );
                None
            }
        }
    }
}

/// A JSON number's value when it is a whole number that fits in `i64`
/// (`1000.0` counts, as in JSON Schema; `10.5` and `1e300` do not).
fn integer(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if n.as_u64().is_some() {
        return None;
    }
    let f = n.as_f64()?;
    // 2^63 as f64; anything at or beyond it does not fit.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && f > -LIMIT && f < LIMIT).then_some(f as i64)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {s:?}"),
        other => type_name(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn decode_str(text: &str) -> Result<PaymentEvent, InvalidEvent> {
        decode(Some(text.as_bytes()), &Limits::default())
    }

    const SEED: &str = r#"{"pay_order_id":"2020111112323232323","pay_method":"WX","car_no":"浙A888888","order_id":"BK212132334343","park_id":"p123456","pay_time":"2020-10-10 20:00:00","order_type":1,"pay_fee":1000}"#;

    #[test]
    fn decodes_the_seed_example() {
        let event = decode_str(SEED).unwrap();
        assert_eq!(event.car_no, "浙A888888");
        assert_eq!(event.order_type, OrderType::Payment);
        assert_eq!(event.pay_fee, 1000);
        assert_eq!(
            event.pay_time,
            Utc.with_ymd_and_hms(2020, 10, 10, 12, 0, 0).unwrap()
        );
        assert_eq!(event.pay_method.as_deref(), Some("WX"));
    }

    #[test]
    fn camel_case_aliases_decode_to_the_same_event() {
        let camel = r#"{"payOrderId":"2020111112323232323","payMethod":"WX","carNo":"浙A888888","orderId":"BK212132334343","parkId":"p123456","payTime":"2020-10-10 20:00:00","orderType":1,"payFee":1000}"#;
        assert_eq!(decode_str(camel).unwrap(), decode_str(SEED).unwrap());
    }

    #[test]
    fn all_three_time_forms_give_the_same_instant() {
        let instant = Utc.with_ymd_and_hms(2020, 10, 10, 12, 0, 0).unwrap();
        for pay_time in [
            r#""2020-10-10 20:00:00""#,
            r#""2020-10-10T12:00:00Z""#,
            r#""2020-10-10T20:00:00+08:00""#,
            "1602331200000",
        ] {
            let text = format!(
                r#"{{"car_no":"a","order_id":"b","park_id":"c","pay_time":{pay_time},"order_type":2,"pay_fee":0}}"#
            );
            assert_eq!(decode_str(&text).unwrap().pay_time, instant, "{pay_time}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let error = decode_str(
            r#"{"car_no":"","order_id":7,"pay_time":"yesterday","order_type":3,"pay_fee":-1}"#,
        )
        .unwrap_err();
        assert_eq!(
            error.fields(),
            vec![
                "car_no",
                "order_id",
                "park_id",
                "pay_time",
                "order_type",
                "pay_fee"
            ]
        );
        let text = error.to_string();
        assert!(text.contains("car_no: must not be empty"), "{text}");
        assert!(
            text.contains("order_id: must be a string, got a number"),
            "{text}"
        );
        assert!(text.contains("park_id: is required"), "{text}");
        assert!(
            text.contains("order_type: must be 1 (payment) or 2 (refund), got 3"),
            "{text}"
        );
        assert!(
            text.contains("pay_fee: must not be negative, got -1"),
            "{text}"
        );
    }

    #[test]
    fn hostile_values_are_refused_with_the_field_and_the_reason() {
        let with = |from: &str, to: &str| decode_str(&SEED.replace(from, to)).unwrap_err();
        let repeated =
            decode_str(&SEED.replace("\"pay_fee\":1000", "\"pay_fee\":1000,\"pay_fee\":9"))
                .unwrap_err();
        assert_eq!(repeated.fields(), ["pay_fee"]);
        assert!(
            repeated.to_string().contains("more than once"),
            "{repeated}"
        );
        let ancient = with("2020-10-10 20:00:00", "0001-01-01 00:00:00");
        assert_eq!(ancient.fields(), ["pay_time"]);
        assert!(
            ancient
                .to_string()
                .contains("outside 2000-01-01..2100-01-01")
        );
        let long = with("浙A888888", &"A".repeat(10_000));
        assert_eq!(
            long.to_string(),
            "car_no: is 10000 characters long, more than the 32 allowed"
        );
        let nul = with("浙A888888", "浙A\\u0000888888");
        assert_eq!(
            nul.to_string(),
            "car_no: must not contain control characters (one at character 2)"
        );
        // Keys this model does not know may repeat: they are ignored anyway.
        assert!(decode_str(&SEED.replace("{", "{\"x\":1,\"x\":2,")).is_ok());
        // Limits are configurable.
        let roomy = Limits {
            max_chars: FieldLengths {
                car_no: 20_000,
                ..FieldLengths::default()
            },
            ..Limits::default()
        };
        let text = SEED.replace("浙A888888", &"A".repeat(10_000));
        assert!(decode(Some(text.as_bytes()), &roomy).is_ok());
    }

    #[test]
    fn whole_message_problems_name_the_event() {
        let too_big = [b' '; 100];
        for (value, reason) in [
            (None, "tombstone"),
            (Some(&b""[..]), "is empty"),
            (Some(&b"\xff\xfe"[..]), "not valid UTF-8"),
            (Some(&b"{not json"[..]), "not valid JSON"),
            (Some(&b"[1,2]"[..]), "must be a JSON object, got an array"),
            (Some(&too_big[..]), "more than the 64 allowed"),
        ] {
            let limits = Limits {
                max_bytes: 64,
                ..Limits::default()
            };
            let error = decode(value, &limits).unwrap_err();
            assert_eq!(error.fields(), vec![WHOLE_EVENT]);
            assert!(error.to_string().contains(reason), "{error} lacks {reason}");
        }
    }

    #[test]
    fn a_field_given_under_both_names_is_refused() {
        let text = SEED.replace(r#""car_no":"#, r#""carNo":"x","car_no":"#);
        let error = decode_str(&text).unwrap_err();
        assert_eq!(
            error.to_string(),
            "car_no: is given twice, as car_no and carNo"
        );
    }

    #[test]
    fn fractional_and_huge_fees_are_refused() {
        for (fee, reason) in [
            ("10.5", "whole number of fen"),
            ("1e300", "whole number of fen"),
            ("18446744073709551615", "whole number of fen"),
            ("9007199254740992", "too large"),
            ("\"100\"", "got a string"),
        ] {
            let text = SEED.replace("\"pay_fee\":1000", &format!("\"pay_fee\":{fee}"));
            let error = decode_str(&text).unwrap_err();
            assert_eq!(error.fields(), vec!["pay_fee"], "{fee}");
            assert!(error.to_string().contains(reason), "{error}");
        }
        let whole = SEED.replace("\"pay_fee\":1000", "\"pay_fee\":1000.0");
        assert_eq!(decode_str(&whole).unwrap().pay_fee, 1000);
    }

    #[test]
    fn epoch_seconds_are_caught() {
        let text = SEED.replace(r#""2020-10-10 20:00:00""#, "1602331200");
        let error = decode_str(&text).unwrap_err();
        assert!(error.to_string().contains("epoch seconds"), "{error}");
    }

    #[test]
    fn null_and_empty_optionals_are_absent() {
        let text = SEED
            .replace(r#""WX""#, "null")
            .replace(r#""2020111112323232323""#, r#""""#);
        let event = decode_str(&text).unwrap();
        assert_eq!(event.pay_method, None);
        assert_eq!(event.pay_order_id, None);
    }

    #[test]
    fn deeply_nested_input_is_an_error_not_a_crash() {
        let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(decode_str(&text).is_err());
    }
}
