//! `host bench`: in one run, the rate at which a bare ZeroMQ PULL socket receives the
//! generated messages, and the rate at which a pipeline takes the same messages end to end
//! (every message settled as completed, filtered or failed), in each monitoring mode asked
//! for. Machines here are shared and noisy, so the figures that matter are the ratios, and
//! every round measures all variants back to back.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Instant,
};

use anyhow::{bail, Context};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::{
    config::{MonitoringMode, PipelineConfig},
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
}

/// Where the pipeline variants start in the results: after the two raw receives.
const PIPELINES: usize = 2;

/// One variant's rates over the rounds, in messages per second.
#[derive(Debug, Clone)]
pub struct Measured {
    pub name: String,
    pub rates: Vec<f64>,
}

impl Measured {
    pub fn median(&self) -> f64 {
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or(0.0)
    }
}

fn messages(count: u64) -> Vec<ZmqMessage> {
    let sent_at = crate::clock::unix_secs();
    (0..count)
        .map(|i| ZmqMessage::from(generated_message(i, sent_at)))
        .collect()
}

/// Sends pre-built messages as fast as the peer takes them.
async fn push_all(endpoint: String, messages: Vec<ZmqMessage>) -> anyhow::Result<()> {
    let mut push = zeromq::PushSocket::new();
    push.connect(&endpoint)
        .await
        .with_context(|| format!("connect to {endpoint}"))?;
    for m in messages {
        push.send(m).await.context("send")?;
    }
    // Keep the socket open until the receiver has everything; the caller aborts us.
    std::future::pending::<()>().await;
    Ok(())
}

async fn raw_receive(count: u64) -> anyhow::Result<f64> {
    let msgs = messages(count);
    let mut pull = zeromq::PullSocket::new();
    let endpoint = pull.bind("tcp://127.0.0.1:0").await?.to_string();
    let start = Instant::now();
    let publisher = tokio::spawn(push_all(endpoint, msgs));
    for _ in 0..count {
        pull.recv().await.context("raw receive")?;
    }
    let elapsed = start.elapsed();
    publisher.abort();
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// Counts whole messages, for the host's own receive side measured alone.
struct Counting(Arc<AtomicU64>);

impl Sink for Counting {
    fn message(&mut self, _first: &[u8], _last: &[u8], _at: u64) {
        self.0.fetch_add(1, Relaxed);
    }
    fn too_large(&mut self) {}
    fn full(&self) -> bool {
        false
    }
    async fn flush(&mut self) {}
}

/// The host's own ZMTP receive side (what the pipeline's source runs), with no decoding.
async fn host_receive(count: u64) -> anyhow::Result<f64> {
    let msgs = messages(count);
    let text = "tcp://127.0.0.1:0";
    let listener = Listener::bind(&Endpoint::parse(text)?, text).await?;
    let endpoint = listener.endpoint();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let limits = Limits {
        max_message_bytes: 1 << 20,
        max_connections: 16,
        handshake_timeout: std::time::Duration::from_secs(10),
    };
    let counter = received.clone();
    let reader = tokio::spawn(zmtp::run_bound(
        "bench".into(),
        listener,
        Role::Pull,
        limits,
        Arc::default(),
        move || Counting(counter.clone()),
        stop,
    ));
    let start = Instant::now();
    let publisher = tokio::spawn(push_all(endpoint, msgs));
    while received.load(Relaxed) < count {
        if publisher.is_finished() {
            publisher.await??;
            bail!("publisher stopped early");
        }
        tokio::time::sleep(std::time::Duration::from_micros(500)).await;
    }
    let elapsed = start.elapsed();
    publisher.abort();
    let _ = stop_tx.send(true);
    let _ = reader.await;
    Ok(count as f64 / elapsed.as_secs_f64())
}

async fn pipeline_run(opts: &BenchOptions, mode: MonitoringMode) -> anyhow::Result<f64> {
    let mut cfg = PipelineConfig::load(&opts.pipeline)?;
    cfg.monitoring.mode = mode;
    // One source, bound to a free port: the benchmark publishes to it.
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
    let msgs = messages(opts.count);
    let start = Instant::now();
    let publisher = tokio::spawn(push_all(endpoint, msgs));
    let counters = running.monitor.pipeline.clone();
    loop {
        let t = counters.totals();
        if t.received >= opts.count && t.in_flight == 0 {
            break;
        }
        if publisher.is_finished() {
            // push_all only returns on error.
            publisher.await??;
            bail!("publisher stopped early");
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    publisher.abort();
    let snapshot = running.shutdown().await;
    if snapshot.pipeline.received != opts.count {
        bail!(
            "pipeline received {} of {} messages",
            snapshot.pipeline.received,
            opts.count
        );
    }
    Ok(opts.count as f64 / elapsed.as_secs_f64())
}

/// Runs the benchmark and prints the table.
pub async fn run(opts: BenchOptions) -> anyhow::Result<Vec<Measured>> {
    let out_dir = tempfile_dir()?;
    // The default pipeline writes under ${OUT_DIR:-out}; keep benchmark output out of it.
    std::env::set_var("OUT_DIR", &out_dir);
    let mut results = vec![
        Measured {
            name: "raw zeromq PULL".into(),
            rates: vec![],
        },
        Measured {
            name: "raw host ZMTP receive".into(),
            rates: vec![],
        },
    ];
    for mode in &opts.modes {
        results.push(Measured {
            name: format!("pipeline, monitoring {}", mode.as_str()),
            rates: vec![],
        });
    }
    for round in 0..opts.rounds {
        results[0].rates.push(raw_receive(opts.count).await?);
        results[1].rates.push(host_receive(opts.count).await?);
        for (i, mode) in opts.modes.iter().enumerate() {
            results[i + PIPELINES]
                .rates
                .push(pipeline_run(&opts, *mode).await?);
            let _ = std::fs::remove_dir_all(&out_dir);
        }
        eprintln!("round {}/{} done", round + 1, opts.rounds);
    }
    let raw = results[0].median();
    println!(
        "{} messages of ~{} bytes, median of {} round(s), pipeline {}",
        opts.count,
        generated_message(0, 0.0).len(),
        opts.rounds,
        opts.pipeline.display()
    );
    println!("{:<36} {:>14} {:>10}", "variant", "msg/s", "vs raw");
    for m in &results {
        println!(
            "{:<36} {:>14.0} {:>10.3}",
            m.name,
            m.median(),
            m.median() / raw
        );
    }
    let disabled = opts
        .modes
        .iter()
        .position(|m| *m == MonitoringMode::Disabled)
        .map(|i| results[i + PIPELINES].median());
    if let Some(base) = disabled {
        for (i, mode) in opts.modes.iter().enumerate() {
            if *mode != MonitoringMode::Disabled {
                println!(
                    "ratio {} / disabled: {:.3}",
                    mode.as_str(),
                    results[i + PIPELINES].median() / base
                );
            }
        }
    }
    println!(
        "ratio host ZMTP receive / zeromq PULL: {:.3}",
        results[1].median() / raw
    );
    let _ = std::fs::remove_dir_all(&out_dir);
    Ok(results)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("host-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
