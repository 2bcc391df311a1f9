//! The `host` binary: the CLI around the `host` library.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use host::{
    bench::{self, BenchOptions},
    config::{ConfigError, MonitoringMode, PipelineConfig},
    logging::{self, LogFormat},
    plugins::{loader::LoadOptions, registry::Registry},
    publish::{self, Publish, PublishError, Published, SendSocket},
    topology::{self, build_topology},
};
use tokio::signal::unix::{signal, SignalKind};

// Records are small and many: every decoded message and every fan-out copy is a handful of
// allocations, freed on another thread. mimalloc's per-thread heaps make that cheap. (Each
// plugin library keeps its own allocator; abi_stable's types free through the allocator
// that made them.)
// Counting is off unless `host bench` turns it on (one relaxed load per allocation).
#[global_allocator]
static ALLOCATOR: host::alloc::Counting<mimalloc::MiMalloc> =
    host::alloc::Counting(mimalloc::MiMalloc);

/// Runs YAML pipelines of dynamically loaded stages over ZeroMQ.
#[derive(Parser)]
// Not `args_conflicts_with_subcommands`: it would refuse the global `--log-format` before a
// subcommand too. `main` refuses `--pipeline`/`--summary` with one instead.
#[command(version)]
struct Cli {
    /// The pipeline to run.
    #[arg(long, value_name = "FILE")]
    pipeline: Option<PathBuf>,
    /// Also write the final totals, as JSON, to this file on exit.
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
    /// How to write log lines to stderr: text (coloured only on a terminal, and not when
    /// NO_COLOR is set) or json (one object per line, for log shippers).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Loads every library and checks every stage config; prints the errors.
    Validate {
        #[arg(long, value_name = "FILE")]
        pipeline: PathBuf,
    },
    /// Lists every stage type the host can find.
    Plugins {
        /// Look where this pipeline's `plugins.paths` say.
        #[arg(long, value_name = "FILE", conflicts_with = "path")]
        pipeline: Option<PathBuf>,
        /// Look in these files or directories (default: next to the host binary).
        #[arg(long, value_name = "PATH")]
        path: Vec<PathBuf>,
        /// Load libraries that others than their owner can write, with a warning each
        /// (as `plugins.allow_insecure_paths: true` does).
        #[arg(long)]
        allow_insecure_paths: bool,
    },
    /// Sends N generated JSON messages (id, level, sent_at, msg, value); ends with a summary line.
    Publish {
        #[arg(long, value_name = "ENDPOINT")]
        to: String,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Messages per second (default: as fast as the peer takes them).
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long, value_enum, default_value_t = SendSocket::Push)]
        socket: SendSocket,
        /// Bind the endpoint instead of connecting to it.
        #[arg(long)]
        bind: bool,
    },
    /// Measures raw ZeroMQ receive against the pipeline end to end, in one run.
    Bench {
        #[arg(long, value_name = "FILE", default_value = "pipelines/default.yaml")]
        pipeline: PathBuf,
        #[arg(long, default_value_t = 200_000)]
        count: u64,
        /// Monitoring modes to measure the pipeline in.
        #[arg(long, value_delimiter = ',', default_value = "direct")]
        modes: Vec<Mode>,
        /// Rounds; the table shows each variant's median.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Messages per second offered to the pipeline for the latency measurement (at least
        /// 1000).
        #[arg(long, default_value_t = 400_000, value_parser = clap::value_parser!(u64).range(1000..))]
        latency_rate: u64,
        /// Exporters in the fan-out measurement (against one; at least 2).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..256))]
        fanout: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Disabled,
    Direct,
    #[value(name = "event_driven")]
    EventDriven,
}

impl From<Mode> for MonitoringMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Disabled => MonitoringMode::Disabled,
            Mode::Direct => MonitoringMode::Direct,
            Mode::EventDriven => MonitoringMode::EventDriven,
        }
    }
}

fn main() -> ExitCode {
    // A plugin that aborts, segfaults or exits ends the process; this names the stage first.
    host::crash::install();
    let cli = Cli::parse();
    if cli.command.is_some() && (cli.pipeline.is_some() || cli.summary.is_some()) {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--pipeline and --summary (before a subcommand) run a pipeline; they cannot be used with a subcommand",
            )
            .exit();
    }
    logging::init(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            logging::report_error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Exit status for a pipeline that is invalid (as opposed to one that failed to run).
const INVALID: u8 = 2;

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("host-rt")
        .build()
        .context("cannot start the async runtime")?;
    let result = run_on(&runtime, cli);
    // Dropping a runtime waits for its blocking threads without limit; a thread stuck in a
    // plugin must not keep the process from exiting once its work is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn run_on(runtime: &tokio::runtime::Runtime, cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => {
            let Some(pipeline) = cli.pipeline else {
                anyhow::bail!("nothing to do: pass --pipeline FILE, or see --help");
            };
            runtime.block_on(run_pipeline(pipeline, cli.summary))
        }
        Some(Command::Validate { pipeline }) => Ok(validate(&pipeline)),
        Some(Command::Plugins {
            pipeline,
            path,
            allow_insecure_paths,
        }) => plugins(pipeline, path, allow_insecure_paths),
        Some(Command::Publish {
            to,
            count,
            rate,
            socket,
            bind,
        }) => {
            let opts = Publish {
                endpoint: to,
                count,
                rate,
                socket,
                bind,
                progress: true,
            };
            let result = runtime.block_on(publish::publish(&opts));
            let published = match &result {
                Ok(p) | Err(PublishError::Send { published: p, .. }) => Some(p),
                Err(_) => None,
            };
            if let Some(p) = published {
                print_published(p);
            }
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bench {
            pipeline,
            count,
            modes,
            rounds,
            latency_rate,
            fanout,
        }) => {
            let opts = BenchOptions {
                pipeline,
                count,
                modes: modes.into_iter().map(Into::into).collect(),
                rounds: rounds.max(1),
                latency_rate,
                fanout: fanout as usize,
            };
            runtime.block_on(bench::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Raises the soft limit on open files to the hard one. Every admin client, ZeroMQ peer and
/// output file takes a descriptor, and the soft limit processes usually start with (1024) is
/// far below what the system allows. Not being able to is no reason not to run.
fn raise_open_file_limit() {
    let mut limit = match host::monitor::process::open_file_limit() {
        Ok(limit) => limit,
        Err(error) => {
            tracing::debug!(%error, "cannot read the open-file limit");
            return;
        }
    };
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the `rlimit` behind the pointer, valid for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            let error = std::io::Error::last_os_error();
            tracing::debug!(%error, "cannot raise the open-file limit");
        }
    }
    tracing::debug!(
        soft = limit.rlim_cur,
        hard = limit.rlim_max,
        "open-file limit"
    );
}

/// The last line of `host publish`, on stdout: as text (`published sent=.. errors=..
/// elapsed=.. rate=..`), or as a JSON object with `--log-format json`. Not when stdout and
/// stderr are both a terminal: there the finished progress bar already says it.
fn print_published(p: &Published) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
        return;
    }
    match logging::format() {
        LogFormat::Text => println!("{p}"),
        LogFormat::Json => println!("{}", p.to_json()),
    }
}

/// Prints config errors one per line; `None` when there were some.
fn report(result: Result<PipelineConfig, ConfigError>) -> Option<PipelineConfig> {
    match result {
        Ok(cfg) => Some(cfg),
        Err(ConfigError::Invalid(diagnostics)) => {
            for d in diagnostics {
                logging::report_error(&d.to_string());
            }
            None
        }
        Err(e) => {
            // An unreadable file is as invalid as a bad one: same message style, same status.
            logging::report_error(&format!("{:#}", anyhow::Error::from(e)));
            None
        }
    }
}

fn load_registry(cfg: &PipelineConfig) -> Registry {
    let registry = Registry::for_pipeline(&cfg.plugins);
    for refused in &registry.refused {
        tracing::warn!("library refused: {}", one_line(refused));
    }
    for (name, path) in &registry.shadowed {
        tracing::warn!(stage = %name, library = %path.display(), "stage name already taken; this library's stage is ignored");
    }
    registry
}

fn validate(pipeline: &std::path::Path) -> ExitCode {
    let Some(cfg) = report(PipelineConfig::load(pipeline)) else {
        return ExitCode::from(INVALID);
    };
    let registry = load_registry(&cfg);
    let diagnostics = topology::check(&cfg, &registry);
    if diagnostics.is_empty() {
        println!(
            "{}: ok ({} sources, {} stages)",
            pipeline.display(),
            cfg.sources.len(),
            cfg.stages.len()
        );
        ExitCode::SUCCESS
    } else {
        for d in diagnostics {
            logging::report_error(&d.to_string());
        }
        ExitCode::from(INVALID)
    }
}

fn plugins(
    pipeline: Option<PathBuf>,
    mut paths: Vec<PathBuf>,
    allow_insecure_paths: bool,
) -> anyhow::Result<ExitCode> {
    let mut options = LoadOptions {
        allow_insecure_paths,
    };
    if let Some(p) = pipeline {
        match report(PipelineConfig::load(&p)) {
            Some(cfg) => {
                paths = cfg.plugins.paths;
                options.allow_insecure_paths |= cfg.plugins.allow_insecure_paths;
            }
            None => return Ok(ExitCode::from(INVALID)),
        }
    } else if paths.is_empty() {
        let exe = std::env::current_exe().context("cannot find the host binary's directory")?;
        paths.extend(exe.parent().map(PathBuf::from));
    }
    let registry = Registry::load_with(&paths, options);
    println!(
        "{:<20} {:<10} {:<10} {:<8} library",
        "stage", "kind", "version", "api"
    );
    for ty in registry.iter() {
        let (version, api) = ty.versions();
        println!(
            "{:<20} {:<10} {:<10} {:<8} {}",
            ty.name,
            ty.kind.as_str(),
            version,
            api,
            ty.origin()
        );
    }
    for refused in &registry.refused {
        println!("refused: {}", one_line(refused));
    }
    Ok(ExitCode::SUCCESS)
}

/// An error and its causes, on the one line a refused library gets.
fn one_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

/// A second signal during the drain: log what is known and end the process now, whatever
/// any stage is doing. Returning instead would wait for the runtime's blocking threads, which
/// a stage stuck in a call (a write to a pipe nobody reads) never gives back.
fn forced_exit(monitor: &host::monitor::Monitor) -> ! {
    monitor.log_totals("forced exit");
    host::crash::exiting_on_purpose();
    std::process::exit(1)
}

async fn run_pipeline(pipeline: PathBuf, summary: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let Some(cfg) = report(PipelineConfig::load(&pipeline)) else {
        return Ok(ExitCode::from(INVALID));
    };
    let registry = load_registry(&cfg);
    let topology = match build_topology(cfg, &registry) {
        Ok(t) => t,
        Err(e) => {
            report(Err(e));
            return Ok(ExitCode::from(INVALID));
        }
    };
    let running = topology
        .start()
        .await
        .context("the pipeline could not start")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sigusr1.recv() => running.monitor.log_totals("SIGUSR1"),
        }
    }
    tracing::info!("stopping: draining accepted messages (signal again to exit at once)");
    let monitor = running.monitor.clone();
    let drain = running.shutdown();
    tokio::pin!(drain);
    let snapshot = tokio::select! {
        snapshot = &mut drain => snapshot,
        _ = sigint.recv() => forced_exit(&monitor),
        _ = sigterm.recv() => forced_exit(&monitor),
    };
    monitor.log_totals("shutdown");
    if let Some(path) = summary {
        let json = serde_json::to_string_pretty(&snapshot)?;
        std::fs::write(&path, json)
            .with_context(|| format!("cannot write summary to {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
