//! The monitor, health and event bus, rendered as Prometheus metrics. Every name carries its
//! unit and `_total` where it counts, and every family has HELP. The families are declared in
//! [`crate::monitor::families`], which OTLP reads too.

use hdrhistogram::Histogram;
use plugin_api::{HealthStatus, MetricKind};

use super::{exposition::Exposition, server::ConnectionCounts, AdminState};
use crate::monitor::{
    families::*,
    plugin::{family_name, SeriesValue, PLUGIN_BUCKETS},
    process::ProcessMetrics,
};

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

    e.family(&HOST_UPTIME_SECONDS);
    e.sample(HOST_UPTIME_SECONDS.name, &[], snap.uptime_seconds);
    e.family(&HOST_MONITORING_MODE_INFO);
    e.sample(HOST_MONITORING_MODE_INFO.name, &[("mode", snap.mode)], 1.0);

    for (family, value) in [
        (&HOST_MESSAGES_RECEIVED_TOTAL, t.received),
        (&HOST_MESSAGES_COMPLETED_TOTAL, t.completed),
        (&HOST_MESSAGES_FILTERED_TOTAL, t.filtered),
        (&HOST_MESSAGES_FAILED_TOTAL, t.failed),
    ] {
        e.family(family);
        e.sample(family.name, &[], value as f64);
    }
    e.family(&HOST_MESSAGES_FAILED_BY_TYPE_TOTAL);
    for (kind, n) in &t.failed_by_type {
        e.sample(
            HOST_MESSAGES_FAILED_BY_TYPE_TOTAL.name,
            &[("error_type", kind)],
            *n as f64,
        );
    }
    e.family(&HOST_MESSAGES_IN_FLIGHT);
    e.sample(HOST_MESSAGES_IN_FLIGHT.name, &[], t.in_flight as f64);

    for (family, get) in STAGE_COUNTERS {
        e.family(family);
        for s in &snap.stages {
            e.sample(
                family.name,
                &[("stage", &s.stage), ("operation", s.operation)],
                get(&s.counts) as f64,
            );
        }
    }
    e.family(&HOST_STAGE_ERRORS_TOTAL);
    for s in &snap.stages {
        for (kind, n) in &s.counts.errors_by_type {
            e.sample(
                HOST_STAGE_ERRORS_TOTAL.name,
                &[
                    ("stage", &s.stage),
                    ("operation", s.operation),
                    ("error_type", kind),
                ],
                *n as f64,
            );
        }
    }
    e.family(&HOST_STAGE_RECORDS_BY_TYPE_TOTAL);
    for s in &snap.stages {
        for (kind, n) in &s.counts.data_types {
            e.sample(
                HOST_STAGE_RECORDS_BY_TYPE_TOTAL.name,
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
    e.family(&HOST_STAGE_CALL_DURATION_SECONDS);
    for (stage, (latency, _)) in &hists {
        let (b, sum, count) = seconds_buckets(latency);
        e.histogram(
            HOST_STAGE_CALL_DURATION_SECONDS.name,
            &[("stage", stage), ("operation", "process")],
            &b,
            sum,
            count,
        );
    }
    e.family(&HOST_END_TO_END_LATENCY_SECONDS);
    for (stage, (_, e2e)) in &hists {
        if !e2e.is_empty() {
            let (b, sum, count) = seconds_buckets(e2e);
            e.histogram(
                HOST_END_TO_END_LATENCY_SECONDS.name,
                &[("stage", stage)],
                &b,
                sum,
                count,
            );
        }
    }

    // Plugin metrics: one family per (kind, name), labelled by stage and the plugin's labels.
    let series = state.monitor.plugins.series();
    let mut families: std::collections::BTreeMap<String, (Kind, Vec<_>)> = Default::default();
    for (key, value) in &series {
        let (kind, type_name) = match value {
            SeriesValue::Counter { .. } => (MetricKind::Counter, Kind::Counter),
            SeriesValue::Gauge { .. } => (MetricKind::Gauge, Kind::Gauge),
            SeriesValue::Histogram { .. } => (MetricKind::Histogram, Kind::Histogram),
        };
        let (name, kind) = (family_name(kind, &key.name), type_name);
        families
            .entry(name)
            .or_insert((kind, Vec::new()))
            .1
            .push((key, value));
    }
    for (name, (kind, members)) in &families {
        e.family_named(name, *kind, PLUGIN_HELP);
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
    e.family(&HOST_MONITOR_PLUGIN_UPDATES_DROPPED_TOTAL);
    for (reason, n) in state.monitor.plugins.dropped() {
        e.sample(
            HOST_MONITOR_PLUGIN_UPDATES_DROPPED_TOTAL.name,
            &[("reason", reason)],
            n as f64,
        );
    }

    if let Some(bus) = &state.bus {
        let b = bus.stats();
        for (family, value) in [
            (&HOST_EVENTS_PUBLISHED_TOTAL, b.published),
            (&HOST_EVENTS_DROPPED_TOTAL, b.dropped),
            (&HOST_EVENTS_PUBLISH_FAILED_TOTAL, b.publish_failed),
        ] {
            e.family(family);
            e.sample(family.name, &[("bus", b.bus)], value as f64);
        }
        e.family(&HOST_EVENT_BUS_UP);
        e.sample(
            HOST_EVENT_BUS_UP.name,
            &[("bus", b.bus)],
            if b.healthy { 1.0 } else { 0.0 },
        );
    }

    sources(&mut e, &snap.sources);
    if let Some(o) = &snap.observer {
        e.family(&HOST_OBSERVER_CALLS_TOTAL);
        for (outcome, n) in [("delivered", o.delivered), ("dropped", o.dropped)] {
            e.sample(
                HOST_OBSERVER_CALLS_TOTAL.name,
                &[("outcome", outcome)],
                n as f64,
            );
        }
    }
    if let Some(c) = connections {
        admin_connections(&mut e, &c);
    }
    if let Some(t) = &state.telemetry {
        for (family, value) in EXPORT_FAMILIES.iter().zip(t.values()) {
            if let Some(value) = value {
                e.family(family);
                e.sample(family.name, &[], value as f64);
            }
        }
    }

    let view = state.health.view().await;
    e.family(&HOST_COMPONENT_HEALTH_STATUS);
    for c in &view.components {
        for status in [
            HealthStatus::Healthy,
            HealthStatus::Degraded,
            HealthStatus::Unhealthy,
        ] {
            let v = if c.status == status { 1.0 } else { 0.0 };
            e.sample(
                HOST_COMPONENT_HEALTH_STATUS.name,
                &[("component", &c.component), ("status", status.as_str())],
                v,
            );
        }
    }
    e.family(&HOST_READY);
    e.sample(HOST_READY.name, &[], if view.ready { 1.0 } else { 0.0 });
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
        e.family(family);
        e.sample(family.name, &[], value);
    }
}

fn sources(e: &mut Exposition, sources: &[crate::monitor::SourceSnapshot]) {
    e.family(&HOST_SOURCE_CONNECTIONS);
    for s in sources {
        e.sample(
            HOST_SOURCE_CONNECTIONS.name,
            &[("source", &s.source)],
            s.connections_active as f64,
        );
    }
    e.family(&HOST_SOURCE_CONNECTIONS_TOTAL);
    for s in sources {
        for (outcome, n) in [
            ("accepted", s.connections_accepted),
            ("refused", s.connections_refused),
        ] {
            e.sample(
                HOST_SOURCE_CONNECTIONS_TOTAL.name,
                &[("source", &s.source), ("outcome", outcome)],
                n as f64,
            );
        }
    }
    e.family(&HOST_SOURCE_PEERS_DROPPED_TOTAL);
    for s in sources {
        e.sample(
            HOST_SOURCE_PEERS_DROPPED_TOTAL.name,
            &[("source", &s.source), ("reason", "handshake_timeout")],
            s.handshake_timeouts as f64,
        );
        for (reason, n) in &s.protocol_errors {
            e.sample(
                HOST_SOURCE_PEERS_DROPPED_TOTAL.name,
                &[("source", &s.source), ("reason", reason)],
                *n as f64,
            );
        }
    }
}

fn admin_connections(e: &mut Exposition, c: &ConnectionCounts) {
    e.family(&HOST_ADMIN_CONNECTIONS);
    e.sample(HOST_ADMIN_CONNECTIONS.name, &[], c.open as f64);
    e.family(&HOST_ADMIN_CONNECTIONS_TOTAL);
    for (outcome, n) in [("accepted", c.accepted), ("refused", c.refused)] {
        e.sample(
            HOST_ADMIN_CONNECTIONS_TOTAL.name,
            &[("outcome", outcome)],
            n as f64,
        );
    }
    e.family(&HOST_ADMIN_CONNECTION_TIMEOUTS_TOTAL);
    for (timeout, n) in [("header", c.header_timeouts), ("idle", c.idle_timeouts)] {
        e.sample(
            HOST_ADMIN_CONNECTION_TIMEOUTS_TOTAL.name,
            &[("timeout", timeout)],
            n as f64,
        );
    }
}
