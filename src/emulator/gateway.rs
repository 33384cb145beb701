//! The emulated gateway's decision for one request: the checks of
//! top-protocol.md §7 in order, the injected faults, and the answer in JSON or
//! XML. Transport-free, so it is tested without sockets.
//!
//! Check order (the real order is UNCONFIRMED; this one reports the most
//! fundamental problem first): encoding (47) → method (21) → app_key (28/29)
//! → sign (24) → timestamp (30/31) → v (32/33/34) → format (23) → signature
//! (25) → API name (22) → permission (11) → session (26/27) → flow control (7)
//! → DTO (40/41, or 15 + `isv.*`) → backend faults (10, 15 + `isp.*`,
//! `success=false`) → business rejection (`model=false`) → accepted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::emulator::faults::{Faults, FlowControl};
use crate::emulator::journal::{AcceptedOrder, Journal};
use crate::top::datetime;
use crate::top::request::{API_METHOD, API_VERSION, DTO_PARAM};
use crate::top::response::response_root;
use crate::top::sign::{self, EmptyValues, SignMethod};

/// How bad DTO data is reported; which one Miaojie's backend uses is UNCONFIRMED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BadDataStyle {
    /// 40 `Missing required arguments:<field>` / 41 `Invalid arguments:<field>`.
    #[default]
    Codes40And41,
    /// 15 `Remote service error` with `isv.missing-parameter` / `isv.invalid-parameter`.
    Code15,
}

/// A request as it arrived, before any decoding.
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// What the transport should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Close the connection without answering.
    Drop,
    Http {
        status: u16,
        content_type: &'static str,
        retry_after: Option<u64>,
        body: String,
    },
}

/// Counters exposed at `GET /emulator/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Requests that arrived (counted before any latency is added).
    pub received: u64,
    /// Requests answered (or dropped).
    pub requests: u64,
    pub accepted: u64,
    pub duplicates: u64,
    /// Answers by kind: `accepted`, `rejected`, `service_failure`, `error_<code>`,
    /// `http_502`, `http_503`, `dropped`.
    pub answers: HashMap<String, u64>,
    /// Accepted orders per wall-clock second (unix seconds), the last hour.
    pub accepted_per_second: BTreeMap<i64, u64>,
}

/// How many seconds `accepted_per_second` keeps.
const PER_SECOND_HISTORY: usize = 3_600;

/// Static settings of an emulated gateway.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Known apps: app key → secret.
    pub apps: HashMap<String, SecretString>,
    /// When set, `session` is required and must be one of these.
    pub sessions: Option<HashSet<String>>,
    /// Accepted clock difference for `timestamp`.
    pub max_skew: Duration,
    pub bad_data_style: BadDataStyle,
    /// Seeds fault draws, for reproducible runs.
    pub seed: Option<u64>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            apps: HashMap::new(),
            sessions: None,
            max_skew: Duration::from_secs(600),
            bad_data_style: BadDataStyle::default(),
            seed: None,
        }
    }
}

/// The emulated gateway's state, shared by every connection.
pub struct Gateway {
    settings: GatewaySettings,
    faults: RwLock<Faults>,
    flow: Mutex<FlowControl>,
    rng: Mutex<StdRng>,
    journal: Mutex<Journal>,
    stats: Mutex<Stats>,
}

/// A gateway answer before it is rendered.
enum Answer {
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
    fn error(code: i64, msg: impl Into<String>) -> Answer {
        Answer::Error {
            code,
            msg: msg.into(),
            sub_code: None,
            sub_msg: None,
        }
    }

    fn sub(code: i64, msg: &str, sub_code: &str, sub_msg: impl Into<String>) -> Answer {
        Answer::Error {
            code,
            msg: msg.to_owned(),
            sub_code: Some(sub_code.to_owned()),
            sub_msg: Some(sub_msg.into()),
        }
    }

    fn stats_key(&self) -> String {
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
struct Rendering {
    json: bool,
    simplify: bool,
}

const XML_RENDERING: Rendering = Rendering {
    json: false,
    simplify: false,
};

impl Gateway {
    pub fn new(settings: GatewaySettings, faults: Faults, journal: Journal) -> Gateway {
        let rng = match settings.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Gateway {
            settings,
            faults: RwLock::new(faults),
            flow: Mutex::new(FlowControl::default()),
            rng: Mutex::new(rng),
            journal: Mutex::new(journal),
            stats: Mutex::new(Stats::default()),
        }
    }

    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.write().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// Starts the counters again (the journal is kept).
    pub fn reset_stats(&self) {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = Stats::default();
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn orders(&self) -> Vec<AcceptedOrder> {
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .orders()
            .to_vec()
    }

    /// (accepted calls, distinct orders, duplicate calls).
    pub fn order_counts(&self) -> (usize, usize, usize) {
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counts()
    }

    fn draw(&self, rate: f64) -> bool {
        rate > 0.0
            && self
                .rng
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random_bool(rate.min(1.0))
    }

    fn count(&self, key: String) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.requests += 1;
        *stats.answers.entry(key).or_insert(0) += 1;
    }

    /// Answers one request, with the configured latency and faults.
    pub async fn handle(&self, request: RawRequest) -> Reply {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .received += 1;
        let faults = self.faults();
        let jitter = if faults.latency_jitter_ms > 0 {
            self.rng
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random_range(0..=faults.latency_jitter_ms)
        } else {
            0
        };
        let latency = faults.latency_ms + jitter;
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if self.draw(faults.drop_connection_rate) {
            self.count("dropped".into());
            return Reply::Drop;
        }
        if self.draw(faults.http_502_rate) {
            self.count("http_502".into());
            return Reply::Http {
                status: 502,
                content_type: "text/html",
                retry_after: None,
                body: "<html><body><h1>502 Bad Gateway</h1></body></html>".into(),
            };
        }
        if self.draw(faults.http_503_rate) {
            self.count("http_503".into());
            return Reply::Http {
                status: 503,
                content_type: "text/html",
                retry_after: Some(1),
                body: "<html><body><h1>503 Service Unavailable</h1></body></html>".into(),
            };
        }
        let (rendering, answer, request_id) =
            self.answer(&request, &faults, Utc::now(), Instant::now());
        self.count(answer.stats_key());
        render(rendering, &answer, &request_id)
    }

    fn answer(
        &self,
        request: &RawRequest,
        faults: &Faults,
        now: DateTime<Utc>,
        instant: Instant,
    ) -> (Rendering, Answer, String) {
        let request_id = self.request_id();
        let params = match merge_params(request) {
            Ok(params) => params,
            Err(rendering) => {
                return (rendering, Answer::error(47, "Invalid encoding"), request_id);
            }
        };
        let get = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.trim().is_empty())
        };
        let rendering = Rendering {
            json: get("format") == Some("json"),
            simplify: get("simplify") == Some("true"),
        };
        let answer = self.check(&params, faults, now, instant, &request_id);
        let rendering = match get("format") {
            Some("json") | Some("xml") | None => rendering,
            Some(_) => XML_RENDERING,
        };
        (rendering, answer, request_id)
    }

    fn check(
        &self,
        params: &HashMap<String, String>,
        faults: &Faults,
        now: DateTime<Utc>,
        instant: Instant,
        request_id: &str,
    ) -> Answer {
        let get = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.trim().is_empty())
        };
        let Some(method) = get("method") else {
            return Answer::error(21, "Missing method");
        };
        let Some(app_key) = get("app_key") else {
            return Answer::error(28, "Missing app key");
        };
        let Some(secret) = self.settings.apps.get(app_key) else {
            return Answer::sub(
                29,
                "Invalid app Key",
                "isv.appkey-not-exists",
                format!("app key {app_key} does not exist"),
            );
        };
        let Some(sent_sign) = get("sign") else {
            return Answer::error(24, "Missing signature");
        };
        let Some(timestamp) = get("timestamp") else {
            return Answer::error(30, "Missing timestamp");
        };
        match parse_timestamp(timestamp) {
            Some(sent)
                if (now - sent)
                    .abs()
                    .to_std()
                    .is_ok_and(|skew| skew <= self.settings.max_skew) => {}
            Some(_) => {
                return Answer::sub(
                    31,
                    "Invalid timestamp",
                    "isv.invalid-timestamp",
                    "timestamp is outside the allowed 10 minutes",
                );
            }
            None => {
                return Answer::sub(
                    31,
                    "Invalid timestamp",
                    "isv.invalid-timestamp",
                    "timestamp is neither yyyy-MM-dd HH:mm:ss (GMT+8) nor epoch milliseconds",
                );
            }
        }
        match get("v") {
            None => return Answer::error(32, "Missing version"),
            Some(API_VERSION) => {}
            Some("1.0") => return Answer::error(34, "Unsupported version"),
            Some(_) => return Answer::error(33, "Invalid version"),
        }
        if !matches!(get("format"), None | Some("json") | Some("xml")) {
            return Answer::error(23, "Invalid format");
        }
        // The Java SDK treats an absent sign_method as md5.
        let sign_method = match get("sign_method").map(str::parse::<SignMethod>) {
            None => SignMethod::Md5,
            Some(Ok(method)) => method,
            Some(Err(unknown)) => {
                return Answer::sub(
                    25,
                    "Invalid signature",
                    "isv.invalid-sign-method",
                    unknown.to_string(),
                );
            }
        };
        if !signature_matches(params, sign_method, secret, sent_sign) {
            return Answer::error(25, "Invalid signature");
        }
        if method != API_METHOD {
            return Answer::sub(
                22,
                "Invalid method",
                "isv.method-not-exists",
                format!("{method} is not an API here"),
            );
        }
        if faults.permission_denied {
            return Answer::sub(
                11,
                "Insufficient isv permissions",
                "isv.permission-api-package-limit",
                "the app has no permission for this API",
            );
        }
        if let Some(sessions) = &self.settings.sessions {
            match get("session") {
                None => return Answer::error(26, "Missing session"),
                Some(session) if !sessions.contains(session) => {
                    return Answer::sub(
                        27,
                        "Invalid session",
                        "invalid-sessionkey",
                        "the session key is invalid or expired",
                    );
                }
                Some(_) => {}
            }
        }
        if let Some(limit) = &faults.rate_limit {
            let admitted = self
                .flow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .admit(app_key, limit, instant);
            if let Err(remaining) = admitted {
                let seconds = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
                return Answer::sub(
                    7,
                    "App Call Limited",
                    "accesscontrol.limited-by-app-access-count",
                    format!("This ban will last for {seconds} more seconds"),
                );
            }
        }
        let order = match validate_dto(get(DTO_PARAM)) {
            Ok(order) => order,
            Err(bad) => return self.bad_data(bad),
        };
        if self.draw(faults.unavailable_rate) {
            return Answer::error(10, "Service currently unavailable");
        }
        if self.draw(faults.isp_error_rate) {
            return Answer::sub(
                15,
                "Remote service error",
                "isp.top-remote-connection-error",
                "远程服务连接错误",
            );
        }
        if self.draw(faults.service_failure_rate) {
            return Answer::Result {
                code: "500".into(),
                success: false,
                model: false,
                message: "系统繁忙".into(),
            };
        }
        let order_id = order
            .get("order_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if faults.reject_order_ids.iter().any(|id| id == order_id) || self.draw(faults.reject_rate)
        {
            return Answer::Result {
                code: faults.reject_code.clone(),
                success: true,
                model: false,
                message: faults.reject_message.clone(),
            };
        }
        let accepted = AcceptedOrder {
            request_id: request_id.to_owned(),
            received_at: now.to_rfc3339(),
            app_key: app_key.to_owned(),
            sign_method: sign_method.as_str().to_owned(),
            order,
            duplicate: false,
        };
        let recorded = self
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(accepted);
        match recorded {
            Ok(duplicate) => {
                let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                stats.accepted += 1;
                stats.duplicates += u64::from(duplicate);
                *stats
                    .accepted_per_second
                    .entry(now.timestamp())
                    .or_insert(0) += 1;
                if stats.accepted_per_second.len() > PER_SECOND_HISTORY {
                    stats.accepted_per_second.pop_first();
                }
                Answer::Result {
                    code: "200".into(),
                    success: true,
                    model: true,
                    message: "成功".into(),
                }
            }
            // The journal is the emulator's durable record: if it cannot be
            // written the order was not accepted, and the caller must retry.
            Err(_) => Answer::sub(
                15,
                "Remote service error",
                "isp.journal-write-failed",
                "the emulator could not record the order",
            ),
        }
    }

    fn bad_data(&self, bad: BadData) -> Answer {
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

    /// 13 lowercase base-36 characters, like the real gateway's ids.
    fn request_id(&self) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        (0..13)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    }
}

/// Merges query and form body; the query wins when a name is in both
/// (precedence at the real gateway is UNCONFIRMED). Bytes that are not UTF-8
/// after percent-decoding fail the request (code 47).
fn merge_params(request: &RawRequest) -> Result<HashMap<String, String>, Rendering> {
    let mut params = HashMap::new();
    let is_form = request.content_type.as_deref().is_none_or(|ct| {
        ct.trim()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    if is_form {
        decode_form(&request.body, &mut params).map_err(|_| XML_RENDERING)?;
    }
    if let Some(query) = &request.query {
        let mut from_query = HashMap::new();
        decode_form(query.as_bytes(), &mut from_query).map_err(|_| XML_RENDERING)?;
        params.extend(from_query);
    }
    Ok(params)
}

fn decode_form(input: &[u8], out: &mut HashMap<String, String>) -> Result<(), ()> {
    for pair in input.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        out.insert(decode_component(name)?, decode_component(value)?);
    }
    Ok(())
}

fn decode_component(raw: &[u8]) -> Result<String, ()> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes).map_err(|_| ())
}

/// GMT+8 `yyyy-MM-dd HH:mm:ss`, or epoch milliseconds (the official Python SDK).
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if text.len() >= 12 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().and_then(datetime::from_epoch_millis);
    }
    datetime::parse(text)
}

/// Java-style (empty values dropped) or PHP/Python-style (empty values signed);
/// hex compared without regard to case (every SDK sends uppercase).
fn signature_matches(
    params: &HashMap<String, String>,
    method: SignMethod,
    secret: &SecretString,
    sent: &str,
) -> bool {
    [EmptyValues::Drop, EmptyValues::Keep]
        .into_iter()
        .any(|empty| {
            let base =
                sign::string_to_sign(params.iter().map(|(k, v)| (k.as_str(), v.as_str())), empty);
            sign::digest(method, secret, &base).eq_ignore_ascii_case(sent.trim())
        })
}

/// A DTO problem: the field, and whether it is missing or invalid.
struct BadData {
    field: String,
    missing: bool,
}

fn validate_dto(raw: Option<&str>) -> Result<Value, BadData> {
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
        Some(Value::String(s)) if datetime::parse(s).is_some() => {}
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

fn render(rendering: Rendering, answer: &Answer, request_id: &str) -> Reply {
    let body = if rendering.json {
        render_json(rendering, answer, request_id)
    } else {
        render_xml(answer, request_id)
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

fn render_json(rendering: Rendering, answer: &Answer, request_id: &str) -> String {
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
                json!({ response_root(): inner })
            }
        }
    };
    value.to_string()
}

fn render_xml(answer: &Answer, request_id: &str) -> String {
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
            let root = response_root();
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

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::response::{self, TopResponse};

    fn gateway() -> Gateway {
        let settings = GatewaySettings {
            apps: HashMap::from([("12345678".to_owned(), SecretString::from("helloworld"))]),
            seed: Some(7),
            ..GatewaySettings::default()
        };
        Gateway::new(settings, Faults::default(), Journal::new(None).unwrap())
    }

    const DTO: &str = r#"{"car_no":"浙A888888","order_id":"BK1","order_type":1,"park_id":"p1","pay_fee":1000,"pay_time":"2020-10-10 20:00:00"}"#;

    fn signed(params: &[(&str, &str)], method: SignMethod) -> String {
        let mut all: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sign = sign::sign(
            method,
            &SecretString::from("helloworld"),
            all.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        all.push(("sign".into(), sign));
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &all {
            serializer.append_pair(k, v);
        }
        serializer.finish()
    }

    fn base_params(timestamp: &str, method: SignMethod) -> Vec<(&'static str, String)> {
        vec![
            ("method", API_METHOD.into()),
            ("app_key", "12345678".into()),
            ("timestamp", timestamp.into()),
            ("v", "2.0".into()),
            ("format", "json".into()),
            ("sign_method", method.as_str().into()),
            (DTO_PARAM, DTO.into()),
        ]
    }

    async fn send_body(gateway: &Gateway, body: String) -> TopResponse {
        let reply = gateway
            .handle(RawRequest {
                query: None,
                content_type: None,
                body: body.into_bytes(),
            })
            .await;
        let Reply::Http {
            status: 200, body, ..
        } = reply
        else {
            panic!("unexpected {reply:?}")
        };
        response::parse(body.as_bytes()).unwrap().response
    }

    fn error_code(response: &TopResponse) -> Option<i64> {
        match response {
            TopResponse::Error(e) => Some(e.code),
            TopResponse::Result(_) => None,
        }
    }

    #[tokio::test]
    async fn everything_in_the_body_with_epoch_millis_is_accepted() {
        let gateway = gateway();
        let now = Utc::now().timestamp_millis().to_string();
        let params = base_params(&now, SignMethod::Md5);
        let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = send_body(&gateway, signed(&refs, SignMethod::Md5)).await;
        assert!(
            matches!(response, TopResponse::Result(ref r) if r.success == Some(true) && r.model == Some(true)),
            "{response:?}"
        );
        assert_eq!(gateway.order_counts(), (1, 1, 0));
    }

    #[tokio::test]
    async fn empty_values_signed_php_style_are_accepted() {
        let gateway = gateway();
        let now = datetime::format(Utc::now());
        let mut params = base_params(&now, SignMethod::Md5);
        params.push(("partner_id", String::new()));
        let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let base = sign::string_to_sign(refs.iter().copied(), EmptyValues::Keep);
        let php_sign = sign::digest(SignMethod::Md5, &SecretString::from("helloworld"), &base);
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &refs {
            serializer.append_pair(k, v);
        }
        serializer.append_pair("sign", &php_sign);
        let response = send_body(&gateway, serializer.finish()).await;
        assert_eq!(error_code(&response), None, "{response:?}");
    }

    #[tokio::test]
    async fn protocol_checks_answer_their_codes() {
        let gateway = gateway();
        let now = datetime::format(Utc::now());
        let stale = datetime::format(Utc::now() - chrono::Duration::minutes(11));
        let base = || base_params(&now, SignMethod::Md5);
        let without = |name: &str| -> Vec<(&'static str, String)> {
            base().into_iter().filter(|(k, _)| *k != name).collect()
        };
        let with = |name: &str, value: &str| -> Vec<(&'static str, String)> {
            base()
                .into_iter()
                .map(|(k, v)| {
                    if k == name {
                        (k, value.to_owned())
                    } else {
                        (k, v)
                    }
                })
                .collect()
        };
        let cases: Vec<(Vec<(&str, String)>, i64)> = vec![
            (without("method"), 21),
            (without("app_key"), 28),
            (with("app_key", "999"), 29),
            (without("timestamp"), 30),
            (base_params(&stale, SignMethod::Md5), 31),
            (base_params("yesterday", SignMethod::Md5), 31),
            (without("v"), 32),
            (with("v", "3.0"), 33),
            (with("format", "yaml"), 23),
            (with("method", "taobao.other.api"), 22),
            (without(DTO_PARAM), 40),
        ];
        for (params, expected) in cases {
            let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let response = send_body(&gateway, signed(&refs, SignMethod::Md5)).await;
            assert_eq!(error_code(&response), Some(expected), "{params:?}");
        }
        let unsigned: Vec<(&str, String)> = base_params(&now, SignMethod::Md5);
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &unsigned {
            serializer.append_pair(k, v);
        }
        assert_eq!(
            error_code(&send_body(&gateway, serializer.finish()).await),
            Some(24)
        );
        let bad_encoding = gateway
            .handle(RawRequest {
                query: Some("method=%FF".into()),
                ..Default::default()
            })
            .await;
        let Reply::Http { body, .. } = bad_encoding else {
            panic!()
        };
        assert_eq!(
            error_code(&response::parse(body.as_bytes()).unwrap().response),
            Some(47)
        );
    }

    #[tokio::test]
    async fn bad_dto_data_names_the_field_in_either_style() {
        let now = datetime::format(Utc::now());
        for (style, field_dto, expect_code, expect_text) in [
            (
                BadDataStyle::Codes40And41,
                DTO.replace(r#""car_no":"浙A888888","#, ""),
                40,
                "Missing required arguments:car_no",
            ),
            (
                BadDataStyle::Codes40And41,
                DTO.replace("\"pay_fee\":1000", "\"pay_fee\":-5"),
                41,
                "Invalid arguments:pay_fee",
            ),
            (
                BadDataStyle::Code15,
                DTO.replace("\"order_type\":1", "\"order_type\":9"),
                15,
                "isv.invalid-parameter",
            ),
            (
                BadDataStyle::Code15,
                DTO.replace(r#","pay_time":"2020-10-10 20:00:00""#, ""),
                15,
                "isv.missing-parameter",
            ),
        ] {
            let mut gw = gateway();
            gw.settings.bad_data_style = style;
            let mut params = base_params(&now, SignMethod::HmacSha256);
            params.retain(|(k, _)| *k != DTO_PARAM);
            params.push((DTO_PARAM, field_dto));
            let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let response = send_body(&gw, signed(&refs, SignMethod::HmacSha256)).await;
            let TopResponse::Error(error) = response else {
                panic!("{response:?}")
            };
            assert_eq!(error.code, expect_code);
            let text = format!("{:?} {:?}", error.msg, error.sub_code);
            assert!(text.contains(expect_text), "{text}");
        }
    }

    #[tokio::test]
    async fn xml_is_the_default_format_and_simplify_unwraps_json() {
        let gateway = gateway();
        let now = datetime::format(Utc::now());
        let mut params = base_params(&now, SignMethod::HmacMd5);
        params.retain(|(k, _)| *k != "format");
        let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let Reply::Http {
            body, content_type, ..
        } = gateway
            .handle(RawRequest {
                body: signed(&refs, SignMethod::HmacMd5).into_bytes(),
                ..Default::default()
            })
            .await
        else {
            panic!()
        };
        assert!(content_type.starts_with("text/xml"));
        assert!(
            body.contains("<taojie_parking_order_payinfo_sync_response><result>"),
            "{body}"
        );
        assert!(matches!(
            response::parse(body.as_bytes()).unwrap().response,
            TopResponse::Result(_)
        ));

        let mut params = base_params(&now, SignMethod::HmacMd5);
        params.push(("simplify", "true".into()));
        let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let Reply::Http { body, .. } = gateway
            .handle(RawRequest {
                body: signed(&refs, SignMethod::HmacMd5).into_bytes(),
                ..Default::default()
            })
            .await
        else {
            panic!()
        };
        assert!(
            body.starts_with("{\"request_id\"") || body.starts_with("{\"result\""),
            "{body}"
        );
        // The same order twice is a duplicate.
        assert_eq!(gateway.order_counts(), (2, 1, 1));
        assert_eq!(gateway.stats().duplicates, 1);
    }

    #[tokio::test]
    async fn faults_answer_what_they_promise() {
        let gateway = gateway();
        let now = datetime::format(Utc::now());
        let params = base_params(&now, SignMethod::Md5);
        let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = signed(&refs, SignMethod::Md5);
        let send = |faults: Faults| {
            gateway.set_faults(faults);
            gateway.handle(RawRequest {
                body: body.clone().into_bytes(),
                ..Default::default()
            })
        };
        assert_eq!(
            send(Faults {
                drop_connection_rate: 1.0,
                ..Faults::default()
            })
            .await,
            Reply::Drop
        );
        assert!(matches!(
            send(Faults {
                http_502_rate: 1.0,
                ..Faults::default()
            })
            .await,
            Reply::Http { status: 502, .. }
        ));
        assert!(matches!(
            send(Faults {
                http_503_rate: 1.0,
                ..Faults::default()
            })
            .await,
            Reply::Http {
                status: 503,
                retry_after: Some(1),
                ..
            }
        ));
        for (faults, expected) in [
            (
                Faults {
                    unavailable_rate: 1.0,
                    ..Faults::default()
                },
                "error_10",
            ),
            (
                Faults {
                    isp_error_rate: 1.0,
                    ..Faults::default()
                },
                "error_15",
            ),
            (
                Faults {
                    permission_denied: true,
                    ..Faults::default()
                },
                "error_11",
            ),
            (
                Faults {
                    service_failure_rate: 1.0,
                    ..Faults::default()
                },
                "service_failure",
            ),
            (
                Faults {
                    reject_order_ids: vec!["BK1".into()],
                    ..Faults::default()
                },
                "rejected",
            ),
        ] {
            let before = gateway.stats().answers.get(expected).copied().unwrap_or(0);
            send(faults).await;
            assert_eq!(
                gateway.stats().answers.get(expected).copied(),
                Some(before + 1),
                "{expected}"
            );
        }
        assert_eq!(gateway.order_counts().0, 0, "no fault may record an order");
    }
}
