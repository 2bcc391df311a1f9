//! A library's `tracing` events, forwarded to the host.
//!
//! A library has its own copy of `tracing`'s statics, so the host's subscriber cannot see its
//! events. The SDK installs, once per library, a small subscriber that hands each event to the
//! host's `log` callback with the event's target (the module path: `RUST_LOG` filters on it,
//! as on any crate) and the stage instance the thread is working for (set around every call
//! the host makes, and by [`super::StageContext::in_scope`]).

use std::{cell::Cell, fmt::Write as _, sync::OnceLock};

use abi_stable::std_types::RStr;

use crate::{
    kinds::LogLevel,
    module::{HostCallbacksRef, HostContext, HostCtx},
};

static CALLBACKS: OnceLock<HostCallbacksRef> = OnceLock::new();

thread_local! {
    /// The stage instance this thread is working for, if any.
    static CURRENT: Cell<Option<HostCtx>> = const { Cell::new(None) };
}

/// Runs `f` with `host`'s stage as the current one on this thread.
pub(crate) fn in_scope<T>(host: Option<HostContext>, f: impl FnOnce() -> T) -> T {
    let Some(host) = host else { return f() };
    let previous = CURRENT.with(|c| c.replace(Some(host.ctx)));
    struct Restore(Option<HostCtx>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(previous);
    f()
}

/// The context events are attributed to: the current stage, or none (a null context: the
/// host logs the event without a stage).
fn current() -> HostCtx {
    CURRENT
        .with(Cell::get)
        .unwrap_or(HostCtx::new(std::ptr::null()))
}

/// Called by the exported functions of a library (never for the host's own built-in stages):
/// installs, once per library, the forwarding subscriber and a panic hook that reports
/// through it instead of printing to stderr.
pub fn init_library(host: HostContext) {
    if CALLBACKS.set(host.callbacks).is_err() {
        return;
    }
    let _ = tracing_core::dispatcher::set_global_default(tracing_core::Dispatch::new(Forwarder {
        callbacks: host.callbacks,
    }));
    std::panic::set_hook(Box::new(move |info| {
        let message = match info.location() {
            Some(loc) => format!(
                "stage panicked at {loc}: {}",
                super::panic_message(info.payload())
            ),
            None => format!("stage panicked: {}", super::panic_message(info.payload())),
        };
        (host.callbacks.log())(
            current(),
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

/// A minimal `tracing` subscriber: events become one line each, handed to the host. Spans are
/// accepted and ignored.
struct Forwarder {
    callbacks: HostCallbacksRef,
}

struct LineVisitor(String);

impl tracing_core::field::Visit for LineVisitor {
    fn record_debug(&mut self, field: &tracing_core::Field, value: &dyn std::fmt::Debug) {
        let sep = if self.0.is_empty() { "" } else { " " };
        let _ = if field.name() == "message" {
            write!(self.0, "{sep}{value:?}")
        } else {
            write!(self.0, "{sep}{}={value:?}", field.name())
        };
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
    fn register_callsite(
        &self,
        metadata: &'static tracing_core::Metadata<'static>,
    ) -> tracing_core::subscriber::Interest {
        // Decided once per callsite, by the host's filter for the event's target (when the
        // host offers the check: a host built before it was added leaves it all to `log`).
        let enabled = match self.callbacks.log_enabled_opt() {
            Some(log_enabled) => log_enabled(
                HostCtx::new(std::ptr::null()),
                to_level(metadata.level()),
                RStr::from_str(metadata.target()),
            ),
            None => true,
        };
        if enabled {
            tracing_core::subscriber::Interest::always()
        } else {
            tracing_core::subscriber::Interest::never()
        }
    }

    fn enabled(&self, _metadata: &tracing_core::Metadata<'_>) -> bool {
        true
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
        (self.callbacks.log())(
            current(),
            to_level(meta.level()),
            RStr::from_str(meta.target()),
            RStr::from_str(&line.0),
        );
    }

    fn enter(&self, _span: &tracing_core::span::Id) {}

    fn exit(&self, _span: &tracing_core::span::Id) {}
}

/// Reads the optional callback whatever the library was built with: in the older shape (a
/// fixture built before `log_enabled` was appended) there is no such field to read.
trait LogEnabled {
    fn log_enabled_opt(&self) -> Option<extern "C" fn(HostCtx, LogLevel, RStr<'_>) -> bool>;
}

impl LogEnabled for HostCallbacksRef {
    #[cfg(not(feature = "__compat_older_shape"))]
    fn log_enabled_opt(&self) -> Option<extern "C" fn(HostCtx, LogLevel, RStr<'_>) -> bool> {
        self.log_enabled()
    }

    #[cfg(feature = "__compat_older_shape")]
    fn log_enabled_opt(&self) -> Option<extern "C" fn(HostCtx, LogLevel, RStr<'_>) -> bool> {
        None
    }
}
