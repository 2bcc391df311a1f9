//! The built-in monitor: per stage call, counts, errors by type and latency (HDR histogram,
//! bounded memory whatever the volume), plus the pipeline's message totals.
//!
//! Each stage's statistics are written by that stage's worker only, once per batch, so the
//! locks below are uncontended on the data path; readers take a snapshot.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use plugin_api::{Failure, StageError, StageKind};
use serde::Serialize;

use crate::accounting::{PipelineCounters, Totals};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A latency histogram in nanoseconds, 1 ns to 1 hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static histogram bounds are valid")
}

/// One stage's statistics.
pub struct StageStats {
    pub name: String,
    pub plugin: String,
    pub kind: StageKind,
    calls: AtomicU64,
    errors: AtomicU64,
    records_in: AtomicU64,
    records_out: AtomicU64,
    records_failed: AtomicU64,
    errors_by_type: Mutex<BTreeMap<String, u64>>,
    latency_ns: Mutex<Histogram<u64>>,
}

/// The outcome of one stage call, as the coordinator reports it.
pub enum CallOutcome<'a> {
    /// The call returned; some records may still have failed one by one.
    Success {
        records_in: usize,
        records_out: usize,
        failures: &'a [Failure],
    },
    /// The whole batch failed (an error or a panic).
    Error {
        records_in: usize,
        error: &'a StageError,
    },
}

impl StageStats {
    pub fn new(name: &str, plugin: &str, kind: StageKind) -> Self {
        StageStats {
            name: name.into(),
            plugin: plugin.into(),
            kind,
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            records_failed: AtomicU64::new(0),
            errors_by_type: Mutex::new(BTreeMap::new()),
            latency_ns: Mutex::new(latency_histogram()),
        }
    }

    fn count_error(&self, kind: &str, n: u64) {
        let mut by_type = lock(&self.errors_by_type);
        match by_type.get_mut(kind) {
            Some(c) => *c += n,
            None => {
                by_type.insert(kind.to_owned(), n);
            }
        }
    }

    /// The seeds' `on_success` / `on_error`: one call's outcome and duration.
    pub fn record_call(&self, duration: Option<Duration>, outcome: &CallOutcome<'_>) {
        self.calls.fetch_add(1, Relaxed);
        if let Some(d) = duration {
            let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
            lock(&self.latency_ns).saturating_record(ns);
        }
        match outcome {
            CallOutcome::Success {
                records_in,
                records_out,
                failures,
            } => {
                self.records_in.fetch_add(*records_in as u64, Relaxed);
                self.records_out.fetch_add(*records_out as u64, Relaxed);
                if !failures.is_empty() {
                    self.records_failed
                        .fetch_add(failures.len() as u64, Relaxed);
                    for f in failures.iter() {
                        self.count_error(&f.error.kind, 1);
                    }
                }
            }
            CallOutcome::Error { records_in, error } => {
                self.errors.fetch_add(1, Relaxed);
                self.records_in.fetch_add(*records_in as u64, Relaxed);
                self.records_failed.fetch_add(*records_in as u64, Relaxed);
                self.count_error(&error.kind, 1);
            }
        }
    }

    /// An error outside a batch call (a failed flush).
    pub fn record_error(&self, error: &StageError) {
        self.errors.fetch_add(1, Relaxed);
        self.count_error(&error.kind, 1);
    }

    pub fn snapshot(&self, elapsed: Duration) -> StageSnapshot {
        let h = lock(&self.latency_ns);
        let ms = |ns: u64| ns as f64 / 1e6;
        let calls = self.calls.load(Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-9);
        StageSnapshot {
            stage: self.name.clone(),
            operation: "process",
            plugin: self.plugin.clone(),
            kind: self.kind.as_str(),
            calls,
            errors: self.errors.load(Relaxed),
            records_in: self.records_in.load(Relaxed),
            records_out: self.records_out.load(Relaxed),
            records_failed: self.records_failed.load(Relaxed),
            errors_by_type: lock(&self.errors_by_type).clone(),
            calls_per_second: calls as f64 / secs,
            latency_ms: LatencySummary {
                p50: ms(h.value_at_quantile(0.50)),
                p95: ms(h.value_at_quantile(0.95)),
                p99: ms(h.value_at_quantile(0.99)),
                max: ms(h.max()),
                mean: h.mean() / 1e6,
                count: h.len(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

/// One stage's statistics at a point in time.
#[derive(Debug, Clone, Serialize)]
pub struct StageSnapshot {
    pub stage: String,
    pub operation: &'static str,
    pub plugin: String,
    pub kind: &'static str,
    pub calls: u64,
    pub errors: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub records_failed: u64,
    pub errors_by_type: BTreeMap<String, u64>,
    pub calls_per_second: f64,
    pub latency_ms: LatencySummary,
}

/// The monitor's view of the whole pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub mode: &'static str,
    pub uptime_seconds: f64,
    pub pipeline: Totals,
    pub stages: Vec<StageSnapshot>,
}

/// Statistics of every stage plus the pipeline totals.
pub struct Monitor {
    pub mode: &'static str,
    pub pipeline: Arc<PipelineCounters>,
    pub stages: Vec<Arc<StageStats>>,
    started: Instant,
}

impl Monitor {
    pub fn new(
        mode: &'static str,
        pipeline: Arc<PipelineCounters>,
        stages: Vec<Arc<StageStats>>,
    ) -> Self {
        Monitor {
            mode,
            pipeline,
            stages,
            started: Instant::now(),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let elapsed = self.started.elapsed();
        Snapshot {
            mode: self.mode,
            uptime_seconds: elapsed.as_secs_f64(),
            pipeline: self.pipeline.totals(),
            stages: self.stages.iter().map(|s| s.snapshot(elapsed)).collect(),
        }
    }

    /// Logs per-stage and pipeline totals (at shutdown and on SIGUSR1).
    pub fn log_totals(&self, reason: &str) {
        let snap = self.snapshot();
        for s in &snap.stages {
            tracing::info!(
                reason,
                stage = %s.stage,
                plugin = %s.plugin,
                calls = s.calls,
                records_in = s.records_in,
                records_out = s.records_out,
                records_failed = s.records_failed,
                errors = s.errors,
                errors_by_type = ?s.errors_by_type,
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
