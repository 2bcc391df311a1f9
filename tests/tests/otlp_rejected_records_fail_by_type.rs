//! A receiver that answers a permanent error (gRPC `INVALID_ARGUMENT`, HTTP 400): the
//! `otlp` stage's records fail with error type `otlp_rejected`, at once (no retries), in the
//! summary and the monitor's counts. Records sent once the receiver accepts again are
//! delivered. A partial success counts as delivered and is reported.

use tests::{
    assert_reconciled, json, send_json, stage, totals, wait_until, Answer, Host, OtlpProtocol,
    OtlpReceiver, Value, DELIVERY_TIMEOUT, PARTIAL_MESSAGE,
};

const REJECTED: u64 = 30;
const ACCEPTED: u64 = 10;

fn pipeline(receiver: &OtlpReceiver) -> String {
    receiver.pipeline(
        "      compression: none
      sending: { batch_size: 8, max_delay: 20ms }
",
        "",
    )
}

fn messages(from: u64, to: u64) -> Vec<Value> {
    (from..to).map(|i| json!({ "i": i })).collect()
}

fn rejected(protocol: OtlpProtocol) {
    let receiver = OtlpReceiver::start(protocol);
    receiver.answer(Answer::Reject);
    let mut host = Host::start(&pipeline(&receiver));
    send_json(&host.endpoint, &messages(0, REJECTED));
    let api = host.wait_settled(REJECTED);
    assert_eq!(
        api["pipeline"]["failed_by_type"],
        json!({ "otlp_rejected": REJECTED }),
        "{api:#}"
    );
    assert_eq!(
        stage(&api, "out")["errors_by_type"],
        json!({ "otlp_rejected": REJECTED }),
        "{api:#}"
    );
    let requests = receiver.received().requests;
    assert!(
        (REJECTED / 8..=REJECTED).contains(&requests),
        "one request per batch, no retries: {requests}"
    );
    assert_eq!(receiver.received().log_records().len(), 0);

    receiver.answer(Answer::Accept);
    send_json(&host.endpoint, &messages(REJECTED, REJECTED + ACCEPTED));
    let ok = wait_until(DELIVERY_TIMEOUT, || {
        receiver.received().log_records().len() as u64 >= ACCEPTED
    });
    assert!(ok, "the accepted records did not arrive:\n{}", host.log());
    host.wait_settled(REJECTED + ACCEPTED);
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(
        totals(&summary),
        (REJECTED + ACCEPTED, ACCEPTED, 0, REJECTED),
        "{summary:#}"
    );
    assert_eq!(
        summary["pipeline"]["failed_by_type"],
        json!({ "otlp_rejected": REJECTED }),
        "{summary:#}"
    );
    assert!(
        host.log().contains("the target rejected a batch"),
        "the rejection is logged:\n{}",
        host.log()
    );
}

#[test]
fn grpc_rejections_fail_records_as_otlp_rejected() {
    rejected(OtlpProtocol::Grpc);
}

#[test]
fn http_rejections_fail_records_as_otlp_rejected() {
    rejected(OtlpProtocol::Http);
}

/// A partial success (the receiver took the request but says it dropped some items, not
/// which): the records count as delivered, and the receiver's count and message are
/// reported in the log and in the stage's counter `otlp_partially_rejected`.
fn partial_success(protocol: OtlpProtocol) {
    let receiver = OtlpReceiver::start(protocol);
    receiver.answer(Answer::Partial(2));
    let mut host = Host::start(&pipeline(&receiver));
    let n = 10;
    // One batch: every record arrives within `max_delay` of the first.
    send_json(&host.endpoint, &messages(0, n));
    let api = host.wait_settled(n);
    assert_eq!(api["pipeline"]["completed"], n, "{api:#}");
    let requests = receiver.received().requests;
    let counted: f64 = api["plugin_metrics"]
        .as_array()
        .expect("plugin_metrics")
        .iter()
        .filter(|m| m["name"] == "otlp_partially_rejected" && m["stage"] == "out")
        .map(|m| m["value"].as_f64().expect("a value"))
        .sum();
    assert_eq!(counted, 2.0 * requests as f64, "{api:#}");
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (n, n, 0, 0), "{summary:#}");
    let log = host.log();
    assert!(
        log.contains("dropped part of it") && log.contains(PARTIAL_MESSAGE),
        "the partial success is logged:\n{log}"
    );
}

#[test]
fn grpc_partial_success_is_delivered_and_reported() {
    partial_success(OtlpProtocol::Grpc);
}

#[test]
fn http_partial_success_is_delivered_and_reported() {
    partial_success(OtlpProtocol::Http);
}
