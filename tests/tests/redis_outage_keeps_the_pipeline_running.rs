//! Redis away, then back: with the Redis bus pointed at a port where nothing listens the
//! pipeline still delivers everything and stays ready, while the bus reports itself unhealthy
//! with the reason and counts the events it could not write. Once a redis-server starts on
//! that port the bus reconnects by itself and new events reach the streams.

use std::time::Duration;

use tests::{
    assert_reconciled, free_port, json, read_stream, redis_url, send_json, stage, stream_key,
    totals, wait_for_lines, wait_until, Host, RedisServer, Value,
};

/// The bus retries with a backoff of at most 5 s.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(15);

fn event_bus(health: &Value) -> &Value {
    health["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["component"] == "event_bus"))
        .unwrap_or_else(|| panic!("no event_bus component: {health:#}"))
}

fn messages(from: u64, to: u64) -> Vec<Value> {
    (from..to).map(|i| json!({ "n": i })).collect()
}

#[test]
fn the_pipeline_runs_on_while_redis_is_away_and_events_resume_when_it_is_back() {
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let mut host = Host::start(&format!(
        r#"
plugins:
  paths: ["{{{{plugins}}}}"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  export:
    plugin: jsonl
    inputs: [in]
    config: {{ path: "{{{{dir}}}}/out.jsonl" }}
monitoring:
  mode: event_driven
  admin: {{ listen: "127.0.0.1:0" }}
  health: {{ interval: 200ms }}
  events: {{ bus: redis, redis_url: "{}" }}
"#,
        redis_url(port)
    ));
    let out = host.path("out.jsonl");

    // Redis is not there: messages still go through, and the monitor still counts them.
    let first = 20;
    send_json(&host.endpoint, &messages(0, first));
    wait_for_lines(&out, first as usize);
    let api = host.wait_for_answer(
        "/api/metrics",
        Duration::from_secs(10),
        "the monitor counted the calls, with failed publishes",
        |r| {
            let a = r.json();
            stage(&a, "export")["records_in"] == first
                && a["events"]["publish_failed"]
                    .as_u64()
                    .is_some_and(|n| n > 0)
        },
    );
    let events = &api.json()["events"];
    assert_eq!(events["bus"], "redis", "{events}");
    assert_eq!(events["healthy"], false, "{events}");
    assert!(
        events["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&target)),
        "the reason names where Redis should be: {events}"
    );

    // Ready all the same (the bus does not count for readiness), but shown unhealthy.
    let ready = host.get("/health/ready");
    assert_eq!(ready.status, 200, "{ready:#?}");
    let ready = ready.json();
    assert_eq!(ready["ready"], true, "{ready:#}");
    assert_eq!(ready["reasons"], json!([]), "{ready:#}");
    let bus = event_bus(&ready);
    assert_eq!(bus["status"], "unhealthy", "{ready:#}");
    assert_eq!(bus["kind"], "event_bus", "{ready:#}");
    let reason = bus["reason"].as_str().expect("reason");
    assert!(
        reason.contains("redis") && reason.contains(&target),
        "the reason says what is wrong: {reason:?}"
    );
    let live = host.get("/health/live");
    assert_eq!(live.status, 200, "{live:#?}");
    assert_eq!(event_bus(&live.json())["status"], "unhealthy");

    let m = host.metrics();
    let failed = m.value("host_events_publish_failed_total", &[("bus", "redis")]);
    assert!(failed > 0.0, "host_events_publish_failed_total is {failed}");
    assert_eq!(m.value("host_event_bus_up", &[("bus", "redis")]), 0.0);
    assert_eq!(m.value("host_ready", &[]), 1.0);
    assert_eq!(m.value("host_messages_completed_total", &[]), first as f64);

    // Redis comes up on that port: the bus finds it by itself.
    let redis = RedisServer::start_on(port);
    host.wait_for_answer(
        "/health/live",
        RECONNECT_TIMEOUT,
        "the event bus is healthy again",
        |r| event_bus(&r.json())["status"] == "healthy",
    );
    assert_eq!(
        host.metrics()
            .value("host_event_bus_up", &[("bus", "redis")]),
        1.0
    );

    // New events reach the streams: exactly the calls made from now on.
    let second = 10;
    send_json(&host.endpoint, &messages(first, first + second));
    wait_for_lines(&out, (first + second) as usize);
    let mut conn = redis.connect();
    let key = stream_key("performance.operation.complete");
    let written = |conn: &mut redis::Connection| -> u64 {
        read_stream(conn, &key)
            .iter()
            .map(|e| e.payload())
            .filter(|p| p["stage"] == "export")
            .map(|p| p["records_in"].as_u64().expect("records_in"))
            .sum()
    };
    let mut seen = 0;
    let arrived = wait_until(Duration::from_secs(10), || {
        seen = written(&mut conn);
        seen >= second
    });
    assert!(arrived, "{seen} records' calls in {key}, expected {second}");

    let summary = host.stop();
    assert_eq!(
        written(&mut conn),
        second,
        "only calls made after Redis was back"
    );
    assert_reconciled(&summary);
    let total = first + second;
    assert_eq!(totals(&summary), (total, total, 0, 0), "{summary:#}");
    // Local metrics missed nothing while Redis was away.
    assert_eq!(
        stage(&summary, "export")["records_in"],
        total,
        "{summary:#}"
    );
    let stopped = read_stream(&mut conn, &stream_key("pipeline.stopped"));
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    let changes: Vec<Value> = read_stream(&mut conn, &stream_key("health.status.changed"))
        .iter()
        .map(|e| e.payload())
        .filter(|p| p["component"] == "event_bus")
        .collect();
    assert!(
        changes
            .iter()
            .any(|p| p["from"] == "unhealthy" && p["to"] == "healthy"),
        "the bus's recovery was published: {changes:#?}"
    );
}
