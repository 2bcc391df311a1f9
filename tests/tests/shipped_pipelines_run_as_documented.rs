//! The pipeline files in `pipelines/` run as their comments say, with only the environment
//! variables they document set: records are dropped, renamed and stamped, and every message
//! is accounted for.

use std::path::Path;

use tests::{
    assert_reconciled, free_endpoint, plugin_dir, read_json_lines, send, totals, wait_for_lines,
    workspace_dir, Host,
};

/// Starts the shipped pipeline `name` (its own file, unchanged) on a free port, sends one
/// message of each level, and returns the exported records with the host's summary.
fn run(name: &str) -> (Vec<serde_json::Value>, serde_json::Value, Host) {
    let file = workspace_dir().join("pipelines").join(name);
    let text = std::fs::read_to_string(&file).expect("a shipped pipeline");
    let endpoint = free_endpoint();
    let mut host = Host::start_with(&text, |cmd| {
        cmd.env("PLUGIN_DIR", plugin_dir())
            .env("INGEST_ENDPOINT", &endpoint)
            .env("ADMIN_LISTEN", "127.0.0.1:0")
            .env_remove("OUT_DIR");
    });
    let sent: Vec<String> = ["info", "debug", "warn", "error"]
        .iter()
        .enumerate()
        .map(|(i, level)| {
            format!(r#"{{"level":"{level}","msg":"m{i}","sent_at":"2026-11-24T00:00:00Z"}}"#)
        })
        .collect();
    send(&endpoint, &sent);
    let events = host.path("out/events.jsonl");
    wait_for_lines(&events, 3);
    let summary = host.stop();
    (read_json_lines(&events), summary, host)
}

fn check_rules(records: &[serde_json::Value], pipeline: &str) {
    let levels: Vec<&str> = records
        .iter()
        .map(|r| r["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["info", "warn", "error"], "debug is dropped");
    for r in records {
        assert!(r.get("msg").is_none(), "msg is renamed: {r}");
        assert!(r["message"].as_str().unwrap().starts_with('m'), "{r}");
        assert_eq!(r["pipeline"], pipeline, "{r}");
    }
}

#[test]
fn the_default_pipeline_filters_measures_and_exports() {
    let (records, summary, host) = run("default.yaml");
    check_rules(&records, "default");
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (4, 3, 1, 0), "{summary:#}");
    let metrics = host.path("out/metrics.jsonl");
    let metrics = read_json_lines(Path::new(&metrics));
    assert_eq!(
        metrics.len(),
        3,
        "one metrics record per kept record: {metrics:?}"
    );
    assert!(
        metrics.iter().all(|m| m["size_bytes"].as_i64() > Some(0)),
        "{metrics:?}"
    );
}

#[test]
fn rules_to_jsonl_does_an_rsyslog_transforms_work() {
    let (records, summary, _host) = run("rules-to-jsonl.yaml");
    check_rules(&records, "rules-to-jsonl");
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (4, 3, 1, 0), "{summary:#}");
}
