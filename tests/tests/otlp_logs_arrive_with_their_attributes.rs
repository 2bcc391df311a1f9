//! The `otlp` exporter, over gRPC and over OTLP/HTTP, against a real OTLP receiver that
//! decodes with the official protobuf types: N records give N log records, each with the
//! record's fields as attributes (nested maps and lists included, values of the right
//! types), the configured body, severity and timestamp, the trace context of the message's
//! `traceparent` as the log's trace and span ids, the configured resource, and a header
//! whose value came from the environment. Every request is gzip-compressed by default
//! (`grpc-encoding: gzip`, `content-encoding: gzip`) and not at all with `compression: none`,
//! and none holds more than `sending.batch_size` records.

use tests::{
    any_to_json, assert_reconciled, attributes_json, json, send_json, totals, wait_until, Host,
    OtlpProtocol, OtlpReceiver, Value, DELIVERY_TIMEOUT,
};

const N: u64 = 60;
const BATCH_SIZE: usize = 16;
const TOKEN: &str = "s3cret-token";

/// `compression:` as configured; `None`: the key left out (the default, gzip).
fn pipeline(receiver: &OtlpReceiver, compression: Option<&str>) -> String {
    let compression = compression.map_or(String::new(), |c| format!("      compression: {c}\n"));
    receiver.pipeline(
        &format!(
            r#"      headers: {{ authorization: "Bearer ${{OTLP_TEST_TOKEN}}" }}
      body_field: msg
      severity_field: level
      timestamp_field: ts
      resource: {{ service.name: checkout, replica: 3 }}
      sending: {{ batch_size: {BATCH_SIZE}, max_delay: 50ms }}
{compression}"#
        ),
        "",
    )
}

const LEVELS: [(&str, i32); 4] = [("debug", 5), ("INFO", 9), ("warning", 13), ("error", 17)];

fn trace_id(i: u64) -> String {
    format!("{:032x}", 0xabc0_0000 + i)
}

fn message(i: u64) -> Value {
    let mut m = json!({
        "i": i,
        "msg": format!("order {i} placed"),
        "level": LEVELS[(i % 4) as usize].0,
        "ts": if i.is_multiple_of(2) { json!(1_718_000_000 + i) } else { json!("2024-06-10T08:13:20.5+02:00") },
        "price": i as f64 + 0.25,
        "paid": i.is_multiple_of(3),
        "nested": { "tags": ["a", 1, 2.5, false, null], "by": { "user": format!("u{i}") } },
    });
    if i.is_multiple_of(5) {
        m["traceparent"] = json!(format!("00-{}-{:016x}-01", trace_id(i), 0x5000 + i));
    }
    m
}

/// `compression`: as [`pipeline`] takes it; `encoding`: the compression every request must
/// say it carries (`None`: none).
fn logs_arrive(protocol: OtlpProtocol, compression: Option<&str>, encoding: Option<&str>) {
    let receiver = OtlpReceiver::start(protocol);
    let mut host = Host::start_with(&pipeline(&receiver, compression), |cmd| {
        cmd.env("OTLP_TEST_TOKEN", TOKEN);
    });
    let messages: Vec<Value> = (0..N).map(message).collect();
    send_json(&host.endpoint, &messages);
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
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (N, N, 0, 0), "{summary:#}");

    let received = receiver.received();
    assert_eq!(
        received
            .last_headers
            .get("authorization")
            .map(String::as_str),
        Some(format!("Bearer {TOKEN}").as_str()),
        "{:?}",
        received.last_headers
    );
    assert!(
        received
            .seen
            .iter()
            .all(|s| s.encoding.as_deref() == encoding),
        "every request's encoding is {encoding:?}: {:?}",
        received.seen
    );
    assert!(
        received.seen.iter().all(|s| s.items <= BATCH_SIZE),
        "no request holds more than batch_size records: {:?}",
        received.seen
    );
    assert!(
        received.seen.len() as u64 >= N.div_ceil(BATCH_SIZE as u64),
        "{:?}",
        received.seen
    );
    for request in &received.logs {
        let resource = request.resource_logs[0]
            .resource
            .as_ref()
            .expect("a resource");
        assert_eq!(
            attributes_json(&resource.attributes),
            json!({ "replica": 3, "service.name": "checkout" })
        );
    }
    let logs = received.log_records();
    assert_eq!(logs.len() as u64, N, "each record once");
    let mut seen = vec![false; N as usize];
    for log in logs {
        let attributes = attributes_json(&log.attributes);
        let i = attributes["i"].as_u64().expect("attribute i");
        assert!(!seen[i as usize], "record {i} arrived twice");
        seen[i as usize] = true;
        let mut expected = message(i);
        let body = expected
            .as_object_mut()
            .and_then(|m| m.remove("msg"))
            .expect("msg");
        // Exactly the record's fields, of the same types (an integer is not a double), in
        // the message's order; the body field is the body and not an attribute.
        assert_eq!(attributes, expected, "record {i}");
        let keys: Vec<&str> = log.attributes.iter().map(|a| a.key.as_str()).collect();
        let sent: Vec<&str> = expected
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, sent, "record {i}: the attributes' order");
        assert_eq!(any_to_json(log.body.as_ref().expect("a body")), body);
        let (text, number) = LEVELS[(i % 4) as usize];
        assert_eq!(log.severity_text, text, "record {i}");
        assert_eq!(log.severity_number, number, "record {i}");
        let time = if i.is_multiple_of(2) {
            (1_718_000_000 + i) * 1_000_000_000
        } else {
            1_718_000_000_500_000_000
        };
        assert_eq!(log.time_unix_nano, time, "record {i}");
        assert!(log.observed_time_unix_nano > 1_718_000_000_000_000_000);
        if i.is_multiple_of(5) {
            let want_trace = trace_id(i);
            assert_eq!(hex(&log.trace_id), want_trace, "record {i}");
            assert_eq!(hex(&log.span_id), format!("{:016x}", 0x5000 + i));
            assert_eq!(log.flags & 0xff, 1, "record {i}: sampled");
        } else {
            assert!(
                log.trace_id.is_empty() && log.span_id.is_empty(),
                "record {i}"
            );
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn logs_arrive_over_grpc() {
    logs_arrive(OtlpProtocol::Grpc, None, Some("gzip"));
}

#[test]
fn logs_arrive_over_http() {
    logs_arrive(OtlpProtocol::Http, None, Some("gzip"));
}

#[test]
fn uncompressed_logs_arrive_over_grpc() {
    logs_arrive(OtlpProtocol::Grpc, Some("none"), None);
}

#[test]
fn uncompressed_logs_arrive_over_http() {
    logs_arrive(OtlpProtocol::Http, Some("none"), None);
}
