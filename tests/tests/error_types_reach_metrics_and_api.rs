//! Records a stage fails one by one are counted under their error type everywhere the
//! monitoring layer shows errors: /metrics (per stage and per message) and /api/metrics,
//! whether the coordinator records them directly or through the event bus.

use tests::{assert_reconciled, json, send_json, stage, totals, wait_for_lines, Host, Value};

fn pipeline(mode: &str) -> String {
    format!(
        r#"
plugins:
  paths: ["{{{{plugins}}}}", "{{{{fixtures}}}}/libpanicky_plugin.so"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  check: {{ plugin: failing, inputs: [in] }}
  out:
    plugin: jsonl
    inputs: [check]
    config: {{ path: "{{{{dir}}}}/out.jsonl" }}
monitoring:
  mode: {mode}
  admin: {{ listen: "127.0.0.1:0" }}
  health: {{ interval: 200ms }}
"#
    )
}

fn counts_validation_errors(mode: &str) {
    let mut host = Host::start(&pipeline(mode));
    let n: u64 = 40;
    let messages: Vec<Value> = (0..n)
        .map(|i| json!({ "n": i, "bad": i % 4 == 1 }))
        .collect();
    let bad = n / 4;
    let good = n - bad;
    send_json(&host.endpoint, &messages);
    wait_for_lines(&host.path("out.jsonl"), good as usize);
    host.wait_settled(n);
    // In event_driven mode the stage counts arrive through the bus: wait for them too.
    let api = host.wait_for_answer(
        "/api/metrics",
        tests::DELIVERY_TIMEOUT,
        "the failures reached the monitor",
        |r| stage(&r.json(), "check")["records_failed"] == bad,
    );
    let api = api.json();

    let m = host.metrics();
    let at_check = [("stage", "check"), ("operation", "process")];
    assert_eq!(
        m.value(
            "host_stage_errors_total",
            &[
                ("stage", "check"),
                ("operation", "process"),
                ("error_type", "validation")
            ]
        ),
        bad as f64,
        "{}",
        m.text
    );
    assert_eq!(
        m.matching("host_stage_errors_total", &[]).count(),
        1,
        "only `check` failed records, all as `validation`:\n{}",
        m.text
    );
    assert_eq!(
        m.value("host_stage_records_failed_total", &at_check),
        bad as f64
    );
    assert_eq!(m.value("host_stage_records_in_total", &at_check), n as f64);
    assert_eq!(
        m.value("host_stage_records_out_total", &at_check),
        good as f64
    );
    // Single records failed; no call failed as a whole.
    assert_eq!(m.value("host_stage_call_errors_total", &at_check), 0.0);
    assert_eq!(
        m.value(
            "host_messages_failed_by_type_total",
            &[("error_type", "validation")]
        ),
        bad as f64
    );
    assert_eq!(m.value("host_messages_failed_total", &[]), bad as f64);
    assert_eq!(
        m.matching("host_messages_failed_by_type_total", &[])
            .count(),
        1,
        "`validation` only:\n{}",
        m.text
    );
    assert_eq!(m.value("host_messages_completed_total", &[]), good as f64);

    // /api/metrics agrees.
    assert_eq!(api["mode"], mode);
    let check = stage(&api, "check");
    assert_eq!(
        check["errors_by_type"],
        json!({ "validation": bad }),
        "{api:#}"
    );
    assert_eq!(check["records_failed"], bad, "{api:#}");
    assert_eq!(check["errors"], 0, "{api:#}");
    assert_eq!(check["error_rate"], bad as f64 / n as f64, "{api:#}");
    assert_eq!(stage(&api, "out")["errors_by_type"], json!({}), "{api:#}");
    assert_eq!(
        api["pipeline"]["failed_by_type"],
        json!({ "validation": bad }),
        "{api:#}"
    );
    assert_eq!(api["pipeline"]["failed"], bad, "{api:#}");

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (n, good, 0, bad), "{summary:#}");
    assert_eq!(
        stage(&summary, "check")["errors_by_type"],
        json!({ "validation": bad })
    );
}

#[test]
fn validation_errors_are_counted_in_direct_mode() {
    counts_validation_errors("direct");
}

#[test]
fn validation_errors_are_counted_in_event_driven_mode() {
    counts_validation_errors("event_driven");
}
