//! An exporter stage that sends records to an OpenTelemetry Collector, or any OTLP receiver,
//! as logs or as metrics, over OTLP/gRPC or OTLP/HTTP (protobuf).
//!
//! The principal type in this crate is [`Otlp`], the stage `otlp`: an [`Exporter`] behind
//! the SDK's sending queue ([`Queued`]), which batches records by size and delay, retries
//! retryable failures with capped exponential backoff, and settles records only when the
//! receiver has answered: delivered when it accepted the request, failed with error type
//! `otlp_rejected` when it refused it, or `otlp_unavailable` when retries ran out. While
//! sends fail, the stage's health says so (and the host's readiness with it).
//!
//! A batch becomes one export request ([`mapping::Mapping`]): one resource (the configured
//! `resource` attributes), one scope, and one log record per record (`signal: logs`) or a
//! data point per record and configured metric (`signal: metrics`). See the crate's README
//! for the config keys and the mapping.

pub mod config;
pub mod mapping;
pub mod tls;
mod transport;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
};
use plugin_api::{
    tracing, ConfigError, Exporter, Queued, Record, SendError, SendingConfig, StageContext,
};

pub use config::OtlpConfig;
use config::Signal;
use mapping::Mapping;
use transport::Transport;
pub use transport::{REJECTED, UNAVAILABLE};

/// One export request, of either signal.
pub enum Request {
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

/// The `otlp` exporter: see the crate documentation.
pub struct Otlp {
    mapping: Mapping,
    signal: Signal,
    transport: Transport,
    /// Where requests go, for messages.
    url: String,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
    ctx: StageContext,
}

impl Otlp {
    /// The export request for `records`.
    pub fn request(&self, records: &[Record]) -> Request {
        match self.signal {
            Signal::Logs => Request::Logs(self.mapping.logs(records)),
            Signal::Metrics => Request::Metrics(self.mapping.metrics(records)),
        }
    }
}

impl Exporter for Otlp {
    const NAME: &'static str = "otlp";
    type Config = OtlpConfig;

    fn check(config: &OtlpConfig) -> Result<(), ConfigError> {
        config.check()
    }

    fn sending(config: &OtlpConfig) -> SendingConfig {
        config.sending.clone()
    }

    fn build(config: OtlpConfig, ctx: StageContext) -> Result<Self, String> {
        // One thread, the SDK's sending thread: the runtime runs only inside `send`.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
        let transport = {
            let _inside = runtime.enter();
            Transport::new(&config)?
        };
        let url = config.url();
        tracing::debug!(stage = ctx.instance(), url = %url, protocol = ?config.protocol, signal = ?config.signal, "exporting over OTLP");
        Ok(Otlp {
            mapping: Mapping::new(&config),
            signal: config.signal,
            transport,
            url,
            timeout: config.timeout,
            runtime,
            ctx,
        })
    }

    fn send(&mut self, records: &[Record]) -> Result<(), SendError> {
        let request = self.request(records);
        let (timeout, url) = (self.timeout, self.url.as_str());
        let transport = &mut self.transport;
        let accepted = self.runtime.block_on(async {
            match tokio::time::timeout(timeout, transport.send(request, url)).await {
                Ok(result) => result,
                Err(_) => Err(transport::timed_out(url, timeout)),
            }
        })?;
        if accepted.rejected > 0 || !accepted.message.is_empty() {
            // OTLP's partial success does not say which items were dropped, so the batch
            // counts as delivered; the receiver's count is reported here.
            tracing::warn!(
                stage = self.ctx.instance(),
                url = %self.url,
                rejected = accepted.rejected,
                message = %accepted.message,
                "the receiver accepted a batch but dropped part of it"
            );
            if accepted.rejected > 0 {
                self.ctx
                    .counter("otlp_partially_rejected", accepted.rejected as f64, &[]);
            }
        }
        Ok(())
    }
}

plugin_api::export_plugin!(Queued<Otlp>);
