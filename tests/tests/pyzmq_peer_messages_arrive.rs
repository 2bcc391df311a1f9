//! Interop with libzmq: messages sent by a pyzmq PUSH socket arrive in the pipeline intact.

use std::process::Command;

use tests::{
    assert_reconciled, json, read_json_lines, run_with_timeout, totals, wait_for_lines, Host,
};

/// The system Python (not a pyenv one, which may lack pyzmq).
const PYTHON: &str = "/usr/bin/python3";

const SENDER: &str = r#"
import json, sys, zmq
endpoint, count = sys.argv[1], int(sys.argv[2])
ctx = zmq.Context()
push = ctx.socket(zmq.PUSH)
push.setsockopt(zmq.LINGER, 20000)  # close() waits until everything is sent
push.connect(endpoint)
for i in range(count):
    push.send_string(json.dumps({"id": i, "from": "pyzmq", "text": "h\u00e9llo \u2713", "ok": i % 2 == 0}))
push.close()
ctx.term()
"#;

#[test]
fn messages_from_pyzmq_arrive() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  out:
    plugin: jsonl
    inputs: [in]
    config: { path: "{{dir}}/out.jsonl" }
"#,
    );
    let count = 500;
    let mut python = Command::new(PYTHON);
    python
        .arg("-c")
        .arg(SENDER)
        .arg(&host.endpoint)
        .arg(count.to_string());
    let sent = run_with_timeout(python);
    assert_eq!(sent.code(), 0, "the pyzmq sender failed: {sent:#?}");

    let out = host.path("out.jsonl");
    wait_for_lines(&out, count);
    let summary = host.stop();

    let expected: Vec<_> = (0..count)
        .map(|i| json!({ "id": i, "from": "pyzmq", "text": "héllo ✓", "ok": i % 2 == 0 }))
        .collect();
    assert_eq!(read_json_lines(&out), expected);
    assert_reconciled(&summary);
    assert_eq!(
        totals(&summary),
        (count as u64, count as u64, 0, 0),
        "{summary:#}"
    );
}
