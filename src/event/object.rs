//! Reading a message's top level key by key: `serde_json`'s `Value` keeps
//! the last of a repeated key without a word, and an event that gives
//! `order_id` or `pay_fee` twice is ambiguous (which one was meant?).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The message's top level: an object read key by key (`serde_json`'s
/// `Value` would keep the last of a repeated key without a word), or the
/// kind of value it is instead.
pub(super) enum TopLevel {
    Object(KeyedObject),
    Other(&'static str),
}

pub(super) struct KeyedObject {
    pub(super) map: Map<String, Value>,
    /// Keys given more than once, each named once.
    pub(super) repeated: Vec<String>,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TopLevel, D::Error> {
        deserializer.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<TopLevel, A::Error> {
        let mut map = Map::new();
        let mut repeated = Vec::new();
        while let Some(key) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            if map.contains_key(&key) {
                if !repeated.contains(&key) {
                    repeated.push(key);
                }
            } else {
                map.insert(key, value);
            }
        }
        Ok(TopLevel::Object(KeyedObject { map, repeated }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<TopLevel, A::Error> {
        while access.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("null"))
    }
}
