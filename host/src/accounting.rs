//! Every message ends exactly once: completed, filtered or failed.
//!
//! Records keep their message id (`RecordMeta::id`) through every stage. Each batch the source
//! sends carries an `Arc<Lineage>` holding one mark per message of that batch; fan-out clones
//! the `Arc`, so the lineage lives until the last branch is done with the batch. Its `Drop`
//! then settles each message once: failed if any branch failed it, completed if any branch
//! delivered it (exported, or reached a stage with no consumers), filtered otherwise. That is
//! one allocation and one settlement per batch, and one atomic mark per message per leaf.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use abi_stable::std_types::RVec;
use plugin_api::Record;
use serde::Serialize;

const DELIVERED: u8 = 1;
const FAILED: u8 = 2;

/// The pipeline's message totals.
#[derive(Default)]
pub struct PipelineCounters {
    received: AtomicU64,
    completed: AtomicU64,
    filtered: AtomicU64,
    failed: AtomicU64,
    /// Failed messages by the error type of their first failure.
    failed_by_type: Mutex<BTreeMap<String, u64>>,
}

/// A consistent-enough copy of the totals: `received = completed + filtered + failed +
/// in_flight`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub received: u64,
    pub completed: u64,
    pub filtered: u64,
    pub failed: u64,
    pub in_flight: u64,
    pub failed_by_type: BTreeMap<String, u64>,
}

impl PipelineCounters {
    /// Counts messages that failed before they could enter the pipeline (they were received,
    /// but could not be decoded).
    pub fn reject(&self, error_type: &str, count: u64) {
        self.received.fetch_add(count, Relaxed);
        self.failed.fetch_add(count, Relaxed);
        self.count_failure_type(error_type, count);
    }

    fn count_failure_type(&self, error_type: &str, count: u64) {
        let mut by_type = self
            .failed_by_type
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match by_type.get_mut(error_type) {
            Some(n) => *n += count,
            None => {
                by_type.insert(error_type.to_owned(), count);
            }
        }
    }

    pub fn totals(&self) -> Totals {
        // Read the outcomes before `received` so in_flight never goes negative.
        let completed = self.completed.load(Relaxed);
        let filtered = self.filtered.load(Relaxed);
        let failed = self.failed.load(Relaxed);
        let received = self.received.load(Relaxed);
        Totals {
            received,
            completed,
            filtered,
            failed,
            in_flight: received.saturating_sub(completed + filtered + failed),
            failed_by_type: self
                .failed_by_type
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// The marks of one source batch's messages.
pub struct Lineage {
    first_id: u64,
    marks: Box<[AtomicU8]>,
    counters: Arc<PipelineCounters>,
}

impl Lineage {
    /// Admits `count` messages with ids `first_id..first_id + count`.
    pub fn admit(first_id: u64, count: usize, counters: Arc<PipelineCounters>) -> Arc<Lineage> {
        counters.received.fetch_add(count as u64, Relaxed);
        Arc::new(Lineage {
            first_id,
            marks: (0..count).map(|_| AtomicU8::new(0)).collect(),
            counters,
        })
    }

    fn mark(&self, id: u64) -> Option<&AtomicU8> {
        let index = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        self.marks.get(index)
    }

    /// The message reached the end of a branch.
    pub fn delivered(&self, id: u64) {
        if let Some(m) = self.mark(id) {
            m.fetch_or(DELIVERED, Relaxed);
        }
    }

    /// The message failed with `error_type`; only its first failure names its type.
    pub fn failed(&self, id: u64, error_type: &str) {
        if let Some(m) = self.mark(id) {
            if m.fetch_or(FAILED, Relaxed) & FAILED == 0 {
                self.counters.count_failure_type(error_type, 1);
            }
        }
    }

    pub fn deliver_all(&self, records: &[Record]) {
        for r in records {
            self.delivered(r.meta.id);
        }
    }
}

impl Drop for Lineage {
    fn drop(&mut self) {
        let (mut completed, mut filtered, mut failed) = (0, 0, 0);
        for m in self.marks.iter() {
            let m = m.load(Relaxed);
            if m & FAILED != 0 {
                failed += 1;
            } else if m & DELIVERED != 0 {
                completed += 1;
            } else {
                filtered += 1;
            }
        }
        // `received` was added at admission, before any of these: totals() stays consistent.
        self.counters.failed.fetch_add(failed, Relaxed);
        self.counters.filtered.fetch_add(filtered, Relaxed);
        self.counters.completed.fetch_add(completed, Relaxed);
    }
}

/// What travels on a queue between stages: records by value, plus their lineage.
pub struct Envelope {
    pub records: RVec<Record>,
    pub lineage: Arc<Lineage>,
}

impl Envelope {
    /// One envelope per consumer, for a fan-out: copies for all but the last consumer, which
    /// gets the original (so a single consumer costs no copy).
    pub fn fan_out(self, consumers: usize) -> Vec<Envelope> {
        let mut out = Vec::with_capacity(consumers);
        for _ in 1..consumers {
            out.push(Envelope {
                records: self.records.clone(),
                lineage: self.lineage.clone(),
            });
        }
        if consumers > 0 {
            out.push(self);
        }
        out
    }

    /// Fails every record of an envelope that could not be delivered.
    pub fn fail_all(&self, error_type: &str) {
        for r in self.records.iter() {
            self.lineage.failed(r.meta.id, error_type);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_settles_once_when_the_last_branch_is_done() {
        let counters = Arc::new(PipelineCounters::default());
        let lineage = Lineage::admit(10, 4, counters.clone());
        let branch = lineage.clone();
        lineage.delivered(10); // completed in one branch
        branch.delivered(11);
        branch.failed(11, "io"); // delivered in one branch, failed in another: failed
        branch.failed(12, "panic");
        branch.failed(12, "io"); // a second failure does not count twice
        lineage.delivered(99); // not ours: ignored
        drop(lineage);
        assert_eq!(counters.totals().in_flight, 4);
        drop(branch);
        let t = counters.totals();
        assert_eq!(
            (t.received, t.completed, t.filtered, t.failed, t.in_flight),
            (4, 1, 1, 2, 0)
        );
        assert_eq!(t.failed_by_type.get("io"), Some(&1));
        assert_eq!(t.failed_by_type.get("panic"), Some(&1));
    }

    #[test]
    fn rejected_messages_count_as_received_and_failed() {
        let counters = PipelineCounters::default();
        counters.reject("invalid_json", 2);
        let t = counters.totals();
        assert_eq!((t.received, t.failed, t.in_flight), (2, 2, 0));
        assert_eq!(t.failed_by_type["invalid_json"], 2);
    }
}
