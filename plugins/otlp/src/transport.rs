//! Sending export requests: OTLP/gRPC through tonic, OTLP/HTTP (protobuf bodies) through
//! hyper, both on a current-thread tokio runtime the exporter owns and drives only while a
//! send is in progress (on the SDK's sending thread). Each failure is classified as the
//! OTLP specification asks: retryable, or permanent.

use std::{io::Write, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{logs_service_client::LogsServiceClient, ExportLogsServiceResponse},
    metrics::v1::{metrics_service_client::MetricsServiceClient, ExportMetricsServiceResponse},
};
use plugin_api::{SendError, StageError};
use prost::Message;
use tonic::{
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataValue},
    transport::{Channel, Endpoint},
    Code,
};

use crate::{
    config::{Compression, OtlpConfig, Protocol},
    Request,
};

/// The error type of records the receiver refused (a permanent error).
pub const REJECTED: &str = "otlp_rejected";
/// The error type of records that could not be sent before retries ran out (the receiver
/// unreachable, overloaded or too slow).
pub const UNAVAILABLE: &str = "otlp_unavailable";

/// What the receiver said about an accepted request: how many items it dropped all the
/// same (OTLP's partial success), and why.
#[derive(Debug, Default)]
pub struct Accepted {
    pub rejected: i64,
    pub message: String,
}

pub enum Transport {
    Grpc {
        logs: LogsServiceClient<Channel>,
        metrics: MetricsServiceClient<Channel>,
        metadata: Vec<(
            MetadataKey<tonic::metadata::Ascii>,
            MetadataValue<tonic::metadata::Ascii>,
        )>,
    },
    Http {
        client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
        uri: hyper::Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        gzip: bool,
    },
}

/// An error message that names the target.
fn describe(url: &str, what: impl std::fmt::Display) -> String {
    format!("OTLP receiver {url}: {what}")
}

impl Transport {
    /// Builds the client; nothing connects until the first send. Must run inside `runtime`
    /// (tonic's channel spawns its worker there).
    pub fn new(config: &OtlpConfig) -> Result<Transport, String> {
        let url = config.url();
        // The files are read once, here (the config check read them too, to report them).
        let tls = config
            .tls
            .clone()
            .unwrap_or_default()
            .load()
            .map_err(|(key, e)| format!("{key}: {e}"))?;
        let https = url.starts_with("https://");
        match config.protocol {
            Protocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| describe(&url, e))?
                    .connect_timeout(config.timeout)
                    .timeout(config.timeout);
                if https {
                    endpoint = endpoint
                        .tls_config(tls.grpc())
                        .map_err(|e| describe(&url, e))?;
                }
                let channel = endpoint.connect_lazy();
                let mut logs = LogsServiceClient::new(channel.clone());
                let mut metrics = MetricsServiceClient::new(channel);
                if config.compression == Compression::Gzip {
                    logs = logs.send_compressed(CompressionEncoding::Gzip);
                    metrics = metrics.send_compressed(CompressionEncoding::Gzip);
                }
                let metadata = config
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let key = MetadataKey::from_bytes(k.as_bytes())
                            .map_err(|e| format!("headers.{k}: {e}"))?;
                        let value = MetadataValue::try_from(v.as_str())
                            .map_err(|e| format!("headers.{k}: {e}"))?;
                        Ok((key, value))
                    })
                    .collect::<Result<_, String>>()?;
                Ok(Transport::Grpc {
                    logs,
                    metrics,
                    metadata,
                })
            }
            Protocol::Http => {
                let uri = url.parse().map_err(|e| describe(&url, e))?;
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(config.timeout));
                connector.set_nodelay(true);
                // `https://` goes through rustls; `http://` stays plain.
                connector.enforce_http(false);
                let connector = HttpsConnectorBuilder::new()
                    .with_tls_config(tls.http(https)?)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(connector);
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build(connector);
                let headers = config
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let key = HeaderName::from_bytes(k.as_bytes())
                            .map_err(|e| format!("headers.{k}: {e}"))?;
                        let value =
                            HeaderValue::from_str(v).map_err(|e| format!("headers.{k}: {e}"))?;
                        Ok((key, value))
                    })
                    .collect::<Result<_, String>>()?;
                Ok(Transport::Http {
                    client,
                    uri,
                    headers,
                    gzip: config.compression == Compression::Gzip,
                })
            }
        }
    }

    /// Sends one request; `url` names the target in errors.
    pub async fn send(&mut self, request: Request, url: &str) -> Result<Accepted, SendError> {
        match self {
            Transport::Grpc {
                logs,
                metrics,
                metadata,
            } => {
                let result = match request {
                    Request::Logs(r) => logs
                        .export(with_metadata(r, metadata))
                        .await
                        .map(|resp| logs_accepted(resp.into_inner())),
                    Request::Metrics(r) => metrics
                        .export(with_metadata(r, metadata))
                        .await
                        .map(|resp| metrics_accepted(resp.into_inner())),
                };
                result.map_err(|status| grpc_error(&status, url))
            }
            Transport::Http {
                client,
                uri,
                headers,
                gzip,
            } => {
                let (body, logs) = match &request {
                    Request::Logs(r) => (r.encode_to_vec(), true),
                    Request::Metrics(r) => (r.encode_to_vec(), false),
                };
                let mut builder = hyper::Request::post(uri.clone())
                    .header(CONTENT_TYPE, "application/x-protobuf");
                let body = if *gzip {
                    builder = builder.header(CONTENT_ENCODING, "gzip");
                    gzip_bytes(&body)
                } else {
                    body
                };
                for (k, v) in headers.iter() {
                    builder = builder.header(k, v);
                }
                let http_request = builder
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| SendError::Permanent(StageError::new(REJECTED, e.to_string())))?;
                let response = client.request(http_request).await.map_err(|e| {
                    SendError::Retryable(StageError::new(
                        UNAVAILABLE,
                        describe(url, format!("cannot send: {}", error_chain(&e))),
                    ))
                })?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if status.is_success() {
                    // An empty body is a full success.
                    return Ok(if logs {
                        ExportLogsServiceResponse::decode(body)
                            .map(logs_accepted)
                            .unwrap_or_default()
                    } else {
                        ExportMetricsServiceResponse::decode(body)
                            .map(metrics_accepted)
                            .unwrap_or_default()
                    });
                }
                let message = describe(url, format!("HTTP {status}: {}", status_message(&body)));
                Err(match status.as_u16() {
                    429 | 502 | 503 | 504 => {
                        SendError::Retryable(StageError::new(UNAVAILABLE, message))
                    }
                    _ => SendError::Permanent(StageError::new(REJECTED, message)),
                })
            }
        }
    }
}

fn with_metadata<T>(
    message: T,
    metadata: &[(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )],
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (k, v) in metadata {
        request.metadata_mut().insert(k.clone(), v.clone());
    }
    request
}

fn logs_accepted(response: ExportLogsServiceResponse) -> Accepted {
    response
        .partial_success
        .map(|p| Accepted {
            rejected: p.rejected_log_records,
            message: p.error_message,
        })
        .unwrap_or_default()
}

fn metrics_accepted(response: ExportMetricsServiceResponse) -> Accepted {
    response
        .partial_success
        .map(|p| Accepted {
            rejected: p.rejected_data_points,
            message: p.error_message,
        })
        .unwrap_or_default()
}

/// The OTLP specification's retryable gRPC codes; everything else the receiver answers is
/// permanent. A status made on this side of the connection (it has a source: the connection
/// broke, as when the receiver went away with a request in flight) is tonic's `Unknown`, but
/// the receiver never saw the request: retryable.
fn grpc_error(status: &tonic::Status, url: &str) -> SendError {
    use std::error::Error as _;
    let cause = status
        .source()
        .map(|e| format!(" ({})", error_chain(e)))
        .unwrap_or_default();
    let message = describe(
        url,
        format!("gRPC {:?}: {}{cause}", status.code(), status.message()),
    );
    if status.code() == Code::Unknown && status.source().is_some() {
        return SendError::Retryable(StageError::new(UNAVAILABLE, message));
    }
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => SendError::Retryable(StageError::new(UNAVAILABLE, message)),
        _ => SendError::Permanent(StageError::new(REJECTED, message)),
    }
}

pub fn timed_out(url: &str, timeout: Duration) -> SendError {
    SendError::Retryable(StageError::new(
        UNAVAILABLE,
        describe(url, format!("no answer within {timeout:?}")),
    ))
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error answer: only its message is read.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The message of an error answer's body: a `google.rpc.Status`, else the start of the text.
fn status_message(body: &Bytes) -> String {
    if let Ok(status) = RpcStatus::decode(body.clone()) {
        if !status.message.is_empty() {
            return status.message;
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(256)]);
    text.trim().to_owned()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retryable(status: tonic::Status) -> bool {
        matches!(grpc_error(&status, "http://x:1"), SendError::Retryable(_))
    }

    #[test]
    fn grpc_answers_are_classified_as_otlp_asks() {
        assert!(retryable(tonic::Status::unavailable("down")));
        assert!(retryable(tonic::Status::resource_exhausted("busy")));
        assert!(retryable(tonic::Status::deadline_exceeded("slow")));
        assert!(!retryable(tonic::Status::invalid_argument("bad")));
        assert!(!retryable(tonic::Status::unauthenticated("who")));
        assert!(!retryable(tonic::Status::unknown("the receiver said so")));
        // Made on this side: the connection broke under the request.
        let broken = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(retryable(tonic::Status::from_error(Box::new(broken))));
        let SendError::Permanent(e) = grpc_error(&tonic::Status::invalid_argument("bad"), "u")
        else {
            panic!("permanent")
        };
        assert_eq!(e.kind(), REJECTED);
        assert!(e.message().contains("OTLP receiver u") && e.message().contains("bad"));
    }
}
