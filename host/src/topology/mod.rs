//! Config -> a graph of running stages: the wiring of the data path.
//!
//! [`check`] finds every problem that needs the libraries (unknown plugin, rejected config);
//! [`build_topology`] builds the stage instances; [`Topology::start`] wires bounded queues
//! between them, starts the workers downstream first, then opens the sources.

mod worker;

use std::sync::{atomic::AtomicU64, Arc};

use plugin_api::StageKind;
use tokio::sync::{mpsc, watch};

use crate::{
    accounting::PipelineCounters,
    config::{ConfigError, Diagnostic, MonitoringMode, PipelineConfig},
    context,
    coordinator::Coordinator,
    monitor::{Monitor, Snapshot, StageStats},
    registry::Registry,
    source::zmq::{SourceError, ZmqSource},
};
use worker::Worker;

/// Every problem with the pipeline's stages that the registry can tell: unknown stage types
/// and configs the stages reject. Builds nothing.
pub fn check(cfg: &PipelineConfig, registry: &Registry) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (name, stage) in &cfg.stages {
        let Some(ty) = registry.get(&stage.plugin) else {
            let mut names = registry.names();
            names.sort_unstable();
            let mut message = format!(
                "stage `{name}`: no stage type named `{}` (known: {})",
                stage.plugin,
                names.join(", ")
            );
            if !registry.refused.is_empty() {
                message.push_str(&format!(
                    "; {} librar{} refused, see above",
                    registry.refused.len(),
                    if registry.refused.len() == 1 {
                        "y was"
                    } else {
                        "ies were"
                    }
                ));
            }
            out.push(cfg.diagnostic(&["stages", name, "plugin"], message));
            continue;
        };
        match cfg.stage_config_json(name) {
            Ok(json) => {
                if let Err(e) = ty.check_config(&json) {
                    out.push(cfg.diagnostic(
                        &["stages", name, "config"],
                        format!("stage `{name}` ({}): invalid config: {e}", stage.plugin),
                    ));
                }
            }
            Err(d) => out.push(d),
        }
    }
    out
}

/// A built stage, not yet running.
struct BuiltStage {
    name: String,
    kind: StageKind,
    stage: plugin_api::StageBox,
    stats: Arc<StageStats>,
}

/// A pipeline whose stages are built, ready to start.
pub struct Topology {
    pub config: PipelineConfig,
    stages: Vec<BuiltStage>,
    pub monitor: Arc<Monitor>,
}

/// Checks, then builds every stage of `cfg`. Nothing runs yet.
pub fn build_topology(cfg: PipelineConfig, registry: &Registry) -> Result<Topology, ConfigError> {
    let diagnostics = check(&cfg, registry);
    if !diagnostics.is_empty() {
        return Err(ConfigError::Invalid(diagnostics));
    }
    let host = context::host_context();
    let mut stages = Vec::with_capacity(cfg.stages.len());
    let mut errors = Vec::new();
    for (name, stage_cfg) in &cfg.stages {
        let ty = registry.get(&stage_cfg.plugin).expect("checked above");
        let json = cfg
            .stage_config_json(name)
            .map_err(|d| ConfigError::Invalid(vec![d]))?;
        match ty.build(name, &json, host) {
            Ok(stage) => stages.push(BuiltStage {
                name: name.clone(),
                kind: ty.kind,
                stage,
                stats: Arc::new(StageStats::new(name, &stage_cfg.plugin, ty.kind)),
            }),
            Err(e) => errors.push(cfg.diagnostic(
                &["stages", name, "config"],
                format!(
                    "stage `{name}` ({}): cannot be built: {e}",
                    stage_cfg.plugin
                ),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors));
    }
    let counters = Arc::new(PipelineCounters::default());
    let monitor = Arc::new(Monitor::new(
        cfg.monitoring.mode.as_str(),
        counters,
        stages.iter().map(|s| s.stats.clone()).collect(),
    ));
    Ok(Topology {
        config: cfg,
        stages,
        monitor,
    })
}

/// Why a built pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot start the worker thread of stage `{stage}`")]
    Thread {
        stage: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running pipeline.
pub struct RunningPipeline {
    pub monitor: Arc<Monitor>,
    /// Each source's endpoint, as bound (ports resolved).
    pub endpoints: Vec<(String, String)>,
    stop: watch::Sender<bool>,
    sources: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<(String, std::thread::JoinHandle<()>)>,
}

impl Topology {
    /// Starts the workers (downstream first, so each consumer is ready), then the sources.
    pub async fn start(self) -> Result<RunningPipeline, StartError> {
        let cfg = &self.config;
        let capacity = cfg.runtime.queue_capacity;
        let mode = cfg.monitoring.mode;
        let mut senders = std::collections::HashMap::new();
        let mut receivers = std::collections::HashMap::new();
        for name in cfg.stages.keys() {
            let (tx, rx) = mpsc::channel(capacity);
            senders.insert(name.clone(), tx);
            receivers.insert(name.clone(), rx);
        }
        let outputs_of = |name: &str| -> Vec<mpsc::Sender<_>> {
            cfg.consumers_of(name).map(|c| senders[c].clone()).collect()
        };

        let mut workers = Vec::new();
        for built in self.stages.into_iter().rev() {
            let coordinator = match mode {
                MonitoringMode::Disabled => Coordinator::Disabled,
                MonitoringMode::Direct | MonitoringMode::EventDriven => {
                    Coordinator::Direct(built.stats.clone())
                }
            };
            let worker = Worker {
                outputs: outputs_of(&built.name),
                input: receivers.remove(&built.name).expect("one queue per stage"),
                name: built.name.clone(),
                kind: built.kind,
                stage: built.stage,
                coordinator,
                stats: built.stats,
            };
            let handle = std::thread::Builder::new()
                .name(format!("stage-{}", built.name))
                .spawn(move || worker.run())
                .map_err(|source| StartError::Thread {
                    stage: built.name.clone(),
                    source,
                })?;
            workers.push((built.name, handle));
        }

        let (stop, stop_rx) = watch::channel(false);
        let next_id = Arc::new(AtomicU64::new(1));
        let mut sources = Vec::new();
        let mut endpoints = Vec::new();
        let mut opened = Vec::new();
        for (name, source_cfg) in &cfg.sources {
            // On failure the senders held here drop, so the started workers drain and end.
            let source = ZmqSource::open(name, source_cfg).await?;
            endpoints.push((name.clone(), source.endpoint.clone()));
            opened.push((source, outputs_of(name)));
        }
        drop(senders);
        for (source, outputs) in opened {
            sources.push(tokio::spawn(source.run(
                outputs,
                self.monitor.pipeline.clone(),
                next_id.clone(),
                stop_rx.clone(),
            )));
        }
        tracing::info!(
            stages = workers.len(),
            sources = sources.len(),
            mode = mode.as_str(),
            "pipeline started"
        );
        Ok(RunningPipeline {
            monitor: self.monitor,
            endpoints,
            stop,
            sources,
            workers,
        })
    }
}

impl RunningPipeline {
    /// Stops reading, drains what was accepted through every stage, flushes, and returns
    /// the final snapshot. Upstream stops first, so it drains into live consumers.
    pub async fn shutdown(self) -> Snapshot {
        let _ = self.stop.send(true);
        for s in self.sources {
            let _ = s.await;
        }
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for (name, handle) in workers {
                if handle.join().is_err() {
                    tracing::error!(stage = %name, "stage worker panicked");
                }
            }
        })
        .await;
        self.monitor.snapshot()
    }
}
