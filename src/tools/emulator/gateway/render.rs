//! Writing an answer: the gateway's error or result, in JSON (wrapped in
//! `<api>_response`, or simplified) or XML, as the caller's `format` and
//! `simplify` ask.

use serde_json::json;

use super::wire::Reply;

/// A gateway answer before it is rendered.
pub(super) enum Answer {
    Error {
        code: i64,
        msg: String,
        sub_code: Option<String>,
        sub_msg: Option<String>,
    },
    Result {
        code: String,
        success: bool,
        model: bool,
        message: String,
    },
}

impl Answer {
    pub(super) fn error(code: i64, msg: impl Into<String>) -> Answer {
        Answer::Error {
            code,
            msg: msg.into(),
            sub_code: None,
            sub_msg: None,
        }
    }

    pub(super) fn sub(code: i64, msg: &str, sub_code: &str, sub_msg: impl Into<String>) -> Answer {
        Answer::Error {
            code,
            msg: msg.to_owned(),
            sub_code: Some(sub_code.to_owned()),
            sub_msg: Some(sub_msg.into()),
        }
    }

    /// The business answer of an accepted call.
    pub(super) fn accepted() -> Answer {
        Answer::Result {
            code: "200".into(),
            success: true,
            model: true,
            message: "成功".into(),
        }
    }

    pub(super) fn stats_key(&self) -> String {
        match self {
            Answer::Error { code, .. } => format!("error_{code}"),
            Answer::Result { success: false, .. } => "service_failure".into(),
            Answer::Result { model: false, .. } => "rejected".into(),
            Answer::Result { .. } => "accepted".into(),
        }
    }
}

/// How to render: the `format` and `simplify` the caller asked for.
#[derive(Clone, Copy)]
pub(super) struct Rendering {
    pub(super) json: bool,
    pub(super) simplify: bool,
    /// The success wrapper's name: the called API's.
    pub(super) root: &'static str,
}

pub(super) const XML_RENDERING: Rendering = Rendering {
    json: false,
    simplify: false,
    root: "taojie_parking_order_payinfo_sync_response",
};

/// The success wrapper of `orderamount.sync`'s answers.
pub(super) const ORDER_AMOUNT_ROOT: &str = "taojie_parking_orderamount_sync_response";

pub(super) fn render(rendering: Rendering, answer: &Answer, request_id: &str) -> Reply {
    let body = if rendering.json {
        render_json(rendering, answer, request_id)
    } else {
        render_xml(rendering.root, answer, request_id)
    };
    Reply::Http {
        status: 200,
        content_type: if rendering.json {
            "application/json;charset=UTF-8"
        } else {
            "text/xml;charset=UTF-8"
        },
        retry_after: None,
        body,
    }
}

pub(super) fn render_json(rendering: Rendering, answer: &Answer, request_id: &str) -> String {
    let value = match answer {
        Answer::Error {
            code,
            msg,
            sub_code,
            sub_msg,
        } => {
            let mut error = json!({"code": code, "msg": msg});
            if let Some(sub_code) = sub_code {
                error["sub_code"] = json!(sub_code);
            }
            if let Some(sub_msg) = sub_msg {
                error["sub_msg"] = json!(sub_msg);
            }
            error["request_id"] = json!(request_id);
            json!({"error_response": error})
        }
        Answer::Result {
            code,
            success,
            model,
            message,
        } => {
            let inner = json!({
                "result": {"code": code, "success": success, "model": model, "message": message},
                "request_id": request_id,
            });
            if rendering.simplify {
                inner
            } else {
                json!({ rendering.root: inner })
            }
        }
    };
    value.to_string()
}

pub(super) fn render_xml(root: &str, answer: &Answer, request_id: &str) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\" ?>");
    let element = |out: &mut String, name: &str, text: &str| {
        out.push_str(&format!("<{name}>{}</{name}>", xml_escape(text)));
    };
    match answer {
        Answer::Error {
            code,
            msg,
            sub_code,
            sub_msg,
        } => {
            out.push_str("<error_response>");
            element(&mut out, "code", &code.to_string());
            element(&mut out, "msg", msg);
            if let Some(sub_code) = sub_code {
                element(&mut out, "sub_code", sub_code);
            }
            if let Some(sub_msg) = sub_msg {
                element(&mut out, "sub_msg", sub_msg);
            }
            element(&mut out, "request_id", request_id);
            out.push_str("</error_response>");
        }
        Answer::Result {
            code,
            success,
            model,
            message,
        } => {
            out.push_str(&format!("<{root}><result>"));
            element(&mut out, "code", code);
            element(&mut out, "success", &success.to_string());
            element(&mut out, "model", &model.to_string());
            element(&mut out, "message", message);
            out.push_str("</result>");
            element(&mut out, "request_id", request_id);
            out.push_str(&format!("</{root}>"));
        }
    }
    out.push_str("<!--top.emulator.paysync-->");
    out
}

pub(super) fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
