//! A local stand-in for the TOP gateway, good enough to test paysync (and any
//! other TOP client) without Taobao credentials.
//!
//! What it emulates: `POST`/`GET /router/rest` with parameters merged from the
//! query and a form body, both timestamp forms, all three sign methods, the
//! gateway's error codes and bodies in JSON or XML, simplified JSON, per-app
//! flow control with real bans, and injectable faults ([`faults::Faults`]).
//! What it does not: multipart bodies (SDKs use them only for file uploads),
//! batch/Qimen APIs, other API names. Accepted orders are journaled
//! ([`journal`]) and served at `GET /emulator/orders`; `GET /emulator/stats`
//! counts answers; `GET`/`PUT /emulator/faults` reads and replaces the faults
//! of a running emulator.
//!
//! It signs with the same [`crate::top::sign`] as the client, so a signing
//! bug would be mirrored on both sides; the published and independently
//! computed known-answer vectors in `sign.rs` are what guard against that.
//!
//! The server runs hyper directly (not `axum::serve`) so that a handler can
//! close the connection without an answer, which is what a dropped
//! connection looks like to a client.

pub mod faults;
pub mod gateway;
pub mod journal;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

pub use faults::{Faults, RateLimit};
pub use gateway::{BadDataStyle, Gateway, GatewaySettings, Reply, Stats};
pub use journal::AcceptedOrder;

/// Marks a response whose connection must be closed instead of answered.
#[derive(Clone, Copy)]
struct DropConnection;

/// A running emulator. Dropping it stops the server and closes its connections.
pub struct Emulator {
    addr: SocketAddr,
    scheme: &'static str,
    gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Emulator {
    /// Binds `listen` (port 0 picks a free port) and serves in the background.
    pub async fn start(listen: SocketAddr, gateway: Gateway) -> std::io::Result<Emulator> {
        Self::start_with(listen, gateway, None).await
    }

    /// Like [`Emulator::start`], over HTTPS with this certificate (a gateway
    /// behind a private CA, for the trust settings' tests).
    pub async fn start_tls(
        listen: SocketAddr,
        gateway: Gateway,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Emulator> {
        Self::start_with(listen, gateway, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(
        listen: SocketAddr,
        gateway: Gateway,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let gateway = Arc::new(gateway);
        let (stop, stopped) = watch::channel(false);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = tokio::spawn(serve(listener, tls, router(gateway.clone()), stopped));
        Ok(Emulator {
            addr,
            scheme,
            gateway,
            stop,
            server: Some(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gateway URL to configure as `top.gateway_url`.
    pub fn url(&self) -> String {
        format!("{}://{}/router/rest", self.scheme, self.addr)
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stops accepting, closes open connections and waits for the server task.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    /// Serves until `shutdown` resolves (for the `paysync emulator` command).
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
        self.stop().await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The emulator's routes, without a server (tests can call it with `oneshot`).
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/router/rest", get(router_rest).post(router_rest))
        .route("/emulator/orders", get(orders))
        .route("/emulator/reports", get(reports))
        .route("/emulator/stats", get(stats))
        .route("/emulator/faults", get(get_faults).put(put_faults))
        .with_state(gateway)
}

async fn router_rest(
    State(gateway): State<Arc<Gateway>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request = gateway::RawRequest {
        query,
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.to_vec(),
    };
    match gateway.handle(request).await {
        Reply::Drop => {
            let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            response.extensions_mut().insert(DropConnection);
            response
        }
        Reply::Http {
            status,
            content_type,
            retry_after,
            body,
        } => {
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [(header::CONTENT_TYPE, content_type)],
                body,
            )
                .into_response();
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, seconds.into());
            }
            response
        }
    }
}

async fn orders(State(gateway): State<Arc<Gateway>>) -> Response {
    let (accepted, unique, duplicates) = gateway.order_counts();
    axum::Json(json!({
        "accepted": accepted,
        "unique": unique,
        "duplicates": duplicates,
        "orders": gateway.orders(),
    }))
    .into_response()
}

async fn reports(State(gateway): State<Arc<Gateway>>) -> Response {
    axum::Json(json!({ "reports": gateway.reports() })).into_response()
}

async fn stats(State(gateway): State<Arc<Gateway>>) -> Response {
    axum::Json(gateway.stats()).into_response()
}

async fn get_faults(State(gateway): State<Arc<Gateway>>) -> Response {
    axum::Json(gateway.faults()).into_response()
}

async fn put_faults(State(gateway): State<Arc<Gateway>>, body: axum::body::Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid faults: {error}\n"),
            )
                .into_response();
        }
    };
    if let Err(reason) = faults.validate() {
        return (
            StatusCode::BAD_REQUEST,
            format!("invalid faults: {reason}\n"),
        )
            .into_response();
    }
    gateway.set_faults(faults);
    axum::Json(gateway.faults()).into_response()
}

/// The error a connection's service returns to make hyper close it unanswered.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by fault injection")]
struct DroppedOnPurpose;

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) {
    // Connection tasks live in the set, so leaving this function aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let router = router.clone();
                        async move {
                            let response = router
                                .oneshot(request.map(Body::new))
                                .await
                                .unwrap_or_else(|never: Infallible| match never {});
                            if response.extensions().get::<DropConnection>().is_some() {
                                Err(DroppedOnPurpose)
                            } else {
                                Ok(response)
                            }
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        // A client that refuses the certificate ends here.
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        }
        while connections.try_join_next().is_some() {}
    }
}
