//! One stage's statistics: written by that stage's worker (or, in `event_driven` mode, by the
//! monitor's bus consumer), once per batch; read by snapshots.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use plugin_api::{Failure, Record, StageError, StageKind, ValueKind};
use serde::Serialize;

use crate::{
    accounting::{count_bounded, Tally},
    lock,
};

/// A latency histogram in nanoseconds, 1 ns to 1 hour, 3 significant digits (bounded memory).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static histogram bounds are valid")
}

/// The outcome of one stage call.
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

/// Counts `records` by the value of `field` (missing: `none`; not a string: `other`). A
/// batch holds few distinct types: they are tallied in a short list, the two without a name
/// apart (no string to compare), and each record's type is first compared with the one
/// before it (batches come in runs of one type).
pub fn type_tally(records: &[Record], field: &str) -> Tally {
    let (mut none, mut other) = (0, 0);
    let mut named: Vec<(&str, u64)> = Vec::new();
    let mut last = usize::MAX;
    for r in records {
        match r.get(field).map(|v| v.kind()) {
            None => none += 1,
            Some(ValueKind::Str(t)) => match named.get_mut(last) {
                Some((k, n)) if *k == t => *n += 1,
                _ => match named.iter().position(|(k, _)| *k == t) {
                    Some(at) => {
                        named[at].1 += 1;
                        last = at;
                    }
                    None => {
                        last = named.len();
                        named.push((t, 1));
                    }
                },
            },
            Some(_) => other += 1,
        }
    }
    let unnamed = [("none", none), ("other", other)];
    named
        .into_iter()
        .chain(unnamed.into_iter().filter(|(_, n)| *n > 0))
        .map(|(t, n)| (t.into(), n))
        .collect()
}

/// Plain counts, cumulative or for one window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Counts {
    pub calls: u64,
    pub errors: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub records_failed: u64,
    /// Records the stage took for later (acknowledged delivery), and of those, how many it
    /// settled as delivered (failed ones count in `records_failed`).
    pub records_deferred: u64,
    pub records_delivered_later: u64,
    pub errors_by_type: BTreeMap<String, u64>,
    pub data_types: BTreeMap<String, u64>,
}

impl Counts {
    fn apply(&mut self, outcome: &CallOutcome<'_>) {
        self.calls += 1;
        match outcome {
            CallOutcome::Success {
                records_in,
                records_out,
                failures,
            } => {
                self.records_in += *records_in as u64;
                self.records_out += *records_out as u64;
                self.records_failed += failures.len() as u64;
                for f in failures.iter() {
                    count_bounded(&mut self.errors_by_type, f.error().kind(), 1);
                }
            }
            CallOutcome::Error { records_in, error } => {
                self.errors += 1;
                self.records_in += *records_in as u64;
                self.records_failed += *records_in as u64;
                count_bounded(&mut self.errors_by_type, error.kind(), 1);
            }
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |ns: u64| ns as f64 / 1e6;
        LatencySummary {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1e6,
        }
    }
}

/// Cumulative and current-window values, under one lock so a batch takes it once.
struct State {
    total: Counts,
    window: Counts,
    window_started: Instant,
    latency: Histogram<u64>,
    window_latency: Histogram<u64>,
    /// Ingest to this stage's delivery (exporters and leaf stages only).
    e2e: Histogram<u64>,
    /// Named values the coordinator records (the input queue's depth).
    gauges: BTreeMap<String, f64>,
    window_e2e: Histogram<u64>,
}

/// One stage's statistics.
pub struct StageStats {
    pub name: String,
    pub plugin: String,
    pub kind: StageKind,
    state: Mutex<State>,
}

/// One stage at a point in time: cumulative, or one window.
#[derive(Debug, Clone, Serialize)]
pub struct StageSnapshot {
    pub stage: String,
    pub operation: &'static str,
    pub plugin: String,
    pub kind: &'static str,
    #[serde(flatten)]
    pub counts: Counts,
    pub calls_per_second: f64,
    pub records_per_second: f64,
    pub errors_per_second: f64,
    /// Failed records / records handled.
    pub error_rate: f64,
    pub latency_ms: LatencySummary,
    /// Ingest to delivery, for stages that deliver (exporters, leaves).
    pub end_to_end_ms: Option<LatencySummary>,
    /// Named values recorded by the coordinator (e.g. `input_queue_batches`).
    pub gauges: BTreeMap<String, f64>,
}

impl StageStats {
    pub fn new(name: &str, plugin: &str, kind: StageKind) -> Self {
        StageStats {
            name: name.into(),
            plugin: plugin.into(),
            kind,
            state: Mutex::new(State {
                total: Counts::default(),
                window: Counts::default(),
                window_started: Instant::now(),
                latency: latency_histogram(),
                window_latency: latency_histogram(),
                e2e: latency_histogram(),
                window_e2e: latency_histogram(),
                gauges: BTreeMap::new(),
            }),
        }
    }

    /// The seeds' `on_success` / `on_error`: one call's outcome and duration.
    pub fn record_call(&self, duration: Option<Duration>, outcome: &CallOutcome<'_>) {
        let mut s = lock(&self.state);
        if let Some(d) = duration {
            let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
            s.latency.saturating_record(ns);
            s.window_latency.saturating_record(ns);
        }
        s.total.apply(outcome);
        s.window.apply(outcome);
    }

    /// Sets a named value (see `Coordinator::record_metric`).
    pub fn set_gauge(&self, name: &str, value: f64) {
        let mut s = lock(&self.state);
        match s.gauges.get_mut(name) {
            Some(v) => *v = value,
            None => {
                s.gauges.insert(name.to_owned(), value);
            }
        }
    }

    /// Single-record failures reported apart from their call (event-driven mode).
    pub fn record_failures(&self, error_type: &str, n: u64) {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        for c in [&mut s.total, &mut s.window] {
            c.records_failed += n;
            count_bounded(&mut c.errors_by_type, error_type, n);
        }
    }

    /// An error outside a batch call (a failed flush).
    pub fn record_error(&self, error: &StageError) {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        for c in [&mut s.total, &mut s.window] {
            c.errors += 1;
            count_bounded(&mut c.errors_by_type, error.kind(), 1);
        }
    }

    /// Records taken for later by the stage.
    pub fn record_deferred(&self, n: u64) {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        for c in [&mut s.total, &mut s.window] {
            c.records_deferred += n;
        }
    }

    /// Records taken for later that the stage settled as delivered.
    pub fn record_delivered_later(&self, n: u64) {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        for c in [&mut s.total, &mut s.window] {
            c.records_delivered_later += n;
        }
    }

    /// Counts a batch's records by type (see [`type_tally`]): the maps are touched once per
    /// type per batch, not per record.
    pub fn record_types(&self, tally: &Tally) {
        let mut guard = lock(&self.state);
        let s = &mut *guard;
        for (t, n) in tally.iter() {
            count_bounded(&mut s.total.data_types, t, *n);
            count_bounded(&mut s.window.data_types, t, *n);
        }
    }

    /// Records ingest-to-delivery latency for records this stage delivered, from when their
    /// messages were received (see [`crate::accounting::received_runs`]): one histogram
    /// update per run, a few per batch.
    pub fn record_delivered(&self, received: &[(u64, u64)], now_ns: u64) {
        let mut s = lock(&self.state);
        for &(at, n) in received {
            let ns = now_ns.saturating_sub(at).max(1);
            let _ = s.e2e.record_n(ns, n);
            let _ = s.window_e2e.record_n(ns, n);
        }
    }

    fn build(
        &self,
        counts: Counts,
        elapsed: Duration,
        latency: &Histogram<u64>,
        e2e: &Histogram<u64>,
        gauges: &BTreeMap<String, f64>,
    ) -> StageSnapshot {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let handled = counts.records_in.max(1) as f64;
        StageSnapshot {
            stage: self.name.clone(),
            operation: "process",
            plugin: self.plugin.clone(),
            kind: self.kind.as_str(),
            calls_per_second: counts.calls as f64 / secs,
            records_per_second: counts.records_in as f64 / secs,
            errors_per_second: (counts.errors + counts.records_failed) as f64 / secs,
            error_rate: counts.records_failed as f64 / handled,
            latency_ms: LatencySummary::of(latency),
            end_to_end_ms: (!e2e.is_empty()).then(|| LatencySummary::of(e2e)),
            gauges: gauges.clone(),
            counts,
        }
    }

    /// Ingest-to-delivery latencies recorded so far (empty for stages that do not deliver).
    pub fn end_to_end(&self) -> Histogram<u64> {
        lock(&self.state).e2e.clone()
    }

    /// Cumulative values since start.
    pub fn snapshot(&self, uptime: Duration) -> StageSnapshot {
        let s = lock(&self.state);
        self.build(s.total.clone(), uptime, &s.latency, &s.e2e, &s.gauges)
    }

    /// The current window so far, without resetting it.
    pub fn window(&self) -> StageSnapshot {
        let s = lock(&self.state);
        self.build(
            s.window.clone(),
            s.window_started.elapsed(),
            &s.window_latency,
            &s.window_e2e,
            &s.gauges,
        )
    }

    /// The current window, then starts a new one.
    pub fn take_window(&self) -> StageSnapshot {
        let mut s = lock(&self.state);
        let counts = std::mem::take(&mut s.window);
        let snap = self.build(
            counts,
            s.window_started.elapsed(),
            &s.window_latency,
            &s.window_e2e,
            &s.gauges,
        );
        s.window_latency.reset();
        s.window_e2e.reset();
        s.window_started = Instant::now();
        snap
    }

    /// Cumulative histograms, for Prometheus: (call latency, end to end).
    pub fn histograms(&self) -> (Histogram<u64>, Histogram<u64>) {
        let s = lock(&self.state);
        (s.latency.clone(), s.e2e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::Failure;

    #[test]
    fn counts_percentiles_and_windows_against_a_known_input() {
        let stats = StageStats::new("s", "p", StageKind::Processor);
        // 100 calls of 1..=100 ms, 10 records each; every 10th call fails as a whole.
        for i in 1..=100u64 {
            let error = StageError::new("io", "x");
            let outcome = if i % 10 == 0 {
                CallOutcome::Error {
                    records_in: 10,
                    error: &error,
                }
            } else {
                CallOutcome::Success {
                    records_in: 10,
                    records_out: 9,
                    failures: &[],
                }
            };
            stats.record_call(Some(Duration::from_millis(i)), &outcome);
        }
        let failures = [Failure::new(1, StageError::new("validation", "bad"))];
        stats.record_call(
            None,
            &CallOutcome::Success {
                records_in: 1,
                records_out: 0,
                failures: &failures,
            },
        );
        let s = stats.snapshot(Duration::from_secs(10));
        assert_eq!(s.counts.calls, 101);
        assert_eq!(s.counts.errors, 10);
        assert_eq!(s.counts.records_in, 1001);
        assert_eq!(s.counts.records_failed, 101);
        assert_eq!(s.counts.errors_by_type["io"], 10);
        assert_eq!(s.counts.errors_by_type["validation"], 1);
        assert!((s.calls_per_second - 10.1).abs() < 1e-9);
        // HDR keeps 3 significant digits.
        assert!((s.latency_ms.p50 - 50.0).abs() < 0.1, "{:?}", s.latency_ms);
        assert!((s.latency_ms.p95 - 95.0).abs() < 0.1, "{:?}", s.latency_ms);
        assert!((s.latency_ms.p99 - 99.0).abs() < 0.1, "{:?}", s.latency_ms);
        assert!((s.latency_ms.max - 100.0).abs() < 0.1, "{:?}", s.latency_ms);

        let w = stats.take_window();
        assert_eq!(w.counts.calls, 101);
        assert_eq!(stats.window().counts.calls, 0);
        assert_eq!(stats.window().latency_ms.count, 0);
        assert_eq!(stats.snapshot(Duration::from_secs(10)).counts.calls, 101);
    }

    #[test]
    fn data_types_are_counted_and_bounded() {
        let stats = StageStats::new("s", "p", StageKind::Processor);
        let mut not_a_string = Record::default();
        not_a_string.insert("type", 5);
        let recs: Vec<Record> = ["a", "b", "a", "a", "c", "b"]
            .iter()
            .map(|t| {
                let mut r = Record::default();
                r.insert("type", *t);
                r
            })
            .chain([Record::default(), not_a_string, Record::default()])
            .collect();
        let tally = type_tally(&recs, "type");
        let expected: &[(&str, u64)] = &[("a", 3), ("b", 2), ("c", 1), ("none", 2), ("other", 1)];
        let got: Vec<(&str, u64)> = tally.iter().map(|(t, n)| (&**t, *n)).collect();
        assert_eq!(got, expected);
        stats.record_types(&tally);
        let c = stats.snapshot(Duration::from_secs(1)).counts;
        assert_eq!(c.data_types["a"], 3);
        assert_eq!(c.data_types["b"], 2);
        assert_eq!(c.data_types["none"], 2);
        assert_eq!(c.data_types["other"], 1);
    }
}
