//! The HTTP client for the TOP gateway: one signed POST per call, and an
//! [`Outcome`] for whatever happened, never a panic.
//!
//! The request is signed inside [`TopClient::send`], right before it leaves,
//! so the timestamp is fresh after any rate-limiter wait or retry backoff.
//! Transport errors are reported without the request URL, because the query
//! string carries the signature and, when configured, the session token.
//!
//! This is the hot path of every delivery: one pooled reqwest client (rustls,
//! HTTP/1.1 and HTTP/2 by ALPN, the proxy and trust decided in [`egress`]),
//! no redirects followed (a gateway that redirects a signed POST is answered
//! as an HTTP status), the endpoint parsed once and its fixed headers built
//! once.

use std::time::{Duration, Instant};

use chrono::Utc;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use url::Url;

use crate::top::egress::{self, ProxyDecision, TlsTrust};
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
    /// The response body as read (at most [`MAX_RESPONSE_BYTES`]); see
    /// [`CallReport::body_excerpt`].
    pub body: Option<Vec<u8>>,
}

impl CallReport {
    /// The start of the response body, for people debugging an integration.
    /// Built when asked for, not on the delivery path.
    pub fn body_excerpt(&self) -> Option<String> {
        self.body.as_deref().map(excerpt)
    }
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
    http: reqwest::Client,
    endpoint: Url,
    /// The endpoint without query or fragment: each call sets its own query.
    endpoint_base: Url,
    egress: Egress,
    profile: RequestProfile,
    max_request_bytes: Option<usize>,
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error(transparent)]
    Egress(#[from] egress::EgressError),
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
    #[error("the gateway URL {0} is not an http or https URL")]
    Scheme(String),
}

/// A client for paysync's own calls on loopback (the benchmark reading the
/// emulator's and a child's admin endpoints; the tests): no proxy, the
/// built-in roots. reqwest's own default needs a process-wide TLS provider,
/// which paysync never installs.
pub fn loopback_client() -> Result<reqwest::Client, ClientBuildError> {
    loopback_builder()?
        .build()
        .map_err(|error| ClientBuildError::Http(error_chain(&error)))
}

/// [`loopback_client`]'s builder, to change before building.
pub fn loopback_builder() -> Result<reqwest::ClientBuilder, ClientBuildError> {
    let tls = egress::TlsTrust::default().client_config()?;
    Ok(reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls((*tls).clone()))
}

/// How calls leave the host: the proxy decision and the trusted roots.
#[derive(Debug, Clone)]
pub struct Egress {
    pub proxy: ProxyDecision,
    pub trust: TlsTrust,
}

impl Default for Egress {
    /// Direct, with the built-in roots (tests and tools on loopback).
    fn default() -> Self {
        Egress {
            proxy: ProxyDecision::Direct {
                why: "no proxy configured".to_owned(),
            },
            trust: TlsTrust::default(),
        }
    }
}

impl TopClient {
    pub fn new(
        endpoint: Url,
        profile: RequestProfile,
        timeouts: Timeouts,
        egress: Egress,
    ) -> Result<Self, ClientBuildError> {
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(ClientBuildError::Scheme(endpoint.to_string()));
        }
        let tls = egress.trust.client_config()?;
        let mut headers = HeaderMap::with_capacity(1);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded;charset=UTF-8"),
        );
        // The proxy is decided in `egress` (never reqwest's own reading of the
        // environment), so what is logged is what is used.
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .use_preconfigured_tls((*tls).clone())
            .redirect(reqwest::redirect::Policy::none())
            // paysync retries failed calls itself (backoff, budget, counted
            // attempts); reqwest's own retry would also copy every request.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .user_agent(USER_AGENT_VALUE)
            .default_headers(headers);
        if let Some(route) = egress.proxy.route() {
            builder = builder.proxy(
                route
                    .to_reqwest()
                    .map_err(|error| ClientBuildError::Http(error.without_url().to_string()))?,
            );
        }
        let http = builder
            .build()
            .map_err(|error| ClientBuildError::Http(error_chain(&error)))?;
        let mut base = endpoint.clone();
        base.set_query(None);
        base.set_fragment(None);
        Ok(TopClient {
            http,
            endpoint_base: base,
            endpoint,
            egress,
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

    /// Which proxy carries the calls (if any) and which roots are trusted.
    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    pub fn profile(&self) -> &RequestProfile {
        &self.profile
    }

    /// Signs `dto_json` now and sends it.
    pub async fn send(&self, dto_json: &str) -> CallReport {
        self.send_request(self.profile.sign(dto_json, Utc::now()))
            .await
    }

    /// Signs the day's order count (`orderamount.sync`) now and sends it.
    pub async fn send_order_amount(&self, report_json: &str) -> CallReport {
        self.send_request(self.profile.sign_call(
            crate::top::request::ORDER_AMOUNT_METHOD,
            crate::top::request::ORDER_AMOUNT_PARAM,
            report_json,
            Utc::now(),
        ))
        .await
    }

    /// Sends a request signed elsewhere (tests, tools); [`TopClient::send`] is the usual path.
    pub async fn send_request(&self, request: SignedRequest) -> CallReport {
        let started = Instant::now();
        let (outcome, request_id, body) = self.exchange(&request).await;
        CallReport {
            outcome,
            request_id,
            elapsed: started.elapsed(),
            request,
            body,
        }
    }

    async fn exchange(
        &self,
        request: &SignedRequest,
    ) -> (Outcome, Option<String>, Option<Vec<u8>>) {
        let query = request.query_string();
        let body = request.body_string();
        if let Some(limit) = self.max_request_bytes
            && query.len() + body.len() > limit
        {
            let bytes = query.len() + body.len();
            return (Outcome::TooLarge { bytes, limit }, None, None);
        }
        let mut url = self.endpoint_base.clone();
        if !query.is_empty() {
            url.set_query(Some(&query));
        }
        let answer = async {
            let mut response = self
                .http
                .post(url)
                .body(body)
                .send()
                .await
                .map_err(transport_outcome)?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport_outcome)? {
                let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_RESPONSE_BYTES {
                    break;
                }
            }
            Ok::<_, Outcome>((status, retry_after, body))
        }
        .await;
        let (status, retry_after, body) = match answer {
            Err(outcome) => return (outcome, None, None),
            Ok(answer) => answer,
        };
        let parsed = response::parse(&body);
        let body = Some(body);
        match parsed {
            Ok(parsed) => (
                Outcome::Answered {
                    status,
                    response: parsed.response,
                },
                parsed.request_id,
                body,
            ),
            Err(failure) if status == 200 => (
                Outcome::UnreadableBody {
                    status,
                    reason: failure.reason,
                },
                None,
                body,
            ),
            Err(_) => (
                Outcome::HttpStatus {
                    status,
                    retry_after,
                },
                None,
                body,
            ),
        }
    }
}

/// The first [`BODY_EXCERPT_CHARS`] characters of a body, invalid UTF-8 replaced.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(BODY_EXCERPT_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.into_owned(),
    }
}

/// Maps a client error to an outcome. The URL is dropped first: its query
/// holds the signature.
fn transport_outcome(error: reqwest::Error) -> Outcome {
    let error = error.without_url();
    if error.is_timeout() || timed_out(&error) {
        return Outcome::Timeout;
    }
    let reason = error_chain(&error);
    if let Some(refused) = egress::untrusted_certificate(&error) {
        return Outcome::Untrusted { reason: refused };
    }
    if egress::proxy_refused_credentials(&error) {
        return Outcome::ProxyAuth { reason };
    }
    if error.is_connect() {
        Outcome::Connect { reason }
    } else {
        Outcome::Transport { reason }
    }
}

/// Whether a step gave up at a timeout (the connect timeout reports as an I/O error).
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
