//! A source's `max_delay`: a batch that is not full waits up to that long for more messages
//! before it goes to the stages. Messages sent a few milliseconds apart (by `host publish
//! --rate`, over one real ZeroMQ connection) then reach the exporter in one call instead of
//! one call each, and every one of them is delivered and accounted for; without it, each
//! goes on as soon as it is read.

use tests::{run_host, stage, totals, wait_until, Host};

use std::time::Duration;

const PIPELINE: &str = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}", max_delay: MAX_DELAY }
stages:
  out:
    plugin: jsonl
    inputs: [in]
    config: { path: "{{dir}}/out.jsonl" }
"#;

const MESSAGES: u64 = 10;

/// Sends `MESSAGES` messages 10 ms apart to a pipeline whose source has `max_delay`; returns
/// the exporter's calls once every message is settled.
fn exporter_calls(max_delay: &str) -> u64 {
    let mut host = Host::start(&PIPELINE.replace("MAX_DELAY", max_delay));
    let n = MESSAGES.to_string();
    let out = run_host([
        "publish",
        "--to",
        &host.endpoint,
        "--count",
        &n,
        "--rate",
        "100",
    ]);
    assert_eq!(out.code(), 0, "{out:?}");
    // Held at most `max_delay` (1 s here) after the first message: settled well within 10 s.
    let settled = wait_until(Duration::from_secs(10), || {
        host.metrics().get("host_messages_completed_total", &[]) == Some(MESSAGES as f64)
    });
    assert!(settled, "not every message was delivered:\n{}", host.log());
    let summary = host.stop();
    assert_eq!(totals(&summary), (MESSAGES, MESSAGES, 0, 0), "{summary:#}");
    assert_eq!(
        tests::read_lines(&host.path("out.jsonl")).len() as u64,
        MESSAGES
    );
    stage(&summary, "out")["calls"]
        .as_u64()
        .unwrap_or_else(|| panic!("no calls for `out`: {summary:#}"))
}

#[test]
fn messages_that_trickle_in_are_gathered_into_one_batch_within_max_delay() {
    // The ten messages take about 90 ms to send, far less than the 1 s a batch may wait. (Two
    // calls at most: a loaded machine may stall the sender between two messages for longer
    // than the batch's wait; one call per message would be ten.)
    let calls = exporter_calls("1s");
    assert!(calls <= 2, "{calls} calls for {MESSAGES} messages");
}

#[test]
fn without_max_delay_each_message_goes_on_as_soon_as_it_is_read() {
    // 10 ms apart, each read finds one message (a very busy machine might find two).
    let calls = exporter_calls("0s");
    assert!(
        calls >= MESSAGES / 2,
        "{calls} calls for {MESSAGES} messages"
    );
}
