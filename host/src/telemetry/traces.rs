//! `monitoring.otlp.traces`: a span per stage call, sampled by trace id, exported over OTLP by
//! the SDK's batch span processor (a thread of its own, a bounded queue: a full queue drops
//! spans, a stage never waits).
//!
//! A span is made when the call has ended, with the call's start and end times: the worker
//! reads the clock once more per call, and for a call not sampled it makes a non-recording
//! span and nothing else (no attribute is built).

use std::{borrow::Cow, sync::Arc, time::SystemTime};

use opentelemetry::{
    trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _},
    InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::{
    trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider},
    Resource,
};

use super::{exporter, ExportStats, TelemetryError};
use crate::{
    config::{OtlpTelemetryConfig, OtlpTracesConfig},
    coordinator::OPERATION,
    monitor::CallOutcome,
};

/// The tracer provider of the host's stage calls.
pub(crate) struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Traces {
    /// Call inside the host's runtime, as [`exporter::build`].
    pub(crate) fn start(
        config: &OtlpTelemetryConfig,
        traces: &OtlpTracesConfig,
        resource: Resource,
        stats: Arc<ExportStats>,
    ) -> Result<Traces, TelemetryError> {
        let url = exporter::traces_url(config);
        let spans = exporter::build_spans(config, tokio::runtime::Handle::current())?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter::CountedSpans::new(spans, stats, url)).build(),
            )
            .with_sampler(Sampler::TraceIdRatioBased(traces.sample_ratio))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("host")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        Ok(Traces { provider, tracer })
    }

    pub(crate) fn stage(&self, stage: &str) -> StageTracer {
        StageTracer {
            tracer: self.tracer.clone(),
            stage: stage.into(),
            span_name: format!("{stage} {OPERATION}").into(),
        }
    }

    /// Exports what is queued and stops; blocks (call from a thread of its own).
    pub(crate) fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "OTLP telemetry: the final span export failed");
        }
    }
}

/// Makes one stage's call spans.
#[derive(Clone)]
pub struct StageTracer {
    tracer: SdkTracer,
    stage: Arc<str>,
    span_name: Cow<'static, str>,
}

impl StageTracer {
    /// The span of one call that ran from `started` to `ended`: attributes `stage`,
    /// `operation`, `records.in`, `records.out`, `records.failed`, `outcome` (`ok`,
    /// `partial`: some records failed, `error`: the call failed as a whole) and `error.type`
    /// (the call's error, or the first failed record's); status error for a failed call.
    pub fn call(&self, started: SystemTime, ended: SystemTime, outcome: &CallOutcome<'_>) {
        let mut span = self
            .tracer
            .span_builder(self.span_name.clone())
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .start(&self.tracer);
        if !span.is_recording() {
            return;
        }
        let mut attributes = vec![
            KeyValue::new("stage", self.stage.to_string()),
            KeyValue::new("operation", OPERATION),
        ];
        match outcome {
            CallOutcome::Success {
                records_in,
                records_out,
                failures,
            } => {
                attributes.extend([
                    KeyValue::new("records.in", *records_in as i64),
                    KeyValue::new("records.out", *records_out as i64),
                    KeyValue::new("records.failed", failures.len() as i64),
                ]);
                match failures.first() {
                    None => attributes.push(KeyValue::new("outcome", "ok")),
                    Some(f) => attributes.extend([
                        KeyValue::new("outcome", "partial"),
                        KeyValue::new("error.type", f.error().kind().to_owned()),
                    ]),
                }
            }
            CallOutcome::Error { records_in, error } => {
                attributes.extend([
                    KeyValue::new("records.in", *records_in as i64),
                    KeyValue::new("records.out", 0i64),
                    KeyValue::new("records.failed", *records_in as i64),
                    KeyValue::new("outcome", "error"),
                    KeyValue::new("error.type", error.kind().to_owned()),
                ]);
                span.set_status(Status::error(error.message().to_owned()));
            }
        }
        span.set_attributes(attributes);
        span.end_with_timestamp(ended);
    }
}
