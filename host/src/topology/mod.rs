//! Config -> a graph of running stages: the wiring of the data path.
//!
//! [`check`] finds every problem that needs the libraries (unknown plugin, rejected config);
//! [`build_topology`] builds the stage instances; [`Topology::start`] wires bounded queues
//! between them, starts every worker, then opens the sources.

mod observe;
mod probe;
mod worker;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use plugin_api::{ObserverBox, StageBox, StageKind};
use tokio::sync::{mpsc, watch};

use crate::{
    accounting::{PipelineCounters, DRAIN_TIMEOUT},
    admin::{self, AdminState, PipelineGraph, SourceView, StageView},
    config::{ConfigError, Diagnostic, MonitoringMode, PipelineConfig},
    coordinator::{self, Coordinator, EventDriven, Mode},
    crash::CallMarker,
    events::{self, instance_id, EventBus, EventKind, EventPayload, EventsError},
    health::Health,
    monitor::{Monitor, PluginMetrics, Snapshot, StageStats},
    observer,
    plugins::{callbacks, registry::Registry},
    source::zmq::{SourceError, ZmqSource},
    telemetry::{Telemetry, TelemetryError},
};
use probe::{StageProbe, WorkerThread};
use worker::{Worker, WorkerStage};

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
                    out.push(config_diagnostic(
                        cfg,
                        &["stages", name, "config"],
                        &format!("stage `{name}` ({})", stage.plugin),
                        &e,
                    ));
                }
            }
            Err(d) => out.push(d),
        }
    }
    if let (MonitoringMode::Custom, Some(custom)) = (cfg.monitoring.mode, &cfg.monitoring.custom) {
        let at = ["monitoring", "custom", "config"];
        match registry.get(&custom.plugin) {
            Some(ty) if ty.kind == StageKind::Observer => {
                match cfg.config_json(&custom.config, &at) {
                    Ok(json) => {
                        if let Err(e) = ty.check_config(&json) {
                            out.push(config_diagnostic(
                                cfg,
                                &at,
                                &format!("observer `{}`", custom.plugin),
                                &e,
                            ));
                        }
                    }
                    Err(d) => out.push(d),
                }
            }
            Some(ty) => out.push(cfg.diagnostic(
                &["monitoring", "custom", "plugin"],
                format!(
                    "`{}` is a {} stage, not an observer",
                    custom.plugin, ty.kind
                ),
            )),
            None => out.push(cfg.diagnostic(
                &["monitoring", "custom", "plugin"],
                format!(
                    "no observer type named `{}` in the loaded libraries",
                    custom.plugin
                ),
            )),
        }
    }
    out
}

/// A config a plugin rejected, pointing at the key it names (`drop[0].field` under `at`).
fn config_diagnostic(
    cfg: &PipelineConfig,
    at: &[&str],
    what: &str,
    error: &plugin_api::ConfigError,
) -> Diagnostic {
    let keys: Vec<&str> = error
        .path
        .split(['.', '['])
        .filter(|k| !k.is_empty())
        .map(|k| k.trim_end_matches(']'))
        .collect();
    let mut path = at.to_vec();
    path.extend(keys);
    let message = if error.path.is_empty() {
        format!("{what}: invalid config: {}", error.message)
    } else {
        format!(
            "{what}: invalid config at `{}`: {}",
            error.path, error.message
        )
    };
    cfg.diagnostic(&path, message)
}

/// A built stage, not yet running.
struct BuiltStage {
    name: String,
    kind: StageKind,
    stage: StageBox,
    probe: Arc<StageProbe>,
    stats: Arc<StageStats>,
}

/// A pipeline whose stages are built, ready to start.
pub struct Topology {
    pub config: PipelineConfig,
    stages: Vec<BuiltStage>,
    /// The stages grouped by the thread that runs them (`PipelineConfig::stage_threads`).
    threads: Vec<Vec<String>>,
    /// The observer of `mode: custom`: its name, itself, its queue's capacity.
    observer: Option<(String, ObserverBox, usize)>,
    pub monitor: Arc<Monitor>,
}

/// Checks, then builds every stage of `cfg`. Nothing runs yet.
pub fn build_topology(cfg: PipelineConfig, registry: &Registry) -> Result<Topology, ConfigError> {
    let diagnostics = check(&cfg, registry);
    if !diagnostics.is_empty() {
        return Err(ConfigError::Invalid(diagnostics));
    }
    // Made before any stage, so that metrics a stage records while it is built are kept.
    let plugin_metrics = Arc::new(PluginMetrics::default());
    let groups: Vec<Vec<String>> = cfg
        .stage_threads()
        .into_iter()
        .map(|group| group.into_iter().map(str::to_owned).collect())
        .collect();
    let threads: HashMap<&str, Arc<WorkerThread>> = groups
        .iter()
        .flat_map(|group| {
            let thread = Arc::new(WorkerThread::default());
            group
                .iter()
                .map(move |name| (name.as_str(), thread.clone()))
        })
        .collect();
    let mut stages = Vec::with_capacity(cfg.stages.len());
    let mut errors = Vec::new();
    for (name, stage_cfg) in &cfg.stages {
        let ty = registry.get(&stage_cfg.plugin).expect("checked above");
        let json = cfg
            .stage_config_json(name)
            .map_err(|d| ConfigError::Invalid(vec![d]))?;
        let host = callbacks::host_context(name, plugin_metrics.clone());
        match ty.build(name, &json, host) {
            Ok(stage) => stages.push(BuiltStage {
                name: name.clone(),
                kind: ty.kind,
                stage,
                probe: Arc::new(StageProbe::new(
                    CallMarker::new(name, &ty.origin()),
                    threads[name.as_str()].clone(),
                )),
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
    let observer = match (cfg.monitoring.mode, &cfg.monitoring.custom) {
        (MonitoringMode::Custom, Some(custom)) => {
            let ty = registry.get(&custom.plugin).expect("checked above");
            let at = ["monitoring", "custom", "config"];
            let json = cfg
                .config_json(&custom.config, &at)
                .map_err(|d| ConfigError::Invalid(vec![d]))?;
            let host = callbacks::host_context(&custom.plugin, plugin_metrics.clone());
            let built = ty.build_observer(&json, host).map_err(|e| {
                ConfigError::Invalid(vec![cfg.diagnostic(
                    &at,
                    format!("observer `{}`: cannot be built: {e}", custom.plugin),
                )])
            })?;
            Some((custom.plugin.clone(), built, custom.queue_capacity))
        }
        _ => None,
    };
    let counters = Arc::new(PipelineCounters::with_limits(
        cfg.runtime.max_in_flight,
        cfg.runtime.max_in_flight_bytes,
    ));
    let monitor = Arc::new(Monitor::new(
        cfg.monitoring.mode.as_str(),
        counters,
        stages.iter().map(|s| s.stats.clone()).collect(),
        plugin_metrics,
    ));
    Ok(Topology {
        config: cfg,
        stages,
        threads: groups,
        observer,
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
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error("monitoring.admin.listen: cannot listen on {address}")]
    Admin {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// A running pipeline.
pub struct RunningPipeline {
    pub monitor: Arc<Monitor>,
    pub health: Arc<Health>,
    pub bus: Option<Arc<dyn EventBus>>,
    /// Each source's endpoint, as bound (ports resolved).
    pub endpoints: Vec<(String, String)>,
    /// Where the admin API listens, when it does.
    pub admin: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    /// Stopped last: the event consumer and the admin API outlive the drain.
    late_stop: watch::Sender<bool>,
    sources: Vec<tokio::task::JoinHandle<()>>,
    windows: Option<tokio::task::JoinHandle<()>>,
    late_tasks: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<(String, std::thread::JoinHandle<()>)>,
    /// Ends the workers' drain: what they still hold fails as `drain_timeout`.
    finish: watch::Sender<bool>,
    drain_timeout: Duration,
    observer: Option<std::thread::JoinHandle<()>>,
    /// `monitoring.otlp`: stopped last, after a final export of the final values.
    telemetry: Option<Telemetry>,
    counts: (usize, usize),
}

impl Topology {
    /// Starts the observation path, then every worker, then the sources, the health checks
    /// and the admin API. Every queue exists before any worker runs, so the order among the
    /// workers does not matter; the sources come last, so nothing is read before every
    /// stage can take it.
    pub async fn start(self) -> Result<RunningPipeline, StartError> {
        let cfg = &self.config;
        let monitoring = &cfg.monitoring;
        let mode = monitoring.mode;
        let monitor = self.monitor.clone();

        // `disabled` means no observation work at all: no bus, no events.
        let bus = match mode {
            MonitoringMode::Disabled => None,
            _ => Some(events::start_bus(
                &monitoring.events,
                &tokio::runtime::Handle::current(),
            )?),
        };
        let (stop, stop_rx) = watch::channel(false);
        let (late_stop, late_rx) = watch::channel(false);
        let mut late_tasks = Vec::new();
        if let (MonitoringMode::EventDriven, Some(bus)) = (mode, &bus) {
            // Subscribed before any stage runs, so no call is missed.
            let sub = coordinator::subscribe(bus.as_ref());
            late_tasks.push(tokio::spawn(coordinator::consume(
                sub,
                monitor.clone(),
                late_rx.clone(),
            )));
        }

        // Bound before anything reads a message: a taken port must fail the start while
        // nothing has been accepted yet.
        let mut admin_addr = None;
        let admin_listener = match &monitoring.admin.listen {
            None => None,
            Some(address) => {
                let listener = tokio::net::TcpListener::bind(address.as_str())
                    .await
                    .map_err(|source| StartError::Admin {
                        address: address.clone(),
                        source,
                    })?;
                admin_addr = listener.local_addr().ok();
                tracing::info!(address = %admin_addr.map_or(address.clone(), |a| a.to_string()), "admin API listening");
                Some(listener)
            }
        };

        // Reads the monitor from its own thread, every `interval`; builds no connection yet.
        let telemetry = match &monitoring.otlp {
            Some(otlp) => Some(Telemetry::start(otlp, monitor.clone(), bus.clone())?),
            None => None,
        };

        // One queue per thread, into its first stage: a stage fed from another thread (or by
        // the monitor's windows) is always the first of its group, and a source's stages that
        // share a thread share its queue.
        let capacity = cfg.runtime.queue_capacity;
        let mut senders = HashMap::new();
        let mut receivers = HashMap::new();
        // Each stage's thread, by the first stage of its group.
        let mut queue_of = HashMap::new();
        for group in &self.threads {
            let first = group[0].as_str();
            let (tx, rx) = mpsc::channel(capacity);
            senders.insert(first, tx);
            receivers.insert(first, rx);
            queue_of.extend(group.iter().map(|name| (name.as_str(), first)));
        }
        // Each queue once, however many of the source's stages are behind it.
        let source_outputs = |name: &str| -> Vec<mpsc::Sender<_>> {
            let mut queues: Vec<&str> = Vec::new();
            for c in cfg.consumers_of(name) {
                if !queues.contains(&queue_of[c]) {
                    queues.push(queue_of[c]);
                }
            }
            queues.iter().map(|q| senders[q].clone()).collect()
        };

        let instance = instance_id();
        let type_field: Arc<str> = monitoring.type_field.as_str().into();
        let (observer_feed, observer_thread) = match self.observer {
            Some((name, observer, capacity)) => {
                let (feed, thread) =
                    observer::start(observer, &name, capacity).map_err(|source| {
                        StartError::Thread {
                            stage: format!("observer {name}"),
                            source,
                        }
                    })?;
                monitor.register_observer(feed.stats.clone());
                (Some(feed), Some(thread))
            }
            None => (None, None),
        };
        let (finish, finish_rx) = watch::channel(false);
        let runtime = tokio::runtime::Handle::current();
        let mut workers = Vec::new();
        let mut health_components = Vec::new();
        let mut built_stages: HashMap<String, BuiltStage> = self
            .stages
            .into_iter()
            .map(|b| (b.name.clone(), b))
            .collect();
        for group in &self.threads {
            let mut stages = Vec::with_capacity(group.len());
            for name in group {
                let built = built_stages.remove(name).expect("every stage once");
                let observed = match (&bus, mode, &observer_feed) {
                    (_, MonitoringMode::Disabled, _) | (None, _, _) => Mode::Disabled,
                    (Some(_), MonitoringMode::Custom, Some(feed)) => {
                        Mode::Custom(built.stats.clone(), feed.clone())
                    }
                    (Some(_), MonitoringMode::Direct | MonitoringMode::Custom, _) => {
                        Mode::Direct(built.stats.clone())
                    }
                    (Some(bus), MonitoringMode::EventDriven, _) => Mode::EventDriven(Arc::new(
                        EventDriven::new(&built.name, instance.clone(), bus.clone()),
                    )),
                };
                let tracer = telemetry.as_ref().and_then(|t| t.stage_tracer(&built.name));
                health_components.push(observe::stage_check(
                    &built.name,
                    built.kind,
                    built.probe.clone(),
                    built.stats.clone(),
                    &monitoring.health,
                ));
                // Consumers on this thread are called; the others get a queue.
                let (here, elsewhere): (Vec<&str>, Vec<&str>) = cfg
                    .consumers_of(name)
                    .partition(|c| group.iter().any(|g| g == c));
                stages.push(WorkerStage {
                    name: built.name,
                    kind: built.kind,
                    stage: built.stage,
                    probe: built.probe,
                    coordinator: Coordinator::new(observed, tracer),
                    stats: built.stats,
                    consumers: here
                        .iter()
                        .map(|c| group.iter().position(|g| g == c).expect("in the group"))
                        .collect(),
                    outputs: elsewhere.iter().map(|c| senders[*c].clone()).collect(),
                });
            }
            let first = group[0].as_str();
            let worker = Worker {
                stages,
                type_field: type_field.clone(),
                input: receivers.remove(first).expect("one queue per stage"),
                finish: finish_rx.clone(),
                runtime: runtime.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(thread_name(first))
                .spawn(move || worker.run())
                .map_err(|source| StartError::Thread {
                    stage: first.to_owned(),
                    source,
                })?;
            workers.push((group.join("+"), handle));
        }
        // The workers hold the feed now: the observer's thread ends when the last one does.
        drop(observer_feed);

        let next_id = Arc::new(AtomicU64::new(1));
        let mut endpoints = Vec::new();
        let mut opened = Vec::new();
        for (name, source_cfg) in &cfg.sources {
            // On failure the senders held here drop, so the started workers drain and end.
            let source = ZmqSource::open(name, source_cfg).await?;
            endpoints.push((name.clone(), source.endpoint.clone()));
            monitor.register_source(name, source.stats.clone());
            health_components.push(observe::source_check(
                name,
                &source.endpoint,
                source.up.clone(),
            ));
            opened.push((source, source_outputs(name)));
        }
        let windows = (mode != MonitoringMode::Disabled).then(|| {
            let targets = monitoring
                .export_to
                .iter()
                .map(|t| senders[t.as_str()].clone())
                .collect();
            tokio::spawn(observe::windows(
                monitor.clone(),
                monitoring.window,
                targets,
                stop_rx.clone(),
            ))
        });
        drop(senders);
        let mut sources = Vec::new();
        for (source, outputs) in opened {
            sources.push(tokio::spawn(source.run(
                outputs,
                monitor.pipeline.clone(),
                next_id.clone(),
                stop_rx.clone(),
                finish_rx.clone(),
            )));
        }

        if let Some(bus) = &bus {
            health_components.push(observe::bus_check(bus.clone()));
        }
        let listener = bus
            .clone()
            .map(|bus| Arc::new(observe::HealthEvents::new(bus, instance.clone())) as _);
        let health = Arc::new(Health::new(
            monitoring.health.clone(),
            health_components,
            listener,
        ));
        late_tasks.push(tokio::spawn(health.clone().run(late_rx.clone())));

        let graph = Arc::new(graph(cfg, &queue_of, &endpoints, &monitor));
        if let Some(listener) = admin_listener {
            let state = AdminState {
                monitor: monitor.clone(),
                health: health.clone(),
                graph,
                bus: bus.clone(),
                telemetry: telemetry.as_ref().map(Telemetry::stats),
            };
            late_tasks.push(tokio::spawn(admin::serve(
                listener,
                state,
                monitoring.admin.clone(),
                late_rx.clone(),
            )));
        }

        let counts = (cfg.stages.len(), sources.len());
        if let Some(bus) = &bus {
            publish_lifecycle(bus.as_ref(), &instance, EventKind::PipelineStarted, counts);
        }
        tracing::info!(
            stages = counts.0,
            stage_threads = workers.len(),
            sources = counts.1,
            mode = mode.as_str(),
            "pipeline started"
        );
        Ok(RunningPipeline {
            monitor,
            health,
            bus,
            endpoints,
            admin: admin_addr,
            stop,
            late_stop,
            finish,
            drain_timeout: cfg.runtime.drain_timeout,
            sources,
            windows,
            late_tasks,
            workers,
            observer: observer_thread,
            telemetry,
            counts,
        })
    }
}

fn publish_lifecycle(
    bus: &dyn EventBus,
    instance: &Arc<str>,
    kind: EventKind,
    (stages, sources): (usize, usize),
) {
    bus.publish(events::Event::new(
        kind,
        instance.clone(),
        0,
        EventPayload::Pipeline { stages, sources },
    ));
}

/// `queue_of`: each stage's thread, by the first stage of its group.
fn graph(
    cfg: &PipelineConfig,
    queue_of: &HashMap<&str, &str>,
    endpoints: &[(String, String)],
    monitor: &Monitor,
) -> PipelineGraph {
    let socket = |s: &crate::config::SourceConfig| format!("{:?}", s.socket).to_lowercase();
    PipelineGraph {
        file: cfg.file.display().to_string(),
        sources: cfg
            .sources
            .iter()
            .map(|(name, s)| SourceView {
                name: name.clone(),
                socket: socket(s),
                endpoint: endpoints
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or_else(String::new, |(_, e)| e.clone()),
                outputs: cfg.consumers_of(name).map(String::from).collect(),
            })
            .collect(),
        stages: cfg
            .stages
            .iter()
            .map(|(name, s)| StageView {
                name: name.clone(),
                plugin: s.plugin.clone(),
                kind: monitor.stage(name).map_or("", |s| s.kind.as_str()),
                inputs: s.inputs.clone(),
                outputs: cfg.consumers_of(name).map(String::from).collect(),
                thread: thread_name(queue_of[name.as_str()]),
            })
            .collect(),
    }
}

/// The name of the thread that runs a group of stages, after the first (Linux shows its
/// first 15 bytes).
fn thread_name(first: &str) -> String {
    format!("stage-{first}")
}

impl RunningPipeline {
    /// Stops reading, drains what was accepted through every stage, waits for records stages
    /// took for later to be settled (up to `runtime.drain_timeout`), and returns the final
    /// snapshot. Upstream stops first, so it drains into live consumers. What is still
    /// unsettled when the timeout ends fails as `drain_timeout`: nothing is lost silently.
    pub async fn shutdown(self) -> Snapshot {
        // The drain timeout counts from the signal: a source waiting for room (a dead target
        // holding `max_in_flight` messages) must not hold it off.
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let mut expired = false;
        let expire = |expired: &mut bool| {
            if !*expired {
                *expired = true;
                let t = self.monitor.pipeline.totals();
                tracing::warn!(
                    in_flight = t.in_flight,
                    timeout = ?self.drain_timeout,
                    "drain timeout: what is still unsettled fails as `{DRAIN_TIMEOUT}`"
                );
                // Settle first, so that whatever the stages do as they stop counts once.
                self.monitor.pipeline.settle_all(DRAIN_TIMEOUT);
                let _ = self.finish.send(true);
            }
        };
        let _ = self.stop.send(true);
        let mut sources = self.sources;
        for s in &mut sources {
            if tokio::time::timeout_at(deadline, &mut *s).await.is_err() {
                expire(&mut expired);
                // Told to give up, it fails what it holds and returns at once.
                let _ = s.await;
            }
        }
        if let Some(mut w) = self.windows {
            // The last window goes to `export_to` stages, whose queues may be full.
            if tokio::time::timeout_at(deadline, &mut w).await.is_err() {
                expire(&mut expired);
                w.abort();
            }
        }
        let mut workers = self.workers;
        let all_done = |workers: &[(String, std::thread::JoinHandle<()>)]| {
            workers.iter().all(|(_, h)| h.is_finished())
        };
        while !all_done(&workers) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !all_done(&workers) {
            expire(&mut expired);
            let grace = tokio::time::Instant::now() + Duration::from_secs(5);
            while !all_done(&workers) && tokio::time::Instant::now() < grace {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for (name, handle) in workers.drain(..) {
            if !handle.is_finished() {
                // In a call that never returns: its thread is left behind (a second signal
                // ends the process).
                tracing::error!(stage = %name, "stage did not stop; leaving its thread");
                continue;
            }
            if handle.join().is_err() {
                tracing::error!(stage = %name, "stage worker panicked");
            }
        }
        // Whatever a stage's own threads still hold (a stage that did not stop) is settled now.
        self.monitor.pipeline.settle_all(DRAIN_TIMEOUT);
        if let Some(observer) = self.observer {
            // Polled, not joined on a blocking thread: a runtime waits for its blocking
            // threads when it is dropped, and an observer stuck in a call would hold the
            // process with it.
            let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
            while !observer.is_finished() && tokio::time::Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if observer.is_finished() {
                let _ = observer.join();
            }
        }
        if let Some(bus) = &self.bus {
            publish_lifecycle(
                bus.as_ref(),
                &instance_id(),
                EventKind::PipelineStopped,
                self.counts,
            );
        }
        // The event consumer drains what the workers published, then stops with the rest.
        let _ = self.late_stop.send(true);
        for t in self.late_tasks {
            let _ = t.await;
        }
        if let Some(bus) = &self.bus {
            if !bus.shutdown(Duration::from_secs(2)).await {
                tracing::warn!("event bus: some queued events were not written before shutdown");
            }
        }
        if let Some(telemetry) = self.telemetry {
            telemetry.shutdown().await;
        }
        self.monitor.snapshot()
    }
}
