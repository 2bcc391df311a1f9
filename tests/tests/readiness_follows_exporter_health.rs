//! Readiness follows an exporter's target: while the `flaky` exporter's target is away (its
//! `fail_while` file exists) /health/ready answers 503 naming the stage and the reason, and
//! the records it gets fail as `target_unavailable`; once the target is back, readiness is too.
//! The change is published as `health.status.changed`, which a Redis bus makes observable.

use std::{fs, time::Duration};

use tests::{
    assert_reconciled, json, read_stream, redis_url, send_json, stage, stream_key, totals,
    wait_until, Host, RedisServer, Value,
};

/// How long a change of a component's health may take to show (checks run every 200 ms).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

fn pipeline(events: &str) -> String {
    format!(
        r#"
plugins:
  paths: ["{{{{plugins}}}}", "{{{{fixtures}}}}/libflaky_exporter.so"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  out:
    plugin: flaky
    inputs: [in]
    config: {{ fail_while: "{{{{dir}}}}/target-down" }}
monitoring:
  mode: direct
  window: 300ms
  admin: {{ listen: "127.0.0.1:0" }}
  health: {{ interval: 200ms, timeout: 1s }}
  events: {events}
"#
    )
}

fn messages(from: u64, to: u64) -> Vec<Value> {
    (from..to).map(|i| json!({ "n": i })).collect()
}

fn component<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["component"] == name))
        .unwrap_or_else(|| panic!("no component {name}: {health:#}"))
}

fn wait_ready(host: &Host, ready: bool) -> Value {
    let (status, what) = if ready {
        (200, "/health/ready answers 200")
    } else {
        (503, "/health/ready answers 503")
    };
    host.wait_for_answer("/health/ready", HEALTH_TIMEOUT, what, |r| {
        r.status == status
    })
    .json()
}

/// Makes the target go away, checks the host says so, and brings it back.
fn target_away_then_back(host: &Host, send_while_away: u64) {
    let marker = host.path("target-down");
    let ready = wait_ready(host, true);
    assert_eq!(ready["ready"], true, "{ready:#}");
    assert_eq!(component(&ready, "stage/out")["status"], "healthy");

    fs::write(&marker, b"").expect("cannot create the marker file");
    if send_while_away > 0 {
        send_json(&host.endpoint, &messages(0, send_while_away));
    }
    let unready = wait_ready(host, false);
    let reason = format!("target unavailable: {} exists", marker.display());
    assert_eq!(unready["ready"], false, "{unready:#}");
    let reasons: Vec<&str> = unready["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| r.as_str().expect("reasons are text"))
        .collect();
    assert_eq!(reasons.len(), 1, "{unready:#}");
    assert!(
        reasons[0].contains("stage/out") && reasons[0].contains(&reason),
        "the reason should name the stage and why: {unready:#}"
    );
    let out = component(&unready, "stage/out");
    assert_eq!(out["status"], "unhealthy", "{unready:#}");
    assert_eq!(out["kind"], "exporter", "{unready:#}");
    assert_eq!(out["reason"], reason.as_str(), "{unready:#}");
    assert_eq!(component(&unready, "source/in")["status"], "healthy");
    // Alive all the same.
    let live = host.get("/health/live");
    assert_eq!(live.status, 200, "{live:#?}");
    assert_eq!(live.json()["status"], "unhealthy", "{live:#?}");
    let m = host.metrics();
    assert_eq!(m.value("host_ready", &[]), 0.0);
    assert_eq!(
        m.value(
            "host_component_health_status",
            &[("component", "stage/out"), ("status", "unhealthy")]
        ),
        1.0
    );

    if send_while_away > 0 {
        // Everything sent meanwhile failed at the exporter, under the stage's error type.
        let api = host.wait_settled(send_while_away);
        assert_eq!(api["pipeline"]["failed"], send_while_away, "{api:#}");
        assert_eq!(
            api["pipeline"]["failed_by_type"],
            json!({ "target_unavailable": send_while_away }),
            "{api:#}"
        );
        assert_eq!(
            stage(&api, "out")["errors_by_type"],
            json!({ "target_unavailable": send_while_away }),
            "{api:#}"
        );
    }

    fs::remove_file(&marker).expect("cannot remove the marker file");
    let ready = wait_ready(host, true);
    assert_eq!(ready["reasons"], json!([]), "{ready:#}");
    assert_eq!(component(&ready, "stage/out")["status"], "healthy");
    assert_eq!(host.metrics().value("host_ready", &[]), 1.0);
}

#[test]
fn ready_turns_503_while_the_target_is_away_and_200_once_it_is_back() {
    let mut host = Host::start(&pipeline("{}"));
    let away = 20;
    target_away_then_back(&host, away);

    // Records sent now are exported again.
    let back = 10;
    send_json(&host.endpoint, &messages(away, away + back));
    let api = host.wait_settled(away + back);
    assert_eq!(api["pipeline"]["completed"], back, "{api:#}");
    assert_eq!(wait_ready(&host, true)["ready"], true);

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(
        totals(&summary),
        (away + back, back, 0, away),
        "{summary:#}"
    );
    let out = stage(&summary, "out");
    assert_eq!(out["records_in"], away + back, "{summary:#}");
    assert_eq!(out["records_out"], back, "{summary:#}");
    assert_eq!(out["records_failed"], away, "{summary:#}");
}

#[test]
fn health_changes_are_published_as_events() {
    let redis = RedisServer::start();
    let events = format!("{{ bus: redis, redis_url: \"{}\" }}", redis_url(redis.port));
    let mut host = Host::start(&pipeline(&events));
    // Events published before the bus reaches Redis would not be written.
    host.wait_for_answer(
        "/health/live",
        HEALTH_TIMEOUT,
        "the Redis event bus is healthy",
        |r| component(&r.json(), "event_bus")["status"] == "healthy",
    );
    target_away_then_back(&host, 5);

    let marker = host.path("target-down").display().to_string();
    let mut conn = redis.connect();
    let key = stream_key("health.status.changed");
    let mut changes: Vec<Value> = Vec::new();
    let seen = wait_until(HEALTH_TIMEOUT, || {
        changes = read_stream(&mut conn, &key)
            .iter()
            .inspect(|e| assert_eq!(e.field("type"), "health.status.changed", "{e:?}"))
            .map(|e| e.payload())
            .filter(|p| p["component"] == "stage/out")
            .collect();
        changes.len() >= 2 && changes.last().is_some_and(|c| c["to"] == "healthy")
    });
    assert!(
        seen,
        "stage/out's changes did not reach {key}: {changes:#?}"
    );
    // The target went away once and came back once. (Checks run on a timer and on demand,
    // so the stream is only required to tell a consistent story from the first change to
    // the last.)
    assert_eq!(
        changes[0],
        json!({
            "component": "stage/out", "from": "healthy", "to": "unhealthy",
            "reason": format!("target unavailable: {marker} exists")
        }),
        "{changes:#?}"
    );
    for pair in changes.windows(2) {
        assert_eq!(pair[0]["to"], pair[1]["from"], "{changes:#?}");
    }
    let last = changes.last().expect("two changes at least");
    assert_eq!(last["to"], "healthy", "{changes:#?}");
    assert_eq!(last["reason"], "", "{changes:#?}");
    // Every check is published too; some of them saw the target away.
    let checks = read_stream(&mut conn, &stream_key("health.check.completed"));
    assert!(
        checks
            .iter()
            .map(|e| e.payload())
            .any(|p| p["component"] == "stage/out" && p["status"] == "unhealthy"),
        "no unhealthy check of stage/out among {} entries",
        checks.len()
    );

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (5, 0, 0, 5), "{summary:#}");
}
