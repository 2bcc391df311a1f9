//! The boundary: what the host finds in a library ([`PluginMod`], its root module), what it
//! hands each stage ([`HostContext`]), and the objects that cross in between ([`StageBox`],
//! [`AckBox`], [`ObserverBox`]).
//!
//! Everything here grows by appending, never by changing what is there:
//!
//! - [`PluginMod`], [`Manifest`] and [`HostCallbacks`] are abi_stable prefix types. Fields
//!   after the one marked `#[sabi(last_prefix_field)]` may be missing (the other side was
//!   built before they were appended) and are read as `Option`s. The marker never moves.
//! - The trait objects ([`FfiStage`], [`FfiAck`], [`FfiObserver`]) grow by appending methods
//!   after the last one; their vtables are prefix types too.
//! - The small enums are open (see [`crate::kinds`]); [`crate::Value`] is non-exhaustive.
//!
//! abi_stable checks all of it when a library is loaded; see the README's compatibility
//! contract for what that allows.

// sabi_trait generates impls of foreign traits next to the trait; the lint misreads that.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RArc, RBox, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

use crate::{
    batch::Batch,
    kinds::{HealthReport, LogLevel, MetricKind, StageError, StageKind},
    record::Record,
};

/// A stage instance behind the boundary, as the host holds it. Only the host's worker for
/// the stage calls it, one call at a time.
#[sabi_trait]
pub trait FfiStage: Send {
    /// Handles one batch in place. `Err` fails every record the batch was called with.
    fn process(&mut self, batch: &mut Batch) -> RResult<(), StageError>;

    /// Writes out whatever the stage buffers. Called once, after the last batch.
    fn flush(&mut self) -> RResult<(), StageError>;

    fn health(&mut self) -> HealthReport;

    /// Whether the stage can take a batch now. The worker asks before each batch and, while
    /// the answer is no, leaves the batch in the queue (back-pressure upstream) and asks again
    /// shortly: a stage never has to block inside a call to slow the pipeline down.
    fn ready(&mut self) -> bool;

    /// Called once after the stage is built, then whenever the interval it returned last has
    /// passed: the next interval in milliseconds, or 0 for no more ticks.
    #[sabi(last_prefix_field)]
    fn tick(&mut self) -> u64;
}

/// An owned, type-erased stage.
pub type StageBox = FfiStage_TO<'static, RBox<()>>;

/// How a stage settles records it took for later (see [`crate::Deferred`]). The host makes
/// one per call; a stage holds it (through a `Ticket`) as long as it holds records, on any
/// thread.
#[sabi_trait]
pub trait FfiAck: Send + Sync + Clone {
    /// The stage took the records with these message ids, to settle later.
    fn deferred(&self, ids: RSlice<'_, u64>);

    /// They were delivered (exported).
    fn delivered(&self, ids: RSlice<'_, u64>);

    /// They failed, with this error's kind as their error type.
    fn failed(&self, ids: RSlice<'_, u64>, error: &StageError);

    /// Hand them back: the host calls the stage with them again after `after_ms`.
    #[sabi(last_prefix_field)]
    fn retry(&self, records: RVec<Record>, after_ms: u64);
}

/// A shared handle on the host's side of a deferral.
pub type AckBox = FfiAck_TO<'static, RArc<()>>;

/// The outcome of one stage call, as an observer (`monitoring.mode: custom`) receives it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct CallReport {
    pub stage: RString,
    /// `process`, or `process.record` for records that failed one by one in a call that
    /// returned.
    pub operation: RString,
    /// When the call ended, in nanoseconds since the Unix epoch.
    pub ended_at_ns: u64,
    pub duration_ns: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub records_failed: u64,
    /// The error type of a failed call (or of the failed records); empty when none.
    pub error_type: RString,
}

/// An observer behind the boundary: receives every stage call's outcome, in batches, on a
/// thread of its own.
#[sabi_trait]
pub trait FfiObserver: Send {
    fn observe(&mut self, calls: RSlice<'_, CallReport>);

    #[sabi(last_prefix_field)]
    fn flush(&mut self);
}

/// An owned, type-erased observer.
pub type ObserverBox = FfiObserver_TO<'static, RBox<()>>;

/// One label of a metric.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Label<'a> {
    pub key: RStr<'a>,
    pub value: RStr<'a>,
}

/// The host's state for one stage instance, opaque to the library: passed back to every
/// callback so that logs and metrics land with the right stage (no global sink).
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct HostCtx(*const ());

impl HostCtx {
    /// For hosts: wraps a pointer to state that lives as long as the process.
    #[doc(hidden)]
    pub fn new(ptr: *const ()) -> HostCtx {
        HostCtx(ptr)
    }

    #[doc(hidden)]
    pub fn as_ptr(self) -> *const () {
        self.0
    }
}

/// The host's callbacks. A library has its own statics (its own `tracing` dispatcher, its own
/// allocator), so this is how its logs and metrics reach the host.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostCallbacksRef)))]
#[sabi(missing_field(option))]
pub struct HostCallbacks {
    /// Logs one event of the library's, under `target` (its module path, which `RUST_LOG`
    /// filters on), for the stage of `ctx`.
    pub log: extern "C" fn(ctx: HostCtx, level: LogLevel, target: RStr<'_>, message: RStr<'_>),
    /// Records a metric for the stage of `ctx`.
    #[sabi(last_prefix_field)]
    pub metric: extern "C" fn(
        ctx: HostCtx,
        kind: MetricKind,
        name: RStr<'_>,
        value: f64,
        labels: RSlice<'_, Label<'_>>,
    ),
    /// Whether events at `level` under `target` would be logged: lets a library skip
    /// formatting what the host would drop. (Appended after the first 0.2 shape: a library
    /// that finds it missing formats every event and leaves the filtering to the host.)
    #[cfg(not(feature = "__compat_older_shape"))]
    pub log_enabled: extern "C" fn(ctx: HostCtx, level: LogLevel, target: RStr<'_>) -> bool,
    #[cfg(feature = "__compat_newer_shape")]
    pub added_later: extern "C" fn(ctx: HostCtx) -> u64,
}

/// What the host hands each stage when it builds it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostContext {
    pub callbacks: HostCallbacksRef,
    pub ctx: HostCtx,
}

// SAFETY: the host promises (README, "the compatibility contract") that its callbacks can be
// called from any thread and that the context they are given lives as long as the process.
unsafe impl Send for HostContext {}
// SAFETY: as above.
unsafe impl Sync for HostContext {}

/// One stage type a library offers.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct StageInfo {
    pub name: RString,
    pub kind: StageKind,
}

/// What a library says about itself.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ManifestRef)))]
#[sabi(missing_field(option))]
pub struct Manifest {
    /// The library's package name.
    pub library: RStr<'static>,
    /// The library's package version.
    pub version: RStr<'static>,
    /// The version of `plugin-api` the library was built against.
    pub api_version: RStr<'static>,
    /// Its stage types (and observer types, kind `observer`).
    #[sabi(last_prefix_field)]
    pub stages: RSlice<'static, StageInfo>,
    /// Whether a panic in it unwinds (it was built with `panic = "unwind"`), so that the SDK
    /// can catch it. A host refuses a library that says it aborts.
    pub unwinds: bool,
}

/// A stage config the library refuses: where (a path into the `config:` block, such as
/// `drop[0].field`, empty for the block itself) and why.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: RString,
    pub message: RString,
}

/// The root module every library exports (see [`crate::export_plugin!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(option))]
pub struct PluginMod {
    pub manifest: extern "C" fn() -> ManifestRef,
    /// Checks a config (JSON text) for stage or observer type `kind` without building it.
    pub check_config:
        extern "C" fn(kind: RStr<'_>, config_json: RStr<'_>) -> RResult<(), ConfigError>,
    /// Builds stage type `kind` as the pipeline's instance `instance`.
    #[sabi(last_prefix_field)]
    pub new_stage: extern "C" fn(
        kind: RStr<'_>,
        instance: RStr<'_>,
        config_json: RStr<'_>,
        host: HostContext,
    ) -> RResult<StageBox, RString>,
    /// Builds observer type `kind`. (Appended after the first 0.2 shape: a library built
    /// before it has no observers.)
    #[cfg(not(feature = "__compat_older_shape"))]
    pub new_observer: extern "C" fn(
        kind: RStr<'_>,
        config_json: RStr<'_>,
        host: HostContext,
    ) -> RResult<ObserverBox, RString>,
    #[cfg(feature = "__compat_newer_shape")]
    pub added_later: extern "C" fn() -> u64,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "plugin_api";
    const NAME: &'static str = "plugin_api";
    const VERSION_STRINGS: VersionStrings = VERSION_STRINGS;
}

/// The `plugin-api` version a library claims: checked at load (`VERSION_STRINGS`) and
/// listed from its manifest ([`crate::API_VERSION`]).
#[cfg(not(any(
    feature = "__compat_next_minor",
    feature = "__compat_older_shape",
    feature = "__compat_newer_shape"
)))]
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// A fixture built "against a later 0.2.x" claims a later patch than any host of this line.
#[cfg(all(feature = "__compat_newer_shape", not(feature = "__compat_next_minor")))]
pub(crate) const VERSION: &str = "0.2.999";
/// A fixture built "against the next minor" (0.3) claims that version.
#[cfg(feature = "__compat_next_minor")]
pub(crate) const VERSION: &str = "0.3.0";
/// A fixture built "before fields were appended" claims the first 0.2 release, as a library
/// built against an earlier patch would.
#[cfg(all(feature = "__compat_older_shape", not(feature = "__compat_next_minor")))]
pub(crate) const VERSION: &str = "0.2.0";

const VERSION_STRINGS: VersionStrings = VersionStrings::new(VERSION);
