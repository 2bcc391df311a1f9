//! Back-pressure: behind a slow stage, the bounded queues fill and the source stops reading,
//! so the backlog stays with the sender. What the host holds stays bounded by its queues,
//! whatever the backlog, and everything it did accept is still delivered at shutdown.

use std::time::{Duration, Instant};

use tests::{assert_reconciled, host_command, proc_status, read_lines, totals, Background, Host};

/// Messages per batch, batches per queue, and the slow stage's pause per batch.
const BATCH: u64 = 100;
const QUEUE: u64 = 2;
const DELAY_MS: u64 = 50;

#[test]
fn a_slow_stage_holds_back_ingestion_and_in_flight_stays_bounded() {
    let pipeline = format!(
        r#"
plugins:
  paths: ["{{{{plugins}}}}", "{{{{fixtures}}}}/libpanicky_plugin.so"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}", batch_size: {BATCH} }}
stages:
  slow: {{ plugin: slow, inputs: [in], config: {{ delay_ms: {DELAY_MS} }} }}
  out: {{ plugin: jsonl, inputs: [slow], config: {{ path: "{{{{dir}}}}/out.jsonl" }} }}
runtime:
  queue_capacity: {QUEUE}
"#
    );
    let mut host = Host::start(&pipeline);
    let backlog: u64 = 500_000;
    let mut publish = host_command();
    publish
        .arg("publish")
        .arg("--to")
        .arg(&host.endpoint)
        .arg("--count")
        .arg(backlog.to_string());
    let publisher = Background::spawn(publish);

    // Each stage holds at most its queue plus the batch it is working on; the source one
    // batch it is waiting to hand over.
    let stages = 2;
    let bound = (stages * (QUEUE + 1) + 1) * BATCH;
    let watch_for = Duration::from_secs(2);
    let started = Instant::now();
    let mut max_in_flight = 0;
    let mut received = 0;
    let rss0 = rss_kb(host.pid());
    let mut max_rss = rss0;
    while started.elapsed() < watch_for {
        max_rss = max_rss.max(rss_kb(host.pid()));
        let pipeline = host.get_json("/api/metrics")["pipeline"].clone();
        max_in_flight = max_in_flight.max(pipeline["in_flight"].as_u64().expect("in_flight"));
        received = pipeline["received"].as_u64().expect("received");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(max_in_flight > 0, "nothing was ever in flight");
    assert!(
        max_in_flight <= bound,
        "{max_in_flight} messages in flight, more than the queues hold ({bound})"
    );
    // The slow stage passes at most BATCH messages per DELAY_MS; the source read no more
    // than that plus what the queues hold: the rest of the backlog waited at the sender.
    let elapsed_ms = started.elapsed().as_millis() as u64 + 1000;
    let most = elapsed_ms / DELAY_MS * BATCH + bound;
    assert!(
        received <= most && received < backlog,
        "the source read {received} messages, more than the pipeline could pass ({most})"
    );
    // The backlog (about 50 MB of messages) waits in the sender and the kernel's socket
    // buffers, not in the host: its memory grows by much less than the backlog's size.
    let backlog_kb = backlog * 95 / 1024;
    assert!(
        max_rss - rss0 < backlog_kb / 2,
        "the host grew from {rss0} kB to {max_rss} kB with a backlog of ~{backlog_kb} kB"
    );
    drop(publisher);

    let summary = host.stop();
    assert_reconciled(&summary);
    let (received, completed, filtered, failed) = totals(&summary);
    assert_eq!((filtered, failed), (0, 0), "{summary:#}");
    assert_eq!(received, completed, "{summary:#}");
    assert_eq!(read_lines(&host.path("out.jsonl")).len() as u64, completed);
}

/// The host's resident memory, in kB.
fn rss_kb(pid: u32) -> u64 {
    proc_status(pid, "VmRSS")
}
