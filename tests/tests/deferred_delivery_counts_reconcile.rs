//! Acknowledged delivery, every path at once: an exporter behind the SDK's sending queue
//! (`deferred`) delivers, has a batch rejected (permanent: its records fail as `rejected`),
//! and holds records while its target is down, retrying until the target is back; a stage
//! on the raw API (`hand-back`) fails some records from its own thread (`odd_one`) and hands
//! the others back to the host, which calls it with them again. The host's totals reconcile
//! exactly, and the outputs hold exactly the delivered records, each once.

use std::{collections::BTreeSet, fs, path::Path, time::Duration};

use tests::{
    assert_reconciled, json, read_json_lines, read_lines, send_json, stage, totals, wait_for_lines,
    wait_until, Host, Value, DELIVERY_TIMEOUT,
};

const PIPELINE: &str = r#"
plugins:
  paths: ["{{fixtures}}/libdeferred_exporter.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
  in2: { type: zmq, socket: pull, bind: "{{endpoint2}}" }
stages:
  out:
    plugin: deferred
    inputs: [in]
    config:
      out: "{{dir}}/out.jsonl"
      down_while: "{{dir}}/down"
      reject_while: "{{dir}}/reject"
      sending:
        batch_size: 10
        max_delay: 20ms
        queue_size: 1000
        retry: { initial_interval: 20ms, max_interval: 100ms, max_elapsed: 0s }
  back:
    plugin: hand-back
    inputs: [in2]
    config: { out: "{{dir}}/back.jsonl", retry_after_ms: 30 }
monitoring:
  mode: direct
  admin: { listen: "127.0.0.1:0" }
"#;

fn messages(from: u64, to: u64) -> Vec<Value> {
    (from..to).map(|n| json!({ "n": n })).collect()
}

/// Waits until `/api/metrics` satisfies `condition`; returns that answer.
fn wait_for_metrics(host: &Host, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    host.wait_for_answer("/api/metrics", DELIVERY_TIMEOUT, what, |r| {
        r.status == 200 && condition(&r.json())
    })
    .json()
}

/// The `n` of every line of a fixture's output, checking each is there once.
fn delivered_numbers(path: &Path) -> BTreeSet<u64> {
    let lines = read_json_lines(path);
    let mut ns = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for line in &lines {
        let n = line["record"]["n"].as_u64().expect("n");
        assert!(ns.insert(n), "n = {n} delivered twice: {lines:#?}");
        let id = line["message_id"].as_u64().expect("message_id");
        assert!(ids.insert(id), "message {id} delivered twice: {lines:#?}");
    }
    ns
}

#[test]
fn delivered_retried_and_failed_records_reconcile_exactly() {
    let mut host = Host::start(PIPELINE);
    let out = host.path("out.jsonl");

    // Target up: delivered on the first send.
    send_json(&host.endpoint, &messages(0, 20));
    wait_for_lines(&out, 20);

    // The target rejects what it is sent: those records fail, nothing is written.
    fs::write(host.path("reject"), b"").unwrap();
    send_json(&host.endpoint, &messages(20, 35));
    let api = wait_for_metrics(&host, "15 records rejected", |m| {
        m["pipeline"]["failed_by_type"]["rejected"] == 15 && m["pipeline"]["in_flight"] == 0
    });
    assert_eq!(api["pipeline"]["completed"], 20, "{api:#}");
    fs::remove_file(host.path("reject")).unwrap();

    // The target is down: the records are held, in flight, and sent again and again.
    fs::write(host.path("down"), b"").unwrap();
    send_json(&host.endpoint, &messages(35, 60));
    let api = wait_for_metrics(&host, "25 records held while the target is down", |m| {
        m["pipeline"]["received"] == 60 && m["pipeline"]["in_flight"] == 25
    });
    assert_eq!(stage(&api, "out")["records_deferred"], 60, "{api:#}");
    // The queue keeps retrying; nothing is written, nothing settles, whatever the wait.
    let sent_again = wait_until(Duration::from_secs(10), || {
        let m = host.metrics();
        let retries = m.get(
            "host_plugin_exporter_send_retries_total",
            &[("stage", "out")],
        );
        retries.unwrap_or(0.0) >= 3.0
    });
    assert!(sent_again, "no retries while the target was down");
    assert_eq!(
        read_lines(&out).len(),
        20,
        "written while the target was down"
    );
    let api = host.get_json("/api/metrics");
    assert_eq!(api["pipeline"]["in_flight"], 25, "{api:#}");
    assert_eq!(api["pipeline"]["completed"], 20, "{api:#}");

    // Back up: the held records go out, on a retry.
    fs::remove_file(host.path("down")).unwrap();
    wait_for_lines(&out, 45);

    // The raw API: multiples of 3 fail, the others come back once and are delivered.
    let back = host.path("back.jsonl");
    send_json(&host.endpoint2, &messages(0, 30));
    wait_for_lines(&back, 20);
    host.wait_settled(90);

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (90, 45 + 20, 0, 15 + 10), "{summary:#}");
    assert_eq!(
        summary["pipeline"]["failed_by_type"],
        json!({ "rejected": 15, "odd_one": 10 }),
        "{summary:#}"
    );
    let s = stage(&summary, "out");
    assert_eq!(s["records_deferred"], 60, "{summary:#}");
    assert_eq!(s["records_delivered_later"], 45, "{summary:#}");
    assert_eq!(
        s["errors_by_type"],
        json!({ "rejected": 15 }),
        "{summary:#}"
    );

    // Exactly the delivered records, each once, in the order they were sent. The first
    // batch sent while the target was down went through on a retry (it had failed at least
    // 3 times); the batches queued behind it went out on their first try, after it.
    let expected: BTreeSet<u64> = (0..20).chain(35..60).collect();
    assert_eq!(delivered_numbers(&out), expected);
    let lines = read_json_lines(&out);
    let ns: Vec<u64> = lines
        .iter()
        .map(|l| l["record"]["n"].as_u64().unwrap())
        .collect();
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "out of order: {ns:?}");
    for line in &lines[..20] {
        assert_eq!(line["attempt"], 0, "{line}");
    }
    assert!(lines[20]["attempt"].as_u64().unwrap() >= 3, "{}", lines[20]);
    let expected: BTreeSet<u64> = (0..30).filter(|n| n % 3 != 0).collect();
    assert_eq!(delivered_numbers(&back), expected);
    for line in read_json_lines(&back) {
        assert_eq!(line["record"]["_retried"], true, "{line}");
    }
}

#[test]
fn a_stage_without_a_thread_settles_what_it_holds_on_the_hosts_ticks() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{fixtures}}/libdeferred_exporter.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  out: { plugin: ticking, inputs: [in], config: { out: "{{dir}}/out.jsonl", tick_ms: 50 } }
monitoring:
  mode: direct
  admin: { listen: "127.0.0.1:0" }
"#,
    );
    // The stage returns from every call with the records held; only a tick delivers them
    // (the drain's flush would too, but the host is not stopping).
    send_json(&host.endpoint, &messages(0, 30));
    host.wait_settled(30);
    assert_eq!(
        delivered_numbers(&host.path("out.jsonl")),
        (0..30).collect()
    );
    let ticks = host
        .metrics()
        .get("host_plugin_ticks_total", &[("stage", "out")])
        .unwrap_or(0.0);
    assert!(ticks >= 1.0, "settled without a tick?");

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (30, 30, 0, 0), "{summary:#}");
    assert_eq!(
        stage(&summary, "out")["records_delivered_later"],
        30,
        "{summary:#}"
    );
}
