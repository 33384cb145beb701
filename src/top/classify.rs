//! The one place that decides what a call's outcome means (`docs/top-protocol.md` §5).
//!
//! Every outcome of a call — an HTTP status, a timeout, a connection error, an
//! unreadable body, a platform `error_response`, or the API's own `result` —
//! maps to exactly one [`Disposition`]:
//!
//! * **Delivered**: the API accepted the data (`success=true, model=true`).
//! * **Retry**: a transient failure on the way or on the server side; try again
//!   later, after the announced wait if there is one (code 7's ban).
//! * **DeadLetter**: the event's *data* is bad (`isv.*`, 40, 41, 43, or the API
//!   answered `success=true, model=false`); retrying cannot help.
//! * **Halt**: paysync's *configuration* is broken (signature, app key,
//!   permissions, session, clock, protocol). Every event would fail the same
//!   way, so nothing may be dead-lettered: delivery stops and someone is told.
//!
//! Read [`Classifier::classify_error`] next to the table in §5: the arms are
//! in the same order.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::labels::{CallKind, label_names};
pub use crate::top::outcome::Outcome;
use crate::top::request::SYSTEM_PARAMS;
use crate::top::response::{BusinessResult, ErrorResponse, TopResponse};

/// What to do about an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Delivered,
    Retry {
        cause: RetryCause,
        wait: Option<Duration>,
    },
    DeadLetter {
        cause: RejectCause,
    },
    Halt {
        cause: HaltCause,
    },
}

/// Why a call is worth repeating. `as_str` values are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryCause {
    Timeout,
    Connect,
    Transport,
    HttpStatus,
    UnreadableBody,
    /// Flow control (code 7 and the legacy 4/5/6/8): wait the announced ban.
    Throttled,
    /// Code 10: the platform or backend is unavailable.
    Unavailable,
    /// `isp.*` sub-codes and the server-side codes 1 and 44.
    ServerError,
    /// The API ran but did not say it handled the call (`success` not true).
    ServiceFailure,
    /// A remote error paysync has no row for, while configured to retry those.
    UnknownError,
}

/// Why an event's data was refused by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCause {
    /// `isv.*`, 40, 41, 43 (and 3): the arguments are invalid.
    InvalidArguments,
    /// `success=true, model=false`: the service refused the data.
    BusinessRejected,
    /// A remote error paysync has no row for, while configured to dead-letter those.
    UnknownError,
    /// HTTP 413/414, or larger than `top.max_request_bytes`: this event's
    /// request is too large for the gateway; other events are not.
    RequestTooLarge,
}

/// Why delivery must stop until the configuration is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HaltCause {
    /// 24, 25: wrong secret or sign method.
    Signature,
    /// 28, 29: missing or unknown app key (or a sandbox key against production).
    AppKey,
    /// 2, 11, 12, 13, 42, 53, `isv.permission-*`: blacklist, permissions, IP whitelist.
    Permission,
    /// 26, 27: the session token is missing, expired or revoked.
    Session,
    /// 30, 31: the timestamp is missing or the host clock / time zone is off.
    Clock,
    /// 9, 20–23, 32–34, 45, 47, or a 40 naming a system parameter: a client bug.
    Protocol,
    /// A 4xx status other than 400/407/408/413/414/429: wrong gateway URL or a proxy in the way.
    Endpoint,
    /// The gateway's TLS certificate is not trusted (`top.ca_file`, `top.tls_roots`).
    Tls,
    /// HTTP 407: the forward proxy refused paysync's credentials (or wants some).
    Proxy,
}

label_names!(RetryCause {
    Timeout => "timeout",
    Connect => "connect",
    Transport => "transport",
    HttpStatus => "http_status",
    UnreadableBody => "unreadable_body",
    Throttled => "throttled",
    Unavailable => "unavailable",
    ServerError => "server_error",
    ServiceFailure => "service_failure",
    UnknownError => "unknown_error",
});

impl RetryCause {
    /// Whether the API may have accepted the call although paysync read no
    /// answer saying so: the request may have reached it and the answer was
    /// lost (a timeout, a broken connection, a proxy's 5xx, a body that
    /// could not be read). A connection never made, or any answer of the
    /// platform's own (flow control, an error code, `success=false`), says
    /// it was not accepted. Strict ledger mode parks the first kind rather
    /// than send it again (docs/ledger.md).
    pub fn may_have_been_accepted(self) -> bool {
        match self {
            RetryCause::Timeout
            | RetryCause::Transport
            | RetryCause::HttpStatus
            | RetryCause::UnreadableBody => true,
            RetryCause::Connect
            | RetryCause::Throttled
            | RetryCause::Unavailable
            | RetryCause::ServerError
            | RetryCause::ServiceFailure
            | RetryCause::UnknownError => false,
        }
    }
}

label_names!(RejectCause {
    InvalidArguments => "invalid_arguments",
    BusinessRejected => "business_rejected",
    UnknownError => "unknown_error",
    RequestTooLarge => "request_too_large",
});

label_names!(HaltCause {
    Signature => "signature",
    AppKey => "app_key",
    Permission => "permission",
    Session => "session",
    Clock => "clock",
    Protocol => "protocol",
    Endpoint => "endpoint",
    Tls => "tls",
    Proxy => "proxy",
});

impl HaltCause {
    /// What to check, for readiness and the halt's log line.
    pub fn explain(self) -> &'static str {
        match self {
            HaltCause::Signature => {
                "the gateway refuses the signature: check top.app_secret and top.sign_method"
            }
            HaltCause::AppKey => {
                "the gateway does not know top.app_key (or it is a sandbox key on production)"
            }
            HaltCause::Permission => {
                "the app lacks permission for the API, or this host's IP is not whitelisted"
            }
            HaltCause::Session => "top.session is missing, expired or revoked",
            HaltCause::Clock => "the gateway refuses the timestamp: check this host's clock",
            HaltCause::Protocol => {
                "the gateway refuses the request's form (a client bug: please report it)"
            }
            HaltCause::Endpoint => {
                "the gateway URL answers with a 4xx status: check top.gateway_url and any proxy"
            }
            HaltCause::Tls => {
                "the gateway's TLS certificate is not trusted: check top.ca_file and top.tls_roots"
            }
            HaltCause::Proxy => {
                "the forward proxy refuses paysync's credentials: check top.proxy_username and the password"
            }
        }
    }
}

/// What to do with a remote error that has no row in the table: code 15/50
/// with a sub-code that is neither `isp.*` nor `isv.*`, or an unknown code.
/// The protocol doc leaves this UNCONFIRMED; `retry` is the default because a
/// backend outage reported that way must not empty the topic into the DLQ
/// (after the retry budget, the event is dead-lettered as `retries_exhausted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownErrorPolicy {
    #[default]
    Retry,
    DeadLetter,
}

impl Disposition {
    /// What the disposition is counted and traced as: its kind and the
    /// cause's label (`accepted` for a delivery).
    pub fn counted_as(&self) -> (CallKind, &'static str) {
        match self {
            Disposition::Delivered => (CallKind::Delivered, "accepted"),
            Disposition::Retry { cause, .. } => (CallKind::Retry, cause.as_str()),
            Disposition::DeadLetter { cause } => (CallKind::DeadLetter, cause.as_str()),
            Disposition::Halt { cause } => (CallKind::Halt, cause.as_str()),
        }
    }

    /// One line for people: what the disposition means for the event.
    pub fn describe(&self) -> String {
        match self {
            Disposition::Delivered => "delivered: the API accepted the event".into(),
            Disposition::Retry { cause, wait } => match wait {
                Some(wait) => format!("retry ({}) after {} s", cause.as_str(), wait.as_secs()),
                None => format!("retry ({}) with backoff", cause.as_str()),
            },
            Disposition::DeadLetter { cause } => {
                format!(
                    "dead-letter ({}): the event's data was refused",
                    cause.as_str()
                )
            }
            Disposition::Halt { cause } => format!(
                "halt ({}): the configuration is broken; nothing would be delivered or dead-lettered",
                cause.as_str()
            ),
        }
    }
}

/// Maps outcomes to dispositions. Cheap to copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Classifier {
    pub unknown_error: UnknownErrorPolicy,
}

impl Classifier {
    pub fn classify(&self, outcome: &Outcome) -> Disposition {
        use Disposition::*;
        match outcome {
            Outcome::Answered {
                response: TopResponse::Result(result),
                ..
            } => classify_result(result),
            Outcome::Answered {
                response: TopResponse::Error(error),
                ..
            } => self.classify_error(error),
            Outcome::HttpStatus {
                status,
                retry_after,
            } => match status {
                // Too large depends on this request's content: the event's
                // problem, not the configuration's (every other event fits).
                413 | 414 => DeadLetter {
                    cause: RejectCause::RequestTooLarge,
                },
                407 => Halt {
                    cause: HaltCause::Proxy,
                },
                408 | 429 | 500..=599 => Retry {
                    cause: RetryCause::HttpStatus,
                    wait: *retry_after,
                },
                // 400 without a readable body, 401, 403, 404, 405…: the request
                // never reached the API as intended; halting is loud and loses nothing.
                400..=499 => Halt {
                    cause: HaltCause::Endpoint,
                },
                // 1xx/3xx: a redirect the client did not follow, or a proxy's oddity.
                _ => Retry {
                    cause: RetryCause::HttpStatus,
                    wait: *retry_after,
                },
            },
            Outcome::UnreadableBody { .. } => Retry {
                cause: RetryCause::UnreadableBody,
                wait: None,
            },
            Outcome::Timeout => Retry {
                cause: RetryCause::Timeout,
                wait: None,
            },
            Outcome::Connect { .. } => Retry {
                cause: RetryCause::Connect,
                wait: None,
            },
            Outcome::Transport { .. } => Retry {
                cause: RetryCause::Transport,
                wait: None,
            },
            // Nothing reached the API; every call would meet the same refusal.
            Outcome::Untrusted { .. } => Halt {
                cause: HaltCause::Tls,
            },
            Outcome::ProxyAuth { .. } => Halt {
                cause: HaltCause::Proxy,
            },
            Outcome::TooLarge { .. } => DeadLetter {
                cause: RejectCause::RequestTooLarge,
            },
        }
    }

    /// The platform error table, in the order of `docs/top-protocol.md` §5.
    pub fn classify_error(&self, error: &ErrorResponse) -> Disposition {
        use Disposition::*;
        let sub_code = error.sub_code.as_deref().unwrap_or("");
        let retry = |cause| Retry { cause, wait: None };
        let halt = |cause| Halt { cause };
        let reject = |cause| DeadLetter { cause };
        // Permission sub-codes mean the app's setup is wrong whatever code carries them.
        if sub_code.starts_with("isv.permission") {
            return halt(HaltCause::Permission);
        }
        match error.code {
            1 => retry(RetryCause::ServerError),
            2 => halt(HaltCause::Permission),
            3 => reject(RejectCause::InvalidArguments),
            4..=8 => Retry {
                cause: RetryCause::Throttled,
                wait: ban_seconds(error),
            },
            9 => halt(HaltCause::Protocol),
            10 => retry(RetryCause::Unavailable),
            11..=13 => halt(HaltCause::Permission),
            15 | 50 => self.by_sub_code(sub_code),
            20..=23 => halt(HaltCause::Protocol),
            24 | 25 => halt(HaltCause::Signature),
            26 | 27 => halt(HaltCause::Session),
            28 | 29 => halt(HaltCause::AppKey),
            30 | 31 => halt(HaltCause::Clock),
            32..=34 => halt(HaltCause::Protocol),
            40 if names_system_param(error) => halt(HaltCause::Protocol),
            40 | 41 | 43 => reject(RejectCause::InvalidArguments),
            42 => halt(HaltCause::Permission),
            44 => retry(RetryCause::ServerError),
            45 | 47 => halt(HaltCause::Protocol),
            53 => halt(HaltCause::Permission),
            _ => self.by_sub_code(sub_code),
        }
    }

    /// Code 15/50 and unknown codes: the sub-code's prefix says whose fault it is.
    fn by_sub_code(&self, sub_code: &str) -> Disposition {
        if sub_code.starts_with("isp.") {
            Disposition::Retry {
                cause: RetryCause::ServerError,
                wait: None,
            }
        } else if sub_code.starts_with("isv.") {
            Disposition::DeadLetter {
                cause: RejectCause::InvalidArguments,
            }
        } else {
            match self.unknown_error {
                UnknownErrorPolicy::Retry => Disposition::Retry {
                    cause: RetryCause::UnknownError,
                    wait: None,
                },
                UnknownErrorPolicy::DeadLetter => Disposition::DeadLetter {
                    cause: RejectCause::UnknownError,
                },
            }
        }
    }
}

/// The API's own answer: `success` says the service handled the call, `model`
/// says the data was accepted.
fn classify_result(result: &BusinessResult) -> Disposition {
    match (result.success, result.model) {
        (Some(true), Some(true)) => Disposition::Delivered,
        (Some(true), Some(false)) => Disposition::DeadLetter {
            cause: RejectCause::BusinessRejected,
        },
        // `success=false`, or a result that does not say: a service-side failure.
        _ => Disposition::Retry {
            cause: RetryCause::ServiceFailure,
            wait: None,
        },
    }
}

/// "Missing required arguments:app_key" blames the client, not the event.
fn names_system_param(error: &ErrorResponse) -> bool {
    let named = error
        .msg
        .as_deref()
        .and_then(|msg| msg.rsplit_once(':'))
        .map(|(_, name)| name.trim());
    named.is_some_and(|name| SYSTEM_PARAMS.contains(&name))
}

/// The N of "This ban will last for N more seconds" (code 7's `sub_msg`).
pub fn ban_seconds(error: &ErrorResponse) -> Option<Duration> {
    [error.sub_msg.as_deref(), error.msg.as_deref()]
        .into_iter()
        .flatten()
        .find_map(parse_ban)
}

fn parse_ban(text: &str) -> Option<Duration> {
    const PREFIX: &str = "This ban will last for ";
    let start = text.find(PREFIX)? + PREFIX.len();
    let rest = &text[start..];
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let seconds: u64 = rest[..digits_end].parse().ok()?;
    rest[digits_end..]
        .starts_with(" more second")
        .then(|| Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Disposition::*;

    fn error(code: i64, sub_code: Option<&str>) -> Outcome {
        Outcome::Answered {
            status: 200,
            response: TopResponse::Error(ErrorResponse {
                code,
                msg: Some("m".into()),
                sub_code: sub_code.map(Into::into),
                sub_msg: None,
            }),
        }
    }

    fn result(success: Option<bool>, model: Option<bool>) -> Outcome {
        Outcome::Answered {
            status: 200,
            response: TopResponse::Result(BusinessResult {
                code: Some("0".into()),
                success,
                model,
                message: None,
            }),
        }
    }

    fn classify(outcome: &Outcome) -> Disposition {
        Classifier::default().classify(outcome)
    }

    fn retry(cause: RetryCause) -> Disposition {
        Retry { cause, wait: None }
    }

    #[test]
    fn api_results() {
        assert_eq!(classify(&result(Some(true), Some(true))), Delivered);
        assert_eq!(
            classify(&result(Some(true), Some(false))),
            DeadLetter {
                cause: RejectCause::BusinessRejected
            }
        );
        for (success, model) in [
            (Some(false), Some(true)),
            (Some(false), Some(false)),
            (None, Some(true)),
            (Some(true), None),
        ] {
            assert_eq!(
                classify(&result(success, model)),
                retry(RetryCause::ServiceFailure),
                "{success:?} {model:?}"
            );
        }
    }

    #[test]
    fn platform_error_table() {
        let rows: &[(i64, Option<&str>, Disposition)] = &[
            (1, None, retry(RetryCause::ServerError)),
            (
                2,
                None,
                Halt {
                    cause: HaltCause::Permission,
                },
            ),
            (
                3,
                None,
                DeadLetter {
                    cause: RejectCause::InvalidArguments,
                },
            ),
            (4, None, retry(RetryCause::Throttled)),
            (5, None, retry(RetryCause::Throttled)),
            (6, None, retry(RetryCause::Throttled)),
            (8, None, retry(RetryCause::Throttled)),
            (
                9,
                None,
                Halt {
                    cause: HaltCause::Protocol,
                },
            ),
            (10, None, retry(RetryCause::Unavailable)),
            (
                11,
                Some("isv.permission-api-package-limit"),
                Halt {
                    cause: HaltCause::Permission,
                },
            ),
            (
                12,
                None,
                Halt {
                    cause: HaltCause::Permission,
                },
            ),
            (
                13,
                None,
                Halt {
                    cause: HaltCause::Permission,
                },
            ),
            (
                15,
                Some("isp.top-remote-connection-error"),
                retry(RetryCause::ServerError),
            ),
            (
                15,
                Some("isv.invalid-parameter"),
                DeadLetter {
                    cause: RejectCause::InvalidArguments,
                },
            ),
            (
                15,
                Some("isv.permission-ip-whitelist-limit"),
                Halt {
                    cause: HaltCause::Permission,
                },
            ),
            (15, Some("20000"), retry(RetryCause::UnknownError)),
            (15, None, retry(RetryCause::UnknownError)),
            (
                50,
                Some("isv.invalid-parameter"),
                DeadLetter {
                    cause: RejectCause::InvalidArguments,
                },
            ),
            (
                50,
                Some("isp.unknown-error"),
                retry(RetryCause::ServerError),
            ),
            (
                20,
                None,
                Halt {
                    cause: HaltCause::Protocol,
                },
            ),
            (
                21,
                None,
                Halt {
                    cause: HaltCause::Protocol,
                },
            ),
            (
                22,
                None,
                Halt {
                    cause: HaltCause::Protocol,
                },
            ),
            (
                23,
                None,
                Halt {
                    cause: HaltCause::Protocol,
                },
            ),
            (
                24,
                None,
                Halt {
                    cause: HaltCause::Signature,
                },
            ),
            (
                25,
                None,
                Halt {
                    cause: HaltCause::Signature,
                },
            ),
            (
                26,
                None,
                Halt {
                    cause: HaltCause::Session,
                },
            ),
            (
                27,
                None,
                Halt {
                    cause: HaltCause::Session,
                },
            ),
            (
                28,
                None,
                Halt {
                    cause: HaltCause::AppKey,
                },
            ),
            (
                29,
                None,
                Halt {
                    cause: HaltCause::AppKey,
                },
            ),
            (
                30,
                None,
                Halt {
                    cause: HaltCause::Clock,
                },
            ),
            (
                31,
                None,
                Halt {
                    cause: HaltCause::Clock,
                },
            ),
            (
                32,
                None,
                Halt {
                    cause: HaltCause::Protocol,
                },
            ),
            (
                33,
                None,
                Halt {
                    cause: HaltCause::Protocol,
                },
            ),
            (
                34,
                None,
                Halt {
                    cause: HaltCause::Protocol,
                },
            ),
            (
                40,
                None,
                DeadLetter {
                    cause: RejectCause::InvalidArguments,
                },
            ),
            (
                41,
                None,
                DeadLetter {
                    cause: RejectCause::InvalidArguments,
                },
            ),
            (
                42,
                None,
                Halt {
                    cause: HaltCause::Permission,
                },
            ),
            (
                43,
                None,
                DeadLetter {
                    cause: RejectCause::InvalidArguments,
                },
            ),
            (44, None, retry(RetryCause::ServerError)),
            (
                45,
                None,
                Halt {
                    cause: HaltCause::Protocol,
                },
            ),
            (
                47,
                None,
                Halt {
                    cause: HaltCause::Protocol,
                },
            ),
            (
                53,
                None,
                Halt {
                    cause: HaltCause::Permission,
                },
            ),
            (999, Some("isp.backend"), retry(RetryCause::ServerError)),
            (
                999,
                Some("isv.bad-plate"),
                DeadLetter {
                    cause: RejectCause::InvalidArguments,
                },
            ),
            (999, None, retry(RetryCause::UnknownError)),
        ];
        for (code, sub_code, expected) in rows {
            assert_eq!(
                classify(&error(*code, *sub_code)),
                *expected,
                "code {code} sub_code {sub_code:?}"
            );
        }
    }

    #[test]
    fn unknown_errors_follow_the_configured_policy() {
        let dead_letter = Classifier {
            unknown_error: UnknownErrorPolicy::DeadLetter,
        };
        for outcome in [error(15, Some("20000")), error(15, None), error(999, None)] {
            assert_eq!(
                dead_letter.classify(&outcome),
                DeadLetter {
                    cause: RejectCause::UnknownError
                }
            );
        }
        // The policy never overrides a known row.
        assert_eq!(
            dead_letter.classify(&error(25, None)),
            Halt {
                cause: HaltCause::Signature
            }
        );
        assert_eq!(
            dead_letter.classify(&error(10, None)),
            retry(RetryCause::Unavailable)
        );
    }

    #[test]
    fn missing_argument_naming_a_system_parameter_halts() {
        let outcome = |msg: &str| Outcome::Answered {
            status: 200,
            response: TopResponse::Error(ErrorResponse {
                code: 40,
                msg: Some(msg.into()),
                sub_code: None,
                sub_msg: None,
            }),
        };
        assert_eq!(
            classify(&outcome("Missing required arguments:app_key")),
            Halt {
                cause: HaltCause::Protocol
            }
        );
        assert_eq!(
            classify(&outcome("Missing required arguments:timestamp")),
            Halt {
                cause: HaltCause::Protocol
            }
        );
        assert_eq!(
            classify(&outcome("Missing required arguments:car_no")),
            DeadLetter {
                cause: RejectCause::InvalidArguments
            }
        );
    }

    #[test]
    fn code_7_waits_for_the_announced_ban() {
        let outcome = Outcome::Answered {
            status: 200,
            response: TopResponse::Error(ErrorResponse {
                code: 7,
                msg: Some("App Call Limited".into()),
                sub_code: Some("accesscontrol.limited-by-app-access-count".into()),
                sub_msg: Some("This ban will last for 41 more seconds".into()),
            }),
        };
        assert_eq!(
            classify(&outcome),
            Retry {
                cause: RetryCause::Throttled,
                wait: Some(Duration::from_secs(41))
            }
        );
        assert_eq!(
            parse_ban("This ban will last for 1 more seconds"),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            parse_ban("This ban will last for 31062 more seconds"),
            Some(Duration::from_secs(31062))
        );
        assert_eq!(parse_ban("This ban will last for many more seconds"), None);
        assert_eq!(
            parse_ban("This ban will last for 99999999999999999999999 more seconds"),
            None
        );
        assert_eq!(parse_ban(""), None);
        // Without a parsable ban the retry uses the normal backoff.
        assert_eq!(
            classify(&error(7, Some("accesscontrol.limited-by-api-access-count"))),
            retry(RetryCause::Throttled)
        );
    }

    #[test]
    fn http_statuses() {
        let status = |status, retry_after| Outcome::HttpStatus {
            status,
            retry_after,
        };
        let wait = Some(Duration::from_secs(3));
        assert_eq!(classify(&status(502, None)), retry(RetryCause::HttpStatus));
        assert_eq!(
            classify(&status(503, wait)),
            Retry {
                cause: RetryCause::HttpStatus,
                wait
            }
        );
        assert_eq!(
            classify(&status(429, wait)),
            Retry {
                cause: RetryCause::HttpStatus,
                wait
            }
        );
        assert_eq!(classify(&status(408, None)), retry(RetryCause::HttpStatus));
        for code in [400, 401, 403, 404, 405] {
            assert_eq!(
                classify(&status(code, None)),
                Halt {
                    cause: HaltCause::Endpoint
                },
                "{code}"
            );
        }
        assert_eq!(classify(&status(302, None)), retry(RetryCause::HttpStatus));
        // Too large is one request's problem: dead-letter it, never halt.
        let too_large = DeadLetter {
            cause: RejectCause::RequestTooLarge,
        };
        for code in [413, 414] {
            assert_eq!(classify(&status(code, None)), too_large, "{code}");
        }
        let not_sent = Outcome::TooLarge {
            bytes: 5_000,
            limit: 4_096,
        };
        assert_eq!(classify(&not_sent), too_large);
        // A 400 whose body is a gateway answer is classified by that answer.
        let answered = Outcome::Answered {
            status: 400,
            response: TopResponse::Error(ErrorResponse {
                code: 41,
                ..Default::default()
            }),
        };
        assert_eq!(
            classify(&answered),
            DeadLetter {
                cause: RejectCause::InvalidArguments
            }
        );
    }

    #[test]
    fn an_untrusted_gateway_or_a_refusing_proxy_halts() {
        let halt = |cause| Halt { cause };
        assert_eq!(
            classify(&Outcome::Untrusted {
                reason: "UnknownIssuer".into()
            }),
            halt(HaltCause::Tls)
        );
        assert_eq!(
            classify(&Outcome::ProxyAuth {
                reason: "407".into()
            }),
            halt(HaltCause::Proxy)
        );
        let plain_407 = Outcome::HttpStatus {
            status: 407,
            retry_after: None,
        };
        assert_eq!(classify(&plain_407), halt(HaltCause::Proxy));
    }

    #[test]
    fn transport_failures_are_retried() {
        assert_eq!(classify(&Outcome::Timeout), retry(RetryCause::Timeout));
        assert_eq!(
            classify(&Outcome::Connect {
                reason: "refused".into()
            }),
            retry(RetryCause::Connect)
        );
        assert_eq!(
            classify(&Outcome::Transport {
                reason: "reset".into()
            }),
            retry(RetryCause::Transport)
        );
        assert_eq!(
            classify(&Outcome::UnreadableBody {
                status: 200,
                reason: "html".into()
            }),
            retry(RetryCause::UnreadableBody)
        );
    }

    #[test]
    fn label_names_are_unique_snake_case() {
        let mut names: Vec<&str> = RetryCause::ALL.iter().map(|c| c.as_str()).collect();
        names.extend(HaltCause::ALL.iter().map(|c| c.as_str()));
        for name in &names {
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
        }
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), before);
    }
}
