//! The performance coordinator: wraps every stage call in `start_phase` / `end_phase` and
//! hands the outcome to the observation path. A stage never knows it exists.
//!
//! - `disabled`: no clock read, no event, nothing recorded.
//! - `direct`: the outcome goes straight into the stage's statistics.
//! - `event_driven`: each call becomes typed events on the bus
//!   (`performance.phase.start`, `performance.phase.end`, then
//!   `performance.operation.complete` or `performance.operation.failed`); the monitor consumes
//!   them (see [`consume`]), so local metrics stay complete.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use plugin_api::StageError;

use crate::{
    events::{next_context_id, Event, EventBus, EventKind, EventPayload, Pattern, Subscription},
    monitor::{CallOutcome, Monitor, StageStats},
};

/// The operation every stage call performs.
pub const OPERATION: &str = "process";
/// The operation of a single record's failure inside a call that returned.
pub const RECORD_OPERATION: &str = "process.record";

/// How a stage's calls are observed.
#[derive(Clone)]
pub enum Coordinator {
    Disabled,
    Direct(Arc<StageStats>),
    EventDriven(Arc<EventDriven>),
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

    fn emit(&self, kind: EventKind, context_id: u64, payload: EventPayload) {
        self.bus
            .publish(Event::new(kind, self.instance.clone(), context_id, payload));
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
        operation: &Arc<str>,
        error: &StageError,
        records: u64,
        duration: Option<Duration>,
    ) {
        self.emit(
            EventKind::OperationFailed,
            context_id,
            EventPayload::OperationFailed {
                stage: self.stage.clone(),
                operation: operation.clone(),
                error_type: error.kind.as_str().into(),
                message: error.message.to_string(),
                records,
                duration_ns: duration.map_or(0, |d| d.as_nanos() as u64),
            },
        );
    }
}

/// A phase in progress.
pub struct Phase {
    started: Option<Instant>,
    context_id: u64,
}

impl Coordinator {
    /// Whether calls are observed at all.
    pub fn is_enabled(&self) -> bool {
        !matches!(self, Coordinator::Disabled)
    }

    #[inline]
    pub fn start_phase(&self) -> Phase {
        match self {
            Coordinator::Disabled => Phase {
                started: None,
                context_id: 0,
            },
            Coordinator::Direct(_) => Phase {
                started: Some(Instant::now()),
                context_id: 0,
            },
            Coordinator::EventDriven(ed) => {
                let context_id = next_context_id();
                ed.emit(EventKind::PhaseStart, context_id, ed.phase());
                Phase {
                    started: Some(Instant::now()),
                    context_id,
                }
            }
        }
    }

    #[inline]
    pub fn end_phase(&self, phase: Phase, outcome: &CallOutcome<'_>) {
        let duration = phase.started.map(|s| s.elapsed());
        match self {
            Coordinator::Disabled => {}
            Coordinator::Direct(stats) => stats.record_call(duration, outcome),
            Coordinator::EventDriven(ed) => {
                let ctx = phase.context_id;
                ed.emit(EventKind::PhaseEnd, ctx, ed.phase());
                match outcome {
                    CallOutcome::Success {
                        records_in,
                        records_out,
                        failures,
                    } => {
                        // Record-level failures first, so the monitor has them when the call
                        // completes.
                        for f in failures.iter() {
                            ed.failed(ctx, &ed.record_operation, &f.error, 1, None);
                        }
                        ed.emit(
                            EventKind::OperationComplete,
                            ctx,
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
                        ed.failed(ctx, &ed.operation, error, *records_in as u64, duration);
                    }
                }
            }
        }
    }

    /// Records a named value for the stage: a gauge in its statistics, or a
    /// `performance.metric.recorded` event in event-driven mode.
    pub fn record_metric(&self, name: &str, value: f64) {
        match self {
            Coordinator::Disabled => {}
            Coordinator::Direct(stats) => stats.set_gauge(name, value),
            Coordinator::EventDriven(ed) => ed.emit(
                EventKind::MetricRecorded,
                0,
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
