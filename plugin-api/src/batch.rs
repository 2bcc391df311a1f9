//! What a stage is called with ([`Batch`]) and how it settles records it takes for later
//! ([`Deferred`], [`Ticket`]).
//!
//! After a call, the records left in the batch go on to the next stages (for an exporter:
//! they were exported); a record the stage failed counts as failed with the error's kind; a
//! record it took for later ([`Batch::defer_all`], [`Batch::defer`]) stays *in flight* until
//! it is settled: delivered, failed, or handed back to be retried. Any other record was
//! filtered.

use std::{collections::HashMap, time::Duration};

use abi_stable::{
    std_types::{RArc, ROption, RSlice, RVec},
    StableAbi,
};

use crate::{kinds::StageError, module::AckBox, record::Record};

/// One record a stage failed, by message id.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    id: u64,
    error: StageError,
}

impl Failure {
    pub fn new(id: u64, error: StageError) -> Failure {
        Failure { id, error }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn error(&self) -> &StageError {
        &self.error
    }
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

/// The unit a stage is called with: records moved in (handles on shared data, see
/// [`Record`]), plus what the stage reports about them.
///
/// A host hands every branch of a fan-out the same records, shared: a stage that only reads
/// its batch (most exporters) costs nothing per record, and its batch goes on as it came. The
/// first change to the batch (any method taking `&mut self` that touches records) takes the
/// records for this stage: moved when no other branch holds them, otherwise one handle each
/// (no record is copied; a record copies itself on its own first change).
#[repr(C)]
#[derive(StableAbi, Default)]
pub struct Batch {
    /// The records, once taken (or when the batch was made from owned records).
    records: RVec<Record>,
    /// The records as handed over, while the stage has not changed the batch.
    shared: ROption<RArc<RVec<Record>>>,
    failures: RVec<Failure>,
    ack: ROption<AckBox>,
}

/// For hosts: what a stage left in its batch.
#[doc(hidden)]
pub enum BatchOutput {
    /// The records as handed over: the stage did not change the batch.
    Unchanged(RArc<RVec<Record>>),
    Changed(RVec<Record>),
}

impl Batch {
    /// A batch with nowhere to settle deferred records (tests; see [`crate::testing`]).
    pub fn new(records: impl Into<RVec<Record>>) -> Self {
        Batch {
            records: records.into(),
            shared: ROption::RNone,
            failures: RVec::new(),
            ack: ROption::RNone,
        }
    }

    /// For hosts: a batch of shared records, whose deferred records are settled through
    /// `ack`.
    #[doc(hidden)]
    pub fn with_ack(records: RArc<RVec<Record>>, ack: AckBox) -> Self {
        Batch {
            records: RVec::new(),
            shared: ROption::RSome(records),
            failures: RVec::new(),
            ack: ROption::RSome(ack),
        }
    }

    pub fn len(&self) -> usize {
        self.records().len()
    }

    pub fn is_empty(&self) -> bool {
        self.records().is_empty()
    }

    pub fn records(&self) -> &[Record] {
        match &self.shared {
            ROption::RSome(shared) => shared,
            ROption::RNone => &self.records,
        }
    }

    /// The records, taken for this stage (see [`Batch`]).
    fn owned(&mut self) -> &mut RVec<Record> {
        if let ROption::RSome(shared) = std::mem::replace(&mut self.shared, ROption::RNone) {
            self.records = RArc::try_unwrap(shared).unwrap_or_else(|shared| (*shared).clone());
        }
        &mut self.records
    }

    /// The records, to change (each copies itself on its first change if another branch
    /// holds it too).
    pub fn records_mut(&mut self) -> &mut [Record] {
        self.owned()
    }

    /// Adds a record, for stages that emit more records than they were given (build it with
    /// [`Record::derived`], so that its message is accounted for).
    pub fn push(&mut self, record: Record) {
        self.owned().push(record);
    }

    /// Keeps the records for which `keep` returns true; the others count as filtered.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut Record) -> bool) {
        crate::retain_mut(self.owned(), |r| keep(r));
    }

    /// Decides each record's fate in one pass.
    pub fn retain_or_fail(&mut self, mut decide: impl FnMut(&mut Record) -> Outcome) {
        self.owned();
        let failures = &mut self.failures;
        crate::retain_mut(&mut self.records, |r| match decide(r) {
            Outcome::Keep => true,
            Outcome::Drop => false,
            Outcome::Fail(error) => {
                failures.push(Failure { id: r.id(), error });
                false
            }
        });
    }

    /// Replaces every record with what `map` makes of it (one record in, one out).
    pub fn map(&mut self, mut map: impl FnMut(Record) -> Record) {
        let records = std::mem::take(self.owned());
        self.records = records.into_iter().map(&mut map).collect();
    }

    /// Replaces every record with a new one `derive` makes from it (build it on
    /// [`Record::derived`], so that its message is still accounted for). The old records are
    /// only read: when other branches share them, nothing of theirs is taken or copied.
    pub fn derive(&mut self, mut derive: impl FnMut(&Record) -> Record) {
        let derived: RVec<Record> = self.records().iter().map(&mut derive).collect();
        self.shared = ROption::RNone;
        self.records = derived;
    }

    /// Reports a failure for the message with id `id`: a record the stage has taken out of
    /// the batch, or one it has written only in part.
    pub fn fail(&mut self, id: u64, error: StageError) {
        self.failures.push(Failure { id, error });
    }

    pub fn failures(&self) -> &[Failure] {
        &self.failures
    }

    /// Takes every record, to deliver later (from any thread): they stay in flight, counted
    /// against the pipeline's bound, until the [`Deferred`] is settled. No record is copied.
    pub fn defer_all(&mut self) -> Deferred {
        let records: Vec<Record> = std::mem::take(self.owned()).into_vec();
        self.deferral(records)
    }

    /// Takes the records `pick` chooses, to deliver later; the others stay in the batch.
    pub fn defer(&mut self, mut pick: impl FnMut(&Record) -> bool) -> Deferred {
        let mut taken = Vec::new();
        let records = std::mem::take(self.owned());
        let mut kept = RVec::with_capacity(records.len());
        for r in records {
            if pick(&r) {
                taken.push(r);
            } else {
                kept.push(r);
            }
        }
        self.records = kept;
        self.deferral(taken)
    }

    fn deferral(&self, records: Vec<Record>) -> Deferred {
        let ids: Vec<u64> = records.iter().map(Record::id).collect();
        let ack = self.ack.clone().into_option();
        if let Some(ack) = &ack {
            if !ids.is_empty() {
                ack.deferred(RSlice::from_slice(&ids));
            }
        }
        Deferred {
            records,
            ticket: Ticket {
                parts: vec![Part { ack, ids }],
            },
        }
    }

    /// For hosts and tests: the records left (taken, if they were shared) and the failures
    /// reported.
    #[doc(hidden)]
    pub fn into_parts(mut self) -> (RVec<Record>, RVec<Failure>) {
        self.owned();
        (self.records, self.failures)
    }

    /// For hosts: the records left, shared as they came when the stage did not change the
    /// batch, and the failures reported.
    #[doc(hidden)]
    pub fn into_output(self) -> (BatchOutput, RVec<Failure>) {
        let output = match self.shared {
            ROption::RSome(shared) => BatchOutput::Unchanged(shared),
            ROption::RNone => BatchOutput::Changed(self.records),
        };
        (output, self.failures)
    }
}

/// Records a stage took for later, with the [`Ticket`] that settles them.
pub struct Deferred {
    records: Vec<Record>,
    ticket: Ticket,
}

impl Deferred {
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records (moved, not copied) and the ticket, to keep apart: an exporter can queue
    /// or send the records and settle the ticket when it knows how it went.
    pub fn into_parts(self) -> (Vec<Record>, Ticket) {
        (self.records, self.ticket)
    }

    pub fn delivered(self) {
        self.ticket.delivered();
    }

    pub fn failed(self, error: StageError) {
        self.ticket.failed(error);
    }

    /// Hands the records back to the host, which calls the stage with them again after
    /// `after`. They stay in flight meanwhile.
    pub fn retry(self, after: Duration) {
        self.ticket.retry(self.records, after);
    }

    /// Joins another deferral to this one (an exporter batching several calls' records).
    pub fn merge(&mut self, other: Deferred) {
        self.records.extend(other.records);
        self.ticket.merge(other.ticket);
    }

    /// Splits off the records from index `at` on, with their part of the ticket.
    pub fn split_off(&mut self, at: usize) -> Deferred {
        let at = at.min(self.records.len());
        Deferred {
            records: self.records.split_off(at),
            ticket: self.ticket.split_off(at),
        }
    }
}

/// How one record of a ticket ended, for [`Ticket::settle_each`].
#[derive(Debug, Clone)]
pub enum Settlement {
    Delivered,
    Failed(StageError),
}

struct Part {
    ack: Option<AckBox>,
    ids: Vec<u64>,
}

/// The right, and the duty, to settle records taken for later. Settle it once, from any
/// thread. A ticket dropped unsettled fails its records with error type `unsettled`: a
/// record is never lost without a word.
pub struct Ticket {
    parts: Vec<Part>,
}

impl Ticket {
    /// How many records it settles.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.ids.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.ids.is_empty())
    }

    /// The message ids of its records.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.parts.iter().flat_map(|p| p.ids.iter().copied())
    }

    /// Joins another ticket to this one.
    pub fn merge(&mut self, mut other: Ticket) {
        self.parts.append(&mut other.parts);
    }

    /// Splits off the records from position `at` on (in the order they were taken).
    pub fn split_off(&mut self, mut at: usize) -> Ticket {
        let mut rest = Vec::new();
        let mut i = 0;
        while i < self.parts.len() {
            let len = self.parts[i].ids.len();
            if at >= len {
                at -= len;
                i += 1;
                continue;
            }
            let tail = self.parts[i].ids.split_off(at);
            rest.push(Part {
                ack: self.parts[i].ack.clone(),
                ids: tail,
            });
            rest.extend(self.parts.drain(i + 1..));
            break;
        }
        Ticket { parts: rest }
    }

    pub fn delivered(mut self) {
        for p in self.parts.drain(..) {
            if let (Some(ack), false) = (&p.ack, p.ids.is_empty()) {
                ack.delivered(RSlice::from_slice(&p.ids));
            }
        }
    }

    pub fn failed(mut self, error: StageError) {
        for p in self.parts.drain(..) {
            if let (Some(ack), false) = (&p.ack, p.ids.is_empty()) {
                ack.failed(RSlice::from_slice(&p.ids), &error);
            }
        }
    }

    /// Settles each record by id.
    pub fn settle_each(mut self, mut how: impl FnMut(u64) -> Settlement) {
        for p in self.parts.drain(..) {
            let Some(ack) = &p.ack else { continue };
            let mut delivered = Vec::new();
            for &id in &p.ids {
                match how(id) {
                    Settlement::Delivered => delivered.push(id),
                    Settlement::Failed(error) => ack.failed(RSlice::from_slice(&[id]), &error),
                }
            }
            if !delivered.is_empty() {
                ack.delivered(RSlice::from_slice(&delivered));
            }
        }
    }

    /// Hands `records` (those this ticket settles) back to the host, which calls the stage
    /// with them again after `after`. Records of the ticket missing from `records` fail as
    /// `unsettled`; records that are not the ticket's are ignored.
    pub fn retry(mut self, records: Vec<Record>, after: Duration) {
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        let parts = std::mem::take(&mut self.parts);
        let part_of: HashMap<u64, usize> = parts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.ids.iter().map(move |&id| (id, i)))
            .collect();
        let mut split: Vec<RVec<Record>> = parts.iter().map(|_| RVec::new()).collect();
        for r in records {
            if let Some(&i) = part_of.get(&r.id()) {
                split[i].push(r);
            }
        }
        for (p, records) in parts.iter().zip(split) {
            let Some(ack) = &p.ack else { continue };
            let handed_back: std::collections::HashSet<u64> =
                records.iter().map(Record::id).collect();
            let missing: Vec<u64> = p
                .ids
                .iter()
                .copied()
                .filter(|id| !handed_back.contains(id))
                .collect();
            if !missing.is_empty() {
                ack.failed(RSlice::from_slice(&missing), &unsettled());
            }
            if !records.is_empty() {
                ack.retry(records, after_ms);
            }
        }
    }
}

/// What records a stage took and never settled fail as.
fn unsettled() -> StageError {
    StageError::new(
        "unsettled",
        "the stage dropped records it had taken for later without settling them",
    )
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self
            .parts
            .iter()
            .all(|p| p.ids.is_empty() || p.ack.is_none())
        {
            return;
        }
        let error = unsettled();
        for p in self.parts.drain(..) {
            if let (Some(ack), false) = (&p.ack, p.ids.is_empty()) {
                ack.failed(RSlice::from_slice(&p.ids), &error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        module::{FfiAck, FfiAck_TO},
        Value,
    };
    use abi_stable::sabi_trait::TD_Opaque;

    #[derive(Clone)]
    struct NoAck;
    impl FfiAck for NoAck {
        fn deferred(&self, _: RSlice<'_, u64>) {}
        fn delivered(&self, _: RSlice<'_, u64>) {}
        fn failed(&self, _: RSlice<'_, u64>, _: &StageError) {}
        fn retry(&self, _: RVec<Record>, _: u64) {}
    }

    fn shared(n: u64) -> (RArc<RVec<Record>>, Batch) {
        let records: RVec<Record> = (1..=n)
            .map(|id| {
                let mut r: Record = [("n", id as i64)].into_iter().collect();
                r.set_origin(id, 10, 0);
                r
            })
            .collect();
        let records = RArc::new(records);
        let ack = FfiAck_TO::from_ptr(RArc::new(NoAck), TD_Opaque);
        (records.clone(), Batch::with_ack(records, ack))
    }

    #[test]
    fn a_batch_only_read_goes_on_as_it_came() {
        let (other, batch) = shared(3);
        assert_eq!(batch.records().len(), 3);
        match batch.into_output().0 {
            BatchOutput::Unchanged(records) => assert!(std::ptr::eq(&*records, &*other)),
            BatchOutput::Changed(_) => panic!("a batch only read was taken"),
        }
    }

    #[test]
    fn the_first_change_takes_the_records_and_leaves_other_branches_alone() {
        let (other, mut batch) = shared(3);
        batch.retain(|r| r.id() != 2);
        for r in batch.records_mut() {
            r.insert("n", "changed");
        }
        let BatchOutput::Changed(mine) = batch.into_output().0 else {
            panic!("a changed batch went on unchanged");
        };
        assert_eq!(mine.iter().map(Record::id).collect::<Vec<_>>(), [1, 3]);
        assert!(mine
            .iter()
            .all(|r| r.get("n").is_some_and(|v| v == Value::from("changed"))));
        assert_eq!(other.len(), 3);
        assert!(other
            .iter()
            .all(|r| r.get("n").and_then(|v| v.as_i64()) == Some(r.id() as i64)));
    }

    #[test]
    fn derived_records_leave_the_shared_ones_untaken() {
        let (other, mut batch) = shared(4);
        batch.derive(|r| {
            let mut d = r.derived();
            d.insert(
                "double",
                r.get("n").and_then(|v| v.as_i64()).unwrap_or(0) * 2,
            );
            d
        });
        let (BatchOutput::Changed(derived), _) = batch.into_output() else {
            panic!("derived records went on as the old ones");
        };
        let doubles: Vec<i64> = derived
            .iter()
            .map(|r| r.get("double").and_then(|v| v.as_i64()).unwrap())
            .collect();
        assert_eq!(doubles, [2, 4, 6, 8]);
        assert_eq!(
            derived.iter().map(Record::id).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        // The shared records were only read: nobody else holds them now.
        assert!(other.iter().all(|r| !r.is_shared()));
        assert_eq!(RArc::strong_count(&other), 1);
    }
}
