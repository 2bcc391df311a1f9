//! The OTLP receiver goes away for 5 s in the middle of a stream and comes back on the same
//! port: while it is away `/health/ready` answers 503 naming the `otlp` stage and its target,
//! the records sent meanwhile wait (they are not counted as delivered), and once it is back
//! every record arrives exactly once and the host's counts reconcile. Over gRPC and HTTP.

use std::{
    thread,
    time::{Duration, Instant},
};

use tests::{
    assert_reconciled, attributes_json, json, send_json, totals, wait_until, Host, OtlpProtocol,
    OtlpReceiver, Value, DELIVERY_TIMEOUT,
};

/// How long a change of the stage's health may take to show (checks run every 200 ms).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
const OUTAGE: Duration = Duration::from_secs(5);
const BEFORE: u64 = 50;
const DURING: u64 = 50;

fn pipeline(receiver: &OtlpReceiver) -> String {
    receiver.pipeline(
        "      timeout: 1s
      sending:
        batch_size: 10
        max_delay: 20ms
        retry: { initial_interval: 50ms, max_interval: 400ms, max_elapsed: 0s }
",
        "monitoring:
  mode: direct
  admin: { listen: \"127.0.0.1:0\" }
  health: { interval: 200ms, timeout: 1s }
",
    )
}

fn messages(from: u64, to: u64) -> Vec<Value> {
    (from..to)
        .map(|i| json!({ "i": i, "text": format!("message {i}") }))
        .collect()
}

fn arrived(receiver: &OtlpReceiver) -> usize {
    receiver.received().log_records().len()
}

fn wait_arrived(receiver: &OtlpReceiver, host: &Host, n: u64) {
    let ok = wait_until(DELIVERY_TIMEOUT, || arrived(receiver) as u64 >= n);
    assert!(
        ok,
        "{} of {n} log records arrived; the host's log:\n{}",
        arrived(receiver),
        host.log()
    );
}

fn outage(protocol: OtlpProtocol) {
    let mut receiver = OtlpReceiver::start(protocol);
    let mut host = Host::start(&pipeline(&receiver));
    send_json(&host.endpoint, &messages(0, BEFORE));
    wait_arrived(&receiver, &host, BEFORE);
    host.wait_settled(BEFORE);

    let down_at = Instant::now();
    receiver.stop();
    send_json(&host.endpoint, &messages(BEFORE, BEFORE + DURING));
    let unready = host
        .wait_for_answer("/health/ready", HEALTH_TIMEOUT, "ready turns 503", |r| {
            r.status == 503
        })
        .json();
    let reasons = unready["reasons"].to_string();
    assert!(
        reasons.contains("stage/out") && reasons.contains(&receiver.endpoint()),
        "the reason names the stage and its target: {unready:#}"
    );
    // Nothing sent while the receiver is away counts as delivered.
    let api = host.get_json("/api/metrics");
    assert_eq!(api["pipeline"]["completed"], BEFORE, "{api:#}");
    // (`failed` is counted when a source batch settles, `failed_by_type` at the failure.)
    assert_eq!(api["pipeline"]["failed_by_type"], json!({}), "{api:#}");
    assert_eq!(arrived(&receiver) as u64, BEFORE);
    thread::sleep(OUTAGE.saturating_sub(down_at.elapsed()));

    receiver.restart();
    wait_arrived(&receiver, &host, BEFORE + DURING);
    host.wait_for_answer("/health/ready", HEALTH_TIMEOUT, "ready again", |r| {
        r.status == 200
    });
    host.wait_settled(BEFORE + DURING);
    let summary = host.stop();
    assert_reconciled(&summary);
    let total = BEFORE + DURING;
    assert_eq!(totals(&summary), (total, total, 0, 0), "{summary:#}");

    let mut got: Vec<Value> = receiver
        .received()
        .log_records()
        .iter()
        .map(|log| attributes_json(&log.attributes))
        .collect();
    got.sort_by_key(|a| a["i"].as_u64());
    assert_eq!(got, messages(0, total), "every record exactly once");
}

#[test]
fn records_wait_for_a_grpc_receiver_that_comes_back() {
    outage(OtlpProtocol::Grpc);
}

#[test]
fn records_wait_for_an_http_receiver_that_comes_back() {
    outage(OtlpProtocol::Http);
}
