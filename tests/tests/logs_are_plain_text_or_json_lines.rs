//! The host's own log on stderr: plain text without colour codes when stderr is a file, even
//! when nothing (no `NO_COLOR`) asks for that; with `--log-format json`, one JSON object per
//! line with timestamp, level, target and fields, and the stage instance on every line written
//! while a stage works (its plugin's lines too).

use std::time::Duration;

use tests::{host_command, run_with_timeout, send_json, Host, Value};

/// An exporter writing to /dev/full: every write fails, and the jsonl plugin logs a warning
/// from inside the stage's call.
const PIPELINE: &str = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  out:
    plugin: jsonl
    inputs: [in]
    config: { path: /dev/full }
monitoring:
  mode: direct
  admin: { listen: "127.0.0.1:0" }
"#;

const PLUGIN_WARNING: &str = "writing JSON lines failed";

/// Starts the host with `args` and without `NO_COLOR`, sends it messages, and waits until the
/// plugin's warning is in the log; returns the host (still running).
fn host_with_plugin_warning(args: &'static [&'static str]) -> Host {
    let host = Host::start_with(PIPELINE, |cmd| {
        cmd.env_remove("NO_COLOR").args(args);
    });
    send_json(&host.endpoint, &[tests::json!({ "n": 1 })]);
    host.wait_for_log(PLUGIN_WARNING, Duration::from_secs(30));
    host
}

#[test]
fn a_log_file_holds_no_colour_codes_and_keeps_its_text_form() {
    let mut host = host_with_plugin_warning(&[]);
    let summary = host.stop();
    assert_eq!(tests::totals(&summary), (1, 0, 0, 1), "{summary:#}");
    let log = host.log();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a redirected log:\n{log:?}"
    );
    assert!(log.contains("pipeline started"), "{log}");
    // The plugin's line names its stage in its own fields, as before, and the worker's span
    // does not repeat it as a prefix.
    let warning = log
        .lines()
        .find(|l| l.contains(PLUGIN_WARNING))
        .expect("the plugin's warning");
    assert!(
        warning.contains(" WARN plugin_jsonl: ") && warning.contains("stage=out"),
        "{warning}"
    );
    assert!(!warning.contains("stage{"), "{warning}");
}

/// Every line of `log`, parsed; panics on one that is not a JSON object with the fields a
/// log shipper reads.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{log}"));
            assert!(
                v["timestamp"].as_str().is_some_and(|t| t.contains('T')),
                "{line}"
            );
            assert!(
                ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                    .contains(&v["level"].as_str().unwrap_or("")),
                "{line}"
            );
            assert!(
                v["target"].as_str().is_some_and(|t| !t.is_empty()),
                "{line}"
            );
            assert!(v["fields"]["message"].is_string(), "{line}");
            v
        })
        .collect()
}

#[test]
fn json_lines_carry_their_fields_and_the_stage_span() {
    let mut host = host_with_plugin_warning(&["--log-format", "json"]);
    let summary = host.stop();
    assert_eq!(tests::totals(&summary), (1, 0, 0, 1), "{summary:#}");
    let log = host.log();
    assert!(!log.contains('\u{1b}'), "{log:?}");
    let lines = json_lines(&log);

    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "pipeline started")
        .unwrap_or_else(|| panic!("no start line:\n{log}"));
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["target"], "host::topology");
    assert_eq!(started["fields"]["stages"], 1, "{started}");

    // The plugin's warning, written inside the stage's call, with the span of the stage
    // instance it was written in. (A plugin's own fields reach the host inside its message:
    // the log callback carries text.)
    let warning = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(PLUGIN_WARNING))
        })
        .unwrap_or_else(|| panic!("no plugin warning:\n{log}"));
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["target"], "plugin_jsonl");
    assert_eq!(warning["span"]["name"], "stage", "{warning}");
    assert_eq!(warning["span"]["stage"], "out", "{warning}");
    assert_eq!(warning["spans"][0]["stage"], "out", "{warning}");

    // The totals logged at shutdown are structured too.
    let totals = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("pipeline totals"))
        })
        .unwrap_or_else(|| panic!("no totals line:\n{log}"));
    assert_eq!(totals["fields"]["received"], 1, "{totals}");
    assert_eq!(totals["fields"]["failed"], 1, "{totals}");
}

#[test]
fn a_command_error_is_a_json_line_too() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut cmd = host_command();
    cmd.env_remove("NO_COLOR")
        .args(["--log-format", "json", "validate", "--pipeline"])
        .arg(dir.path().join("missing.yaml"));
    let out = run_with_timeout(cmd);
    assert_eq!(out.code(), 2, "{out:?}");
    let lines = json_lines(&out.stderr);
    assert!(!lines.is_empty(), "{out:?}");
    assert!(
        lines.iter().all(|l| l["level"] == "ERROR"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("missing.yaml"), "{}", out.stderr);
    // The same in text: one plain `error:` line.
    let mut cmd = host_command();
    cmd.env_remove("NO_COLOR")
        .args(["validate", "--pipeline"])
        .arg(dir.path().join("missing.yaml"));
    let out = run_with_timeout(cmd);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
}
