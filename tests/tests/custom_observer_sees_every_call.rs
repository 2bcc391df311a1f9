//! `monitoring.mode: custom`: an observer plugin (the `audit-observer` fixture, built against
//! plugin-api alone) receives the outcome of every stage call, and what it receives adds up
//! to what the monitor counted, stage by stage; a slow observer never slows a stage: the
//! host queues the outcomes (bounded by `monitoring.custom.queue_capacity`) and counts what
//! it has to drop, on /metrics and /api/metrics.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use tests::{
    assert_reconciled, json, pyzmq_push, read_json_lines, send_json, stage, totals, Host, Value,
};

/// The audit file's report lines, and the count its `flush` marker (the last line) gives.
fn audit_reports(host: &Host) -> (Vec<Value>, u64) {
    let mut lines = read_json_lines(&host.path("audit.jsonl"));
    let marker = lines
        .pop()
        .unwrap_or_else(|| panic!("the audit file is empty; the host's log:\n{}", host.log()));
    assert_eq!(
        marker["flushed"], true,
        "the observer's flush was not called last (its marker is missing): {marker}"
    );
    assert!(
        lines.iter().all(|l| l.get("flushed").is_none()),
        "flush was called more than once"
    );
    let reported = marker["reports"].as_u64().expect("a count");
    (lines, reported)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn every_call_outcome_reaches_the_observer_and_adds_up_to_the_stage_totals() {
    let mut host = Host::start(
        r#"
plugins:
  paths:
    - "{{plugins}}"
    - "{{fixtures}}/libpanicky_plugin.so"
    - "{{fixtures}}/libaudit_observer.so"
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}", batch_size: 16 }
stages:
  check: { plugin: failing, inputs: [in] }
  boom: { plugin: panicky, inputs: [check] }
  out: { plugin: jsonl, inputs: [boom], config: { path: "{{dir}}/out.jsonl" } }
monitoring:
  mode: custom
  admin: { listen: "127.0.0.1:0" }
  custom:
    plugin: audit
    config: { out: "{{dir}}/audit.jsonl" }
"#,
    );
    let count: u64 = 400;
    // Every 7th record fails one by one in `check` (`validation`); a record with `panic`
    // fails its whole batch in `boom` (`panic`). Records `check` failed never reach `boom`.
    let messages: Vec<Value> = (0..count)
        .map(|i| json!({ "i": i, "bad": i % 7 == 3, "panic": i % 97 == 50 }))
        .collect();
    send_json(&host.endpoint, &messages);
    host.wait_settled(count);

    // While running: both outcomes of the observer's queue are on /metrics, and the
    // observer's own metric (recorded through its host context) is kept under its name.
    let m = host.metrics();
    assert_eq!(
        m.value("host_observer_calls_total", &[("outcome", "dropped")]),
        0.0,
        "a queue of 65536 drops nothing here:\n{}",
        m.text
    );
    assert!(m
        .get("host_observer_calls_total", &[("outcome", "delivered")])
        .is_some());
    assert!(
        m.get("host_plugin_audit_reports_total", &[("stage", "audit")])
            .is_some(),
        "{}",
        m.text
    );

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(summary["mode"], "custom", "{summary:#}");
    let (reports, reported) = audit_reports(&host);
    assert_eq!(reports.len() as u64, reported);
    assert_eq!(
        summary["observer"],
        json!({ "delivered": reported, "dropped": 0 }),
        "{summary:#}"
    );

    // Per stage, what the observer received adds up to what the monitor counted.
    let stage_names: BTreeSet<&str> = reports
        .iter()
        .map(|r| r["stage"].as_str().expect("a stage name"))
        .collect();
    assert_eq!(
        stage_names,
        BTreeSet::from(["boom", "check", "out"]),
        "reports for other stages than the pipeline's"
    );
    for name in ["check", "boom", "out"] {
        let counted = stage(&summary, name);
        let of_stage: Vec<&Value> = reports.iter().filter(|r| r["stage"] == name).collect();
        let calls: Vec<&Value> = of_stage
            .iter()
            .copied()
            .filter(|r| r["operation"] == "process")
            .collect();
        let sum = |key: &str| calls.iter().map(|r| n(&r[key])).sum::<u64>();
        assert_eq!(calls.len() as u64, n(&counted["calls"]), "{name}: calls");
        assert_eq!(sum("records_in"), n(&counted["records_in"]), "{name}");
        assert_eq!(sum("records_out"), n(&counted["records_out"]), "{name}");
        assert_eq!(
            sum("records_failed"),
            n(&counted["records_failed"]),
            "{name}"
        );
        let failed_calls = calls.iter().filter(|r| r["error_type"] != "").count() as u64;
        assert_eq!(failed_calls, n(&counted["errors"]), "{name}: failed calls");
        assert!(
            calls.iter().all(|r| n(&r["duration_ns"]) > 0),
            "{name}: every call is timed"
        );

        // Errors by type, as the monitor counts them: a failed call counts once, a record
        // failed one by one counts once per record.
        let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
        for r in &of_stage {
            let error_type = r["error_type"].as_str().expect("a string");
            match r["operation"].as_str() {
                Some("process") if !error_type.is_empty() => {
                    *by_type.entry(error_type.to_owned()).or_default() += 1
                }
                Some("process") => {}
                Some("process.record") => {
                    assert!(!error_type.is_empty(), "{r}");
                    assert_eq!((n(&r["records_in"]), n(&r["records_out"])), (0, 0), "{r}");
                    *by_type.entry(error_type.to_owned()).or_default() += n(&r["records_failed"]);
                }
                other => panic!("unexpected operation {other:?}: {r}"),
            }
        }
        let counted_by_type: BTreeMap<String, u64> = counted["errors_by_type"]
            .as_object()
            .expect("errors_by_type")
            .iter()
            .map(|(k, v)| (k.clone(), n(v)))
            .collect();
        assert_eq!(by_type, counted_by_type, "{name}: errors by type");
    }

    // The failures were real: one by one in `check`, whole batches in `boom`.
    let bad = (0..count).filter(|i| i % 7 == 3).count() as u64;
    assert_eq!(
        n(&stage(&summary, "check")["errors_by_type"]["validation"]),
        bad
    );
    assert!(n(&stage(&summary, "boom")["errors"]) >= 1, "{summary:#}");
    let (received, completed, _, failed) = totals(&summary);
    assert_eq!(received, count);
    assert_eq!(completed + failed, count, "{summary:#}");
}

#[test]
fn records_settled_after_their_call_reach_the_observer_as_the_monitor_counts_them() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{fixtures}}/libdeferred_exporter.so", "{{fixtures}}/libaudit_observer.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  out:
    plugin: deferred
    inputs: [in]
    config:
      out: "{{dir}}/out.jsonl"
      down_while: "{{dir}}/down"
      reject_while: "{{dir}}/reject"
      sending: { batch_size: 10, max_delay: 20ms }
monitoring:
  mode: custom
  admin: { listen: "127.0.0.1:0" }
  custom:
    plugin: audit
    config: { out: "{{dir}}/audit.jsonl" }
"#,
    );
    // 20 delivered by the exporter's own thread, then 15 its target rejects.
    let messages = |from: u64, to: u64| (from..to).map(|n| json!({ "n": n })).collect::<Vec<_>>();
    send_json(&host.endpoint, &messages(0, 20));
    host.wait_settled(20);
    std::fs::write(host.path("reject"), b"").unwrap();
    send_json(&host.endpoint, &messages(20, 35));
    host.wait_settled(35);

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (35, 20, 0, 15), "{summary:#}");
    let (reports, _) = audit_reports(&host);
    let settled: Vec<&Value> = reports
        .iter()
        .filter(|r| r["operation"] == "settle")
        .collect();
    let sum = |key: &str| settled.iter().map(|r| n(&r[key])).sum::<u64>();
    assert_eq!(sum("records_out"), 20, "{settled:#?}");
    assert_eq!(sum("records_failed"), 15, "{settled:#?}");
    assert_eq!(sum("records_in"), 35, "{settled:#?}");
    for r in &settled {
        assert_eq!(r["stage"], "out", "{r}");
        let expected = if n(&r["records_failed"]) > 0 {
            "rejected"
        } else {
            ""
        };
        assert_eq!(r["error_type"], expected, "{r}");
    }
    // The same as the monitor's count, which the calls themselves do not show: the stage
    // took every record for later and returned.
    let counted = stage(&summary, "out");
    assert_eq!(n(&counted["records_delivered_later"]), 20, "{summary:#}");
    assert_eq!(
        counted["errors_by_type"],
        json!({ "rejected": 15 }),
        "{summary:#}"
    );
    let calls: Vec<&Value> = reports
        .iter()
        .filter(|r| r["operation"] == "process")
        .collect();
    assert!(calls
        .iter()
        .all(|r| n(&r["records_failed"]) == 0 && n(&r["records_out"]) == 0));
    // Records delivered later are timed end to end too, each once.
    assert_eq!(n(&counted["end_to_end_ms"]["count"]), 20, "{summary:#}");
}

#[test]
fn a_slow_observer_never_slows_a_stage_and_its_drops_are_counted() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libaudit_observer.so"]
sources:
  # One message per call: 200 messages are 200 calls of each stage.
  in: { type: zmq, socket: pull, bind: "{{endpoint}}", batch_size: 1 }
stages:
  pass: { plugin: audit-passthrough, inputs: [in] }
  out: { plugin: jsonl, inputs: [pass], config: { path: "{{dir}}/out.jsonl" } }
monitoring:
  mode: custom
  admin: { listen: "127.0.0.1:0" }
  custom:
    plugin: audit
    # A second in every observe call, and room for 4 outcomes: an observer the stages
    # waited for would take 80 s or more for these 400 outcomes.
    config: { out: "{{dir}}/audit.jsonl", delay_ms: 1000 }
    queue_capacity: 4
"#,
    );
    let count: u64 = 200;
    let started = Instant::now();
    pyzmq_push(&host.endpoint, count as usize);
    // Hang detection only: far above what the pipeline needs, far below what it would take
    // if the stages waited for the observer.
    let limit = Duration::from_secs(20);
    host.wait_for_answer(
        "/api/metrics",
        limit.saturating_sub(started.elapsed()),
        "200 messages settled while the observer sleeps",
        |r| {
            let p = &r.json()["pipeline"];
            r.status == 200 && p["received"] == count && p["in_flight"] == 0
        },
    );

    let m = host.metrics();
    let dropped = m.value("host_observer_calls_total", &[("outcome", "dropped")]);
    assert!(dropped > 0.0, "nothing dropped:\n{}", m.text);
    assert_eq!(m.family_type("host_observer_calls_total"), Some("counter"));
    let api = host.get_json("/api/metrics");
    assert!(n(&api["observer"]["dropped"]) > 0, "{api:#}");

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (count, count, 0, 0), "{summary:#}");
    // Every outcome was handed to the observer or counted as dropped: none went missing.
    let calls = n(&stage(&summary, "pass")["calls"]) + n(&stage(&summary, "out")["calls"]);
    assert_eq!(calls, 2 * count, "{summary:#}");
    let observer = &summary["observer"];
    assert_eq!(
        n(&observer["delivered"]) + n(&observer["dropped"]),
        calls,
        "{summary:#}"
    );
    assert!(n(&observer["dropped"]) as f64 >= dropped, "{summary:#}");
    // What it was handed, it wrote.
    let (reports, reported) = audit_reports(&host);
    assert_eq!(reports.len() as u64, reported);
    assert_eq!(reported, n(&observer["delivered"]), "{summary:#}");
}

#[test]
fn at_shutdown_a_slow_observer_is_flushed_and_what_it_could_not_take_is_counted() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libaudit_observer.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}", batch_size: 1 }
stages:
  pass: { plugin: audit-passthrough, inputs: [in] }
  out: { plugin: "null", inputs: [pass] }
monitoring:
  mode: custom
  admin: { listen: "127.0.0.1:0" }
  custom:
    plugin: audit
    # The default queue (65536) takes all 6000 outcomes; the observer takes at most 1024 of
    # them per call of 1.5 s: at shutdown, seconds of them are still queued.
    config: { out: "{{dir}}/audit.jsonl", delay_ms: 1500 }
"#,
    );
    let count: u64 = 3000;
    pyzmq_push(&host.endpoint, count as usize);
    host.wait_settled(count);
    let summary = host.stop();
    assert_reconciled(&summary);
    let calls = n(&stage(&summary, "pass")["calls"]) + n(&stage(&summary, "out")["calls"]);
    assert_eq!(calls, 2 * count, "{summary:#}");
    // The observer's `flush` was called (its marker is the last line), and every outcome was
    // handed to it or counted as dropped: none was lost without a count.
    let (reports, reported) = audit_reports(&host);
    assert_eq!(reports.len() as u64, reported);
    let observer = &summary["observer"];
    assert_eq!(reported, n(&observer["delivered"]), "{summary:#}");
    assert_eq!(
        n(&observer["delivered"]) + n(&observer["dropped"]),
        calls,
        "{summary:#}\nthe host's log:\n{}",
        host.log()
    );
}

#[test]
fn an_observer_stuck_in_a_call_does_not_hold_the_host_at_shutdown() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libaudit_observer.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}", batch_size: 1 }
stages:
  pass: { plugin: audit-passthrough, inputs: [in] }
  out: { plugin: "null", inputs: [pass] }
monitoring:
  mode: custom
  admin: { listen: "127.0.0.1:0" }
  custom:
    plugin: audit
    # An hour in its first call: as good as stuck.
    config: { out: "{{dir}}/audit.jsonl", delay_ms: 3600000 }
"#,
    );
    let count: u64 = 20;
    send_json(
        &host.endpoint,
        &(0..count).map(|i| json!({ "i": i })).collect::<Vec<_>>(),
    );
    host.wait_settled(count);
    // Exits (within the harness's stop timeout) although the observer never returns.
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (count, count, 0, 0), "{summary:#}");
    // Nothing was handed back from the stuck call, and all of it counts as dropped.
    assert_eq!(
        summary["observer"],
        json!({ "delivered": 0, "dropped": 2 * count }),
        "{summary:#}"
    );
    assert!(
        host.log().contains("leaving it behind"),
        "the host does not say it left the observer: {}",
        host.log()
    );
    // Left behind, it was not flushed.
    assert!(tests::read_lines(&host.path("audit.jsonl")).is_empty());
}
