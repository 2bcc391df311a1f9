//! `host bench`: in one run, how fast messages can be received at all, how fast the pipeline
//! takes them end to end, what each message costs the host, how a fan-out scales, and how long
//! a message takes from ingest to delivery at a fixed offered rate.
//!
//! The messages come from a second process (`host publish`, a PUSH socket of the host's ZMTP
//! code), so the CPU time measured is the host's own. Machines here are shared and noisy, and
//! their CPU changes between sessions: the figures that matter are the ratios within one run,
//! and every round measures every variant back to back. The table shows each variant's median.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use zeromq::{Socket, SocketRecv};

use crate::{
    config::{Fuse, MonitoringMode, PipelineConfig},
    monitor::LatencySummary,
    plugins::registry::Registry,
    publish::generated_message,
    source::zmtp::{self, Endpoint, Limits, Listener, Role, Sink},
    topology::build_topology,
};

pub struct BenchOptions {
    pub pipeline: PathBuf,
    pub count: u64,
    pub modes: Vec<MonitoringMode>,
    pub rounds: usize,
    /// Messages per second offered for the latency measurement.
    pub latency_rate: u64,
    /// Exporters in the fan-out measurement.
    pub fanout: usize,
}

/// What one timed run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rate: f64,
    /// Host CPU time (user + system) per message, in microseconds.
    cpu_us: f64,
    /// Host allocations per message.
    allocs: f64,
}

/// One variant's runs over the rounds.
#[derive(Debug, Clone, Default)]
struct Measured {
    name: String,
    runs: Vec<Run>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

impl Measured {
    fn new(name: impl Into<String>) -> Measured {
        Measured {
            name: name.into(),
            runs: Vec::new(),
        }
    }
    fn rate(&self) -> f64 {
        median(self.runs.iter().map(|r| r.rate).collect())
    }
    fn cpu_us(&self) -> f64 {
        median(self.runs.iter().map(|r| r.cpu_us).collect())
    }
    fn allocs(&self) -> f64 {
        median(self.runs.iter().map(|r| r.allocs).collect())
    }
}

/// The process's CPU time so far (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage(2) writes into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The machine's CPU model, to name next to the figures.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A `host publish` process sending `count` messages to `endpoint` (at `rate` per second).
struct Sender(Child);

impl Sender {
    fn start(endpoint: &str, count: u64, rate: Option<u64>) -> anyhow::Result<Sender> {
        let exe = std::env::current_exe().context("cannot find the host binary")?;
        let mut cmd = Command::new(exe);
        cmd.args(["publish", "--to", endpoint, "--count", &count.to_string()])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(rate) = rate {
            cmd.args(["--rate", &rate.to_string()]);
        }
        Ok(Sender(cmd.spawn().context("cannot start `host publish`")?))
    }

    /// Fails if the sender ended with an error before everything was received.
    fn check(&mut self) -> anyhow::Result<()> {
        match self.0.try_wait()? {
            Some(status) if !status.success() => bail!("the sender failed: {status}"),
            _ => Ok(()),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Measures one run: the host's CPU time and allocations from just before the sender starts,
/// the time from the first message's arrival (`first`, as the receiver noted it: a poll
/// would find it up to a timer tick late, a large error on a short run) until `done` says
/// all are in.
async fn timed(
    start: impl FnOnce() -> anyhow::Result<Sender>,
    first: impl Fn() -> Option<Instant>,
    done: impl Fn() -> bool,
) -> anyhow::Result<(Duration, Duration, u64)> {
    let give_up = Instant::now() + Duration::from_secs(120);
    let cpu0 = cpu_time();
    crate::alloc::start_counting();
    let allocs0 = crate::alloc::allocations();
    let mut sender = start()?;
    while !done() {
        sender.check()?;
        if Instant::now() > give_up {
            let what = if first().is_some() {
                "not everything arrived"
            } else {
                "nothing was received"
            };
            bail!("{what} within 120 s");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let end = Instant::now();
    let allocs = crate::alloc::allocations() - allocs0;
    crate::alloc::stop_counting();
    let Some(start) = first() else {
        bail!("the receiver did not note its first message");
    };
    Ok((end - start, cpu_time() - cpu0, allocs))
}

fn run_of(count: u64, (elapsed, cpu, allocs): (Duration, Duration, u64)) -> Run {
    let n = count as f64;
    Run {
        rate: n / elapsed.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / n,
        allocs: allocs as f64 / n,
    }
}

/// A bare `zeromq` PULL socket receiving.
async fn raw_zeromq(count: u64) -> anyhow::Result<Run> {
    let mut pull = zeromq::PullSocket::new();
    let endpoint = pull.bind("tcp://127.0.0.1:0").await?.to_string();
    let received = Arc::new(AtomicU64::new(0));
    let first = Arc::new(OnceLock::new());
    let (counter, first_at) = (received.clone(), first.clone());
    let reader = tokio::spawn(async move {
        for _ in 0..count {
            if pull.recv().await.is_err() {
                break;
            }
            first_at.get_or_init(Instant::now);
            counter.fetch_add(1, Relaxed);
        }
    });
    let times = timed(
        || Sender::start(&endpoint, count, None),
        || first.get().copied(),
        || received.load(Relaxed) >= count,
    )
    .await;
    reader.abort();
    Ok(run_of(count, times?))
}

/// Counts whole messages, for the host's own receive side measured alone, and notes when
/// the first came.
struct Counting(Arc<AtomicU64>, Arc<OnceLock<Instant>>);

impl Sink for Counting {
    fn message(&mut self, _first: &[u8], _last: &[u8], _at: u64) {
        self.1.get_or_init(Instant::now);
        self.0.fetch_add(1, Relaxed);
    }
    fn too_large(&mut self) {}
    fn full(&self) -> bool {
        false
    }
    async fn flush(&mut self) {}
}

/// The host's own ZMTP receive side (what the pipeline's source runs), with no decoding.
async fn raw_host(count: u64) -> anyhow::Result<Run> {
    let text = "tcp://127.0.0.1:0";
    let listener = Listener::bind(&Endpoint::parse(text)?, text).await?;
    let endpoint = listener.endpoint();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let limits = Limits {
        max_message_bytes: 1 << 20,
        max_connections: 16,
        handshake_timeout: Duration::from_secs(10),
    };
    let first = Arc::new(OnceLock::new());
    let (counter, first_at) = (received.clone(), first.clone());
    let reader = tokio::spawn(zmtp::run_bound(
        "bench".into(),
        listener,
        Role::Pull,
        limits,
        Arc::default(),
        move || Counting(counter.clone(), first_at.clone()),
        stop,
    ));
    let times = timed(
        || Sender::start(&endpoint, count, None),
        || first.get().copied(),
        || received.load(Relaxed) >= count,
    )
    .await;
    let _ = stop_tx.send(true);
    let _ = reader.await;
    Ok(run_of(count, times?))
}

/// Runs `cfg` on `count` messages (offered at `rate`, or as fast as they go); returns the
/// run and the ingest-to-delivery latency over every delivering stage.
async fn pipeline(
    mut cfg: PipelineConfig,
    count: u64,
    rate: Option<u64>,
) -> anyhow::Result<(Run, LatencySummary)> {
    // One source, bound to a free port: the benchmark sends to it.
    let Some((_, source)) = cfg.sources.first_mut() else {
        bail!("the pipeline has no source");
    };
    source.bind = Some("tcp://127.0.0.1:0".into());
    source.connect = None;
    // A benchmark must not collide with a running host's admin port.
    cfg.monitoring.admin.listen = None;
    let registry = Registry::for_pipeline(&cfg.plugins);
    let topology = build_topology(cfg, &registry)?;
    let running = topology.start().await?;
    let endpoint = running.endpoints[0].1.clone();
    let counters = running.monitor.pipeline.clone();
    let times = timed(
        || Sender::start(&endpoint, count, rate),
        || counters.first_admitted(),
        || {
            let t = counters.totals();
            t.received >= count && t.in_flight == 0
        },
    )
    .await;
    let latency = running.monitor.end_to_end();
    let snapshot = running.shutdown().await;
    let times = times?;
    let p = &snapshot.pipeline;
    if p.received != count {
        bail!("the pipeline received {} of {count} messages", p.received);
    }
    // A figure from a run that lost or double-counted messages would measure something else.
    if p.completed + p.filtered + p.failed != p.received || p.in_flight != 0 {
        bail!(
            "the run's accounting does not reconcile: received {}, completed {}, filtered {}, failed {}, in flight {}",
            p.received, p.completed, p.filtered, p.failed, p.in_flight
        );
    }
    Ok((run_of(count, times), latency))
}

fn load(path: &Path, mode: MonitoringMode) -> anyhow::Result<PipelineConfig> {
    let mut cfg = PipelineConfig::load(path)?;
    cfg.monitoring.mode = mode;
    Ok(cfg)
}

/// One source fanned out to `n` `null` exporters, on one thread (`runtime.fuse: trees`, the
/// default) or each on its own (`none`).
fn fanout_config(n: usize, fuse: Fuse) -> anyhow::Result<PipelineConfig> {
    let mut text = String::from(
        "sources:\n  in: { type: zmq, socket: pull, bind: \"tcp://127.0.0.1:0\" }\nstages:\n",
    );
    for i in 0..n {
        text.push_str(&format!("  out{i}: {{ plugin: \"null\", inputs: [in] }}\n"));
    }
    text.push_str("monitoring: { mode: direct, admin: { listen: null } }\n");
    let mut cfg = PipelineConfig::parse(Path::new("<fan-out>"), &text, |_| None)?;
    cfg.runtime.fuse = fuse;
    Ok(cfg)
}

/// The round with the median p99.
fn median_by_p99(mut rounds: Vec<(Run, LatencySummary)>) -> Option<(Run, LatencySummary)> {
    rounds.sort_by(|a, b| a.1.p99.total_cmp(&b.1.p99));
    let middle = rounds.len() / 2;
    (!rounds.is_empty()).then(|| rounds.swap_remove(middle))
}

/// Runs the benchmark and prints the table.
pub async fn run(opts: BenchOptions) -> anyhow::Result<()> {
    let out_dir = std::env::temp_dir().join(format!("host-bench-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir)?;
    // The default pipeline writes under ${OUT_DIR:-out}; keep benchmark output out of it.
    std::env::set_var("OUT_DIR", &out_dir);
    if !crate::alloc::counting_installed() {
        eprintln!("note: this binary does not count allocations (allocs/msg shows 0)");
    }
    let mut raw_z = Measured::new("raw zeromq PULL");
    let mut raw_h = Measured::new("raw host ZMTP receive");
    let mut modes: Vec<Measured> = opts
        .modes
        .iter()
        .map(|m| Measured::new(format!("pipeline, monitoring {}", m.as_str())))
        .collect();
    // A pipeline with stages that share a thread (`runtime.fuse`) is measured with one thread
    // per stage too, to show what fusing them does.
    let has_fused = {
        let cfg = load(&opts.pipeline, MonitoringMode::Direct)?;
        cfg.stage_threads().len() < cfg.stages.len()
    };
    let unfused_cfg = || -> anyhow::Result<PipelineConfig> {
        let mut cfg = load(&opts.pipeline, MonitoringMode::Direct)?;
        cfg.runtime.fuse = Fuse::None;
        Ok(cfg)
    };
    let mut unfused = has_fused.then(|| Measured::new("pipeline, one thread per stage"));
    let mut unfused_latencies = Vec::new();
    let mut fan_one = Measured::new("fan-out to 1 null exporter");
    let mut fan_n = Measured::new(format!("fan-out to {} null exporters", opts.fanout));
    let mut fan_n_apart = Measured::new(format!("fan-out to {}, one thread each", opts.fanout));
    let mut latencies = Vec::new();
    for round in 0..opts.rounds {
        raw_z.runs.push(raw_zeromq(opts.count).await?);
        raw_h.runs.push(raw_host(opts.count).await?);
        for (i, mode) in opts.modes.iter().enumerate() {
            let cfg = load(&opts.pipeline, *mode)?;
            modes[i].runs.push(pipeline(cfg, opts.count, None).await?.0);
            let _ = std::fs::remove_dir_all(&out_dir);
        }
        if let Some(unfused) = &mut unfused {
            unfused
                .runs
                .push(pipeline(unfused_cfg()?, opts.count, None).await?.0);
            let _ = std::fs::remove_dir_all(&out_dir);
        }
        for (measured, n, fuse) in [
            (&mut fan_one, 1, Fuse::Trees),
            (&mut fan_n, opts.fanout, Fuse::Trees),
            (&mut fan_n_apart, opts.fanout, Fuse::None),
        ] {
            let cfg = fanout_config(n, fuse)?;
            measured.runs.push(pipeline(cfg, opts.count, None).await?.0);
        }
        // About a second of traffic at the offered rate.
        let cfg = load(&opts.pipeline, MonitoringMode::Direct)?;
        let paced = opts.latency_rate;
        let (run, latency) = pipeline(cfg, paced, Some(paced)).await?;
        latencies.push((run, latency));
        if has_fused {
            unfused_latencies.push(pipeline(unfused_cfg()?, paced, Some(paced)).await?);
        }
        let _ = std::fs::remove_dir_all(&out_dir);
        eprintln!("round {}/{} done", round + 1, opts.rounds);
    }

    println!(
        "{} messages of ~{} bytes, median of {} round(s), pipeline {}, CPU: {}",
        opts.count,
        generated_message(0, 0.0).len(),
        opts.rounds,
        opts.pipeline.display(),
        cpu_model()
    );
    let raw = raw_h.rate();
    println!(
        "{:<40} {:>12} {:>9} {:>11} {:>11}",
        "variant", "msg/s", "vs raw", "cpu us/msg", "allocs/msg"
    );
    for m in std::iter::once(&raw_z)
        .chain(std::iter::once(&raw_h))
        .chain(&modes)
        .chain(&unfused)
        .chain([&fan_one, &fan_n, &fan_n_apart])
    {
        println!(
            "{:<40} {:>12.0} {:>9.3} {:>11.3} {:>11.2}",
            m.name,
            m.rate(),
            m.rate() / raw,
            m.cpu_us(),
            m.allocs()
        );
    }
    println!(
        "ratio host ZMTP receive / zeromq PULL: {:.3}",
        raw_h.rate() / raw_z.rate()
    );
    if let Some(disabled) = opts
        .modes
        .iter()
        .position(|m| *m == MonitoringMode::Disabled)
    {
        for (i, mode) in opts.modes.iter().enumerate() {
            if *mode != MonitoringMode::Disabled {
                println!(
                    "ratio {} / disabled: {:.3}",
                    mode.as_str(),
                    modes[i].rate() / modes[disabled].rate()
                );
            }
        }
    }
    let direct = opts.modes.iter().position(|m| *m == MonitoringMode::Direct);
    if let (Some(unfused), Some(direct)) = (&unfused, direct) {
        println!(
            "ratio fused / one thread per stage: {:.3} (cpu {:.3})",
            modes[direct].rate() / unfused.rate(),
            modes[direct].cpu_us() / unfused.cpu_us()
        );
    }
    println!(
        "ratio fan-out {} / 1: {:.3} (one thread each: {:.3})",
        opts.fanout,
        fan_n.rate() / fan_one.rate(),
        fan_n_apart.rate() / fan_one.rate()
    );
    for (latencies, how) in [
        (latencies, "pipeline direct"),
        (unfused_latencies, "one thread per stage"),
    ] {
        if let Some((run, latency)) = median_by_p99(latencies) {
            println!(
                "ingest -> delivery at {} msg/s offered ({how}, took {:.0} msg/s, cpu {:.3} us/msg): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                opts.latency_rate, run.rate, run.cpu_us, latency.p50, latency.p99, latency.max
            );
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    Ok(())
}
