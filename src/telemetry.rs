//! Logging and tracing set-up: `tracing` to stderr, human-readable or JSON
//! lines, filtered by `RUST_LOG` when set and by `log.level` otherwise; and,
//! when `tracing.enabled`, paysync's spans exported over OTLP
//! ([`crate::trace::export`]). Call [`init`] (or [`init_with_tracing`]) once,
//! at the start of a command.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::{LogFormat, LogSettings, TracingSettings};
use crate::trace::export::{self, TraceSetupError};

/// The target of the span events paysync records only for traces (waits).
pub const TRACE_EVENTS: &str = "paysync::trace";
/// The target of an event's span when the event is not traced (tracing off,
/// or the event not sampled): logged like any span, never exported.
pub const UNTRACED: &str = "paysync::untraced";

/// What [`init_with_tracing`] installed; [`Telemetry::shutdown`] sends the
/// spans still queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends what is queued (bounded by the export timeout) and stops exporting.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber for logs only; a second call is a no-op.
pub fn init(settings: &LogSettings) {
    let _ = init_with_tracing(settings, &TracingSettings::default());
}

/// Installs the global subscriber, with OTLP export of paysync's spans when
/// `tracing.enabled`; a second call installs nothing.
pub fn init_with_tracing(
    log: &LogSettings,
    tracing: &TracingSettings,
) -> Result<Telemetry, TraceSetupError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    if !tracing.enabled {
        // Logs alone: the subscriber paysync always had, nothing on the hot path.
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
        return Ok(Telemetry::default());
    }
    let provider = export::provider(tracing)?;
    let logs = match log.format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => fmt::layer().with_writer(std::io::stderr).boxed(),
    }
    // The trace-only span events (waits) stay out of the logs.
    .with_filter(filter_fn(|metadata| metadata.target() != TRACE_EVENTS))
    .with_filter(filter);
    // paysync's own spans, and the events inside them (they become span
    // events): the waits at any level, everything else from info up.
    // Location, thread and busy/idle attributes left out: they cost on every
    // span and say nothing about a payment.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("paysync"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(|metadata| {
            metadata.target().starts_with("paysync")
                && metadata.target() != UNTRACED
                && (metadata.is_span()
                    || metadata.target() == TRACE_EVENTS
                    || *metadata.level() <= Level::INFO)
        }));
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}
