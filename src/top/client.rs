//! The HTTP client for the TOP gateway: one signed POST per call, and an
//! [`Outcome`] for whatever happened, never a panic.
//!
//! The request is signed inside [`TopClient::send`], right before it leaves,
//! so the timestamp is fresh after any rate-limiter wait or retry backoff.
//! Transport errors are reported without the request URL, because the query
//! string carries the signature and, when configured, the session token.
//!
//! This is the hot path of every delivery, so it speaks to hyper's pooled
//! client directly (rustls, HTTP/1.1 and HTTP/2 by ALPN): no redirect layer
//! (a gateway that redirects a signed POST is answered as an HTTP status, not
//! followed) and no URL re-parsing per call.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
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

const USER_AGENT_VALUE: &str = concat!("paysync/", env!("CARGO_PKG_VERSION"));

/// Sends signed calls to one gateway URL with one set of credentials.
#[derive(Debug, Clone)]
pub struct TopClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    endpoint: Url,
    /// The endpoint without query or fragment: each call appends its own query.
    endpoint_base: String,
    request_timeout: Duration,
    profile: RequestProfile,
    max_request_bytes: Option<usize>,
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot set up TLS for the HTTP client: {0}")]
    Tls(#[source] rustls::Error),
    #[error("the gateway URL {0} is not an http or https URL")]
    Scheme(String),
}

impl TopClient {
    pub fn new(
        endpoint: Url,
        profile: RequestProfile,
        timeouts: Timeouts,
    ) -> Result<Self, ClientBuildError> {
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(ClientBuildError::Scheme(endpoint.to_string()));
        }
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(timeouts.connect));
        tcp.set_nodelay(true);
        // HttpsConnector checks the scheme itself.
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(ClientBuildError::Tls)?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        let mut base = endpoint.clone();
        base.set_query(None);
        base.set_fragment(None);
        Ok(TopClient {
            http,
            endpoint_base: base.to_string(),
            endpoint,
            request_timeout: timeouts.request,
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
        let uri = format!("{}?{query}", self.endpoint_base);
        let built = http::Request::post(uri)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded;charset=UTF-8"),
            )
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .body(Full::new(Bytes::from(body)));
        let built = match built {
            Ok(built) => built,
            // Never shows the URI: it holds the signature.
            Err(error) => {
                return (
                    Outcome::Transport {
                        reason: format!("cannot build the request: {}", error_chain(&error)),
                    },
                    None,
                    None,
                );
            }
        };
        let answer = tokio::time::timeout(self.request_timeout, async {
            let response = self.http.request(built).await.map_err(transport_outcome)?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body =
                read_capped(response.into_body())
                    .await
                    .map_err(|error| Outcome::Transport {
                        reason: error_chain(&error),
                    })?;
            Ok::<_, Outcome>((status, retry_after, body))
        })
        .await;
        let (status, retry_after, body) = match answer {
            Err(_elapsed) => return (Outcome::Timeout, None, None),
            Ok(Err(outcome)) => return (outcome, None, None),
            Ok(Ok(answer)) => answer,
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

async fn read_capped(mut body: hyper::body::Incoming) -> Result<Vec<u8>, hyper::Error> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Some(chunk) = frame?.data_ref() {
            let room = MAX_RESPONSE_BYTES.saturating_sub(out.len());
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if out.len() >= MAX_RESPONSE_BYTES {
                break;
            }
        }
    }
    Ok(out)
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(BODY_EXCERPT_CHARS)
        .collect()
}

/// Maps a client error to an outcome (hyper's errors never carry the URI,
/// which holds the signature).
fn transport_outcome(error: hyper_util::client::legacy::Error) -> Outcome {
    let reason = error_chain(&error);
    if error.is_connect() {
        if timed_out(&error) {
            return Outcome::Timeout;
        }
        Outcome::Connect { reason }
    } else {
        Outcome::Transport { reason }
    }
}

/// Whether the connect step gave up at `top.connect_timeout_ms`.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = cause.source();
    }
    false
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
