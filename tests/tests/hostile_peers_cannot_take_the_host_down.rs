//! Whatever bytes reach an ingest port, the host stays up, its memory stays bounded, and a
//! well-behaved peer (libzmq, through pyzmq) keeps being served. Hostile peers are raw TCP
//! clients that speak just enough ZMTP to get where they want.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use tests::{
    assert_reconciled, proc_status, pyzmq_push, read_json_lines, totals, wait_for_lines, zmtp, Host,
};

const PIPELINE: &str = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  in:
    type: zmq
    socket: pull
    bind: "{{endpoint}}"
    handshake_timeout: 1s
    max_connections: 50
stages:
  out: { plugin: jsonl, inputs: [in], config: { path: "{{dir}}/out.jsonl" } }
"#;

/// How long a socket operation in these tests may take.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn connect(endpoint: &str) -> TcpStream {
    let addr = endpoint.trim_start_matches("tcp://");
    let to: std::net::SocketAddr = addr.parse().expect("an IP address and port");
    let s = TcpStream::connect_timeout(&to, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Reads until the host closes the connection; panics if it does not within `within`.
fn assert_closed_by_host(s: &mut TcpStream, within: Duration, what: &str) {
    s.set_read_timeout(Some(within)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!(
                "{what}: the host kept the connection open for {:?} ({e})",
                started.elapsed()
            ),
        }
    }
}

/// The failed-by-type count for `error_type` on /api/metrics.
fn failed_of(host: &Host, error_type: &str) -> u64 {
    host.get_json("/api/metrics")["pipeline"]["failed_by_type"][error_type]
        .as_u64()
        .unwrap_or(0)
}

fn wait_failed(host: &Host, error_type: &str, n: u64) {
    let ok = tests::wait_until(IO_TIMEOUT, || failed_of(host, error_type) >= n);
    assert!(
        ok,
        "{error_type} did not reach {n}: {:#}\n{}",
        host.get_json("/api/metrics")["pipeline"],
        host.log()
    );
}

#[test]
fn a_frame_header_claiming_a_petabyte_is_counted_and_the_host_stays_up() {
    let mut host = Host::start(PIPELINE);
    // The 73 bytes of the issue: a greeting, then one frame header that claims 2^50 bytes.
    let mut s = connect(&host.endpoint);
    s.write_all(&zmtp::greeting()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(&zmtp::header(1 << 50, false, false)).unwrap();
    // No READY was sent: the host refuses a message before the handshake ends.
    assert_closed_by_host(&mut s, IO_TIMEOUT, "a message before READY");

    // The same header after a proper handshake: counted as too large, skipped as it comes.
    let mut s = connect(&host.endpoint);
    s.write_all(&zmtp::push_handshake()).unwrap();
    s.write_all(&zmtp::header(1 << 50, false, false)).unwrap();
    s.write_all(&vec![b'x'; 1 << 20]).unwrap();
    wait_failed(&host, "message_too_large", 1);
    assert!(host.is_running());

    pyzmq_push(&host.endpoint, 100);
    wait_for_lines(&host.path("out.jsonl"), 100);
    drop(s);
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (101, 100, 0, 1), "{summary:#}");
    assert_eq!(
        summary["pipeline"]["failed_by_type"]["message_too_large"],
        1
    );
}

#[test]
fn oversized_messages_are_skipped_without_being_buffered() {
    let mut host = Host::start(PIPELINE);
    let pid = host.pid();
    let mut s = connect(&host.endpoint);
    s.write_all(&zmtp::push_handshake()).unwrap();
    s.write_all(&zmtp::frame(br#"{"n":"before"}"#, false))
        .unwrap();
    // One frame of 512 MiB, sent in full...
    let chunk = vec![b'x'; 1 << 20];
    s.write_all(&zmtp::header(512 << 20, false, false)).unwrap();
    for _ in 0..512 {
        s.write_all(&chunk).unwrap();
    }
    // ... then a message of 300 frames of 1 MiB: each frame fits the limit, the message does
    // not (libzmq's ZMQ_MAXMSGSIZE, which limits frames, would buffer all of it).
    for i in 0..300 {
        s.write_all(&zmtp::header(1 << 20, i < 299, false)).unwrap();
        s.write_all(&chunk).unwrap();
    }
    // The connection is still good: the next message on it arrives.
    s.write_all(&zmtp::frame(br#"{"n":"after"}"#, false))
        .unwrap();
    let out = host.path("out.jsonl");
    wait_for_lines(&out, 2);
    wait_failed(&host, "message_too_large", 2);

    let peak_kb = proc_status(pid, "VmHWM");
    assert!(
        peak_kb < 150 * 1024,
        "peak RSS {peak_kb} kB after 812 MiB of oversized messages"
    );
    drop(s);
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (4, 2, 0, 2), "{summary:#}");
    let lines = read_json_lines(&out);
    assert_eq!(lines[0]["n"], "before");
    assert_eq!(lines[1]["n"], "after");
}

#[test]
fn bad_peers_are_dropped_and_a_good_peer_is_served() {
    let mut host = Host::start(PIPELINE);
    let ep = host.endpoint.clone();

    // Not ZMTP at all: refused at the first byte.
    let mut s = connect(&ep);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_closed_by_host(&mut s, IO_TIMEOUT, "an HTTP request");

    // ZMTP 2.0 (libzmq 3.x): refused.
    let mut s = connect(&ep);
    let mut old = zmtp::greeting();
    old[10] = 1;
    s.write_all(&old).unwrap();
    assert_closed_by_host(&mut s, IO_TIMEOUT, "an old ZMTP version");

    // Garbage after a good greeting: reserved flag bits.
    let mut s = connect(&ep);
    s.write_all(&zmtp::push_handshake()).unwrap();
    s.write_all(&[0xf0, 0x10, 0xde, 0xad]).unwrap();
    assert_closed_by_host(&mut s, IO_TIMEOUT, "garbage after the greeting");

    // A PUB socket cannot feed a PULL socket.
    let mut s = connect(&ep);
    s.write_all(&zmtp::greeting()).unwrap();
    s.write_all(&zmtp::ready("PUB")).unwrap();
    assert_closed_by_host(&mut s, IO_TIMEOUT, "a PUB peer on a PULL source");

    // A connection that never sends: dropped after the handshake timeout (1 s here).
    let mut silent = connect(&ep);
    let started = Instant::now();
    assert_closed_by_host(&mut silent, Duration::from_secs(10), "a silent peer");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A thousand connections opened and dropped, some mid-greeting.
    for i in 0..1000 {
        let mut s = connect(&ep);
        if i % 2 == 0 {
            let _ = s.write_all(&zmtp::greeting()[..20]);
        }
    }

    let gone = tests::wait_until(IO_TIMEOUT, || {
        host.get_json("/api/metrics")["sources"][0]["connections_active"] == 0
    });
    assert!(gone, "{:#}", host.get_json("/api/metrics")["sources"]);

    // More peers than max_connections (50): the extra ones are closed at once.
    let held: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = connect(&ep);
            s.write_all(&zmtp::push_handshake()).unwrap();
            s
        })
        .collect();
    // Wait until the host serves all 50 (the dropped ones above are gone by then).
    let full = tests::wait_until(IO_TIMEOUT, || {
        host.get_json("/api/metrics")["sources"][0]["connections_active"] == 50
    });
    assert!(full, "{:#}", host.get_json("/api/metrics")["sources"]);
    let mut extra = connect(&ep);
    assert_closed_by_host(&mut extra, IO_TIMEOUT, "a peer over max_connections");
    drop(held);

    // Through all of it, the host is up and a libzmq peer is served in full.
    assert!(host.is_running());
    pyzmq_push(&ep, 1000);
    let out = host.path("out.jsonl");
    wait_for_lines(&out, 1000);

    let metrics = host.metrics();
    let dropped = |reason: &str| {
        metrics
            .get(
                "host_source_peers_dropped_total",
                &[("source", "in"), ("reason", reason)],
            )
            .unwrap_or(0.0)
    };
    assert!(dropped("bad_greeting") >= 1.0, "{}", host.log());
    assert!(dropped("unsupported_version") >= 1.0);
    assert!(dropped("bad_frame") >= 1.0);
    assert!(dropped("wrong_socket_type") >= 1.0);
    assert!(dropped("handshake_timeout") >= 1.0);
    let refused = metrics
        .get(
            "host_source_connections_total",
            &[("source", "in"), ("outcome", "refused")],
        )
        .unwrap_or(0.0);
    assert!(refused >= 1.0);

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (1000, 1000, 0, 0), "{summary:#}");
    let lines = read_json_lines(&out);
    assert!(lines.iter().all(|l| l["from"] == "pyzmq"));
}
