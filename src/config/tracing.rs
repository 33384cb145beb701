//! `[tracing]`: exporting delivery traces over OTLP, with its defaults. Off
//! by default. Where a setting is not given, the standard `OTEL_*`
//! environment variables apply (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
//! `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`, `OTEL_SERVICE_NAME`), then the OTLP
//! defaults (gRPC to localhost:4317).

use std::time::Duration;

use serde::Deserialize;

use super::millis;

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// `[tracing]`: OTLP export of one span per delivery and per call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// Export traces (`PAYSYNC_TRACING__ENABLED=true` turns it on).
    pub enabled: bool,
    /// The collector's OTLP endpoint, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318` (HTTP; `/v1/traces` is added).
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Option<OtlpProtocol>,
    /// The share of deliveries traced, 0.0–1.0 (a producer's sampled flag
    /// does not decide: the delivery span is a root linked to it).
    pub sampling_ratio: f64,
    /// The `service.name` of the spans.
    pub service_name: Option<String>,
    /// Spans waiting for export; when it is full, new spans are dropped (and
    /// counted) rather than delivery waiting or memory growing.
    pub queue_size: usize,
    /// Spans per export request.
    pub batch_size: usize,
    /// How long one export may take before its spans are dropped.
    #[serde(deserialize_with = "millis")]
    pub export_timeout_ms: Duration,
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            enabled: false,
            endpoint: None,
            protocol: None,
            sampling_ratio: 1.0,
            service_name: None,
            queue_size: 4096,
            batch_size: 512,
            export_timeout_ms: Duration::from_millis(5_000),
        }
    }
}
