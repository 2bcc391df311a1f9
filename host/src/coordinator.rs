//! The performance coordinator: wraps every stage call in `start_phase` / `end_phase` and
//! hands the outcome to the observation path. A stage never knows it exists.
//!
//! - `disabled`: no clock read, no event, nothing recorded.
//! - `direct`: the outcome goes straight into the stage's statistics.
//! - `event_driven`: each call becomes typed events on the bus
//!   (`performance.phase.start`, `performance.phase.end`, then
//!   `performance.operation.complete` or `performance.operation.failed`); the monitor consumes
//!   them (see [`consume`]), so local metrics stay complete.
//! - `custom`: as `direct`, and each call's outcome also goes to an observer plugin
//!   ([`crate::observer`]).
//!
//! With `monitoring.otlp.traces` the coordinator also traces the calls: `start_phase` starts
//! the call's span (and its records' spans, see [`crate::telemetry`]), and for a sampled call
//! it enters a `call` span of the host's logs carrying `trace_id` and `span_id` on the
//! worker's thread until `end_phase`, so lines written during the call (the plugin's too)
//! carry them, and the events about the call carry them too ([`Event::trace`]). A call that
//! is not sampled costs one non-recording span and nothing more.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use plugin_api::{CallReport, Record, StageError};

use crate::{
    events::{
        next_context_id, Event, EventBus, EventKind, EventPayload, EventTrace, Pattern,
        Subscription,
    },
    monitor::{CallOutcome, Monitor, StageStats},
    observer::ObserverFeed,
    telemetry::{CallSpan, StageTracer},
};

/// The operation every stage call performs.
pub const OPERATION: &str = "process";
/// The operation of a single record's failure inside a call that returned.
pub const RECORD_OPERATION: &str = "process.record";

/// The operation of records a stage took for later (`Batch::defer_all`) and settled after
/// its call had returned: delivered ones as `records_out`, failed ones as `records_failed`
/// with their error type.
pub const SETTLE_OPERATION: &str = "settle";

/// Observes one stage's calls: how ([`Mode`]), and whether they are traced.
#[derive(Clone)]
pub struct Coordinator {
    mode: Mode,
    /// `monitoring.otlp.traces`: a span per call (sampled). Never with [`Mode::Disabled`].
    tracer: Option<StageTracer>,
}

/// How a stage's calls are observed.
#[derive(Clone)]
pub enum Mode {
    Disabled,
    Direct(Arc<StageStats>),
    EventDriven(Arc<EventDriven>),
    Custom(Arc<StageStats>, Arc<ObserverFeed>),
}

/// What the event-driven coordinator needs, shared by one stage's calls.
pub struct EventDriven {
    pub stage: Arc<str>,
    operation: Arc<str>,
    record_operation: Arc<str>,
    instance: Arc<str>,
    bus: Arc<dyn EventBus>,
}

impl EventDriven {
    pub fn new(stage: &str, instance: Arc<str>, bus: Arc<dyn EventBus>) -> Self {
        EventDriven {
            stage: stage.into(),
            operation: OPERATION.into(),
            record_operation: RECORD_OPERATION.into(),
            instance,
            bus,
        }
    }

    fn emit(
        &self,
        kind: EventKind,
        context_id: u64,
        trace: Option<EventTrace>,
        payload: EventPayload,
    ) {
        self.bus.publish(
            Event::new(kind, self.instance.clone(), context_id, payload).with_trace(trace),
        );
    }

    fn phase(&self) -> EventPayload {
        EventPayload::Phase {
            stage: self.stage.clone(),
            operation: self.operation.clone(),
        }
    }

    fn failed(
        &self,
        context_id: u64,
        trace: Option<EventTrace>,
        operation: &Arc<str>,
        error: &StageError,
        records: u64,
        duration: Option<Duration>,
    ) {
        self.emit(
            EventKind::OperationFailed,
            context_id,
            trace,
            EventPayload::OperationFailed {
                stage: self.stage.clone(),
                operation: operation.clone(),
                error_type: error.kind().into(),
                message: error.message().to_string(),
                records,
                duration_ns: duration.map_or(0, |d| d.as_nanos() as u64),
            },
        );
    }
}

/// A phase in progress. Stays on the worker's thread (a traced call's log span is entered
/// there).
pub struct Phase {
    started: Option<Instant>,
    context_id: u64,
    traced: Option<TracedCall>,
}

/// A sampled call: its span, and the log span entered for its duration.
struct TracedCall {
    span: CallSpan,
    ids: EventTrace,
    _logs: tracing::span::EnteredSpan,
}

impl TracedCall {
    fn start(span: CallSpan) -> TracedCall {
        let ids = EventTrace {
            trace_id: span.trace_id(),
            span_id: span.span_id(),
        };
        // ERROR, like the stage's span (see `logging::stage_span`): it must exist whenever
        // the host logs at all, or the trace id would be missing from the warnings.
        let logs = tracing::error_span!(
            target: "host::stage",
            "call",
            trace_id = %ids.trace_id_hex(),
            span_id = %ids.span_id_hex(),
        )
        .entered();
        TracedCall {
            span,
            ids,
            _logs: logs,
        }
    }
}

impl Phase {
    fn trace(&self) -> Option<EventTrace> {
        self.traced.as_ref().map(|t| t.ids)
    }
}

impl Coordinator {
    pub fn new(mode: Mode, tracer: Option<StageTracer>) -> Coordinator {
        // `disabled` does no work per call: the configuration refuses traces with it.
        let tracer = tracer.filter(|_| !matches!(mode, Mode::Disabled));
        Coordinator { mode, tracer }
    }

    /// Whether calls are observed at all.
    pub fn is_enabled(&self) -> bool {
        !matches!(self.mode, Mode::Disabled)
    }

    /// Where settlements after a call are reported, for an observer (`mode: custom`); the
    /// monitor counts them through the stage's statistics in every mode.
    pub fn late_reports(&self) -> Option<LateReports> {
        match &self.mode {
            Mode::Custom(stats, feed) => Some(LateReports {
                stage: stats.name.as_str().into(),
                feed: Arc::downgrade(feed),
            }),
            _ => None,
        }
    }

    /// Starts a call with `records` (looked at only when the call is traced and sampled).
    #[inline]
    pub fn start_phase(&self, records: &[Record]) -> Phase {
        let traced = self
            .tracer
            .as_ref()
            .and_then(|t| t.start(records))
            .map(TracedCall::start);
        match &self.mode {
            Mode::Disabled => Phase {
                started: None,
                context_id: 0,
                traced,
            },
            Mode::Direct(_) | Mode::Custom(..) => Phase {
                started: Some(Instant::now()),
                context_id: 0,
                traced,
            },
            Mode::EventDriven(ed) => {
                let context_id = next_context_id();
                let trace = traced.as_ref().map(|t| t.ids);
                ed.emit(EventKind::PhaseStart, context_id, trace, ed.phase());
                Phase {
                    started: Some(Instant::now()),
                    context_id,
                    traced,
                }
            }
        }
    }

    #[inline]
    pub fn end_phase(&self, phase: Phase, outcome: &CallOutcome<'_>) {
        let duration = phase.started.map(|s| s.elapsed());
        match &self.mode {
            Mode::Disabled => {}
            Mode::Direct(stats) => stats.record_call(duration, outcome),
            Mode::Custom(stats, feed) => {
                stats.record_call(duration, outcome);
                report(feed, &stats.name, duration, outcome);
            }
            Mode::EventDriven(ed) => {
                let ctx = phase.context_id;
                let trace = phase.trace();
                ed.emit(EventKind::PhaseEnd, ctx, trace, ed.phase());
                match outcome {
                    CallOutcome::Success {
                        records_in,
                        records_out,
                        failures,
                    } => {
                        // Record-level failures first, so the monitor has them when the call
                        // completes.
                        for f in failures.iter() {
                            ed.failed(ctx, trace, &ed.record_operation, f.error(), 1, None);
                        }
                        ed.emit(
                            EventKind::OperationComplete,
                            ctx,
                            trace,
                            EventPayload::OperationComplete {
                                stage: ed.stage.clone(),
                                operation: ed.operation.clone(),
                                duration_ns: duration.map_or(0, |d| d.as_nanos() as u64),
                                records_in: *records_in as u64,
                                records_out: *records_out as u64,
                            },
                        );
                    }
                    CallOutcome::Error { records_in, error } => {
                        let n = *records_in as u64;
                        ed.failed(ctx, trace, &ed.operation, error, n, duration);
                    }
                }
            }
        }
        if let Some(traced) = phase.traced {
            traced.span.end(outcome);
        }
    }

    /// Records a named value for the stage: a gauge in its statistics, or a
    /// `performance.metric.recorded` event in event-driven mode.
    pub fn record_metric(&self, name: &str, value: f64) {
        match &self.mode {
            Mode::Disabled => {}
            Mode::Direct(stats) | Mode::Custom(stats, _) => stats.set_gauge(name, value),
            Mode::EventDriven(ed) => ed.emit(
                EventKind::MetricRecorded,
                0,
                None,
                EventPayload::MetricRecorded {
                    stage: ed.stage.clone(),
                    name: name.into(),
                    value,
                    labels: Vec::new(),
                },
            ),
        }
    }
}

/// An observer's reports of records settled after their call (see [`SETTLE_OPERATION`]),
/// made on whatever thread settles them. Holds the feed weakly: the observer shuts down when
/// the last worker stops, whoever still holds a ticket.
#[derive(Clone)]
pub struct LateReports {
    stage: Arc<str>,
    feed: Weak<ObserverFeed>,
}

impl LateReports {
    pub fn delivered(&self, n: u64) {
        self.push(n, 0, "");
    }

    pub fn failed(&self, n: u64, error_type: &str) {
        self.push(0, n, error_type);
    }

    fn push(&self, records_out: u64, records_failed: u64, error_type: &str) {
        if let Some(feed) = self.feed.upgrade() {
            feed.push(CallReport {
                stage: (*self.stage).into(),
                operation: SETTLE_OPERATION.into(),
                ended_at_ns: crate::clock::unix_ns(),
                duration_ns: 0,
                records_in: records_out + records_failed,
                records_out,
                records_failed,
                error_type: error_type.into(),
            });
        }
    }
}

/// Hands one call's outcome to the observer: the call, then one report per error type of the
/// records it failed one by one (operation `process.record`).
fn report(feed: &ObserverFeed, stage: &str, duration: Option<Duration>, outcome: &CallOutcome<'_>) {
    let ended_at_ns = crate::clock::unix_ns();
    let duration_ns = duration.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let call =
        |operation: &str, records_in, records_out, records_failed, error_type: &str| CallReport {
            stage: stage.into(),
            operation: operation.into(),
            ended_at_ns,
            duration_ns,
            records_in,
            records_out,
            records_failed,
            error_type: error_type.into(),
        };
    match outcome {
        CallOutcome::Success {
            records_in,
            records_out,
            failures,
        } => {
            feed.push(call(
                OPERATION,
                *records_in as u64,
                *records_out as u64,
                failures.len() as u64,
                "",
            ));
            let mut by_type: Vec<(&str, u64)> = Vec::new();
            for f in failures.iter() {
                match by_type.iter_mut().find(|(k, _)| *k == f.error().kind()) {
                    Some((_, n)) => *n += 1,
                    None => by_type.push((f.error().kind(), 1)),
                }
            }
            for (kind, n) in by_type {
                feed.push(call(RECORD_OPERATION, 0, 0, n, kind));
            }
        }
        CallOutcome::Error { records_in, error } => feed.push(call(
            OPERATION,
            *records_in as u64,
            0,
            *records_in as u64,
            error.kind(),
        )),
    }
}

/// Capacity of the monitor's subscription: large, since losing these loses local metrics.
pub const MONITOR_QUEUE: usize = 1 << 18;

/// The monitor's subscription to the performance events.
pub fn subscribe(bus: &dyn EventBus) -> Subscription {
    bus.subscribe(
        Pattern::parse("performance.*").expect("static pattern"),
        MONITOR_QUEUE,
    )
}

/// The monitor's side of `event_driven` mode: applies performance events to the stage
/// statistics until the bus closes the subscription or `stop` fires and the queue is empty.
/// Subscribe (with [`subscribe`]) before the stages start, so no call is missed.
pub async fn consume(
    mut sub: Subscription,
    monitor: Arc<Monitor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            biased;
            e = sub.recv() => e,
            _ = stop.changed() => {
                // Drain what was published before the stop.
                while let Some(e) = sub.try_recv() {
                    apply(&monitor, &e);
                }
                break;
            }
        };
        match event {
            Some(e) => apply(&monitor, &e),
            None => break,
        }
    }
}

fn apply(monitor: &Monitor, event: &Event) {
    match &*event.payload {
        EventPayload::OperationComplete {
            stage,
            duration_ns,
            records_in,
            records_out,
            ..
        } => {
            if let Some(stats) = monitor.stage(stage) {
                stats.record_call(
                    Some(Duration::from_nanos(*duration_ns)),
                    &CallOutcome::Success {
                        records_in: *records_in as usize,
                        records_out: *records_out as usize,
                        failures: &[],
                    },
                );
            }
        }
        EventPayload::OperationFailed {
            stage,
            operation,
            error_type,
            message,
            records,
            duration_ns,
        } => {
            if let Some(stats) = monitor.stage(stage) {
                if &**operation == RECORD_OPERATION {
                    stats.record_failures(error_type, *records);
                } else {
                    let error = StageError::new(&**error_type, message.as_str());
                    stats.record_call(
                        Some(Duration::from_nanos(*duration_ns)),
                        &CallOutcome::Error {
                            records_in: *records as usize,
                            error: &error,
                        },
                    );
                }
            }
        }
        EventPayload::MetricRecorded {
            stage, name, value, ..
        } => {
            if let Some(stats) = monitor.stage(stage) {
                stats.set_gauge(name, *value);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemoryBus;

    fn events_of_one_call(tracer: Option<StageTracer>) -> Vec<Event> {
        let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
        let mut sub = bus.subscribe(Pattern::all(), 64);
        let ed = EventDriven::new("s", "test-host-1".into(), bus.clone());
        let coordinator = Coordinator::new(Mode::EventDriven(Arc::new(ed)), tracer);
        let phase = coordinator.start_phase(&[]);
        let error = StageError::new("boom", "it broke");
        coordinator.end_phase(
            phase,
            &CallOutcome::Error {
                records_in: 3,
                error: &error,
            },
        );
        std::iter::from_fn(|| sub.try_recv()).collect()
    }

    #[test]
    fn every_event_of_a_traced_call_carries_its_trace_and_no_other_does() {
        let events = events_of_one_call(Some(crate::telemetry::sampling_everything("s")));
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::PhaseStart,
                EventKind::PhaseEnd,
                EventKind::OperationFailed
            ]
        );
        let trace = events[0].trace.expect("a trace");
        assert_ne!(trace.trace_id, [0; 16]);
        assert!(events.iter().all(|e| e.trace == Some(trace)), "{events:?}");

        let events = events_of_one_call(None);
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|e| e.trace.is_none()), "{events:?}");
    }
}
