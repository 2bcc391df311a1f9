//! A stage worker: takes batches from its queue, calls its stage, settles what the stage
//! decided, and passes the rest on. Runs on its own thread: stage calls are synchronous and
//! may block (an exporter writing a file) without stalling the async runtime. The worker owns
//! its stage: nothing else calls it, so no lock is taken per batch, and health checks are
//! answered by the worker between calls (see [`StageProbe`]).
//!
//! A worker may run several stages (`runtime.fuse`, see `PipelineConfig::stage_threads`): a
//! first stage and stages that take their only input from a stage of the worker, a chain or
//! a tree; or several such trees whose first stages all take only the same source's output
//! (roots, each given every batch from the queue). It calls each with the output of the one
//! before, on the same thread, with no queue between them. A record then stays in one core's
//! cache from the first stage to the last, with no hand-off to another thread (and the cache
//! misses of one) per hop. A stage that is not ready keeps the output of the one before
//! waiting (the worker takes no new batch meanwhile), as a full queue would. Everything else
//! (ticks, retries, health answers, the drain) is per stage, as it is for a worker of one.
//!
//! A stage may take records for later (acknowledged delivery). The worker hands each call an
//! acknowledgement handle ([`HostAck`]) that settles them from any thread, and takes back
//! records the stage hands back to be retried. After its input ends, the worker flushes the
//! stage and stays until everything the stage took is settled (or the drain timeout ends),
//! so that a retry can still be called and its output still flows downstream.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{
            AtomicI64,
            Ordering::{AcqRel, Acquire, Relaxed},
        },
        mpsc as std_mpsc, Arc,
    },
    time::{Duration, Instant},
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RErr, ROk, RSlice, RVec},
};
use plugin_api::{Batch, BatchOutput, FfiAck, FfiAck_TO, Record, StageBox, StageError, StageKind};
use tokio::sync::{mpsc, watch};

use super::probe::{StageProbe, WorkerThread};
use crate::{
    accounting::{Envelope, Lineage, Queued, DRAIN_TIMEOUT},
    clock::unix_ns,
    coordinator::{Coordinator, LateReports},
    monitor::{type_tally, CallOutcome, StageStats},
};

/// Records handed back by a stage, due to be called with again. They stay pending in their
/// lineage until that call has decided about them: a drain timeout meanwhile fails them as
/// `drain_timeout`, as it does records a stage holds.
struct Retry {
    records: RVec<Record>,
    lineage: Arc<Lineage>,
    due: Instant,
}

/// What a stage's acknowledgement handles share with its worker.
pub struct StageAcks {
    /// Records taken for later and not settled yet.
    outstanding: AtomicI64,
    /// `None` when monitoring is disabled: then settlements count for the messages only.
    stats: Option<Arc<StageStats>>,
    /// An observer's reports of settlements (`monitoring.mode: custom`).
    late: Option<LateReports>,
    retries: std_mpsc::Sender<Retry>,
    /// Woken when a retry arrives, or everything taken has been settled.
    thread: Arc<WorkerThread>,
}

/// The host's side of one call's deferrals (see `plugin_api::FfiAck`).
#[derive(Clone)]
struct HostAck {
    lineage: Arc<Lineage>,
    acks: Arc<StageAcks>,
    /// When the first message of the call's batch was received (0 if none was): records
    /// delivered later are timed from it, at most the batch's gathering time early.
    received_ns: u64,
}

impl HostAck {
    fn settled(&self, n: usize) {
        // Release: a worker that sees the count fall also sees a retry sent before it.
        let left = self.acks.outstanding.fetch_sub(n as i64, AcqRel) - n as i64;
        if left <= 0 {
            self.acks.thread.wake();
        }
    }
}

impl FfiAck for HostAck {
    fn deferred(&self, ids: RSlice<'_, u64>) {
        for id in ids.iter() {
            self.lineage.deferred(*id);
        }
        self.acks.outstanding.fetch_add(ids.len() as i64, Relaxed);
        if let Some(stats) = &self.acks.stats {
            stats.record_deferred(ids.len() as u64);
        }
    }

    fn delivered(&self, ids: RSlice<'_, u64>) {
        for id in ids.iter() {
            self.lineage.delivered(*id);
            self.lineage.undeferred(*id);
        }
        let n = ids.len() as u64;
        if let Some(stats) = &self.acks.stats {
            stats.record_delivered_later(n);
            if self.received_ns != 0 {
                stats.record_delivered(&[(self.received_ns, n)], unix_ns());
            }
        }
        if let Some(late) = &self.acks.late {
            late.delivered(n);
        }
        self.settled(ids.len());
    }

    fn failed(&self, ids: RSlice<'_, u64>, error: &StageError) {
        for id in ids.iter() {
            self.lineage.failed(*id, error.kind());
            self.lineage.undeferred(*id);
        }
        if let Some(stats) = &self.acks.stats {
            stats.record_failures(error.kind(), ids.len() as u64);
        }
        if let Some(late) = &self.acks.late {
            late.failed(ids.len() as u64, error.kind());
        }
        self.settled(ids.len());
    }

    fn retry(&self, records: RVec<Record>, after_ms: u64) {
        // Still pending (see `Retry`): the worker undefers them after the retry call.
        let n = records.len();
        let due = Instant::now() + Duration::from_millis(after_ms);
        let retry = Retry {
            records,
            lineage: self.lineage.clone(),
            due,
        };
        if let Err(std_mpsc::SendError(lost)) = self.acks.retries.send(retry) {
            // The worker is gone (after a drain timeout): nothing will call the stage again.
            for r in lost.records.iter() {
                lost.lineage.failed(r.id(), DRAIN_TIMEOUT);
                lost.lineage.undeferred(r.id());
            }
        }
        self.settled(n);
        // `settled` wakes the worker only when nothing is left outstanding; a retry must
        // wake it even while the stage holds other records.
        self.acks.thread.wake();
    }
}

/// One stage a worker runs.
pub struct WorkerStage {
    pub name: String,
    pub kind: StageKind,
    pub stage: StageBox,
    /// In-call marks and health answers, shared with the health check.
    pub probe: Arc<StageProbe>,
    /// Observes (and traces) the calls.
    pub coordinator: Coordinator,
    pub stats: Arc<StageStats>,
    /// The stages of this worker that take this one's output (indices, each after this one).
    pub consumers: Vec<usize>,
    /// The queues of the other workers' stages that take this one's output.
    pub outputs: Vec<mpsc::Sender<Queued>>,
}

pub struct Worker {
    /// One stage, or several: the first, then each after the one whose output it takes
    /// (a stage that is no other's consumer is a root: it takes every batch of the input).
    pub stages: Vec<WorkerStage>,
    /// The field whose values are counted per stage (`monitoring.type_field`).
    pub type_field: Arc<str>,
    /// The roots' input.
    pub input: mpsc::Receiver<Queued>,
    /// Turns true when the drain timeout ends: stop, failing what is still queued.
    pub finish: watch::Receiver<bool>,
    /// For timers while the worker waits.
    pub runtime: tokio::runtime::Handle,
}

/// How soon a stage that was not ready for a batch is asked again.
const READY_POLL: Duration = Duration::from_millis(2);

/// What wakes a waiting worker.
enum Wake {
    Batch(Queued),
    InputClosed,
    /// A health request, a settlement or a retry, a timer: look at everything again.
    Look,
    Finish,
}

/// What a worker keeps for one of its stages while it runs.
struct Slot {
    stage: WorkerStage,
    /// Entered around every call, so that what is logged in it names the stage (see
    /// `logging`); for a worker of one stage, entered for the thread's whole life instead.
    span: tracing::Span,
    acks: Arc<StageAcks>,
    retries: std_mpsc::Receiver<Retry>,
    delayed: Vec<Retry>,
    next_tick: Option<Instant>,
    /// Exporters deliver what they keep; so does a stage nobody reads from.
    delivers: bool,
    /// The output of the stage before, waiting for this one to be ready (not the first).
    waiting: VecDeque<Envelope>,
    flushed: bool,
    /// The stage of this worker whose output this one takes (none for a root).
    parent: Option<usize>,
}

/// What a running worker has.
struct Running {
    slots: Vec<Slot>,
    /// The stages that take the input's batches: the first, and any others fed by the same
    /// source (see `PipelineConfig::stage_threads`).
    roots: Vec<usize>,
    /// What every stage's acknowledgements and health checks wake.
    thread: Arc<WorkerThread>,
    /// Data types and ingest-to-delivery latency are observation too: none when disabled.
    observed: bool,
    type_field: Arc<str>,
    input: mpsc::Receiver<Queued>,
    input_open: bool,
    finish: watch::Receiver<bool>,
    runtime: tokio::runtime::Handle,
}

/// How far the drain at the end of the input has come.
enum Drain {
    /// Not there yet: input or work is still coming.
    Going,
    /// A stage was flushed: look again.
    Flushed,
    /// Every stage is done.
    Done,
}

impl Worker {
    /// Runs until the input has ended and everything the stages took for later is settled,
    /// or until the drain timeout ends.
    pub fn run(self) {
        let observed = self.stages.iter().any(|s| s.coordinator.is_enabled());
        let single = self.stages.len() == 1;
        // One for all the stages: see `PipelineConfig::stage_threads`.
        let thread = self.stages[0].probe.thread().clone();
        let mut parents = vec![None; self.stages.len()];
        for (i, stage) in self.stages.iter().enumerate() {
            for &c in &stage.consumers {
                parents[c] = Some(i);
            }
        }
        // A worker of one stage names it for the thread's whole life; a worker of several
        // names each stage around its calls.
        let _span = single.then(|| crate::logging::stage_span(&self.stages[0].name).entered());
        let slots = self
            .stages
            .into_iter()
            .enumerate()
            .map(|(i, stage)| {
                let (retry_tx, retry_rx) = std_mpsc::channel();
                Slot {
                    span: if single {
                        tracing::Span::none()
                    } else {
                        crate::logging::stage_span(&stage.name)
                    },
                    acks: Arc::new(StageAcks {
                        outstanding: AtomicI64::new(0),
                        stats: stage.coordinator.is_enabled().then(|| stage.stats.clone()),
                        late: stage.coordinator.late_reports(),
                        retries: retry_tx,
                        thread: stage.probe.thread().clone(),
                    }),
                    retries: retry_rx,
                    delayed: Vec::new(),
                    next_tick: None,
                    delivers: stage.kind == StageKind::Exporter
                        || (stage.consumers.is_empty() && stage.outputs.is_empty()),
                    waiting: VecDeque::new(),
                    flushed: false,
                    parent: parents[i],
                    stage,
                }
            })
            .collect();
        let roots = (0..parents.len())
            .filter(|&i| parents[i].is_none())
            .collect();
        let mut run = Running {
            slots,
            roots,
            thread,
            observed,
            type_field: self.type_field,
            input: self.input,
            input_open: true,
            finish: self.finish,
            runtime: self.runtime,
        };
        run.run();
    }
}

impl Running {
    fn run(&mut self) {
        for i in 0..self.slots.len() {
            self.tick(i);
        }
        loop {
            if *self.finish.borrow() {
                self.abandon();
                break;
            }
            if let Some(i) = self.slots.iter().position(|s| s.stage.probe.take_request()) {
                self.answer_health(i);
                continue;
            }
            for slot in &mut self.slots {
                slot.delayed.extend(slot.retries.try_iter());
            }
            if self.step(Instant::now()) {
                continue;
            }
            // A stage that cannot take a batch now (its own buffer is full) is asked again
            // shortly; meanwhile batches wait in the queue and the pipeline slows down. So
            // does a worker with a batch still waiting between two of its stages.
            let take_input = self.input_open
                && self.slots.iter().all(|s| s.waiting.is_empty())
                && (0..self.roots.len()).all(|r| self.ready(self.roots[r]));
            if take_input {
                match self.input.try_recv() {
                    Ok(queued) => {
                        self.take(queued);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => self.input_open = false,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            match self.drain() {
                Drain::Going => {}
                Drain::Flushed => continue,
                Drain::Done => break,
            }
            match self.wait(take_input) {
                Wake::Batch(queued) => self.take(queued),
                Wake::InputClosed => self.input_open = false,
                Wake::Look => {}
                Wake::Finish => {
                    self.abandon();
                    break;
                }
            }
        }
        tracing::debug!(stage = %self.slots[0].stage.name, stages = self.slots.len(), "worker drained");
    }

    /// Does one thing that is due, the last stage first (it frees the most; a stage comes
    /// after the one it takes from): a batch waiting between stages, a retry, a tick. False
    /// when nothing was.
    fn step(&mut self, now: Instant) -> bool {
        for i in (0..self.slots.len()).rev() {
            if !self.slots[i].waiting.is_empty() && self.ready(i) {
                let envelope = self.slots[i].waiting.pop_front().expect("not empty");
                self.handle(i, envelope);
                return true;
            }
            let due = self.slots[i]
                .delayed
                .iter()
                .enumerate()
                .filter(|(_, r)| r.due <= now)
                .min_by_key(|(_, r)| r.due)
                .map(|(i, _)| i);
            if let Some(d) = due {
                if self.ready(i) {
                    // In the order they came due: records handed back keep their order.
                    let Retry {
                        records, lineage, ..
                    } = self.slots[i].delayed.remove(d);
                    let ids: Vec<u64> = records.iter().map(Record::id).collect();
                    self.handle(i, Envelope::new(records, lineage.clone()));
                    // Pending until now, so that no drain timeout could find them neither
                    // held nor delivered; the call has settled them or taken them again.
                    for id in ids {
                        lineage.undeferred(id);
                    }
                    return true;
                }
            }
            if self.slots[i].next_tick.is_some_and(|t| t <= now) {
                self.tick(i);
                return true;
            }
        }
        false
    }

    /// After the input has ended: flushes each stage once everything before it is done, and
    /// says when every one is (the input ended, nothing is waiting or taken for later).
    fn drain(&mut self) -> Drain {
        let mut done = vec![false; self.slots.len()];
        for i in 0..self.slots.len() {
            let upstream_done = match self.slots[i].parent {
                Some(p) => done[p],
                None => !self.input_open,
            };
            if !upstream_done || !self.slots[i].waiting.is_empty() {
                continue;
            }
            if !self.slots[i].flushed {
                self.flush(i);
                self.slots[i].flushed = true;
                return Drain::Flushed;
            }
            let slot = &mut self.slots[i];
            // Read before looking for retries again: a stage hands records back before they
            // count as settled, so none can slip between the two.
            let outstanding = slot.acks.outstanding.load(Acquire);
            slot.delayed.extend(slot.retries.try_iter());
            done[i] = outstanding <= 0 && slot.delayed.is_empty();
        }
        if done.iter().all(|&d| d) {
            Drain::Done
        } else {
            Drain::Going
        }
    }

    /// Waits for the next thing to do: a batch (when `take_input`), a health request, a
    /// settlement or retry, the next tick or retry coming due, the time to ask a stage that
    /// was not ready again, or the end of the drain timeout.
    fn wait(&mut self, take_input: bool) -> Wake {
        let now = Instant::now();
        let ask_again = now + READY_POLL;
        let mut due: Option<Instant> = None;
        let mut at = |t: Instant| due = Some(due.map_or(t, |d| d.min(t)));
        for slot in &self.slots {
            // Due already: its stage was not ready for it (see `step`).
            for r in &slot.delayed {
                at(if r.due <= now { ask_again } else { r.due });
            }
            if let Some(t) = slot.next_tick {
                at(t);
            }
            if !slot.waiting.is_empty() {
                at(ask_again);
            }
        }
        if self.input_open && !take_input {
            at(ask_again);
        }
        let due = due.map(tokio::time::Instant::from_std);
        let (input, finish, thread) = (&mut self.input, &mut self.finish, &self.thread);
        self.runtime.block_on(async {
            tokio::select! {
                biased;
                changed = finish.changed() => match changed {
                    Ok(()) if !*finish.borrow() => Wake::Look,
                    _ => Wake::Finish,
                },
                () = thread.woken() => Wake::Look,
                envelope = input.recv(), if take_input => match envelope {
                    Some(envelope) => Wake::Batch(envelope),
                    None => Wake::InputClosed,
                },
                () = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => Wake::Look,
            }
        })
    }

    /// Runs `f` with stage `i`, in a call (see [`StageProbe::call`]) and in its span.
    #[inline]
    fn call<T>(&mut self, i: usize, f: impl FnOnce(&mut StageBox) -> T) -> T {
        let slot = &mut self.slots[i];
        let _span = slot.span.enter();
        let stage = &mut slot.stage.stage;
        slot.stage.probe.call(|| f(stage))
    }

    fn ready(&mut self, i: usize) -> bool {
        self.call(i, |stage| stage.ready())
    }

    fn answer_health(&mut self, i: usize) {
        let report = self.call(i, |stage| stage.health());
        self.slots[i].stage.probe.answer(report);
    }

    fn tick(&mut self, i: usize) {
        let next_ms = self.call(i, |stage| stage.tick());
        self.slots[i].next_tick =
            (next_ms > 0).then(|| Instant::now() + Duration::from_millis(next_ms));
    }

    fn flush(&mut self, i: usize) {
        if let RErr(error) = self.call(i, |stage| stage.flush()) {
            let stage = &self.slots[i].stage;
            tracing::error!(stage = %stage.name, kind = %error.kind(), message = %error.message(), "flush failed");
            stage.stats.record_error(&error);
        }
    }

    /// The drain timeout ended: what is queued, waiting between stages or waiting for a
    /// retry will not be handled. The input is drained to its end (upstream workers are
    /// stopping too), so that no producer waits on it for ever.
    fn abandon(&mut self) {
        for slot in &mut self.slots {
            slot.delayed.extend(slot.retries.try_iter());
            for retry in slot.delayed.drain(..) {
                for r in retry.records.iter() {
                    retry.lineage.failed(r.id(), DRAIN_TIMEOUT);
                }
            }
            for envelope in slot.waiting.drain(..) {
                envelope.fail_all(DRAIN_TIMEOUT);
            }
        }
        if self.input_open {
            while let Some(queued) = self.input.blocking_recv() {
                queued.fail_all(DRAIN_TIMEOUT);
            }
        }
    }

    /// Takes a batch from the input: records, or messages to decode first (see
    /// `source::Messages`), and hands it to every root.
    fn take(&mut self, queued: Queued) {
        let envelope = match queued {
            Queued::Records(envelope) => envelope,
            Queued::Messages(messages) => messages.decode(),
        };
        // Every message failed to decode: each is counted, no stage has anything to do.
        if envelope.records.is_empty() {
            return;
        }
        // Every root is ready, with nothing waiting: the input is taken only then. In
        // reverse, so that the first root is called first.
        let shares = envelope.fan_out(self.roots.len());
        let todo = self.roots.iter().copied().zip(shares).rev().collect();
        self.call_all(todo);
    }

    /// Calls stage `i` with an envelope, then each stage of this worker that takes its
    /// output, and so on.
    fn handle(&mut self, i: usize, envelope: Envelope) {
        self.call_all(vec![(i, envelope)]);
    }

    /// Calls each stage in `todo` with its envelope, and the stages of this worker that take
    /// their output after them, depth first.
    fn call_all(&mut self, mut todo: Vec<(usize, Envelope)>) {
        while let Some((i, envelope)) = todo.pop() {
            if let Some(output) = self.process(i, envelope) {
                self.pass_on(i, output, &mut todo);
            }
        }
    }

    /// Shares the output of stage `i` among its queues to other workers (sent as they come)
    /// and its consumers on this worker: a consumer that is not ready (or has batches
    /// waiting before this one) keeps its share waiting; the others go on `todo`, to be
    /// called first to last.
    fn pass_on(&mut self, i: usize, output: Envelope, todo: &mut Vec<(usize, Envelope)>) {
        let stage = &self.slots[i].stage;
        let mut shares = output
            .fan_out(stage.outputs.len() + stage.consumers.len())
            .into_iter();
        for tx in &stage.outputs {
            let share = shares.next().expect("one share per output");
            if let Err(mpsc::error::SendError(lost)) = tx.blocking_send(share.into()) {
                lost.fail_all("pipeline_closed");
            }
        }
        // In reverse, so that the first consumer is called first.
        for k in (0..self.slots[i].stage.consumers.len()).rev() {
            let share = shares.next_back().expect("one share per consumer");
            let c = self.slots[i].stage.consumers[k];
            if !self.slots[c].waiting.is_empty() || !self.ready(c) {
                self.slots[c].waiting.push_back(share);
            } else {
                todo.push((c, share));
            }
        }
    }

    /// One call of stage `i` with an envelope's records. Returns the output, if it has any
    /// and anything takes it.
    fn process(&mut self, i: usize, envelope: Envelope) -> Option<Envelope> {
        let Envelope {
            records,
            lineage,
            facts,
        } = envelope;
        // A root never has batches waiting: it takes its batches from the input queue.
        let queued = match self.slots[i].parent {
            None => self.input.len(),
            Some(_) => self.slots[i].waiting.len(),
        };
        let (observed, type_field) = (self.observed, &self.type_field);
        let slot = &mut self.slots[i];
        let has_outputs = !(slot.stage.consumers.is_empty() && slot.stage.outputs.is_empty());
        let _span = slot.span.enter();
        let this = &mut slot.stage;
        // What is still queued behind this batch: a stage that keeps a deep queue is the
        // pipeline's bottleneck.
        this.coordinator
            .record_metric("input_queue_batches", queued as f64);
        let records_in = records.len();
        // Kept for a call that fails as a whole: by then the stage may have taken the
        // records. Worked out once for every branch the batch went to, like the types.
        let ids = facts.ids(&records);
        if observed {
            this.stats
                .record_types(facts.types(|| type_tally(&records, type_field)));
        }
        let ack = HostAck {
            lineage: lineage.clone(),
            acks: slot.acks.clone(),
            received_ns: records.first().map_or(0, Record::received_at_ns),
        };
        // The records are looked at only for a traced (sampled) call.
        let phase = this.coordinator.start_phase(&records);
        let mut batch = Batch::with_ack(records, FfiAck_TO::from_ptr(RArc::new(ack), TD_Opaque));
        let stage = &mut this.stage;
        let result = this.probe.call(|| stage.process(&mut batch));
        let (output, failures) = batch.into_output();
        let records_out = match &output {
            BatchOutput::Unchanged(records) => records.len(),
            BatchOutput::Changed(records) => records.len(),
        };
        match result {
            ROk(()) => {
                for f in failures.iter() {
                    lineage.failed(f.id(), f.error().kind());
                }
                let outcome = CallOutcome::Success {
                    records_in,
                    records_out,
                    failures: &failures,
                };
                this.coordinator.end_phase(phase, &outcome);
            }
            RErr(error) => {
                // The whole batch failed; whatever the stage left in it is suspect.
                for id in ids {
                    lineage.failed(*id, error.kind());
                }
                let outcome = CallOutcome::Error {
                    records_in,
                    error: &error,
                };
                this.coordinator.end_phase(phase, &outcome);
                if error.kind() == "panic" {
                    tracing::warn!(stage = %this.name, message = %error.message(), "stage panicked; its batch counts as failed");
                } else {
                    tracing::debug!(stage = %this.name, kind = %error.kind(), message = %error.message(), "stage call failed");
                }
                return None;
            }
        }
        // A batch the stage did not change goes on as it came, with what is known about it.
        let envelope = match output {
            BatchOutput::Unchanged(records) => Envelope {
                records,
                lineage,
                facts,
            },
            BatchOutput::Changed(records) => Envelope::new(records, lineage),
        };
        if slot.delivers {
            let (records, facts) = (&envelope.records, &envelope.facts);
            envelope
                .lineage
                .deliver_all(facts.ids(records).iter().copied());
            if observed {
                this.stats
                    .record_delivered(facts.received(records), unix_ns());
            }
        }
        (!envelope.records.is_empty() && has_outputs).then_some(envelope)
    }
}
