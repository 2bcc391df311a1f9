//! The authoring SDK: implement [`Stage`] on a plain Rust type and list it in
//! [`crate::export_plugin!`]; this module makes the FFI glue.

use std::{
    any::Any,
    fmt::Write as _,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::OnceLock,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, RResult, RSlice, RStr, RString},
};
use serde::de::DeserializeOwned;

use crate::{
    module::{
        FfiStage, FfiStage_TO, HostContext, Label, LogLevel, Manifest, MetricKind, StageBox,
        StageInfo,
    },
    stage::{Batch, HealthReport, StageError, StageKind},
};

/// The version of `plugin-api` a library is built against; goes into its [`Manifest`].
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A stage, as its author writes it: a config type, a build step, then the runtime type
/// (the Vector pattern: `Config::build(..) -> Stage`, `Stage::process`).
pub trait Stage: Sized + Send + 'static {
    /// The name pipelines use in `plugin:`.
    const NAME: &'static str;
    const KIND: StageKind;
    /// The stage's `config:` block. Use `#[serde(deny_unknown_fields)]` so typos are errors.
    type Config: DeserializeOwned;

    /// Checks a config beyond what deserializing it checks. Must not touch the outside world:
    /// `host validate` calls it.
    fn check(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// Builds the stage; may open files or connections.
    fn build(config: Self::Config, ctx: StageContext) -> Result<Self, String>;

    /// Handles one batch in place (see [`Batch`] for what the records left in it mean).
    fn process(&mut self, batch: &mut Batch) -> Result<(), StageError>;

    /// Writes out anything buffered; called once after the last batch.
    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }

    /// Answers the host's health check.
    fn health(&mut self) -> HealthReport {
        HealthReport::healthy()
    }
}

/// What a stage gets from the host: its instance name and a way to record metrics.
#[derive(Clone)]
pub struct StageContext {
    instance: RString,
    host: Option<HostContext>,
}

impl StageContext {
    pub fn new(instance: &str, host: Option<HostContext>) -> Self {
        StageContext {
            instance: instance.into(),
            host,
        }
    }

    /// The stage's name in the pipeline file.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn metric(&self, kind: MetricKind, name: &str, value: f64, labels: &[(&str, &str)]) {
        let Some(host) = self.host else { return };
        // Labels are few; a small stack buffer would do, but this is off the per-record path.
        let labels: Vec<Label<'_>> = labels
            .iter()
            .map(|(k, v)| Label {
                key: RStr::from_str(k),
                value: RStr::from_str(v),
            })
            .collect();
        (host.metric)(
            self.instance.as_rstr(),
            kind,
            RStr::from_str(name),
            value,
            RSlice::from_slice(&labels),
        );
    }

    /// Adds `value` to counter `name`.
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
    pub fn timer(&self, name: &str, elapsed: std::time::Duration, labels: &[(&str, &str)]) {
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

/// Wraps a [`Stage`] so that it can cross the boundary; every call is guarded so that a
/// panic becomes a [`StageError`] of kind `panic` instead of unwinding into the host.
struct Guarded<S>(S);

impl<S: Stage> FfiStage for Guarded<S> {
    fn process(&mut self, batch: &mut Batch) -> RResult<(), StageError> {
        match catch_unwind(AssertUnwindSafe(|| self.0.process(batch))) {
            Ok(Ok(())) => ROk(()),
            Ok(Err(e)) => RErr(e),
            Err(payload) => RErr(panic_error(payload)),
        }
    }

    fn flush(&mut self) -> RResult<(), StageError> {
        match catch_unwind(AssertUnwindSafe(|| self.0.flush())) {
            Ok(r) => r.into(),
            Err(payload) => RErr(panic_error(payload)),
        }
    }

    fn health(&mut self) -> HealthReport {
        catch_unwind(AssertUnwindSafe(|| self.0.health())).unwrap_or_else(|payload| {
            HealthReport::new(
                crate::stage::HealthStatus::Unhealthy,
                format!("health check panicked: {}", panic_message(&*payload)),
            )
        })
    }
}

/// Deserializes a stage config from the JSON text the host hands over. An error names the
/// key it is about, as "at `drop[0].field`: ..." (the host turns that path into a line and
/// column in the pipeline file).
fn parse_config<S: Stage>(config_json: &str) -> Result<S::Config, String> {
    let mut de = serde_json::Deserializer::from_str(config_json);
    let config: S::Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = strip_json_position(e.into_inner().to_string());
        if path == "." {
            message
        } else {
            format!("at `{path}`: {message}")
        }
    })?;
    S::check(&config)?;
    Ok(config)
}

/// serde_json appends "at line 1 column 57" of the JSON the host made; the host reports the
/// position in the YAML file instead.
fn strip_json_position(mut message: String) -> String {
    if let Some(pos) = message.rfind(" at line ") {
        message.truncate(pos);
    }
    message
}

/// Checks a config without building: the body of a library's `check_config`.
pub fn check<S: Stage>(config_json: RStr<'_>) -> RResult<(), RString> {
    match catch_unwind(|| parse_config::<S>(config_json.as_str())) {
        Ok(Ok(_)) => ROk(()),
        Ok(Err(e)) => RErr(e.into()),
        Err(payload) => RErr(format!("config check panicked: {}", panic_message(&*payload)).into()),
    }
}

/// Builds a stage behind the boundary: the body of a library's `new_stage`.
pub fn build<S: Stage>(
    instance: RStr<'_>,
    config_json: RStr<'_>,
    host: Option<HostContext>,
) -> RResult<StageBox, RString> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let config = parse_config::<S>(config_json.as_str())?;
        S::build(config, StageContext::new(instance.as_str(), host))
    }));
    match result {
        Ok(Ok(stage)) => ROk(FfiStage_TO::from_value(Guarded(stage), TD_Opaque)),
        Ok(Err(e)) => RErr(e.into()),
        Err(payload) => {
            RErr(format!("building the stage panicked: {}", panic_message(&*payload)).into())
        }
    }
}

pub fn stage_info<S: Stage>() -> StageInfo {
    StageInfo {
        name: S::NAME.into(),
        kind: S::KIND,
    }
}

pub fn manifest(library: &str, version: &str, stages: Vec<StageInfo>) -> Manifest {
    Manifest {
        library: library.into(),
        version: version.into(),
        api_version: API_VERSION.into(),
        stages: stages.into(),
    }
}

pub fn unknown_stage(stage: RStr<'_>) -> RString {
    format!("this library has no stage named {:?}", stage.as_str()).into()
}

// ---- logs: a library's `tracing` events, forwarded through the host's callback ----

static LIBRARY_HOST: OnceLock<HostContext> = OnceLock::new();

/// Called by the exported functions of a library (never by the host's own built-in stages):
/// installs, once per library, a `tracing` dispatcher that forwards events to the host, and a
/// panic hook that reports through it instead of printing to stderr.
pub fn init_library(host: HostContext) {
    if LIBRARY_HOST.set(host).is_err() {
        return;
    }
    let _ = tracing_core::dispatcher::set_global_default(tracing_core::Dispatch::new(Forwarder {
        host,
    }));
    std::panic::set_hook(Box::new(move |info| {
        let message = match info.location() {
            Some(loc) => format!("stage panicked at {loc}: {}", panic_message(info.payload())),
            None => format!("stage panicked: {}", panic_message(info.payload())),
        };
        (host.log)(
            LogLevel::Debug,
            RStr::from_str("plugin_api::panic"),
            RStr::from_str(&message),
        );
    }));
}

fn to_level(level: &tracing_core::Level) -> LogLevel {
    match *level {
        tracing_core::Level::ERROR => LogLevel::Error,
        tracing_core::Level::WARN => LogLevel::Warn,
        tracing_core::Level::INFO => LogLevel::Info,
        tracing_core::Level::DEBUG => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}

/// A minimal `tracing` subscriber: events become one line each, handed to the host. Spans
/// are accepted and ignored; the host adds the stage's span on its side of the call.
struct Forwarder {
    host: HostContext,
}

struct LineVisitor(String);

impl tracing_core::field::Visit for LineVisitor {
    fn record_debug(&mut self, field: &tracing_core::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = if self.0.is_empty() {
                write!(self.0, "{value:?}")
            } else {
                write!(self.0, " {value:?}")
            };
        } else {
            let sep = if self.0.is_empty() { "" } else { " " };
            let _ = write!(self.0, "{sep}{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing_core::Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }
}

impl tracing_core::Subscriber for Forwarder {
    fn enabled(&self, metadata: &tracing_core::Metadata<'_>) -> bool {
        to_level(metadata.level()) <= self.host.max_log_level
    }

    fn new_span(&self, _span: &tracing_core::span::Attributes<'_>) -> tracing_core::span::Id {
        tracing_core::span::Id::from_u64(1)
    }

    fn record(&self, _span: &tracing_core::span::Id, _values: &tracing_core::span::Record<'_>) {}

    fn record_follows_from(
        &self,
        _span: &tracing_core::span::Id,
        _follows: &tracing_core::span::Id,
    ) {
    }

    fn event(&self, event: &tracing_core::Event<'_>) {
        let mut line = LineVisitor(String::new());
        event.record(&mut line);
        let meta = event.metadata();
        (self.host.log)(
            to_level(meta.level()),
            RStr::from_str(meta.target()),
            RStr::from_str(&line.0),
        );
    }

    fn enter(&self, _span: &tracing_core::span::Id) {}

    fn exit(&self, _span: &tracing_core::span::Id) {}
}

/// Exports a library's root module offering the listed [`Stage`] types:
///
/// ```text
/// plugin_api::export_plugin!(Rules);
/// ```
///
/// Invoke it once, at the root of a `cdylib` crate.
#[macro_export]
macro_rules! export_plugin {
    ($($stage:ty),+ $(,)?) => {
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
            $crate::PluginMod {
                manifest: __plugin_api_manifest,
                check_config: __plugin_api_check_config,
                new_stage: __plugin_api_new_stage,
            }
            .leak_into_prefix()
        }

        extern "C" fn __plugin_api_manifest() -> $crate::Manifest {
            $crate::sdk::manifest(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                vec![$($crate::sdk::stage_info::<$stage>()),+],
            )
        }

        extern "C" fn __plugin_api_check_config(
            stage: $crate::abi_stable::std_types::RStr<'_>,
            config_json: $crate::abi_stable::std_types::RStr<'_>,
        ) -> $crate::abi_stable::std_types::RResult<(), $crate::abi_stable::std_types::RString> {
            $(
                if stage.as_str() == <$stage as $crate::Stage>::NAME {
                    return $crate::sdk::check::<$stage>(config_json);
                }
            )+
            $crate::abi_stable::std_types::RErr($crate::sdk::unknown_stage(stage))
        }

        extern "C" fn __plugin_api_new_stage(
            stage: $crate::abi_stable::std_types::RStr<'_>,
            instance: $crate::abi_stable::std_types::RStr<'_>,
            config_json: $crate::abi_stable::std_types::RStr<'_>,
            host: $crate::HostContext,
        ) -> $crate::abi_stable::std_types::RResult<$crate::StageBox, $crate::abi_stable::std_types::RString> {
            $crate::sdk::init_library(host);
            $(
                if stage.as_str() == <$stage as $crate::Stage>::NAME {
                    return $crate::sdk::build::<$stage>(instance, config_json, Some(host));
                }
            )+
            $crate::abi_stable::std_types::RErr($crate::sdk::unknown_stage(stage))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

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
        type Config = serde_json::Value;
        fn build(_: Self::Config, _: StageContext) -> Result<Self, String> {
            Ok(Boom)
        }
        fn process(&mut self, _batch: &mut Batch) -> Result<(), StageError> {
            panic!("kaboom")
        }
    }

    #[test]
    fn a_panic_becomes_a_stage_error() {
        let mut stage = match build::<Boom>(RStr::from_str("b"), RStr::from_str("{}"), None) {
            ROk(s) => s,
            RErr(e) => panic!("{e}"),
        };
        let err = stage.process(&mut Batch::default()).unwrap_err();
        assert_eq!(err.kind, "panic");
        assert_eq!(err.message, "kaboom");
    }

    #[test]
    fn config_errors_do_not_carry_json_positions() {
        let e = strip_json_position("unknown field `x` at line 1 column 5".into());
        assert_eq!(e, "unknown field `x`");
    }
}
