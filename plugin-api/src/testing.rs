//! One compliance check for every stage: the contract the host relies on, checked the way the
//! host calls a stage (through the FFI wrapper, with panics caught, with a real
//! acknowledgement handle). Use it in a plugin's tests:
//!
//! ```text
//! let out = plugin_api::testing::assert_stage_compliance::<Rules>(config, records);
//! assert_eq!(out.batch.records().len(), 2);
//! ```

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RResult, RSlice, RStr, RVec},
};

use crate::{
    module::{FfiAck, FfiAck_TO},
    sdk, Batch, Map, Record, Stage, StageError,
};

/// How long the check waits for records a stage took for later to be settled.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the host would have seen of one call.
pub struct Checked {
    /// The batch after the call: the records left, the failures reported.
    pub batch: Batch,
    /// Message ids the stage took for later and then delivered.
    pub delivered: Vec<u64>,
    /// Message ids it took for later and then failed, with the error type.
    pub failed: Vec<(u64, String)>,
    /// Message ids it handed back to be retried.
    pub retried: Vec<u64>,
}

#[derive(Default)]
pub(crate) struct Settlements {
    pub(crate) deferred: Vec<u64>,
    pub(crate) delivered: Vec<u64>,
    pub(crate) failed: Vec<(u64, String)>,
    pub(crate) retried: Vec<u64>,
}

/// An acknowledgement handle that writes down what it is told, as the host would count it.
#[derive(Clone, Default)]
pub(crate) struct RecordingAck(Arc<Mutex<Settlements>>);

impl RecordingAck {
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Settlements) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl FfiAck for RecordingAck {
    fn deferred(&self, ids: RSlice<'_, u64>) {
        self.with(|s| s.deferred.extend_from_slice(&ids));
    }
    fn delivered(&self, ids: RSlice<'_, u64>) {
        self.with(|s| s.delivered.extend_from_slice(&ids));
    }
    fn failed(&self, ids: RSlice<'_, u64>, error: &StageError) {
        self.with(|s| {
            s.failed
                .extend(ids.iter().map(|id| (*id, error.kind().to_owned())))
        });
    }
    fn retry(&self, records: RVec<Record>, _after_ms: u64) {
        self.with(|s| s.retried.extend(records.iter().map(Record::id)));
    }
}

/// Checks that stage `S`:
/// - accepts `config_json` and rejects it with an unknown key added (typos must be errors);
/// - builds, and handles `records` (each given a distinct message id where it has none)
///   without an error or a panic;
/// - changes nothing another branch of a fan-out sees (the batch is handed over shared, as
///   a host does);
/// - leaves only records that belong to a message it was given (kept, or derived with
///   [`Record::derived`]), and fails or takes for later only such records, no message both
///   kept and failed, and none both settled and left;
/// - flushes without an error, and settles every record it took for later within
///   [`SETTLE_TIMEOUT`] of the flush, each exactly once;
/// - is dropped (its threads stopped) within [`SETTLE_TIMEOUT`].
///
/// Returns what the host would have seen, for the caller's own checks.
pub fn assert_stage_compliance<S: Stage>(config_json: &str, records: Vec<Record>) -> Checked {
    let name = S::NAME;
    let mut with_typo: serde_json::Value = serde_json::from_str(config_json)
        .expect("the config given to the compliance check is not JSON");
    with_typo
        .as_object_mut()
        .expect("a stage config is a JSON object")
        .insert(
            "compliance_check_unknown_key".into(),
            serde_json::Value::Null,
        );
    assert!(
        matches!(
            sdk::check::<S>(RStr::from_str(&with_typo.to_string())),
            RResult::RErr(_)
        ),
        "stage `{name}` accepts a config with an unknown key; use #[serde(deny_unknown_fields)]"
    );
    if let RResult::RErr(e) = sdk::check::<S>(RStr::from_str(config_json)) {
        panic!("stage `{name}` rejects its config: {e}");
    }
    let mut stage = match sdk::build::<S>(
        RStr::from_str("compliance"),
        RStr::from_str(config_json),
        None,
    ) {
        RResult::ROk(stage) => stage,
        RResult::RErr(e) => panic!("stage `{name}` cannot be built: {e}"),
    };

    let mut given = HashSet::new();
    let records: RVec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            if r.id() == 0 {
                r.set_origin(i as u64 + 1, r.size_bytes(), r.received_at_ns());
            }
            given.insert(r.id());
            r
        })
        .collect();
    let ack = RecordingAck::default();
    let handle = FfiAck_TO::from_ptr(RArc::new(ack.clone()), TD_Opaque);
    // As a host hands records over: shared, here with another branch of a fan-out, which
    // must see them exactly as they were whatever this stage does.
    let shared = RArc::new(records);
    let other_branch = shared.clone();
    let before: Vec<(u64, Map)> = other_branch.iter().map(|r| (r.id(), r.to_map())).collect();
    let mut batch = Batch::with_ack(shared, handle);
    if let RResult::RErr(e) = stage.process(&mut batch) {
        panic!("stage `{name}` failed its batch: {e}");
    }
    let after: Vec<(u64, Map)> = other_branch.iter().map(|r| (r.id(), r.to_map())).collect();
    assert!(
        before == after,
        "stage `{name}` changed records another branch of a fan-out holds too"
    );
    drop(other_branch);
    let kept: HashSet<u64> = batch.records().iter().map(Record::id).collect();
    for id in &kept {
        assert!(given.contains(id), "stage `{name}` left a record of message {id}, which it was not given (keep the message: Record::derived)");
    }
    for f in batch.failures() {
        assert!(
            given.contains(&f.id()),
            "stage `{name}` failed message {}, which it was not given",
            f.id()
        );
        assert!(
            !kept.contains(&f.id()),
            "stage `{name}` both kept and failed message {}",
            f.id()
        );
        assert!(
            !f.error().kind().is_empty(),
            "stage `{name}` failed a record with an empty error type"
        );
    }
    if let RResult::RErr(e) = stage.flush() {
        panic!("stage `{name}` failed to flush: {e}");
    }
    let deferred = ack.with(|s| s.deferred.clone());
    for id in &deferred {
        assert!(
            given.contains(id),
            "stage `{name}` took message {id} for later, which it was not given"
        );
        assert!(
            !kept.contains(id),
            "stage `{name}` both kept message {id} and took it for later"
        );
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let settled = |s: &Settlements| s.delivered.len() + s.failed.len() + s.retried.len();
    while ack.with(|s| settled(s)) < deferred.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let dropped = Instant::now();
    drop(stage);
    assert!(
        dropped.elapsed() < SETTLE_TIMEOUT,
        "stage `{name}` took {:?} to drop",
        dropped.elapsed()
    );
    let s = std::mem::take(&mut *ack.0.lock().unwrap_or_else(|e| e.into_inner()));
    let mut settled_ids: Vec<u64> = s
        .delivered
        .iter()
        .chain(s.failed.iter().map(|(id, _)| id))
        .chain(&s.retried)
        .copied()
        .collect();
    settled_ids.sort_unstable();
    let mut expected = deferred.clone();
    expected.sort_unstable();
    assert_eq!(
        settled_ids, expected,
        "stage `{name}` did not settle each record it took for later exactly once"
    );
    Checked {
        batch,
        delivered: s.delivered,
        failed: s.failed,
        retried: s.retried,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StageContext, StageKind};

    /// Makes up a record of a message it was never given.
    struct Forger;
    impl Stage for Forger {
        const NAME: &'static str = "forger";
        const KIND: StageKind = StageKind::Processor;
        type Config = Empty;
        fn build(_: Empty, _: StageContext) -> Result<Self, String> {
            Ok(Forger)
        }
        fn process(&mut self, batch: &mut Batch) -> Result<(), StageError> {
            batch.push(Record::default());
            Ok(())
        }
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}

    #[test]
    #[should_panic(expected = "which it was not given")]
    fn a_record_from_nowhere_is_caught() {
        assert_stage_compliance::<Forger>("{}", vec![Record::default()]);
    }

    /// Takes everything for later and settles half as delivered, half as failed, from
    /// another thread.
    struct Later;
    impl Stage for Later {
        const NAME: &'static str = "later";
        const KIND: StageKind = StageKind::Exporter;
        type Config = Empty;
        fn build(_: Empty, _: StageContext) -> Result<Self, String> {
            Ok(Later)
        }
        fn process(&mut self, batch: &mut Batch) -> Result<(), StageError> {
            let (records, ticket) = batch.defer_all().into_parts();
            std::thread::spawn(move || {
                ticket.settle_each(|id| {
                    if id % 2 == 0 {
                        crate::Settlement::Delivered
                    } else {
                        crate::Settlement::Failed(StageError::new("odd", "odd id"))
                    }
                });
                drop(records);
            });
            Ok(())
        }
    }

    #[test]
    fn deferred_records_settled_from_another_thread_pass() {
        let out = assert_stage_compliance::<Later>("{}", vec![Record::new(); 4]);
        assert!(out.batch.is_empty());
        let mut delivered = out.delivered;
        delivered.sort_unstable();
        assert_eq!(delivered, [2, 4]);
        assert_eq!(out.failed.len(), 2);
    }

    /// Takes records and forgets them.
    struct Forgetful(Vec<crate::Deferred>);
    impl Stage for Forgetful {
        const NAME: &'static str = "forgetful";
        const KIND: StageKind = StageKind::Exporter;
        type Config = Empty;
        fn build(_: Empty, _: StageContext) -> Result<Self, String> {
            Ok(Forgetful(Vec::new()))
        }
        fn process(&mut self, batch: &mut Batch) -> Result<(), StageError> {
            self.0.push(batch.defer_all());
            Ok(())
        }
        fn flush(&mut self) -> Result<(), StageError> {
            self.0.clear();
            Ok(())
        }
    }

    #[test]
    fn records_dropped_unsettled_fail_as_unsettled() {
        let out = assert_stage_compliance::<Forgetful>("{}", vec![Record::new(); 3]);
        assert_eq!(
            out.failed,
            [
                (1, "unsettled".into()),
                (2, "unsettled".into()),
                (3, "unsettled".into())
            ]
        );
    }
}
