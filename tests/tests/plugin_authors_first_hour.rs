//! What a plugin author runs into in their first hour, against the real host: a stage with
//! no settings (`type Config = ()`); metrics recorded in `build` are kept, and labels the
//! host cannot render are refused and counted by reason; a library's log lines carry the
//! stage instance and are selected per library with `RUST_LOG`; an exporter takes records out
//! of its batch and settles them from its own thread without a copy; and health is answered
//! while a stage is busy in a long call. The stages are the `first-hour-plugin` fixture's
//! (and `panicky-plugin`'s `slow`), built against plugin-api alone.

use std::time::{Duration, Instant};

use tests::{
    assert_reconciled, json, pyzmq_push, read_json_lines, run_host, send_json, stage, totals,
    wait_for_lines, wait_until, Host, Metrics, Value, DELIVERY_TIMEOUT,
};

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Polls /metrics until `condition` holds; returns that exposition.
fn wait_for_metrics(
    host: &Host,
    what: &str,
    mut condition: impl FnMut(&Metrics) -> bool,
) -> Metrics {
    let mut last = None;
    let held = wait_until(DELIVERY_TIMEOUT, || {
        let m = host.metrics();
        let ok = condition(&m);
        last = Some(m);
        ok
    });
    let last = last.expect("polled at least once");
    assert!(
        held,
        "{what}: not within {DELIVERY_TIMEOUT:?}:\n{}",
        last.text
    );
    last
}

#[test]
fn a_stage_without_settings_runs_with_or_without_an_empty_block_and_refuses_settings() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libfirst_hour_plugin.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  greet: { plugin: hello, inputs: [in] }
  greet_again: { plugin: hello, inputs: [greet], config: {} }
  out: { plugin: jsonl, inputs: [greet_again], config: { path: "{{dir}}/out.jsonl" } }
"#,
    );
    let sent: Vec<Value> = (0..3).map(|i| json!({ "i": i })).collect();
    send_json(&host.endpoint, &sent);
    let out = host.path("out.jsonl");
    wait_for_lines(&out, sent.len());
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(
        read_json_lines(&out),
        (0..3)
            .map(|i| json!({ "i": i, "hello": "world" }))
            .collect::<Vec<_>>()
    );

    // A setting where none is taken is an error before anything starts, at its position.
    let pipeline = host.path("refuses.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"plugins:
  paths: ["{}"]
sources:
  in: {{ type: zmq, socket: pull, bind: "tcp://127.0.0.1:1" }}
stages:
  greet: {{ plugin: hello, inputs: [in], config: {{ greeting: hi }} }}
  out: {{ plugin: null, inputs: [greet] }}
"#,
            tests::fixture_lib("first-hour-plugin").display()
        ),
    )
    .unwrap();
    let out = run_host([
        "validate".as_ref(),
        "--pipeline".as_ref(),
        pipeline.as_os_str(),
    ]);
    assert_ne!(out.code(), 0, "{out:#?}");
    assert!(
        out.stderr.contains("refuses.yaml:6:")
            && out.stderr.contains("stage `greet` (hello)")
            && out.stderr.contains("expected unit"),
        "{out:#?}"
    );
}

#[test]
fn metrics_from_build_are_kept_and_labels_the_host_cannot_render_are_refused_by_reason() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libfirst_hour_plugin.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  m1: { plugin: meter, inputs: [in] }
  m2: { plugin: meter, inputs: [m1] }
  out: { plugin: null, inputs: [m2] }
"#,
    );
    // Before any message: what `build` recorded is there, one series per stage instance.
    let m = host.metrics();
    for instance in ["m1", "m2"] {
        assert_eq!(
            m.value("host_plugin_builds_total", &[("stage", instance)]),
            1.0,
            "{}",
            m.text
        );
    }
    assert_eq!(m.family_type("host_plugin_builds_total"), Some("counter"));
    // Two stages, each refused `stage` and `le` (reserved), `bad-label` (invalid) and
    // `zone` given twice (duplicate).
    let dropped = |m: &Metrics, reason: &str| {
        m.value(
            "host_monitor_plugin_updates_dropped_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(dropped(&m, "reserved_label"), 4.0, "{}", m.text);
    assert_eq!(dropped(&m, "invalid_label"), 2.0, "{}", m.text);
    assert_eq!(dropped(&m, "duplicate_label"), 2.0, "{}", m.text);
    assert!(
        !m.samples
            .iter()
            .any(|s| s.name.starts_with("host_plugin_refused")),
        "a refused update made a series:\n{}",
        m.text
    );

    let count = 50;
    send_json(
        &host.endpoint,
        &(0..count).map(|i| json!({ "i": i })).collect::<Vec<_>>(),
    );
    host.wait_settled(count);
    let m = wait_for_metrics(&host, "both meters counted every record", |m| {
        ["m1", "m2"].iter().all(|s| {
            m.get(
                "host_plugin_meter_records_total",
                &[("stage", s), ("via", "process")],
            ) == Some(count as f64)
        })
    });
    // Nothing more was refused, and the exposition (plugin families included) is valid.
    assert_eq!(dropped(&m, "reserved_label"), 4.0);
    assert_eq!(dropped(&m, "invalid_label"), 2.0);
    assert_eq!(dropped(&m, "duplicate_label"), 2.0);
    let check = tests::promtool_check_metrics(&m.text, host.dir());
    assert!(check.status.success(), "promtool: {check:#?}");
    // /api/metrics has the same series.
    let api = host.get_json("/api/metrics");
    let builds: Vec<&Value> = api["plugin_metrics"]
        .as_array()
        .expect("plugin_metrics")
        .iter()
        .filter(|s| s["name"] == "builds")
        .collect();
    assert_eq!(builds.len(), 2, "{api:#}");
    assert!(builds.iter().all(|s| s["value"] == 1.0), "{builds:#?}");

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (count, count, 0, 0));
}

const LOGGING_PIPELINE: &str = r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libfirst_hour_plugin.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  m: { plugin: meter, inputs: [in] }
  out: { plugin: handoff, inputs: [m] }
"#;

/// Runs the logging pipeline with `rust_log`, sends three messages, stops; returns the log.
fn log_with(rust_log: &str) -> String {
    let mut host = Host::start_with(LOGGING_PIPELINE, |cmd| {
        cmd.env("RUST_LOG", rust_log);
    });
    send_json(
        &host.endpoint,
        &(0..3).map(|i| json!({ "i": i })).collect::<Vec<_>>(),
    );
    host.wait_settled(3);
    let summary = host.stop();
    assert_reconciled(&summary);
    host.log()
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn plugin_logs_carry_the_stage_and_rust_log_selects_one_library() {
    let log = log_with("info,first_hour_plugin=debug");
    let info = lines_with(&log, "meter: batch in");
    assert!(!info.is_empty(), "no info line from the plugin:\n{log}");
    let debug = lines_with(&log, "meter: batch detail");
    assert!(
        !debug.is_empty(),
        "no debug line with first_hour_plugin=debug:\n{log}"
    );
    for (lines, level) in [(&info, "INFO"), (&debug, "DEBUG")] {
        for line in lines {
            assert!(line.contains(level), "{line}");
            // The target is the library's module path, the crate name with `_`.
            assert!(line.contains("first_hour_plugin:"), "{line}");
            assert!(
                line.contains("stage=m"),
                "not tagged with its stage: {line}"
            );
        }
    }
    // From a thread the stage started itself, tagged through `StageContext::in_scope`.
    let sent = lines_with(&log, "handoff: delivered from the sending thread");
    assert!(!sent.is_empty(), "{log}");
    assert!(sent.iter().all(|l| l.contains("stage=out")), "{sent:#?}");
    // Debug was turned on for that one library only.
    let other_debug: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" DEBUG ") && !l.contains("first_hour_plugin:"))
        .collect();
    assert!(other_debug.is_empty(), "{other_debug:#?}");

    let log = log_with("info");
    assert!(!lines_with(&log, "meter: batch in").is_empty(), "{log}");
    assert!(
        lines_with(&log, "meter: batch detail").is_empty(),
        "a debug line at RUST_LOG=info:\n{log}"
    );
}

#[test]
fn an_exporter_takes_records_out_of_its_batch_and_settles_them_elsewhere_without_a_copy() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libfirst_hour_plugin.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  out: { plugin: handoff, inputs: [in] }
"#,
    );
    let count: u64 = 500;
    pyzmq_push(&host.endpoint, count as usize);
    host.wait_settled(count);
    let m = wait_for_metrics(&host, "every record checked on the sending thread", |m| {
        m.get("host_plugin_handoff_moved_total", &[("stage", "out")]) == Some(count as f64)
    });
    assert_eq!(
        m.value("host_plugin_handoff_copied", &[("stage", "out")]),
        0.0,
        "records were copied on the way:\n{}",
        m.text
    );
    assert_eq!(
        m.value("host_plugin_handoff_shared", &[("stage", "out")]),
        0.0,
        "another handle held a record:\n{}",
        m.text
    );

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (count, count, 0, 0), "{summary:#}");
    let out = stage(&summary, "out");
    assert_eq!(n(&out["records_deferred"]), count, "{summary:#}");
    assert_eq!(n(&out["records_delivered_later"]), count, "{summary:#}");
    // Nothing was left in the batches: every record was taken for later.
    assert_eq!(n(&out["records_out"]), 0, "{summary:#}");
}

#[test]
fn health_is_answered_while_a_stage_is_in_a_long_call_and_calls_it_stuck_after_the_timeout() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libpanicky_plugin.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  slow: { plugin: slow, inputs: [in], config: { delay_ms: 10000 } }
monitoring:
  admin: { listen: "127.0.0.1:0" }
  health: { interval: 100ms, timeout: 3s }
"#,
    );
    // Every answer below must come within this: the stage is never waited on.
    let prompt = Duration::from_secs(2);
    let timed_ready = |host: &Host| {
        let asked = Instant::now();
        let r = host.get("/health/ready");
        let took = asked.elapsed();
        assert!(took < prompt, "/health/ready took {took:?}: {r:#?}");
        r
    };
    let slow_component = |r: &tests::HttpResponse| -> Value {
        r.json()["components"]
            .as_array()
            .expect("components")
            .iter()
            .find(|c| c["component"] == "stage/slow")
            .cloned()
            .unwrap_or_else(|| panic!("no stage/slow: {r:#?}"))
    };

    // Idle: the worker answers at once.
    let idle = timed_ready(&host);
    assert_eq!(idle.status, 200, "{idle:#?}");
    assert_eq!(slow_component(&idle)["status"], "healthy");

    // The call cannot start before this: a bound on how long it has lasted at any moment.
    let sent = Instant::now();
    send_json(&host.endpoint, &[json!({ "i": 0 })]);
    host.wait_for_answer(
        "/api/metrics",
        DELIVERY_TIMEOUT,
        "the message arrived",
        |r| r.json()["pipeline"]["received"] == 1,
    );
    // Well inside the call (10 s), and inside the health timeout (3 s): the last report.
    std::thread::sleep(Duration::from_millis(500));
    let busy = timed_ready(&host);
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "too late to see the stage busy but not stuck; the machine is overloaded"
    );
    assert_eq!(busy.status, 200, "{busy:#?}");
    assert_eq!(slow_component(&busy)["status"], "healthy", "{busy:#?}");
    assert_eq!(host.get_json("/api/metrics")["pipeline"]["in_flight"], 1);

    // Once the call outlasts the timeout: stuck, said at once, with the reason.
    let mut stuck = None;
    let seen = wait_until(Duration::from_secs(8), || {
        let r = timed_ready(&host);
        let done = r.status == 503;
        if done {
            stuck = Some(r);
        }
        done
    });
    let stuck = stuck.filter(|_| seen).unwrap_or_else(|| {
        panic!(
            "stage/slow never reported stuck; the host's log:\n{}",
            host.log()
        )
    });
    assert!(
        sent.elapsed() > Duration::from_secs(3),
        "called stuck before the health timeout: {stuck:#?}"
    );
    let component = slow_component(&stuck);
    assert_eq!(component["status"], "unhealthy", "{stuck:#?}");
    assert!(
        component["reason"]
            .as_str()
            .is_some_and(|r| r.contains("in one call")),
        "{stuck:#?}"
    );
    assert!(
        stuck.json()["reasons"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("stage/slow")))),
        "{stuck:#?}"
    );

    // The call ends: ready again, and the message went through.
    host.wait_for_answer(
        "/health/ready",
        Duration::from_secs(20),
        "ready again",
        |r| r.status == 200,
    );
    host.wait_settled(1);
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (1, 1, 0, 0), "{summary:#}");
}
