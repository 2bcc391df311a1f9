//! The library's root module: what the host finds in a stage library, and the context of
//! callbacks it hands to each stage.

// sabi_trait generates impls of foreign traits next to the trait; the lint misreads that.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

use crate::stage::{Batch, HealthReport, StageError, StageKind};

/// A stage instance behind the boundary, as the host holds it.
///
/// Grow this trait only by appending methods after the last one.
#[sabi_trait]
pub trait FfiStage: Send {
    /// Handles one batch in place. `Err` fails every record the batch was called with.
    fn process(&mut self, batch: &mut Batch) -> RResult<(), StageError>;

    /// Writes out whatever the stage buffers. Called at shutdown, after the last batch.
    fn flush(&mut self) -> RResult<(), StageError>;

    #[sabi(last_prefix_field)]
    fn health(&mut self) -> HealthReport;
}

/// An owned, type-erased stage.
pub type StageBox = FfiStage_TO<'static, RBox<()>>;

/// One stage a library offers.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct StageInfo {
    pub name: RString,
    pub kind: StageKind,
}

/// What a library says about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The library's package name.
    pub library: RString,
    /// The library's package version.
    pub version: RString,
    /// The version of `plugin-api` the library was built against.
    pub api_version: RString,
    pub stages: RVec<StageInfo>,
}

/// Log levels, most severe first, as `tracing` orders them.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// The kind of a metric a stage records through [`HostContext::metric`].
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Adds the value to a running total.
    Counter,
    /// Sets the current value.
    Gauge,
    /// Records one observation into a distribution (timers record seconds).
    Histogram,
}

/// One label of a metric.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Label<'a> {
    pub key: RStr<'a>,
    pub value: RStr<'a>,
}

/// The host's callbacks, handed to every stage when it is built. A library has its own
/// statics (its own `tracing` dispatcher, its own allocator state), so this is the only way
/// logs and metrics reach the host.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostContext {
    /// Levels above this are not worth formatting: the host would drop them.
    pub max_log_level: LogLevel,
    pub log: extern "C" fn(level: LogLevel, target: RStr<'_>, message: RStr<'_>),
    /// Records a metric under the stage named `stage`.
    pub metric: extern "C" fn(
        stage: RStr<'_>,
        kind: MetricKind,
        name: RStr<'_>,
        value: f64,
        labels: RSlice<'_, Label<'_>>,
    ),
}

/// The root module every stage library exports (see [`crate::export_plugin!`]).
///
/// Grow it only by appending fields after `new_stage`, marking the new last one with
/// `#[sabi(last_prefix_field)]`: older hosts then still load newer libraries.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    pub manifest: extern "C" fn() -> Manifest,
    /// Checks a stage's configuration (JSON text) without building anything.
    pub check_config: extern "C" fn(stage: RStr<'_>, config_json: RStr<'_>) -> RResult<(), RString>,
    /// Builds stage `stage` as the pipeline's instance `instance`.
    #[sabi(last_prefix_field)]
    pub new_stage: extern "C" fn(
        stage: RStr<'_>,
        instance: RStr<'_>,
        config_json: RStr<'_>,
        host: HostContext,
    ) -> RResult<StageBox, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "plugin_api";
    const NAME: &'static str = "plugin_api";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
