//! Every metric family the host declares, written once: its name, kind, unit and help. Both
//! exporters of the host's metrics take them from here: `/metrics` (the Prometheus text,
//! `admin::metrics`) writes `name`, `help` and `kind` as HELP and TYPE, and OTLP
//! (`telemetry::families`) makes an instrument of the kind with `name`, `unit` and `help` as
//! its description, so the two cannot drift apart.
//!
//! Families declared by plugins (`host_plugin_*`) are named at run time by
//! [`family_name`](super::plugin::family_name); only their help is here ([`PLUGIN_HELP`]).
//!
//! The admin server's connections and the health view (`host_admin_*`,
//! [`HOST_COMPONENT_HEALTH_STATUS`], [`HOST_READY`]) are on `/metrics` only: they are not the
//! monitor's (the health view is served by `/health`), so OTLP does not send them.

/// What a family is: Prometheus's TYPE, and the OpenTelemetry instrument it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic sum (`_total`).
    Counter,
    Gauge,
    /// With the bucket bounds of `admin::LATENCY_BUCKETS`.
    Histogram,
}

impl Kind {
    /// As Prometheus's `# TYPE` line writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// The Prometheus name, which OTLP keeps unchanged (units and `_total` included).
    pub name: &'static str,
    pub kind: Kind,
    /// UCUM, as OTLP wants it (`s`, `By`, `{message}`); empty for a plain number (1 or 0).
    /// Prometheus has it in the name.
    pub unit: &'static str,
    /// Prometheus's HELP and OTLP's description.
    pub help: &'static str,
}

const fn counter(name: &'static str, unit: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Counter,
        unit,
        help,
    }
}

const fn gauge(name: &'static str, unit: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        unit,
        help,
    }
}

const fn histogram(name: &'static str, unit: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Histogram,
        unit,
        help,
    }
}

// The pipeline.

pub const HOST_UPTIME_SECONDS: Family = gauge(
    "host_uptime_seconds",
    "s",
    "Seconds since the pipeline started.",
);
pub const HOST_MONITORING_MODE_INFO: Family = gauge(
    "host_monitoring_mode_info",
    "",
    "The coordinator mode (always 1, see the mode label).",
);
pub const HOST_MESSAGES_RECEIVED_TOTAL: Family = counter(
    "host_messages_received_total",
    "{message}",
    "Messages received by the sources.",
);
pub const HOST_MESSAGES_COMPLETED_TOTAL: Family = counter(
    "host_messages_completed_total",
    "{message}",
    "Messages delivered by every branch that kept them.",
);
pub const HOST_MESSAGES_FILTERED_TOTAL: Family = counter(
    "host_messages_filtered_total",
    "{message}",
    "Messages dropped on purpose by a stage.",
);
pub const HOST_MESSAGES_FAILED_TOTAL: Family = counter(
    "host_messages_failed_total",
    "{message}",
    "Messages that failed.",
);
/// Its own family, so that summing it does not count failures twice.
pub const HOST_MESSAGES_FAILED_BY_TYPE_TOTAL: Family = counter(
    "host_messages_failed_by_type_total",
    "{message}",
    "Messages that failed, by the error type of their first failure.",
);
pub const HOST_MESSAGES_IN_FLIGHT: Family = gauge(
    "host_messages_in_flight",
    "{message}",
    "Messages received and not yet settled.",
);

// Stages, labelled `stage` and `operation`.

pub const HOST_STAGE_CALLS_TOTAL: Family = counter(
    "host_stage_calls_total",
    "{call}",
    "Stage calls (one per batch).",
);
pub const HOST_STAGE_CALL_ERRORS_TOTAL: Family = counter(
    "host_stage_call_errors_total",
    "{call}",
    "Stage calls that failed as a whole (errors and panics).",
);
pub const HOST_STAGE_RECORDS_IN_TOTAL: Family = counter(
    "host_stage_records_in_total",
    "{record}",
    "Records handed to the stage.",
);
pub const HOST_STAGE_RECORDS_OUT_TOTAL: Family = counter(
    "host_stage_records_out_total",
    "{record}",
    "Records the stage passed on (exporters: exported).",
);
pub const HOST_STAGE_RECORDS_FAILED_TOTAL: Family = counter(
    "host_stage_records_failed_total",
    "{record}",
    "Records the stage failed.",
);
/// Reads one count out of a stage's counts.
pub type CountOf = fn(&super::Counts) -> u64;

/// The stage counters that are one count per stage (labels `stage`, `operation`), with where
/// each is read.
pub const STAGE_COUNTERS: [(&Family, CountOf); 5] = [
    (&HOST_STAGE_CALLS_TOTAL, |c| c.calls),
    (&HOST_STAGE_CALL_ERRORS_TOTAL, |c| c.errors),
    (&HOST_STAGE_RECORDS_IN_TOTAL, |c| c.records_in),
    (&HOST_STAGE_RECORDS_OUT_TOTAL, |c| c.records_out),
    (&HOST_STAGE_RECORDS_FAILED_TOTAL, |c| c.records_failed),
];
pub const HOST_STAGE_ERRORS_TOTAL: Family = counter(
    "host_stage_errors_total",
    "{error}",
    "Stage errors by error type (whole calls and single records).",
);
pub const HOST_STAGE_RECORDS_BY_TYPE_TOTAL: Family = counter(
    "host_stage_records_by_type_total",
    "{record}",
    "Records handed to the stage, by the value of the monitored type field.",
);
pub const HOST_STAGE_CALL_DURATION_SECONDS: Family = histogram(
    "host_stage_call_duration_seconds",
    "s",
    "Duration of stage calls.",
);
pub const HOST_END_TO_END_LATENCY_SECONDS: Family = histogram(
    "host_end_to_end_latency_seconds",
    "s",
    "Ingest to delivery, per delivering stage (exporter branch).",
);

// Plugin metrics.

/// The help of every plugin family (`host_plugin_*`).
pub const PLUGIN_HELP: &str = "Recorded by a plugin through the host context.";
/// Not under `host_plugin_`: that prefix belongs to the plugins' own metric names.
pub const HOST_MONITOR_PLUGIN_UPDATES_DROPPED_TOTAL: Family = counter(
    "host_monitor_plugin_updates_dropped_total",
    "{update}",
    "Plugin metric updates refused, by reason (too many series, a kind mismatch, a reserved or invalid label or name).",
);

// The event bus, labelled `bus`; present when a bus runs.

pub const HOST_EVENTS_PUBLISHED_TOTAL: Family = counter(
    "host_events_published_total",
    "{event}",
    "Events published to the bus.",
);
pub const HOST_EVENTS_DROPPED_TOTAL: Family = counter(
    "host_events_dropped_total",
    "{event}",
    "Events dropped because a subscriber or the publisher queue was full.",
);
pub const HOST_EVENTS_PUBLISH_FAILED_TOTAL: Family = counter(
    "host_events_publish_failed_total",
    "{event}",
    "Events that could not be written to the external bus (Redis down).",
);
pub const HOST_EVENT_BUS_UP: Family =
    gauge("host_event_bus_up", "", "1 when the event bus is healthy.");

// Sources, labelled `source`, and the observer of `mode: custom`.

pub const HOST_SOURCE_CONNECTIONS: Family = gauge(
    "host_source_connections",
    "{connection}",
    "Peers connected to the source now.",
);
pub const HOST_SOURCE_CONNECTIONS_TOTAL: Family = counter(
    "host_source_connections_total",
    "{connection}",
    "Connections to the source: accepted, or refused because max_connections were served.",
);
pub const HOST_SOURCE_PEERS_DROPPED_TOTAL: Family = counter(
    "host_source_peers_dropped_total",
    "{peer}",
    "Peers dropped by the source, by reason: a handshake timeout or a protocol error.",
);
pub const HOST_OBSERVER_CALLS_TOTAL: Family = counter(
    "host_observer_calls_total",
    "{call}",
    "Stage call outcomes for the observer of mode custom: handed to it, or dropped because its queue was full.",
);

// The admin server's own connections (`/metrics` only).

pub const HOST_ADMIN_CONNECTIONS: Family = gauge(
    "host_admin_connections",
    "{connection}",
    "Connections to the admin API open now.",
);
pub const HOST_ADMIN_CONNECTIONS_TOTAL: Family = counter(
    "host_admin_connections_total",
    "{connection}",
    "Connections to the admin API: accepted, or refused (closed at once) because max_connections were open.",
);
pub const HOST_ADMIN_CONNECTION_TIMEOUTS_TOTAL: Family = counter(
    "host_admin_connection_timeouts_total",
    "{connection}",
    "Admin API connections closed by a timeout: header (no whole request head within header_timeout of the accept or of the previous answer), or idle (nothing read or written for idle_timeout).",
);

// The health view (`/metrics` only).

pub const HOST_COMPONENT_HEALTH_STATUS: Family = gauge(
    "host_component_health_status",
    "",
    "1 for the component's current status (healthy, degraded, unhealthy).",
);
pub const HOST_READY: Family = gauge(
    "host_ready",
    "",
    "1 when every source is up and every stage healthy.",
);

/// The OTLP exporter's own counts, in the order of
/// [`ExportStats::values`](crate::telemetry::ExportStats::values).
pub const EXPORT_FAMILIES: [Family; 4] = [
    counter(
        "host_otlp_exports_total",
        "{export}",
        "Exports of the host's metrics over OTLP, whatever their outcome.",
    ),
    counter(
        "host_otlp_export_failures_total",
        "{export}",
        "Exports of the host's metrics over OTLP that failed (receiver down, refused, timed out).",
    ),
    counter(
        "host_otlp_span_exports_total",
        "{export}",
        "Exports of span batches over OTLP (monitoring.otlp.traces), whatever their outcome.",
    ),
    counter(
        "host_otlp_span_export_failures_total",
        "{export}",
        "Exports of span batches over OTLP that failed (their spans are lost).",
    ),
];

/// The standard process collector's families, in the order of
/// [`ProcessMetrics::values`](super::process::ProcessMetrics::values). Names and help as the
/// Prometheus clients write them, so that dashboards made for any Prometheus-instrumented
/// process work.
pub const PROCESS_FAMILIES: [Family; 7] = [
    counter(
        "process_cpu_seconds_total",
        "s",
        "Total user and system CPU time spent in seconds.",
    ),
    gauge(
        "process_resident_memory_bytes",
        "By",
        "Resident memory size in bytes.",
    ),
    gauge(
        "process_virtual_memory_bytes",
        "By",
        "Virtual memory size in bytes.",
    ),
    gauge(
        "process_open_fds",
        "{file}",
        "Number of open file descriptors.",
    ),
    gauge(
        "process_max_fds",
        "{file}",
        "Maximum number of open file descriptors.",
    ),
    gauge(
        "process_threads",
        "{thread}",
        "Number of OS threads in the process.",
    ),
    gauge(
        "process_start_time_seconds",
        "s",
        "Start time of the process since unix epoch in seconds.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family above.
    fn all() -> Vec<Family> {
        let mut all = vec![
            HOST_UPTIME_SECONDS,
            HOST_MONITORING_MODE_INFO,
            HOST_MESSAGES_RECEIVED_TOTAL,
            HOST_MESSAGES_COMPLETED_TOTAL,
            HOST_MESSAGES_FILTERED_TOTAL,
            HOST_MESSAGES_FAILED_TOTAL,
            HOST_MESSAGES_FAILED_BY_TYPE_TOTAL,
            HOST_MESSAGES_IN_FLIGHT,
            HOST_STAGE_CALLS_TOTAL,
            HOST_STAGE_CALL_ERRORS_TOTAL,
            HOST_STAGE_RECORDS_IN_TOTAL,
            HOST_STAGE_RECORDS_OUT_TOTAL,
            HOST_STAGE_RECORDS_FAILED_TOTAL,
            HOST_STAGE_ERRORS_TOTAL,
            HOST_STAGE_RECORDS_BY_TYPE_TOTAL,
            HOST_STAGE_CALL_DURATION_SECONDS,
            HOST_END_TO_END_LATENCY_SECONDS,
            HOST_MONITOR_PLUGIN_UPDATES_DROPPED_TOTAL,
            HOST_EVENTS_PUBLISHED_TOTAL,
            HOST_EVENTS_DROPPED_TOTAL,
            HOST_EVENTS_PUBLISH_FAILED_TOTAL,
            HOST_EVENT_BUS_UP,
            HOST_SOURCE_CONNECTIONS,
            HOST_SOURCE_CONNECTIONS_TOTAL,
            HOST_SOURCE_PEERS_DROPPED_TOTAL,
            HOST_OBSERVER_CALLS_TOTAL,
            HOST_ADMIN_CONNECTIONS,
            HOST_ADMIN_CONNECTIONS_TOTAL,
            HOST_ADMIN_CONNECTION_TIMEOUTS_TOTAL,
            HOST_COMPONENT_HEALTH_STATUS,
            HOST_READY,
        ];
        all.extend(EXPORT_FAMILIES);
        all.extend(PROCESS_FAMILIES);
        all
    }

    #[test]
    fn families_are_unique_and_named_as_prometheus_asks() {
        let all = all();
        let mut names: Vec<_> = all.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "a name is declared twice");
        for f in &all {
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{f:?}: counters, and only they, end in _total"
            );
            if f.name.contains("_seconds") {
                assert_eq!(f.unit, "s", "{f:?}");
            }
            if f.name.ends_with("_bytes") {
                assert_eq!(f.unit, "By", "{f:?}");
            }
            assert!(f.help.ends_with('.'), "{f:?}");
        }
    }
}
