//! The pipeline file: YAML text -> a typed, validated [`PipelineConfig`].
//!
//! Every error names the file, and the line and column where one exists, and all of them are
//! reported together, before anything starts.

mod env;
mod spans;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

pub use crate::events::{BusKind, EventsConfig};

pub use spans::Spans;

/// One problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// Line and column, 1-based, where the problem is.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(
                f,
                "{}:{line}:{column}: {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read pipeline file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pipeline file {path} is larger than {MAX_PIPELINE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

fn join_lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The largest pipeline file read. Validation takes time and memory in proportion to the
/// file, whatever its shape: some tens of times its size in memory at peak, the more the
/// shorter its keys (342 MB for the 12 MB `set` of 400,000 `keyN: valueN` that a test
/// validates, as `/usr/bin/time` reports it), so about 1 GB at most; a limit keeps a wrong
/// file from taking the machine's memory.
pub const MAX_PIPELINE_BYTES: usize = 16 << 20;

/// Whether `name` may name a source or a stage: 1 to 64 ASCII letters, digits, `_`, `-` and
/// `.`, starting with a letter, a digit or `_`. Names show up in logs, metric labels, thread
/// names and event payloads, where a newline or an empty string would do harm.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with(['-', '.'])
}

/// A pipeline, as written in its file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub plugins: PluginsConfig,
    pub sources: IndexMap<String, SourceConfig>,
    pub stages: IndexMap<String, StageConfig>,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub monitoring: MonitoringConfig,
    /// The file this was read from; paths in it are relative to the working directory.
    #[serde(skip)]
    pub file: PathBuf,
    #[serde(skip)]
    pub spans: Spans,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Files or directories to load stage libraries from.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Load libraries from files or directories that others than their owner can write
    /// (refused otherwise), with a warning each.
    #[serde(default)]
    pub allow_insecure_paths: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceType {
    Zmq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketKind {
    Pull,
    Sub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decode {
    /// Each message is a JSON object; its keys become the record's fields.
    Json,
    /// Each message becomes a record with one field, `message` (a string, or bytes when it is
    /// not UTF-8).
    Raw,
}

/// A message source. Only ZeroMQ exists today; `type` leaves room for more.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(rename = "type")]
    pub kind: SourceType,
    pub socket: SocketKind,
    pub bind: Option<String>,
    pub connect: Option<String>,
    /// Topic prefixes to subscribe to (`sub` only); empty subscribes to everything.
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default = "default_decode")]
    pub decode: Decode,
    /// Larger messages count as failed (`message_too_large`) and are not decoded.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// At most this many messages go to the stages in one call.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A batch that is not full waits at most this long after its first message for more
    /// before it is handed on; 0 hands it on as soon as the socket has nothing more ready.
    #[serde(default, with = "humantime_serde")]
    pub max_delay: Duration,
    /// Peers served at once (a bound socket); more are closed as soon as they connect.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A peer that has not completed the ZMTP handshake in this time is dropped.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

fn default_decode() -> Decode {
    Decode::Json
}
/// The largest `max_message_bytes` accepted: a record holds less than 4 GiB, and a source
/// may buffer this much per connection.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 1 << 30;

fn default_max_message_bytes() -> usize {
    1 << 20
}
/// Large enough that the per-batch costs (a queue hand-off, a call per stage) are small
/// beside the per-message ones, small enough that a backlog after a stall is worked off in
/// pieces (see the README's "Batches, queues and latency").
fn default_batch_size() -> usize {
    512
}
/// The longest a source's batch may wait for more messages: beyond it, the stages would
/// see a message later than any batching gain is worth (exporters batch on their own).
pub const MAX_SOURCE_DELAY: Duration = Duration::from_secs(1);
fn default_max_connections() -> usize {
    1024
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl SourceConfig {
    /// The endpoint, and whether the socket binds it (true) or connects to it.
    pub fn endpoint(&self) -> (&str, bool) {
        match (&self.bind, &self.connect) {
            (Some(b), _) => (b, true),
            (None, Some(c)) => (c, false),
            (None, None) => ("", true),
        }
    }
}

/// One stage of the pipeline.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// The stage type: a built-in stage or one offered by a loaded library.
    pub plugin: String,
    /// Sources or stages whose output this stage takes. May be empty for a stage named in
    /// `monitoring.export_to`, which then gets only the monitor's windows.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Handed to the stage as it is.
    #[serde(default)]
    pub config: serde_yaml::Value,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Batches each stage's input queue holds before its producers wait.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Messages in flight (received and not yet settled) at most; the sources wait beyond.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Bytes of those messages' payloads in flight at most (as received, counted in KiB); the
    /// sources wait beyond. A batch larger than this is admitted alone.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// At shutdown, how long to wait for records stages hold (exporters sending in the
    /// background) to be settled; what is still unsettled then fails as `drain_timeout`.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Which stages share a thread, calling one another with no queue between them (see
    /// [`PipelineConfig::stage_threads`]).
    #[serde(default)]
    pub fuse: Fuse,
}

/// Which stages run on the thread of the stage whose output they take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fuse {
    /// A stage whose only input is a stage runs on that stage's thread: a stage and its
    /// consumers form a tree on one thread, down to stages with several inputs. The stages
    /// whose only input is the same source share one thread, with their trees.
    #[default]
    Trees,
    /// Only when it is also that stage's only consumer: linear chains.
    Chains,
    /// Every stage on its own thread.
    None,
}

fn default_queue_capacity() -> usize {
    8
}
fn default_max_in_flight() -> usize {
    65_536
}
fn default_max_in_flight_bytes() -> usize {
    256 << 20
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            queue_capacity: default_queue_capacity(),
            max_in_flight: default_max_in_flight(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            drain_timeout: default_drain_timeout(),
            fuse: Fuse::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitoringMode {
    Disabled,
    #[default]
    Direct,
    EventDriven,
    /// Like `direct`, and every call's outcome also goes to an observer plugin
    /// (`monitoring.custom`).
    Custom,
}

impl MonitoringMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MonitoringMode::Disabled => "disabled",
            MonitoringMode::Direct => "direct",
            MonitoringMode::EventDriven => "event_driven",
            MonitoringMode::Custom => "custom",
        }
    }
}

/// `monitoring.custom`: the observer plugin of `mode: custom`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomMonitoringConfig {
    /// An observer type offered by a loaded library.
    pub plugin: String,
    /// Handed to the observer as it is.
    #[serde(default)]
    pub config: serde_yaml::Value,
    /// Call outcomes queued for the observer; beyond, they are dropped (and counted).
    #[serde(default = "default_observer_queue")]
    pub queue_capacity: usize,
}

fn default_observer_queue() -> usize {
    65_536
}

/// The built-in monitor, coordinator, events, health checks and admin API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringConfig {
    #[serde(default)]
    pub mode: MonitoringMode,
    /// How often a windowed snapshot is taken, exported and reset.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// Stages (usually exporters) that receive each windowed snapshot as a record.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// The record field whose values are counted per stage ("data types").
    #[serde(default = "default_type_field")]
    pub type_field: String,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// The observer plugin of `mode: custom`.
    #[serde(default)]
    pub custom: Option<CustomMonitoringConfig>,
    /// The host's own metrics, pushed to an OTLP receiver every `interval`.
    #[serde(default)]
    pub otlp: Option<OtlpTelemetryConfig>,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            mode: MonitoringMode::default(),
            window: default_window(),
            export_to: Vec::new(),
            type_field: default_type_field(),
            admin: AdminConfig::default(),
            events: EventsConfig::default(),
            health: HealthConfig::default(),
            custom: None,
            otlp: None,
        }
    }
}

fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_type_field() -> String {
    "type".into()
}

/// How OTLP is carried: gRPC, or HTTP with protobuf bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    #[default]
    Grpc,
    Http,
}

/// `monitoring.otlp`: the monitor's and the process's metrics (the families `/metrics`
/// serves), exported through the OpenTelemetry SDK to an OTLP receiver every `interval`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpTelemetryConfig {
    /// `http://host:port`: for `http`, `/v1/metrics` is appended when it names no path.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// How often the metrics are collected and exported.
    #[serde(default = "default_otlp_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one export may take, retries included; also bounds the final export at
    /// shutdown.
    #[serde(default = "default_otlp_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Sent with every export (gRPC metadata or HTTP headers), e.g. an API key from `${ENV}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Resource attributes, beside the defaults `service.name: host`, `service.version` and
    /// `service.instance.id` (which these override).
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// A span per stage call, sampled, sent to the same receiver; absent: no traces.
    #[serde(default)]
    pub traces: Option<OtlpTracesConfig>,
}

/// `monitoring.otlp.traces`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpTracesConfig {
    /// The share of stage calls that get a span, 0 to 1 (decided by trace id, as OTel's
    /// `TraceIdRatioBased` sampler does).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

fn default_sample_ratio() -> f64 {
    0.01
}

/// `http://host:port[/path]`; TLS is not built in.
fn check_otlp_endpoint(endpoint: &str) -> Result<(), String> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(if endpoint.starts_with("https://") {
            format!("{endpoint:?}: https is not supported (this host has no TLS for OTLP); use http:// or a local collector")
        } else {
            format!("{endpoint:?} is not an http:// URL")
        });
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let port = authority.rsplit_once(':').map(|(_, p)| p);
    match port {
        Some(p) if p.parse::<u16>().is_ok_and(|p| p > 0) && authority.len() > p.len() + 1 => Ok(()),
        _ => Err(format!("{endpoint:?} names no host:port")),
    }
}

fn default_otlp_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_otlp_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The admin HTTP server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` to listen on; `null` turns the server off.
    #[serde(default = "default_admin_listen")]
    pub listen: Option<String>,
    /// Connections served at once; more are closed as soon as they are accepted.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// A request head (request line and headers) must arrive within this time.
    #[serde(default = "default_admin_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection with nothing sent or received for this long is closed.
    #[serde(default = "default_admin_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

fn default_admin_listen() -> Option<String> {
    Some("127.0.0.1:9464".into())
}

fn default_admin_max_connections() -> usize {
    64
}
fn default_admin_header_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_admin_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            max_connections: default_admin_max_connections(),
            header_timeout: default_admin_header_timeout(),
            idle_timeout: default_admin_idle_timeout(),
        }
    }
}

/// Health checks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How long a check result is cached (and how often checks run).
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A check that takes longer counts as unhealthy.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A stage whose failed/handled record ratio over the current window passes this is
    /// degraded.
    #[serde(default = "default_error_rate_threshold")]
    pub error_rate_threshold: f64,
}

fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_error_rate_threshold() -> f64 {
    0.5
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            error_rate_threshold: default_error_rate_threshold(),
        }
    }
}

impl PipelineConfig {
    /// Reads, expands and parses `path`, and checks everything that needs no library.
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        // Read at most one byte past the limit, so that neither a huge file nor an endless
        // one (a FIFO, /dev/zero) is read whole.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| {
                f.take(MAX_PIPELINE_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
            })
            .map_err(read_error)?;
        if bytes.len() > MAX_PIPELINE_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| {
            read_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8 text",
            ))
        })?;
        Self::parse(path, &text, |name| std::env::var(name).ok())
    }

    /// Parses pipeline text; `file` is only used in messages.
    pub fn parse(
        file: &Path,
        text: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<PipelineConfig, ConfigError> {
        let expanded = env::expand(text, lookup).map_err(|errors| {
            ConfigError::Invalid(
                errors
                    .into_iter()
                    .map(|e| Diagnostic {
                        file: file.to_path_buf(),
                        position: Some((e.line, e.column)),
                        message: e.message,
                    })
                    .collect(),
            )
        })?;
        let mut config: PipelineConfig = serde_yaml::from_str(&expanded).map_err(|e| {
            let position = e.location().map(|l| (l.line(), l.column()));
            let mut message = e.to_string();
            if let Some(pos) = message.find(" at line ") {
                message.truncate(pos);
            }
            ConfigError::Invalid(vec![Diagnostic {
                file: file.to_path_buf(),
                position,
                message,
            }])
        })?;
        config.file = file.to_path_buf();
        config.spans = Spans::index(&expanded);
        let diagnostics = config.check();
        if diagnostics.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(diagnostics))
        }
    }

    /// A diagnostic pointing at `path` in the file (or its nearest ancestor).
    pub fn diagnostic(&self, path: &[&str], message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            position: self.spans.nearest(path),
            message: message.into(),
        }
    }

    /// The checks that need no library: sockets, names, inputs, cycles.
    fn check(&self) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        if self.sources.is_empty() {
            out.push(self.diagnostic(&["sources"], "a pipeline needs at least one source"));
        }
        for (section, names) in [
            ("sources", self.sources.keys().collect::<Vec<_>>()),
            ("stages", self.stages.keys().collect()),
        ] {
            for name in names.into_iter().filter(|n| !valid_name(n)) {
                out.push(self.diagnostic(
                    &[section, name],
                    format!(
                        "{section}: {name:?} is not a valid name (1 to 64 of A-Z a-z 0-9 _ - ., not starting with - or .)"
                    ),
                ));
            }
        }
        for (name, source) in &self.sources {
            match (&source.bind, &source.connect) {
                (Some(_), Some(_)) => out.push(self.diagnostic(
                    &["sources", name, "connect"],
                    format!("source `{name}`: set `bind` or `connect`, not both"),
                )),
                (None, None) => out.push(self.diagnostic(
                    &["sources", name],
                    format!("source `{name}`: needs `bind` or `connect`"),
                )),
                _ => {}
            }
            if source.socket != SocketKind::Sub && !source.topics.is_empty() {
                out.push(self.diagnostic(
                    &["sources", name, "topics"],
                    format!("source `{name}`: `topics` only applies to `socket: sub`"),
                ));
            }
            if source.handshake_timeout.is_zero() {
                out.push(self.diagnostic(
                    &["sources", name, "handshake_timeout"],
                    "`handshake_timeout` must be longer than 0s",
                ));
            }
            if source.max_connections == 0 {
                out.push(self.diagnostic(
                    &["sources", name, "max_connections"],
                    "`max_connections` must be at least 1",
                ));
            }
            if source.batch_size == 0 {
                out.push(self.diagnostic(
                    &["sources", name, "batch_size"],
                    "`batch_size` must be at least 1",
                ));
            }
            if source.max_delay > MAX_SOURCE_DELAY {
                out.push(self.diagnostic(
                    &["sources", name, "max_delay"],
                    format!(
                        "`max_delay` ({:?}) is above the limit of {MAX_SOURCE_DELAY:?}",
                        source.max_delay
                    ),
                ));
            }
            if source.max_message_bytes > MAX_MESSAGE_BYTES_LIMIT {
                out.push(self.diagnostic(
                    &["sources", name, "max_message_bytes"],
                    format!(
                        "`max_message_bytes` ({}) is above the limit of {MAX_MESSAGE_BYTES_LIMIT} (1 GiB)",
                        source.max_message_bytes
                    ),
                ));
            }
            if self.stages.contains_key(name) {
                out.push(self.diagnostic(
                    &["stages", name],
                    format!("`{name}` names both a source and a stage"),
                ));
            }
        }
        for (key, value) in [
            ("header_timeout", self.monitoring.admin.header_timeout),
            ("idle_timeout", self.monitoring.admin.idle_timeout),
        ] {
            if value.is_zero() {
                out.push(self.diagnostic(
                    &["monitoring", "admin", key],
                    format!("`{key}` must be longer than 0s"),
                ));
            }
        }
        if self.monitoring.admin.max_connections == 0 {
            out.push(self.diagnostic(
                &["monitoring", "admin", "max_connections"],
                "`max_connections` must be at least 1",
            ));
        }
        match (&self.monitoring.mode, &self.monitoring.custom) {
            (MonitoringMode::Custom, None) => out.push(self.diagnostic(
                &["monitoring", "mode"],
                "`mode: custom` needs `monitoring.custom: { plugin: NAME }`",
            )),
            (MonitoringMode::Custom, Some(c)) if c.queue_capacity == 0 => {
                out.push(self.diagnostic(
                    &["monitoring", "custom", "queue_capacity"],
                    "`queue_capacity` must be at least 1",
                ))
            }
            (mode, Some(_)) if *mode != MonitoringMode::Custom => out.push(self.diagnostic(
                &["monitoring", "custom"],
                "`monitoring.custom` applies to `mode: custom` only",
            )),
            _ => {}
        }
        if let Some(otlp) = &self.monitoring.otlp {
            out.extend(self.check_otlp(otlp));
        }
        for (name, source) in &self.sources {
            if source.batch_size > self.runtime.max_in_flight {
                out.push(self.diagnostic(
                    &["sources", name, "batch_size"],
                    format!(
                        "`batch_size` ({}) is larger than `runtime.max_in_flight` ({})",
                        source.batch_size, self.runtime.max_in_flight
                    ),
                ));
            }
        }
        if self.runtime.queue_capacity == 0 {
            out.push(self.diagnostic(
                &["runtime", "queue_capacity"],
                "`queue_capacity` must be at least 1",
            ));
        }
        if self.runtime.max_in_flight_bytes < 1024 {
            out.push(self.diagnostic(
                &["runtime", "max_in_flight_bytes"],
                "`max_in_flight_bytes` must be at least 1024",
            ));
        }
        // A set, not the list: a check of each stage against the list costs stages times
        // targets.
        let export_targets: HashSet<&str> = self
            .monitoring
            .export_to
            .iter()
            .map(String::as_str)
            .collect();
        for (name, stage) in &self.stages {
            // A stage fed only by the monitor's windows may have no inputs.
            if stage.inputs.is_empty() && !export_targets.contains(name.as_str()) {
                out.push(self.diagnostic(
                    &["stages", name, "inputs"],
                    format!("stage `{name}` has no inputs (and is not in monitoring.export_to)"),
                ));
            }
            let mut seen = HashSet::new();
            for (i, input) in stage.inputs.iter().enumerate() {
                let index = i.to_string();
                let path = ["stages", name.as_str(), "inputs", index.as_str()];
                if !self.sources.contains_key(input) && !self.stages.contains_key(input) {
                    out.push(self.diagnostic(
                        &path,
                        format!("stage `{name}`: input `{input}` is neither a source nor a stage"),
                    ));
                } else if input == name {
                    out.push(
                        self.diagnostic(&path, format!("stage `{name}` takes its own output")),
                    );
                } else if !seen.insert(input) {
                    out.push(self.diagnostic(
                        &path,
                        format!("stage `{name}`: input `{input}` is listed twice"),
                    ));
                }
            }
        }
        for (i, target) in self.monitoring.export_to.iter().enumerate() {
            if !self.stages.contains_key(target) {
                let index = i.to_string();
                out.push(self.diagnostic(
                    &["monitoring", "export_to", index.as_str()],
                    format!("monitoring.export_to: `{target}` is not a stage"),
                ));
            }
        }
        if let Some(cycle) = self.find_cycle() {
            let first = &cycle[0];
            out.push(self.diagnostic(
                &["stages", first, "inputs"],
                format!("stages form a cycle: {} -> {first}", cycle.join(" -> ")),
            ));
        }
        out
    }

    /// `monitoring.otlp`: an endpoint the exporter can use, times it can keep.
    fn check_otlp(&self, otlp: &OtlpTelemetryConfig) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        let at = |key: &'static str| ["monitoring", "otlp", key];
        if let Err(why) = check_otlp_endpoint(&otlp.endpoint) {
            out.push(self.diagnostic(&at("endpoint"), format!("monitoring.otlp.endpoint: {why}")));
        }
        for (key, value) in [("interval", otlp.interval), ("timeout", otlp.timeout)] {
            if value.is_zero() {
                out.push(self.diagnostic(&at(key), format!("`{key}` must be longer than 0s")));
            }
        }
        if !otlp.interval.is_zero() && otlp.timeout > otlp.interval {
            out.push(self.diagnostic(
                &at("timeout"),
                format!(
                    "`timeout` ({:?}) is longer than `interval` ({:?}): an export must end before the next one starts",
                    otlp.timeout, otlp.interval
                ),
            ));
        }
        if let Some(traces) = &otlp.traces {
            if self.monitoring.mode == MonitoringMode::Disabled {
                out.push(self.diagnostic(
                    &["monitoring", "otlp", "traces"],
                    "monitoring.otlp.traces: `mode: disabled` does no work per call; traces need direct, event_driven or custom",
                ));
            }
            if !(0.0..=1.0).contains(&traces.sample_ratio) {
                out.push(self.diagnostic(
                    &["monitoring", "otlp", "traces", "sample_ratio"],
                    format!(
                        "`sample_ratio` ({}) must be between 0 and 1",
                        traces.sample_ratio
                    ),
                ));
            }
        }
        for (name, value) in &otlp.headers {
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !name_ok {
                out.push(self.diagnostic(
                    &["monitoring", "otlp", "headers", name.as_str()],
                    format!("monitoring.otlp.headers: {name:?} is not a header name (lower-case a-z, 0-9, - _ .)"),
                ));
            }
            if value.bytes().any(|b| b.is_ascii_control()) {
                out.push(self.diagnostic(
                    &["monitoring", "otlp", "headers", name.as_str()],
                    format!(
                        "monitoring.otlp.headers: the value of {name:?} holds control characters"
                    ),
                ));
            }
        }
        out
    }

    /// A cycle among the stages, as the list of stage names along it, in data-flow order.
    ///
    /// A depth-first walk along the inputs, with a stack of its own: a chain of stages as
    /// long as a pipeline file can hold (hundreds of thousands) would overflow the native
    /// stack if each stage were a call.
    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            /// On the path being walked.
            Active,
            /// Walked, with all it leads to: no cycle there.
            Done,
        }
        let mut marks: HashMap<&str, Mark> = HashMap::new();
        // The stages from the walk's start to where it is, each with how many of its inputs
        // were taken.
        let mut path: Vec<(&str, usize)> = Vec::new();
        for start in self.stages.keys() {
            if marks.contains_key(start.as_str()) {
                continue;
            }
            marks.insert(start, Mark::Active);
            path.push((start, 0));
            while let Some(&(name, taken)) = path.last() {
                let Some(input) = self.stages[name].inputs.get(taken) else {
                    marks.insert(name, Mark::Done);
                    path.pop();
                    continue;
                };
                if let Some(top) = path.last_mut() {
                    top.1 += 1;
                }
                if input == name || !self.stages.contains_key(input) {
                    continue;
                }
                match marks.get(input.as_str()) {
                    Some(Mark::Done) => {}
                    Some(Mark::Active) => {
                        let from = path.iter().position(|(n, _)| n == input).unwrap_or(0);
                        // Walked along inputs; report in data-flow order.
                        return Some(
                            path[from..]
                                .iter()
                                .rev()
                                .map(|(n, _)| n.to_string())
                                .collect(),
                        );
                    }
                    None => {
                        marks.insert(input, Mark::Active);
                        path.push((input, 0));
                    }
                }
            }
        }
        None
    }

    /// The stage's `config` block as the JSON text handed to the stage.
    pub fn stage_config_json(&self, stage: &str) -> Result<String, Diagnostic> {
        self.config_json(&self.stages[stage].config, &["stages", stage, "config"])
    }

    /// A `config:` block (a stage's, or the observer's) as the JSON text handed to the
    /// plugin.
    pub fn config_json(
        &self,
        value: &serde_yaml::Value,
        at: &[&str],
    ) -> Result<String, Diagnostic> {
        if value.is_null() {
            return Ok("{}".into());
        }
        // Straight from the YAML value, so maps keep the order they were written in.
        serde_json::to_string(value)
            .map_err(|e| self.diagnostic(at, format!("config cannot be handed to the plugin: {e}")))
    }

    /// The stages grouped by the thread that runs them (`runtime.fuse`), each group starting
    /// with a stage that takes its input from a queue, every other stage after the one whose
    /// output it takes (depth first, consumers in file order). A stage joins the thread of
    /// its input when that input is its only one and a stage, and it is no target of
    /// `monitoring.export_to` (which feeds it from outside); with `chains`, only when it is
    /// also that stage's only consumer. With `trees`, the stages whose only input is the same
    /// source share one thread too (each with its tree, in file order): the source hands
    /// each batch to that one thread, which calls them one after the other. Groups follow
    /// the file order of their first stage.
    pub fn stage_threads(&self) -> Vec<Vec<&str>> {
        let mut groups: Vec<Vec<&str>> = Vec::new();
        // The group of each source whose stages share a thread: an index into `groups`.
        let mut of_source: HashMap<&str, usize> = HashMap::new();
        for name in self.stages.keys() {
            if self.fused_into(name).is_some() {
                continue;
            }
            let group = match self.source_fed(name) {
                Some(source) => {
                    let g = *of_source.entry(source).or_insert_with(|| {
                        groups.push(Vec::new());
                        groups.len() - 1
                    });
                    &mut groups[g]
                }
                None => {
                    groups.push(Vec::new());
                    groups.last_mut().expect("just pushed")
                }
            };
            let mut todo = vec![name.as_str()];
            let mut added = 0;
            // Bounded: a cycle (refused by `check`) cannot make it loop.
            while let Some(stage) = todo.pop() {
                if added == self.stages.len() {
                    break;
                }
                added += 1;
                group.push(stage);
                let fused: Vec<&str> = self
                    .consumers_of(stage)
                    .filter(|c| self.fused_into(c) == Some(stage))
                    .collect();
                todo.extend(fused.into_iter().rev());
            }
        }
        groups
    }

    /// The source on whose thread group `name` runs (`trees`): its only input is that source.
    fn source_fed<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.only_input(name)
            .filter(|input| self.runtime.fuse == Fuse::Trees && self.sources.contains_key(*input))
    }

    /// The stage on whose thread `name` runs, if not its own.
    fn fused_into<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.only_input(name).filter(|input| {
            self.stages.contains_key(*input)
                && match self.runtime.fuse {
                    Fuse::None => false,
                    Fuse::Trees => true,
                    Fuse::Chains => self.consumers_of(input).nth(1).is_none(),
                }
        })
    }

    /// The one input of stage `name`, if it has one and nothing else feeds it: a target of
    /// `monitoring.export_to` is fed the monitor's windows too, from outside any thread.
    fn only_input<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        match self.stages[name].inputs.as_slice() {
            [input] if !self.monitoring.export_to.iter().any(|t| t == name) => Some(input),
            _ => None,
        }
    }

    /// The names of the stages that take `name`'s output, in file order.
    pub fn consumers_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.stages
            .iter()
            .filter(move |(_, s)| s.inputs.iter().any(|i| i == name))
            .map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::parse(Path::new("p.yaml"), text, |_| None)
    }

    fn messages(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ConfigError::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
            other => panic!("expected diagnostics, got {other:?}"),
        }
    }

    const GOOD: &str = "sources:\n  in: { type: zmq, socket: pull, bind: \"tcp://127.0.0.1:1\" }\nstages:\n  a: { plugin: passthrough, inputs: [in] }\n  b: { plugin: null, inputs: [a] }\n";

    #[test]
    fn stages_share_the_thread_of_their_only_input() {
        let text = "sources:\n  in: { type: zmq, socket: pull, bind: \"tcp://127.0.0.1:1\" }
stages:
  a: { plugin: passthrough, inputs: [in] }
  b: { plugin: passthrough, inputs: [a] }
  c: { plugin: passthrough, inputs: [b] }
  d: { plugin: passthrough, inputs: [b] }
  h: { plugin: null, inputs: [c, d] }
  e: { plugin: passthrough, inputs: [in] }
  f: { plugin: passthrough, inputs: [e] }
  m: { plugin: null, inputs: [f] }
  w: { plugin: null, inputs: [] }
monitoring: { export_to: [m, w] }
";
        let mut cfg = parse(text).unwrap();
        // h has two inputs, m also takes the monitor's windows; a and e take only the
        // source's output, so their trees share a thread.
        assert_eq!(
            cfg.stage_threads(),
            [
                vec!["a", "b", "c", "d", "e", "f"],
                vec!["h"],
                vec!["m"],
                vec!["w"]
            ]
        );
        // b has two consumers: only chains.
        cfg.runtime.fuse = Fuse::Chains;
        assert_eq!(
            cfg.stage_threads(),
            [
                vec!["a", "b"],
                vec!["c"],
                vec!["d"],
                vec!["h"],
                vec!["e", "f"],
                vec!["m"],
                vec!["w"]
            ]
        );
        cfg.runtime.fuse = Fuse::None;
        assert_eq!(cfg.stage_threads().len(), cfg.stages.len());
    }

    #[test]
    fn a_good_file_parses_with_defaults() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.sources["in"].batch_size, 512);
        assert_eq!(cfg.sources["in"].max_message_bytes, 1 << 20);
        assert_eq!(cfg.sources["in"].max_delay, Duration::ZERO);
        assert_eq!(cfg.monitoring.mode, MonitoringMode::Direct);
        assert_eq!(cfg.consumers_of("a").collect::<Vec<_>>(), ["b"]);
        assert_eq!(cfg.stage_config_json("a").unwrap(), "{}");
    }

    #[test]
    fn a_source_max_delay_is_a_duration_of_at_most_a_second() {
        let source = |delay: &str| {
            format!("sources:\n  in: {{ type: zmq, socket: pull, bind: x, max_delay: {delay} }}\nstages: {{}}\n")
        };
        let cfg = parse(&source("5ms")).unwrap();
        assert_eq!(cfg.sources["in"].max_delay, Duration::from_millis(5));
        let m = messages(&source("2s"));
        assert!(
            m.iter().any(|l| l.starts_with("p.yaml:2:")
                && l.contains("`max_delay` (2s) is above the limit of 1s")),
            "{m:?}"
        );
        let m = messages(&source("soon"));
        assert!(m[0].starts_with("p.yaml:2:"), "{m:?}");
    }

    #[test]
    fn unknown_key_has_line_and_column() {
        let m =
            messages("sources:\n  in: { type: zmq, socket: pull, bind: x, bnid: y }\nstages: {}\n");
        assert!(m[0].starts_with("p.yaml:2:"), "{m:?}");
        assert!(m[0].contains("unknown field `bnid`"), "{m:?}");
    }

    #[test]
    fn missing_input_and_cycle_are_located() {
        let text = "sources:\n  in: { type: zmq, socket: pull, bind: x }\nstages:\n  a: { plugin: p, inputs: [in, c] }\n  b: { plugin: p, inputs: [nope] }\n  c: { plugin: p, inputs: [a] }\n";
        let m = messages(text);
        assert!(
            m.iter()
                .any(|l| l.starts_with("p.yaml:5:") && l.contains("`nope`")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|l| l.contains("cycle") && l.contains("c -> a -> c")),
            "{m:?}"
        );
    }

    /// A chain as long as a pipeline file can hold is walked without recursion: a call per
    /// stage overflowed the stack (a test thread's 2 MiB) long before this.
    #[test]
    fn a_long_chain_is_walked_for_cycles_without_recursion() {
        let mut cfg = parse(GOOD).unwrap();
        let n = 400_000;
        let stage = |input: String| StageConfig {
            plugin: "passthrough".into(),
            inputs: vec![input],
            config: serde_yaml::Value::Null,
        };
        cfg.stages.clear();
        cfg.stages.insert("s0".into(), stage("in".into()));
        for i in 1..n {
            cfg.stages
                .insert(format!("s{i}"), stage(format!("s{}", i - 1)));
        }
        assert_eq!(cfg.find_cycle(), None);

        // Closed into a ring: every stage is on the cycle, reported in data-flow order.
        cfg.stages["s0"].inputs.push(format!("s{}", n - 1));
        let cycle = cfg.find_cycle().expect("a cycle");
        assert_eq!(cycle.len(), n);
        assert_eq!(cycle[0], "s1");
        assert_eq!(cycle[n - 1], "s0");
        assert!(cycle
            .windows(2)
            .all(|w| cfg.stages[&w[1]].inputs.contains(&w[0])));
    }

    #[test]
    fn names_are_limited_to_a_safe_character_set() {
        for good in ["a", "export-monitor", "in_2", "v1.2", "_x", &"n".repeat(64)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "a\nb", "a b", "-a", ".a", "é", "a/b", &"n".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        let m = messages("sources:\n  \"in\\n\": { type: zmq, socket: pull, bind: x }\nstages:\n  \"\": { plugin: null, inputs: [\"in\\n\"] }\n");
        assert!(
            m.iter().any(
                |l| l.starts_with("p.yaml:2:3:") && l.contains("\"in\\n\" is not a valid name")
            ),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|l| l.starts_with("p.yaml:4:3:") && l.contains("\"\" is not a valid name")),
            "{m:?}"
        );
    }

    #[test]
    fn unset_variable_is_located() {
        let m = messages(
            "sources:\n  in: { type: zmq, socket: pull, bind: \"${ENDPOINT}\" }\nstages: {}\n",
        );
        assert!(m[0].starts_with("p.yaml:2:"), "{m:?}");
        assert!(m[0].contains("ENDPOINT"), "{m:?}");
    }

    #[test]
    fn otlp_telemetry_parses_with_defaults_and_bad_values_are_located() {
        let cfg = parse(&format!(
            "{GOOD}monitoring:\n  otlp: {{ endpoint: \"http://127.0.0.1:4317\" }}\n"
        ))
        .unwrap();
        let otlp = cfg.monitoring.otlp.unwrap();
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp.interval, Duration::from_secs(60));
        assert_eq!(otlp.timeout, Duration::from_secs(10));

        let cfg = parse(&format!(
            "{GOOD}monitoring:\n  otlp:\n    endpoint: \"http://collector:4318\"\n    protocol: http\n    interval: 2s\n    timeout: 1s\n    headers: {{ x-api-key: secret }}\n    resource: {{ deployment.environment: test }}\n"
        ))
        .unwrap();
        let otlp = cfg.monitoring.otlp.unwrap();
        assert_eq!(otlp.protocol, OtlpProtocol::Http);
        assert_eq!(otlp.interval, Duration::from_secs(2));
        assert_eq!(otlp.headers["x-api-key"], "secret");
        assert_eq!(otlp.resource["deployment.environment"], "test");

        let m = messages(&format!(
            "{GOOD}monitoring:\n  otlp: {{ endpoint: \"http://x:1\", intervall: 1s }}\n"
        ));
        assert!(m[0].starts_with("p.yaml:7:"), "{m:?}");
        assert!(m[0].contains("unknown field `intervall`"), "{m:?}");

        let m = messages(&format!(
            "{GOOD}monitoring:\n  otlp:\n    endpoint: \"https://x:1\"\n    interval: 1s\n    timeout: 5s\n    headers: {{ \"Bad Name\": v }}\n"
        ));
        assert!(
            m.iter()
                .any(|l| l.starts_with("p.yaml:8:") && l.contains("https is not supported")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|l| l.starts_with("p.yaml:10:") && l.contains("longer than `interval`")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|l| l.starts_with("p.yaml:11:") && l.contains("not a header name")),
            "{m:?}"
        );
        for bad in [
            "127.0.0.1:4317",
            "http://host",
            "http://:4317",
            "http://h:0",
        ] {
            assert!(check_otlp_endpoint(bad).is_err(), "{bad}");
        }
        assert!(check_otlp_endpoint("http://localhost:4318/otlp/v1/metrics").is_ok());
    }
}
