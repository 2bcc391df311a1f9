//! The only crate a stage-library author depends on.
//!
//! The principal type in this crate is [`Stage`]: implement it on a plain Rust type, list the
//! type in [`export_plugin!`] at the root of a `cdylib` crate, and the host can load the
//! library and run the stage. Everything that crosses the boundary between the host and a
//! library is defined here, ABI-stable through `abi_stable` and kept behind methods so that
//! it can change without changing a plugin's source: [`Record`] and [`Value`] (the data),
//! [`Batch`] (what a stage is called with), [`Deferred`] and [`Ticket`] (records a stage
//! settles later), [`StageError`], the open enums [`StageKind`] and [`HealthStatus`], and the
//! root module [`PluginMod`].
//!
//! Records cross the boundary in batches, as handles on shared data: nothing is serialized
//! between stages, and a fan-out copies nothing until a branch changes a record. A panic
//! inside a stage is caught on the library's side and reported as a [`StageError`] of kind
//! `panic`. A library's `tracing` events reach the host's log, tagged with the stage.
//!
//! For exporters that batch, retry and talk to a network, [`sdk::exporter`] has the sending
//! queue; for third-party monitoring, [`Observer`].

pub mod batch;
pub mod json;
pub mod kinds;
pub mod module;
pub mod record;
pub mod sdk;
pub mod testing;
pub mod value;

#[doc(hidden)]
pub use abi_stable;
pub use batch::{Batch, BatchOutput, Deferred, Failure, Outcome, Settlement, Ticket};
pub use json::JsonError;
pub use kinds::{HealthReport, HealthStatus, LogLevel, MetricKind, StageError, StageKind};
pub use module::{
    AckBox, CallReport, ConfigError, FfiAck, FfiAck_TO, FfiObserver, FfiStage, HostCallbacks,
    HostCallbacksRef, HostContext, HostCtx, Label, Manifest, ManifestRef, ObserverBox, PluginMod,
    PluginModRef, StageBox, StageInfo,
};
pub use record::{Record, TraceContext};
pub use sdk::{
    exporter::{Exporter, Queued, RetryConfig, SendError, SendingConfig},
    Observer, Stage, StageContext, API_VERSION,
};
pub use serde;
pub use serde_json;
pub use tracing;
pub use value::{IntoValue, ListRef, Map, MapRef, Value, ValueKind, ValueRef};

/// `Vec::retain_mut` for `RVec`, which lacks it: keeps order, moves each kept item once.
pub(crate) fn retain_mut<T>(
    v: &mut abi_stable::std_types::RVec<T>,
    mut keep: impl FnMut(&mut T) -> bool,
) {
    let mut kept = 0;
    for i in 0..v.len() {
        if keep(&mut v[i]) {
            v.swap(kept, i);
            kept += 1;
        }
    }
    v.truncate(kept);
}
