//! One compliance check for every stage: the contract the host relies on, checked the way the
//! host calls a stage (through the FFI wrapper, with panics caught). Use it in a plugin's tests:
//!
//! ```text
//! let out = plugin_api::testing::assert_stage_compliance::<Rules>(config, records);
//! assert_eq!(out.records().len(), 2);
//! ```

use std::collections::HashSet;

use abi_stable::std_types::{RResult, RStr};

use crate::{sdk, Batch, Record, Stage};

/// Checks that stage `S`:
/// - accepts `config_json` and rejects it with an unknown key added (typos must be errors);
/// - builds, and handles `records` (each given a distinct message id where it has none)
///   without an error or a panic;
/// - leaves only records that belong to a message it was given (kept, or derived with
///   `Record::derived`), and fails only such records, none of them both kept and failed;
/// - flushes without an error.
///
/// Returns the batch after the call, for the caller's own checks.
pub fn assert_stage_compliance<S: Stage>(config_json: &str, records: Vec<Record>) -> Batch {
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
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            if r.meta.id == 0 {
                r.meta.id = i as u64 + 1;
            }
            given.insert(r.meta.id);
            r
        })
        .collect();
    let mut batch = Batch::new(records.into());
    if let RResult::RErr(e) = stage.process(&mut batch) {
        panic!("stage `{name}` failed its batch: {e}");
    }
    let kept: HashSet<u64> = batch.records().iter().map(|r| r.meta.id).collect();
    for id in &kept {
        assert!(given.contains(id), "stage `{name}` left a record of message {id}, which it was not given (keep `meta`: Record::derived)");
    }
    for f in batch.failures() {
        assert!(
            given.contains(&f.id),
            "stage `{name}` failed message {}, which it was not given",
            f.id
        );
        assert!(
            !kept.contains(&f.id),
            "stage `{name}` both kept and failed message {}",
            f.id
        );
        assert!(
            !f.error.kind.is_empty(),
            "stage `{name}` failed a record with an empty error type"
        );
    }
    if let RResult::RErr(e) = stage.flush() {
        panic!("stage `{name}` failed to flush: {e}");
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StageContext, StageError, StageKind};
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}

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

    #[test]
    #[should_panic(expected = "which it was not given")]
    fn a_record_from_nowhere_is_caught() {
        assert_stage_compliance::<Forger>("{}", vec![Record::default()]);
    }

    #[test]
    fn a_well_behaved_stage_passes() {
        struct Keep;
        impl Stage for Keep {
            const NAME: &'static str = "keep";
            const KIND: StageKind = StageKind::Processor;
            type Config = Empty;
            fn build(_: Empty, _: StageContext) -> Result<Self, String> {
                Ok(Keep)
            }
            fn process(&mut self, _: &mut Batch) -> Result<(), StageError> {
                Ok(())
            }
        }
        let out = assert_stage_compliance::<Keep>("{}", vec![Record::default(), Record::default()]);
        assert_eq!(
            out.records().iter().map(|r| r.meta.id).collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
