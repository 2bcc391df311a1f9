//! A `sub` source that connects (to a libzmq PUB socket, through pyzmq) receives only the
//! topics it subscribed to, takes the payload from the last frame, and a `raw` source turns
//! any bytes into a `message` field.

use std::process::Command;

use tests::{
    assert_reconciled, free_endpoint, json, read_json_lines, send, totals, wait_for_lines,
    Background, Host,
};

const PYTHON: &str = "/usr/bin/python3";

/// Publishes `[topic, payload]` pairs on two topics until stopped (PUB drops what is sent
/// before a subscriber's subscription arrives, so the test cannot count on any one message).
const PUBLISHER: &str = r#"
import json, sys, time, zmq
endpoint = sys.argv[1]
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub.bind(endpoint)
i = 0
deadline = time.time() + 30
while time.time() < deadline:
    for topic in (b"metrics", b"other"):
        pub.send_multipart([topic, json.dumps({"i": i, "topic": topic.decode()}).encode()])
    i += 1
    time.sleep(0.002)
"#;

#[test]
fn sub_connects_filters_topics_and_raw_keeps_bytes() {
    let feed = free_endpoint();
    let mut python = Command::new(PYTHON);
    python.arg("-c").arg(PUBLISHER).arg(&feed);
    let _publisher = Background::spawn(python);

    let pipeline = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  feed: { type: zmq, socket: sub, connect: "FEED", topics: [metrics] }
  text: { type: zmq, socket: pull, bind: "{{endpoint}}", decode: raw }
stages:
  subscribed: { plugin: jsonl, inputs: [feed], config: { path: "{{dir}}/sub.jsonl" } }
  raw: { plugin: jsonl, inputs: [text], config: { path: "{{dir}}/raw.jsonl" } }
"#
    .replace("FEED", &feed);
    let mut host = Host::start(&pipeline);

    send(
        &host.endpoint,
        &[
            b"plain text".to_vec(),
            b"{not json".to_vec(),
            vec![0xff, 0x00],
        ],
    );
    let sub = host.path("sub.jsonl");
    wait_for_lines(&sub, 50);
    wait_for_lines(&host.path("raw.jsonl"), 3);
    let summary = host.stop();

    let received = read_json_lines(&sub);
    assert!(received.len() >= 50);
    for line in &received {
        assert_eq!(
            line["topic"], "metrics",
            "a message of another topic arrived: {line}"
        );
    }
    // Consecutive: once subscribed, nothing of the topic is lost.
    let ids: Vec<u64> = received.iter().map(|l| l["i"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "gaps in {ids:?}");

    let raw = read_json_lines(&host.path("raw.jsonl"));
    assert_eq!(raw[0], json!({ "message": "plain text" }));
    assert_eq!(raw[1], json!({ "message": "{not json" }));
    // Bytes that are not UTF-8 are kept as bytes (JSON Lines writes them as a list).
    assert_eq!(raw[2], json!({ "message": [255, 0] }));

    assert_reconciled(&summary);
    let (received_total, completed, filtered, failed) = totals(&summary);
    assert_eq!(received_total, completed, "{summary:#}");
    assert_eq!((filtered, failed), (0, 0));
}
