//! Sending OTLP export requests to the collector: gRPC (`TraceService/Export`
//! over HTTP/2, through opentelemetry-proto's tonic client) or HTTP/protobuf
//! (`POST …/v1/traces`, the request encoded by prost). Where they go, and
//! with which headers, is decided by the settings
//! ([`TracingSettings::endpoint`], from `[tracing]` and the `OTEL_*`
//! variables); this file only moves the requests.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};

use crate::config::{OtlpProtocol, TracingSettings};

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("cannot start the span export thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Where export requests go, and how.
#[derive(Debug, Clone)]
pub enum Transport {
    Grpc {
        client: TraceServiceClient<Channel>,
        headers: Vec<(String, String)>,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: Vec<(String, String)>,
    },
}

/// Why one export did not reach the collector.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the collector answered gRPC status {0}")]
    Grpc(tonic::Code),
    #[error("the collector answered HTTP {0}")]
    Http(u16),
    #[error("cannot reach the collector: {0}")]
    Unreachable(String),
}

impl Transport {
    /// The transport for `settings`; call it inside the runtime that will
    /// run the exports (the gRPC channel's tasks live there).
    pub fn new(settings: &TracingSettings) -> Result<Self, TraceSetupError> {
        let endpoint = settings.endpoint().url;
        let timeout = settings.export_timeout_ms;
        match settings.protocol() {
            OtlpProtocol::Grpc => {
                let channel = Endpoint::from_shared(endpoint.clone())
                    .map_err(|error| {
                        TraceSetupError::Exporter(format!("tracing.endpoint {endpoint}: {error}"))
                    })?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy();
                Ok(Transport::Grpc {
                    client: TraceServiceClient::new(channel),
                    headers: settings.headers(),
                })
            }
            OtlpProtocol::HttpProtobuf => {
                let tls = crate::top::egress::TlsTrust::default()
                    .client_config()
                    .map_err(|error| TraceSetupError::Exporter(error.to_string()))?;
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .use_preconfigured_tls((*tls).clone())
                    .timeout(timeout)
                    .build()
                    .map_err(|error| TraceSetupError::Exporter(error.to_string()))?;
                Ok(Transport::Http {
                    client,
                    url: endpoint,
                    headers: settings.headers(),
                })
            }
        }
    }

    /// Sends one export request.
    pub async fn send(
        &mut self,
        request: ExportTraceServiceRequest,
        timeout: Duration,
    ) -> Result<(), ExportError> {
        match self {
            Transport::Grpc { client, headers } => {
                let mut call = tonic::Request::new(request);
                call.set_timeout(timeout);
                for (key, value) in headers.iter() {
                    if let (Ok(key), Ok(value)) = (
                        tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                        value.parse(),
                    ) {
                        call.metadata_mut().insert(key, value);
                    }
                }
                client
                    .export(call)
                    .await
                    .map(|_| ())
                    .map_err(|status| match status.code() {
                        tonic::Code::Unavailable | tonic::Code::Unknown => {
                            ExportError::Unreachable(status.message().to_owned())
                        }
                        code => ExportError::Grpc(code),
                    })
            }
            Transport::Http {
                client,
                url,
                headers,
            } => {
                let mut post = client
                    .post(url.as_str())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(request.encode_to_vec());
                for (key, value) in headers.iter() {
                    post = post.header(key.as_str(), value.as_str());
                }
                let answer = post
                    .send()
                    .await
                    .map_err(|error| ExportError::Unreachable(error.to_string()))?;
                let status = answer.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(ExportError::Http(status.as_u16()))
                }
            }
        }
    }
}
