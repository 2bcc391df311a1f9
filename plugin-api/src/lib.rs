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

/// Byte-for-byte equality, inline up to 16 bytes (keys and most strings, where a call to
/// `memcmp` costs more than the comparison: two overlapping loads from each end), `==`
/// beyond.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4"));
    match n {
        0 => true,
        // Indexes 0, n / 2 and n - 1 cover every byte of one to three.
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The inline comparison agrees with `==`, for slices of equal and unequal lengths
        /// that differ in any one byte.
        #[test]
        fn same_bytes_is_equality(a in prop::collection::vec(any::<u8>(), 0..40), at in any::<usize>(), to in any::<u8>(), cut in 0usize..3) {
            prop_assert!(super::same_bytes(&a, &a.clone()));
            let mut b = a.clone();
            if !b.is_empty() {
                let at = at % b.len();
                b[at] = to;
            }
            prop_assert_eq!(super::same_bytes(&a, &b), a == b);
            let shorter = &a[..a.len().saturating_sub(cut)];
            prop_assert_eq!(super::same_bytes(&a, shorter), a[..] == *shorter);
        }
    }
}
