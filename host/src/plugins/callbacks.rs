//! The callbacks the host hands to every stage (`plugin_api::HostContext`): a library cannot
//! see the host's `tracing` subscriber or monitor, so its logs and metrics come through here.
//!
//! Each stage instance gets its own context, behind the context pointer: its name and where
//! its metrics go. So a metric recorded in `build` is kept (the context exists before the
//! stage does), and nothing global stands in for the running pipeline.
//!
//! A library's log events keep their target (the library's module path) in the host's log, so
//! `RUST_LOG=plugin_jsonl=debug` selects one plugin as it would any crate. `tracing` wants a
//! static callsite per target and level; the host makes one the first time it sees a pair and
//! keeps it (libraries are never unloaded, and the number of pairs is capped).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    std_types::{RSlice, RStr},
};
use plugin_api::{
    HostCallbacks, HostCallbacksRef, HostContext, HostCtx, Label, LogLevel, MetricKind,
};
use tracing_core::{
    callsite::Callsite,
    field::{FieldSet, Value},
    identify_callsite,
    metadata::Kind,
    subscriber::Interest,
    Event, Level, Metadata,
};

use crate::{lock, monitor::PluginMetrics};

/// What the host keeps for one stage instance (or observer), behind its context pointer.
pub struct StageHost {
    /// The stage's name in the pipeline file.
    pub stage: String,
    pub metrics: Arc<PluginMetrics>,
}

/// A context for stage `stage`, recording its metrics into `metrics`. The state is leaked on
/// purpose: a library may call back from its own threads until the process ends.
pub fn host_context(stage: &str, metrics: Arc<PluginMetrics>) -> HostContext {
    let state: &'static StageHost = Box::leak(Box::new(StageHost {
        stage: stage.to_owned(),
        metrics,
    }));
    HostContext {
        callbacks: callbacks(),
        ctx: HostCtx::new((state as *const StageHost).cast()),
    }
}

fn callbacks() -> HostCallbacksRef {
    static CALLBACKS: OnceLock<HostCallbacksRef> = OnceLock::new();
    *CALLBACKS.get_or_init(|| {
        HostCallbacks {
            log,
            metric,
            log_enabled,
        }
        .leak_into_prefix()
    })
}

/// The stage state behind a context, if the context names one (a library logging from a
/// thread that works for no stage passes a null context).
fn stage_of(ctx: HostCtx) -> Option<&'static StageHost> {
    let ptr = ctx.as_ptr().cast::<StageHost>();
    // SAFETY: non-null contexts are only ever made by `host_context`, from a leaked (never
    // freed) StageHost.
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}

fn to_level(level: LogLevel) -> Level {
    match level {
        LogLevel::Error => Level::ERROR,
        LogLevel::Warn => Level::WARN,
        LogLevel::Info => Level::INFO,
        LogLevel::Debug => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// Distinct (target, level) pairs given a callsite of their own; beyond it, events are
/// logged under the target `plugin`.
const MAX_CALLSITES: usize = 4096;

/// A callsite made at run time for a library's (target, level).
struct PluginCallsite {
    meta: OnceLock<Metadata<'static>>,
    /// What the subscriber said of it: 0 never, 1 sometimes, 2 always.
    interest: AtomicU8,
}

fn callsite(target: &str, level: Level) -> &'static PluginCallsite {
    type Sites = HashMap<(String, Level), &'static PluginCallsite>;
    static SITES: OnceLock<Mutex<Sites>> = OnceLock::new();
    let mut sites = lock(SITES.get_or_init(Default::default));
    if let Some(site) = sites.get(&(target.to_owned(), level)) {
        return site;
    }
    let target = if sites.len() < MAX_CALLSITES {
        target
    } else {
        "plugin"
    };
    if let Some(site) = sites.get(&(target.to_owned(), level)) {
        return site;
    }
    let site = new_callsite(target, level);
    sites.insert((target.to_owned(), level), site);
    site
}

/// Makes, leaks and registers a callsite for events of a library under `target`.
fn new_callsite(target: &str, level: Level) -> &'static PluginCallsite {
    let site: &'static PluginCallsite = Box::leak(Box::new(PluginCallsite {
        meta: OnceLock::new(),
        interest: AtomicU8::new(1),
    }));
    let target: &'static str = Box::leak(target.to_owned().into_boxed_str());
    let _ = site.meta.set(Metadata::new(
        "plugin event",
        target,
        level,
        None,
        None,
        None,
        FieldSet::new(&["message", "stage"], identify_callsite!(site)),
        Kind::EVENT,
    ));
    tracing_core::callsite::register(site);
    site
}

impl Callsite for PluginCallsite {
    fn set_interest(&self, interest: Interest) {
        let v = if interest.is_never() {
            0
        } else if interest.is_always() {
            2
        } else {
            1
        };
        self.interest.store(v, Ordering::Relaxed);
    }

    fn metadata(&self) -> &Metadata<'_> {
        self.meta
            .get()
            .expect("a plugin callsite's metadata is set before it is registered")
    }
}

fn enabled(site: &'static PluginCallsite) -> bool {
    let meta = site.metadata();
    match site.interest.load(Ordering::Relaxed) {
        0 => false,
        _ => {
            tracing::level_filters::LevelFilter::current() >= *meta.level()
                && tracing_core::dispatcher::get_default(|d| d.enabled(meta))
        }
    }
}

extern "C" fn log_enabled(_ctx: HostCtx, level: LogLevel, target: RStr<'_>) -> bool {
    enabled(callsite(target.as_str(), to_level(level)))
}

extern "C" fn log(ctx: HostCtx, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
    let site = callsite(target.as_str(), to_level(level));
    if !enabled(site) {
        return;
    }
    let meta = site.metadata();
    let fields = meta.fields();
    let (Some(message_field), Some(stage_field)) = (fields.field("message"), fields.field("stage"))
    else {
        return;
    };
    let message = format_args!("{}", message.as_str());
    let stage = stage_of(ctx).map(|s| tracing::field::display(s.stage.as_str()));
    let values: [(&tracing_core::Field, Option<&dyn Value>); 2] = [
        (&message_field, Some(&message as &dyn Value)),
        (&stage_field, stage.as_ref().map(|s| s as &dyn Value)),
    ];
    Event::dispatch(meta, &fields.value_set(&values));
}

extern "C" fn metric(
    ctx: HostCtx,
    kind: MetricKind,
    name: RStr<'_>,
    value: f64,
    labels: RSlice<'_, Label<'_>>,
) {
    let Some(state) = stage_of(ctx) else { return };
    const INLINE: usize = 8;
    let mut buf = [("", ""); INLINE];
    let heap: Vec<(&str, &str)>;
    let labels: &[(&str, &str)] = if labels.len() <= INLINE {
        for (slot, l) in buf.iter_mut().zip(labels.iter()) {
            *slot = (l.key.as_str(), l.value.as_str());
        }
        &buf[..labels.len()]
    } else {
        heap = labels
            .iter()
            .map(|l| (l.key.as_str(), l.value.as_str()))
            .collect();
        &heap
    };
    state
        .metrics
        .record(&state.stage, kind, name.as_str(), value, labels);
}
