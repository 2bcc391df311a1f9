//! A live receiver that answers the first few requests with a retryable error (gRPC
//! `UNAVAILABLE` or `RESOURCE_EXHAUSTED`; HTTP 503, 429, 502 or 504), or too late for the
//! exporter's `timeout`, and then accepts: the `otlp` stage sends the batch again after a
//! backoff, so every record arrives exactly once, the host counts them all completed and none
//! failed, and the receiver saw exactly one request more per failed answer. No request holds
//! more than `sending.batch_size` records.

use std::time::Duration;

use tests::{
    assert_reconciled, attributes_json, json, send_json, totals, wait_until, Answer, Host,
    OtlpProtocol, OtlpReceiver, Value, DELIVERY_TIMEOUT,
};

const N: u64 = 50;
const BATCH_SIZE: usize = 10;
/// How many requests the receiver answers with an error before it accepts.
const FAILURES: u64 = 5;
/// The exporter's `timeout` when the receiver is too slow: [`Answer::Slow`] waits longer.
const TIMEOUT: Duration = Duration::from_millis(300);
const TOO_SLOW: Duration = Duration::from_secs(1);
/// How many requests the receiver answers too late.
const LATE: u64 = 3;

fn pipeline(receiver: &OtlpReceiver) -> String {
    receiver.pipeline(
        &format!(
            "      timeout: {timeout}ms
      sending:
        batch_size: {BATCH_SIZE}
        max_delay: 20ms
        retry: {{ initial_interval: 20ms, max_interval: 200ms, max_elapsed: 0s }}
",
            timeout = TIMEOUT.as_millis(),
        ),
        "",
    )
}

fn messages() -> Vec<Value> {
    (0..N).map(|i| json!({ "i": i })).collect()
}

/// The stage's plugin counter `name`, from `/api/metrics`.
fn counter(api: &Value, name: &str) -> f64 {
    api["plugin_metrics"]
        .as_array()
        .expect("plugin_metrics")
        .iter()
        .filter(|m| m["name"] == name && m["stage"] == "out")
        .map(|m| m["value"].as_f64().expect("a value"))
        .sum()
}

/// The receiver answers the next `failures` requests with `answer`, then accepts. `in_log`:
/// what the host's log says about the first failure.
fn retried(protocol: OtlpProtocol, answer: Answer, failures: u64, in_log: &[&str]) {
    let receiver = OtlpReceiver::start(protocol);
    receiver.answer_next(failures, answer);
    let mut host = Host::start(&pipeline(&receiver));
    send_json(&host.endpoint, &messages());
    let arrived = wait_until(DELIVERY_TIMEOUT, || {
        receiver.received().log_records().len() as u64 >= N
    });
    assert!(
        arrived,
        "{} of {N} log records arrived; the host's log:\n{}",
        receiver.received().log_records().len(),
        host.log()
    );
    let api = host.wait_settled(N);
    assert_eq!(api["pipeline"]["completed"], N, "{api:#}");
    assert_eq!(api["pipeline"]["failed_by_type"], json!({}), "{api:#}");
    assert_eq!(
        counter(&api, "exporter_send_retries"),
        failures as f64,
        "one retry per failed answer: {api:#}"
    );
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (N, N, 0, 0), "{summary:#}");
    let log = host.log();
    assert!(
        log.contains("sending failed; retrying") && in_log.iter().any(|s| log.contains(s)),
        "the first failure is logged with one of {in_log:?}:\n{log}"
    );

    let received = receiver.received();
    let mut got: Vec<Value> = received
        .log_records()
        .iter()
        .map(|log| attributes_json(&log.attributes))
        .collect();
    got.sort_by_key(|a| a["i"].as_u64());
    assert_eq!(got, messages(), "every record exactly once");
    // Each accepted request is one batch; each failed answer made one more request.
    let batches = received.logs.len() as u64;
    assert_eq!(
        received.seen.len() as u64,
        batches + failures,
        "{:?}",
        received.seen
    );
    assert!(
        batches >= N.div_ceil(BATCH_SIZE as u64),
        "{batches} batches"
    );
    assert!(
        received.seen.iter().all(|s| s.items <= BATCH_SIZE),
        "no request holds more than batch_size records: {:?}",
        received.seen
    );
}

#[test]
fn grpc_unavailable_is_retried() {
    retried(
        OtlpProtocol::Grpc,
        Answer::Unavailable,
        FAILURES,
        &["gRPC Unavailable"],
    );
}

#[test]
fn grpc_resource_exhausted_is_retried() {
    retried(
        OtlpProtocol::Grpc,
        Answer::Exhausted,
        FAILURES,
        &["gRPC ResourceExhausted"],
    );
}

#[test]
fn http_503_is_retried() {
    retried(
        OtlpProtocol::Http,
        Answer::Unavailable,
        FAILURES,
        &["HTTP 503"],
    );
}

#[test]
fn http_429_is_retried() {
    retried(
        OtlpProtocol::Http,
        Answer::Exhausted,
        FAILURES,
        &["HTTP 429"],
    );
}

#[test]
fn http_502_is_retried() {
    retried(
        OtlpProtocol::Http,
        Answer::BadGateway,
        FAILURES,
        &["HTTP 502"],
    );
}

#[test]
fn http_504_is_retried() {
    retried(
        OtlpProtocol::Http,
        Answer::GatewayTimeout,
        FAILURES,
        &["HTTP 504"],
    );
}

/// Over gRPC the request's deadline travels with it (`grpc-timeout`), so tonic's own timer,
/// on either side, may end the call first ("Timeout expired") rather than the exporter's.
#[test]
fn a_grpc_receiver_slower_than_the_timeout_is_retried() {
    retried(
        OtlpProtocol::Grpc,
        Answer::Slow(TOO_SLOW),
        LATE,
        &["no answer within", "Timeout expired"],
    );
}

#[test]
fn an_http_receiver_slower_than_the_timeout_is_retried() {
    retried(
        OtlpProtocol::Http,
        Answer::Slow(TOO_SLOW),
        LATE,
        &["no answer within"],
    );
}
