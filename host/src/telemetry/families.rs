//! The families `/metrics` serves, as OpenTelemetry instruments: names, descriptions and
//! attributes exactly as Prometheus shows them, units in UCUM (`s`, `By`, `{record}`), all
//! taken from the declarations in [`crate::monitor::families`].
//!
//! Counters and gauges are observable instruments whose callbacks read one [`Reading`] of
//! the monitor per collection; nothing is recorded on the data path. The SDK has no
//! observable histogram, so the latency histograms are synchronous SDK histograms (with the
//! bucket bounds of `/metrics`) that [`Source::reading`] feeds, on the SDK's collection
//! thread, with what the monitor's HDR histograms gained since the previous collection.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram as Hdr;
use opentelemetry::{
    metrics::{AsyncInstrument, BoundHistogram, Histogram, Meter},
    KeyValue,
};

use super::ExportStats;
use crate::{
    admin::LATENCY_BUCKETS,
    events::{BusHandle, BusStats},
    lock,
    monitor::{
        families::*,
        plugin::{family_name, SeriesValue},
        process::ProcessMetrics,
        Monitor, Snapshot,
    },
};
use plugin_api::MetricKind;

/// Everything the callbacks of one collection read: taken once, when the first callback of a
/// collection asks.
pub(crate) struct Reading {
    snap: Snapshot,
    dropped: BTreeMap<&'static str, u64>,
    bus: Option<BusStats>,
    process: Option<ProcessMetrics>,
    /// The values of [`EXPORT_FAMILIES`].
    exports: [Option<u64>; 4],
    /// Plugin counters and gauges by family name (`host_plugin_...`): (attributes, value).
    plugins: HashMap<String, Vec<(Vec<KeyValue>, f64)>>,
}

/// The latency histograms and what of the monitor's they were last fed.
struct Replay {
    call_duration: Histogram<f64>,
    end_to_end: Histogram<f64>,
    fed: HashMap<String, Fed>,
}

/// One stage's histograms, bound to its attributes (a measurement then skips the attribute
/// lookup: about a quarter of the cost), and its HDR histograms as of the previous
/// collection.
struct Fed {
    call_duration: BoundHistogram<f64>,
    /// Bound once the stage delivered something: `/metrics` shows no end-to-end histogram for
    /// a stage that does not deliver, and a bound histogram may be exported before it holds
    /// anything.
    end_to_end: Option<BoundHistogram<f64>>,
    latency: Hdr<u64>,
    e2e: Hdr<u64>,
}

/// What the instruments observe.
pub(crate) struct Source {
    monitor: Arc<Monitor>,
    bus: Option<BusHandle>,
    exports: Arc<ExportStats>,
    /// A reading younger than this is reused: the callbacks of one collection run one after
    /// the other, and collections are an `interval` apart.
    fresh_for: Duration,
    cache: Mutex<Option<(Instant, Arc<Reading>)>>,
    replay: Mutex<Option<Replay>>,
}

impl Source {
    pub(crate) fn new(
        monitor: Arc<Monitor>,
        bus: Option<BusHandle>,
        exports: Arc<ExportStats>,
        interval: Duration,
    ) -> Source {
        Source {
            monitor,
            bus,
            exports,
            fresh_for: (interval / 4).min(Duration::from_millis(500)),
            cache: Mutex::new(None),
            replay: Mutex::new(None),
        }
    }

    /// The next collection reads the monitor anew (the final one at shutdown).
    pub(crate) fn invalidate(&self) {
        *lock(&self.cache) = None;
    }

    fn reading(&self) -> Arc<Reading> {
        let mut cache = lock(&self.cache);
        if let Some((at, reading)) = &*cache {
            if at.elapsed() < self.fresh_for {
                return reading.clone();
            }
        }
        // Fed here, so the histograms hold the same moment as the counters, and before the
        // SDK collects them (it runs every callback first).
        self.feed_histograms();
        let snap = self.monitor.snapshot();
        let reading = Arc::new(Reading {
            plugins: plugin_points(&snap),
            snap,
            dropped: self.monitor.plugins.dropped(),
            bus: self.bus.as_ref().map(|b| b.stats()),
            process: ProcessMetrics::collect().ok(),
            exports: self.exports.values(),
        });
        *cache = Some((Instant::now(), reading.clone()));
        reading
    }

    /// Records into the SDK histograms what each stage's HDR histograms gained since the
    /// last time: one SDK measurement per new observation, at the lowest value of its HDR
    /// bucket, so every `/metrics` bucket count is matched exactly (the sum is within the
    /// HDR's 3 significant digits).
    fn feed_histograms(&self) {
        let mut guard = lock(&self.replay);
        let Some(replay) = guard.as_mut() else { return };
        let replay = &mut *replay;
        for stats in &self.monitor.stages {
            let (latency, e2e) = stats.histograms();
            let fed = replay.fed.entry(stats.name.clone()).or_insert_with(|| Fed {
                call_duration: replay.call_duration.bind(&[
                    KeyValue::new("stage", stats.name.clone()),
                    KeyValue::new("operation", "process"),
                ]),
                end_to_end: None,
                latency: empty_like(&latency),
                e2e: empty_like(&e2e),
            });
            record_gain(&fed.call_duration, &latency, &fed.latency);
            if !e2e.is_empty() {
                let bound = fed.end_to_end.get_or_insert_with(|| {
                    replay
                        .end_to_end
                        .bind(&[KeyValue::new("stage", stats.name.clone())])
                });
                record_gain(bound, &e2e, &fed.e2e);
            }
            (fed.latency, fed.e2e) = (latency, e2e);
        }
    }
}

/// Plugin series as /metrics labels them: `stage`, then the plugin's own labels.
fn plugin_points(snap: &Snapshot) -> HashMap<String, Vec<(Vec<KeyValue>, f64)>> {
    let mut out: HashMap<String, Vec<(Vec<KeyValue>, f64)>> = HashMap::new();
    for s in &snap.plugin_metrics {
        let (kind, value) = match s.value {
            SeriesValue::Counter { value } => (MetricKind::Counter, value),
            SeriesValue::Gauge { value } => (MetricKind::Gauge, value),
            // See `PluginFamilies::update`.
            SeriesValue::Histogram { .. } => continue,
        };
        let mut attrs = vec![KeyValue::new("stage", s.stage.clone())];
        attrs.extend(
            s.labels
                .iter()
                .filter(|(k, _)| *k != "stage" && *k != "le")
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        );
        out.entry(family_name(kind, &s.name))
            .or_default()
            .push((attrs, value));
    }
    out
}

/// The families of plugin metrics, registered as plugins first record them. An instrument
/// cannot be made while the SDK collects (callbacks run under its lock), so a task of the
/// host's runtime looks for new series and registers their families between collections.
///
/// Plugin histograms are left out: the monitor keeps only their bucket counts and sum, which
/// cannot be replayed into an SDK histogram without making up values (they stay on /metrics).
pub(crate) struct PluginFamilies {
    meter: Meter,
    source: Arc<Source>,
    known: Mutex<HashSet<String>>,
    /// The series count at the last look: nothing new, nothing to do.
    seen: AtomicUsize,
}

impl PluginFamilies {
    pub(crate) fn new(meter: Meter, source: Arc<Source>) -> Self {
        PluginFamilies {
            meter,
            source,
            known: Mutex::new(HashSet::new()),
            seen: AtomicUsize::new(0),
        }
    }

    /// Registers the families of series that appeared since the last call.
    pub(crate) fn update(&self) {
        let plugins = &self.source.monitor.plugins;
        let count = plugins.series_count();
        if self.seen.swap(count, Relaxed) == count {
            return;
        }
        let mut known = lock(&self.known);
        for (key, value) in plugins.series() {
            let kind = match value {
                SeriesValue::Counter { .. } => MetricKind::Counter,
                SeriesValue::Gauge { .. } => MetricKind::Gauge,
                SeriesValue::Histogram { .. } => continue,
            };
            let family = family_name(kind, &key.name);
            if known.contains(&family) {
                continue;
            }
            known.insert(family.clone());
            let source = self.source.clone();
            let name = family.clone();
            let observe = move |o: &dyn AsyncInstrument<f64>| {
                if let Some(points) = source.reading().plugins.get(&name) {
                    for (attrs, value) in points {
                        o.observe(*value, attrs);
                    }
                }
            };
            if kind == MetricKind::Counter {
                self.meter
                    .f64_observable_counter(family)
                    .with_description(PLUGIN_HELP)
                    .with_callback(observe)
                    .build();
            } else {
                self.meter
                    .f64_observable_gauge(family)
                    .with_description(PLUGIN_HELP)
                    .with_callback(observe)
                    .build();
            }
        }
    }
}

fn empty_like(h: &Hdr<u64>) -> Hdr<u64> {
    let mut e = h.clone();
    e.reset();
    e
}

/// Records what `now` holds beyond `before` (both in ns) into `into`, in seconds.
fn record_gain(into: &BoundHistogram<f64>, now: &Hdr<u64>, before: &Hdr<u64>) {
    if now.len() <= before.len() {
        return;
    }
    let mut gain = now.clone();
    if gain.subtract(before).is_err() {
        // Same bounds, so this cannot fail; if it did, the gain is unknown: skip it.
        return;
    }
    for v in gain.iter_recorded() {
        let seconds = gain.lowest_equivalent(v.value_iterated_to()) as f64 / 1e9;
        for _ in 0..v.count_since_last_iteration() {
            into.record(seconds);
        }
    }
}

/// Registers every family on `meter`.
pub(crate) fn register(meter: &Meter, source: &Arc<Source>) {
    let r = Registrar { meter, source };
    pipeline(&r);
    stages(&r);
    sources_and_observer(&r);
    process(&r);
    *lock(&source.replay) = Some(Replay {
        call_duration: r.histogram(&HOST_STAGE_CALL_DURATION_SECONDS),
        end_to_end: r.histogram(&HOST_END_TO_END_LATENCY_SECONDS),
        fed: HashMap::new(),
    });
}

struct Registrar<'a> {
    meter: &'a Meter,
    source: &'a Arc<Source>,
}

/// Makes each family the instrument of its kind, with its name, unit and help.
impl Registrar<'_> {
    fn counter(
        &self,
        family: &Family,
        f: impl Fn(&Reading, &dyn AsyncInstrument<u64>) + Send + Sync + 'static,
    ) {
        debug_assert_eq!(family.kind, Kind::Counter, "{}", family.name);
        let source = self.source.clone();
        self.meter
            .u64_observable_counter(family.name)
            .with_unit(family.unit)
            .with_description(family.help)
            .with_callback(move |o| f(&source.reading(), o))
            .build();
    }

    fn f64_counter(
        &self,
        family: &Family,
        f: impl Fn(&Reading, &dyn AsyncInstrument<f64>) + Send + Sync + 'static,
    ) {
        debug_assert_eq!(family.kind, Kind::Counter, "{}", family.name);
        let source = self.source.clone();
        self.meter
            .f64_observable_counter(family.name)
            .with_unit(family.unit)
            .with_description(family.help)
            .with_callback(move |o| f(&source.reading(), o))
            .build();
    }

    fn gauge(
        &self,
        family: &Family,
        f: impl Fn(&Reading, &dyn AsyncInstrument<f64>) + Send + Sync + 'static,
    ) {
        debug_assert_eq!(family.kind, Kind::Gauge, "{}", family.name);
        let source = self.source.clone();
        self.meter
            .f64_observable_gauge(family.name)
            .with_unit(family.unit)
            .with_description(family.help)
            .with_callback(move |o| f(&source.reading(), o))
            .build();
    }

    /// A latency histogram, with the bucket bounds of `/metrics`.
    fn histogram(&self, family: &Family) -> Histogram<f64> {
        debug_assert_eq!(family.kind, Kind::Histogram, "{}", family.name);
        self.meter
            .f64_histogram(family.name)
            .with_unit(family.unit)
            .with_description(family.help)
            .with_boundaries(LATENCY_BUCKETS.to_vec())
            .build()
    }
}

fn kv(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

fn pipeline(r: &Registrar<'_>) {
    r.gauge(&HOST_UPTIME_SECONDS, |x, o| {
        o.observe(x.snap.uptime_seconds, &[])
    });
    r.gauge(&HOST_MONITORING_MODE_INFO, |x, o| {
        o.observe(1.0, &[kv("mode", x.snap.mode)])
    });
    r.counter(&HOST_MESSAGES_RECEIVED_TOTAL, |x, o| {
        o.observe(x.snap.pipeline.received, &[])
    });
    r.counter(&HOST_MESSAGES_COMPLETED_TOTAL, |x, o| {
        o.observe(x.snap.pipeline.completed, &[])
    });
    r.counter(&HOST_MESSAGES_FILTERED_TOTAL, |x, o| {
        o.observe(x.snap.pipeline.filtered, &[])
    });
    r.counter(&HOST_MESSAGES_FAILED_TOTAL, |x, o| {
        o.observe(x.snap.pipeline.failed, &[])
    });
    r.counter(&HOST_MESSAGES_FAILED_BY_TYPE_TOTAL, |x, o| {
        for (kind, n) in &x.snap.pipeline.failed_by_type {
            o.observe(*n, &[kv("error_type", kind.to_string())]);
        }
    });
    r.gauge(&HOST_MESSAGES_IN_FLIGHT, |x, o| {
        o.observe(x.snap.pipeline.in_flight as f64, &[])
    });
    r.counter(&HOST_MONITOR_PLUGIN_UPDATES_DROPPED_TOTAL, |x, o| {
        for (reason, n) in &x.dropped {
            o.observe(*n, &[kv("reason", *reason)]);
        }
    });
    for (i, family) in EXPORT_FAMILIES.iter().enumerate() {
        r.counter(family, move |x, o| {
            if let Some(n) = x.exports[i] {
                o.observe(n, &[]);
            }
        });
    }
    // The event bus's families, present when a bus runs (as on /metrics).
    type BusCount = fn(&BusStats) -> u64;
    let bus: [(&Family, BusCount); 3] = [
        (&HOST_EVENTS_PUBLISHED_TOTAL, |b| b.published),
        (&HOST_EVENTS_DROPPED_TOTAL, |b| b.dropped),
        (&HOST_EVENTS_PUBLISH_FAILED_TOTAL, |b| b.publish_failed),
    ];
    for (family, get) in bus {
        r.counter(family, move |x, o| {
            if let Some(b) = &x.bus {
                o.observe(get(b), &[kv("bus", b.bus)]);
            }
        });
    }
    r.gauge(&HOST_EVENT_BUS_UP, |x, o| {
        if let Some(b) = &x.bus {
            o.observe(if b.healthy { 1.0 } else { 0.0 }, &[kv("bus", b.bus)]);
        }
    });
}

fn stages(r: &Registrar<'_>) {
    for (family, get) in STAGE_COUNTERS {
        r.counter(family, move |x, o| {
            for s in &x.snap.stages {
                o.observe(
                    get(&s.counts),
                    &[kv("stage", s.stage.clone()), kv("operation", s.operation)],
                );
            }
        });
    }
    r.counter(&HOST_STAGE_ERRORS_TOTAL, |x, o| {
        for s in &x.snap.stages {
            for (kind, n) in &s.counts.errors_by_type {
                o.observe(
                    *n,
                    &[
                        kv("stage", s.stage.clone()),
                        kv("operation", s.operation),
                        kv("error_type", kind.clone()),
                    ],
                );
            }
        }
    });
    r.counter(&HOST_STAGE_RECORDS_BY_TYPE_TOTAL, |x, o| {
        for s in &x.snap.stages {
            for (kind, n) in &s.counts.data_types {
                o.observe(
                    *n,
                    &[kv("stage", s.stage.clone()), kv("type", kind.clone())],
                );
            }
        }
    });
}

fn sources_and_observer(r: &Registrar<'_>) {
    r.gauge(&HOST_SOURCE_CONNECTIONS, |x, o| {
        for s in &x.snap.sources {
            o.observe(
                s.connections_active as f64,
                &[kv("source", s.source.clone())],
            );
        }
    });
    r.counter(&HOST_SOURCE_CONNECTIONS_TOTAL, |x, o| {
        for s in &x.snap.sources {
            for (outcome, n) in [
                ("accepted", s.connections_accepted),
                ("refused", s.connections_refused),
            ] {
                o.observe(n, &[kv("source", s.source.clone()), kv("outcome", outcome)]);
            }
        }
    });
    r.counter(&HOST_SOURCE_PEERS_DROPPED_TOTAL, |x, o| {
        for s in &x.snap.sources {
            o.observe(
                s.handshake_timeouts,
                &[
                    kv("source", s.source.clone()),
                    kv("reason", "handshake_timeout"),
                ],
            );
            for (reason, n) in &s.protocol_errors {
                o.observe(*n, &[kv("source", s.source.clone()), kv("reason", *reason)]);
            }
        }
    });
    r.counter(&HOST_OBSERVER_CALLS_TOTAL, |x, o| {
        if let Some(obs) = &x.snap.observer {
            for (outcome, n) in [("delivered", obs.delivered), ("dropped", obs.dropped)] {
                o.observe(n, &[kv("outcome", outcome)]);
            }
        }
    });
}

/// The standard process collector's families, from [`ProcessMetrics::collect`] as on
/// /metrics.
fn process(r: &Registrar<'_>) {
    for (i, family) in PROCESS_FAMILIES.iter().enumerate() {
        let observe = move |x: &Reading, o: &dyn AsyncInstrument<f64>| {
            if let Some(p) = &x.process {
                o.observe(p.values()[i], &[]);
            }
        };
        if family.kind == Kind::Counter {
            r.f64_counter(family, observe);
        } else {
            r.gauge(family, observe);
        }
    }
}
