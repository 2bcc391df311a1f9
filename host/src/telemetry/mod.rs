//! The host's own telemetry over OTLP (`monitoring.otlp`): the principal type is
//! [`Telemetry`], an OpenTelemetry SDK meter provider whose periodic reader collects the
//! monitor's and the process's metrics (the families `/metrics` serves, see [`families`])
//! every `interval` and pushes them to an OTLP receiver over gRPC or HTTP.
//!
//! It stays off the data path: the reader runs on the SDK's own thread, reads the monitor
//! the way `/metrics` does (snapshots), and a receiver that is down or slow costs only that
//! thread's time, up to `timeout` per export. Each export's outcome is counted
//! ([`ExportStats`], `host_otlp_export_failures_total`) and failures are logged at most once
//! a minute. [`Telemetry::shutdown`] makes one last export, bounded by `timeout`.
//!
//! With `traces`, each stage call can also become a span ([`StageTracer`], started and ended
//! by the stage's coordinator around the call, sampled by trace id), and each of a sampled
//! call's records that carries a trace context a span in its own trace; exported by the
//! SDK's batch span processor.

mod exporter;
mod families;
mod http;
mod traces;

#[cfg(test)]
pub(crate) use traces::sampling_everything;
pub use traces::{CallSpan, StageTracer, MAX_RECORD_SPANS};

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use opentelemetry::{metrics::MeterProvider as _, InstrumentationScope, KeyValue};
use opentelemetry_sdk::{
    metrics::{PeriodicReader, SdkMeterProvider},
    Resource,
};

use crate::{
    config::OtlpTelemetryConfig,
    events::{instance_id, BusHandle},
    monitor::Monitor,
};
use families::{PluginFamilies, Source};

/// Exports of the host's metrics, and of span batches when traces are on, by outcome.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    pub failed: AtomicU64,
    /// Whether spans are exported at all (`monitoring.otlp.traces`).
    pub traces: bool,
    pub span_batches_exported: AtomicU64,
    pub span_batches_failed: AtomicU64,
}

impl ExportStats {
    /// The values of [`EXPORT_FAMILIES`](crate::monitor::families::EXPORT_FAMILIES); the span
    /// ones only when spans are exported.
    pub fn values(&self) -> [Option<u64>; 4] {
        let (exported, failed) = (self.exported.load(Relaxed), self.failed.load(Relaxed));
        let spans = self.traces.then(|| {
            (
                self.span_batches_exported.load(Relaxed),
                self.span_batches_failed.load(Relaxed),
            )
        });
        [
            Some(exported + failed),
            Some(failed),
            spans.map(|(exported, failed)| exported + failed),
            spans.map(|(_, failed)| failed),
        ]
    }
}

/// Why OTLP telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("monitoring.otlp: cannot build the OTLP exporter")]
    Build {
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("monitoring.otlp.headers: {name:?} cannot be sent as a header")]
    Header { name: String },
}

/// The running exporter of the host's metrics.
pub struct Telemetry {
    provider: SdkMeterProvider,
    plugin_families: Arc<PluginFamilies>,
    /// Registers plugin families as they appear (see [`PluginFamilies`]).
    watcher: tokio::task::JoinHandle<()>,
    source: Arc<Source>,
    stats: Arc<ExportStats>,
    timeout: Duration,
    url: String,
    /// `traces`: the stage calls' spans.
    traces: Option<Arc<traces::Traces>>,
}

/// `service.name` (unless `resource` sets it), `service.version`, `service.instance.id`
/// (the event bus's instance id: host name and pid), then the configured attributes.
fn resource(config: &OtlpTelemetryConfig) -> Resource {
    Resource::builder()
        .with_service_name("host")
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance_id().to_string()),
        ])
        .with_attributes(
            config
                .resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

impl Telemetry {
    /// Starts exporting every `config.interval`. Call inside the host's runtime (gRPC keeps
    /// its connection there, HTTP runs its requests there).
    pub fn start(
        config: &OtlpTelemetryConfig,
        monitor: Arc<Monitor>,
        bus: Option<BusHandle>,
    ) -> Result<Telemetry, TelemetryError> {
        let stats = Arc::new(ExportStats {
            traces: config.traces.is_some(),
            ..ExportStats::default()
        });
        let traces = match &config.traces {
            Some(t) => Some(Arc::new(traces::Traces::start(
                config,
                t,
                resource(config),
                stats.clone(),
            )?)),
            None => None,
        };
        let url = exporter::export_url(config);
        let otlp = exporter::build(config, tokio::runtime::Handle::current())?;
        let reader =
            PeriodicReader::builder(exporter::Counted::new(otlp, stats.clone(), url.clone()))
                .with_interval(config.interval)
                .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource(config))
            .with_reader(reader)
            .build();
        let source = Arc::new(Source::new(monitor, bus, stats.clone(), config.interval));
        let meter = register(&provider, &source);
        let plugin_families = Arc::new(PluginFamilies::new(meter, source.clone()));
        let watcher = tokio::spawn(watch_plugin_families(
            plugin_families.clone(),
            (config.interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        ));
        tracing::info!(
            endpoint = %url,
            protocol = ?config.protocol,
            interval = ?config.interval,
            "OTLP telemetry: exporting the host's metrics"
        );
        Ok(Telemetry {
            provider,
            plugin_families,
            watcher,
            source,
            stats,
            timeout: config.timeout,
            url,
            traces,
        })
    }

    /// What makes the spans of `stage`'s calls, when traces are on.
    pub fn stage_tracer(&self, stage: &str) -> Option<StageTracer> {
        self.traces.as_ref().map(|t| t.stage(stage))
    }

    /// Export outcomes so far (for /metrics).
    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }

    /// Makes one last export of the final values (and of the queued spans), waiting at most
    /// `timeout` (and a little more) for it; then stops the reader. The SDK's shutdowns block:
    /// each runs on a thread of its own, the two side by side so that neither waits for the
    /// other, and they are waited for here with a bound (a runtime would wait for its blocking
    /// threads when it is dropped, however long they take).
    pub async fn shutdown(self) {
        self.watcher.abort();
        // Families that appeared since the last look make the final export too.
        self.plugin_families.update();
        self.source.invalidate();
        let provider = self.provider;
        let metrics = on_a_thread("otlp-metrics-shutdown", move || provider.shutdown());
        // The workers have stopped: every call's span is queued.
        let spans = self.traces.map(|traces| {
            on_a_thread("otlp-traces-shutdown", move || {
                traces.shutdown();
                Ok(())
            })
        });
        let bound = self.timeout + Duration::from_secs(1);
        let done = tokio::time::timeout(bound, async move {
            let metrics = metrics.await;
            if let Some(spans) = spans {
                let _ = spans.await;
            }
            metrics
        })
        .await;
        match done {
            Ok(Ok(())) => {
                tracing::debug!(endpoint = %self.url, "OTLP telemetry: final export done")
            }
            Ok(Err(error)) => {
                tracing::warn!(endpoint = %self.url, %error, "OTLP telemetry: the final export failed")
            }
            Err(_) => tracing::warn!(
                endpoint = %self.url,
                timeout = ?bound,
                "OTLP telemetry: the final export did not finish in time; giving up"
            ),
        }
    }
}

/// Runs `f` on a thread of its own; its result, or an error if the thread could not start or
/// panicked.
async fn on_a_thread(
    name: &str,
    f: impl FnOnce() -> opentelemetry_sdk::error::OTelSdkResult + Send + 'static,
) -> opentelemetry_sdk::error::OTelSdkResult {
    use opentelemetry_sdk::error::OTelSdkError;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| OTelSdkError::InternalFailure(format!("cannot start a thread: {e}")))?;
    rx.await
        .map_err(|_| OTelSdkError::InternalFailure("the shutdown thread panicked".into()))?
}

/// The host's instruments on `provider`, under the scope `host`; returns the meter, for the
/// plugin families to come.
fn register(provider: &SdkMeterProvider, source: &Arc<Source>) -> opentelemetry::metrics::Meter {
    let scope = InstrumentationScope::builder("host")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let meter = provider.meter_with_scope(scope);
    families::register(&meter, source);
    meter
}

async fn watch_plugin_families(families: Arc<PluginFamilies>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        families.update();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use opentelemetry_sdk::{
        error::OTelSdkResult,
        metrics::{
            data::{AggregatedMetrics, MetricData, ResourceMetrics},
            exporter::PushMetricExporter,
            PeriodicReader, SdkMeterProvider, Temporality,
        },
    };
    use plugin_api::{MetricKind, StageError, StageKind};

    use super::{ExportStats, PluginFamilies, Source};
    use crate::{
        accounting::PipelineCounters,
        admin::LATENCY_BUCKETS,
        monitor::{CallOutcome, Monitor, PluginMetrics, StageStats},
    };

    /// One data point as exported: (name, unit, kind, attributes, value or histogram).
    #[derive(Debug, Clone)]
    struct Point {
        name: String,
        unit: String,
        kind: &'static str,
        attrs: BTreeMap<String, String>,
        value: f64,
        /// Per-bucket counts (histograms only), the last one above the last bound.
        buckets: Vec<u64>,
    }

    /// Keeps what the last export carried.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Point>>>);

    fn flatten<T: Copy>(
        name: &str,
        unit: &str,
        data: &MetricData<T>,
        f: fn(T) -> f64,
    ) -> Vec<Point> {
        let attrs = |it: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
            it.map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect()
        };
        let point = |kind, attrs, value: f64, buckets| Point {
            name: name.into(),
            unit: unit.into(),
            kind,
            attrs,
            value,
            buckets,
        };
        match data {
            MetricData::Gauge(g) => g
                .data_points()
                .map(|p| point("gauge", attrs(&mut p.attributes()), f(p.value()), vec![]))
                .collect(),
            MetricData::Sum(s) => {
                assert_eq!(s.temporality(), Temporality::Cumulative, "{name}");
                let kind = if s.is_monotonic() {
                    "counter"
                } else {
                    "updown"
                };
                s.data_points()
                    .map(|p| point(kind, attrs(&mut p.attributes()), f(p.value()), vec![]))
                    .collect()
            }
            MetricData::Histogram(h) => h
                .data_points()
                .map(|p| {
                    assert_eq!(p.bounds().collect::<Vec<_>>(), LATENCY_BUCKETS);
                    point(
                        "histogram",
                        attrs(&mut p.attributes()),
                        p.count() as f64,
                        p.bucket_counts().collect(),
                    )
                })
                .collect(),
            MetricData::ExponentialHistogram(_) => panic!("{name}: exponential histogram"),
        }
    }

    impl PushMetricExporter for Capture {
        async fn export(&self, rm: &ResourceMetrics) -> OTelSdkResult {
            let mut points = Vec::new();
            for sm in rm.scope_metrics() {
                assert_eq!(sm.scope().name(), "host");
                for m in sm.metrics() {
                    points.extend(match m.data() {
                        AggregatedMetrics::F64(d) => flatten(m.name(), m.unit(), d, |v| v),
                        AggregatedMetrics::U64(d) => flatten(m.name(), m.unit(), d, |v| v as f64),
                        AggregatedMetrics::I64(_) => panic!("{}: i64", m.name()),
                    });
                }
            }
            *self.0.lock().unwrap() = points;
            Ok(())
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    fn one<'a>(points: &'a [Point], name: &str, attrs: &[(&str, &str)]) -> &'a Point {
        let want: BTreeMap<String, String> = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<_> = points
            .iter()
            .filter(|p| p.name == name && p.attrs == want)
            .collect();
        assert_eq!(found.len(), 1, "{name} {want:?} in {points:#?}");
        found[0]
    }

    fn call(stats: &StageStats, ms: u64) {
        stats.record_call(
            Some(Duration::from_millis(ms)),
            &CallOutcome::Success {
                records_in: 10,
                records_out: 9,
                failures: &[],
            },
        );
    }

    #[test]
    fn monitor_families_are_exported_with_prometheus_names_units_labels_and_values() {
        let stats = Arc::new(StageStats::new("parse", "rules", StageKind::Processor));
        let pipeline = Arc::new(PipelineCounters::with_limits(100, usize::MAX));
        let monitor = Arc::new(Monitor::new(
            "direct",
            pipeline.clone(),
            vec![stats.clone()],
            Arc::new(PluginMetrics::default()),
        ));
        let monitor_for_source = monitor.clone();
        for ms in [1, 2, 20] {
            call(&stats, ms);
        }
        let error = StageError::new("io", "x");
        stats.record_call(
            Some(Duration::from_millis(700)),
            &CallOutcome::Error {
                records_in: 5,
                error: &error,
            },
        );
        pipeline.reject("malformed", 2);
        let plugins = monitor.plugins.clone();
        plugins.record(
            "parse",
            MetricKind::Counter,
            "records",
            3.0,
            &[("type", "a")],
        );
        plugins.record("parse", MetricKind::Gauge, "depth", 7.0, &[]);
        plugins.record("parse", MetricKind::Histogram, "write_seconds", 0.1, &[]);

        let capture = Capture::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(capture.clone())
                    .with_interval(Duration::from_secs(3600))
                    .build(),
            )
            .build();
        let exports = Arc::new(ExportStats::default());
        let source = Arc::new(Source::new(
            monitor_for_source,
            None,
            exports,
            Duration::from_secs(3600),
        ));
        let meter = super::register(&provider, &source);
        let plugin_families = PluginFamilies::new(meter, source.clone());
        plugin_families.update();

        provider.force_flush().unwrap();
        let points = capture.0.lock().unwrap().clone();
        let stage = [("stage", "parse"), ("operation", "process")];
        let calls = one(&points, "host_stage_calls_total", &stage);
        assert_eq!(
            (calls.kind, calls.unit.as_str(), calls.value),
            ("counter", "{call}", 4.0)
        );
        assert_eq!(
            one(&points, "host_stage_records_in_total", &stage).value,
            35.0
        );
        assert_eq!(
            one(&points, "host_stage_records_out_total", &stage).value,
            27.0
        );
        assert_eq!(
            one(&points, "host_stage_call_errors_total", &stage).value,
            1.0
        );
        let errors = [
            ("stage", "parse"),
            ("operation", "process"),
            ("error_type", "io"),
        ];
        assert_eq!(one(&points, "host_stage_errors_total", &errors).value, 1.0);
        let failed = one(
            &points,
            "host_messages_failed_by_type_total",
            &[("error_type", "malformed")],
        );
        assert_eq!((failed.kind, failed.value), ("counter", 2.0));
        assert_eq!(one(&points, "host_messages_received_total", &[]).value, 2.0);
        let mode = one(&points, "host_monitoring_mode_info", &[("mode", "direct")]);
        assert_eq!((mode.kind, mode.value), ("gauge", 1.0));
        let uptime = one(&points, "host_uptime_seconds", &[]);
        assert_eq!((uptime.kind, uptime.unit.as_str()), ("gauge", "s"));

        // The histogram's buckets are exactly /metrics's cumulative `le` counts.
        let h = one(&points, "host_stage_call_duration_seconds", &stage);
        assert_eq!((h.kind, h.unit.as_str(), h.value), ("histogram", "s", 4.0));
        let (latency, _) = stats.histograms();
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i];
            assert_eq!(
                cumulative,
                latency.count_between(0, (le * 1e9) as u64),
                "le {le}"
            );
        }
        assert_eq!(cumulative + h.buckets[LATENCY_BUCKETS.len()], 4);
        // As on /metrics: no end-to-end histogram for a stage that delivered nothing.
        assert!(!points
            .iter()
            .any(|p| p.name == "host_end_to_end_latency_seconds"));

        let cpu = one(&points, "process_cpu_seconds_total", &[]);
        assert_eq!((cpu.kind, cpu.unit.as_str()), ("counter", "s"));
        let rss = one(&points, "process_resident_memory_bytes", &[]);
        assert!(rss.value > 0.0 && rss.unit == "By", "{rss:?}");
        assert!(one(&points, "process_threads", &[]).value >= 1.0);
        assert_eq!(
            one(&points, "host_otlp_export_failures_total", &[]).value,
            0.0
        );

        // The next export holds the new calls once, not the earlier ones again.
        call(&stats, 3);
        stats.record_delivered(&[(1_000_000, 4)], 3_000_000);
        plugins.record("parse", MetricKind::Counter, "late", 1.0, &[]);
        plugin_families.update();
        source.invalidate();
        provider.force_flush().unwrap();
        let points = capture.0.lock().unwrap().clone();
        assert_eq!(
            one(&points, "host_stage_call_duration_seconds", &stage).value,
            5.0
        );
        assert_eq!(one(&points, "host_stage_calls_total", &stage).value, 5.0);
        let e2e = one(
            &points,
            "host_end_to_end_latency_seconds",
            &[("stage", "parse")],
        );
        assert_eq!(e2e.value, 4.0);
        // 2 ms: in the bucket up to 5 ms.
        let five_ms = LATENCY_BUCKETS.iter().position(|b| *b == 5e-3).unwrap();
        assert_eq!(e2e.buckets[five_ms], 4, "{e2e:?}");
        assert_eq!(
            one(&points, "host_plugin_late_total", &[("stage", "parse")]).value,
            1.0
        );
    }
}
