//! `paysync run`: the bridge itself, with its admin server and signals.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use super::load_settings;
use crate::admin::{AdminServer, AdminState};
use crate::pipeline::{Pipeline, Source};

pub(super) async fn run(path: &Path) -> ExitCode {
    let settings = match load_settings(path) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    crate::telemetry::init(&settings.log);
    // The first signal drains and commits; a second one exits at once. Stored
    // offsets only ever cover finished events, so nothing unfinished is committed.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first_signal = crate::shutdown::signal();
    tokio::spawn(async move {
        first_signal.await;
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
    let pipeline = match Pipeline::build(settings, Source::Group).await {
        Ok(pipeline) => pipeline,
        Err(error) => {
            let error = anyhow::Error::from(error);
            tracing::error!(error = format!("{error:#}"), "Cannot start.");
            eprintln!("paysync: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(admin_listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("paysync: cannot listen on admin.listen {admin_listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let running = pipeline.spawn(async move {
        let _ = stopped.await;
    });
    let admin = match AdminServer::serve(listener, AdminState::of(&running, liveness_timeout)) {
        Ok(admin) => admin,
        Err(error) => {
            eprintln!("paysync: cannot serve on admin.listen {admin_listen}: {error}");
            running.stop().await;
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(admin = %admin.addr(), "Pipeline started; /metrics, /health/live and /health/ready are served.");
    running.finished().await;
    admin.stop().await;
    ExitCode::SUCCESS
}
