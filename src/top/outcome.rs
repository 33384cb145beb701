//! What happened to one call, as the transport saw it: the fact that the
//! client reports and the classification table ([`super::classify`]) judges.
//! Kept apart from both so the transport does not import the policy.

use std::time::Duration;

use crate::top::response::TopResponse;

/// What happened when a request was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The gateway answered with a readable body (usually HTTP 200, sometimes 400).
    Answered { status: u16, response: TopResponse },
    /// A non-200 status whose body is not a gateway answer.
    HttpStatus {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// HTTP 200 with a body that is neither JSON nor XML of a known shape.
    UnreadableBody { status: u16, reason: String },
    /// No answer within the configured timeout.
    Timeout,
    /// The connection could not be made (refused, DNS, TLS).
    Connect { reason: String },
    /// The gateway's TLS certificate does not chain to a trusted root.
    Untrusted { reason: String },
    /// The forward proxy refused the credentials (407 to a CONNECT).
    ProxyAuth { reason: String },
    /// The connection broke while sending or reading.
    Transport { reason: String },
    /// Not sent: the request is larger than `top.max_request_bytes`.
    TooLarge { bytes: usize, limit: usize },
}
