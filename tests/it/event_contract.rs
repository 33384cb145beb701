//! The event contract: `schemas/payment-event.schema.json` and the decoder in
//! `paysync::event` must agree, on the corpus under `tests/corpus/` and on
//! generated objects; and no input, however broken, makes the decoder panic.
//!
//! Corpus files under `invalid/` are named `<field>--<case>.json`: the
//! decoder's error must name that field (`event` for the message as a whole).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use paysync::event::{self, Limits, WHOLE_EVENT};
use proptest::prelude::*;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value, json};

/// Compiled once: the property test checks thousands of objects.
static SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/payment-event.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
});

fn schema() -> &'static jsonschema::Validator {
    &SCHEMA
}

/// Whether the schema accepts these bytes: bytes that are not I-JSON (not
/// JSON, or an object with a key given twice) are refused, as the schema's
/// description says.
fn schema_accepts(validator: &jsonschema::Validator, bytes: &[u8]) -> bool {
    if repeats_a_top_level_key(bytes) {
        return false;
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => validator.is_valid(&value),
        Err(_) => false,
    }
}

/// Whether the top-level object gives a key twice.
fn repeats_a_top_level_key(bytes: &[u8]) -> bool {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut repeated = false;
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                repeated |= !seen.insert(key);
            }
            Ok(repeated)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    deserializer.deserialize_map(Keys).unwrap_or(false)
}

fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn valid_corpus_passes_both_the_schema_and_the_decoder() {
    let validator = schema();
    let files = corpus("valid");
    assert!(files.len() >= 10, "the valid corpus is too small");
    for (name, bytes) in files {
        assert!(schema_accepts(validator, &bytes), "schema refuses {name}");
        if let Err(error) = event::decode(Some(&bytes), &Limits::default()) {
            panic!("decoder refuses {name}: {error}");
        }
    }
}

#[test]
fn invalid_corpus_fails_both_and_the_error_names_the_field() {
    let validator = schema();
    let files = corpus("invalid");
    assert!(files.len() >= 20, "the invalid corpus is too small");
    for (name, bytes) in files {
        let (field, _) = name
            .split_once("--")
            .expect("invalid corpus files are named <field>--<case>");
        assert!(!schema_accepts(validator, &bytes), "schema accepts {name}");
        let error = event::decode(Some(&bytes), &Limits::default())
            .expect_err(&format!("decoder accepts {name}"));
        assert!(
            error.fields().contains(&field),
            "{name}: expected the error to name {field}, got: {error}"
        );
    }
}

#[test]
fn camel_and_snake_case_decode_identically() {
    let read = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus/valid")
            .join(name);
        event::decode(Some(&std::fs::read(path).unwrap()), &Limits::default()).unwrap()
    };
    assert_eq!(read("seed.json"), read("camel-case.json"));
}

/// A value for one field, drawn from shapes that matter to both validators.
fn field_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        Just(Some(json!(""))),
        Just(Some(json!("  "))),
        Just(Some(json!("浙A888888"))),
        Just(Some(json!("2020-10-10 20:00:00"))),
        Just(Some(json!("2020-10-10T20:00:00+08:00"))),
        Just(Some(json!("2020-10-10T20:00:00"))),
        Just(Some(json!(1))),
        Just(Some(json!(2))),
        Just(Some(json!(3))),
        Just(Some(json!(0))),
        Just(Some(json!(-1))),
        Just(Some(json!(10.5))),
        Just(Some(json!(1602331200000_i64))),
        Just(Some(json!(1602331200))),
        Just(Some(json!(true))),
        Just(Some(json!([1]))),
        Just(Some(json!({"a": 1}))),
    ]
}

const NAMES: [(&str, &str); 8] = [
    ("car_no", "carNo"),
    ("order_id", "orderId"),
    ("park_id", "parkId"),
    ("pay_time", "payTime"),
    ("order_type", "orderType"),
    ("pay_fee", "payFee"),
    ("pay_order_id", "payOrderId"),
    ("pay_method", "payMethod"),
];

fn event_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((field_value(), field_value()), NAMES.len()).prop_map(|values| {
        let mut object = Map::new();
        for ((snake, camel), (under_snake, under_camel)) in NAMES.iter().zip(values) {
            if let Some(value) = under_snake {
                object.insert((*snake).to_owned(), value);
            }
            if let Some(value) = under_camel {
                object.insert((*camel).to_owned(), value);
            }
        }
        Value::Object(object)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_and_errors_name_a_field(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(error) = event::decode(Some(&bytes), &Limits::default()) {
            prop_assert!(!error.problems.is_empty());
            let known = [WHOLE_EVENT, "car_no", "order_id", "park_id", "pay_time", "order_type", "pay_fee", "pay_order_id", "pay_method"];
            for field in error.fields() {
                prop_assert!(known.contains(&field), "unknown field {field}");
            }
        }
    }

    #[test]
    fn schema_and_decoder_agree_on_generated_objects(object in event_object()) {
        let validator = schema();
        let bytes = serde_json::to_vec(&object).unwrap();
        let decoded = event::decode(Some(&bytes), &Limits::default());
        prop_assert_eq!(
            validator.is_valid(&object),
            decoded.is_ok(),
            "object {} decoder said {:?}", object, decoded.err().map(|e| e.to_string())
        );
    }
}
