//! What the `otlp` exporter costs per record: the real host, with `host publish` feeding it
//! generated messages, exporting them to a local OTLP receiver (in this process) that counts
//! and discards what it gets, over gRPC and over OTLP/HTTP, against a baseline pipeline
//! whose only stage drops every record (the cost of receiving, decoding and accounting).
//!
//! Reported per record, in CPU microseconds (user + system, from /proc): the whole host,
//! the host minus the baseline, and the stage's sending thread alone (mapping, encoding,
//! gzip, the client). Run after `cargo build --workspace --release`:
//!
//! ```text
//! cargo run --release -p tests --bin otlp_bench -- [COUNT] [ROUNDS] [ONLY]
//! ```

use std::{
    fs,
    process::Command,
    time::{Duration, Instant},
};

use tests::{host_bin, run_with_timeout, wait_until, Answer, Host, OtlpProtocol, OtlpReceiver};

/// CPU seconds (user + system) of `/proc/.../stat`.
fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = fs::read_to_string(stat_path).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// The host's sending thread of stage `out` (named `send-out`), if it has one.
fn sender_thread(pid: u32) -> Option<String> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.flatten().find_map(|t| {
        let comm = fs::read_to_string(t.path().join("comm")).ok()?;
        (comm.trim() == "send-out").then(|| t.path().join("stat").display().to_string())
    })
}

struct Run {
    /// Messages the host received (and settled).
    records: u64,
    host: f64,
    sender: f64,
    seconds: f64,
}

fn pipeline(exporter: Option<(&OtlpReceiver, OtlpProtocol)>, compression: &str) -> String {
    let stage = match exporter {
        Some((receiver, protocol)) => format!(
            r#"
  out:
    plugin: otlp
    inputs: [in]
    config:
      endpoint: "{}"
      protocol: {}
      compression: {compression}
      body_field: msg
      severity_field: level
      timestamp_field: sent_at
      resource: {{ service.name: bench }}
      sending: {{ batch_size: 1024, max_delay: 50ms, queue_size: 20000 }}
"#,
            receiver.endpoint(),
            protocol.name()
        ),
        None => r#"
  out:
    plugin: rules
    inputs: [in]
    config:
      drop:
        - { field: level, equals: info }
        - { field: level, equals: debug }
        - { field: level, equals: warn }
        - { field: level, equals: error }
"#
        .to_owned(),
    };
    format!(
        r#"
plugins:
  paths: ["{{{{plugins}}}}"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:{stage}"#
    )
}

fn run(count: u64, exporter: Option<OtlpProtocol>, compression: &str) -> Run {
    let receiver = exporter.map(|p| {
        let r = OtlpReceiver::start(p);
        r.answer(Answer::Discard);
        r
    });
    let text = pipeline(receiver.as_ref().zip(exporter), compression);
    let mut host = Host::start(&text);
    let pid = host.pid();
    let host_stat = format!("/proc/{pid}/stat");
    let before = cpu_seconds(&host_stat);
    let sender = sender_thread(pid);
    let sender_before = sender.as_deref().map_or(0.0, cpu_seconds);
    let started = Instant::now();
    let mut publish = Command::new(host_bin());
    publish
        .args(["publish", "--to", &host.endpoint, "--count"])
        .arg(count.to_string());
    let out = run_with_timeout(publish);
    assert!(out.status.success(), "host publish failed: {}", out.stderr);
    // Until the host has settled what it received and nothing more comes in (it may receive
    // fewer than `count`: see the README), then until the receiver has every record exported.
    let mut last = (0, Instant::now());
    let settled = wait_until(Duration::from_secs(120), || {
        let p = host.get_json("/api/metrics")["pipeline"].clone();
        let received = p["received"].as_u64().unwrap_or(0);
        if received != last.0 {
            last = (received, Instant::now());
        }
        p["in_flight"] == 0
            && (received == count || (received > 0 && last.1.elapsed() > Duration::from_secs(2)))
    });
    let pipeline = host.get_json("/api/metrics")["pipeline"].clone();
    assert!(
        settled,
        "the host did not settle: {pipeline}\n{}",
        host.log()
    );
    let received = pipeline["received"].as_u64().unwrap_or(0);
    let exported = pipeline["completed"].as_u64().unwrap_or(0);
    if let Some(r) = &receiver {
        let all = wait_until(Duration::from_secs(30), || r.received().items >= exported);
        assert!(
            all && exported == received,
            "the receiver counted {} of {exported} exported, the host says {pipeline}\n{}",
            r.received().items,
            host.log()
        );
    }
    if received < count {
        eprintln!("note: the host received {received} of {count} messages published");
    }
    let seconds = started.elapsed().as_secs_f64();
    let run = Run {
        records: received,
        host: cpu_seconds(&host_stat) - before,
        sender: sender.as_deref().map_or(0.0, cpu_seconds) - sender_before,
        seconds,
    };
    host.stop();
    run
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    // Only the runs whose name holds this (the baseline always runs).
    let only = args.next().unwrap_or_default();
    let us = |seconds: f64, records: u64| seconds * 1e6 / records.max(1) as f64;
    println!("{count} messages (host publish), median of {rounds} round(s), per record:");
    let mut baseline = 0.0;
    for (name, exporter, compression) in [
        ("baseline (drop all)", None, "none"),
        ("otlp grpc, gzip", Some(OtlpProtocol::Grpc), "gzip"),
        ("otlp http, gzip", Some(OtlpProtocol::Http), "gzip"),
        ("otlp grpc, none", Some(OtlpProtocol::Grpc), "none"),
        ("otlp http, none", Some(OtlpProtocol::Http), "none"),
    ] {
        if exporter.is_some() && !name.contains(&only) {
            continue;
        }
        let runs: Vec<Run> = (0..rounds)
            .map(|_| run(count, exporter, compression))
            .collect();
        let host = median(runs.iter().map(|r| us(r.host, r.records)).collect());
        let sender = median(runs.iter().map(|r| us(r.sender, r.records)).collect());
        let rate = median(runs.iter().map(|r| r.records as f64 / r.seconds).collect());
        if exporter.is_none() {
            baseline = host;
            println!("  {name:<20} host {host:6.2} us CPU  ({rate:>8.0} records/s)");
        } else {
            println!(
                "  {name:<20} host {host:6.2} us CPU, {:6.2} us above the baseline ({:.2}x), sending thread {sender:6.2} us  ({rate:>8.0} records/s)",
                host - baseline,
                host / baseline,
            );
        }
    }
}
