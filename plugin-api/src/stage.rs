//! What a stage is handed and what it hands back: [`Batch`], [`StageError`], [`StageKind`],
//! [`HealthReport`].

use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};

use crate::value::Record;

/// What role a stage plays in a pipeline. The host treats all kinds the same on the data path;
/// the kind decides how a message that reaches the stage is accounted for.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageKind {
    /// Transforms, filters or enriches records and passes them on.
    Processor,
    /// Derives metrics records from records.
    Metrics,
    /// Writes records out of the pipeline; a record it keeps counts as exported.
    Exporter,
}

impl StageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Processor => "processor",
            StageKind::Metrics => "metrics",
            StageKind::Exporter => "exporter",
        }
    }
}

/// A failure, with a short machine-readable `kind` (the error type the monitor counts by,
/// such as `io` or `panic`) and a human-readable message.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct StageError {
    pub kind: RString,
    pub message: RString,
}

impl StageError {
    pub fn new(kind: impl Into<RString>, message: impl Into<RString>) -> Self {
        StageError {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for StageError {}

/// One record that a stage could not handle, named by its message id.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub id: u64,
    pub error: StageError,
}

/// What a stage decides for one record in [`Batch::retain_or_fail`].
#[derive(Debug)]
pub enum Outcome {
    /// Pass the record on (for an exporter: it was exported).
    Keep,
    /// Drop it on purpose: the message counts as filtered.
    Drop,
    /// Drop it because of an error: the message counts as failed with this error's kind.
    Fail(StageError),
}

/// The unit a stage is called with: records moved in by value, plus the failures the stage
/// reports. After the call, the records left in the batch go on to the next stages (for an
/// exporter: they were exported); a record that is neither left nor failed was filtered.
#[repr(C)]
#[derive(StableAbi, Debug, Default)]
pub struct Batch {
    records: RVec<Record>,
    failures: RVec<Failure>,
}

impl Batch {
    pub fn new(records: RVec<Record>) -> Self {
        Batch {
            records,
            failures: RVec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn records_mut(&mut self) -> &mut [Record] {
        &mut self.records
    }

    /// Adds a record, for stages that emit more records than they were given.
    pub fn push(&mut self, record: Record) {
        self.records.push(record);
    }

    /// Keeps the records for which `keep` returns true; the others count as filtered.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut Record) -> bool) {
        retain_mut(&mut self.records, |r| keep(r));
    }

    /// Decides each record's fate in one pass.
    pub fn retain_or_fail(&mut self, mut decide: impl FnMut(&mut Record) -> Outcome) {
        let failures = &mut self.failures;
        retain_mut(&mut self.records, |r| match decide(r) {
            Outcome::Keep => true,
            Outcome::Drop => false,
            Outcome::Fail(error) => {
                failures.push(Failure {
                    id: r.meta.id,
                    error,
                });
                false
            }
        });
    }

    /// Replaces every record with what `map` makes of it (one record in, one out).
    pub fn map(&mut self, mut map: impl FnMut(Record) -> Record) {
        let records = std::mem::take(&mut self.records);
        self.records = records.into_iter().map(&mut map).collect();
    }

    /// Reports a failure for the record with message id `id` (a record the stage has taken
    /// out of the batch, or one it has written only in part).
    pub fn fail(&mut self, id: u64, error: StageError) {
        self.failures.push(Failure { id, error });
    }

    pub fn failures(&self) -> &[Failure] {
        &self.failures
    }

    /// Takes the records and the failures apart, for the host.
    pub fn into_parts(self) -> (RVec<Record>, RVec<Failure>) {
        (self.records, self.failures)
    }
}

/// `Vec::retain_mut` for `RVec`, which lacks it: keeps order, moves each kept record once.
fn retain_mut<T>(v: &mut RVec<T>, mut keep: impl FnMut(&mut T) -> bool) {
    let mut kept = 0;
    for i in 0..v.len() {
        if keep(&mut v[i]) {
            v.swap(kept, i);
            kept += 1;
        }
    }
    v.truncate(kept);
}

/// How a component is doing.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// A stage's answer to a health check.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub status: HealthStatus,
    pub reason: RString,
}

impl HealthReport {
    pub fn healthy() -> Self {
        HealthReport {
            status: HealthStatus::Healthy,
            reason: RString::new(),
        }
    }

    pub fn new(status: HealthStatus, reason: impl Into<RString>) -> Self {
        HealthReport {
            status,
            reason: reason.into(),
        }
    }
}
