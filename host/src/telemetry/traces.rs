//! `monitoring.otlp.traces`: a span per stage call, sampled by trace id, exported over OTLP by
//! the SDK's batch span processor (a thread of its own, a bounded queue: a full queue drops
//! spans, a stage never waits).
//!
//! A span is started before the call and ended after it; for a call not sampled it is a
//! non-recording span and nothing else happens (no attribute is built, no record looked at).
//! A sampled call's span links to the trace of each of its records that carries a W3C
//! `traceparent` field.

use std::{borrow::Cow, sync::Arc};

use opentelemetry::{
    trace::{
        Span as _, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
        Tracer as _, TracerProvider as _,
    },
    InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::{
    trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider},
    Resource,
};
use plugin_api::{Record, TraceContext};

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
    /// Starts the span of one call, now; `None` when the call is not sampled (no attribute
    /// is built then, and no record looked at).
    pub fn start(&self) -> Option<CallSpan> {
        let span = self
            .tracer
            .span_builder(self.span_name.clone())
            .with_kind(SpanKind::Internal)
            .start(&self.tracer);
        span.is_recording().then(|| CallSpan {
            span,
            stage: self.stage.clone(),
        })
    }
}

/// The span of one sampled call, between [`StageTracer::start`] and [`CallSpan::end`].
pub struct CallSpan {
    span: opentelemetry_sdk::trace::Span,
    stage: Arc<str>,
}

/// A record's trace context (what its source read from a W3C `traceparent` field) as a
/// remote span context.
fn remote_context(trace: TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(trace.trace_id()),
        SpanId::from_bytes(trace.span_id()),
        TraceFlags::new(trace.flags()),
        true,
        TraceState::default(),
    )
}

impl CallSpan {
    /// Links the call to the trace of each record that carries a trace context (read from
    /// its `traceparent` field at decode; up to the SDK's 128 links a span, the rest are
    /// counted as dropped in the span).
    pub fn link_messages(&mut self, records: &[Record]) {
        for trace in records.iter().filter_map(Record::trace) {
            self.span.add_link(remote_context(trace), Vec::new());
        }
    }

    /// Ends the span with the call's outcome: attributes `stage`, `operation`, `records.in`,
    /// `records.out`, `records.failed`, `outcome` (`ok`, `partial`: some records failed,
    /// `error`: the call failed as a whole) and `error.type` (the call's error, or the first
    /// failed record's); status error for a failed call.
    pub fn end(mut self, outcome: &CallOutcome<'_>) {
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
                self.span
                    .set_status(Status::error(error.message().to_owned()));
            }
        }
        self.span.set_attributes(attributes);
        self.span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_trace_context_becomes_the_remote_context_it_names() {
        let trace = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .expect("valid");
        let c = remote_context(trace);
        assert_eq!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id().to_string(), "00f067aa0ba902b7");
        assert!(c.is_sampled() && c.is_remote() && c.is_valid());
    }
}
