//! Logging and tracing set-up: `tracing` to stderr, human-readable or JSON
//! lines, filtered by `RUST_LOG` when set and by `log.level` otherwise; and,
//! when `tracing.enabled`, events' traces exported over OTLP
//! ([`crate::trace::export`]). Call [`init`] (or [`init_with_tracing`]) once,
//! at the start of a command.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings, TracingSettings};
use crate::trace::export::{self, SpanQueue, TraceSetupError};

/// What [`init_with_tracing`] installed; [`Telemetry::shutdown`] sends the
/// spans still queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    spans: Option<SpanQueue>,
}

impl Telemetry {
    /// Sends what is queued (bounded by the export timeout) and stops exporting.
    pub fn shutdown(self) {
        if let Some(spans) = self.spans {
            spans.shutdown();
        }
    }
}

/// Installs the global subscriber for logs only; a second call is a no-op.
pub fn init(settings: &LogSettings) {
    let _ = init_with_tracing(settings, &TracingSettings::default());
}

/// Installs the global subscriber and, when `tracing.enabled`, the OTLP
/// export of events' traces ([`crate::trace::span`]); a second call installs
/// no subscriber.
///
/// The traces are not made from the logs' spans: a layer that turns every
/// `tracing` span into an OpenTelemetry span costs on every span, record and
/// poll, traced or not, where paysync's own spans cost only for the events
/// sampled.
pub fn init_with_tracing(
    log: &LogSettings,
    tracing: &TracingSettings,
) -> Result<Telemetry, TraceSetupError> {
    let spans = if tracing.enabled {
        let spans = export::start(tracing)?;
        crate::trace::span::install(spans.clone());
        Some(spans)
    } else {
        None
    };
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
    Ok(Telemetry { spans })
}
