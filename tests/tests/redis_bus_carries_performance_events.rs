//! `event_driven` mode with the Redis bus, against a real redis-server: every stage call is
//! written to the documented streams (`plugin_host:events:<type>`, fields `type`, `instance`,
//! `timestamp_ns`, `context_id`, `payload`), the calls there add up to the host's own totals,
//! the pipeline's start and stop are there, and the local metrics are as complete as in
//! `direct` mode.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tests::{
    assert_reconciled, json, read_stream, redis_url, send_json, stage, stream_key, totals,
    wait_for_lines, Host, RedisServer, StreamEntry, Value,
};

const LEVELS: [&str; 4] = ["info", "debug", "warn", "error"];

fn pipeline(mode: &str, events: &str) -> String {
    format!(
        r#"
plugins:
  paths: ["{{{{plugins}}}}", "{{{{fixtures}}}}/libpanicky_plugin.so"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  process:
    plugin: rules
    inputs: [in]
    config: {{ drop: [{{ field: level, equals: debug }}] }}
  check: {{ plugin: failing, inputs: [process] }}
  export:
    plugin: jsonl
    inputs: [check]
    config: {{ path: "{{{{dir}}}}/out.jsonl" }}
monitoring:
  mode: {mode}
  type_field: level
  admin: {{ listen: "127.0.0.1:0" }}
  health: {{ interval: 200ms }}
  events: {events}
"#
    )
}

/// Message `i`: levels cycle info, debug, warn, error; every 5th is `bad`.
fn messages(n: u64) -> Vec<Value> {
    (0..n)
        .map(|i| json!({ "n": i, "level": LEVELS[(i % 4) as usize], "bad": i % 5 == 0 }))
        .collect()
}

/// (completed, filtered, failed) for [`messages`]`(n)`.
fn expected(n: u64) -> (u64, u64, u64) {
    let filtered = (0..n).filter(|i| i % 4 == 1).count() as u64;
    let failed = (0..n).filter(|i| i % 4 != 1 && i % 5 == 0).count() as u64;
    (n - filtered - failed, filtered, failed)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn number(entry: &StreamEntry, field: &str) -> u64 {
    entry
        .field(field)
        .parse()
        .unwrap_or_else(|e| panic!("{field} is not a number ({e}): {entry:?}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no count `{key}` in {v}"))
}

/// Runs the pipeline in `mode` over [`messages`]`(n)` and returns its summary.
fn run(host: &mut Host, n: u64) -> Value {
    let (completed, _, _) = expected(n);
    send_json(&host.endpoint, &messages(n));
    wait_for_lines(&host.path("out.jsonl"), completed as usize);
    host.wait_settled(n);
    host.stop()
}

#[test]
fn stage_calls_are_written_to_redis_streams() {
    let redis = RedisServer::start();
    let started_at = now_ns();
    let events = format!("{{ bus: redis, redis_url: \"{}\" }}", redis_url(redis.port));
    let mut host = Host::start(&pipeline("event_driven", &events));
    let pid = host.pid();
    host.wait_for_answer(
        "/health/live",
        Duration::from_secs(10),
        "the Redis event bus is healthy",
        |r| {
            r.json()["components"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["component"] == "event_bus" && c["status"] == "healthy")
            })
        },
    );
    let n = 40;
    let (completed, filtered, failed) = expected(n);
    send_json(&host.endpoint, &messages(n));
    wait_for_lines(&host.path("out.jsonl"), completed as usize);
    host.wait_settled(n);
    let m = host.metrics();
    assert_eq!(
        m.value("host_monitoring_mode_info", &[("mode", "event_driven")]),
        1.0
    );
    assert_eq!(m.value("host_event_bus_up", &[("bus", "redis")]), 1.0);
    assert_eq!(
        m.value("host_events_publish_failed_total", &[("bus", "redis")]),
        0.0
    );
    assert_eq!(
        m.value("host_events_dropped_total", &[("bus", "redis")]),
        0.0
    );
    let summary = host.stop();
    let stopped_at = now_ns();

    // The host's own view, fed by the bus: complete.
    assert_eq!(summary["mode"], "event_driven");
    assert_reconciled(&summary);
    assert_eq!(
        totals(&summary),
        (n, completed, filtered, failed),
        "{summary:#}"
    );
    assert_eq!(
        summary["pipeline"]["failed_by_type"],
        json!({ "validation": failed })
    );

    let mut conn = redis.connect();
    let read = |conn: &mut redis::Connection, kind: &str| {
        let entries = read_stream(conn, &stream_key(kind));
        for e in &entries {
            assert_eq!(e.field("type"), kind, "{e:?}");
            assert!(
                e.field("instance").ends_with(&format!("-{pid}")),
                "instance is <hostname>-<pid>: {e:?}"
            );
            let at = number(e, "timestamp_ns");
            assert!(
                (started_at..=stopped_at).contains(&at),
                "timestamp_ns {at} is not between {started_at} and {stopped_at}: {e:?}"
            );
            number(e, "context_id");
            assert!(e.payload().is_object(), "{e:?}");
        }
        entries
    };

    // performance.operation.complete: one per call that returned, adding up per stage.
    let complete = read(&mut conn, "performance.operation.complete");
    let mut per_stage: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut call_contexts: BTreeMap<u64, String> = BTreeMap::new();
    for e in &complete {
        let p = e.payload();
        assert_eq!(p["operation"], "process", "{e:?}");
        u(&p, "duration_ns");
        let name = p["stage"].as_str().expect("stage").to_owned();
        let s = per_stage.entry(name.clone()).or_default();
        s.0 += 1;
        s.1 += u(&p, "records_in");
        s.2 += u(&p, "records_out");
        let ctx = number(e, "context_id");
        assert!(ctx > 0, "a call has a context id: {e:?}");
        assert!(
            call_contexts.insert(ctx, name).is_none(),
            "context id reused: {e:?}"
        );
    }
    for name in ["process", "check", "export"] {
        let s = stage(&summary, name);
        let from_redis = per_stage.get(name).copied().unwrap_or_default();
        assert_eq!(
            from_redis,
            (u(s, "calls"), u(s, "records_in"), u(s, "records_out")),
            "{name}: (calls, records_in, records_out) in Redis vs the summary {s:#}"
        );
    }
    assert_eq!(per_stage["process"].1, n);
    assert_eq!(per_stage["check"].1, n - filtered);
    assert_eq!(per_stage["export"].1, completed);

    // performance.operation.failed: one per failed record, tied to its call.
    let record_failures = read(&mut conn, "performance.operation.failed");
    assert_eq!(record_failures.len() as u64, failed);
    for e in &record_failures {
        let p = e.payload();
        assert_eq!(p["stage"], "check", "{e:?}");
        assert_eq!(p["operation"], "process.record", "{e:?}");
        assert_eq!(p["error_type"], "validation", "{e:?}");
        assert_eq!(p["records"], 1, "{e:?}");
        let ctx = number(e, "context_id");
        assert_eq!(
            call_contexts.get(&ctx).map(String::as_str),
            Some("check"),
            "{e:?}"
        );
    }

    // Each call's phases, paired with it by context id.
    for kind in ["performance.phase.start", "performance.phase.end"] {
        let phases = read(&mut conn, kind);
        let contexts: BTreeSet<u64> = phases.iter().map(|e| number(e, "context_id")).collect();
        assert_eq!(phases.len(), contexts.len(), "{kind}: context ids repeat");
        assert_eq!(
            contexts,
            call_contexts.keys().copied().collect::<BTreeSet<_>>(),
            "{kind}"
        );
        for e in &phases {
            let p = e.payload();
            assert_eq!(p["stage"], call_contexts[&number(e, "context_id")].as_str());
            assert_eq!(p["operation"], "process");
        }
    }

    // The pipeline's life.
    for kind in ["pipeline.started", "pipeline.stopped"] {
        let entries = read(&mut conn, kind);
        assert_eq!(entries.len(), 1, "{kind}: {entries:?}");
        assert_eq!(
            entries[0].payload(),
            json!({ "stages": 3, "sources": 1 }),
            "{kind}"
        );
        assert_eq!(entries[0].field("context_id"), "0");
    }
    let started = &read(&mut conn, "pipeline.started")[0];
    let stopped = &read(&mut conn, "pipeline.stopped")[0];
    assert_eq!(started.field("instance"), stopped.field("instance"));
    assert!(number(started, "timestamp_ns") <= number(stopped, "timestamp_ns"));
}

#[test]
fn event_driven_metrics_match_direct_metrics() {
    let n = 40;
    let redis = RedisServer::start();
    let events = format!("{{ bus: redis, redis_url: \"{}\" }}", redis_url(redis.port));
    let mut event_driven = Host::start(&pipeline("event_driven", &events));
    let mut direct = Host::start(&pipeline("direct", "{ bus: memory }"));
    let by_events = run(&mut event_driven, n);
    let by_calls = run(&mut direct, n);
    assert_eq!(by_events["mode"], "event_driven");
    assert_eq!(by_calls["mode"], "direct");

    assert_reconciled(&by_events);
    assert_eq!(by_events["pipeline"], by_calls["pipeline"]);
    let (completed, filtered, failed) = expected(n);
    assert_eq!(totals(&by_events), (n, completed, filtered, failed));
    // How the source batched the messages may differ between the runs; what each stage did
    // with them may not.
    for name in ["process", "check", "export"] {
        let (a, b) = (stage(&by_events, name), stage(&by_calls, name));
        for key in [
            "records_in",
            "records_out",
            "records_failed",
            "errors",
            "errors_by_type",
            "data_types",
        ] {
            assert_eq!(
                a[key], b[key],
                "{name}.{key}: event_driven {a:#} vs direct {b:#}"
            );
        }
        // One latency observation per call, in either mode.
        assert_eq!(a["latency_ms"]["count"], a["calls"], "{name}: {a:#}");
        assert!(u(a, "calls") >= 1, "{name}: {a:#}");
    }
    let check = stage(&by_events, "check");
    assert_eq!(check["errors_by_type"], json!({ "validation": failed }));
    assert_eq!(
        stage(&by_events, "export")["end_to_end_ms"]["count"],
        completed
    );
}
