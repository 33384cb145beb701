//! `[tracing]`: exporting delivery traces over OTLP, with its defaults, and
//! where the traces go. Off by default. Where a setting is not given, the
//! standard `OTEL_*` environment variables apply
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` used as given, or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, to which HTTP adds `/v1/traces`;
//! `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`, `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`
//! as `key=value,…` with percent-decoded values, `OTEL_SERVICE_NAME`), then
//! the OTLP defaults (gRPC to localhost:4317, HTTP to localhost:4318). The
//! variables are read with the rest of the environment when the settings
//! load, so `check-config` shows the endpoint in use.

use std::time::Duration;

use serde::Deserialize;

use super::environment::Environment;
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
    /// The environment the settings loaded from (its `OTEL_*` variables).
    #[serde(skip)]
    pub environment: Environment,
}

/// Where traces go, and what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// For gRPC the collector's address; for HTTP the traces resource itself.
    pub url: String,
    /// The setting or the variable it came from, or "the OTLP default".
    pub from: &'static str,
}

impl TracingSettings {
    /// How spans travel: the setting, else the variables, else gRPC.
    pub fn protocol(&self) -> OtlpProtocol {
        self.protocol.unwrap_or_else(|| {
            match self.environment.first([
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ]) {
                Some((_, "http/protobuf")) => OtlpProtocol::HttpProtobuf,
                _ => OtlpProtocol::Grpc,
            }
        })
    }

    /// The endpoint for [`TracingSettings::protocol`].
    pub fn endpoint(&self) -> OtlpEndpoint {
        const TRACES: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
        const BASE: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
        let found = |url: String, from| OtlpEndpoint { url, from };
        // The traces variable names the traces resource itself: used as given.
        if self.endpoint.is_none()
            && let Some(url) = self.environment.get(TRACES)
        {
            return found(url.to_owned(), TRACES);
        }
        let protocol = self.protocol();
        let (base, from) = match (&self.endpoint, self.environment.get(BASE)) {
            (Some(setting), _) => (setting.as_str(), "tracing.endpoint"),
            (None, Some(base)) => (base, BASE),
            (None, None) => match protocol {
                OtlpProtocol::Grpc => ("http://localhost:4317", "the OTLP default"),
                OtlpProtocol::HttpProtobuf => ("http://localhost:4318", "the OTLP default"),
            },
        };
        match protocol {
            OtlpProtocol::Grpc => found(base.to_owned(), from),
            OtlpProtocol::HttpProtobuf => {
                found(format!("{}/v1/traces", base.trim_end_matches('/')), from)
            }
        }
    }

    /// Headers sent with every export: `key=value,…` from the variables,
    /// keys lower-cased, values percent-decoded; a pair without `=` is left out.
    pub fn headers(&self) -> Vec<(String, String)> {
        let Some((_, list)) = self.environment.first([
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ]) else {
            return Vec::new();
        };
        list.split(',')
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                let key = key.trim();
                let value = crate::top::egress::percent_decoded(value.trim());
                (!key.is_empty()).then(|| (key.to_ascii_lowercase(), value))
            })
            .collect()
    }

    /// The service name: the setting, else `OTEL_SERVICE_NAME`, else `paysync`.
    pub fn service_name(&self) -> String {
        self.service_name
            .as_deref()
            .or_else(|| self.environment.get("OTEL_SERVICE_NAME"))
            .filter(|name| !name.trim().is_empty())
            .unwrap_or("paysync")
            .to_owned()
    }

    /// Where traces go, in one line (header names, never their values).
    pub fn describe(&self) -> String {
        if !self.enabled {
            return "off (tracing.enabled)".to_owned();
        }
        let endpoint = self.endpoint();
        let protocol = match self.protocol() {
            OtlpProtocol::Grpc => "gRPC",
            OtlpProtocol::HttpProtobuf => "HTTP/protobuf",
        };
        let headers: Vec<String> = self.headers().into_iter().map(|(key, _)| key).collect();
        format!(
            "{} over {protocol} ({}), service.name {}, sampling {}{}",
            endpoint.url,
            endpoint.from,
            self.service_name(),
            self.sampling_ratio,
            if headers.is_empty() {
                String::new()
            } else {
                format!(", headers {}", headers.join(", "))
            }
        )
    }
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
            environment: Environment::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_env(pairs: &[(&str, &str)]) -> TracingSettings {
        TracingSettings {
            enabled: true,
            environment: Environment::of(pairs.iter().copied()),
            ..TracingSettings::default()
        }
    }

    #[test]
    fn headers_are_pairs_with_percent_decoded_values() {
        let settings = with_env(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "Authorization=Basic%20dXNlcjpwdw==, x-tenant = a ,broken,=nokey,odd=100%",
        )]);
        assert_eq!(
            settings.headers(),
            vec![
                ("authorization".to_owned(), "Basic dXNlcjpwdw==".to_owned()),
                ("x-tenant".to_owned(), "a".to_owned()),
                ("odd".to_owned(), "100%".to_owned()),
            ]
        );
        let traces_first = with_env(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
        ]);
        assert_eq!(traces_first.headers(), [("b".to_owned(), "2".to_owned())]);
    }

    #[test]
    fn the_setting_wins_and_http_names_the_traces_resource() {
        let mut settings = with_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317")]);
        settings.endpoint = Some("http://collector:4318/".into());
        settings.protocol = Some(OtlpProtocol::HttpProtobuf);
        assert_eq!(settings.endpoint().url, "http://collector:4318/v1/traces");
        assert_eq!(settings.endpoint().from, "tracing.endpoint");
        settings.protocol = Some(OtlpProtocol::Grpc);
        assert_eq!(settings.endpoint().url, "http://collector:4318/");
    }

    #[test]
    fn the_variables_decide_where_the_settings_say_nothing() {
        let settings = with_env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "payments-bridge"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20s3cr3t",
            ),
            ("PATH", "/usr/bin"),
        ]);
        assert_eq!(settings.protocol(), OtlpProtocol::HttpProtobuf);
        assert_eq!(
            settings.endpoint(),
            OtlpEndpoint {
                url: "http://collector:4318/v1/traces".into(),
                from: "OTEL_EXPORTER_OTLP_ENDPOINT"
            }
        );
        assert_eq!(settings.service_name(), "payments-bridge");
        let said = settings.describe();
        assert_eq!(
            said,
            "http://collector:4318/v1/traces over HTTP/protobuf (OTEL_EXPORTER_OTLP_ENDPOINT), \
             service.name payments-bridge, sampling 1, headers authorization"
        );
        let debug = format!("{settings:?}");
        assert!(
            !said.contains("s3cr3t") && !debug.contains("s3cr3t"),
            "{debug}"
        );
        let traces = with_env(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/custom",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(
            traces.endpoint(),
            OtlpEndpoint {
                url: "http://traces:4318/custom".into(),
                from: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
            },
            "the traces variable is used as given"
        );
        assert_eq!(
            with_env(&[]).endpoint(),
            OtlpEndpoint {
                url: "http://localhost:4317".into(),
                from: "the OTLP default"
            }
        );
    }
}
