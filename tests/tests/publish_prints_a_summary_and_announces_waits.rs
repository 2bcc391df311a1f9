//! `host publish` with its output in a pipe ends with one summary line on stdout (sent,
//! errors, elapsed, rate), as text or as JSON; with nobody to send to it says so on stderr
//! within a few seconds and goes on waiting, so a peer that turns up later gets every message.

use std::{
    io::Read,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use tests::{free_endpoint, host_command, run_host, wait_for_lines, wait_until, Host};

/// How long the waiting message may take to appear (the host says it after one second).
const NOTICE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish that found its peer may take to end.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

const PIPELINE: &str = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  out:
    plugin: jsonl
    inputs: [in]
    config: { path: "{{dir}}/out.jsonl" }
"#;

/// `published sent=N errors=N elapsed=Xs rate=Y/s endpoint=E`, as (key, value) pairs.
fn summary_fields(line: &str) -> Vec<(String, String)> {
    let rest = line
        .strip_prefix("published ")
        .unwrap_or_else(|| panic!("not a summary line: {line:?}"));
    rest.split(' ')
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {kv:?} in {line:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn publishing_to_a_listening_host_ends_with_one_summary_line() {
    let mut host = Host::start(PIPELINE);
    let out = run_host(["publish", "--to", &host.endpoint, "--count", "300"]);
    assert_eq!(out.code(), 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one summary line on stdout: {out:?}");
    let fields = summary_fields(lines[0]);
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["sent", "errors", "elapsed", "rate", "endpoint"],
        "{}",
        lines[0]
    );
    let value = |key: &str| &fields.iter().find(|(k, _)| k == key).unwrap().1;
    assert_eq!(value("sent"), "300");
    assert_eq!(value("errors"), "0");
    assert_eq!(value("endpoint"), &host.endpoint);
    let elapsed: f64 = value("elapsed")
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("elapsed: {}", lines[0]));
    assert!(elapsed >= 0.0, "{}", lines[0]);
    let rate: f64 = value("rate")
        .strip_suffix("/s")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("rate: {}", lines[0]));
    assert!(rate >= 0.0, "{}", lines[0]);
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);

    // The same summary as a JSON object with --log-format json.
    let out = run_host([
        "publish",
        "--to",
        &host.endpoint,
        "--count",
        "200",
        "--log-format",
        "json",
    ]);
    assert_eq!(out.code(), 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    let v: tests::Value = serde_json::from_str(lines[0]).expect("a JSON summary");
    assert_eq!(v["sent"], 200, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["endpoint"], host.endpoint.as_str(), "{v}");
    assert!(
        v["elapsed_seconds"].as_f64().is_some_and(|s| s >= 0.0),
        "{v}"
    );
    assert!(
        v["rate_per_second"].as_f64().is_some_and(|r| r >= 0.0),
        "{v}"
    );

    wait_for_lines(&host.path("out.jsonl"), 500);
    let summary = host.stop();
    assert_eq!(tests::totals(&summary), (500, 500, 0, 0), "{summary:#}");
}

#[test]
fn a_rate_below_a_thousand_a_second_is_kept() {
    // 20 messages at 100 a second: the first at once, the last about 190 ms later. (Pacing
    // in 1 ms ticks once sent at least one message per tick, 1000 a second, whatever the
    // rate asked for.) Only a lower bound: pacing can make a run slower, never faster.
    let mut host = Host::start(PIPELINE);
    let out = run_host([
        "publish",
        "--to",
        &host.endpoint,
        "--count",
        "20",
        "--rate",
        "100",
    ]);
    assert_eq!(out.code(), 0, "{out:?}");
    let line = out.stdout.lines().next().unwrap_or_default();
    let fields = summary_fields(line);
    let elapsed: f64 = fields
        .iter()
        .find(|(k, _)| k == "elapsed")
        .and_then(|(_, v)| v.strip_suffix('s')?.parse().ok())
        .unwrap_or_else(|| panic!("elapsed: {line}"));
    assert!(
        elapsed >= 0.18,
        "20 messages at 100/s took {elapsed}s: {line}"
    );
    wait_for_lines(&host.path("out.jsonl"), 20);
    let summary = host.stop();
    assert_eq!(tests::totals(&summary), (20, 20, 0, 0), "{summary:#}");
}

/// A `host publish` running in the background, its stderr collected as it comes; killed
/// when dropped.
struct Publisher {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Publisher {
    fn spawn(args: &[&str]) -> Publisher {
        let mut cmd = host_command();
        cmd.env_remove("NO_COLOR")
            .arg("publish")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start host publish");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                sink.lock().unwrap().push_str(&text);
            }
        });
        Publisher { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_for_stderr(&self, needle: &str) {
        let said = wait_until(NOTICE_TIMEOUT, || self.stderr().contains(needle));
        assert!(
            said,
            "no {needle:?} on stderr within {NOTICE_TIMEOUT:?}:\n{}",
            self.stderr()
        );
    }

    /// Waits for the process to exit; returns its exit code and stdout.
    fn finish(mut self) -> (i32, String) {
        let mut status = None;
        wait_until(FINISH_TIMEOUT, || {
            status = self.child.try_wait().expect("cannot wait for publish");
            status.is_some()
        });
        let status = status.unwrap_or_else(|| {
            panic!(
                "publish did not end within {FINISH_TIMEOUT:?}:\n{}",
                self.stderr()
            )
        });
        let mut stdout = String::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            pipe.read_to_string(&mut stdout).expect("publish's stdout");
        }
        (status.code().expect("an exit code"), stdout)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn with_nobody_listening_publish_says_it_waits_and_delivers_once_a_host_listens() {
    let endpoint = free_endpoint();
    let publisher = Publisher::spawn(&["--to", &endpoint, "--count", "50"]);
    publisher.wait_for_stderr(&format!("waiting for a peer at {endpoint}"));
    assert!(
        !publisher.stderr().contains('\u{1b}'),
        "{:?}",
        publisher.stderr()
    );

    // A host that binds the endpoint now gets every message, and publish ends as usual.
    let pipeline = PIPELINE.replace("{{endpoint}}", &endpoint);
    let mut host = Host::start(&pipeline);
    let (code, stdout) = publisher.finish();
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.starts_with("published sent=50 errors=0 "),
        "{stdout}"
    );
    wait_for_lines(&host.path("out.jsonl"), 50);
    let summary = host.stop();
    assert_eq!(tests::totals(&summary), (50, 50, 0, 0), "{summary:#}");
}

#[test]
fn a_bound_publisher_says_it_waits_for_a_peer_to_connect() {
    let endpoint = free_endpoint();
    let publisher = Publisher::spawn(&["--to", &endpoint, "--bind", "--count", "5"]);
    publisher.wait_for_stderr(&format!("waiting for a peer to connect to {endpoint}"));
    // Dropping the publisher kills it: nobody was ever going to connect.
}

/// A libzmq PULL socket (pyzmq) that binds or connects, stops reading for `pause` seconds
/// once it has `pause_at` messages, then counts what arrives until nothing has come for 5 s,
/// and prints the count and how many of the messages were not the next in order.
const SLOW_PULL: &str = r#"
import json, sys, time, zmq
mode, endpoint, pause_at, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
ctx = zmq.Context()
pull = ctx.socket(zmq.PULL)
pull.setsockopt(zmq.RCVHWM, 1000)
pull.setsockopt(zmq.RCVTIMEO, 5000)
(pull.bind if mode == "bind" else pull.connect)(endpoint)
print("ready", flush=True)
count, out_of_order = 0, 0
while True:
    if count == pause_at:
        time.sleep(pause)
    try:
        m = json.loads(pull.recv())
    except zmq.Again:
        break
    out_of_order += m["id"] != count
    count += 1
print(count, out_of_order, flush=True)
"#;

/// Starts [`SLOW_PULL`]; returns once its socket is bound or connecting.
fn slow_pull(mode: &str, endpoint: &str, pause_at: u64, pause_secs: f64) -> Child {
    let mut child = std::process::Command::new(tests::PYTHON)
        .args([
            "-c",
            SLOW_PULL,
            mode,
            endpoint,
            &pause_at.to_string(),
            &pause_secs.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start python3 (pyzmq)");
    let mut first = [0u8; 6];
    child
        .stdout
        .as_mut()
        .expect("piped stdout")
        .read_exact(&mut first)
        .expect("the PULL socket says it is ready");
    assert_eq!(&first, b"ready\n");
    child
}

/// What [`SLOW_PULL`] counted: (messages, messages out of order).
fn pulled(child: Child) -> (u64, u64) {
    let out = tests::wait_with_timeout(child, "the pyzmq PULL receiver");
    let text = out.stdout;
    let mut numbers = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

#[test]
fn publish_ends_only_once_a_slow_receiver_has_read_everything() {
    // The receiver stops reading for 3 s a quarter of the way in: what follows fills its
    // queue and the kernel's buffers, and the rest waits in `host publish`. The `zeromq`
    // crate's socket took all of it into its own queue (100,000 messages) and `host publish`
    // gave that queue 0.5 s after the last send: the tail was lost with the process. Now
    // `host publish` ends when the peer has read every message.
    let endpoint = free_endpoint();
    let receiver = slow_pull("bind", &endpoint, 50_000, 3.0);
    let count = 200_000;
    let out = run_host(["publish", "--to", &endpoint, "--count", &count.to_string()]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with(&format!("published sent={count} errors=0 ")),
        "{out:?}"
    );
    assert_eq!(pulled(receiver), (count, 0), "every message, in order");
}

#[test]
fn a_bound_publisher_sends_everything_to_the_peer_that_connects() {
    let endpoint = free_endpoint();
    let publisher = Publisher::spawn(&["--to", &endpoint, "--bind", "--count", "20000"]);
    let receiver = slow_pull("connect", &endpoint, 0, 0.5);
    let (code, stdout) = publisher.finish();
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.starts_with("published sent=20000 errors=0 "),
        "{stdout}"
    );
    assert_eq!(pulled(receiver), (20000, 0));
}
