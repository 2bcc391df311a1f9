//! A third-party stage library, built on its own against plugin-api alone, loads into the
//! host, runs, and its `tracing` logs reach the host's log.

use tests::{
    assert_reconciled, fixture_lib, json, read_json_lines, run_host, send_json, totals,
    wait_for_lines, Host, Value,
};

#[test]
fn uppercase_stage_runs_and_logs_through_the_host() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libexternal_plugin.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  shout:
    plugin: uppercase
    inputs: [in]
    config: { field: msg }
  out:
    plugin: jsonl
    inputs: [shout]
    config: { path: "{{dir}}/out.jsonl" }
"#,
    );
    // The plugin's own `tracing::info!` in its build step, forwarded through the host.
    let log = host.log();
    let built: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("uppercase stage built"))
        .collect();
    assert_eq!(built.len(), 1, "the plugin's log line is missing:\n{log}");
    assert!(built[0].contains("INFO"), "{}", built[0]);
    assert!(
        built[0].contains("shout"),
        "the instance name: {}",
        built[0]
    );

    let sent: Vec<Value> = vec![
        json!({ "n": 0, "msg": "hello, world" }),
        json!({ "n": 1, "msg": "straße ünïcode" }),
        json!({ "n": 2, "other": "left alone" }),
        json!({ "n": 3, "msg": 42 }),
        json!({ "n": 4, "msg": "Already UPPER" }),
    ];
    send_json(&host.endpoint, &sent);
    let out = host.path("out.jsonl");
    wait_for_lines(&out, sent.len());
    let summary = host.stop();

    assert_eq!(
        read_json_lines(&out),
        vec![
            json!({ "n": 0, "msg": "HELLO, WORLD" }),
            json!({ "n": 1, "msg": "STRASSE ÜNÏCODE" }),
            json!({ "n": 2, "other": "left alone" }),
            json!({ "n": 3, "msg": 42 }),
            json!({ "n": 4, "msg": "ALREADY UPPER" }),
        ]
    );
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (5, 5, 0, 0), "{summary:#}");
}

#[test]
fn plugins_command_lists_the_external_stage() {
    let lib = fixture_lib("external-plugin");
    let out = run_host(["plugins".as_ref(), "--path".as_ref(), lib.as_os_str()]);
    assert_eq!(out.code(), 0, "{out:#?}");
    let columns = |stage: &str| -> Vec<String> {
        let line = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .unwrap_or_else(|| panic!("no `{stage}` stage listed: {out:#?}"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    let external = columns("uppercase");
    let builtin = columns("passthrough");
    assert_eq!(external.len(), 5, "{external:?}");
    assert_eq!(external[1], "processor");
    assert!(tests::is_version(&external[2]), "{external:?}");
    // Built against the same plugin-api as the host.
    assert_eq!(external[3], builtin[3], "{external:?} vs {builtin:?}");
    assert_eq!(external[4], lib.display().to_string());
}
