//! SIGUSR1 makes a running host log its totals, and nothing else: it keeps running.

use std::time::Duration;

use tests::{assert_reconciled, send, totals, wait_for_lines, Host};

/// The "pipeline totals" lines logged on SIGUSR1.
fn usr1_totals(host: &Host) -> Vec<String> {
    host.log()
        .lines()
        .filter(|l| l.contains("pipeline totals") && l.contains(r#"reason="SIGUSR1""#))
        .map(str::to_owned)
        .collect()
}

/// Sends SIGUSR1 and returns the totals line it caused (the `nth`, counting from 1).
fn ask_totals(host: &Host, nth: usize) -> String {
    host.signal(libc::SIGUSR1);
    let logged = tests::wait_until(Duration::from_secs(10), || usr1_totals(host).len() >= nth);
    assert!(logged, "no totals logged on SIGUSR1:\n{}", host.log());
    usr1_totals(host).remove(nth - 1)
}

fn messages(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!(r#"{{"n":{i}}}"#)).collect()
}

#[test]
fn sigusr1_logs_totals_and_the_host_keeps_running() {
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
    let out = host.path("out.jsonl");
    send(&host.endpoint, &messages(0, 10));
    wait_for_lines(&out, 10);

    let first = ask_totals(&host, 1);
    assert!(first.contains("received=10 "), "{first}");
    assert!(
        host.log().contains("stage totals") && host.log().contains("stage=out"),
        "no stage totals:\n{}",
        host.log()
    );
    assert!(
        host.is_running(),
        "SIGUSR1 stopped the host:\n{}",
        host.log()
    );
    assert!(!host.log().contains("stopping"), "{}", host.log());

    // Still taking messages, and a second signal reports the new totals.
    send(&host.endpoint, &messages(10, 15));
    wait_for_lines(&out, 15);
    let second = ask_totals(&host, 2);
    assert!(second.contains("received=15 "), "{second}");
    assert!(host.is_running(), "{}", host.log());

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (15, 15, 0, 0), "{summary:#}");
}
