//! The receive side beyond TCP PULL: a source bound on `ipc://` takes a libzmq PUSH peer
//! (pyzmq), and a bound SUB source takes what the `zeromq` crate's PUB socket
//! (`host publish --socket pub`) sends to the topics it subscribed to.

use tests::{
    assert_reconciled, host_command, pyzmq_push, read_json_lines, run_with_timeout, totals,
    wait_for_lines, Host,
};

#[test]
fn ipc_pull_and_bound_sub_receive() {
    let sock_dir = tempfile::tempdir().unwrap();
    let ipc = format!("ipc://{}/in.sock", sock_dir.path().display());
    let pipeline = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  local: { type: zmq, socket: pull, bind: "IPC" }
  feed: { type: zmq, socket: sub, bind: "{{endpoint}}", topics: ["{"] }
stages:
  from-ipc: { plugin: jsonl, inputs: [local], config: { path: "{{dir}}/ipc.jsonl" } }
  from-sub: { plugin: jsonl, inputs: [feed], config: { path: "{{dir}}/sub.jsonl" } }
"#
    .replace("IPC", &ipc);
    let mut host = Host::start(&pipeline);

    pyzmq_push(&ipc, 200);
    wait_for_lines(&host.path("ipc.jsonl"), 200);

    // `host publish` sends single-frame JSON messages, so the topic `{` matches them all.
    let mut publish = host_command();
    publish.args([
        "publish",
        "--socket",
        "pub",
        "--count",
        "300",
        "--to",
        &host.endpoint,
    ]);
    let out = run_with_timeout(publish);
    assert!(out.status.success(), "{out:#?}");
    let summary = host.stop();
    assert_reconciled(&summary);

    let ipc_lines = read_json_lines(&host.path("ipc.jsonl"));
    assert_eq!(ipc_lines.len(), 200);
    assert!(ipc_lines.iter().all(|l| l["from"] == "pyzmq"));
    // PUB drops what it sends before the subscription reaches it; `publish` waits for that,
    // so everything after arrives, in order.
    let sub_lines = read_json_lines(&host.path("sub.jsonl"));
    assert!(!sub_lines.is_empty(), "nothing arrived over SUB");
    let ids: Vec<u64> = sub_lines
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert_eq!(*ids.last().unwrap(), 299);
    let (received, completed, _, failed) = totals(&summary);
    assert_eq!((received, failed), (completed, 0), "{summary:#}");
    assert!(
        !std::path::Path::new(&ipc[6..]).exists(),
        "the ipc socket file was left behind"
    );
}
