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
use plugin_api::{Record, ValueKind};

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

/// The record field that carries a message's W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) as a remote span context.
fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let mut parts = text.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    // Version 00 has exactly four parts; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

impl CallSpan {
    /// Links the call to the trace of each record that carries a `traceparent` (up to the
    /// SDK's 128 links a span; the rest are counted as dropped in the span).
    pub fn link_messages(&mut self, records: &[Record]) {
        for record in records {
            if let Some(ValueKind::Str(text)) = record.get(TRACEPARENT).map(|v| v.kind()) {
                if let Some(context) = parse_traceparent(text) {
                    self.span.add_link(context, Vec::new());
                }
            }
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
    fn traceparent_is_parsed_as_w3c_says() {
        let c = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert_eq!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id().to_string(), "00f067aa0ba902b7");
        assert!(c.is_sampled() && c.is_remote());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        // A later version may carry more parts.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }
}
