//! `paysync run`: the bridge itself, with its admin server and signals.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use super::exit::load_settings;
use crate::admin::{AdminServer, AdminState};
use crate::config::Settings;
use crate::pipeline::{Pipeline, Source, StartError};

pub(super) async fn run(path: &Path) -> ExitCode {
    let settings = match load_settings(path) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    crate::telemetry::init(&settings.log);
    // The first signal drains and commits; a second one exits at once. Stored
    // offsets only ever cover finished events, so nothing unfinished is committed.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_early, stopped_early) = tokio::sync::watch::channel(false);
    let first_signal = crate::shutdown::signal();
    tokio::spawn(async move {
        first_signal.await;
        let _ = stop_early.send(true);
        let _ = stop.send(());
        crate::shutdown::signal().await;
        eprintln!("paysync: second signal, exiting now");
        std::process::exit(130);
    });
    let admin_listen: SocketAddr = settings
        .admin
        .listen
        .parse()
        .expect("validated in Settings::validate");
    let liveness_timeout = settings.admin.liveness_timeout_ms;
    // Bound first: a taken port fails before anything else starts.
    let listener = match tokio::net::TcpListener::bind(admin_listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("paysync: cannot listen on admin.listen {admin_listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (pipeline, listener) = match start_pipeline(settings.clone(), listener, stopped_early).await
    {
        Ok(started) => started,
        Err(code) => return code,
    };
    let running = pipeline.spawn(async move {
        let _ = stopped.await;
    });
    let state = AdminState::of(&running, liveness_timeout);
    let status =
        crate::status::StatusPublisher::start(&settings, state.clone(), running.producer().clone());
    let console = if settings.console.enabled {
        match crate::console::Console::open(&settings, running.control().cloned()).await {
            Ok(console) => Some(console),
            Err(error) => {
                eprintln!("paysync: cannot start the console: {error}");
                running.stop().await;
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let served = match &console {
        Some(console) => AdminServer::serve_with(listener, state, crate::console::router(console)),
        None => AdminServer::serve(listener, state),
    };
    let admin = match served {
        Ok(admin) => admin,
        Err(error) => {
            eprintln!("paysync: cannot serve on admin.listen {admin_listen}: {error}");
            running.stop().await;
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(admin = %admin.addr(), "Pipeline started; /metrics, /health/live and /health/ready are served.");
    if console.is_some() {
        tracing::info!(console = %format!("http://{}{}", admin.addr(), crate::console::views::BASE), "The console is served.");
    }
    let health = running.health().clone();
    running.finished().await;
    admin.stop().await;
    if let Some(status) = status {
        status.stop().await;
    }
    if let Some(console) = console {
        let _ = tokio::task::spawn_blocking(move || console.close()).await;
    }
    match health.failed() {
        Some(cause) => {
            eprintln!("paysync: the Kafka consumer failed: {cause}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

/// Builds the pipeline, waiting for Kafka with backoff (alive, not ready,
/// a log line per attempt) up to `kafka.startup_timeout_ms`. Returns the
/// admin listener back for the real server, or the exit code: success after
/// a signal (a requested stop), failure after a reported error.
async fn start_pipeline(
    settings: Settings,
    listener: TcpListener,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<(Pipeline, TcpListener), ExitCode> {
    let address = listener.local_addr().map_err(|_| ExitCode::FAILURE)?;
    let waiting = Arc::new(Mutex::new("connecting to Kafka".to_owned()));
    let starting = match AdminServer::serve_starting(listener, waiting.clone()) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("paysync: cannot serve on admin.listen {address}: {error}");
            return Err(ExitCode::FAILURE);
        }
    };
    tracing::info!(admin = %address, "Starting; /health/ready answers 503 until the pipeline runs.");
    // Validated already; said once, before the first attempt.
    if let Ok(egress) = settings.egress() {
        tracing::info!(
            gateway = %settings.top.gateway_url,
            proxy = %egress.proxy,
            tls = %egress.trust.describe(),
            "Calls to the gateway leave this way."
        );
    }
    let patience = settings.kafka.startup_timeout_ms;
    let deadline = Instant::now() + patience;
    let mut attempt = 0;
    let built = loop {
        attempt += 1;
        let error = match Pipeline::build(settings.clone(), Source::Group).await {
            Ok(pipeline) => break Ok(pipeline),
            Err(error @ StartError::Metadata { .. }) => error,
            Err(error) => break Err(anyhow::Error::from(error)),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(anyhow::anyhow!(
                "Kafka was not reachable within kafka.startup_timeout_ms ({} s, {attempt} attempts): {error}",
                patience.as_secs()
            ));
        }
        let delay =
            crate::backoff::backoff(attempt - 1, Duration::from_secs(1), Duration::from_secs(30))
                .min(left);
        tracing::warn!(attempt, error = %error, retry_in_s = delay.as_secs_f64(), "Kafka is not reachable yet; trying again.");
        *waiting.lock().unwrap_or_else(|p| p.into_inner()) =
            format!("waiting for Kafka (attempt {attempt}): {error}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped.wait_for(|stop| *stop) => {
                tracing::info!("Stopped by a signal while waiting for Kafka.");
                starting.stop().await;
                return Err(ExitCode::SUCCESS);
            }
        }
    };
    starting.stop().await;
    match built {
        Ok(pipeline) => match TcpListener::bind(address).await {
            Ok(listener) => Ok((pipeline, listener)),
            Err(error) => {
                eprintln!("paysync: cannot listen on admin.listen {address} again: {error}");
                Err(ExitCode::FAILURE)
            }
        },
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "Cannot start.");
            eprintln!("paysync: {error:#}");
            Err(ExitCode::FAILURE)
        }
    }
}
