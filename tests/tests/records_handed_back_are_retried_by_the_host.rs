//! The host-level retry path, on the raw API: a stage (`hand-back`) takes every batch for
//! later and settles it from its own thread, failing some records and handing the others
//! back; the host calls it with those again, after the delay it asked for, with the same
//! message ids, and they are delivered then. Every count is exact: the pipeline's totals, the
//! stage's calls and records, and the output.

use std::collections::BTreeSet;

use tests::{
    assert_reconciled, json, read_json_lines, send_json, stage, totals, wait_for_lines, Host,
};

#[test]
fn handed_back_records_are_called_again_and_every_count_is_exact() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{fixtures}}/libdeferred_exporter.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  back:
    plugin: hand-back
    inputs: [in]
    config: { out: "{{dir}}/back.jsonl", retry_after_ms: 20 }
monitoring:
  mode: direct
  admin: { listen: "127.0.0.1:0" }
"#,
    );
    let count: u64 = 600;
    // One sender, one connection: the host numbers the messages 1, 2, ... in order.
    let messages: Vec<_> = (0..count).map(|n| json!({ "n": n })).collect();
    send_json(&host.endpoint, &messages);
    let out = host.path("back.jsonl");
    let odd = count / 3;
    let delivered = count - odd;
    wait_for_lines(&out, delivered as usize);
    let api = host.wait_settled(count);
    assert_eq!(api["pipeline"]["completed"], delivered, "{api:#}");

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (count, delivered, 0, odd), "{summary:#}");
    assert_eq!(
        summary["pipeline"]["failed_by_type"],
        json!({ "odd_one": odd }),
        "{summary:#}"
    );
    // Each record the stage handed back was called with once more, and taken again.
    let s = stage(&summary, "back");
    assert_eq!(s["records_in"], count + delivered, "{summary:#}");
    assert_eq!(s["records_deferred"], count + delivered, "{summary:#}");
    assert_eq!(s["records_delivered_later"], delivered, "{summary:#}");
    assert_eq!(s["records_failed"], odd, "{summary:#}");
    assert_eq!(s["records_out"], 0, "{summary:#}");
    assert_eq!(
        s["errors_by_type"],
        json!({ "odd_one": odd }),
        "{summary:#}"
    );
    let handed_back = summary["plugin_metrics"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "handed_back"))
        .map(|p| p["value"].clone());
    assert_eq!(handed_back, Some(json!(delivered as f64)), "{summary:#}");

    // Exactly the records that are not multiples of 3, each once, on their retry, with the
    // message id they came in with.
    let lines = read_json_lines(&out);
    let mut seen = BTreeSet::new();
    for line in &lines {
        let n = line["record"]["n"].as_u64().expect("n");
        assert!(seen.insert(n), "n = {n} delivered twice");
        assert_eq!(line["record"]["_retried"], true, "{line}");
        assert_eq!(line["message_id"], n + 1, "{line}");
    }
    assert_eq!(seen, (0..count).filter(|n| n % 3 != 0).collect());
}
