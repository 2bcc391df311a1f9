//! The `config:` block of an `otlp` stage, and the checks a config loader cannot make.

use std::{collections::BTreeMap, time::Duration};

use hyper::header::{HeaderName, HeaderValue};
use plugin_api::{ConfigError, SendingConfig};
use serde::Deserialize;

/// The `config:` block of an `otlp` stage. Unknown keys are errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Where the receiver listens: `http://HOST:PORT` or `https://HOST:PORT` (a gRPC
    /// endpoint, or the base of the OTLP/HTTP paths). A missing scheme means `http://`.
    pub endpoint: String,
    /// With `https://`: a private CA, a client certificate.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub signal: Signal,
    /// Sent with every request (gRPC metadata or HTTP headers). The host expands `${VAR}`
    /// in the whole pipeline file before the stage sees its config.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub compression: Compression,
    /// How long one request may take, connecting included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attributes of the resource every record is sent under (strings, numbers, booleans).
    #[serde(default)]
    pub resource: BTreeMap<String, serde_json::Value>,
    /// `logs`: the field whose value becomes the log record's body (and not an attribute).
    #[serde(default)]
    pub body_field: Option<String>,
    /// `logs`: the field holding the severity (a level name, or an OTel severity number).
    #[serde(default)]
    pub severity_field: Option<String>,
    /// The field holding when the event happened: an RFC 3339 string, or seconds since the
    /// Unix epoch (an integer or a float).
    #[serde(default)]
    pub timestamp_field: Option<String>,
    /// `metrics`: which numeric fields become which metrics.
    #[serde(default)]
    pub metrics: Vec<MetricConfig>,
    #[serde(default)]
    pub sending: SendingConfig,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    #[default]
    Logs,
    Metrics,
}

impl Signal {
    /// The OTLP/HTTP path of the signal.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Logs => "/v1/logs",
            Signal::Metrics => "/v1/metrics",
        }
    }
}

/// Gzip by default, as the OpenTelemetry Collector's OTLP exporters do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

/// One entry of `metrics:`: a numeric field and the metric it feeds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// The top-level field holding the value.
    pub field: String,
    /// The metric's name; the field's name by default.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub kind: MetricKind,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub description: String,
    /// `sum` only: whether the sum only grows.
    #[serde(default = "yes")]
    pub monotonic: bool,
    /// `histogram` only: the explicit bucket bounds, increasing.
    #[serde(default)]
    pub buckets: Option<Vec<f64>>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    #[default]
    Gauge,
    /// Each record's value is a delta.
    Sum,
    /// Each record's value is one observation.
    Histogram,
}

/// The OpenTelemetry SDKs' default explicit bucket bounds.
pub const DEFAULT_BUCKETS: [f64; 15] = [
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

impl MetricConfig {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.field)
    }
}

impl OtlpConfig {
    /// The endpoint with a scheme and without a trailing `/`.
    pub fn base_url(&self) -> String {
        let endpoint = self.endpoint.trim().trim_end_matches('/');
        if endpoint.contains("://") {
            endpoint.to_owned()
        } else {
            format!("http://{endpoint}")
        }
    }

    /// Where requests go: the gRPC endpoint, or the endpoint plus the signal's path.
    pub fn url(&self) -> String {
        match self.protocol {
            Protocol::Grpc => self.base_url(),
            Protocol::Http => format!("{}{}", self.base_url(), self.signal.http_path()),
        }
    }

    /// Checks what is particular to `otlp` (the SDK's queue checks `sending` itself).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.endpoint.trim().is_empty() {
            return Err(ConfigError::at("endpoint", "`endpoint` must not be empty"));
        }
        let url = self.base_url();
        let https = url.starts_with("https://");
        if !(https || url.starts_with("http://")) || url.parse::<hyper::Uri>().is_err() {
            return Err(ConfigError::at(
                "endpoint",
                format!(
                    "`{}` is not an `http://HOST:PORT` or `https://HOST:PORT` address",
                    self.endpoint
                ),
            ));
        }
        match (&self.tls, https) {
            (Some(_), false) => {
                return Err(ConfigError::at(
                    "tls",
                    "`tls` applies to an `https://` endpoint only",
                ))
            }
            (Some(tls), true) => {
                tls.load().map_err(|(key, e)| ConfigError::at(key, e))?;
            }
            (None, _) => {}
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::at("timeout", "must be above 0"));
        }
        for (name, value) in &self.headers {
            let path = format!("headers.{name}");
            // gRPC metadata keys are lower case; HTTP/2 refuses upper case header names.
            if HeaderName::from_bytes(name.as_bytes()).is_err()
                || name.bytes().any(|b| b.is_ascii_uppercase())
            {
                return Err(ConfigError::at(
                    path,
                    "not a valid header name (lower-case letters, digits, `-`, `_`, `.`)",
                ));
            }
            if HeaderValue::from_str(value).is_err() {
                return Err(ConfigError::at(
                    path,
                    "not a valid header value (visible ASCII and spaces only)",
                ));
            }
        }
        for (key, value) in &self.resource {
            if !(value.is_string() || value.is_number() || value.is_boolean()) {
                return Err(ConfigError::at(
                    format!("resource.{key}"),
                    "resource attributes are strings, numbers or booleans",
                ));
            }
        }
        match self.signal {
            Signal::Logs => {
                if !self.metrics.is_empty() {
                    return Err(ConfigError::at("metrics", "only with `signal: metrics`"));
                }
            }
            Signal::Metrics => self.check_metrics()?,
        }
        Ok(())
    }

    fn check_metrics(&self) -> Result<(), ConfigError> {
        for key in [
            ("body_field", &self.body_field),
            ("severity_field", &self.severity_field),
        ] {
            if key.1.is_some() {
                return Err(ConfigError::at(key.0, "only with `signal: logs`"));
            }
        }
        if self.metrics.is_empty() {
            return Err(ConfigError::at(
                "metrics",
                "`signal: metrics` needs at least one entry (`- { field: NAME }`)",
            ));
        }
        for (i, m) in self.metrics.iter().enumerate() {
            let at = |key: &str| format!("metrics[{i}].{key}");
            if m.field.is_empty() {
                return Err(ConfigError::at(at("field"), "must not be empty"));
            }
            if m.name().is_empty() {
                return Err(ConfigError::at(at("name"), "must not be empty"));
            }
            if m.buckets.is_some() && m.kind != MetricKind::Histogram {
                return Err(ConfigError::at(
                    at("buckets"),
                    "only with `kind: histogram`",
                ));
            }
            if let Some(b) = &m.buckets {
                if b.iter().any(|x| !x.is_finite()) || b.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(ConfigError::at(
                        at("buckets"),
                        "bounds must be finite and strictly increasing",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> OtlpConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_and_urls() {
        let c = parse(r#"{"endpoint":"127.0.0.1:4317"}"#);
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.signal, Signal::Logs);
        assert_eq!(c.compression, Compression::Gzip);
        assert_eq!(c.url(), "http://127.0.0.1:4317");
        assert!(c.check().is_ok());
        let c = parse(
            r#"{"endpoint":"http://c:4318/","protocol":"http","signal":"metrics","metrics":[{"field":"x"}]}"#,
        );
        assert_eq!(c.url(), "http://c:4318/v1/metrics");
        assert!(c.check().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = serde_json::from_str::<OtlpConfig>(r#"{"endpoint":"x","endpont":"y"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("endpont"), "{e}");
        let e = serde_json::from_str::<OtlpConfig>(r#"{"endpoint":"x","protocol":"udp"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("udp"), "{e}");
        let c = parse(r#"{"endpoint":"x:1","headers":{"Bad Name":"v"}}"#);
        assert_eq!(c.check().unwrap_err().path, "headers.Bad Name");
        let c = parse(r#"{"endpoint":"x:1","resource":{"a":[1]}}"#);
        assert_eq!(c.check().unwrap_err().path, "resource.a");
        let c = parse(r#"{"endpoint":"x:1","signal":"metrics"}"#);
        assert_eq!(c.check().unwrap_err().path, "metrics");
        let c = parse(
            r#"{"endpoint":"x:1","signal":"metrics","metrics":[{"field":"a","buckets":[2,1],"kind":"histogram"}]}"#,
        );
        assert_eq!(c.check().unwrap_err().path, "metrics[0].buckets");
        assert!(parse(r#"{"endpoint":"https://x:1"}"#).check().is_ok());
        let c = parse(r#"{"endpoint":"ftp://x:1"}"#);
        assert_eq!(c.check().unwrap_err().path, "endpoint");
        let c = parse(r#"{"endpoint":"http://x:1","tls":{}}"#);
        assert_eq!(c.check().unwrap_err().path, "tls");
        let c = parse(r#"{"endpoint":"https://x:1","tls":{"ca_file":"/nonexistent.pem"}}"#);
        let e = c.check().unwrap_err();
        assert_eq!(e.path, "tls.ca_file");
        assert!(e.message.contains("/nonexistent.pem"), "{e}");
        let c = parse(r#"{"endpoint":"https://x:1","tls":{"cert_file":"/c.pem"}}"#);
        assert_eq!(c.check().unwrap_err().path, "tls.key_file");
    }
}
