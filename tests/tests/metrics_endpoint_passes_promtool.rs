//! `/metrics` of a running host is valid Prometheus text by `promtool check metrics`, and
//! holds the host's families with the values a known input implies: message totals, stage
//! counters, data types, call and end-to-end latency histograms, and the metrics a plugin
//! (message-metrics) recorded through the host, and the host process's own resource use under
//! the standard process-collector names.

use tests::{
    json, proc_status, promtool_check_metrics, send_json, wait_for_lines, Host, Metrics, Value,
};

const LEVELS: [&str; 4] = ["info", "debug", "warn", "error"];

const PIPELINE: &str = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  process:
    plugin: rules
    inputs: [in]
    config: { drop: [{ field: level, equals: debug }] }
  measure:
    plugin: message-metrics
    inputs: [process]
    config: { timestamp_field: sent_at, type_field: level }
  export:
    plugin: jsonl
    inputs: [process]
    config: { path: "{{dir}}/out.jsonl" }
monitoring:
  mode: direct
  type_field: level
  admin: { listen: "127.0.0.1:0" }
  health: { interval: 200ms }
"#;

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn messages(n: usize) -> Vec<Value> {
    let now = unix_now();
    (0..n)
        .map(|i| json!({ "id": i, "level": LEVELS[i % 4], "sent_at": now }))
        .collect()
}

/// Checks a histogram's series: cumulative buckets that never decrease, `+Inf` equal to
/// `_count`, and the count itself; returns the sum.
fn check_histogram(m: &Metrics, name: &str, labels: &[(&str, &str)], count: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = m
        .matching(&format!("{name}_bucket"), labels)
        .map(|s| {
            let le = &s.labels["le"];
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a number")
            };
            (bound, s.value)
        })
        .collect();
    assert!(
        buckets.len() >= 2,
        "{name}{labels:?} has too few buckets:\n{}",
        m.text
    );
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in buckets.windows(2) {
        assert!(
            pair[0].1 <= pair[1].1,
            "{name}{labels:?}: buckets decrease: {buckets:?}"
        );
    }
    let (last_bound, last) = *buckets.last().unwrap();
    assert!(
        last_bound.is_infinite(),
        "{name}{labels:?} has no +Inf bucket"
    );
    assert_eq!(last, count, "{name}{labels:?}: +Inf bucket");
    assert_eq!(
        m.value(&format!("{name}_count"), labels),
        count,
        "{name}{labels:?}: _count"
    );
    m.value(&format!("{name}_sum"), labels)
}

#[test]
fn metrics_are_valid_prometheus_text_with_the_expected_values() {
    let started = unix_now();
    let mut host = Host::start(PIPELINE);
    let n = 40;
    send_json(&host.endpoint, &messages(n));
    let kept = 30; // every 4th message is debug, dropped by `process`
    wait_for_lines(&host.path("out.jsonl"), kept);
    host.wait_settled(n as u64);

    let response = host.get("/metrics");
    assert_eq!(response.status, 200, "{response:#?}");
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "content-type: {content_type:?}"
    );
    let check = promtool_check_metrics(&response.body, host.dir());
    assert!(
        check.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- the metrics:\n{}",
        check.status,
        check.stdout,
        check.stderr,
        response.body
    );
    let m = Metrics::parse(&response.body);

    // Every family is declared, with its type and some help.
    for (family, kind) in [
        ("host_uptime_seconds", "gauge"),
        ("host_monitoring_mode_info", "gauge"),
        ("host_messages_received_total", "counter"),
        ("host_messages_completed_total", "counter"),
        ("host_messages_filtered_total", "counter"),
        ("host_messages_failed_total", "counter"),
        ("host_messages_failed_by_type_total", "counter"),
        ("host_messages_in_flight", "gauge"),
        ("host_stage_calls_total", "counter"),
        ("host_stage_call_errors_total", "counter"),
        ("host_stage_records_in_total", "counter"),
        ("host_stage_records_out_total", "counter"),
        ("host_stage_records_failed_total", "counter"),
        ("host_stage_errors_total", "counter"),
        ("host_stage_records_by_type_total", "counter"),
        ("host_stage_call_duration_seconds", "histogram"),
        ("host_end_to_end_latency_seconds", "histogram"),
        ("host_plugin_records_total", "counter"),
        ("host_plugin_records_by_type_total", "counter"),
        ("host_monitor_plugin_updates_dropped_total", "counter"),
        ("host_events_published_total", "counter"),
        ("host_events_dropped_total", "counter"),
        ("host_events_publish_failed_total", "counter"),
        ("host_event_bus_up", "gauge"),
        ("host_component_health_status", "gauge"),
        ("host_ready", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_threads", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(
            m.family_type(family),
            Some(kind),
            "family {family}:\n{}",
            m.text
        );
        assert!(
            m.help.get(family).is_some_and(|h| !h.is_empty()),
            "family {family} has no HELP"
        );
    }

    // Message totals: received = completed + filtered + failed.
    assert_eq!(
        m.value("host_monitoring_mode_info", &[("mode", "direct")]),
        1.0
    );
    assert_eq!(m.value("host_messages_received_total", &[]), n as f64);
    assert_eq!(m.value("host_messages_completed_total", &[]), kept as f64);
    assert_eq!(
        m.value("host_messages_filtered_total", &[]),
        (n - kept) as f64
    );
    assert_eq!(m.value("host_messages_failed_total", &[]), 0.0);
    assert_eq!(m.value("host_messages_in_flight", &[]), 0.0);

    // Stage counters.
    let st = |stage: &'static str| [("stage", stage), ("operation", "process")];
    let records = |name: &str, stage: &'static str| m.value(name, &st(stage));
    assert_eq!(records("host_stage_records_in_total", "process"), n as f64);
    assert_eq!(
        records("host_stage_records_out_total", "process"),
        kept as f64
    );
    for stage in ["measure", "export"] {
        assert_eq!(records("host_stage_records_in_total", stage), kept as f64);
        assert_eq!(records("host_stage_records_out_total", stage), kept as f64);
    }
    for stage in ["process", "measure", "export"] {
        assert_eq!(records("host_stage_records_failed_total", stage), 0.0);
        assert_eq!(records("host_stage_call_errors_total", stage), 0.0);
        assert_eq!(m.matching("host_stage_errors_total", &st(stage)).count(), 0);
    }
    // How the source batched the messages is its business; every batch `process` kept
    // something of went to both of its consumers, once.
    let calls = records("host_stage_calls_total", "process");
    assert!((1.0..=n as f64).contains(&calls), "process calls: {calls}");
    let branch_calls = records("host_stage_calls_total", "export");
    assert!(
        (1.0..=calls).contains(&branch_calls),
        "export calls: {branch_calls}"
    );
    assert_eq!(records("host_stage_calls_total", "measure"), branch_calls);

    // Data types (monitoring.type_field: level), counted on what each stage was handed.
    for level in LEVELS {
        let at_process = m.value(
            "host_stage_records_by_type_total",
            &[("stage", "process"), ("type", level)],
        );
        assert_eq!(at_process, (n / 4) as f64, "process, {level}");
        let at_export = m.get(
            "host_stage_records_by_type_total",
            &[("stage", "export"), ("type", level)],
        );
        let expected = (level != "debug").then_some((n / 4) as f64);
        assert_eq!(at_export, expected, "export, {level}");
    }

    // Call latency: one observation per call.
    for stage in ["process", "measure", "export"] {
        let calls = records("host_stage_calls_total", stage);
        let sum = check_histogram(&m, "host_stage_call_duration_seconds", &st(stage), calls);
        assert!(sum >= 0.0, "{stage}: call duration sum {sum}");
    }
    // End-to-end latency: one observation per delivered record, at the stages that deliver
    // (the exporter, and `measure`, which nothing reads from); none at `process`.
    for stage in ["export", "measure"] {
        let sum = check_histogram(
            &m,
            "host_end_to_end_latency_seconds",
            &[("stage", stage)],
            kept as f64,
        );
        assert!(
            sum > 0.0 && sum < kept as f64 * 30.0,
            "{stage}: end-to-end sum {sum} s for {kept} records"
        );
    }
    assert_eq!(
        m.matching(
            "host_end_to_end_latency_seconds_count",
            &[("stage", "process")]
        )
        .count(),
        0
    );

    // What message-metrics recorded through the host: `records` and `records_by_type`.
    assert_eq!(
        m.value("host_plugin_records_total", &[("stage", "measure")]),
        kept as f64
    );
    for level in ["info", "warn", "error"] {
        assert_eq!(
            m.value(
                "host_plugin_records_by_type_total",
                &[("stage", "measure"), ("type", level)]
            ),
            (n / 4) as f64,
            "records_by_type {level}"
        );
    }
    assert_eq!(
        m.get(
            "host_plugin_records_by_type_total",
            &[("stage", "measure"), ("type", "debug")]
        ),
        None
    );
    // No plugin metric update was refused, for any reason.
    for reason in [
        "too_many_series",
        "kind_mismatch",
        "reserved_label",
        "invalid_label",
    ] {
        assert_eq!(
            m.get(
                "host_monitor_plugin_updates_dropped_total",
                &[("reason", reason)]
            ),
            None
        );
    }

    // The memory bus, health and readiness.
    assert_eq!(m.value("host_event_bus_up", &[("bus", "memory")]), 1.0);
    assert_eq!(
        m.value("host_events_publish_failed_total", &[("bus", "memory")]),
        0.0
    );
    for component in [
        "stage/process",
        "stage/measure",
        "stage/export",
        "source/in",
    ] {
        assert_eq!(
            m.value(
                "host_component_health_status",
                &[("component", component), ("status", "healthy")]
            ),
            1.0,
            "{component}"
        );
    }
    assert_eq!(m.value("host_ready", &[]), 1.0);

    process_metrics(&host, &m, started);

    let summary = host.stop();
    tests::assert_reconciled(&summary);
    assert_eq!(
        tests::totals(&summary),
        (n as u64, kept as u64, (n - kept) as u64, 0)
    );
}

/// The process families hold the host's own figures: checked against what /proc says of the
/// host's process from outside, with room for what changes between the two reads.
fn process_metrics(host: &Host, m: &Metrics, started: f64) {
    let pid = host.pid();
    let threads = m.value("process_threads", &[]);
    let proc_threads = proc_status(pid, "Threads") as f64;
    assert!(threads >= 1.0, "process_threads {threads}");
    assert!(
        (threads - proc_threads).abs() <= 8.0,
        "process_threads {threads}, /proc says {proc_threads}"
    );
    let rss = m.value("process_resident_memory_bytes", &[]);
    let proc_rss = proc_status(pid, "VmRSS") as f64 * 1024.0;
    assert!(rss > 0.0, "process_resident_memory_bytes {rss}");
    assert!(
        rss > proc_rss / 2.0 && rss < proc_rss * 2.0,
        "process_resident_memory_bytes {rss}, /proc says {proc_rss}"
    );
    let vsize = m.value("process_virtual_memory_bytes", &[]);
    assert!(vsize >= rss, "virtual {vsize} < resident {rss}");
    let fds = m.value("process_open_fds", &[]);
    let proc_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the host's fd directory")
        .count() as f64;
    assert!(fds > 0.0, "process_open_fds {fds}");
    assert!(
        (fds - proc_fds).abs() <= 8.0,
        "process_open_fds {fds}, /proc says {proc_fds}"
    );
    let max_fds = m.value("process_max_fds", &[]);
    assert!(max_fds >= fds, "process_max_fds {max_fds} < open {fds}");
    let start = m.value("process_start_time_seconds", &[]);
    assert!(
        start >= started.floor() - 1.0 && start <= unix_now(),
        "process_start_time_seconds {start}, the test started the host at {started}"
    );
    // CPU time is a counter: never negative, never less on a later scrape.
    let cpu = m.value("process_cpu_seconds_total", &[]);
    assert!(cpu >= 0.0, "process_cpu_seconds_total {cpu}");
    let later = host.metrics().value("process_cpu_seconds_total", &[]);
    assert!(
        later >= cpu,
        "process_cpu_seconds_total went from {cpu} to {later}"
    );
}
