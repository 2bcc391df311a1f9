//! Every message ends exactly once: completed, filtered or failed.
//!
//! Records keep their message id (`Record::id`) through every stage. Each batch a source sends
//! carries an `Arc<Lineage>` with two bits per message (delivered, failed); fan-out clones the
//! `Arc`, and so does every handle on records a stage took for later, so the lineage lives
//! until the last branch is done with the batch. Its `Drop` then settles each message once:
//! failed if any branch failed it, completed if any branch delivered it (exported, or reached a
//! stage with no consumers), filtered otherwise. That is one allocation and one settlement per
//! batch; a leaf marks a whole batch delivered with one atomic operation per 64 messages.
//!
//! Records a stage takes for later are *pending* until settled. At the end of a shutdown's
//! drain timeout, what is still pending fails with its own error type ([`DRAIN_TIMEOUT`]):
//! never silently. A message that was neither pending, delivered nor failed then is counted
//! as filtered, unless it turns out to have been still on its way (in a queue, in a call):
//! when a stage or worker fails it afterwards, it moves to failed, with that same error type.
//!
//! Messages in flight are also bounded, in number and in bytes: a source takes one permit per
//! message and one per KiB of their payloads before it admits a batch
//! ([`PipelineCounters::admit`]), and the settlement gives them back, so a stage that holds
//! records (a dead target behind an exporter) slows ingestion instead of growing memory, with
//! small messages or large.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{
            AtomicBool, AtomicU16, AtomicU64,
            Ordering::{AcqRel, Relaxed},
        },
        Arc, Mutex, OnceLock, Weak,
    },
    time::Instant,
};

use abi_stable::std_types::{RArc, RVec};
use plugin_api::Record;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::lock;

/// The error type of records still pending when a shutdown's drain timeout ends.
pub const DRAIN_TIMEOUT: &str = "drain_timeout";

/// The pipeline's message totals, and the bound on messages in flight.
pub struct PipelineCounters {
    received: AtomicU64,
    completed: AtomicU64,
    filtered: AtomicU64,
    failed: AtomicU64,
    /// Messages a drain timeout counted as filtered that failed afterwards: they count as
    /// failed instead (see [`Lineage::failed`]).
    failed_late: AtomicU64,
    /// Failed messages by the error type of their first failure.
    failed_by_type: Mutex<BTreeMap<String, u64>>,
    /// One permit per message that may be in flight.
    in_flight: Arc<Semaphore>,
    /// One permit per KiB of payload that may be in flight; `kib_total` of them.
    in_flight_kib: Arc<Semaphore>,
    kib_total: u32,
    /// Lineages not yet settled, by first message id: what a drain timeout settles.
    live: Mutex<HashMap<u64, Weak<Lineage>>>,
    /// When the first batch of messages was admitted (`host bench` times runs from it).
    first_admitted: OnceLock<Instant>,
}

impl Default for PipelineCounters {
    fn default() -> Self {
        PipelineCounters::with_limits(Semaphore::MAX_PERMITS, usize::MAX)
    }
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
    /// Counters allowing at most `max_in_flight` messages in flight, and payloads of
    /// `max_in_flight_bytes` (counted in whole KiB; a batch larger than that is admitted
    /// alone).
    pub fn with_limits(max_in_flight: usize, max_in_flight_bytes: usize) -> Self {
        let kib_total = u32::try_from((max_in_flight_bytes / 1024).max(1))
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        PipelineCounters {
            received: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failed_late: AtomicU64::new(0),
            failed_by_type: Mutex::new(BTreeMap::new()),
            in_flight: Arc::new(Semaphore::new(max_in_flight.min(Semaphore::MAX_PERMITS))),
            in_flight_kib: Arc::new(Semaphore::new(kib_total as usize)),
            kib_total,
            live: Mutex::new(HashMap::new()),
            first_admitted: OnceLock::new(),
        }
    }

    /// When the first batch of messages was admitted; `None` before.
    pub fn first_admitted(&self) -> Option<Instant> {
        self.first_admitted.get().copied()
    }

    /// Counts messages that failed before they could enter the pipeline (they were received,
    /// but could not be decoded).
    pub fn reject(&self, error_type: &str, count: u64) {
        self.received.fetch_add(count, Relaxed);
        self.failed.fetch_add(count, Relaxed);
        self.count_failure_type(error_type, count);
    }

    fn count_failure_type(&self, error_type: &str, count: u64) {
        count_bounded(&mut lock(&self.failed_by_type), error_type, count);
    }

    /// Waits until `count` more messages, of `bytes` in all, may be in flight, then admits
    /// them as one batch with ids `first_id..first_id + count`.
    pub async fn admit(
        self: &Arc<Self>,
        first_id: u64,
        count: usize,
        bytes: usize,
    ) -> Arc<Lineage> {
        let mut kib = 0;
        if count > 0 {
            let n = u32::try_from(count).unwrap_or(u32::MAX);
            // The semaphores are never closed, so these cannot fail.
            if let Ok(permits) = self.in_flight.acquire_many(n).await {
                permits.forget();
            }
            kib = u32::try_from(bytes.div_ceil(1024))
                .unwrap_or(u32::MAX)
                .min(self.kib_total);
            if let Ok(permits) = self.in_flight_kib.acquire_many(kib).await {
                permits.forget();
            }
        }
        let mut lineage = Lineage::new(first_id, count, self.clone(), count > 0);
        lineage.kib = kib;
        self.register(lineage)
    }

    /// A lineage for records that are not messages (the monitor's window snapshots): counted
    /// nowhere, bound by nothing.
    pub fn unaccounted(self: &Arc<Self>) -> Arc<Lineage> {
        Arc::new(Lineage::new(0, 0, self.clone(), false))
    }

    fn register(&self, lineage: Lineage) -> Arc<Lineage> {
        if lineage.count > 0 {
            // Once set, one atomic load per batch.
            self.first_admitted.get_or_init(Instant::now);
        }
        self.received.fetch_add(lineage.count as u64, Relaxed);
        let lineage = Arc::new(lineage);
        lock(&self.live).insert(lineage.first_id, Arc::downgrade(&lineage));
        lineage
    }

    /// Settles every lineage still alive, failing what is still pending with `error_type`
    /// (at the end of a shutdown's drain timeout). Later settlements of theirs are ignored.
    pub fn settle_all(&self, error_type: &str) {
        let live: Vec<Arc<Lineage>> = lock(&self.live)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for lineage in live {
            lineage.settle(Some(error_type));
        }
    }

    pub fn totals(&self) -> Totals {
        // Read the outcomes before `received` so in_flight never goes negative.
        let completed = self.completed.load(Relaxed);
        let filtered = self.filtered.load(Relaxed);
        let failed = self.failed.load(Relaxed);
        let late = self.failed_late.load(Relaxed);
        let received = self.received.load(Relaxed);
        // A late failure can be seen a moment before the settlement that counted it filtered.
        let (filtered, failed) = (filtered.saturating_sub(late), failed + late);
        Totals {
            received,
            completed,
            filtered,
            failed,
            in_flight: received.saturating_sub(completed + filtered + failed),
            failed_by_type: lock(&self.failed_by_type).clone(),
        }
    }
}

/// Messages per word of a lineage's failure marks: the word's top bit says that a forced
/// settlement has counted them (see [`Lineage::failed`]).
const FAILED_PER_WORD: usize = 63;
const COUNTED: u64 = 1 << 63;

/// Where message `i`'s failure mark is: its word, and its bit in the word.
fn failed_bit(i: usize) -> (usize, u64) {
    (i / FAILED_PER_WORD, 1 << (i % FAILED_PER_WORD))
}

/// The marks of one source batch's messages.
pub struct Lineage {
    first_id: u64,
    count: usize,
    delivered: Box<[AtomicU64]>,
    /// 63 messages per word, and [`COUNTED`].
    failed: Box<[AtomicU64]>,
    /// Per message, how many holders of records taken for later have not settled them; made
    /// on the first deferral, so batches nobody defers never pay for it.
    pending: OnceLock<Box<[AtomicU16]>>,
    settled: AtomicBool,
    /// The error type of a forced settlement, once there was one.
    forced: OnceLock<Box<str>>,
    /// Whether this batch holds in-flight permits (window records do not).
    bounded: bool,
    /// The KiB permits it holds for its payloads.
    kib: u32,
    counters: Arc<PipelineCounters>,
}

fn bitset(count: usize) -> Box<[AtomicU64]> {
    (0..count.div_ceil(64)).map(|_| AtomicU64::new(0)).collect()
}

impl Lineage {
    fn new(first_id: u64, count: usize, counters: Arc<PipelineCounters>, bounded: bool) -> Lineage {
        Lineage {
            first_id,
            count,
            delivered: bitset(count),
            failed: (0..count.div_ceil(FAILED_PER_WORD))
                .map(|_| AtomicU64::new(0))
                .collect(),
            pending: OnceLock::new(),
            settled: AtomicBool::new(false),
            forced: OnceLock::new(),
            bounded,
            kib: 0,
            counters,
        }
    }

    fn index(&self, id: u64) -> Option<usize> {
        let index = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        (index < self.count).then_some(index)
    }

    /// The message reached the end of a branch.
    pub fn delivered(&self, id: u64) {
        if let Some(i) = self.index(id) {
            self.delivered[i / 64].fetch_or(1 << (i % 64), Relaxed);
        }
    }

    /// Every message of `ids` reached the end of a branch: one atomic operation per 64
    /// messages when they are in id order (as sources send them), more only if a stage
    /// reordered.
    pub fn deliver_all(&self, ids: impl IntoIterator<Item = u64>) {
        let mut word = usize::MAX;
        let mut bits = 0u64;
        for id in ids {
            let Some(i) = self.index(id) else {
                continue;
            };
            if i / 64 != word {
                if bits != 0 {
                    self.delivered[word].fetch_or(bits, Relaxed);
                }
                word = i / 64;
                bits = 0;
            }
            bits |= 1 << (i % 64);
        }
        if bits != 0 {
            self.delivered[word].fetch_or(bits, Relaxed);
        }
    }

    /// The message failed with `error_type`; only its first failure names its type.
    ///
    /// After a forced settlement (a drain timeout), a message it counted as filtered (neither
    /// delivered, failed nor held) was still on its way: if it fails now (a worker fails what
    /// it still had queued, a stage what it still had in hand), it counts as failed, with the
    /// settlement's error type. The mark and the settlement's claim on the word are one atomic
    /// word, so each message is counted once, whatever the timing.
    pub fn failed(&self, id: u64, error_type: &str) {
        let Some(i) = self.index(id) else {
            return;
        };
        let (w, bit) = failed_bit(i);
        let before = self.failed[w].fetch_or(bit, AcqRel);
        if before & bit != 0 {
            return;
        }
        if before & COUNTED == 0 {
            // Counted as failed when the lineage settles.
            self.counters.count_failure_type(error_type, 1);
        } else if let Some(kind) = self.forced.get() {
            self.counters.failed_late.fetch_add(1, Relaxed);
            self.counters.count_failure_type(kind, 1);
        }
    }

    fn pending(&self) -> &[AtomicU16] {
        self.pending
            .get_or_init(|| (0..self.count).map(|_| AtomicU16::new(0)).collect())
    }

    /// A stage took the message's record for later.
    pub fn deferred(&self, id: u64) {
        if let Some(i) = self.index(id) {
            self.pending()[i].fetch_add(1, Relaxed);
        }
    }

    /// A record taken for later is settled (or handed back to be retried).
    pub fn undeferred(&self, id: u64) {
        if let Some(i) = self.index(id) {
            let _ = self.pending()[i].fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Counts every message once: at the last drop, or when a drain timeout forces it (then
    /// what is still pending fails with `forced`).
    fn settle(&self, forced: Option<&str>) {
        if self.settled.swap(true, AcqRel) {
            return;
        }
        if let Some(kind) = forced {
            let _ = self.forced.set(kind.into());
        }
        let (mut completed, mut failed, mut forced_failed) = (0u64, 0u64, 0u64);
        let pending = self.pending.get();
        for (w, word) in self.failed.iter().enumerate() {
            let messages = w * FAILED_PER_WORD..((w + 1) * FAILED_PER_WORD).min(self.count);
            // Each message's state, read once: pending (forced only), delivered.
            let (mut held, mut delivered) = (0u64, 0u64);
            for i in messages.clone() {
                let bit = failed_bit(i).1;
                if forced.is_some() && pending.is_some_and(|p| p[i].load(Relaxed) > 0) {
                    held |= bit;
                } else if self.delivered[i / 64].load(Relaxed) & (1 << (i % 64)) != 0 {
                    delivered |= bit;
                }
            }
            let failed_before = if forced.is_some() {
                // Stages may still be settling (a forced settlement does not wait for them):
                // claim what is counted here as held or delivered, so that a later failure
                // of it is ignored, and leave the rest to `failed` to count.
                word.fetch_or(COUNTED | held | delivered, AcqRel)
            } else {
                word.load(Relaxed)
            };
            failed += u64::from((failed_before & !COUNTED).count_ones());
            forced_failed += u64::from((held & !failed_before).count_ones());
            completed += u64::from((delivered & !failed_before).count_ones());
        }
        if let (Some(kind), true) = (forced, forced_failed > 0) {
            self.counters.count_failure_type(kind, forced_failed);
        }
        let failed = failed + forced_failed;
        let filtered = self.count as u64 - completed - failed;
        // `received` was added at admission, before any of these: totals() stays consistent.
        let c = &self.counters;
        c.failed.fetch_add(failed, Relaxed);
        c.filtered.fetch_add(filtered, Relaxed);
        c.completed.fetch_add(completed, Relaxed);
        if self.bounded {
            c.in_flight.add_permits(self.count);
            c.in_flight_kib.add_permits(self.kib as usize);
        }
    }
}

impl Drop for Lineage {
    fn drop(&mut self) {
        self.settle(None);
        if self.count > 0 {
            lock(&self.counters.live).remove(&self.first_id);
        }
    }
}

/// What travels on a stage's input queue.
pub enum Queued {
    Records(Envelope),
    /// A source's messages as they came, not decoded yet: a source with one consumer hands
    /// them over like this, so that the consumer's worker decodes them, and each record is
    /// made on the thread that uses it (see `source::Messages`).
    Messages(crate::source::Messages),
}

impl Queued {
    /// Fails every message of what could not be handled.
    pub fn fail_all(&self, error_type: &str) {
        match self {
            Queued::Records(envelope) => envelope.fail_all(error_type),
            Queued::Messages(messages) => messages.fail_all(error_type),
        }
    }
}

impl From<Envelope> for Queued {
    fn from(envelope: Envelope) -> Queued {
        Queued::Records(envelope)
    }
}

/// What travels on a queue between stages: records (handles on shared data), their lineage,
/// and facts about them. Every consumer of one output gets the same records, shared as a
/// whole: a fan-out costs a few reference counts per batch, not per record.
pub struct Envelope {
    pub records: RArc<RVec<Record>>,
    pub lineage: Arc<Lineage>,
    pub facts: Arc<Facts>,
}

/// What every consumer of one batch needs to know about its records, worked out by the
/// first that asks and shared with the others (so each branch of a fan-out does not read
/// every record again).
#[derive(Default)]
pub struct Facts {
    ids: OnceLock<Box<[u64]>>,
    types: OnceLock<Tally>,
    received: OnceLock<Box<[(u64, u64)]>>,
}

/// Counts by value: (value, how many records).
pub type Tally = Box<[(Box<str>, u64)]>;

/// Distinct names (error types, data types) counted apart in one map; more are counted as
/// `other`, so what messages or libraries say cannot grow a map (or a metric's series)
/// without bound.
pub const MAX_TYPES: usize = 1000;

/// Adds `n` under `key`, or under `other` once the map holds [`MAX_TYPES`] names.
pub fn count_bounded(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    match map.get_mut(key) {
        Some(c) => *c += n,
        None => {
            let key = if map.len() >= MAX_TYPES { "other" } else { key };
            *map.entry(key.to_owned()).or_default() += n;
        }
    }
}

impl Facts {
    /// Facts its maker knew already (a source: the ids it gave, the times it read).
    pub fn known(ids: Box<[u64]>, received: Box<[(u64, u64)]>) -> Facts {
        Facts {
            ids: OnceLock::from(ids),
            types: OnceLock::new(),
            received: OnceLock::from(received),
        }
    }

    /// The message ids of `records` (the batch these facts are about), in order.
    pub fn ids(&self, records: &[Record]) -> &[u64] {
        self.ids
            .get_or_init(|| records.iter().map(Record::id).collect())
    }

    /// The records counted by type, as `count` counts them.
    pub fn types(&self, count: impl FnOnce() -> Tally) -> &Tally {
        self.types.get_or_init(count)
    }

    /// When the records' messages were received: runs of (time, how many records).
    pub fn received(&self, records: &[Record]) -> &[(u64, u64)] {
        self.received.get_or_init(|| received_runs(records))
    }
}

/// When `records`' messages were received, as runs of (time in ns, how many records): records
/// read together share their receive time, so a batch has a few runs. Records no message
/// produced (the monitor's own windows) have no receive time and are left out.
pub fn received_runs(records: &[Record]) -> Box<[(u64, u64)]> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for at in records
        .iter()
        .map(Record::received_at_ns)
        .filter(|&at| at != 0)
    {
        add_to_runs(&mut runs, at);
    }
    runs.into_boxed_slice()
}

/// Counts one more record received at `at` in `runs` (see [`received_runs`]).
#[inline]
pub fn add_to_runs(runs: &mut Vec<(u64, u64)>, at: u64) {
    match runs.last_mut() {
        Some((t, n)) if *t == at => *n += 1,
        _ => runs.push((at, 1)),
    }
}

impl Envelope {
    /// An envelope of records no consumer has seen yet.
    pub fn new(records: RVec<Record>, lineage: Arc<Lineage>) -> Envelope {
        Envelope {
            records: RArc::new(records),
            lineage,
            facts: Arc::default(),
        }
    }

    /// One envelope per consumer, for a fan-out: each gets the same shared records and
    /// facts (no record is touched).
    pub fn fan_out(self, consumers: usize) -> Vec<Envelope> {
        let mut out = Vec::with_capacity(consumers);
        for _ in 1..consumers {
            out.push(Envelope {
                records: self.records.clone(),
                lineage: self.lineage.clone(),
                facts: self.facts.clone(),
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
            self.lineage.failed(r.id(), error_type);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> Record {
        let mut r = Record::new();
        r.set_origin(id, 0, 0);
        r
    }

    #[tokio::test]
    async fn each_message_settles_once_when_the_last_branch_is_done() {
        let counters = Arc::new(PipelineCounters::default());
        let lineage = counters.admit(10, 4, 0).await;
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

    #[tokio::test]
    async fn a_whole_batch_delivered_in_any_order_counts_every_message() {
        let counters = Arc::new(PipelineCounters::default());
        let lineage = counters.admit(1000, 200, 0).await;
        let mut records: Vec<Record> = (1000..1200).map(record).collect();
        records.swap(3, 150);
        records.remove(7); // id 1007 was filtered
        lineage.deliver_all(records.iter().map(Record::id));
        drop(lineage);
        let t = counters.totals();
        assert_eq!((t.completed, t.filtered, t.in_flight), (199, 1, 0));
    }

    #[tokio::test]
    async fn what_is_pending_at_a_drain_timeout_fails_with_its_own_type() {
        let counters = Arc::new(PipelineCounters::default());
        let lineage = counters.admit(1, 3, 0).await;
        lineage.delivered(1);
        lineage.deferred(2); // held by an exporter that never settles
        lineage.deferred(3);
        lineage.undeferred(3);
        lineage.delivered(3); // settled as delivered
        counters.settle_all(DRAIN_TIMEOUT);
        let t = counters.totals();
        assert_eq!((t.completed, t.failed, t.in_flight), (2, 1, 0));
        assert_eq!(t.failed_by_type[DRAIN_TIMEOUT], 1);
        // The exporter settles late: nothing counts twice.
        lineage.failed(2, "io");
        drop(lineage);
        let t = counters.totals();
        assert_eq!((t.received, t.completed, t.failed), (3, 2, 1));
        assert_eq!(t.failed_by_type.get("io"), None);
    }

    #[tokio::test]
    async fn what_was_still_on_its_way_at_a_drain_timeout_fails_when_it_is_failed_later() {
        let counters = Arc::new(PipelineCounters::default());
        // 130 messages: three words of failure marks.
        let lineage = counters.admit(1, 130, 0).await;
        for id in (2..=130).step_by(2) {
            lineage.delivered(id);
        }
        lineage.failed(3, "io");
        lineage.deferred(1);
        counters.settle_all(DRAIN_TIMEOUT);
        let t = counters.totals();
        assert_eq!(
            (t.completed, t.filtered, t.failed, t.in_flight),
            (65, 63, 2, 0)
        );
        // The worker fails what it still had queued; the stage its held record as it stops.
        for id in (5..=129).step_by(2) {
            lineage.failed(id, "pipeline_closed");
        }
        lineage.failed(1, "unsettled");
        lineage.failed(2, "io"); // delivered before the timeout: stays completed
        lineage.failed(5, "io"); // counted once
        drop(lineage);
        let t = counters.totals();
        assert_eq!(
            (t.received, t.completed, t.filtered, t.failed, t.in_flight),
            (130, 65, 0, 65, 0)
        );
        assert_eq!(t.failed_by_type.get("io"), Some(&1));
        assert_eq!(t.failed_by_type[DRAIN_TIMEOUT], 64);
        assert_eq!(t.failed_by_type.len(), 2);
    }

    #[tokio::test]
    async fn failures_racing_a_drain_timeout_count_once_each() {
        for _ in 0..20 {
            let counters = Arc::new(PipelineCounters::default());
            let n = 5_000;
            let lineage = counters.admit(1, n, 0).await;
            let failing = {
                let lineage = lineage.clone();
                std::thread::spawn(move || {
                    for id in 1..=n as u64 {
                        lineage.failed(id, "io");
                    }
                })
            };
            counters.settle_all(DRAIN_TIMEOUT);
            failing.join().unwrap();
            drop(lineage);
            let t = counters.totals();
            assert_eq!((t.received, t.failed, t.filtered), (n as u64, n as u64, 0));
            assert_eq!(t.failed_by_type.values().sum::<u64>(), n as u64);
        }
    }

    #[tokio::test]
    async fn messages_in_flight_are_bounded_until_they_settle() {
        let counters = Arc::new(PipelineCounters::with_limits(10, usize::MAX));
        let first = counters.admit(1, 8, 0).await;
        let waiting = {
            let counters = counters.clone();
            tokio::spawn(async move { counters.admit(9, 8, 0).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "admitted past the bound");
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("admitted once the first batch settled")
            .unwrap();
        drop(second);
        assert_eq!(counters.totals().in_flight, 0);
    }

    #[tokio::test]
    async fn bytes_in_flight_are_bounded_until_they_settle_and_a_larger_batch_goes_alone() {
        // 64 KiB: one batch of 40 KiB leaves no room for another, whatever their count.
        let counters = Arc::new(PipelineCounters::with_limits(1000, 64 * 1024));
        let first = counters.admit(1, 2, 40 * 1024).await;
        let waiting = {
            let counters = counters.clone();
            tokio::spawn(async move { counters.admit(3, 2, 40 * 1024).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "admitted past the byte bound");
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("admitted once the first batch settled")
            .unwrap();
        drop(second);
        // Larger than the bound: admitted once nothing else is in flight, never stuck.
        let huge = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            counters.admit(5, 1, 1 << 30),
        )
        .await
        .expect("a batch larger than the bound is admitted alone");
        drop(huge);
        assert_eq!(counters.in_flight_kib.available_permits(), 64);
    }

    #[test]
    fn distinct_error_types_are_bounded() {
        let counters = PipelineCounters::default();
        for i in 0..MAX_TYPES + 500 {
            counters.reject(&format!("kind_{i}"), 1);
        }
        counters.reject("kind_0", 1);
        let snap = counters.totals();
        assert_eq!(snap.failed_by_type.len(), MAX_TYPES + 1);
        assert_eq!(snap.failed_by_type["other"], 500);
        assert_eq!(snap.failed_by_type["kind_0"], 2);
        assert_eq!(snap.failed_by_type.values().sum::<u64>(), snap.failed);
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
