//! A target that is down, then up again: while it is down, the exporter (the SDK's sending
//! queue) holds what it is given, nothing is written, every held message counts as in
//! flight, and /health/ready answers 503 with the exporter's reason (it cannot send). Once
//! the target is back, every message arrives exactly once, readiness returns, and the totals
//! reconcile with every message completed.

use std::{collections::BTreeSet, fs, time::Duration};

use tests::{
    assert_reconciled, pyzmq_push, read_json_lines, read_lines, stage, totals, wait_for_lines,
    Host, Value, DELIVERY_TIMEOUT,
};

/// How long a change of the exporter's health may take to show (checks run every 200 ms).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

const PIPELINE: &str = r#"
plugins:
  paths: ["{{fixtures}}/libdeferred_exporter.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  out:
    plugin: deferred
    inputs: [in]
    config:
      out: "{{dir}}/out.jsonl"
      down_while: "{{dir}}/down"
      sending:
        max_delay: 20ms
        retry: { initial_interval: 20ms, max_interval: 200ms }
monitoring:
  mode: direct
  admin: { listen: "127.0.0.1:0" }
  health: { interval: 200ms, timeout: 1s }
"#;

fn ready_status(host: &Host, status: u16) -> Value {
    let what = format!("/health/ready answers {status}");
    host.wait_for_answer("/health/ready", HEALTH_TIMEOUT, &what, |r| {
        r.status == status
    })
    .json()
}

#[test]
fn messages_held_while_the_target_is_down_arrive_once_when_it_is_back() {
    let count: u64 = 2000;
    let mut host = Host::start(PIPELINE);
    let out = host.path("out.jsonl");
    ready_status(&host, 200);

    fs::write(host.path("down"), b"").unwrap();
    pyzmq_push(&host.endpoint, count as usize);
    // Everything sent is held by the exporter (its queue holds 10 000 records by default).
    let api = host
        .wait_for_answer("/api/metrics", DELIVERY_TIMEOUT, "all messages held", |r| {
            let p = &r.json()["pipeline"];
            p["received"] == count && p["in_flight"] == count
        })
        .json();
    assert_eq!(stage(&api, "out")["records_deferred"], count, "{api:#}");
    assert_eq!(api["pipeline"]["completed"], 0, "{api:#}");

    // Not ready: the exporter says it cannot send, and why.
    let unready = ready_status(&host, 503);
    let reasons = unready["reasons"].as_array().expect("reasons");
    assert_eq!(reasons.len(), 1, "{unready:#}");
    let reason = reasons[0].as_str().expect("a reason is text");
    assert!(
        reason.contains("stage/out")
            && reason.contains("cannot send")
            && reason.contains("target_down"),
        "the reason should name the stage and say it cannot send: {unready:#}"
    );
    assert!(
        read_lines(&out).is_empty(),
        "written while the target was down"
    );
    let api = host.get_json("/api/metrics");
    assert_eq!(api["pipeline"]["in_flight"], count, "{api:#}");

    fs::remove_file(host.path("down")).unwrap();
    wait_for_lines(&out, count as usize);
    host.wait_settled(count);
    ready_status(&host, 200);

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (count, count, 0, 0), "{summary:#}");
    let lines = read_json_lines(&out);
    assert_eq!(lines.len() as u64, count, "each message once");
    let sent: BTreeSet<u64> = lines
        .iter()
        .map(|l| l["record"]["i"].as_u64().expect("i"))
        .collect();
    assert_eq!(sent, (0..count).collect(), "every message, once");
}
