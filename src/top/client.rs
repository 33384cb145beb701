//! The HTTP client for the TOP gateway: one signed POST per call, and an
//! [`Outcome`] for whatever happened, never a panic.
//!
//! The request is signed inside [`TopClient::send`], right before it leaves,
//! so the timestamp is fresh after any rate-limiter wait or retry backoff.
//! Transport errors are reported without the request URL, because the query
//! string carries the signature and, when configured, the session token.

use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use url::Url;

use crate::top::outcome::Outcome;
use crate::top::request::{RequestProfile, SignedRequest};
use crate::top::response;

/// Bodies larger than this are not read to the end; a real answer is < 1 KiB.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// How much of an odd body is kept for diagnostics.
const BODY_EXCERPT_CHARS: usize = 512;

/// Everything known about one call.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub outcome: Outcome,
    /// The gateway's `request_id`, when the body had one.
    pub request_id: Option<String>,
    pub elapsed: Duration,
    /// The request as sent (it holds the signature: never log or dead-letter it whole).
    pub request: SignedRequest,
    /// The start of the response body, for people debugging an integration.
    pub body_excerpt: Option<String>,
}

/// Timeouts for one call.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

/// Sends signed calls to one gateway URL with one set of credentials.
#[derive(Debug, Clone)]
pub struct TopClient {
    http: reqwest::Client,
    endpoint: Url,
    profile: RequestProfile,
    max_request_bytes: Option<usize>,
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientBuildError(#[source] reqwest::Error);

impl TopClient {
    pub fn new(
        endpoint: Url,
        profile: RequestProfile,
        timeouts: Timeouts,
    ) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .user_agent(concat!("paysync/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(ClientBuildError)?;
        Ok(TopClient {
            http,
            endpoint,
            profile,
            max_request_bytes: None,
        })
    }

    /// Refuses (without sending) requests larger than `limit` bytes (query
    /// string and body): the gateway's own limit, where it is known.
    pub fn with_max_request_bytes(mut self, limit: Option<usize>) -> TopClient {
        self.max_request_bytes = limit;
        self
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    pub fn profile(&self) -> &RequestProfile {
        &self.profile
    }

    /// Signs `dto_json` now and sends it.
    pub async fn send(&self, dto_json: &str) -> CallReport {
        self.send_request(self.profile.sign(dto_json, Utc::now()))
            .await
    }

    /// Sends a request signed elsewhere (tests, tools); [`TopClient::send`] is the usual path.
    pub async fn send_request(&self, request: SignedRequest) -> CallReport {
        let started = Instant::now();
        let (outcome, request_id, body_excerpt) = self.exchange(&request).await;
        CallReport {
            outcome,
            request_id,
            elapsed: started.elapsed(),
            request,
            body_excerpt,
        }
    }

    async fn exchange(&self, request: &SignedRequest) -> (Outcome, Option<String>, Option<String>) {
        let query = request.query_string();
        let body = request.body_string();
        if let Some(limit) = self.max_request_bytes
            && query.len() + body.len() > limit
        {
            let bytes = query.len() + body.len();
            return (Outcome::TooLarge { bytes, limit }, None, None);
        }
        let mut url = self.endpoint.clone();
        url.set_query(Some(&query));
        let sent = self
            .http
            .post(url)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded;charset=UTF-8"),
            )
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return (transport_outcome(error), None, None),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match read_capped(response).await {
            Ok(body) => body,
            Err(error) => return (transport_outcome(error), None, None),
        };
        let excerpt = Some(excerpt(&body));
        match response::parse(&body) {
            Ok(parsed) => (
                Outcome::Answered {
                    status,
                    response: parsed.response,
                },
                parsed.request_id,
                excerpt,
            ),
            Err(failure) if status == 200 => (
                Outcome::UnreadableBody {
                    status,
                    reason: failure.reason,
                },
                None,
                excerpt,
            ),
            Err(_) => (
                Outcome::HttpStatus {
                    status,
                    retry_after,
                },
                None,
                excerpt,
            ),
        }
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(body)
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(BODY_EXCERPT_CHARS)
        .collect()
}

/// Maps a reqwest error to an outcome; the URL (with the signature) is stripped.
fn transport_outcome(error: reqwest::Error) -> Outcome {
    let error = error.without_url();
    let reason = error_chain(&error);
    if error.is_timeout() {
        Outcome::Timeout
    } else if error.is_connect() {
        Outcome::Connect { reason }
    } else {
        Outcome::Transport { reason }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
