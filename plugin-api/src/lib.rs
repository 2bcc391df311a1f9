//! The only crate a stage-library author depends on.
//!
//! The principal type in this crate is [`Stage`]: implement it on a plain Rust type, list the
//! type in [`export_plugin!`] at the root of a `cdylib` crate, and the host can load the library
//! and run the stage. Everything that crosses the boundary between the host and a library is
//! defined here, ABI-stable through `abi_stable`: [`Value`] and [`Record`] (the data),
//! [`Batch`] (what a stage is called with), [`StageError`], [`StageKind`], and the root module
//! [`PluginMod`] with its [`Manifest`].
//!
//! Records cross the boundary by value in batches; nothing is serialized between stages. A
//! panic inside a stage is caught on the library's side and reported as a [`StageError`] of
//! kind `panic`. A library's `tracing` events are forwarded to the host's log.

pub mod module;
pub mod sdk;
pub mod stage;
pub mod testing;
pub mod value;

#[doc(hidden)]
pub use abi_stable;
pub use module::{
    FfiStage, HostContext, Label, LogLevel, Manifest, MetricKind, PluginMod, PluginModRef,
    StageBox, StageInfo,
};
pub use sdk::{Stage, StageContext, API_VERSION};
pub use serde;
pub use serde_json;
pub use stage::{Batch, Failure, HealthReport, HealthStatus, Outcome, StageError, StageKind};
pub use tracing;
pub use value::{Field, JsonError, Record, RecordMeta, Value};
