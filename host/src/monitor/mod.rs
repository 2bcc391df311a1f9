//! The built-in monitor: per `stage.operation`, counts, rates, latency percentiles (HDR
//! histograms: bounded memory whatever the volume), errors by type and data types; the
//! pipeline's message totals; and the metrics plugins record. Two views: cumulative (what
//! /metrics serves) and windowed (taken, exported and reset every `monitoring.window`).
//!
//! Each stage's statistics are written by that stage's worker only, once per batch, so their
//! locks are uncontended on the data path; readers take snapshots.

pub mod families;
pub mod plugin;
pub mod process;
pub mod stage;

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;

pub use plugin::PluginMetrics;
pub use stage::{
    latency_histogram, type_tally, CallOutcome, Counts, LatencySummary, StageSnapshot, StageStats,
};

use crate::accounting::{PipelineCounters, Totals};
use crate::clock::unix_secs;
use crate::lock;
use crate::observer::ObserverStats;
use crate::source::zmtp::ConnectionStats;

/// The monitor's cumulative view (`/api/metrics`, the `--summary` file).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub mode: &'static str,
    pub uptime_seconds: f64,
    pub pipeline: Totals,
    pub stages: Vec<StageSnapshot>,
    /// Each source's connections.
    pub sources: Vec<SourceSnapshot>,
    /// The observer of `mode: custom`: call outcomes handed to it, and dropped because its
    /// queue was full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observer: Option<ObserverSnapshot>,
    /// The current window so far.
    pub window: WindowSnapshot,
    pub plugin_metrics: Vec<plugin::SeriesSnapshot>,
}

/// One window: what happened since the previous one was taken.
#[derive(Debug, Clone, Serialize)]
pub struct WindowSnapshot {
    /// Always `monitor.window`, so exported snapshots are easy to pick out downstream.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the window ended (or now, for the window in progress), Unix seconds.
    pub timestamp: f64,
    pub window_seconds: f64,
    /// Pipeline totals during the window (`in_flight`: at its end).
    pub pipeline: Totals,
    pub stages: Vec<StageSnapshot>,
}

/// One source's connections, cumulative.
#[derive(Debug, Clone, Serialize)]
pub struct SourceSnapshot {
    pub source: String,
    pub connections_active: u64,
    pub connections_accepted: u64,
    /// Closed at once because `max_connections` peers were being served.
    pub connections_refused: u64,
    pub handshake_timeouts: u64,
    /// Peers dropped for bytes that are not ZMTP this host speaks, by reason.
    pub protocol_errors: BTreeMap<&'static str, u64>,
}

/// What the observer of `mode: custom` was handed.
#[derive(Debug, Clone, Serialize)]
pub struct ObserverSnapshot {
    pub delivered: u64,
    pub dropped: u64,
}

/// Statistics of every stage plus the pipeline totals.
pub struct Monitor {
    pub mode: &'static str,
    pub pipeline: Arc<PipelineCounters>,
    pub stages: Vec<Arc<StageStats>>,
    pub plugins: Arc<PluginMetrics>,
    sources: Mutex<Vec<(String, Arc<ConnectionStats>)>>,
    observer: Mutex<Option<Arc<ObserverStats>>>,
    started: Instant,
    /// Pipeline totals when the current window started.
    window_base: Mutex<(Instant, Totals)>,
}

fn delta(now: &Totals, base: &Totals) -> Totals {
    let mut by_type = now.failed_by_type.clone();
    for (k, v) in by_type.iter_mut() {
        *v -= base.failed_by_type.get(k).copied().unwrap_or(0);
    }
    by_type.retain(|_, v| *v > 0);
    Totals {
        received: now.received - base.received,
        completed: now.completed - base.completed,
        filtered: now.filtered - base.filtered,
        failed: now.failed - base.failed,
        in_flight: now.in_flight,
        failed_by_type: by_type,
    }
}

impl Monitor {
    pub fn new(
        mode: &'static str,
        pipeline: Arc<PipelineCounters>,
        stages: Vec<Arc<StageStats>>,
        plugins: Arc<PluginMetrics>,
    ) -> Self {
        let now = Instant::now();
        Monitor {
            mode,
            pipeline,
            stages,
            plugins,
            sources: Mutex::new(Vec::new()),
            observer: Mutex::new(None),
            started: now,
            window_base: Mutex::new((now, Totals::default())),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Adds a source's connection counters to the snapshots.
    pub fn register_source(&self, name: &str, stats: Arc<ConnectionStats>) {
        lock(&self.sources).push((name.to_owned(), stats));
    }

    /// Adds the observer's counts to the snapshots.
    pub fn register_observer(&self, stats: Arc<ObserverStats>) {
        *lock(&self.observer) = Some(stats);
    }

    fn source_snapshots(&self) -> Vec<SourceSnapshot> {
        lock(&self.sources)
            .iter()
            .map(|(name, s)| SourceSnapshot {
                source: name.clone(),
                connections_active: s.active.load(Relaxed),
                connections_accepted: s.accepted.load(Relaxed),
                connections_refused: s.refused.load(Relaxed),
                handshake_timeouts: s.handshake_timeouts.load(Relaxed),
                protocol_errors: s.protocol_errors.counts().collect(),
            })
            .collect()
    }

    pub fn stage(&self, name: &str) -> Option<&Arc<StageStats>> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn snapshot(&self) -> Snapshot {
        let uptime = self.uptime();
        Snapshot {
            mode: self.mode,
            uptime_seconds: uptime.as_secs_f64(),
            pipeline: self.pipeline.totals(),
            stages: self.stages.iter().map(|s| s.snapshot(uptime)).collect(),
            sources: self.source_snapshots(),
            observer: lock(&self.observer).as_ref().map(|o| ObserverSnapshot {
                delivered: o.delivered.load(Relaxed),
                dropped: o.dropped.load(Relaxed),
            }),
            window: self.current_window(),
            plugin_metrics: self.plugins.snapshot(),
        }
    }

    /// The window in progress, without resetting it.
    pub fn current_window(&self) -> WindowSnapshot {
        let base = lock(&self.window_base);
        WindowSnapshot {
            kind: "monitor.window",
            timestamp: unix_secs(),
            window_seconds: base.0.elapsed().as_secs_f64(),
            pipeline: delta(&self.pipeline.totals(), &base.1),
            stages: self.stages.iter().map(|s| s.window()).collect(),
        }
    }

    /// Ends the current window and starts the next.
    pub fn take_window(&self) -> WindowSnapshot {
        let mut base = lock(&self.window_base);
        let now = self.pipeline.totals();
        let snapshot = WindowSnapshot {
            kind: "monitor.window",
            timestamp: unix_secs(),
            window_seconds: base.0.elapsed().as_secs_f64(),
            pipeline: delta(&now, &base.1),
            stages: self.stages.iter().map(|s| s.take_window()).collect(),
        };
        *base = (Instant::now(), now);
        snapshot
    }

    /// Ingest-to-delivery latency over every delivering stage, merged.
    pub fn end_to_end(&self) -> LatencySummary {
        let mut all = latency_histogram();
        for s in &self.stages {
            let _ = all.add(s.end_to_end());
        }
        LatencySummary::of(&all)
    }

    /// Logs per-stage and pipeline totals (at shutdown and on SIGUSR1).
    pub fn log_totals(&self, reason: &str) {
        let snap = self.snapshot();
        for s in &snap.stages {
            let c = &s.counts;
            tracing::info!(
                reason,
                stage = %s.stage,
                plugin = %s.plugin,
                calls = c.calls,
                records_in = c.records_in,
                records_out = c.records_out,
                records_failed = c.records_failed,
                errors = c.errors,
                errors_by_type = ?c.errors_by_type,
                p99_ms = s.latency_ms.p99,
                "stage totals"
            );
        }
        let t = &snap.pipeline;
        tracing::info!(
            reason,
            received = t.received,
            completed = t.completed,
            filtered = t.filtered,
            failed = t.failed,
            in_flight = t.in_flight,
            failed_by_type = ?t.failed_by_type,
            "pipeline totals (received = completed + filtered + failed + in_flight)"
        );
    }
}
