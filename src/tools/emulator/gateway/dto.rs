//! Validating the business DTO (`pay_info_sync_dto`) as Miaojie's backend
//! would, and the two ways a problem with it is answered.

use serde_json::Value;

use super::render::Answer;
use super::{BadDataStyle, Gateway};
use crate::gmt8;
use crate::top::request::{DTO_PARAM, ORDER_AMOUNT_PARAM};

/// A DTO problem: the field, and whether it is missing or invalid.
pub(super) struct BadData {
    field: String,
    missing: bool,
}

/// Validates `parking_order_amount_dto`: every documented field present and
/// of its type, `total_amount` the sum of the lines (the natural reading).
pub(super) fn validate_order_amount(raw: Option<&str>) -> Result<Value, BadData> {
    let bad = |field: &str, missing: bool| BadData {
        field: field.to_owned(),
        missing,
    };
    let raw = raw.ok_or_else(|| bad(ORDER_AMOUNT_PARAM, true))?;
    let report: Value = serde_json::from_str(raw).map_err(|_| bad(ORDER_AMOUNT_PARAM, false))?;
    let total = match report.get("total_amount") {
        None | Some(Value::Null) => return Err(bad("total_amount", true)),
        Some(value) => value.as_u64().ok_or_else(|| bad("total_amount", false))?,
    };
    let lines = match report.get("order_amount_dtos") {
        None | Some(Value::Null) => return Err(bad("order_amount_dtos", true)),
        Some(value) => value
            .as_array()
            .ok_or_else(|| bad("order_amount_dtos", false))?,
    };
    let mut sum = 0;
    for line in lines {
        let field = |name: &str| line.get(name).filter(|v| !v.is_null());
        match field("order_type").and_then(Value::as_str) {
            None if field("order_type").is_none() => return Err(bad("order_type", true)),
            Some("ISV_ORDER" | "CITY_BRAIN_ORDER" | "MIAOJIE_ORDER") => {}
            _ => return Err(bad("order_type", false)),
        }
        sum += match field("order_amount") {
            None => return Err(bad("order_amount", true)),
            Some(value) => value.as_u64().ok_or_else(|| bad("order_amount", false))?,
        };
        match field("order_date") {
            None => return Err(bad("order_date", true)),
            Some(Value::String(date)) if gmt8::parse(date).is_some() => {}
            Some(_) => return Err(bad("order_date", false)),
        }
        match field("park_id") {
            None => return Err(bad("park_id", true)),
            Some(Value::String(park)) if !park.trim().is_empty() => {}
            Some(_) => return Err(bad("park_id", false)),
        }
        if let Some(ids) = field("order_ids")
            && !ids
                .as_array()
                .is_some_and(|ids| ids.iter().all(Value::is_string))
        {
            return Err(bad("order_ids", false));
        }
    }
    if sum != total {
        return Err(bad("total_amount", false));
    }
    Ok(report)
}

pub(super) fn validate_dto(raw: Option<&str>) -> Result<Value, BadData> {
    let missing = |field: &str| BadData {
        field: field.to_owned(),
        missing: true,
    };
    let invalid = |field: &str| BadData {
        field: field.to_owned(),
        missing: false,
    };
    let raw = raw.ok_or_else(|| missing(DTO_PARAM))?;
    let dto: Value = serde_json::from_str(raw).map_err(|_| invalid(DTO_PARAM))?;
    let object = dto.as_object().ok_or_else(|| invalid(DTO_PARAM))?;
    let field = |name: &str| object.get(name).filter(|v| !v.is_null());
    for name in ["car_no", "order_id", "park_id"] {
        match field(name) {
            None => return Err(missing(name)),
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            Some(_) => return Err(invalid(name)),
        }
    }
    match field("pay_time") {
        None => return Err(missing("pay_time")),
        Some(Value::String(s)) if gmt8::parse(s).is_some() => {}
        Some(_) => return Err(invalid("pay_time")),
    }
    // Numbers sent as digit strings are accepted (whether the backend does is UNCONFIRMED).
    let whole = |v: &Value| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    match field("order_type") {
        None => return Err(missing("order_type")),
        Some(v) if matches!(whole(v), Some(1 | 2)) => {}
        Some(_) => return Err(invalid("order_type")),
    }
    match field("pay_fee") {
        None => return Err(missing("pay_fee")),
        Some(v) if whole(v).is_some() => {}
        Some(_) => return Err(invalid("pay_fee")),
    }
    for name in ["pay_order_id", "pay_method"] {
        if field(name).is_some_and(|v| !v.is_string()) {
            return Err(invalid(name));
        }
    }
    Ok(dto)
}

impl Gateway {
    pub(super) fn bad_data(&self, bad: BadData) -> Answer {
        match (self.settings.bad_data_style, bad.missing) {
            (BadDataStyle::Codes40And41, true) => {
                Answer::error(40, format!("Missing required arguments:{}", bad.field))
            }
            (BadDataStyle::Codes40And41, false) => {
                Answer::error(41, format!("Invalid arguments:{}", bad.field))
            }
            (BadDataStyle::Code15, true) => Answer::sub(
                15,
                "Remote service error",
                "isv.missing-parameter",
                format!("缺少参数:{}", bad.field),
            ),
            (BadDataStyle::Code15, false) => Answer::sub(
                15,
                "Remote service error",
                "isv.invalid-parameter",
                format!("非法参数:{}", bad.field),
            ),
        }
    }
}
