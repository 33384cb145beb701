//! The admin HTTP server, on its own port (`admin.listen`; keep it off the
//! public network):
//!
//! * `GET /metrics` — Prometheus text format (see [`crate::metrics`]).
//! * `GET /health/live` — 200 while the main loop keeps turning; 503 once it
//!   has not for `admin.liveness_timeout_ms` (a stuck process: restart it).
//!   An API outage or a halt does not fail liveness: restarting would only
//!   cause a rebalance storm.
//! * `GET /health/ready` — a JSON body saying why: `starting` (503, not yet
//!   in the group, or still waiting for Kafka at start-up), `ready` (200),
//!   `degraded` (200: the circuit breaker is open, a code-7 ban is running,
//!   or a failing dead-letter write has held a partition for
//!   `delivery.dead_letter_stall_ms`; delivery resumes by itself), `halted`
//!   (503: the configuration is broken and someone must fix it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::pipeline::gate::{BreakerState, Gate};
use crate::pipeline::{Health, RunningPipeline};

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub gate: Arc<Gate>,
    pub liveness_timeout: Duration,
}

impl AdminState {
    /// What a running pipeline serves.
    pub fn of(pipeline: &RunningPipeline, liveness_timeout: Duration) -> AdminState {
        AdminState {
            metrics: pipeline.metrics().clone(),
            health: pipeline.health().clone(),
            gate: pipeline.gate().clone(),
            liveness_timeout,
        }
    }
}

/// The body of `/health/ready`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Readiness {
    pub status: String,
    pub joined: bool,
    pub assigned_partitions: usize,
    pub breaker: String,
    pub halted: Option<String>,
    pub ban_remaining_s: f64,
    pub reasons: Vec<String>,
    /// The tuned settings (and their version) and the pauses in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<crate::pipeline::status::ControlStatus>,
}

/// The endpoints before the pipeline exists.
fn starting_router(waiting: Arc<std::sync::Mutex<String>>) -> Router {
    let ready = move || {
        let reason = waiting.lock().unwrap_or_else(|p| p.into_inner()).clone();
        async move {
            let readiness = Readiness {
                status: "starting".to_owned(),
                joined: false,
                assigned_partitions: 0,
                breaker: BreakerState::Closed.as_str().to_owned(),
                halted: None,
                ban_remaining_s: 0.0,
                reasons: vec![reason],
                control: None,
            };
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(readiness))
        }
    };
    Router::new()
        .route(
            METRICS_PATH,
            get(|| async { [(header::CONTENT_TYPE, "text/plain; version=0.0.4")] }),
        )
        .route(
            LIVE_PATH,
            get(|| async { axum::Json(serde_json::json!({"status": "live", "starting": true})) }),
        )
        .route(READY_PATH, get(ready))
}

/// Where Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";
/// The liveness probe: the main loop turns.
pub const LIVE_PATH: &str = "/health/live";
/// The readiness probe: joined, not halted, dead letters flowing.
pub const READY_PATH: &str = "/health/ready";

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route(METRICS_PATH, get(metrics))
        .route(LIVE_PATH, get(live))
        .route(READY_PATH, get(ready))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> Response {
    // Read at scrape time: the gate changes between the main loop's ticks.
    state.gate.status().publish(&state.metrics);
    state.health.publish_dead_letter_stall(&state.metrics);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn live(State(state): State<AdminState>) -> Response {
    match state.health.since_progress() {
        Some(since) if since > state.liveness_timeout => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "stuck",
                "since_progress_s": since.as_secs_f64(),
            })),
        )
            .into_response(),
        since => axum::Json(serde_json::json!({
            "status": "live",
            "since_progress_s": since.map_or(0.0, |d| d.as_secs_f64()),
        }))
        .into_response(),
    }
}

/// Readiness from the pipeline's state; the HTTP status goes with it.
pub fn readiness(state: &AdminState) -> (StatusCode, Readiness) {
    let gate = state.gate.status();
    let joined = state.health.joined();
    let dead_letter_stall = state.health.dead_letter_stall();
    let mut reasons = Vec::new();
    let status = if let Some(cause) = state.health.failed() {
        reasons.push(format!(
            "the Kafka consumer failed: {cause}; paysync is stopping"
        ));
        "failed"
    } else if let Some(cause) = gate.halted {
        reasons.push(format!(
            "delivery is halted: the configuration is broken ({}: {})",
            cause.as_str(),
            cause.explain()
        ));
        "halted"
    } else if !joined {
        reasons.push("not yet a member of the consumer group".to_owned());
        "starting"
    } else if gate.breaker != BreakerState::Closed
        || gate.ban_remaining.is_some()
        || dead_letter_stall.is_some()
    {
        if let Some(stall) = &dead_letter_stall {
            reasons.push(format!(
                "the dead-letter topic {} has failed for {} s ({}): {} is held until it works",
                stall.dead_letter_topic,
                stall.held.as_secs(),
                stall.last_error,
                stall.source
            ));
        }
        if gate.breaker != BreakerState::Closed {
            reasons.push(format!(
                "circuit breaker {}: the gateway looks down",
                gate.breaker.as_str()
            ));
        }
        if let Some(ban) = gate.ban_remaining {
            reasons.push(format!("code-7 ban for {} more seconds", ban.as_secs()));
        }
        "degraded"
    } else {
        "ready"
    };
    let code = match status {
        "ready" | "degraded" => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (
        code,
        Readiness {
            status: status.to_owned(),
            joined,
            assigned_partitions: state.health.assigned_partitions(),
            breaker: gate.breaker.as_str().to_owned(),
            halted: gate.halted.map(|c| c.as_str().to_owned()),
            ban_remaining_s: gate.ban_remaining.map_or(0.0, |d| d.as_secs_f64()),
            reasons,
            control: state.health.control(),
        },
    )
}

async fn ready(State(state): State<AdminState>) -> Response {
    let (code, body) = readiness(&state);
    (code, axum::Json(body)).into_response()
}

/// A running admin server.
pub struct AdminServer {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `listen` (port 0 picks one) and serves in the background.
    pub async fn start(listen: SocketAddr, state: AdminState) -> std::io::Result<AdminServer> {
        Self::serve(TcpListener::bind(listen).await?, state)
    }

    /// Serves on a listener bound earlier (so a taken port fails before
    /// anything else starts).
    pub fn serve(listener: TcpListener, state: AdminState) -> std::io::Result<AdminServer> {
        Self::serve_router(listener, router(state))
    }

    /// Serves the admin endpoints and `more` beside them (the console).
    pub fn serve_with(
        listener: TcpListener,
        state: AdminState,
        more: Router,
    ) -> std::io::Result<AdminServer> {
        Self::serve_router(listener, router(state).merge(more))
    }

    /// Serves while the pipeline cannot start yet (Kafka unreachable):
    /// alive, not ready, with `waiting` as the reason.
    pub fn serve_starting(
        listener: TcpListener,
        waiting: Arc<std::sync::Mutex<String>>,
    ) -> std::io::Result<AdminServer> {
        Self::serve_router(listener, starting_router(waiting))
    }

    /// Serves `router` (peers' addresses known to handlers: the console
    /// throttles logins per address).
    pub fn serve_router(listener: TcpListener, router: Router) -> std::io::Result<AdminServer> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, service)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(AdminServer { addr, stop, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving; called last, so scrapes work during a drain.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
