//! A dead target behind an exporter that holds records (the SDK's sending queue) slows
//! ingestion instead of growing memory: the held records count against
//! `runtime.max_in_flight`, the source stops admitting more, and the backlog waits at the
//! sender. Once the target is back, everything the host accepted is delivered, once.

use std::{
    fs,
    time::{Duration, Instant},
};

use tests::{
    assert_reconciled, host_command, proc_status, read_json_lines, totals, wait_for_lines,
    Background, Host, PYTHON,
};

const MAX_IN_FLIGHT: u64 = 2000;

#[test]
fn a_dead_target_holds_back_ingestion_and_everything_arrives_once_it_is_back() {
    let pipeline = format!(
        r#"
plugins:
  paths: ["{{{{fixtures}}}}/libdeferred_exporter.so"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}", batch_size: 100 }}
stages:
  out:
    plugin: deferred
    inputs: [in]
    config:
      out: "{{{{dir}}}}/out.jsonl"
      down_while: "{{{{dir}}}}/down"
      sending:
        batch_size: 500
        max_delay: 20ms
        queue_size: 1000
        retry: {{ initial_interval: 20ms, max_interval: 100ms, max_elapsed: 0s }}
runtime:
  max_in_flight: {MAX_IN_FLIGHT}
"#
    );
    let mut host = Host::start(&pipeline);
    fs::write(host.path("down"), b"").unwrap();
    let rss0 = proc_status(host.pid(), "VmRSS");

    let backlog: u64 = 300_000;
    let mut publish = host_command();
    publish.args(["publish", "--to", &host.endpoint, "--count"]);
    publish.arg(backlog.to_string());
    let mut publisher = Background::spawn(publish);

    // Watch the host while the target is dead.
    let watch_for = Duration::from_secs(2);
    let started = Instant::now();
    let (mut max_in_flight, mut received, mut max_rss) = (0, 0, rss0);
    while started.elapsed() < watch_for {
        max_rss = max_rss.max(proc_status(host.pid(), "VmRSS"));
        let p = host.get_json("/api/metrics")["pipeline"].clone();
        max_in_flight = max_in_flight.max(p["in_flight"].as_u64().expect("in_flight"));
        received = p["received"].as_u64().expect("received");
        assert_eq!(p["completed"], 0, "delivered to a dead target: {p:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "target down for {watch_for:?}: at most {max_in_flight} in flight (bound \
         {MAX_IN_FLIGHT}); {received} of {backlog} received; RSS {rss0} -> {max_rss} kB"
    );
    assert!(max_in_flight > 0, "nothing was ever in flight");
    assert!(
        max_in_flight <= MAX_IN_FLIGHT,
        "{max_in_flight} messages in flight, more than runtime.max_in_flight"
    );
    // Nothing settles while the target is dead, so the host admitted no more than the bound.
    assert!(received <= MAX_IN_FLIGHT, "admitted {received} messages");
    assert!(publisher.is_running(), "the sender was never held back");
    // The backlog (about 28 MB of messages) waits at the sender and in the kernel's socket
    // buffers, not in the host (which grew by about 4 MB here, on an AMD EPYC with 2 cores).
    let backlog_kb = backlog * 95 / 1024;
    assert!(
        max_rss - rss0 < backlog_kb / 3,
        "the host grew from {rss0} kB to {max_rss} kB with a backlog of ~{backlog_kb} kB"
    );

    // Back up: the sender finishes, and everything arrives.
    fs::remove_file(host.path("down")).unwrap();
    let out = host.path("out.jsonl");
    wait_for_lines(&out, backlog as usize);
    assert!(publisher.wait().success(), "the sender failed");
    host.wait_settled(backlog);

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (backlog, backlog, 0, 0), "{summary:#}");
    let lines = read_json_lines(&out);
    assert_eq!(lines.len() as u64, backlog);
    // One sender, one connection: in order, each once.
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["record"]["id"], i as u64, "line {}: {line}", i + 1);
    }
}

/// The same with large messages: what is in flight is bounded in bytes too
/// (`runtime.max_in_flight_bytes`), however few messages that is, and a source hands a batch on
/// once it holds 4 MiB of payloads, whatever its `batch_size`.
#[test]
fn large_messages_behind_a_dead_target_are_bounded_in_bytes() {
    const MAX_BYTES: u64 = 8 << 20;
    const SIZE: u64 = 256 * 1024;
    let mut host = Host::start(&format!(
        r#"
plugins:
  paths: ["{{{{fixtures}}}}/libdeferred_exporter.so"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  out:
    plugin: deferred
    inputs: [in]
    config:
      out: "{{{{dir}}}}/out.jsonl"
      down_while: "{{{{dir}}}}/down"
      sending:
        max_delay: 20ms
        retry: {{ initial_interval: 20ms, max_interval: 100ms, max_elapsed: 0s }}
runtime:
  max_in_flight_bytes: {MAX_BYTES}
"#
    ));
    fs::write(host.path("down"), b"").unwrap();
    let rss0 = proc_status(host.pid(), "VmRSS");

    // 400 messages of 256 KiB (100 MiB), far fewer than `max_in_flight` (65536).
    let count: u64 = 400;
    let mut python = std::process::Command::new(PYTHON);
    python.arg("-c").arg(
        r#"
import json, sys, zmq
endpoint, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = zmq.Context()
push = ctx.socket(zmq.PUSH)
push.setsockopt(zmq.LINGER, 60000)  # term() waits until everything is sent
push.connect(endpoint)
for i in range(count):
    text = json.dumps({"i": i, "pad": ""})
    push.send_string(text[:-2] + "x" * (size - len(text)) + '"}')
push.close()
ctx.term()
"#,
    );
    python
        .arg(&host.endpoint)
        .arg(count.to_string())
        .arg(SIZE.to_string());
    let mut sender = Background::spawn(python);

    let started = Instant::now();
    let (mut received, mut max_rss) = (0, rss0);
    while started.elapsed() < Duration::from_secs(2) {
        max_rss = max_rss.max(proc_status(host.pid(), "VmRSS"));
        received = host.get_json("/api/metrics")["pipeline"]["received"]
            .as_u64()
            .expect("received");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("target down: {received} of {count} received; RSS {rss0} -> {max_rss} kB");
    // 8 MiB of 256 KiB messages is 32; one batch may be admitted alone past what is free.
    let bound = MAX_BYTES / SIZE;
    assert!(received > 0, "nothing was admitted");
    assert!(
        received <= bound,
        "admitted {received} messages of {SIZE} bytes with max_in_flight_bytes {MAX_BYTES}"
    );
    assert!(sender.is_running(), "the sender was never held back");
    // What the host holds is bounded by bytes in flight (decoded too), the batches being
    // gathered and the read buffers: well under the 100 MiB waiting at the sender.
    assert!(
        max_rss - rss0 < 60 * 1024,
        "the host grew from {rss0} kB to {max_rss} kB"
    );

    fs::remove_file(host.path("down")).unwrap();
    wait_for_lines(&host.path("out.jsonl"), count as usize);
    assert!(sender.wait().success(), "the sender failed");
    host.wait_settled(count);
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (count, count, 0, 0), "{summary:#}");
}
