//! `monitoring.otlp.traces`: a span per stage call, sampled by trace id, exported over OTLP by
//! the SDK's batch span processor (a thread of its own, a bounded queue: a full queue drops
//! spans, a stage never waits).
//!
//! A span is started before the call and ended after it; for a call not sampled it is a
//! non-recording span and nothing else happens (no attribute is built, no record looked at).
//! A sampled call also gets, for each of its records that carries a trace context (read from
//! a W3C `traceparent` field at decode), a span in that record's trace: a child of the span the
//! record named, linked both ways with the call's span (see [`CallSpan`]), up to
//! [`MAX_RECORD_SPANS`] a call.

use std::{borrow::Cow, sync::Arc};

use opentelemetry::{
    trace::{
        Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags,
        TraceId, TraceState, Tracer as _, TracerProvider as _,
    },
    Context, InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::{
    trace::{
        BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult, SdkTracer,
        SdkTracerProvider, ShouldSample,
    },
    Resource,
};
use plugin_api::{Record, StageError, TraceContext};

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
            .with_sampler(CallSampler(Sampler::TraceIdRatioBased(traces.sample_ratio)))
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
            record_span_name: format!("{stage} record").into(),
        }
    }

    /// Exports what is queued and stops; blocks (call from a thread of its own).
    pub(crate) fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "OTLP telemetry: the final span export failed");
        }
    }
}

/// At most this many records of one call get a span of their own: the SDK keeps at most 128
/// links a span, and the call's span links to each of them. The records beyond it that carry a
/// trace context are counted on the call's span (`records.untraced`).
pub const MAX_RECORD_SPANS: usize = 128;

/// The host's sampler: a call's span (a root: the host starts it in no context) is sampled by
/// its trace id at the configured ratio; a record's span has a parent (the record's remote
/// context) and is only ever started for a sampled call, so it follows the call's decision,
/// whatever the ratio says of the record's trace id or its caller's sampled flag.
#[derive(Debug, Clone)]
struct CallSampler(Sampler);

impl ShouldSample for CallSampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        match parent.map(|cx| cx.span().span_context().clone()) {
            Some(sc) if sc.is_valid() => SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: sc.trace_state().clone(),
            },
            _ => self
                .0
                .should_sample(parent, trace_id, name, kind, attributes, links),
        }
    }
}

/// Makes one stage's call spans.
#[derive(Clone)]
pub struct StageTracer {
    tracer: SdkTracer,
    stage: Arc<str>,
    span_name: Cow<'static, str>,
    record_span_name: Cow<'static, str>,
}

impl StageTracer {
    /// Starts the span of one call with `records`, now; `None` when the call is not sampled
    /// (no attribute is built then, and no record looked at). For a sampled call, each record
    /// carrying a trace context (up to [`MAX_RECORD_SPANS`]) gets its span, started now too.
    pub fn start(&self, records: &[Record]) -> Option<CallSpan> {
        let mut span = self
            .tracer
            .span_builder(self.span_name.clone())
            .with_kind(SpanKind::Internal)
            .start(&self.tracer);
        if !span.is_recording() {
            return None;
        }
        let call = span.span_context().clone();
        let mut record_spans = Vec::new();
        let mut untraced = 0;
        for (id, trace) in records.iter().filter_map(|r| Some((r.id(), r.trace()?))) {
            if record_spans.len() == MAX_RECORD_SPANS {
                untraced += 1;
                continue;
            }
            let parent = Context::new().with_remote_span_context(remote_context(trace));
            let record = self
                .tracer
                .span_builder(self.record_span_name.clone())
                .with_kind(SpanKind::Consumer)
                .with_links(vec![Link::with_context(call.clone())])
                .start_with_context(&self.tracer, &parent);
            span.add_link(record.span_context().clone(), Vec::new());
            record_spans.push((id, record));
        }
        Some(CallSpan {
            span,
            stage: self.stage.clone(),
            records: record_spans,
            untraced,
        })
    }
}

/// The span of one sampled call, between [`StageTracer::start`] and [`CallSpan::end`], and the
/// spans of its records in their own traces.
///
/// The record's span links to the call's and the call's to each record's: a trace UI (Jaeger,
/// Tempo) shows a span's own links only, and people come from both sides: from a message's
/// trace ("what happened to this request in the pipeline": the link leads to the batch's call,
/// its duration and its other records) and from a slow or failed call ("which requests were
/// in it": the links lead into their traces).
pub struct CallSpan {
    span: opentelemetry_sdk::trace::Span,
    stage: Arc<str>,
    /// (record id, its span).
    records: Vec<(u64, opentelemetry_sdk::trace::Span)>,
    /// Records carrying a trace context beyond [`MAX_RECORD_SPANS`]: no span of their own.
    untraced: usize,
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
    /// The call's trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.span.span_context().trace_id().to_bytes()
    }

    /// The call's span id.
    pub fn span_id(&self) -> [u8; 8] {
        self.span.span_context().span_id().to_bytes()
    }

    /// Ends the span with the call's outcome: attributes `stage`, `operation`, `records.in`,
    /// `records.out`, `records.failed`, `outcome` (`ok`, `partial`: some records failed,
    /// `error`: the call failed as a whole), `error.type` (the call's error, or the first
    /// failed record's), `records.traced` and `records.untraced` (records with a trace
    /// context that got a span, and those beyond the cap); status error for a failed call.
    /// Then ends the records' spans (see [`CallSpan::end_records`]).
    pub fn end(mut self, outcome: &CallOutcome<'_>) {
        let mut attributes = vec![
            KeyValue::new("stage", self.stage.to_string()),
            KeyValue::new("operation", OPERATION),
            KeyValue::new("records.traced", self.records.len() as i64),
            KeyValue::new("records.untraced", self.untraced as i64),
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
        self.end_records(outcome);
        self.span.end();
    }

    /// Ends each record's span with `stage` and `outcome`: `failed` (status error, with
    /// `error.type`) when the call failed or failed that record, else `ok` (passed on, kept,
    /// or taken for later: what becomes of a record later is not this call's outcome).
    fn end_records(&mut self, outcome: &CallOutcome<'_>) {
        if self.records.is_empty() {
            return;
        }
        let error_of = |id: u64| -> Option<&StageError> {
            match outcome {
                CallOutcome::Error { error, .. } => Some(error),
                CallOutcome::Success { failures, .. } => {
                    failures.iter().find(|f| f.id() == id).map(|f| f.error())
                }
            }
        };
        let stage = KeyValue::new("stage", self.stage.to_string());
        for (id, mut span) in self.records.drain(..) {
            match error_of(id) {
                None => span.set_attributes([stage.clone(), KeyValue::new("outcome", "ok")]),
                Some(error) => {
                    span.set_attributes([
                        stage.clone(),
                        KeyValue::new("outcome", "failed"),
                        KeyValue::new("error.type", error.kind().to_owned()),
                    ]);
                    span.set_status(Status::error(error.message().to_owned()));
                }
            }
            span.end();
        }
    }
}

/// A tracer that samples every call and exports nowhere, for tests of what traces feed.
#[cfg(test)]
pub(crate) fn sampling_everything(stage: &str) -> StageTracer {
    let provider = SdkTracerProvider::builder()
        .with_sampler(CallSampler(Sampler::AlwaysOn))
        .build();
    let traces = Traces {
        tracer: provider.tracer("test"),
        provider,
    };
    traces.stage(stage)
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
