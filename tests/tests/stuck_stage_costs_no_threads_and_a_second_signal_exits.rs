//! A stage stuck in a call (an exporter writing to a FIFO that nobody reads) is reported
//! unhealthy from its worker's in-call mark, without a thread per health round, and a second
//! signal (a SIGINT after the SIGTERM) ends the process at once with status 1 while the first
//! one's drain waits on it.

use std::{
    ffi::CString,
    os::unix::{fs::OpenOptionsExt, process::ExitStatusExt},
    time::{Duration, Instant},
};

use tests::{proc_status, send_json, wait_until, Host};

#[test]
fn a_stuck_exporter_is_unhealthy_costs_no_threads_and_a_second_sigterm_exits() {
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("out.fifo");
    let c = CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // A reader that never reads: the exporter can open the FIFO, then fills it and blocks.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();

    let pipeline = format!(
        r#"
plugins:
  paths: ["{{{{plugins}}}}"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  out: {{ plugin: jsonl, inputs: [in], config: {{ path: "{}" }} }}
monitoring:
  admin: {{ listen: "127.0.0.1:0" }}
  health: {{ interval: 200ms, timeout: 500ms }}
"#,
        fifo.display()
    );
    let mut host = Host::start(&pipeline);
    // About 1 MB of lines: far more than a pipe holds (64 KiB).
    let messages: Vec<_> = (0..10_000)
        .map(|i| tests::json!({ "i": i, "pad": "x".repeat(80) }))
        .collect();
    send_json(&host.endpoint, &messages);

    let stuck = host.wait_for_answer(
        "/health/ready",
        Duration::from_secs(30),
        "stage/out stuck",
        |r| r.status == 503 && r.body.contains("in one call"),
    );
    assert!(stuck.body.contains("stage/out"), "{}", stuck.body);

    // Twenty-five health rounds later, not one thread more.
    let threads = proc_status(host.pid(), "Threads");
    std::thread::sleep(Duration::from_secs(5));
    let ready = host.get("/health/ready");
    assert_eq!(ready.status, 503, "{ready:#?}");
    let after = proc_status(host.pid(), "Threads");
    assert!(
        after <= threads,
        "threads grew from {threads} to {after} while the stage was stuck"
    );

    // The first SIGTERM drains, which waits on the stuck stage; the second signal ends it
    // now. It is a SIGINT here (Ctrl-C after a `kill`): either counts, both go one way.
    host.signal(libc::SIGTERM);
    host.wait_for_log("stopping: draining", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        host.is_running(),
        "the drain cannot finish while the stage is stuck"
    );
    let second = Instant::now();
    host.signal(libc::SIGINT);
    let ended = wait_until(Duration::from_secs(5), || !host.is_running());
    assert!(
        ended,
        "still running 5 s after a second signal (SIGINT):\n{}",
        host.log()
    );
    let status = host.exit_status().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "{status:?} (signal {:?})",
        status.signal()
    );
    assert!(second.elapsed() < Duration::from_secs(5));
    assert!(host.log().contains("forced exit"), "{}", host.log());
}
