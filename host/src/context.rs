//! The callbacks the host hands to every stage (`plugin_api::HostContext`): a library cannot
//! see the host's `tracing` subscriber or monitor, so its logs and metrics come through here.

use std::sync::{Arc, RwLock};

use abi_stable::std_types::{RSlice, RStr};
use plugin_api::{HostContext, Label, LogLevel, MetricKind};

/// Where plugin metrics go. Set by the running pipeline.
pub trait MetricSink: Send + Sync {
    fn record(
        &self,
        stage: &str,
        kind: MetricKind,
        name: &str,
        value: f64,
        labels: &[(&str, &str)],
    );
}

static METRIC_SINK: RwLock<Option<Arc<dyn MetricSink>>> = RwLock::new(None);

/// Routes plugin metrics to `sink` from now on.
pub fn set_metric_sink(sink: Option<Arc<dyn MetricSink>>) {
    *METRIC_SINK.write().unwrap_or_else(|e| e.into_inner()) = sink;
}

extern "C" fn log(level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
    let (target, message) = (target.as_str(), message.as_str());
    match level {
        LogLevel::Error => tracing::error!(target: "plugin", plugin = target, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "plugin", plugin = target, "{message}"),
        LogLevel::Info => tracing::info!(target: "plugin", plugin = target, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "plugin", plugin = target, "{message}"),
        LogLevel::Trace => tracing::trace!(target: "plugin", plugin = target, "{message}"),
    }
}

extern "C" fn metric(
    stage: RStr<'_>,
    kind: MetricKind,
    name: RStr<'_>,
    value: f64,
    labels: RSlice<'_, Label<'_>>,
) {
    let guard = METRIC_SINK.read().unwrap_or_else(|e| e.into_inner());
    if let Some(sink) = guard.as_ref() {
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|l| (l.key.as_str(), l.value.as_str()))
            .collect();
        sink.record(stage.as_str(), kind, name.as_str(), value, &labels);
    }
}

/// The context handed to stages, with the log level the host's subscriber lets through.
pub fn host_context() -> HostContext {
    let max = tracing::level_filters::LevelFilter::current();
    let max_log_level = match max.into_level() {
        None | Some(tracing::Level::ERROR) => LogLevel::Error,
        Some(tracing::Level::WARN) => LogLevel::Warn,
        Some(tracing::Level::INFO) => LogLevel::Info,
        Some(tracing::Level::DEBUG) => LogLevel::Debug,
        Some(_) => LogLevel::Trace,
    };
    HostContext {
        max_log_level,
        log,
        metric,
    }
}
