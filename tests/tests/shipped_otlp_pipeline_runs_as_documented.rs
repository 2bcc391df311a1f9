//! `pipelines/otlp.yaml`, unchanged, with only the environment variables it documents set:
//! kept records reach a gRPC OTLP receiver as log records (body, severity, time, the token
//! header), and message-metrics' measurements reach an OTLP/HTTP receiver as metrics.

use std::time::{SystemTime, UNIX_EPOCH};

use tests::{
    any_to_json, assert_reconciled, free_endpoint, histogram_points, json, number_points,
    plugin_dir, send_json, totals, wait_until, workspace_dir, Host, OtlpProtocol, OtlpReceiver,
    Value, DELIVERY_TIMEOUT,
};

#[test]
fn the_otlp_pipeline_sends_logs_and_metrics() {
    let logs = OtlpReceiver::start(OtlpProtocol::Grpc);
    let metrics = OtlpReceiver::start(OtlpProtocol::Http);
    let text = std::fs::read_to_string(workspace_dir().join("pipelines/otlp.yaml"))
        .expect("the shipped pipeline");
    let endpoint = free_endpoint();
    let mut host = Host::start_with(&text, |cmd| {
        cmd.env("PLUGIN_DIR", plugin_dir())
            .env("INGEST_ENDPOINT", &endpoint)
            .env("ADMIN_LISTEN", "127.0.0.1:0")
            .env("OTLP_GRPC_ENDPOINT", logs.endpoint())
            .env("OTLP_HTTP_ENDPOINT", metrics.endpoint())
            .env("OTLP_TOKEN", "t0ken");
    });
    let sent_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let messages: Vec<Value> = ["info", "debug", "warn", "error"]
        .iter()
        .enumerate()
        .map(|(i, level)| json!({ "level": level, "msg": format!("m{i}"), "sent_at": sent_at }))
        .collect();
    send_json(&endpoint, &messages);
    let arrived = wait_until(DELIVERY_TIMEOUT, || {
        logs.received().log_records().len() == 3
            && metrics
                .received()
                .metrics()
                .iter()
                .filter(|m| m.name == "pipeline.messages.by_level")
                .map(|m| number_points(m).len())
                .sum::<usize>()
                == 3
    });
    assert!(arrived, "logs and metrics did not arrive:\n{}", host.log());
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (4, 3, 1, 0), "{summary:#}");

    let received = logs.received();
    assert_eq!(received.last_headers["authorization"], "Bearer t0ken");
    let mut bodies: Vec<(Value, String, i32, u64)> = received
        .log_records()
        .iter()
        .map(|l| {
            (
                any_to_json(l.body.as_ref().expect("a body")),
                l.severity_text.clone(),
                l.severity_number,
                l.time_unix_nano,
            )
        })
        .collect();
    bodies.sort_by_key(|b| b.0.to_string());
    let t = sent_at * 1_000_000_000;
    assert_eq!(
        bodies,
        [
            (json!("m0"), "info".to_owned(), 9, t),
            (json!("m2"), "warn".to_owned(), 13, t),
            (json!("m3"), "error".to_owned(), 17, t),
        ]
    );
    let received = metrics.received();
    let names: std::collections::BTreeSet<&str> =
        received.metrics().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "pipeline.message.latency",
            "pipeline.message.size",
            "pipeline.messages.by_level"
        ]
        .into(),
    );
    let sizes: usize = received
        .metrics()
        .iter()
        .filter(|m| m.name == "pipeline.message.size")
        .map(|m| histogram_points(m).len())
        .sum();
    assert_eq!(sizes, 3);
}
