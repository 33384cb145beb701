//! Logging set-up: `tracing` to stderr, human-readable or JSON lines,
//! filtered by `RUST_LOG` when set and by `log.level` otherwise. Call
//! [`init`] once, at the start of a command. Delivery traces are not made
//! from the logs' spans (a layer that turns every `tracing` span into an
//! OpenTelemetry span costs on every span, record and poll, traced or not):
//! the pipeline makes its own, for the events sampled (`pipeline/watch.rs`).

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber; a second call is a no-op.
pub fn init(log: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
