//! Reading the gateway's answer (`docs/top-protocol.md` §4).
//!
//! Three shapes arrive in an HTTP 200 body, as JSON or XML:
//! the wrapped success `{"taojie_parking_order_payinfo_sync_response":{"result":{…},"request_id":…}}`,
//! the `simplify=true` success `{"result":{…},"request_id":…}`, and
//! `{"error_response":{"code":…,"msg":…,"sub_code":…,"sub_msg":…,"request_id":…}}`.
//! XML bodies are turned into the same tree as JSON first, so one reader
//! interprets both. Scalars are read leniently (`"25"` and `25` are the same
//! code, `"true"` and `true` the same flag) because XML has no types. A body
//! that is neither JSON nor XML, or has none of these shapes, is a
//! [`ParseFailure`], which classification treats as a transport failure.

use serde_json::{Map, Value};

use crate::top::request::API_METHOD;

/// `result` of the API (`ParkBaseResult`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BusinessResult {
    pub code: Option<String>,
    /// "接口是否调用成功": the service handled the call.
    pub success: Option<bool>,
    /// "数据是否同步成功": the data was accepted.
    pub model: Option<bool>,
    pub message: Option<String>,
}

/// The platform's `error_response`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorResponse {
    pub code: i64,
    pub msg: Option<String>,
    pub sub_code: Option<String>,
    pub sub_msg: Option<String>,
}

/// A parsed gateway answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopResponse {
    Result(BusinessResult),
    Error(ErrorResponse),
}

/// A parsed answer and the gateway's request id, when it sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedResponse {
    pub response: TopResponse,
    pub request_id: Option<String>,
}

/// Why a body could not be read as a gateway answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable response body: {reason}")]
pub struct ParseFailure {
    pub reason: String,
}

impl ParseFailure {
    fn new(reason: impl Into<String>) -> Self {
        ParseFailure {
            reason: reason.into(),
        }
    }
}

/// The wrapper name for this API: the method minus `taobao.`, dots as `_`,
/// plus `_response`. Built once: every answer is looked up by it.
pub fn response_root() -> &'static str {
    static ROOT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let name = API_METHOD.strip_prefix("taobao.").unwrap_or(API_METHOD);
        format!("{}_response", name.replace('.', "_"))
    });
    &ROOT
}

/// Parses a response body, JSON or XML, whatever the `format` asked for.
pub fn parse(body: &[u8]) -> Result<ParsedResponse, ParseFailure> {
    let text = std::str::from_utf8(body).map_err(|_| ParseFailure::new("not UTF-8"))?;
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let tree = match trimmed.chars().next() {
        Some('{') => serde_json::from_str::<Value>(trimmed)
            .map_err(|error| ParseFailure::new(format!("invalid JSON: {error}")))?,
        Some('<') => xml_to_tree(trimmed)?,
        Some(_) => return Err(ParseFailure::new("neither JSON nor XML")),
        None => return Err(ParseFailure::new("empty body")),
    };
    interpret(&tree)
}

fn interpret(tree: &Value) -> Result<ParsedResponse, ParseFailure> {
    let root = tree
        .as_object()
        .ok_or_else(|| ParseFailure::new("the body is not an object"))?;
    if let Some(error) = root.get("error_response") {
        let error = error
            .as_object()
            .ok_or_else(|| ParseFailure::new("error_response is not an object"))?;
        let code = error
            .get("code")
            .and_then(as_code)
            .ok_or_else(|| ParseFailure::new("error_response has no numeric code"))?;
        return Ok(ParsedResponse {
            response: TopResponse::Error(ErrorResponse {
                code,
                msg: text_field(error, "msg"),
                sub_code: text_field(error, "sub_code"),
                sub_msg: text_field(error, "sub_msg"),
            }),
            request_id: text_field(error, "request_id"),
        });
    }
    // The wrapped form, or `simplify=true` where the root is the response itself.
    // The companion APIs (orderamount.sync) wrap theirs in their own name.
    let wrapper = root.get(response_root()).or_else(|| {
        root.iter()
            .find(|(name, _)| name.starts_with("taojie_parking_") && name.ends_with("_response"))
            .map(|(_, inner)| inner)
    });
    let inner = match wrapper {
        Some(Value::Object(inner)) => inner,
        Some(_) => return Err(ParseFailure::new("the response wrapper is not an object")),
        None if root.contains_key("result") => root,
        None => {
            return Err(ParseFailure::new(format!(
                "no {} or error_response in the body",
                response_root()
            )));
        }
    };
    let result = inner
        .get("result")
        .and_then(Value::as_object)
        .ok_or_else(|| ParseFailure::new("the response has no result object"))?;
    Ok(ParsedResponse {
        response: TopResponse::Result(BusinessResult {
            code: text_field(result, "code"),
            success: result.get("success").and_then(as_flag),
            model: result.get("model").and_then(as_flag),
            message: text_field(result, "message"),
        }),
        request_id: text_field(inner, "request_id"),
    })
}

fn text_field(object: &Map<String, Value>, name: &str) -> Option<String> {
    match object.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn as_code(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_flag(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Turns an XML document into the JSON-shaped tree [`interpret`] reads:
/// an element with child elements becomes an object, a leaf its text.
fn xml_to_tree(text: &str) -> Result<Value, ParseFailure> {
    let document = roxmltree::Document::parse(text)
        .map_err(|error| ParseFailure::new(format!("invalid XML: {error}")))?;
    let root = document.root_element();
    let mut top = Map::new();
    top.insert(root.tag_name().name().to_owned(), element_to_value(root));
    Ok(Value::Object(top))
}

fn element_to_value(node: roxmltree::Node<'_, '_>) -> Value {
    let children: Vec<_> = node.children().filter(|c| c.is_element()).collect();
    if children.is_empty() {
        return Value::String(node.text().unwrap_or_default().trim().to_owned());
    }
    let mut object = Map::new();
    for child in children {
        object.insert(child.tag_name().name().to_owned(), element_to_value(child));
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(body: &str) -> Result<ParsedResponse, ParseFailure> {
        parse(body.as_bytes())
    }

    fn result(code: &str, success: bool, model: bool, message: &str) -> TopResponse {
        TopResponse::Result(BusinessResult {
            code: Some(code.into()),
            success: Some(success),
            model: Some(model),
            message: Some(message.into()),
        })
    }

    #[test]
    fn root_name_follows_the_naming_rule() {
        assert_eq!(
            response_root(),
            "taojie_parking_order_payinfo_sync_response"
        );
    }

    #[test]
    fn reads_the_wrapped_json_success() {
        let parsed = parse_str(r#"{"taojie_parking_order_payinfo_sync_response":{"result":{"code":"404","success":true,"model":true,"message":"未找到"},"request_id":"12lrwo62x58py"}}"#).unwrap();
        assert_eq!(parsed.response, result("404", true, true, "未找到"));
        assert_eq!(parsed.request_id.as_deref(), Some("12lrwo62x58py"));
    }

    #[test]
    fn reads_the_simplified_json_success() {
        let parsed = parse_str(r#"{"result":{"code":"404","success":true,"model":false,"message":"未找到"},"request_id":"12lrwo62x58py"}"#).unwrap();
        assert_eq!(parsed.response, result("404", true, false, "未找到"));
        assert_eq!(parsed.request_id.as_deref(), Some("12lrwo62x58py"));
    }

    #[test]
    fn reads_json_errors_with_and_without_sub_codes() {
        let parsed = parse_str(r#"{"error_response":{"code":15,"msg":"Remote service error","sub_code":"isv.invalid-parameter","sub_msg":"非法参数","request_id":"ej6ptuzf712n"}}"#).unwrap();
        assert_eq!(
            parsed.response,
            TopResponse::Error(ErrorResponse {
                code: 15,
                msg: Some("Remote service error".into()),
                sub_code: Some("isv.invalid-parameter".into()),
                sub_msg: Some("非法参数".into()),
            })
        );
        assert_eq!(parsed.request_id.as_deref(), Some("ej6ptuzf712n"));
        let bare =
            parse_str(r#"{"error_response":{"code":"25","msg":"Invalid signature"}}"#).unwrap();
        assert!(matches!(
            bare.response,
            TopResponse::Error(ErrorResponse {
                code: 25,
                sub_code: None,
                ..
            })
        ));
        assert_eq!(bare.request_id, None);
    }

    #[test]
    fn reads_the_seed_xml_bodies() {
        let success = parse_str("<?xml version=\"1.0\" encoding=\"utf-8\" ?><taojie_parking_order_payinfo_sync_response><result><code>404</code><success>true</success><model>true</model><message>未找到</message></result><request_id>iwvv5be4o1c1</request_id></taojie_parking_order_payinfo_sync_response><!--top011184081134.na62-->").unwrap();
        assert_eq!(success.response, result("404", true, true, "未找到"));
        assert_eq!(success.request_id.as_deref(), Some("iwvv5be4o1c1"));

        let error = parse_str("<error_response>\n    <code>50</code>\n    <msg>Remote service error</msg>\n    <sub_code>isv.invalid-parameter</sub_code>\n    <sub_msg>非法参数</sub_msg>\n</error_response>").unwrap();
        assert!(matches!(
            error.response,
            TopResponse::Error(ErrorResponse { code: 50, ref sub_code, .. }) if sub_code.as_deref() == Some("isv.invalid-parameter")
        ));
    }

    #[test]
    fn xml_entities_are_decoded() {
        let parsed = parse_str(
            "<error_response><code>41</code><msg>Invalid arguments:a&amp;b</msg></error_response>",
        )
        .unwrap();
        assert!(
            matches!(parsed.response, TopResponse::Error(ErrorResponse { ref msg, .. }) if msg.as_deref() == Some("Invalid arguments:a&b"))
        );
    }

    #[test]
    fn anything_else_is_a_parse_failure_not_a_panic() {
        for body in [
            "",
            "   ",
            "<html><body>502 Bad Gateway</body></html>",
            "Bad Gateway",
            "{\"unexpected\":1}",
            "{\"error_response\":{\"msg\":\"no code\"}}",
            "{\"result\":\"not an object\"}",
            "{truncated",
            "<unclosed>",
            "[1,2,3]",
        ] {
            assert!(parse_str(body).is_err(), "{body:?}");
        }
        assert!(parse(b"\xff\xfe").is_err());
    }
}
