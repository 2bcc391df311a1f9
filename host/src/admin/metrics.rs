//! The monitor, health and event bus, rendered as Prometheus metrics. Every name carries its
//! unit and `_total` where it counts, and every family has HELP.

use hdrhistogram::Histogram;
use plugin_api::{HealthStatus, MetricKind};

use super::{exposition::Exposition, server::ConnectionCounts, AdminState};
use crate::monitor::{
    plugin::{family_name, SeriesValue, PLUGIN_BUCKETS},
    process::{ProcessMetrics, PROCESS_FAMILIES},
};
use crate::telemetry::EXPORT_FAMILIES;

/// Reads one count out of a stage's counts.
type CountOf = fn(&crate::monitor::Counts) -> u64;

/// Bucket bounds for latencies, in seconds (OTLP telemetry uses the same).
pub const LATENCY_BUCKETS: [f64; 14] = [
    1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0,
];

/// (upper bound in seconds, cumulative count), sum in seconds, count: from a histogram of ns.
fn seconds_buckets(h: &Histogram<u64>) -> (Vec<(f64, u64)>, f64, u64) {
    let buckets = LATENCY_BUCKETS
        .iter()
        .map(|le| (*le, h.count_between(0, (le * 1e9) as u64)))
        .collect();
    (buckets, h.mean() * h.len() as f64 / 1e9, h.len())
}

/// `connections`: the admin server's own counts, when a server is serving the API.
pub async fn render(state: &AdminState, connections: Option<ConnectionCounts>) -> String {
    let mut e = Exposition::default();
    let snap = state.monitor.snapshot();
    let t = &snap.pipeline;

    e.family(
        "host_uptime_seconds",
        "gauge",
        "Seconds since the pipeline started.",
    );
    e.sample("host_uptime_seconds", &[], snap.uptime_seconds);
    e.family(
        "host_monitoring_mode_info",
        "gauge",
        "The coordinator mode (always 1, see the mode label).",
    );
    e.sample("host_monitoring_mode_info", &[("mode", snap.mode)], 1.0);

    for (name, help, value) in [
        (
            "host_messages_received_total",
            "Messages received by the sources.",
            t.received,
        ),
        (
            "host_messages_completed_total",
            "Messages delivered by every branch that kept them.",
            t.completed,
        ),
        (
            "host_messages_filtered_total",
            "Messages dropped on purpose by a stage.",
            t.filtered,
        ),
    ] {
        e.family(name, "counter", help);
        e.sample(name, &[], value as f64);
    }
    e.family(
        "host_messages_failed_total",
        "counter",
        "Messages that failed.",
    );
    e.sample("host_messages_failed_total", &[], t.failed as f64);
    // The breakdown is its own family, so that summing it does not count failures twice.
    e.family(
        "host_messages_failed_by_type_total",
        "counter",
        "Messages that failed, by the error type of their first failure.",
    );
    for (kind, n) in &t.failed_by_type {
        e.sample(
            "host_messages_failed_by_type_total",
            &[("error_type", kind)],
            *n as f64,
        );
    }
    e.family(
        "host_messages_in_flight",
        "gauge",
        "Messages received and not yet settled.",
    );
    e.sample("host_messages_in_flight", &[], t.in_flight as f64);

    let counters: [(&str, &str, CountOf); 5] = [
        (
            "host_stage_calls_total",
            "Stage calls (one per batch).",
            |c| c.calls,
        ),
        (
            "host_stage_call_errors_total",
            "Stage calls that failed as a whole (errors and panics).",
            |c| c.errors,
        ),
        (
            "host_stage_records_in_total",
            "Records handed to the stage.",
            |c| c.records_in,
        ),
        (
            "host_stage_records_out_total",
            "Records the stage passed on (exporters: exported).",
            |c| c.records_out,
        ),
        (
            "host_stage_records_failed_total",
            "Records the stage failed.",
            |c| c.records_failed,
        ),
    ];
    for (name, help, get) in counters {
        e.family(name, "counter", help);
        for s in &snap.stages {
            e.sample(
                name,
                &[("stage", &s.stage), ("operation", s.operation)],
                get(&s.counts) as f64,
            );
        }
    }
    e.family(
        "host_stage_errors_total",
        "counter",
        "Stage errors by error type (whole calls and single records).",
    );
    for s in &snap.stages {
        for (kind, n) in &s.counts.errors_by_type {
            e.sample(
                "host_stage_errors_total",
                &[
                    ("stage", &s.stage),
                    ("operation", s.operation),
                    ("error_type", kind),
                ],
                *n as f64,
            );
        }
    }
    e.family(
        "host_stage_records_by_type_total",
        "counter",
        "Records handed to the stage, by the value of the monitored type field.",
    );
    for s in &snap.stages {
        for (kind, n) in &s.counts.data_types {
            e.sample(
                "host_stage_records_by_type_total",
                &[("stage", &s.stage), ("type", kind)],
                *n as f64,
            );
        }
    }

    let hists: Vec<_> = state
        .monitor
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.histograms()))
        .collect();
    e.family(
        "host_stage_call_duration_seconds",
        "histogram",
        "Duration of stage calls.",
    );
    for (stage, (latency, _)) in &hists {
        let (b, sum, count) = seconds_buckets(latency);
        e.histogram(
            "host_stage_call_duration_seconds",
            &[("stage", stage), ("operation", "process")],
            &b,
            sum,
            count,
        );
    }
    e.family(
        "host_end_to_end_latency_seconds",
        "histogram",
        "Ingest to delivery, per delivering stage (exporter branch).",
    );
    for (stage, (_, e2e)) in &hists {
        if !e2e.is_empty() {
            let (b, sum, count) = seconds_buckets(e2e);
            e.histogram(
                "host_end_to_end_latency_seconds",
                &[("stage", stage)],
                &b,
                sum,
                count,
            );
        }
    }

    // Plugin metrics: one family per (kind, name), labelled by stage and the plugin's labels.
    let series = state.monitor.plugins.series();
    let mut families: std::collections::BTreeMap<String, (&'static str, Vec<_>)> =
        Default::default();
    for (key, value) in &series {
        let (kind, type_name) = match value {
            SeriesValue::Counter { .. } => (MetricKind::Counter, "counter"),
            SeriesValue::Gauge { .. } => (MetricKind::Gauge, "gauge"),
            SeriesValue::Histogram { .. } => (MetricKind::Histogram, "histogram"),
        };
        let (name, kind) = (family_name(kind, &key.name), type_name);
        families
            .entry(name)
            .or_insert((kind, Vec::new()))
            .1
            .push((key, value));
    }
    for (name, (kind, members)) in &families {
        e.family(name, kind, "Recorded by a plugin through the host context.");
        for (key, value) in members {
            let mut labels: Vec<(&str, &str)> = vec![("stage", &key.stage)];
            labels.extend(
                key.labels
                    .iter()
                    .filter(|(k, _)| k != "stage" && k != "le")
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
            match value {
                SeriesValue::Counter { value } | SeriesValue::Gauge { value } => {
                    e.sample(name, &labels, *value)
                }
                SeriesValue::Histogram {
                    count,
                    sum,
                    buckets,
                } => {
                    let b: Vec<(f64, u64)> = PLUGIN_BUCKETS
                        .iter()
                        .copied()
                        .zip(buckets.iter().copied())
                        .collect();
                    e.histogram(name, &labels, &b, *sum, *count);
                }
            }
        }
    }
    // Not under host_plugin_: that prefix belongs to the plugins' own metric names.
    e.family(
        "host_monitor_plugin_updates_dropped_total",
        "counter",
        "Plugin metric updates refused, by reason (too many series, a kind mismatch, a reserved or invalid label or name).",
    );
    for (reason, n) in state.monitor.plugins.dropped() {
        e.sample(
            "host_monitor_plugin_updates_dropped_total",
            &[("reason", reason)],
            n as f64,
        );
    }

    if let Some(bus) = &state.bus {
        let b = bus.stats();
        for (name, help, value) in [
            (
                "host_events_published_total",
                "Events published to the bus.",
                b.published,
            ),
            (
                "host_events_dropped_total",
                "Events dropped because a subscriber or the publisher queue was full.",
                b.dropped,
            ),
            (
                "host_events_publish_failed_total",
                "Events that could not be written to the external bus (Redis down).",
                b.publish_failed,
            ),
        ] {
            e.family(name, "counter", help);
            e.sample(name, &[("bus", b.bus)], value as f64);
        }
        e.family(
            "host_event_bus_up",
            "gauge",
            "1 when the event bus is healthy.",
        );
        e.sample(
            "host_event_bus_up",
            &[("bus", b.bus)],
            if b.healthy { 1.0 } else { 0.0 },
        );
    }

    sources(&mut e, &snap.sources);
    if let Some(o) = &snap.observer {
        e.family(
            "host_observer_calls_total",
            "counter",
            "Stage call outcomes for the observer of mode custom: handed to it, or dropped because its queue was full.",
        );
        for (outcome, n) in [("delivered", o.delivered), ("dropped", o.dropped)] {
            e.sample(
                "host_observer_calls_total",
                &[("outcome", outcome)],
                n as f64,
            );
        }
    }
    if let Some(c) = connections {
        admin_connections(&mut e, &c);
    }
    if let Some(t) = &state.telemetry {
        for ((name, help), value) in EXPORT_FAMILIES.iter().zip(t.values()) {
            if let Some(value) = value {
                e.family(name, "counter", help);
                e.sample(name, &[], value as f64);
            }
        }
    }

    let view = state.health.view().await;
    e.family(
        "host_component_health_status",
        "gauge",
        "1 for the component's current status (healthy, degraded, unhealthy).",
    );
    for c in &view.components {
        for status in [
            HealthStatus::Healthy,
            HealthStatus::Degraded,
            HealthStatus::Unhealthy,
        ] {
            let v = if c.status == status { 1.0 } else { 0.0 };
            e.sample(
                "host_component_health_status",
                &[("component", &c.component), ("status", status.as_str())],
                v,
            );
        }
    }
    e.family(
        "host_ready",
        "gauge",
        "1 when every source is up and every stage healthy.",
    );
    e.sample("host_ready", &[], if view.ready { 1.0 } else { 0.0 });
    process(&mut e);
    e.finish()
}

/// The standard process collector's families.
fn process(e: &mut Exposition) {
    let m = match ProcessMetrics::collect() {
        Ok(m) => m,
        Err(error) => {
            // Not on Linux, or /proc not mounted: the families are left out.
            tracing::debug!(?error, "no process metrics");
            return;
        }
    };
    for (family, value) in PROCESS_FAMILIES.iter().zip(m.values()) {
        let kind = if family.counter { "counter" } else { "gauge" };
        e.family(family.name, kind, family.help);
        e.sample(family.name, &[], value);
    }
}

fn sources(e: &mut Exposition, sources: &[crate::monitor::SourceSnapshot]) {
    e.family(
        "host_source_connections",
        "gauge",
        "Peers connected to the source now.",
    );
    for s in sources {
        e.sample(
            "host_source_connections",
            &[("source", &s.source)],
            s.connections_active as f64,
        );
    }
    e.family(
        "host_source_connections_total",
        "counter",
        "Connections to the source: accepted, or refused because max_connections were served.",
    );
    for s in sources {
        for (outcome, n) in [
            ("accepted", s.connections_accepted),
            ("refused", s.connections_refused),
        ] {
            e.sample(
                "host_source_connections_total",
                &[("source", &s.source), ("outcome", outcome)],
                n as f64,
            );
        }
    }
    e.family(
        "host_source_peers_dropped_total",
        "counter",
        "Peers dropped by the source, by reason: a handshake timeout or a protocol error.",
    );
    for s in sources {
        e.sample(
            "host_source_peers_dropped_total",
            &[("source", &s.source), ("reason", "handshake_timeout")],
            s.handshake_timeouts as f64,
        );
        for (reason, n) in &s.protocol_errors {
            e.sample(
                "host_source_peers_dropped_total",
                &[("source", &s.source), ("reason", reason)],
                *n as f64,
            );
        }
    }
}

fn admin_connections(e: &mut Exposition, c: &ConnectionCounts) {
    e.family(
        "host_admin_connections",
        "gauge",
        "Connections to the admin API open now.",
    );
    e.sample("host_admin_connections", &[], c.open as f64);
    e.family(
        "host_admin_connections_total",
        "counter",
        "Connections to the admin API: accepted, or refused (closed at once) because max_connections were open.",
    );
    for (outcome, n) in [("accepted", c.accepted), ("refused", c.refused)] {
        e.sample(
            "host_admin_connections_total",
            &[("outcome", outcome)],
            n as f64,
        );
    }
    e.family(
        "host_admin_connection_timeouts_total",
        "counter",
        "Admin API connections closed by a timeout: header (no whole request head within header_timeout of the accept or of the previous answer), or idle (nothing read or written for idle_timeout).",
    );
    for (timeout, n) in [("header", c.header_timeouts), ("idle", c.idle_timeouts)] {
        e.sample(
            "host_admin_connection_timeouts_total",
            &[("timeout", timeout)],
            n as f64,
        );
    }
}
