//! The emulated gateway's decision for one request: the checks of
//! `docs/top-protocol.md` §7 in order, the injected faults, and the answer in
//! JSON or XML. Transport-free, so it is tested without sockets.
//!
//! One job per file: [`wire`] holds the request as it came and the reply,
//! [`params`] decodes the parameters, [`checks`] runs the check chain,
//! [`dto`] validates the business DTO, [`render`] writes the answer. This
//! file holds the gateway's state and the order of the steps.
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

use crate::tools::emulator::faults::{Faults, FlowControl};
use crate::tools::emulator::journal::{AcceptedOrder, Journal};

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
    /// `http_413`, `http_502`, `http_503`, `dropped`.
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
    /// The `orderamount.sync` reports accepted, as sent.
    reports: Mutex<Vec<serde_json::Value>>,
}

mod checks;
mod dto;
mod params;
mod render;
mod wire;

use crate::top::request::ORDER_AMOUNT_METHOD;
use params::merge_params;
use render::{Answer, Rendering, XML_RENDERING, render};
pub use wire::{RawRequest, Reply};

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
            reports: Mutex::new(Vec::new()),
        }
    }

    /// The `orderamount.sync` reports accepted, as sent.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    /// Flow-control bans started so far (not the code-7 answers, which are
    /// one per call that met a ban).
    pub fn bans(&self) -> u64 {
        self.flow.lock().unwrap_or_else(|p| p.into_inner()).bans
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

    pub(super) fn draw(&self, rate: f64) -> bool {
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
        let size = request.body.len() + request.query.as_ref().map_or(0, String::len);
        let proxy_error = if faults.max_request_bytes.is_some_and(|limit| size > limit) {
            Some((413, "Request Entity Too Large", None))
        } else if self.draw(faults.http_502_rate) {
            Some((502, "Bad Gateway", None))
        } else if self.draw(faults.http_503_rate) {
            Some((503, "Service Unavailable", Some(1)))
        } else {
            None
        };
        if let Some((status, title, retry_after)) = proxy_error {
            self.count(format!("http_{status}"));
            return Reply::Http {
                status,
                content_type: "text/html",
                retry_after,
                body: format!("<html><body><h1>{status} {title}</h1></body></html>"),
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
            root: if get("method") == Some(ORDER_AMOUNT_METHOD) {
                render::ORDER_AMOUNT_ROOT
            } else {
                XML_RENDERING.root
            },
        };
        let answer = self.check(&params, faults, now, instant, &request_id);
        let rendering = match get("format") {
            Some("json") | Some("xml") | None => rendering,
            Some(_) => Rendering {
                json: false,
                simplify: false,
                ..rendering
            },
        };
        (rendering, answer, request_id)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gmt8;
    use crate::top::request::{API_METHOD, DTO_PARAM};
    use crate::top::response::{self, TopResponse};
    use crate::top::sign::{self, EmptyValues, SignMethod};

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

    /// The body of a 200 answer to a form body.
    async fn answer_to(gateway: &Gateway, body: String) -> String {
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
        body
    }

    async fn send_body(gateway: &Gateway, body: String) -> TopResponse {
        let body = answer_to(gateway, body).await;
        response::parse(body.as_bytes()).unwrap().response
    }

    fn error_code(response: &TopResponse) -> Option<i64> {
        match response {
            TopResponse::Error(e) => Some(e.code),
            TopResponse::Result(_) => None,
        }
    }

    #[tokio::test]
    async fn an_order_amount_report_is_checked_recorded_and_answered_in_its_own_wrapper() {
        let gateway = gateway();
        let now = Utc::now().timestamp_millis().to_string();
        let report = |total: u64| {
            format!(
                r#"{{"total_amount":{total},"order_amount_dtos":[{{"order_type":"ISV_ORDER","order_amount":2,"order_ids":[],"order_date":"2026-12-05 00:00:00","park_id":"p1"}}]}}"#
            )
        };
        let send = |value: String| {
            let params: Vec<(&str, String)> = base_params(&now, SignMethod::Md5)
                .into_iter()
                .filter(|(name, _)| *name != DTO_PARAM)
                .map(|(name, v)| {
                    if name == "method" {
                        (name, ORDER_AMOUNT_METHOD.to_owned())
                    } else {
                        (name, v)
                    }
                })
                .chain([(crate::top::request::ORDER_AMOUNT_PARAM, value)])
                .collect();
            let refs: Vec<(&str, String)> = params;
            let refs: Vec<(&str, &str)> = refs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            signed(&refs, SignMethod::Md5)
        };
        let body = answer_to(&gateway, send(report(2))).await;
        assert!(
            body.contains("taojie_parking_orderamount_sync_response"),
            "{body}"
        );
        let parsed = response::parse(body.as_bytes()).unwrap().response;
        assert!(
            matches!(parsed, TopResponse::Result(ref r) if r.model == Some(true)),
            "{parsed:?}"
        );
        assert_eq!(gateway.reports().len(), 1);
        assert_eq!(gateway.order_counts(), (0, 0, 0), "a report is no order");
        // A total that is not the sum of the lines is refused, naming the field.
        let refused = send_body(&gateway, send(report(3))).await;
        assert!(
            matches!(&refused, TopResponse::Error(e) if e.code == 41 && e.msg.as_deref().is_some_and(|m| m.contains("total_amount"))),
            "{refused:?}"
        );
        assert_eq!(gateway.reports().len(), 1);
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
        let now = gmt8::format(Utc::now());
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
        let now = gmt8::format(Utc::now());
        let stale = gmt8::format(Utc::now() - chrono::Duration::minutes(11));
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
        let now = gmt8::format(Utc::now());
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
        let now = gmt8::format(Utc::now());
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
        let now = gmt8::format(Utc::now());
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
