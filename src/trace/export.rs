//! Exporting delivery spans over OTLP (gRPC or HTTP/protobuf), through a
//! bounded queue that drops rather than waits: a collector that is down or
//! slow never blocks a delivery or grows paysync's memory. Spans the queue
//! had no room for, and spans of exports that failed, are counted
//! ([`dropped_spans`]), and the pipeline publishes the counts.
//!
//! The queue is drained by one thread of its own with a one-thread runtime
//! (the OTLP clients are async): batches of up to `tracing.batch_size`
//! spans, sent at least every 500 ms, each export bounded by
//! `tracing.export_timeout_ms`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter as _, SpanProcessor,
};

use crate::config::{OtlpProtocol, TracingSettings};

/// How often a partial batch is sent.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);

/// Spans dropped so far: (the queue was full, their export failed).
pub fn dropped_spans() -> (u64, u64) {
    (
        DROPPED_QUEUE_FULL.load(Ordering::Relaxed),
        DROPPED_EXPORT_FAILED.load(Ordering::Relaxed),
    )
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("cannot start the span export thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Where and how spans go, after the settings and the `OTEL_*` variables.
pub fn protocol(settings: &TracingSettings) -> OtlpProtocol {
    settings.protocol.unwrap_or_else(|| {
        let from_env = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_default();
        match from_env.trim() {
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            _ => OtlpProtocol::Grpc,
        }
    })
}

/// The service name: the setting, else `OTEL_SERVICE_NAME`, else `paysync`.
pub fn service_name(settings: &TracingSettings) -> String {
    settings
        .service_name
        .clone()
        .or_else(|| std::env::var("OTEL_SERVICE_NAME").ok())
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "paysync".to_owned())
}

/// The tracer provider for `settings`: the ratio sampler, the service name,
/// the bounded queue in front of the OTLP exporter.
pub fn provider(settings: &TracingSettings) -> Result<SdkTracerProvider, TraceSetupError> {
    let resource = Resource::builder()
        .with_service_name(service_name(settings))
        .build();
    let mut exporter = exporter(settings)?;
    // The exporter runs on the queue's thread; it is told the resource here.
    exporter.set_resource(&resource);
    let processor = DroppingQueue::start(exporter, settings)?;
    Ok(SdkTracerProvider::builder()
        // The pipeline samples each event itself (tracing.sampling_ratio),
        // before any span work; what reaches the tracer is exported.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .with_span_processor(processor)
        .build())
}

fn exporter(settings: &TracingSettings) -> Result<SpanExporter, TraceSetupError> {
    let build_error = |error: opentelemetry_otlp::ExporterBuildError| {
        TraceSetupError::Exporter(error.to_string())
    };
    match protocol(settings) {
        OtlpProtocol::Grpc => {
            let mut builder = SpanExporter::builder()
                .with_tonic()
                .with_timeout(settings.export_timeout_ms);
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            builder.build().map_err(build_error)
        }
        OtlpProtocol::HttpProtobuf => {
            let mut builder = SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(settings.export_timeout_ms);
            if let Some(endpoint) = &settings.endpoint {
                builder =
                    builder.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
            }
            builder.build().map_err(build_error)
        }
    }
}

enum Queued {
    Span(Box<SpanData>),
    /// Send what is queued, then answer.
    Flush(SyncSender<()>),
}

/// A span processor with a bounded queue that drops when full.
#[derive(Debug)]
struct DroppingQueue {
    queue: SyncSender<Queued>,
    flush_timeout: Duration,
}

impl DroppingQueue {
    fn start(exporter: SpanExporter, settings: &TracingSettings) -> std::io::Result<DroppingQueue> {
        let (queue, queued) = mpsc::sync_channel(settings.queue_size);
        let (batch_size, timeout) = (settings.batch_size, settings.export_timeout_ms);
        std::thread::Builder::new()
            .name("paysync-span-export".into())
            .spawn(move || drain(exporter, queued, batch_size, timeout))?;
        Ok(DroppingQueue {
            queue,
            flush_timeout: settings.export_timeout_ms * 2,
        })
    }
}

impl SpanProcessor for DroppingQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(Queued::Span(Box::new(span)))
        {
            DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (done, flushed) = mpsc::sync_channel(1);
        self.queue
            .send(Queued::Flush(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        flushed
            .recv_timeout(self.flush_timeout)
            .map_err(|_| OTelSdkError::Timeout(self.flush_timeout))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.force_flush()
    }
}

/// The export thread: batches from the queue to the exporter.
fn drain(exporter: SpanExporter, queued: Receiver<Queued>, batch_size: usize, timeout: Duration) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let mut batch: Vec<SpanData> = Vec::with_capacity(batch_size);
    let mut due = Instant::now() + FLUSH_EVERY;
    loop {
        let wait = due.saturating_duration_since(Instant::now());
        let (flush, ended) = match queued.recv_timeout(wait) {
            Ok(Queued::Span(span)) => {
                batch.push(*span);
                (None, false)
            }
            Ok(Queued::Flush(done)) => (Some(done), false),
            Err(RecvTimeoutError::Timeout) => (None, false),
            Err(RecvTimeoutError::Disconnected) => (None, true),
        };
        let send = batch.len() >= batch_size || flush.is_some() || ended || Instant::now() >= due;
        if send && !batch.is_empty() {
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            let count = spans.len() as u64;
            let exported = runtime
                .block_on(async { tokio::time::timeout(timeout, exporter.export(spans)).await });
            if !matches!(exported, Ok(Ok(()))) {
                DROPPED_EXPORT_FAILED.fetch_add(count, Ordering::Relaxed);
            }
        }
        if send {
            due = Instant::now() + FLUSH_EVERY;
        }
        if let Some(done) = flush {
            let _ = done.send(());
        }
        if ended {
            return;
        }
    }
}
