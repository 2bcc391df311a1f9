//! SIGTERM in the middle of a stream: the host stops reading, drains every message it had
//! accepted through the pipeline into the output, and exits 0. Nothing accepted is lost and
//! nothing is left in flight.

use tests::{
    assert_reconciled, host_command, read_json_lines, totals, wait_for_lines, Background, Host,
};

#[test]
fn sigterm_mid_stream_drains_everything_accepted() {
    let count: u64 = 300_000;
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  pass: { plugin: passthrough, inputs: [in] }
  out:
    plugin: jsonl
    inputs: [pass]
    config: { path: "{{dir}}/out.jsonl" }
"#,
    );
    // Paced, so that the stream is still flowing when SIGTERM comes (about 3 s of it).
    let mut publish = host_command();
    publish.args([
        "publish",
        "--to",
        &host.endpoint,
        "--count",
        &count.to_string(),
        "--rate",
        "100000",
    ]);
    let mut publisher = Background::spawn(publish);

    // Stop while the stream is flowing.
    let out = host.path("out.jsonl");
    wait_for_lines(&out, 1000);
    assert!(
        publisher.is_running(),
        "the publisher finished before SIGTERM"
    );
    let summary = host.stop();
    drop(publisher);

    assert_reconciled(&summary);
    let (received, completed, filtered, failed) = totals(&summary);
    println!("received {received} of {count} before SIGTERM");
    assert!(
        received > 0 && received < count,
        "expected a stream cut in the middle: {summary:#}"
    );
    assert_eq!((filtered, failed), (0, 0), "{summary:#}");
    assert_eq!(completed, received, "{summary:#}");

    // Every accepted message is in the file, once, in order; every line is valid JSON.
    let lines = read_json_lines(&out);
    assert_eq!(
        lines.len() as u64,
        completed,
        "lines in the output vs completed"
    );
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["id"], i as u64, "line {}: {line}", i + 1);
    }
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.ends_with('\n'), "the last line is cut");
}
