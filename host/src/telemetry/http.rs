//! The HTTP client of OTLP/HTTP exports: the exporter's hyper client, run on the host's
//! runtime.
//!
//! The SDK exports from a thread of its own, outside any runtime, and hyper's client spawns
//! its connection tasks on the current runtime: each request is therefore spawned on the
//! host's runtime and awaited from the SDK's thread.

use std::time::Duration;

use async_trait::async_trait;
use opentelemetry_http::{hyper::HyperClient, Bytes, HttpClient, HttpError, Request, Response};

#[derive(Debug)]
pub(crate) struct RuntimeHttpClient {
    client: std::sync::Arc<HyperClient>,
    runtime: tokio::runtime::Handle,
}

impl RuntimeHttpClient {
    /// `timeout` bounds each request, its response body included.
    pub(crate) fn new(runtime: tokio::runtime::Handle, timeout: Duration) -> Self {
        RuntimeHttpClient {
            client: std::sync::Arc::new(HyperClient::with_default_connector(timeout, None)),
            runtime,
        }
    }
}

#[async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as HttpError)?
    }
}
