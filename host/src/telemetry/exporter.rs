//! The OTLP metric exporter, built for the configured protocol, and a wrapper that counts
//! exports and logs failures at most once a minute.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry_otlp::{
    tonic_types::metadata::MetadataMap, MetricExporter, Protocol, SpanExporter, WithExportConfig,
    WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{data::ResourceMetrics, exporter::PushMetricExporter, Temporality},
};

use super::{http::RuntimeHttpClient, ExportStats, TelemetryError};
use crate::{
    config::{OtlpProtocol, OtlpTelemetryConfig},
    lock,
};

/// How often a failing exporter is logged: once, then at most once per this.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where OTLP/HTTP metrics go when the endpoint names no path (the OTLP specification's).
const HTTP_METRICS_PATH: &str = "/v1/metrics";
const HTTP_TRACES_PATH: &str = "/v1/traces";

/// The URL the metrics exporter sends to.
pub(crate) fn export_url(config: &OtlpTelemetryConfig) -> String {
    signal_url(config, HTTP_METRICS_PATH)
}

/// The URL the span exporter sends to: for HTTP, `/v1/traces` beside `/v1/metrics` (or in
/// its place when the endpoint names the metrics path).
pub(crate) fn traces_url(config: &OtlpTelemetryConfig) -> String {
    let url = signal_url(config, HTTP_TRACES_PATH);
    match url.strip_suffix(HTTP_METRICS_PATH) {
        Some(base) if config.protocol == OtlpProtocol::Http => format!("{base}{HTTP_TRACES_PATH}"),
        _ => url,
    }
}

fn signal_url(config: &OtlpTelemetryConfig, path: &str) -> String {
    let endpoint = config.endpoint.trim_end_matches('/');
    let has_path = endpoint
        .strip_prefix("http://")
        .is_some_and(|rest| rest.contains('/'));
    match config.protocol {
        OtlpProtocol::Http if !has_path => format!("{endpoint}{path}"),
        _ => endpoint.to_owned(),
    }
}

/// The configured headers, as gRPC metadata.
fn metadata(config: &OtlpTelemetryConfig) -> Result<MetadataMap, TelemetryError> {
    let mut headers = HeaderMap::new();
    for (k, v) in &config.headers {
        let bad = || TelemetryError::Header { name: k.clone() };
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(v).map_err(|_| bad())?;
        headers.insert(name, value);
    }
    Ok(MetadataMap::from_headers(headers))
}

/// Builds the OTLP span exporter, as [`build`] does the metric one.
pub(crate) fn build_spans(
    config: &OtlpTelemetryConfig,
    runtime: tokio::runtime::Handle,
) -> Result<SpanExporter, TelemetryError> {
    let url = traces_url(config);
    let built = match config.protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url)
            .with_timeout(config.timeout)
            .with_metadata(metadata(config)?)
            .build(),
        OtlpProtocol::Http => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(config.timeout)
            .with_headers(config.headers.clone().into_iter().collect())
            .with_http_client(RuntimeHttpClient::new(runtime, config.timeout))
            .build(),
    };
    built.map_err(|source| TelemetryError::Build { source })
}

/// Counts span batch exports by outcome ([`ExportStats`]) and logs failures
/// ([`FailureLog`]).
#[derive(Debug)]
pub(crate) struct CountedSpans {
    inner: SpanExporter,
    stats: Arc<ExportStats>,
    log: FailureLog,
}

impl CountedSpans {
    pub(crate) fn new(inner: SpanExporter, stats: Arc<ExportStats>, url: String) -> Self {
        CountedSpans {
            inner,
            stats,
            log: FailureLog::new("traces", Some("host_otlp_span_export_failures_total"), url),
        }
    }
}

impl opentelemetry_sdk::trace::SpanExporter for CountedSpans {
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        match result {
            Ok(()) => self.stats.span_batches_exported.fetch_add(1, Relaxed),
            Err(_) => self.stats.span_batches_failed.fetch_add(1, Relaxed),
        };
        self.log.note(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Builds the OTLP exporter. gRPC: must run inside the host's runtime, where tonic's channel
/// keeps its connection task; HTTP: requests are run on `runtime`.
pub(crate) fn build(
    config: &OtlpTelemetryConfig,
    runtime: tokio::runtime::Handle,
) -> Result<MetricExporter, TelemetryError> {
    let url = export_url(config);
    let built = match config.protocol {
        OtlpProtocol::Grpc => {
            let mut headers = HeaderMap::new();
            for (k, v) in &config.headers {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| TelemetryError::Header { name: k.clone() })?;
                let value = HeaderValue::from_str(v)
                    .map_err(|_| TelemetryError::Header { name: k.clone() })?;
                headers.insert(name, value);
            }
            MetricExporter::builder()
                .with_tonic()
                .with_endpoint(url)
                .with_timeout(config.timeout)
                .with_metadata(MetadataMap::from_headers(headers))
                .with_temporality(Temporality::Cumulative)
                .build()
        }
        OtlpProtocol::Http => MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(config.timeout)
            .with_headers(config.headers.clone().into_iter().collect())
            .with_http_client(RuntimeHttpClient::new(runtime, config.timeout))
            .with_temporality(Temporality::Cumulative)
            .build(),
    };
    built.map_err(|source| TelemetryError::Build { source })
}

/// Logs export failures without flooding the log: the first, then a summary at most once a
/// minute, and the recovery.
#[derive(Debug)]
pub(crate) struct FailureLog {
    /// `metrics` or `traces`.
    signal: &'static str,
    /// Where the failures are counted, if they are.
    counted_in: Option<&'static str>,
    url: String,
    /// When a failure was last logged, and the failures since.
    warned: Mutex<(Option<Instant>, u64)>,
}

impl FailureLog {
    pub(crate) fn new(signal: &'static str, counted_in: Option<&'static str>, url: String) -> Self {
        FailureLog {
            signal,
            counted_in,
            url,
            warned: Mutex::new((None, 0)),
        }
    }

    pub(crate) fn note(&self, result: &OTelSdkResult) {
        let mut warned = lock(&self.warned);
        match result {
            Ok(()) => {
                if warned.0.take().is_some() {
                    tracing::info!(
                        endpoint = %self.url,
                        "OTLP telemetry: {} exports succeed again",
                        self.signal
                    );
                    warned.1 = 0;
                }
            }
            Err(error) => {
                warned.1 += 1;
                if warned.0.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        endpoint = %self.url,
                        %error,
                        failures = warned.1,
                        counted_in = self.counted_in,
                        "OTLP telemetry: {} export failed (the pipeline is not affected)",
                        self.signal
                    );
                    *warned = (Some(Instant::now()), 0);
                }
            }
        }
    }
}

/// Counts each metrics export's outcome ([`ExportStats`]) and logs failures ([`FailureLog`]).
pub(crate) struct Counted {
    pub(crate) inner: MetricExporter,
    pub(crate) stats: Arc<ExportStats>,
    log: FailureLog,
}

impl Counted {
    pub(crate) fn new(inner: MetricExporter, stats: Arc<ExportStats>, url: String) -> Self {
        Counted {
            inner,
            stats,
            log: FailureLog::new("metrics", Some("host_otlp_export_failures_total"), url),
        }
    }

    fn note(&self, result: &OTelSdkResult) {
        match result {
            Ok(()) => self.stats.exported.fetch_add(1, Relaxed),
            Err(_) => self.stats.failed.fetch_add(1, Relaxed),
        };
        self.log.note(result);
    }
}

impl PushMetricExporter for Counted {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.note(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, protocol: OtlpProtocol) -> OtlpTelemetryConfig {
        OtlpTelemetryConfig {
            endpoint: endpoint.into(),
            protocol,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            headers: Default::default(),
            resource: Default::default(),
            traces: None,
        }
    }

    #[test]
    fn http_gets_the_metrics_path_unless_one_is_given() {
        let url = |e, p| export_url(&config(e, p));
        assert_eq!(
            url("http://c:4318", OtlpProtocol::Http),
            "http://c:4318/v1/metrics"
        );
        assert_eq!(
            url("http://c:4318/", OtlpProtocol::Http),
            "http://c:4318/v1/metrics"
        );
        assert_eq!(
            url("http://c:4318/otlp/v1/metrics", OtlpProtocol::Http),
            "http://c:4318/otlp/v1/metrics"
        );
        assert_eq!(url("http://c:4317", OtlpProtocol::Grpc), "http://c:4317");
        let traces = |e, p| traces_url(&config(e, p));
        assert_eq!(
            traces("http://c:4318", OtlpProtocol::Http),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces("http://c:4318/otlp/v1/metrics", OtlpProtocol::Http),
            "http://c:4318/otlp/v1/traces"
        );
        assert_eq!(traces("http://c:4317", OtlpProtocol::Grpc), "http://c:4317");
    }
}
