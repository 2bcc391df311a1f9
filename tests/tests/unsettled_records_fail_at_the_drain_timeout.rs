//! Shutdown while the pipeline still holds messages: the host waits `runtime.drain_timeout`
//! for them, then exits 0 promptly, and the summary counts every message it still held as
//! failed with error type `drain_timeout`: never silently lost, never counted as filtered or
//! delivered. Whether an exporter's sending queue holds them (its target is down), they wait
//! in the host's queues in front of a slow stage, or they wait for a retry a stage asked for.
//! And the other side of it: records an exporter holds for a target that works are sent at
//! the drain (its flush), all delivered, before the timeout.

use std::{
    fs,
    time::{Duration, Instant},
};

use tests::{
    assert_reconciled, json, pyzmq_push, read_lines, send_json, stage, totals, wait_until, Host,
    Value, DELIVERY_TIMEOUT,
};

/// Longer than the drain timeout (1 s) with room for a slow machine; shorter than the
/// default drain timeout (30 s) and than the host's 5 s grace for stages that do not stop.
const EXIT_WITHIN: Duration = Duration::from_secs(4);

/// The `deferred` exporter (its target down while `{{dir}}/down` exists) behind `upstream`
/// stages, with a drain timeout of 1 s.
fn pipeline(upstream: &str, exporter_input: &str, sending: &str, runtime: &str) -> String {
    format!(
        r#"
plugins:
  paths: ["{{{{fixtures}}}}/libdeferred_exporter.so", "{{{{fixtures}}}}/libpanicky_plugin.so"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}", batch_size: 10 }}
stages:{upstream}
  out:
    plugin: deferred
    inputs: [{exporter_input}]
    config:
      out: "{{{{dir}}}}/out.jsonl"
      down_while: "{{{{dir}}}}/down"
      sending: {sending}
runtime: {{ drain_timeout: 1s, {runtime} }}
"#
    )
}

fn numbered(count: u64) -> Vec<Value> {
    (0..count).map(|n| json!({ "n": n })).collect()
}

fn wait_for_metrics(host: &Host, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    host.wait_for_answer("/api/metrics", DELIVERY_TIMEOUT, what, |r| {
        r.status == 200 && condition(&r.json())
    })
    .json()
}

/// SIGTERM; checks that the host exits 0 soon after the drain timeout with no stage left
/// behind, and that its summary reconciles; returns the summary.
fn stop_promptly(host: &mut Host) -> Value {
    let asked = Instant::now();
    let summary = host.stop();
    let took = asked.elapsed();
    println!("exited {took:?} after SIGTERM");
    let log = host.log();
    assert!(took < EXIT_WITHIN, "the host took {took:?} to exit:\n{log}");
    assert!(log.contains("drain timeout"), "{log}");
    assert!(!log.contains("did not stop"), "{log}");
    assert_reconciled(&summary);
    summary
}

fn assert_all_failed_as_drain_timeout(summary: &Value, count: u64) {
    assert_eq!(totals(summary), (count, 0, 0, count), "{summary:#}");
    assert_eq!(
        summary["pipeline"]["failed_by_type"],
        json!({ "drain_timeout": count }),
        "{summary:#}"
    );
}

#[test]
fn records_held_by_a_sending_queue_fail_as_drain_timeout() {
    let mut host = Host::start(&pipeline(
        "",
        "in",
        "{ max_delay: 20ms, retry: { initial_interval: 20ms, max_interval: 100ms } }",
        "",
    ));
    fs::write(host.path("down"), b"").unwrap();
    let count = 50;
    send_json(&host.endpoint, &numbered(count));
    wait_for_metrics(&host, "every message held by the exporter", |m| {
        m["pipeline"]["in_flight"] == count && stage(m, "out")["records_deferred"] == count
    });

    let summary = stop_promptly(&mut host);
    assert_all_failed_as_drain_timeout(&summary, count);
    assert!(read_lines(&host.path("out.jsonl")).is_empty());
}

#[test]
fn records_a_working_target_is_waiting_to_be_sent_go_out_at_the_drain() {
    // A batch waits up to 30 s to fill: without the drain's flush these 50 records would
    // still be queued at the 1 s drain timeout.
    let mut host = Host::start(&pipeline("", "in", "{ max_delay: 30s }", ""));
    let count = 50;
    send_json(&host.endpoint, &numbered(count));
    wait_for_metrics(&host, "every message held by the exporter", |m| {
        m["pipeline"]["in_flight"] == count && stage(m, "out")["records_deferred"] == count
    });
    assert!(read_lines(&host.path("out.jsonl")).is_empty());

    let asked = Instant::now();
    let summary = host.stop();
    let log = host.log();
    assert!(asked.elapsed() < EXIT_WITHIN, "{log}");
    assert!(!log.contains("drain timeout"), "{log}");
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (count, count, 0, 0), "{summary:#}");
    assert_eq!(
        stage(&summary, "out")["records_delivered_later"],
        count,
        "{summary:#}"
    );
    assert_eq!(read_lines(&host.path("out.jsonl")).len() as u64, count);
}

#[test]
fn records_queued_in_front_of_a_slow_stage_fail_as_drain_timeout() {
    // `slow` passes a batch of 10 every 200 ms to the exporter, whose target is down: at the
    // drain timeout most messages still wait in the host's queue in front of `slow`, some are
    // in its hands, the rest are held by the exporter.
    let mut host = Host::start(&pipeline(
        "\n  slow: { plugin: slow, inputs: [in], config: { delay_ms: 200 } }",
        "slow",
        "{ max_delay: 20ms }",
        "queue_capacity: 100",
    ));
    fs::write(host.path("down"), b"").unwrap();
    let count = 300;
    send_json(&host.endpoint, &numbered(count));
    wait_for_metrics(&host, "every message admitted", |m| {
        m["pipeline"]["received"] == count && m["pipeline"]["in_flight"] == count
    });

    let summary = stop_promptly(&mut host);
    assert_all_failed_as_drain_timeout(&summary, count);
    let held = stage(&summary, "out")["records_deferred"].as_u64().unwrap();
    assert!(held > 0 && held < count, "{summary:#}");
}

#[test]
fn records_waiting_for_a_retry_fail_as_drain_timeout() {
    // `hand-back` fails multiples of 3 at once and hands the others back to be retried a
    // minute later: at SIGTERM they wait in the host for their retry.
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{fixtures}}/libdeferred_exporter.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  back:
    plugin: hand-back
    inputs: [in]
    config: { out: "{{dir}}/back.jsonl", retry_after_ms: 60000 }
runtime:
  drain_timeout: 1s
"#,
    );
    send_json(&host.endpoint, &numbered(30));
    // Failures count by type at once; the messages when their source batch settles.
    wait_for_metrics(&host, "10 failed, 20 handed back", |m| {
        let handed_back = m["plugin_metrics"].as_array().and_then(|p| {
            p.iter()
                .find(|p| p["name"] == "handed_back")
                .map(|p| p["value"].clone())
        });
        m["pipeline"]["failed_by_type"]["odd_one"] == 10 && handed_back == Some(json!(20.0))
    });

    let summary = stop_promptly(&mut host);
    assert_eq!(totals(&summary), (30, 0, 0, 30), "{summary:#}");
    assert_eq!(
        summary["pipeline"]["failed_by_type"],
        json!({ "odd_one": 10, "drain_timeout": 20 }),
        "{summary:#}"
    );
    assert!(read_lines(&host.path("back.jsonl")).is_empty());
}

#[test]
fn records_queued_behind_a_full_sending_queue_fail_as_drain_timeout() {
    // The exporter takes 100 records and sends 100 at a time: the rest wait in the host's
    // queue in front of it (the exporter is not ready for more) and at the source.
    let mut host = Host::start(&pipeline(
        "",
        "in",
        "{ batch_size: 100, queue_size: 100, max_delay: 20ms, \
           retry: { initial_interval: 20ms, max_interval: 100ms } }",
        "queue_capacity: 4",
    ));
    fs::write(host.path("down"), b"").unwrap();
    pyzmq_push(&host.endpoint, 3000);
    // The source stops once the queues are full: wait until it has.
    let mut last = (0, Instant::now());
    let mut api = Value::Null;
    let still = wait_until(DELIVERY_TIMEOUT, || {
        api = host.get_json("/api/metrics");
        let received = api["pipeline"]["received"].as_u64().unwrap_or(0);
        if received != last.0 {
            last = (received, Instant::now());
        }
        // More than the exporter holds (its queue and the batch it is sending): the rest
        // waits in the host's queue in front of it.
        received > 200 && last.1.elapsed() > Duration::from_millis(500)
    });
    assert!(still, "the source never stopped: {api:#}");
    let received = last.0;
    assert_eq!(api["pipeline"]["in_flight"], received, "{api:#}");

    let summary = stop_promptly(&mut host);
    // Whole messages the source had read from its socket but could not hand on count too:
    // received, and failed as `drain_timeout` (what the kernel still held was never read).
    let (total, completed, filtered, failed) = totals(&summary);
    assert!(total >= received && total <= 3000, "{summary:#}");
    assert_eq!((completed, filtered, failed), (0, 0, total), "{summary:#}");
    assert_eq!(
        summary["pipeline"]["failed_by_type"],
        json!({ "drain_timeout": total }),
        "{summary:#}"
    );
}
