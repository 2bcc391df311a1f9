//! `monitoring.otlp.traces`: every stage call (all of them at `sample_ratio: 1`) becomes a span
//! at a real OTLP receiver, over gRPC and over HTTP, with the stage, the records in and out,
//! the outcome and the error type; the spans' record counts add up to what the monitor counted,
//! a call links to the trace of each message that carried a `traceparent`, and at
//! `sample_ratio: 0` there are none.

use std::time::Duration;

use tests::{
    any_to_json, assert_reconciled, json, send_json, totals, wait_until, Host, OtlpProtocol,
    OtlpReceiver, Value,
};

const N: u64 = 40;

fn pipeline(receiver: &OtlpReceiver, ratio: f64) -> String {
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
  admin: {{ listen: "127.0.0.1:0" }}
  otlp:
    endpoint: "{endpoint}"
    protocol: {protocol}
    interval: 1h
    timeout: 5s
    traces: {{ sample_ratio: {ratio} }}
"#,
        endpoint = receiver.endpoint(),
        protocol = receiver.protocol.name(),
    )
}

fn messages() -> Vec<Value> {
    (0..N)
        .map(|i| json!({ "n": i, "bad": i % 4 == 1 }))
        .collect()
}

/// (stage, records in, records out, records failed, outcome, error type) of every span.
type Call = (String, i64, i64, i64, String, Option<String>);

fn calls(receiver: &OtlpReceiver) -> Vec<Call> {
    let received = receiver.received();
    received
        .spans()
        .iter()
        .map(|span| {
            let attr = |key: &str| {
                span.attributes
                    .iter()
                    .find(|kv| kv.key == key)
                    .and_then(|kv| kv.value.as_ref())
                    .map(any_to_json)
            };
            let int = |key: &str| attr(key).and_then(|v| v.as_i64()).expect(key);
            let stage = attr("stage")
                .and_then(|v| v.as_str().map(str::to_owned))
                .expect("stage");
            assert_eq!(span.name, format!("{stage} process"));
            assert!(
                span.end_time_unix_nano >= span.start_time_unix_nano,
                "{span:?}"
            );
            assert!(span.start_time_unix_nano > 0);
            assert_eq!(span.trace_id.len(), 16);
            assert_eq!(attr("operation"), Some(json!("process")));
            (
                stage,
                int("records.in"),
                int("records.out"),
                int("records.failed"),
                attr("outcome")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .expect("outcome"),
                attr("error.type").and_then(|v| v.as_str().map(str::to_owned)),
            )
        })
        .collect()
}

fn stage_calls_are_traced(protocol: OtlpProtocol) {
    let receiver = OtlpReceiver::start(protocol);
    let mut host = Host::start(&pipeline(&receiver, 1.0));
    send_json(&host.endpoint, &messages());
    let snapshot = host.wait_settled(N);
    let summary = host.stop();
    assert_reconciled(&summary);
    let failed = N / 4;
    assert_eq!(totals(&summary), (N, N - failed, 0, failed), "{summary:#}");

    // The batch processor exports at shutdown at the latest.
    let calls = calls(&receiver);
    for (stage, _, _, _, outcome, error) in &calls {
        match outcome.as_str() {
            "ok" => assert_eq!(*error, None, "{stage}"),
            "partial" => assert_eq!(error.as_deref(), Some("validation"), "{stage}"),
            other => panic!("{stage}: unexpected outcome {other}"),
        }
    }
    for stage in ["check", "out"] {
        let mine: Vec<&Call> = calls.iter().filter(|c| c.0 == stage).collect();
        let monitor = snapshot["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .find(|s| s["stage"] == stage)
            .expect("the stage");
        assert_eq!(
            mine.len() as u64,
            monitor["calls"].as_u64().unwrap(),
            "{stage}: a span per call"
        );
        let sum = |f: fn(&Call) -> i64| mine.iter().map(|c| f(c)).sum::<i64>() as u64;
        assert_eq!(
            sum(|c| c.1),
            monitor["records_in"].as_u64().unwrap(),
            "{stage}"
        );
        assert_eq!(
            sum(|c| c.2),
            monitor["records_out"].as_u64().unwrap(),
            "{stage}"
        );
        assert_eq!(
            sum(|c| c.3),
            monitor["records_failed"].as_u64().unwrap(),
            "{stage}"
        );
    }
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.0 == "check")
            .map(|c| c.3)
            .sum::<i64>() as u64,
        failed
    );
    let resource = &receiver.received().traces[0].resource_spans[0];
    let service = resource
        .resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .map(any_to_json);
    assert_eq!(service, Some(json!("host")));
}

#[test]
fn stage_calls_are_traced_over_grpc() {
    stage_calls_are_traced(OtlpProtocol::Grpc);
}

#[test]
fn stage_calls_are_traced_over_http() {
    stage_calls_are_traced(OtlpProtocol::Http);
}

#[test]
fn no_call_is_traced_at_ratio_zero() {
    let receiver = OtlpReceiver::start(OtlpProtocol::Grpc);
    let mut host = Host::start(&pipeline(&receiver, 0.0));
    send_json(&host.endpoint, &messages());
    host.wait_settled(N);
    host.stop();
    // The final metrics export arrived, so the exporters did run to the end.
    assert!(wait_until(Duration::from_secs(5), || !receiver
        .received()
        .metrics
        .is_empty()));
    assert!(receiver.received().spans().is_empty());
}

#[test]
fn a_receiver_that_is_down_holds_the_exit_at_most_the_timeout() {
    // A port nobody listens on.
    let mut receiver = OtlpReceiver::start(OtlpProtocol::Grpc);
    receiver.stop();
    let text = pipeline(&receiver, 1.0)
        .replace("interval: 1h", "interval: 1s")
        .replace("timeout: 5s", "timeout: 1s");
    // The SDK's batch span processor exports every 100 ms instead of 5 s.
    let mut host = Host::start_with(&text, |c| {
        c.env("OTEL_BSP_SCHEDULE_DELAY", "100");
    });
    send_json(&host.endpoint, &messages());
    host.wait_settled(N);
    let counted = wait_until(Duration::from_secs(20), || {
        host.metrics()
            .value("host_otlp_span_export_failures_total", &[])
            >= 1.0
    });
    assert!(
        counted,
        "failed span exports are not counted:\n{}",
        host.log()
    );
    let started = std::time::Instant::now();
    let summary = host.stop();
    let took = started.elapsed();
    assert_eq!(totals(&summary).0, N);
    // The final exports of metrics and spans run side by side, bounded by timeout + 1 s.
    assert!(
        took < Duration::from_secs(6),
        "the exit took {took:?}:\n{}",
        host.log()
    );
    assert!(
        host.log().contains("OTLP telemetry: metrics export failed"),
        "{}",
        host.log()
    );
}
