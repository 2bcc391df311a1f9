//! HTTP clients that are slow on purpose cannot hold the admin API, or the file descriptors the
//! host shares with its ingest port: half-sent request heads are cut off after
//! `header_timeout`, connections with nothing read or written after `idle_timeout`, and
//! connections beyond `max_connections` are closed as soon as they are accepted. Real TCP
//! against the real binary, run with 256 open files allowed.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tests::{json, promtool_check_metrics, send_json, wait_for_lines, Host, Metrics, Value};

/// What a client sends before it stops: a request head without its closing blank line.
const HALF_A_REQUEST: &[u8] = b"GET /health/live HTTP/1.1\r\nHost: x\r\n";
/// How long a connection the host refused may take to be seen closed.
const AT_ONCE: Duration = Duration::from_secs(3);
/// The file descriptors the host may open (soft and hard limit).
const OPEN_FILES: u64 = 256;

/// The host's open-file limit, soft and hard, set in the child before it runs the host.
fn limit_open_files(cmd: &mut Command) {
    let limit = libc::rlimit {
        rlim_cur: OPEN_FILES as libc::rlim_t,
        rlim_max: OPEN_FILES as libc::rlim_t,
    };
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls are
    // allowed; it makes one (setrlimit) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// `Max open files` of a running process, as `/proc/PID/limits` shows it: (soft, hard).
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("proc limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-file limit in:\n{limits}"));
    let mut values = line["Max open files".len()..].split_whitespace();
    let mut next = || values.next().unwrap_or_default().to_owned();
    (next(), next())
}

fn connect(address: &str) -> TcpStream {
    let addr: SocketAddr = address.parse().expect("the admin address is ip:port");
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {address}: {e}"));
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("set_write_timeout");
    stream
}

/// Opens a connection and sends half a request head; a host that refused the connection may
/// already have closed it, so the write may fail.
fn half_a_request(address: &str) -> TcpStream {
    let mut stream = connect(address);
    let _ = stream.write_all(HALF_A_REQUEST);
    stream
}

/// Whether the peer has closed `stream` (end of file or reset); `None` while it stays open.
/// Whatever the host sends is read and thrown away.
fn poll_closed(stream: &mut TcpStream, wait: Duration) -> Option<()> {
    stream
        .set_read_timeout(Some(wait))
        .expect("set_read_timeout");
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => Some(()),
        Ok(_) => poll_closed(stream, wait),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ) =>
        {
            Some(())
        }
        Err(e) => panic!("reading from the admin API failed: {e}"),
    }
}

/// Waits until the host closes `stream`; how long after `since` that was, or `None` if the
/// connection was still open at `since + limit`.
fn closed_after(stream: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    while since.elapsed() < limit {
        if poll_closed(stream, Duration::from_millis(50)).is_some() {
            return Some(since.elapsed());
        }
    }
    None
}

fn is_open(stream: &mut TcpStream) -> bool {
    poll_closed(stream, Duration::from_millis(100)).is_none()
}

/// Reads one HTTP/1.1 answer with a `content-length` body from a kept-alive connection;
/// returns its status.
fn read_answer(stream: &mut TcpStream) -> u16 {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set_read_timeout");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buf).expect("reading an answer");
        assert!(n > 0, "the host closed the connection mid-answer");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .unwrap_or_else(|| panic!("no content-length in {head:?}"))
        .trim()
        .parse()
        .expect("content-length is a number");
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).expect("reading a body");
        assert!(n > 0, "the host closed the connection mid-body");
        raw.extend_from_slice(&buf[..n]);
    }
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"))
}

/// `GET path` with `Connection: close`: the status and body, or `None` if the host closed
/// the connection without answering (it was refused) or did not answer within 5 s.
fn try_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = connect(address);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set_read_timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Polls `GET path` until it answers 200, for at most `limit`; the body and how long it took.
fn get_when_answered(address: &str, path: &str, limit: Duration) -> Option<(String, Duration)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some((200, body)) = try_get(address, path) {
            return Some((body, start.elapsed()));
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

/// `/metrics`, checked by promtool, with the admin server's families declared and helped.
fn admin_metrics(host: &Host, address: &str) -> Metrics {
    let (body, _) = get_when_answered(address, "/metrics", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("/metrics did not answer; the log:\n{}", host.log()));
    let check = promtool_check_metrics(&body, host.dir());
    assert!(
        check.status.success(),
        "promtool check metrics failed:\n{}{}\n{body}",
        check.stdout,
        check.stderr
    );
    let m = Metrics::parse(&body);
    for (family, kind) in [
        ("host_admin_connections", "gauge"),
        ("host_admin_connections_total", "counter"),
        ("host_admin_connection_timeouts_total", "counter"),
    ] {
        assert_eq!(m.family_type(family), Some(kind), "{family}:\n{body}");
        assert!(
            m.help.get(family).is_some_and(|h| !h.is_empty()),
            "{family} has no HELP"
        );
    }
    m
}

/// Sends SIGTERM and checks that the host exits 0 within `limit`, whatever its clients hold.
fn stop_promptly(host: &mut Host, limit: Duration) -> Value {
    let start = Instant::now();
    let summary = host.stop();
    let took = start.elapsed();
    eprintln!("stopped in {took:?}");
    assert!(
        took < limit,
        "the host took {took:?} to stop (limit {limit:?}); its log:\n{}",
        host.log()
    );
    summary
}

const HALF_SENT_PIPELINE: &str = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  export:
    plugin: jsonl
    inputs: [in]
    config: { path: "{{dir}}/out.jsonl" }
monitoring:
  mode: direct
  admin: { listen: "127.0.0.1:0", header_timeout: 2s }
  health: { interval: 200ms }
"#;

#[test]
fn half_sent_requests_do_not_hold_the_api_or_the_ingest_port() {
    let mut host = Host::start_with(HALF_SENT_PIPELINE, limit_open_files);
    let limit = OPEN_FILES.to_string();
    assert_eq!(open_file_limits(host.pid()), (limit.clone(), limit));
    let address = host.admin_address();

    // First, while slots are free: one connection that never sends, and one that sends a
    // byte of its head every 200 ms. The head's deadline runs from the accept, whatever
    // arrives, so both end after header_timeout (2 s) although neither is ever idle for long.
    let silent_since = Instant::now();
    let mut silent = connect(&address);
    let trickler = {
        // Connected here, not in the thread, so that it is sure to come before the rest.
        let since = Instant::now();
        let mut stream = connect(&address);
        thread::spawn(move || {
            let head = [HALF_A_REQUEST, &b"X-Slow: 1\r\n".repeat(100)].concat();
            for byte in head {
                if since.elapsed() > Duration::from_secs(20) {
                    break;
                }
                if stream.write_all(&[byte]).is_err()
                    || poll_closed(&mut stream, Duration::from_millis(200)).is_some()
                {
                    return Some(since.elapsed());
                }
            }
            None
        })
    };

    // More half-sent requests than the host has file descriptors, all kept open.
    let held: Vec<TcpStream> = (0..300).map(|_| half_a_request(&address)).collect();
    let opened = Instant::now();

    // While they are held, the ingest port still takes peers and delivers their messages.
    let messages: Vec<Value> = (0..20).map(|i| json!({ "id": i })).collect();
    send_json(&host.endpoint, &messages);
    wait_for_lines(&host.path("out.jsonl"), messages.len());

    // The held connections time out after header_timeout (2 s) and free their slots; the
    // probe answers then, with room for a busy machine (not a speed: without the timeout
    // it would never answer).
    let within = Duration::from_secs(8);
    let (live, _) = get_when_answered(&address, "/health/live", within)
        .filter(|_| opened.elapsed() < within)
        .unwrap_or_else(|| {
            panic!(
                "/health/live did not answer within {within:?} of 300 half-sent requests; the log:\n{}",
                host.log()
            )
        });
    assert!(live.contains("\"live\":true"), "{live}");
    eprintln!(
        "/health/live answered {:?} after the 300 half-sent requests",
        opened.elapsed()
    );

    let closed = closed_after(&mut silent, silent_since, Duration::from_secs(15));
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(1500)),
        "a connection that never sent anything, with header_timeout 2s: closed after {closed:?}"
    );
    let trickled = trickler.join().expect("the trickling client panicked");
    assert!(
        trickled.is_some_and(|t| t >= Duration::from_millis(1500) && t < Duration::from_secs(10)),
        "a head sent a byte every 200 ms, with header_timeout 2s: closed after {trickled:?}"
    );

    let m = admin_metrics(&host, &address);
    let accepted = m.value("host_admin_connections_total", &[("outcome", "accepted")]);
    let refused = m.value("host_admin_connections_total", &[("outcome", "refused")]);
    assert!(
        refused >= 1.0 && accepted + refused >= 302.0,
        "accepted {accepted}, refused {refused}:\n{}",
        m.text
    );
    let header_timeouts = m.value(
        "host_admin_connection_timeouts_total",
        &[("timeout", "header")],
    );
    assert!(header_timeouts >= 2.0, "{}", m.text);
    eprintln!(
        "accepted {accepted}, refused {refused}, header timeouts {header_timeouts}, \
         {:?} after the half-sent requests",
        opened.elapsed()
    );

    // Stopping does not wait for clients that still hold their end open.
    let summary = stop_promptly(&mut host, Duration::from_secs(15));
    assert_eq!(tests::totals(&summary).0, messages.len() as u64);
    drop(held);
}

const IDLE_PIPELINE: &str = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  export:
    plugin: jsonl
    inputs: [in]
    config: { path: "{{dir}}/out.jsonl" }
monitoring:
  mode: direct
  admin: { listen: "127.0.0.1:0", header_timeout: 30s, idle_timeout: 2s }
"#;

#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let mut host = Host::start_with(IDLE_PIPELINE, limit_open_files);
    let address = host.admin_address();

    // A connection that never sends: header_timeout is far off, idle_timeout is not.
    let since = Instant::now();
    let mut silent = connect(&address);
    thread::sleep(Duration::from_millis(1000));
    assert!(is_open(&mut silent), "closed before idle_timeout");
    let closed = closed_after(&mut silent, since, Duration::from_secs(15));
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(1500)),
        "a connection that never sent anything, with idle_timeout 2s: closed after {closed:?}"
    );

    // A kept-alive connection in use stays open past idle_timeout: only silence counts.
    let mut kept = connect(&address);
    let in_use = Instant::now();
    loop {
        kept.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("a kept-alive request");
        assert_eq!(read_answer(&mut kept), 200);
        if in_use.elapsed() >= Duration::from_secs(4) {
            break;
        }
        thread::sleep(Duration::from_millis(600));
    }
    // Then it goes quiet between requests, and is closed.
    let quiet = Instant::now();
    thread::sleep(Duration::from_millis(1000));
    assert!(is_open(&mut kept), "closed before idle_timeout");
    let closed = closed_after(&mut kept, quiet, Duration::from_secs(15));
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(1500)),
        "a quiet kept-alive connection, with idle_timeout 2s: closed after {closed:?}"
    );

    let m = admin_metrics(&host, &address);
    let timeouts =
        |kind: &str| m.value("host_admin_connection_timeouts_total", &[("timeout", kind)]);
    assert!(timeouts("idle") >= 2.0, "{}", m.text);
    assert_eq!(timeouts("header"), 0.0, "{}", m.text);
    assert_eq!(
        m.value("host_admin_connections_total", &[("outcome", "refused")]),
        0.0
    );

    stop_promptly(&mut host, Duration::from_secs(15));
}

const CAPPED_PIPELINE: &str = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  export:
    plugin: jsonl
    inputs: [in]
    config: { path: "{{dir}}/out.jsonl" }
monitoring:
  mode: direct
  admin:
    listen: "127.0.0.1:0"
    max_connections: 20
    header_timeout: 30s
    idle_timeout: 30s
"#;

#[test]
fn connections_beyond_max_connections_are_closed_at_once() {
    let mut host = Host::start_with(CAPPED_PIPELINE, limit_open_files);
    let address = host.admin_address();

    // Twenty held, none of which a timeout will end during the test: half never send, half
    // send half a request.
    let mut held: Vec<TcpStream> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                connect(&address)
            } else {
                half_a_request(&address)
            }
        })
        .collect();
    // Accepted in the order they connected, so every later one finds the slots taken.
    for _ in 0..5 {
        let since = Instant::now();
        let mut extra = half_a_request(&address);
        let closed = closed_after(&mut extra, since, AT_ONCE);
        assert!(
            closed.is_some(),
            "a connection beyond max_connections (20) still open after {AT_ONCE:?}"
        );
    }
    for (i, stream) in held.iter_mut().enumerate() {
        assert!(is_open(stream), "held connection {i} was closed");
    }

    // A slot given back is a slot to use.
    drop(held.pop());
    let m = admin_metrics(&host, &address);
    assert!(
        m.value("host_admin_connections_total", &[("outcome", "refused")]) >= 5.0,
        "{}",
        m.text
    );
    assert!(
        m.value("host_admin_connections_total", &[("outcome", "accepted")]) >= 21.0,
        "{}",
        m.text
    );
    // The 19 still held and the one asking.
    assert_eq!(m.value("host_admin_connections", &[]), 20.0, "{}", m.text);

    // Ten of the held connections are mid-request and their clients never finish: stopping
    // must not wait for them, nor for the header timeout (30 s).
    stop_promptly(&mut host, Duration::from_secs(10));
    for (i, stream) in held.iter_mut().enumerate() {
        assert!(
            poll_closed(stream, Duration::from_secs(2)).is_some(),
            "held connection {i} is still open after the host exited"
        );
    }
}
