//! The monitor's windowed snapshots go, every `monitoring.window`, as records to the stages in
//! `monitoring.export_to`: each is a `monitor.window` of what happened since the one before, so
//! together they add up to everything that was sent, and they are not messages themselves.

use std::time::Duration;

use tests::{
    assert_reconciled, json, read_json_lines, send_json, stage, totals, wait_for_lines, wait_until,
    Host, Value,
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
  export:
    plugin: jsonl
    inputs: [process]
    config: { path: "{{dir}}/out.jsonl" }
  snapshots:
    plugin: jsonl
    inputs: []
    config: { path: "{{dir}}/snapshots.jsonl" }
monitoring:
  mode: direct
  window: 300ms
  export_to: [snapshots]
  type_field: level
  admin: { listen: "127.0.0.1:0" }
  health: { interval: 200ms }
"#;

/// The sum over `windows` of `get(window)` (a count; missing counts as 0).
fn sum(windows: &[Value], get: impl Fn(&Value) -> &Value) -> u64 {
    windows
        .iter()
        .map(|w| match get(w) {
            Value::Null => 0,
            v => v
                .as_u64()
                .unwrap_or_else(|| panic!("not a count: {v} in {w:#}")),
        })
        .sum()
}

fn stage_sum(windows: &[Value], name: &str, key: &str) -> u64 {
    sum(windows, |w| &stage(w, name)[key])
}

#[test]
fn windows_add_up_to_what_was_sent() {
    let mut host = Host::start(PIPELINE);
    let n: u64 = 40;
    let kept: u64 = 30;
    let messages: Vec<Value> = (0..n)
        .map(|i| json!({ "n": i, "level": LEVELS[(i % 4) as usize] }))
        .collect();
    send_json(&host.endpoint, &messages);
    wait_for_lines(&host.path("out.jsonl"), kept as usize);
    host.wait_settled(n);

    // Windows keep coming; wait until they hold everything, and a few more came after.
    let file = host.path("snapshots.jsonl");
    let mut windows = Vec::new();
    let complete = wait_until(Duration::from_secs(20), || {
        windows = read_json_lines(&file);
        stage_sum(&windows, "process", "records_in") == n
    });
    assert!(
        complete,
        "windows do not add up to {n} messages: {windows:#?}"
    );
    let have = windows.len();
    wait_for_lines(&file, have + 2);
    let summary = host.stop();
    assert_reconciled(&summary);

    // Stopping exports the last window too.
    let windows = read_json_lines(&file);
    assert!(windows.len() > have + 2, "{} windows", windows.len());
    let mut previous = 0.0;
    for w in &windows {
        assert_eq!(w["type"], "monitor.window", "{w:#}");
        let seconds = w["window_seconds"].as_f64().expect("window_seconds");
        assert!(seconds > 0.0 && seconds < 30.0, "window_seconds {seconds}");
        let at = w["timestamp"].as_f64().expect("timestamp");
        assert!(at >= previous, "windows out of order: {w:#}");
        previous = at;
        let names: Vec<&str> = w["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .map(|s| s["stage"].as_str().expect("stage"))
            .collect();
        assert_eq!(names, ["process", "export", "snapshots"], "{w:#}");
    }

    // Each window counts what happened in it only: together, everything that was sent.
    assert_eq!(stage_sum(&windows, "process", "records_in"), n);
    assert_eq!(stage_sum(&windows, "process", "records_out"), kept);
    assert_eq!(stage_sum(&windows, "export", "records_in"), kept);
    assert_eq!(stage_sum(&windows, "export", "records_out"), kept);
    let calls = stage(&summary, "process")["calls"].as_u64().expect("calls");
    assert_eq!(stage_sum(&windows, "process", "calls"), calls);
    for level in LEVELS {
        assert_eq!(
            sum(&windows, |w| &stage(w, "process")["data_types"][level]),
            n / 4,
            "process, {level}"
        );
    }
    let pipeline = |key: &'static str| sum(&windows, move |w| &w["pipeline"][key]);
    assert_eq!(pipeline("received"), n);
    assert_eq!(pipeline("completed"), kept);
    assert_eq!(pipeline("filtered"), n - kept);
    assert_eq!(pipeline("failed"), 0);

    // The snapshots are records for `snapshots`, one per window, not messages.
    assert_eq!(totals(&summary), (n, kept, n - kept, 0), "{summary:#}");
    let snapshots = stage(&summary, "snapshots");
    assert_eq!(snapshots["records_in"], windows.len(), "{summary:#}");
    assert_eq!(snapshots["records_out"], windows.len(), "{summary:#}");
    // They were never ingested, so they have no ingest-to-export latency; the messages do.
    assert!(snapshots["end_to_end_ms"].is_null(), "{summary:#}");
    let export = stage(&summary, "export")["end_to_end_ms"].clone();
    assert_eq!(export["count"], kept, "{summary:#}");
    assert!(
        export["max"].as_f64().expect("max") < 60_000.0,
        "{summary:#}"
    );
}
