//! A stage that panics fails its batch, which is counted under error type `panic`; the host
//! keeps running, and the other messages reach the output.

use tests::{assert_reconciled, read_json_lines, send, stage, totals, wait_for_lines, Host};

fn messages(from: usize, to: usize) -> Vec<String> {
    (from..to)
        .map(|i| format!(r#"{{"n":{i},"panic":{}}}"#, i % 3 == 0))
        .collect()
}

#[test]
fn panics_are_counted_and_the_rest_gets_through() {
    panics_are_counted_in("direct");
}

/// The same through the event bus: failed calls are timed there too.
#[test]
fn panics_are_counted_and_timed_in_event_driven_mode() {
    panics_are_counted_in("event_driven");
}

fn panics_are_counted_in(mode: &str) {
    // batch_size 1: each panic fails exactly its own message.
    let pipeline = r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libpanicky_plugin.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}", batch_size: 1 }
stages:
  boom: { plugin: panicky, inputs: [in] }
  out:
    plugin: jsonl
    inputs: [boom]
    config: { path: "{{dir}}/out.jsonl" }
monitoring: { mode: MODE, admin: { listen: "127.0.0.1:0" } }
"#
    .replace("MODE", mode);
    let mut host = Host::start(&pipeline);
    let out = host.path("out.jsonl");
    let good = |to: usize| (0..to).filter(|i| i % 3 != 0).collect::<Vec<_>>();

    send(&host.endpoint, &messages(0, 30));
    wait_for_lines(&out, good(30).len());
    assert!(host.is_running(), "the host died: {}", host.log());

    // Still working after the panics.
    send(&host.endpoint, &messages(30, 60));
    wait_for_lines(&out, good(60).len());
    let summary = host.stop();

    let ns: Vec<u64> = read_json_lines(&out)
        .iter()
        .map(|r| r["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(ns, good(60).iter().map(|&i| i as u64).collect::<Vec<_>>());

    let panics = 20;
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (60, 40, 0, panics), "{summary:#}");
    assert_eq!(
        summary["pipeline"]["failed_by_type"],
        tests::json!({ "panic": panics }),
        "{summary:#}"
    );
    let boom = stage(&summary, "boom");
    assert_eq!(boom["errors"], panics, "{summary:#}");
    assert_eq!(boom["records_failed"], panics, "{summary:#}");
    assert_eq!(boom["errors_by_type"], tests::json!({ "panic": panics }));
    // Every call, failed or not, is timed.
    assert_eq!(boom["calls"], 60, "{summary:#}");
    assert_eq!(boom["latency_ms"]["count"], 60, "{summary:#}");
    assert_eq!(stage(&summary, "out")["records_in"], 40);
    assert!(
        host.log().contains("stage panicked"),
        "no panic warning in the log:\n{}",
        host.log()
    );
}
