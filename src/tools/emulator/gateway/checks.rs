//! The check chain, in the order the module above documents: protocol
//! (method, app key, signature, timestamp, version, format), permission,
//! session, flow control, the DTO, then the injected backend faults and
//! the business answer.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::Value;

use super::dto::{validate_dto, validate_order_amount};
use super::render::Answer;
use super::{Gateway, PER_SECOND_HISTORY};
use crate::gmt8;
use crate::tools::emulator::faults::Faults;
use crate::tools::emulator::journal::AcceptedOrder;
use crate::top::request::{
    API_METHOD, API_VERSION, DTO_PARAM, ORDER_AMOUNT_METHOD, ORDER_AMOUNT_PARAM,
};
use crate::top::sign::{self, EmptyValues, SignMethod};

impl Gateway {
    pub(super) fn check(
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
        if method != API_METHOD && method != ORDER_AMOUNT_METHOD {
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
        if method == ORDER_AMOUNT_METHOD {
            let report = match validate_order_amount(get(ORDER_AMOUNT_PARAM)) {
                Ok(report) => report,
                Err(bad) => return self.bad_data(bad),
            };
            if self.draw(faults.unavailable_rate) {
                return Answer::error(10, "Service currently unavailable");
            }
            self.reports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(report);
            return Answer::accepted();
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
        let order_id = order
            .get("order_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if faults.fail_order_ids.iter().any(|id| id == order_id)
            || self.draw(faults.service_failure_rate)
        {
            return Answer::Result {
                code: "500".into(),
                success: false,
                model: false,
                message: "系统繁忙".into(),
            };
        }
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
                Answer::accepted()
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
}

/// GMT+8 `yyyy-MM-dd HH:mm:ss`, or epoch milliseconds (the official Python SDK).
pub(super) fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if text.len() >= 12 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().and_then(gmt8::from_epoch_millis);
    }
    gmt8::parse(text)
}

/// Java-style (empty values dropped) or PHP/Python-style (empty values signed);
/// hex compared without regard to case (every SDK sends uppercase).
pub(super) fn signature_matches(
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
