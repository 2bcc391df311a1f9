//! `monitoring.otlp.traces`: every stage call (all of them at `sample_ratio: 1`) becomes a span
//! at a real OTLP receiver, over gRPC and over HTTP, with the stage, the records in and out,
//! the outcome and the error type; the spans' record counts add up to what the monitor counted,
//! at `sample_ratio: 0` there are none, at `0.5` about half. A message that carried a `traceparent` gets a span in
//! its trace per stage (a child of the span it named, linked both ways with the call's span,
//! failed when the stage failed it), and the events on the Redis bus and the JSON log lines
//! written during a traced call carry the call's trace id.

use std::{collections::BTreeSet, time::Duration};

use tests::{
    any_to_json, assert_reconciled, json, read_stream, redis_url, send_json, stream_key, totals,
    wait_until, Host, OtlpProtocol, OtlpReceiver, RedisServer, Value,
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
        .filter(|span| span.name.ends_with(" process"))
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
fn at_ratio_one_half_about_half_the_calls_are_traced() {
    let receiver = OtlpReceiver::start(OtlpProtocol::Grpc);
    // One message per batch: a call per message and stage, each sampled by its own trace id.
    let config = pipeline(&receiver, 0.5).replace(
        r#"bind: "{{endpoint}}" }"#,
        r#"bind: "{{endpoint}}", batch_size: 1 }"#,
    );
    assert!(config.contains("batch_size: 1"), "{config}");
    let mut host = Host::start(&config);
    send_json(&host.endpoint, &messages());
    host.wait_settled(N);
    let summary = host.stop();
    let made: u64 = ["check", "out"]
        .iter()
        .map(|s| tests::stage(&summary, s)["calls"].as_u64().expect("calls"))
        .sum();
    assert!(wait_until(Duration::from_secs(5), || !receiver
        .received()
        .metrics
        .is_empty()));
    let traced = calls(&receiver).len() as u64;
    println!("{traced} of {made} calls traced at sample_ratio 0.5");
    // Binomial: half of `made`, give or take; these bounds are 6.6 standard deviations out
    // (4.9 if a message's two calls share one trace), and exclude both none and every call.
    // `check` is called once per message; `out` once per message `check` did not fail.
    assert_eq!(
        made,
        N + N * 3 / 4,
        "calls for {N} messages in batches of 1"
    );
    assert!(
        traced > made / 10 && traced < made - made / 10,
        "{traced} of {made} calls traced at sample_ratio 0.5"
    );
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &tests::otlp::Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(any_to_json)
}

/// Message `i`'s trace and the span it names (its caller's).
fn traceparent(i: u64) -> (String, String) {
    (
        format!("{:032x}", 0xabc0_0000 + i),
        format!("{:016x}", 0x5150 + i),
    )
}

#[test]
fn traced_messages_events_and_log_lines_share_the_calls_trace() {
    const M: u64 = 12;
    let receiver = OtlpReceiver::start(OtlpProtocol::Grpc);
    let redis = RedisServer::start();
    // `out` writes to /dev/full: the jsonl plugin logs a warning inside its call.
    let text = pipeline(&receiver, 1.0)
        .replace("{{dir}}/out.jsonl", "/dev/full")
        .replace(
            "monitoring:\n",
            &format!(
                "monitoring:\n  mode: event_driven\n  events: {{ bus: redis, redis_url: \"{}\" }}\n",
                redis_url(redis.port)
            ),
        );
    let mut host = Host::start_with(&text, |c| {
        c.args(["--log-format", "json"]);
    });
    let messages: Vec<Value> = (0..M)
        .map(|i| {
            let (trace, span) = traceparent(i);
            json!({ "n": i, "bad": i % 4 == 1, "traceparent": format!("00-{trace}-{span}-01") })
        })
        .collect();
    send_json(&host.endpoint, &messages);
    host.wait_settled(M);
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary).0, M, "{summary:#}");

    let received = receiver.received();
    let spans = received.spans();
    let call_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.name.ends_with(" process"))
        .collect();
    let by_id = |id: &[u8]| spans.iter().find(|s| s.span_id == id);

    // A span per message per stage it reached (`check` fails every 4th), in the message's
    // trace, under the span it named.
    for stage in ["check", "out"] {
        for i in (0..M).filter(|i| stage == "check" || i % 4 != 1) {
            let (trace, parent) = traceparent(i);
            let mine: Vec<_> = spans
                .iter()
                .filter(|s| s.name == format!("{stage} record") && hex(&s.trace_id) == trace)
                .collect();
            assert_eq!(mine.len(), 1, "{stage} message {i}: {mine:#?}");
            let span = mine[0];
            assert_eq!(hex(&span.parent_span_id), parent, "{stage} {i}");
            assert_eq!(attr(span, "stage"), Some(json!(stage)));
            let failed = stage == "out" || i % 4 == 1;
            let outcome = if failed { "failed" } else { "ok" };
            assert_eq!(attr(span, "outcome"), Some(json!(outcome)), "{stage} {i}");
            assert_eq!(
                span.status.as_ref().map(|s| s.code),
                Some(if failed { 2 } else { 0 }),
                "{stage} {i}: {span:?}"
            );
            if stage == "check" && failed {
                assert_eq!(attr(span, "error.type"), Some(json!("validation")));
            }
            // Linked with its call's span, both ways.
            assert_eq!(span.links.len(), 1, "{span:?}");
            let call = by_id(&span.links[0].span_id).expect("the linked call span");
            assert_eq!(call.name, format!("{stage} process"));
            assert_eq!(call.trace_id, span.links[0].trace_id);
            assert!(
                call.links
                    .iter()
                    .any(|l| l.span_id == span.span_id && l.trace_id == span.trace_id),
                "{call:?}"
            );
        }
    }
    let traced: i64 = call_spans
        .iter()
        .filter_map(|s| attr(s, "records.traced").and_then(|v| v.as_i64()))
        .sum();
    assert_eq!(traced as u64, M + M - M / 4);

    // Every performance event of a call carries that call's trace and span ids.
    let calls: BTreeSet<(String, String)> = call_spans
        .iter()
        .map(|s| (hex(&s.trace_id), hex(&s.span_id)))
        .collect();
    let mut conn = redis.connect();
    for kind in [
        "performance.phase.start",
        "performance.phase.end",
        "performance.operation.complete",
        "performance.operation.failed",
    ] {
        let entries = read_stream(&mut conn, &stream_key(kind));
        assert!(!entries.is_empty(), "{kind}");
        for e in &entries {
            let ids = (
                e.field("trace_id").to_owned(),
                e.field("span_id").to_owned(),
            );
            assert!(calls.contains(&ids), "{kind}: {e:?} names no call span");
        }
    }
    let completed = read_stream(&mut conn, &stream_key("performance.operation.complete"));
    let traces: BTreeSet<&str> = completed.iter().map(|e| e.field("trace_id")).collect();
    assert_eq!(traces.len(), completed.len(), "a trace per call");

    // The plugin's warning, written inside a traced call, carries that call's trace id.
    let out_calls: BTreeSet<String> = call_spans
        .iter()
        .filter(|s| s.name == "out process")
        .map(|s| hex(&s.trace_id))
        .collect();
    let log = host.log();
    let warning: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["target"] == "plugin_jsonl")
        .unwrap_or_else(|| panic!("no plugin warning:\n{log}"));
    assert_eq!(warning["span"]["name"], "call", "{warning}");
    let trace_id = warning["span"]["trace_id"].as_str().expect("trace_id");
    assert!(out_calls.contains(trace_id), "{warning}");
    assert_eq!(warning["spans"][0]["stage"], "out", "{warning}");
}

#[test]
fn a_call_gives_at_most_128_records_a_span_and_counts_the_rest() {
    const M: u64 = 3000;
    let receiver = OtlpReceiver::start(OtlpProtocol::Grpc);
    // However small the batches come, no span may be lost to the SDK's queue (2048).
    let mut host = Host::start_with(&pipeline(&receiver, 1.0), |c| {
        c.env("OTEL_BSP_MAX_QUEUE_SIZE", "65536");
    });
    let messages: Vec<Value> = (0..M)
        .map(|i| {
            let (trace, span) = traceparent(i);
            json!({ "n": i, "traceparent": format!("00-{trace}-{span}-01") })
        })
        .collect();
    send_json(&host.endpoint, &messages);
    host.wait_settled(M);
    let summary = host.stop();
    assert_eq!(totals(&summary), (M, M, 0, 0), "{summary:#}");

    let received = receiver.received();
    let spans = received.spans();
    let int = |span: &tests::otlp::Span, key: &str| {
        attr(span, key)
            .and_then(|v| v.as_i64())
            .unwrap_or_else(|| panic!("{key}: {span:?}"))
    };
    let (mut traced, mut untraced, mut largest) = (0, 0, 0);
    for call in spans.iter().filter(|s| s.name == "check process") {
        let records_in = int(call, "records.in");
        let (t, u) = (int(call, "records.traced"), int(call, "records.untraced"));
        // Every message carries a trace context: the first 128 of a call get a span.
        assert_eq!(t, records_in.min(128), "{call:?}");
        assert_eq!(t + u, records_in, "{call:?}");
        assert_eq!(call.links.len() as i64, t, "a link per record span");
        assert_eq!(call.dropped_links_count, 0);
        (traced, untraced, largest) = (traced + t, untraced + u, largest.max(records_in));
    }
    assert_eq!((traced + untraced) as u64, M);
    let record_spans = spans.iter().filter(|s| s.name == "check record").count();
    assert_eq!(record_spans as i64, traced);
    // A burst of 3000 comes in batches of up to 512 (the source's default batch size).
    assert!(
        largest > 128,
        "no call had more than 128 records: {largest}"
    );
    assert!(untraced > 0);
}
