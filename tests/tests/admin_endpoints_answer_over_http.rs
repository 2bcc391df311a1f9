//! Every admin endpoint, asked over real HTTP on the port the host logged: liveness and
//! readiness with a component per stage, source and the event bus; the monitor's snapshot as
//! JSON; and the running graph with per-stage totals.

use tests::{json, send_json, stage, wait_for_lines, Host, Value};

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
  window: 60s
  type_field: level
  admin: { listen: "127.0.0.1:0" }
  health: { interval: 200ms, timeout: 1s }
"#;

fn messages(n: usize) -> Vec<Value> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    (0..n)
        .map(|i| json!({ "id": i, "level": LEVELS[i % 4], "sent_at": now }))
        .collect()
}

/// The components of a health answer, by name: (kind, status, reason).
fn components(health: &Value) -> Vec<(String, String, String, String)> {
    health["components"]
        .as_array()
        .unwrap_or_else(|| panic!("no components: {health:#}"))
        .iter()
        .map(|c| {
            let s = |k: &str| {
                c[k].as_str()
                    .unwrap_or_else(|| panic!("{k}: {c}"))
                    .to_owned()
            };
            assert!(c["checked_at"].as_f64().is_some(), "{c}");
            assert!(c["check_ms"].as_f64().is_some(), "{c}");
            (s("component"), s("kind"), s("status"), s("reason"))
        })
        .collect()
}

const EXPECTED_COMPONENTS: [(&str, &str); 5] = [
    ("stage/process", "stage"),
    ("stage/measure", "stage"),
    ("stage/export", "exporter"),
    ("source/in", "source"),
    ("event_bus", "event_bus"),
];

fn assert_all_healthy(health: &Value) {
    let mut found = components(health);
    found.sort();
    let mut expected: Vec<(String, String, String, String)> = EXPECTED_COMPONENTS
        .iter()
        .map(|(c, k)| {
            (
                c.to_string(),
                k.to_string(),
                "healthy".into(),
                String::new(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(found, expected, "{health:#}");
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number `{key}` in {v:#}"))
}

#[test]
fn every_endpoint_answers_with_what_the_pipeline_did() {
    let mut host = Host::start(PIPELINE);
    let n: u64 = 40;
    let kept: u64 = 30;
    send_json(&host.endpoint, &messages(n as usize));
    wait_for_lines(&host.path("out.jsonl"), kept as usize);
    host.wait_settled(n);

    // Liveness: answering is the proof; the components come along.
    let live = host.get("/health/live");
    assert_eq!(live.status, 200, "{live:#?}");
    assert!(
        live.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{live:#?}"
    );
    let live = live.json();
    assert_eq!(live["live"], true, "{live:#}");
    assert_eq!(live["status"], "healthy", "{live:#}");
    assert_all_healthy(&live);

    // Readiness: every stage, the source and the event bus, all healthy.
    let ready = host.get("/health/ready");
    assert_eq!(ready.status, 200, "{ready:#?}");
    let ready = ready.json();
    assert_eq!(ready["ready"], true, "{ready:#}");
    assert_eq!(ready["status"], "healthy", "{ready:#}");
    assert_eq!(ready["reasons"], json!([]), "{ready:#}");
    assert_all_healthy(&ready);

    // The monitor's snapshot.
    let api = host.get_json("/api/metrics");
    assert_eq!(api["mode"], "direct", "{api:#}");
    assert!(f(&api, "uptime_seconds") > 0.0);
    assert_eq!(
        api["pipeline"],
        json!({
            "received": n, "completed": kept, "filtered": n - kept, "failed": 0,
            "in_flight": 0, "failed_by_type": {}
        }),
        "{api:#}"
    );
    let names: Vec<&str> = api["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["stage"].as_str().expect("stage name"))
        .collect();
    assert_eq!(names, ["process", "measure", "export"]);
    for (name, plugin, kind, records_in, records_out) in [
        ("process", "rules", "processor", n, kept),
        ("measure", "message-metrics", "metrics", kept, kept),
        ("export", "jsonl", "exporter", kept, kept),
    ] {
        let s = stage(&api, name);
        assert_eq!(s["plugin"], plugin, "{s:#}");
        assert_eq!(s["kind"], kind, "{s:#}");
        assert_eq!(s["operation"], "process", "{s:#}");
        assert_eq!(s["records_in"], records_in, "{s:#}");
        assert_eq!(s["records_out"], records_out, "{s:#}");
        assert_eq!(s["records_failed"], 0, "{s:#}");
        assert_eq!(s["errors"], 0, "{s:#}");
        assert_eq!(s["errors_by_type"], json!({}), "{s:#}");
        assert_eq!(s["error_rate"], 0.0, "{s:#}");
        let calls = s["calls"].as_u64().expect("calls");
        assert!(calls >= 1, "{s:#}");
        for rate in [
            "calls_per_second",
            "records_per_second",
            "errors_per_second",
        ] {
            assert!(f(s, rate) >= 0.0, "{rate}: {s:#}");
        }
        // Latency percentiles, one observation per call, in order.
        let l = &s["latency_ms"];
        assert_eq!(l["count"], calls, "{s:#}");
        let (p50, p95, p99, max) = (f(l, "p50"), f(l, "p95"), f(l, "p99"), f(l, "max"));
        assert!(
            0.0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= max,
            "latency percentiles out of order: {l}"
        );
        assert!(f(l, "mean") > 0.0, "{l}");
        assert!(
            s["gauges"]["input_queue_batches"].as_f64().is_some(),
            "{s:#}"
        );
    }
    let by_type = |stage_name: &str| stage(&api, stage_name)["data_types"].clone();
    assert_eq!(
        by_type("process"),
        json!({ "info": 10, "debug": 10, "warn": 10, "error": 10 })
    );
    assert_eq!(
        by_type("export"),
        json!({ "info": 10, "warn": 10, "error": 10 })
    );
    // End to end at the stages that deliver (the exporter; `measure`, which nothing reads).
    assert_eq!(stage(&api, "process")["end_to_end_ms"], Value::Null);
    for name in ["measure", "export"] {
        let e2e = &stage(&api, name)["end_to_end_ms"];
        assert_eq!(e2e["count"], kept, "{name}: {e2e}");
        assert!(
            f(e2e, "p50") > 0.0 && f(e2e, "p99") >= f(e2e, "p50"),
            "{e2e}"
        );
    }
    // The window in progress (60 s long, so it still holds everything).
    let w = &api["window"];
    assert_eq!(w["type"], "monitor.window", "{w:#}");
    assert!(
        f(w, "window_seconds") > 0.0 && f(w, "timestamp") > 0.0,
        "{w:#}"
    );
    assert_eq!(w["pipeline"]["received"], n, "{w:#}");
    assert_eq!(stage(w, "process")["records_in"], n, "{w:#}");
    // Metrics the plugin recorded through the host.
    let plugin_metrics = api["plugin_metrics"].as_array().expect("plugin_metrics");
    let series = |name: &str, labels: Value| {
        plugin_metrics
            .iter()
            .find(|s| s["stage"] == "measure" && s["name"] == name && s["labels"] == labels)
            .unwrap_or_else(|| panic!("no series {name} {labels}: {plugin_metrics:#?}"))
    };
    let records = series("records", json!({}));
    assert_eq!(records["kind"], "counter");
    assert_eq!(records["value"], kept as f64);
    for level in ["info", "warn", "error"] {
        let s = series("records_by_type", json!({ "type": level }));
        assert_eq!(s["kind"], "counter");
        assert_eq!(s["value"], 10.0, "{s}");
    }
    // The bus the observations travel on.
    let events = &api["events"];
    assert_eq!(events["bus"], "memory", "{events}");
    assert_eq!(events["healthy"], true, "{events}");
    assert_eq!(events["publish_failed"], 0, "{events}");

    // The running graph, with totals.
    let graph = host.get_json("/api/pipeline");
    assert!(
        graph["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("pipeline.yaml")),
        "{graph:#}"
    );
    assert_eq!(
        graph["sources"],
        json!([{
            "name": "in", "socket": "pull", "endpoint": host.endpoint, "outputs": ["process"]
        }]),
        "{graph:#}"
    );
    let stages = graph["stages"].as_array().expect("stages");
    assert_eq!(stages.len(), 3, "{graph:#}");
    for (name, plugin, kind, inputs, outputs, records_in) in [
        (
            "process",
            "rules",
            "processor",
            json!(["in"]),
            json!(["measure", "export"]),
            n,
        ),
        (
            "measure",
            "message-metrics",
            "metrics",
            json!(["process"]),
            json!([]),
            kept,
        ),
        (
            "export",
            "jsonl",
            "exporter",
            json!(["process"]),
            json!([]),
            kept,
        ),
    ] {
        let s = stages
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no stage {name}: {graph:#}"));
        assert_eq!(s["plugin"], plugin, "{s:#}");
        assert_eq!(s["kind"], kind, "{s:#}");
        assert_eq!(s["inputs"], inputs, "{s:#}");
        assert_eq!(s["outputs"], outputs, "{s:#}");
        // `runtime.fuse: trees`: `process` and the stages that take only its output.
        assert_eq!(s["thread"], "stage-process", "{s:#}");
        assert_eq!(s["totals"]["records_in"], records_in, "{s:#}");
        assert!(
            s["totals"]["calls"].as_u64().is_some_and(|c| c >= 1),
            "{s:#}"
        );
    }
    assert_eq!(graph["totals"]["received"], n, "{graph:#}");
    assert_eq!(graph["totals"]["completed"], kept, "{graph:#}");
    assert_eq!(graph["totals"]["filtered"], n - kept, "{graph:#}");

    // Anything else is not found.
    assert_eq!(host.get("/nope").status, 404);

    let summary = host.stop();
    tests::assert_reconciled(&summary);
}
