//! `monitoring.mode: disabled` does no observation work: with the Redis bus configured and a
//! real redis-server waiting, the bus is never started (Redis sees no connection and no key),
//! no stage call is recorded, and only the pipeline's message totals still count.

use tests::{
    assert_reconciled, json, redis_info_field, redis_keys, redis_url, send_json, stage, totals,
    wait_for_lines, Host, RedisServer, Value,
};

#[test]
fn disabled_mode_writes_no_event_and_records_no_call() {
    let redis = RedisServer::start();
    let mut conn = redis.connect();
    let connections_before = redis_info_field(&mut conn, "stats", "total_connections_received");
    let mut host = Host::start(&format!(
        r#"
plugins:
  paths: ["{{{{plugins}}}}"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  process:
    plugin: rules
    inputs: [in]
    config: {{ drop: [{{ field: level, equals: debug }}] }}
  export:
    plugin: jsonl
    inputs: [process]
    config: {{ path: "{{{{dir}}}}/out.jsonl" }}
monitoring:
  mode: disabled
  window: 300ms
  admin: {{ listen: "127.0.0.1:0" }}
  health: {{ interval: 200ms }}
  events: {{ bus: redis, redis_url: "{}" }}
"#,
        redis_url(redis.port)
    ));
    let n: u64 = 20;
    let kept: u64 = 10;
    let messages: Vec<Value> = (0..n)
        .map(|i| json!({ "n": i, "level": if i % 2 == 0 { "info" } else { "debug" } }))
        .collect();
    send_json(&host.endpoint, &messages);
    wait_for_lines(&host.path("out.jsonl"), kept as usize);
    let api = host.wait_settled(n);

    // The pipeline's totals count every message; no stage call is observed.
    assert_eq!(api["mode"], "disabled", "{api:#}");
    assert_eq!(api["pipeline"]["received"], n, "{api:#}");
    assert_eq!(api["pipeline"]["completed"], kept, "{api:#}");
    assert_eq!(api["pipeline"]["filtered"], n - kept, "{api:#}");
    for name in ["process", "export"] {
        let s = stage(&api, name);
        for key in [
            "calls",
            "records_in",
            "records_out",
            "records_failed",
            "errors",
        ] {
            assert_eq!(s[key], 0, "{name}.{key}: {s:#}");
        }
        assert_eq!(s["latency_ms"]["count"], 0, "{s:#}");
        assert_eq!(s["data_types"], json!({}), "{s:#}");
        assert_eq!(s["end_to_end_ms"], Value::Null, "{s:#}");
        assert_eq!(s["gauges"], json!({}), "{s:#}");
    }
    assert!(api.get("events").is_none(), "no bus, no bus stats: {api:#}");
    assert_eq!(api["plugin_metrics"], json!([]), "{api:#}");

    let m = host.metrics();
    assert_eq!(
        m.value("host_monitoring_mode_info", &[("mode", "disabled")]),
        1.0
    );
    assert_eq!(m.value("host_messages_received_total", &[]), n as f64);
    for name in ["process", "export"] {
        let labels = [("stage", name), ("operation", "process")];
        assert_eq!(m.value("host_stage_calls_total", &labels), 0.0, "{name}");
        assert_eq!(
            m.value("host_stage_records_in_total", &labels),
            0.0,
            "{name}"
        );
    }
    for family in [
        "host_events_published_total",
        "host_events_publish_failed_total",
        "host_event_bus_up",
    ] {
        assert_eq!(
            m.family_type(family),
            None,
            "{family} without a bus:\n{}",
            m.text
        );
    }

    // Health still answers, without an event bus component.
    let ready = host.get_json("/health/ready");
    assert_eq!(ready["ready"], true, "{ready:#}");
    let names: Vec<&str> = ready["components"]
        .as_array()
        .expect("components")
        .iter()
        .map(|c| c["component"].as_str().expect("component"))
        .collect();
    assert_eq!(
        names,
        ["stage/process", "stage/export", "source/in"],
        "{ready:#}"
    );

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (n, kept, n - kept, 0), "{summary:#}");
    assert_eq!(stage(&summary, "process")["calls"], 0, "{summary:#}");

    // Redis never heard from the host.
    assert_eq!(redis_keys(&mut conn), Vec::<String>::new());
    assert_eq!(
        redis_info_field(&mut conn, "stats", "total_connections_received"),
        connections_before,
        "the host connected to Redis"
    );
}
