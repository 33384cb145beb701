//! Sending OTLP export requests to the collector: gRPC (`TraceService/Export`
//! over HTTP/2, through tonic) or HTTP/protobuf (`POST …/v1/traces`). Where
//! the settings say nothing, the standard variables apply:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as given) or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (HTTP adds `/v1/traces`),
//! `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`
//! (`key=value,…`, values percent-decoded), then the OTLP defaults
//! (`localhost:4317` for gRPC, `localhost:4318` for HTTP). The bytes come
//! ready-made from [`super::otlp`]; this file only moves them.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
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

const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where export requests go, and how.
#[derive(Debug, Clone)]
pub enum Transport {
    Grpc {
        client: tonic::client::Grpc<Channel>,
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

fn variable(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// The endpoint for `protocol`: the setting, else the variables, else the
/// OTLP default. For HTTP, the URL of the traces resource itself.
pub fn endpoint(settings: &TracingSettings, protocol: OtlpProtocol) -> String {
    let traces_path = |base: &str| format!("{}/v1/traces", base.trim_end_matches('/'));
    match protocol {
        OtlpProtocol::Grpc => settings
            .endpoint
            .clone()
            .or_else(|| variable("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| variable("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_else(|| "http://localhost:4317".to_owned()),
        OtlpProtocol::HttpProtobuf => match &settings.endpoint {
            Some(base) => traces_path(base),
            None => variable("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| variable("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| traces_path(&base)))
                .unwrap_or_else(|| "http://localhost:4318/v1/traces".to_owned()),
        },
    }
}

/// Headers sent with every export, from the variables.
fn headers() -> Vec<(String, String)> {
    variable("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        .or_else(|| variable("OTEL_EXPORTER_OTLP_HEADERS"))
        .map(|list| parse_headers(&list))
        .unwrap_or_default()
}

/// `key=value,key2=value2`, values percent-decoded; a pair without `=` is
/// left out.
pub fn parse_headers(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then(|| (key.to_ascii_lowercase(), percent_decoded(value.trim())))
        })
        .collect()
}

fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |i: usize| bytes.get(i).and_then(|b| (*b as char).to_digit(16));
        match (bytes[at], hex(at + 1), hex(at + 2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                at += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

impl Transport {
    /// The transport for `settings`; call it inside the runtime that will
    /// run the exports (the gRPC channel's tasks live there).
    pub fn new(
        settings: &TracingSettings,
        protocol: OtlpProtocol,
    ) -> Result<Self, TraceSetupError> {
        let endpoint = endpoint(settings, protocol);
        let timeout = settings.export_timeout_ms;
        match protocol {
            OtlpProtocol::Grpc => {
                let channel = Endpoint::from_shared(endpoint.clone())
                    .map_err(|error| {
                        TraceSetupError::Exporter(format!("tracing.endpoint {endpoint}: {error}"))
                    })?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy();
                Ok(Transport::Grpc {
                    client: tonic::client::Grpc::new(channel),
                    headers: headers(),
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
                    headers: headers(),
                })
            }
        }
    }

    /// Sends one encoded `ExportTraceServiceRequest`.
    pub async fn send(&mut self, request: Bytes, timeout: Duration) -> Result<(), ExportError> {
        match self {
            Transport::Grpc { client, headers } => {
                client
                    .ready()
                    .await
                    .map_err(|error| ExportError::Unreachable(error.to_string()))?;
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
                    .unary(call, PathAndQuery::from_static(GRPC_EXPORT), Passthrough)
                    .await
                    .map(|_| ())
                    .map_err(|status| ExportError::Grpc(status.code()))
            }
            Transport::Http {
                client,
                url,
                headers,
            } => {
                let mut post = client
                    .post(url.as_str())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(request);
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

/// A gRPC codec for a request already in protobuf bytes; the answer
/// (`ExportTraceServiceResponse`, whose partial-success counts paysync does
/// not use) is read and set aside.
#[derive(Debug, Clone, Copy, Default)]
struct Passthrough;

impl Codec for Passthrough {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Passthrough;
    type Decoder = Passthrough;

    fn encoder(&mut self) -> Self::Encoder {
        Passthrough
    }

    fn decoder(&mut self) -> Self::Decoder {
        Passthrough
    }
}

impl Encoder for Passthrough {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Passthrough {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_pairs_with_percent_decoded_values() {
        assert_eq!(
            parse_headers("Authorization=Basic%20dXNlcjpwdw==, x-tenant = a ,broken,=nokey"),
            vec![
                ("authorization".to_owned(), "Basic dXNlcjpwdw==".to_owned()),
                ("x-tenant".to_owned(), "a".to_owned()),
            ]
        );
        assert_eq!(percent_decoded("100%"), "100%", "a lone % stays");
    }

    #[test]
    fn the_setting_wins_and_http_names_the_traces_resource() {
        let settings = TracingSettings {
            endpoint: Some("http://collector:4318/".into()),
            ..TracingSettings::default()
        };
        assert_eq!(
            endpoint(&settings, OtlpProtocol::HttpProtobuf),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            endpoint(&settings, OtlpProtocol::Grpc),
            "http://collector:4318/"
        );
    }
}
