//! The observation path's parts that the topology wires in: health checks per component,
//! health events, and the windowed snapshots handed to `monitoring.export_to`.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use abi_stable::std_types::RVec;
use plugin_api::{HealthStatus, Record, StageKind};
use tokio::sync::{mpsc, watch};

use super::probe::StageProbe;
use crate::{
    accounting::{Envelope, PipelineCounters, Queued},
    config::HealthConfig,
    events::{Event, EventBus, EventKind, EventPayload, HealthState},
    health::{CheckFn, Component, ComponentHealth, ComponentKind, HealthListener, StatusChange},
    monitor::{Monitor, StageStats},
};

/// A stage's error rate is judged only once its window has seen this many records.
const MIN_RECORDS_FOR_ERROR_RATE: u64 = 10;

/// A stage: the plugin's own health answer (an exporter's covers its target), degraded when
/// its error rate over the current window passes `threshold`.
pub fn stage_check(
    name: &str,
    kind: StageKind,
    probe: Arc<StageProbe>,
    stats: Arc<StageStats>,
    config: &HealthConfig,
) -> Component {
    let (threshold, timeout) = (config.error_rate_threshold, config.timeout);
    let check: CheckFn = Arc::new(move || {
        let probe = probe.clone();
        let stats = stats.clone();
        Box::pin(async move {
            // Asked of the stage's worker: no thread and no lock of its own, so a stage
            // stuck in a call costs nothing per round.
            let (mut status, mut reason) = probe.check(timeout).await;
            let w = stats.window();
            if status == HealthStatus::Healthy
                && w.counts.records_in >= MIN_RECORDS_FOR_ERROR_RATE
                && w.error_rate > threshold
            {
                status = HealthStatus::Degraded;
                reason = format!(
                    "error rate {:.3} over the current window ({} of {} records failed) exceeds {threshold}",
                    w.error_rate, w.counts.records_failed, w.counts.records_in
                );
            }
            (status, reason)
        })
    });
    Component {
        name: format!("stage/{name}"),
        kind: if kind == StageKind::Exporter {
            ComponentKind::Exporter
        } else {
            ComponentKind::Stage
        },
        check,
    }
}

/// A source: up while its socket is open and read.
pub fn source_check(name: &str, endpoint: &str, up: Arc<AtomicBool>) -> Component {
    let endpoint = endpoint.to_owned();
    Component {
        name: format!("source/{name}"),
        kind: ComponentKind::Source,
        check: Arc::new(move || {
            let ok = up.load(Relaxed);
            let endpoint = endpoint.clone();
            Box::pin(async move {
                if ok {
                    (HealthStatus::Healthy, String::new())
                } else {
                    (HealthStatus::Unhealthy, format!("not reading {endpoint}"))
                }
            })
        }),
    }
}

/// The event bus: Redis reachable (the memory bus is always healthy).
pub fn bus_check(bus: Arc<dyn EventBus>) -> Component {
    Component {
        name: "event_bus".into(),
        kind: ComponentKind::EventBus,
        check: Arc::new(move || {
            let h = bus.health();
            Box::pin(async move {
                if h.healthy {
                    (HealthStatus::Healthy, String::new())
                } else {
                    (HealthStatus::Unhealthy, h.reason)
                }
            })
        }),
    }
}

fn state(s: HealthStatus) -> HealthState {
    HealthState::from(s)
}

/// Publishes `health.check.completed`, `health.status.changed` and
/// `health.component.degraded`.
pub struct HealthEvents {
    bus: Arc<dyn EventBus>,
    instance: Arc<str>,
}

impl HealthEvents {
    pub fn new(bus: Arc<dyn EventBus>, instance: Arc<str>) -> Self {
        HealthEvents { bus, instance }
    }

    fn emit(&self, kind: EventKind, payload: EventPayload) {
        self.bus
            .publish(Event::new(kind, self.instance.clone(), 0, payload));
    }
}

impl HealthListener for HealthEvents {
    fn checked(&self, r: &ComponentHealth) {
        self.emit(
            EventKind::HealthCheckCompleted,
            EventPayload::HealthCheck {
                component: r.component.as_str().into(),
                status: state(r.status),
                reason: r.reason.clone(),
            },
        );
    }

    fn changed(&self, c: &StatusChange) {
        self.emit(
            EventKind::HealthStatusChanged,
            EventPayload::StatusChanged {
                component: c.component.as_str().into(),
                from: state(c.from),
                to: state(c.to),
                reason: c.reason.clone(),
            },
        );
        if c.to == HealthStatus::Degraded {
            self.emit(
                EventKind::HealthComponentDegraded,
                EventPayload::Degraded {
                    component: c.component.as_str().into(),
                    reason: c.reason.clone(),
                },
            );
        }
    }
}

/// Every `every`, and once more when stopping: takes the monitor's window, logs it at debug
/// and hands it, as one record, to each `export_to` stage.
pub async fn windows(
    monitor: Arc<Monitor>,
    every: Duration,
    targets: Vec<mpsc::Sender<Queued>>,
    mut stop: watch::Receiver<bool>,
) {
    let every = every.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let last = tokio::select! {
            _ = stop.changed() => true,
            _ = tick.tick() => false,
        };
        export_window(&monitor, &targets, &monitor.pipeline).await;
        if last {
            break;
        }
    }
}

async fn export_window(
    monitor: &Monitor,
    targets: &[mpsc::Sender<Queued>],
    counters: &Arc<PipelineCounters>,
) {
    let window = monitor.take_window();
    let json = match serde_json::to_value(&window) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "window snapshot could not be serialized");
            return;
        }
    };
    tracing::debug!(window = %json, "monitor window");
    if targets.is_empty() {
        return;
    }
    let record: Record = match serde_json::from_value(json) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "window snapshot is not a record");
            return;
        }
    };
    // Snapshots are not messages: an empty lineage keeps them out of the message totals.
    let mut records = RVec::with_capacity(1);
    records.push(record);
    let envelope = Envelope::new(records, counters.unaccounted());
    for (tx, envelope) in targets.iter().zip(envelope.fan_out(targets.len())) {
        if tx.send(envelope.into()).await.is_err() {
            tracing::warn!("a monitoring.export_to stage stopped before the window could reach it");
        }
    }
}
