//! The authoring SDK: implement [`Stage`] (or [`Observer`]) on a plain Rust type, list it in
//! [`crate::export_plugin!`]; this module makes the FFI glue.
//!
//! Every call into a stage is guarded: a panic becomes a [`StageError`] of kind `panic`
//! instead of unwinding into the host, and the stage instance is known to the library's
//! `tracing` events (they reach the host's log tagged with it).

pub mod exporter;
mod logging;

use std::{
    any::Any,
    panic::{catch_unwind, AssertUnwindSafe},
    time::Duration,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, RResult, RSlice, RStr, RString},
};
use serde::de::DeserializeOwned;

pub use logging::init_library;

use crate::{
    batch::Batch,
    kinds::{HealthReport, HealthStatus, MetricKind, StageError, StageKind},
    module::{
        CallReport, ConfigError, FfiObserver, FfiObserver_TO, FfiStage, FfiStage_TO, HostContext,
        Label, ObserverBox, StageBox, StageInfo,
    },
};

/// The version of `plugin-api` a library is built against; goes into its manifest.
pub const API_VERSION: &str = crate::module::VERSION;

/// A stage, as its author writes it: a config type, a build step, then the runtime type
/// (`Config` -> `build` -> `process`).
///
/// Threads: the host calls a stage from one thread at a time (its worker), so `&mut self`
/// is all it needs; a stage may start threads of its own (to send in the background, say).
/// Records it takes for later ([`Batch::defer_all`]) may be settled from any thread.
///
/// Shutdown: after the last batch, `flush` is called once; then the host waits for deferred
/// records to be settled (up to `runtime.drain_timeout`), and drops the stage. `Drop` should
/// stop the stage's threads and return promptly.
pub trait Stage: Sized + Send + 'static {
    /// The name pipelines use in `plugin:`.
    const NAME: &'static str;
    const KIND: StageKind;
    /// The stage's `config:` block. Use `#[serde(deny_unknown_fields)]` so typos are errors;
    /// `()` for a stage that takes no settings.
    type Config: DeserializeOwned;

    /// Checks a config beyond what deserializing it checks. Must not touch the outside world:
    /// `host validate` calls it.
    fn check(_config: &Self::Config) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Builds the stage; may open files or connections. Metrics recorded here are kept.
    fn build(config: Self::Config, ctx: StageContext) -> Result<Self, String>;

    /// Handles one batch in place (see [`Batch`] for what the records left in it mean).
    fn process(&mut self, batch: &mut Batch) -> Result<(), StageError>;

    /// Writes out anything buffered; called once after the last batch.
    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }

    /// Answers the host's health check. Called between calls to `process`, never during one:
    /// an exporter should answer from what it knows of its target, not by trying it.
    fn health(&mut self) -> HealthReport {
        HealthReport::healthy()
    }

    /// Whether the stage can take a batch now (asked before each call to `process`). While
    /// it says no, batches wait in the stage's queue and the pipeline slows down behind it;
    /// the host asks again every few milliseconds. A stage whose own buffer is full says no
    /// here instead of blocking in `process`, so that it stays responsive (health, shutdown).
    fn ready(&mut self) -> bool {
        true
    }

    /// Called once right after `build`, then whenever the interval it returned last has
    /// passed (between calls to `process`): for stages that batch by time without a thread.
    /// Returns the next interval; `None` for no (more) ticks.
    fn tick(&mut self) -> Option<Duration> {
        None
    }
}

/// An observer (`monitoring.mode: custom`): receives the outcome of every stage call, as the
/// built-in monitor does, in batches, on a thread of its own. A slow observer never slows a
/// stage: the host queues the outcomes (bounded) and counts what it has to drop.
pub trait Observer: Sized + Send + 'static {
    /// The name pipelines use in `monitoring.custom.plugin`.
    const NAME: &'static str;
    type Config: DeserializeOwned;

    fn check(_config: &Self::Config) -> Result<(), ConfigError> {
        Ok(())
    }

    fn build(config: Self::Config, ctx: StageContext) -> Result<Self, String>;

    fn observe(&mut self, calls: &[CallReport]);

    /// Called once at shutdown, after the last outcome.
    fn flush(&mut self) {}
}

impl ConfigError {
    /// A config error about the key at `path` (`drop[0].field`).
    pub fn at(path: impl Into<RString>, message: impl Into<RString>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<String> for ConfigError {
    fn from(message: String) -> ConfigError {
        ConfigError::at("", message)
    }
}

impl From<&str> for ConfigError {
    fn from(message: &str) -> ConfigError {
        ConfigError::at("", message)
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "at `{}`: {}", self.path, self.message)
        }
    }
}

/// What a stage gets from the host: its instance name, and its way to record metrics. Clone
/// it into the stage's own threads freely.
#[derive(Clone)]
pub struct StageContext {
    instance: RString,
    host: Option<HostContext>,
}

impl StageContext {
    /// A context that records nothing (for tests).
    pub fn detached(instance: &str) -> Self {
        StageContext {
            instance: instance.into(),
            host: None,
        }
    }

    #[doc(hidden)]
    pub fn new(instance: &str, host: Option<HostContext>) -> Self {
        StageContext {
            instance: instance.into(),
            host,
        }
    }

    /// The host's `added_later` callback, called if the host has it: a fixture built in the
    /// newer shape reads what an older host lacks, through the accessor that looks at the
    /// table the host handed over.
    #[cfg(feature = "__compat_newer_shape")]
    #[doc(hidden)]
    pub fn __added_later(&self) -> Option<u64> {
        let host = self.host?;
        host.callbacks.added_later().map(|f| f(host.ctx))
    }

    /// The stage's name in the pipeline file.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Runs `f` as this stage: `tracing` events it emits on this thread reach the host's
    /// log tagged with the stage. The SDK does this around every call the host makes; use it
    /// on threads the stage starts itself.
    pub fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        logging::in_scope(self.host, f)
    }

    fn metric(&self, kind: MetricKind, name: &str, value: f64, labels: &[(&str, &str)]) {
        let Some(host) = self.host else { return };
        const INLINE: usize = 8;
        let mut buf = [Label {
            key: RStr::from_str(""),
            value: RStr::from_str(""),
        }; INLINE];
        let heap: Vec<Label<'_>>;
        let labels: &[Label<'_>] = if labels.len() <= INLINE {
            for (slot, (k, v)) in buf.iter_mut().zip(labels) {
                *slot = Label {
                    key: RStr::from_str(k),
                    value: RStr::from_str(v),
                };
            }
            &buf[..labels.len()]
        } else {
            heap = labels
                .iter()
                .map(|(k, v)| Label {
                    key: RStr::from_str(k),
                    value: RStr::from_str(v),
                })
                .collect();
            &heap
        };
        (host.callbacks.metric())(
            host.ctx,
            kind,
            RStr::from_str(name),
            value,
            RSlice::from_slice(labels),
        );
    }

    /// Adds `value` to counter `name` (shown as `host_plugin_<name>_total`, labelled with the
    /// stage). The host refuses an update (and counts it, by reason, in
    /// `host_monitor_plugin_updates_dropped_total`) with a label named `stage`, `le` or
    /// `quantile` (`reserved_label`), a label name that is not a Prometheus one or starts with
    /// `__` (`invalid_label`), or the same label name twice (`duplicate_label`); the same
    /// holds for every kind of metric.
    pub fn counter(&self, name: &str, value: f64, labels: &[(&str, &str)]) {
        self.metric(MetricKind::Counter, name, value, labels);
    }

    /// Sets gauge `name` to `value`.
    pub fn gauge(&self, name: &str, value: f64, labels: &[(&str, &str)]) {
        self.metric(MetricKind::Gauge, name, value, labels);
    }

    /// Records one observation of histogram `name`.
    pub fn histogram(&self, name: &str, value: f64, labels: &[(&str, &str)]) {
        self.metric(MetricKind::Histogram, name, value, labels);
    }

    /// Records a duration, in seconds, into histogram `name`.
    pub fn timer(&self, name: &str, elapsed: Duration, labels: &[(&str, &str)]) {
        self.histogram(name, elapsed.as_secs_f64(), labels);
    }
}

/// The message of a caught panic, as far as it can be read.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

fn panic_error(payload: Box<dyn Any + Send>) -> StageError {
    StageError::new("panic", panic_message(&*payload))
}

/// Wraps a [`Stage`] so that it can cross the boundary; every call is guarded.
struct Guarded<S> {
    stage: S,
    host: Option<HostContext>,
}

impl<S> Guarded<S> {
    fn call<T>(&mut self, f: impl FnOnce(&mut S) -> T) -> Result<T, Box<dyn Any + Send>> {
        let (stage, host) = (&mut self.stage, self.host);
        logging::in_scope(host, || catch_unwind(AssertUnwindSafe(|| f(stage))))
    }
}

impl<S: Stage> FfiStage for Guarded<S> {
    fn process(&mut self, batch: &mut Batch) -> RResult<(), StageError> {
        match self.call(|s| s.process(batch)) {
            Ok(Ok(())) => ROk(()),
            Ok(Err(e)) => RErr(e),
            Err(payload) => RErr(panic_error(payload)),
        }
    }

    fn flush(&mut self) -> RResult<(), StageError> {
        match self.call(S::flush) {
            Ok(r) => r.into(),
            Err(payload) => RErr(panic_error(payload)),
        }
    }

    fn health(&mut self) -> HealthReport {
        self.call(S::health).unwrap_or_else(|payload| {
            HealthReport::new(
                HealthStatus::Unhealthy,
                format!("health check panicked: {}", panic_message(&*payload)),
            )
        })
    }

    fn ready(&mut self) -> bool {
        // A stage whose readiness check panics is taken as ready: `process` will report it.
        self.call(S::ready).unwrap_or(true)
    }

    fn tick(&mut self) -> u64 {
        match self.call(S::tick) {
            Ok(Some(d)) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1),
            Ok(None) => 0,
            // A stage whose tick panics gets no more ticks; the panic was logged by the hook.
            Err(_) => 0,
        }
    }
}

/// Deserializes a config from the JSON text the host hands over, naming the key an error is
/// about. An empty block (`{}`) also reads as `null`, so that `type Config = ()` works.
fn parse_config<C: DeserializeOwned>(config_json: &str) -> Result<C, ConfigError> {
    let parse = |text: &str| {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize::<_, C>(&mut de)
    };
    let parsed = match parse(config_json) {
        Err(e) if config_json.trim() == "{}" => parse("null").map_err(|_| e),
        other => other,
    };
    parsed.map_err(|e| {
        let path = e.path().to_string();
        let message = strip_json_position(e.into_inner().to_string());
        ConfigError::at(if path == "." { String::new() } else { path }, message)
    })
}

/// serde_json appends "at line 1 column 57" of the JSON the host made; the host reports the
/// position in the YAML file instead.
fn strip_json_position(mut message: String) -> String {
    if let Some(pos) = message.rfind(" at line ") {
        message.truncate(pos);
    }
    message
}

fn guarded_check<C: DeserializeOwned>(
    config_json: RStr<'_>,
    check: impl FnOnce(&C) -> Result<(), ConfigError>,
) -> RResult<(), ConfigError> {
    match catch_unwind(AssertUnwindSafe(|| {
        parse_config::<C>(config_json.as_str()).and_then(|c| check(&c))
    })) {
        Ok(r) => r.into(),
        Err(payload) => RErr(ConfigError::at(
            "",
            format!("config check panicked: {}", panic_message(&*payload)),
        )),
    }
}

/// Checks a stage config without building: the body of a library's `check_config`.
pub fn check<S: Stage>(config_json: RStr<'_>) -> RResult<(), ConfigError> {
    guarded_check::<S::Config>(config_json, S::check)
}

/// Checks an observer config without building.
pub fn check_observer<O: Observer>(config_json: RStr<'_>) -> RResult<(), ConfigError> {
    guarded_check::<O::Config>(config_json, O::check)
}

/// Builds a stage behind the boundary: the body of a library's `new_stage`.
pub fn build<S: Stage>(
    instance: RStr<'_>,
    config_json: RStr<'_>,
    host: Option<HostContext>,
) -> RResult<StageBox, RString> {
    let ctx = StageContext::new(instance.as_str(), host);
    let result = logging::in_scope(host, || {
        catch_unwind(AssertUnwindSafe(|| {
            let config =
                parse_config::<S::Config>(config_json.as_str()).map_err(|e| e.to_string())?;
            S::check(&config).map_err(|e| e.to_string())?;
            S::build(config, ctx)
        }))
    });
    match result {
        Ok(Ok(stage)) => ROk(FfiStage_TO::from_value(Guarded { stage, host }, TD_Opaque)),
        Ok(Err(e)) => RErr(e.into()),
        Err(payload) => {
            RErr(format!("building the stage panicked: {}", panic_message(&*payload)).into())
        }
    }
}

struct GuardedObserver<O> {
    observer: O,
    host: Option<HostContext>,
}

impl<O: Observer> FfiObserver for GuardedObserver<O> {
    fn observe(&mut self, calls: RSlice<'_, CallReport>) {
        let (observer, host) = (&mut self.observer, self.host);
        // A panicking observer loses this batch of outcomes, not the host (the panic hook
        // logged it).
        let _ = logging::in_scope(host, || {
            catch_unwind(AssertUnwindSafe(|| observer.observe(calls.as_slice())))
        });
    }

    fn flush(&mut self) {
        let (observer, host) = (&mut self.observer, self.host);
        let _ = logging::in_scope(host, || catch_unwind(AssertUnwindSafe(|| observer.flush())));
    }
}

/// Builds an observer behind the boundary: the body of a library's `new_observer`.
pub fn build_observer<O: Observer>(
    config_json: RStr<'_>,
    host: Option<HostContext>,
) -> RResult<ObserverBox, RString> {
    let ctx = StageContext::new(O::NAME, host);
    let result = logging::in_scope(host, || {
        catch_unwind(AssertUnwindSafe(|| {
            let config =
                parse_config::<O::Config>(config_json.as_str()).map_err(|e| e.to_string())?;
            O::check(&config).map_err(|e| e.to_string())?;
            O::build(config, ctx)
        }))
    });
    match result {
        Ok(Ok(observer)) => ROk(FfiObserver_TO::from_value(
            GuardedObserver { observer, host },
            TD_Opaque,
        )),
        Ok(Err(e)) => RErr(e.into()),
        Err(payload) => RErr(
            format!(
                "building the observer panicked: {}",
                panic_message(&*payload)
            )
            .into(),
        ),
    }
}

pub fn stage_info<S: Stage>() -> StageInfo {
    StageInfo {
        name: S::NAME.into(),
        kind: S::KIND,
    }
}

pub fn observer_info<O: Observer>() -> StageInfo {
    StageInfo {
        name: O::NAME.into(),
        kind: StageKind::Observer,
    }
}

pub fn unknown_kind(kind: RStr<'_>) -> RString {
    format!(
        "this library has no stage or observer type named {:?}",
        kind.as_str()
    )
    .into()
}

/// Exports a library's root module offering the listed [`Stage`] types (and, after a `;`,
/// [`Observer`] types):
///
/// ```text
/// plugin_api::export_plugin!(Rules);
/// plugin_api::export_plugin!(Rules, Jsonl; observers: Audit);
/// ```
///
/// Invoke it once, at the root of a `cdylib` crate. A library built with `panic = "abort"`
/// does not compile: the SDK could not catch its panics, and the first one would end the host.
#[macro_export]
macro_rules! export_plugin {
    ($($stage:ty),+ $(,)?) => {
        $crate::export_plugin!($($stage),+ ; observers:);
    };
    ($($stage:ty),+ ; observers: $($observer:ty),* $(,)?) => {
        #[cfg(panic = "abort")]
        compile_error!("plugin-api: this library is built with panic = \"abort\": the host could not survive its first panic. Build it with panic = \"unwind\" (the default).");

        // What `#[abi_stable::export_root_module]` generates, spelled with `$crate` paths so
        // a plugin crate needs no dependency but plugin-api. A unit test in plugin-api checks
        // the symbol name against abi_stable's.
        #[no_mangle]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            extern "C" fn __plugin_api_root() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__plugin_api_module)
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::PluginModRef>(
                    __plugin_api_root,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };

        fn __plugin_api_module() -> $crate::PluginModRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::sdk::__root_module(
                __plugin_api_manifest,
                __plugin_api_check_config,
                __plugin_api_new_stage,
                __plugin_api_new_observer,
            )
        }

        extern "C" fn __plugin_api_manifest() -> $crate::ManifestRef {
            static MANIFEST: ::std::sync::OnceLock<$crate::ManifestRef> = ::std::sync::OnceLock::new();
            *MANIFEST.get_or_init(|| {
                $crate::sdk::__manifest(
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                    vec![
                        $($crate::sdk::stage_info::<$stage>(),)+
                        $($crate::sdk::observer_info::<$observer>(),)*
                    ],
                    cfg!(panic = "unwind"),
                )
            })
        }

        extern "C" fn __plugin_api_check_config(
            kind: $crate::abi_stable::std_types::RStr<'_>,
            config_json: $crate::abi_stable::std_types::RStr<'_>,
        ) -> $crate::abi_stable::std_types::RResult<(), $crate::ConfigError> {
            $(
                if kind.as_str() == <$stage as $crate::Stage>::NAME {
                    return $crate::sdk::check::<$stage>(config_json);
                }
            )+
            $(
                if kind.as_str() == <$observer as $crate::Observer>::NAME {
                    return $crate::sdk::check_observer::<$observer>(config_json);
                }
            )*
            $crate::abi_stable::std_types::RErr($crate::ConfigError::at("", $crate::sdk::unknown_kind(kind)))
        }

        extern "C" fn __plugin_api_new_stage(
            kind: $crate::abi_stable::std_types::RStr<'_>,
            instance: $crate::abi_stable::std_types::RStr<'_>,
            config_json: $crate::abi_stable::std_types::RStr<'_>,
            host: $crate::HostContext,
        ) -> $crate::abi_stable::std_types::RResult<$crate::StageBox, $crate::abi_stable::std_types::RString> {
            $crate::sdk::init_library(host);
            $(
                if kind.as_str() == <$stage as $crate::Stage>::NAME {
                    return $crate::sdk::build::<$stage>(instance, config_json, Some(host));
                }
            )+
            $crate::abi_stable::std_types::RErr($crate::sdk::unknown_kind(kind))
        }

        #[allow(unused_variables)]
        extern "C" fn __plugin_api_new_observer(
            kind: $crate::abi_stable::std_types::RStr<'_>,
            config_json: $crate::abi_stable::std_types::RStr<'_>,
            host: $crate::HostContext,
        ) -> $crate::abi_stable::std_types::RResult<$crate::ObserverBox, $crate::abi_stable::std_types::RString> {
            $crate::sdk::init_library(host);
            $(
                if kind.as_str() == <$observer as $crate::Observer>::NAME {
                    return $crate::sdk::build_observer::<$observer>(config_json, Some(host));
                }
            )*
            $crate::abi_stable::std_types::RErr($crate::sdk::unknown_kind(kind))
        }
    };
}

/// The entry points a library's root module holds (see [`crate::export_plugin!`]).
#[doc(hidden)]
pub type NewStageFn =
    extern "C" fn(RStr<'_>, RStr<'_>, RStr<'_>, HostContext) -> RResult<StageBox, RString>;
#[doc(hidden)]
pub type NewObserverFn =
    extern "C" fn(RStr<'_>, RStr<'_>, HostContext) -> RResult<ObserverBox, RString>;
#[doc(hidden)]
pub type CheckConfigFn = extern "C" fn(RStr<'_>, RStr<'_>) -> RResult<(), ConfigError>;

/// Builds the root module (for [`crate::export_plugin!`]).
#[doc(hidden)]
pub fn __root_module(
    manifest: extern "C" fn() -> crate::ManifestRef,
    check_config: CheckConfigFn,
    new_stage: NewStageFn,
    #[allow(unused_variables)] new_observer: NewObserverFn,
) -> crate::PluginModRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    crate::PluginMod {
        manifest,
        check_config,
        new_stage,
        #[cfg(not(feature = "__compat_older_shape"))]
        new_observer,
        #[cfg(feature = "__compat_newer_shape")]
        added_later,
    }
    .leak_into_prefix()
}

#[cfg(feature = "__compat_newer_shape")]
extern "C" fn added_later() -> u64 {
    42
}

/// Builds a library's manifest, once (for [`crate::export_plugin!`]).
#[doc(hidden)]
pub fn __manifest(
    library: &'static str,
    version: &'static str,
    stages: Vec<StageInfo>,
    #[allow(unused_variables)] unwinds: bool,
) -> crate::ManifestRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    let stages: &'static [StageInfo] = Box::leak(stages.into_boxed_slice());
    crate::Manifest {
        library: RStr::from_str(library),
        version: RStr::from_str(version),
        api_version: RStr::from_str(API_VERSION),
        stages: RSlice::from_slice(stages),
        unwinds,
    }
    .leak_into_prefix()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Record;

    #[test]
    fn exported_symbol_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    struct Boom;
    impl Stage for Boom {
        const NAME: &'static str = "boom";
        const KIND: StageKind = StageKind::Processor;
        type Config = ();
        fn build(_: (), _: StageContext) -> Result<Self, String> {
            Ok(Boom)
        }
        fn process(&mut self, _batch: &mut Batch) -> Result<(), StageError> {
            panic!("kaboom")
        }
    }

    #[test]
    fn a_panic_becomes_a_stage_error_and_unit_configs_read_an_empty_block() {
        let mut stage = match build::<Boom>(RStr::from_str("b"), RStr::from_str("{}"), None) {
            ROk(s) => s,
            RErr(e) => panic!("{e}"),
        };
        let err = stage
            .process(&mut Batch::new(vec![Record::new()]))
            .unwrap_err();
        assert_eq!((err.kind(), err.message()), ("panic", "kaboom"));
        assert!(check::<Boom>(RStr::from_str("{\"x\":1}")).is_err());
    }

    #[test]
    fn config_errors_name_their_key() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct C {
            drop: Vec<D>,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct D {
            field: String,
        }
        let e = parse_config::<C>(r#"{"drop":5}"#).err().unwrap();
        assert_eq!(e.path, "drop");
        assert_eq!(e.message, "invalid type: integer `5`, expected a sequence");
        let e = parse_config::<C>(r#"{"drop":[{"field":"a"},{"feild":"b"}]}"#)
            .err()
            .unwrap();
        assert_eq!(e.path, "drop[1].feild");
        assert_eq!(
            e.to_string(),
            "at `drop[1].feild`: unknown field `feild`, expected `field`"
        );
    }
}
