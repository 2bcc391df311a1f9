//! One stage's worker: takes batches from its queue, calls the stage, settles what the stage
//! decided, and passes the rest on. Runs on its own thread: stage calls are synchronous and
//! may block (an exporter writing a file) without stalling the async runtime. The worker owns
//! its stage: nothing else calls it, so no lock is taken per batch, and health checks are
//! answered by the worker between calls (see [`StageProbe`]).
//!
//! A stage may take records for later (acknowledged delivery). The worker hands each call an
//! acknowledgement handle ([`HostAck`]) that settles them from any thread, and takes back
//! records the stage hands back to be retried. After its input ends, the worker flushes the
//! stage and stays until everything the stage took is settled (or the drain timeout ends),
//! so that a retry can still be called and its output still flows downstream.

use std::{
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
use tokio::sync::{mpsc, watch, Notify};

use super::probe::StageProbe;
use crate::{
    accounting::{Envelope, Lineage, DRAIN_TIMEOUT},
    clock::unix_ns,
    coordinator::Coordinator,
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
    retries: std_mpsc::Sender<Retry>,
    /// Wakes the worker: a retry arrived, or everything taken has been settled.
    wake: Notify,
}

/// The host's side of one call's deferrals (see `plugin_api::FfiAck`).
#[derive(Clone)]
struct HostAck {
    lineage: Arc<Lineage>,
    acks: Arc<StageAcks>,
}

impl HostAck {
    fn settled(&self, n: usize) {
        // Release: a worker that sees the count fall also sees a retry sent before it.
        let left = self.acks.outstanding.fetch_sub(n as i64, AcqRel) - n as i64;
        if left <= 0 {
            self.acks.wake.notify_one();
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
        if let Some(stats) = &self.acks.stats {
            stats.record_delivered_later(ids.len() as u64);
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
        self.acks.wake.notify_one();
    }
}

pub struct Worker {
    pub name: String,
    pub kind: StageKind,
    pub stage: StageBox,
    /// In-call marks and health answers, shared with the health check.
    pub probe: Arc<StageProbe>,
    /// Observes (and traces) the calls.
    pub coordinator: Coordinator,
    pub stats: Arc<StageStats>,
    /// The field whose values are counted per stage (`monitoring.type_field`).
    pub type_field: Arc<str>,
    pub input: mpsc::Receiver<Envelope>,
    pub outputs: Vec<mpsc::Sender<Envelope>>,
    /// Turns true when the drain timeout ends: stop, failing what is still queued.
    pub finish: watch::Receiver<bool>,
    /// For timers while the worker waits.
    pub runtime: tokio::runtime::Handle,
}

/// How soon a stage that was not ready for a batch is asked again.
const READY_POLL: Duration = Duration::from_millis(2);

/// What wakes a waiting worker.
enum Wake {
    Batch(Envelope),
    InputClosed,
    Health,
    Acks,
    Timer,
    Finish,
}

/// What a worker needs besides its stage, built once at its start.
struct Running {
    acks: Arc<StageAcks>,
    retries: std_mpsc::Receiver<Retry>,
    delayed: Vec<Retry>,
    next_tick: Option<Instant>,
    /// Exporters deliver what they keep; so does any stage nobody reads from.
    delivers: bool,
    /// Data types and ingest-to-delivery latency are observation too: none when disabled.
    observed: bool,
}

impl Worker {
    /// Runs until the input has ended and everything the stage took for later is settled,
    /// or until the drain timeout ends.
    pub fn run(mut self) {
        // For the thread's whole life: whatever is logged here, by the host or the plugin,
        // names the stage (see `logging`).
        let _span = crate::logging::stage_span(&self.name).entered();
        self.probe.bind_thread();
        let observed = self.coordinator.is_enabled();
        let (retry_tx, retry_rx) = std_mpsc::channel();
        let mut run = Running {
            acks: Arc::new(StageAcks {
                outstanding: AtomicI64::new(0),
                stats: observed.then(|| self.stats.clone()),
                retries: retry_tx,
                wake: Notify::new(),
            }),
            retries: retry_rx,
            delayed: Vec::new(),
            next_tick: None,
            delivers: self.kind == StageKind::Exporter || self.outputs.is_empty(),
            observed,
        };
        self.tick(&mut run);
        let mut input_open = true;
        let mut flushed = false;
        loop {
            if *self.finish.borrow() {
                self.abandon(&mut run, input_open);
                break;
            }
            if self.probe.take_request() {
                self.answer_health();
                continue;
            }
            run.delayed.extend(run.retries.try_iter());
            let now = Instant::now();
            // A stage that cannot take a batch now (its own buffer is full) is asked again
            // shortly; meanwhile batches wait in its queue and the pipeline slows down.
            let ready = self.ready();
            let due = run
                .delayed
                .iter()
                .enumerate()
                .filter(|(_, r)| r.due <= now)
                .min_by_key(|(_, r)| r.due)
                .map(|(i, _)| i);
            if let (true, Some(i)) = (ready, due) {
                // In the order they came due: records handed back keep their order.
                let Retry {
                    records, lineage, ..
                } = run.delayed.remove(i);
                let ids: Vec<u64> = records.iter().map(Record::id).collect();
                self.handle(&mut run, Envelope::new(records, lineage.clone()));
                // Pending until now, so that no drain timeout could find them neither held
                // nor delivered; the call has settled them or taken them again.
                for id in ids {
                    lineage.undeferred(id);
                }
                continue;
            }
            if run.next_tick.is_some_and(|t| t <= now) {
                self.tick(&mut run);
                continue;
            }
            if input_open && ready {
                match self.input.try_recv() {
                    Ok(envelope) => {
                        self.handle(&mut run, envelope);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => input_open = false,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            if !input_open {
                if !flushed {
                    self.flush();
                    flushed = true;
                    continue;
                }
                // Read before looking for retries again: a stage hands records back before
                // they count as settled, so none can slip between the two.
                let outstanding = run.acks.outstanding.load(Acquire);
                run.delayed.extend(run.retries.try_iter());
                if outstanding <= 0 && run.delayed.is_empty() {
                    break;
                }
            }
            match self.wait(&run, input_open, ready) {
                Wake::Batch(envelope) => self.handle(&mut run, envelope),
                Wake::InputClosed => input_open = false,
                Wake::Health => self.answer_health(),
                Wake::Acks | Wake::Timer => {}
                Wake::Finish => {
                    self.abandon(&mut run, input_open);
                    break;
                }
            }
        }
        tracing::debug!(stage = %self.name, "stage drained");
    }

    /// Waits for the next thing to do: a batch (when the stage is ready for one), a health
    /// request, a settlement or retry, the next tick or retry coming due, the time to ask a
    /// stage that was not ready again, or the end of the drain timeout.
    fn wait(&mut self, run: &Running, input_open: bool, ready: bool) -> Wake {
        let ask_again = (!ready).then(|| Instant::now() + READY_POLL);
        let due = run
            .delayed
            .iter()
            .map(|r| r.due)
            .chain(run.next_tick)
            .chain(ask_again)
            .min()
            .map(tokio::time::Instant::from_std);
        let input_open = input_open && ready;
        let (input, probe, acks, finish) =
            (&mut self.input, &self.probe, &run.acks, &mut self.finish);
        self.runtime.block_on(async {
            tokio::select! {
                biased;
                changed = finish.changed() => match changed {
                    Ok(()) if !*finish.borrow() => Wake::Timer,
                    _ => Wake::Finish,
                },
                () = probe.requested() => Wake::Health,
                envelope = input.recv(), if input_open => match envelope {
                    Some(envelope) => Wake::Batch(envelope),
                    None => Wake::InputClosed,
                },
                () = acks.wake.notified() => Wake::Acks,
                () = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => Wake::Timer,
            }
        })
    }

    fn ready(&mut self) -> bool {
        let stage = &mut self.stage;
        self.probe.call(|| stage.ready())
    }

    fn answer_health(&mut self) {
        let stage = &mut self.stage;
        let report = self.probe.call(|| stage.health());
        self.probe.answer(report);
    }

    fn tick(&mut self, run: &mut Running) {
        let stage = &mut self.stage;
        let next_ms = self.probe.call(|| stage.tick());
        run.next_tick = (next_ms > 0).then(|| Instant::now() + Duration::from_millis(next_ms));
    }

    fn flush(&mut self) {
        let stage = &mut self.stage;
        if let RErr(error) = self.probe.call(|| stage.flush()) {
            tracing::error!(stage = %self.name, kind = %error.kind(), message = %error.message(), "flush failed");
            self.stats.record_error(&error);
        }
    }

    /// The drain timeout ended: what is queued or waiting for a retry will not be handled.
    /// The input is drained to its end (upstream workers are stopping too), so that no
    /// producer waits on it for ever.
    fn abandon(&mut self, run: &mut Running, input_open: bool) {
        run.delayed.extend(run.retries.try_iter());
        for retry in run.delayed.drain(..) {
            for r in retry.records.iter() {
                retry.lineage.failed(r.id(), DRAIN_TIMEOUT);
            }
        }
        if input_open {
            while let Some(envelope) = self.input.blocking_recv() {
                envelope.fail_all(DRAIN_TIMEOUT);
            }
        }
    }

    /// One call of the stage with an envelope's records.
    fn handle(&mut self, run: &mut Running, envelope: Envelope) {
        let Envelope {
            records,
            lineage,
            facts,
        } = envelope;
        // What is still queued behind this batch: a stage that keeps a deep queue is the
        // pipeline's bottleneck.
        self.coordinator
            .record_metric("input_queue_batches", self.input.len() as f64);
        let records_in = records.len();
        // Kept for a call that fails as a whole: by then the stage may have taken the
        // records. Worked out once for every branch the batch went to, like the types.
        let ids = facts.ids(&records);
        if run.observed {
            let field = &self.type_field;
            self.stats
                .record_types(facts.types(|| type_tally(&records, field)));
        }
        let ack = HostAck {
            lineage: lineage.clone(),
            acks: run.acks.clone(),
        };
        // The records are looked at only for a traced (sampled) call.
        let phase = self.coordinator.start_phase(&records);
        let mut batch = Batch::with_ack(records, FfiAck_TO::from_ptr(RArc::new(ack), TD_Opaque));
        let stage = &mut self.stage;
        let result = self.probe.call(|| stage.process(&mut batch));
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
                self.coordinator.end_phase(phase, &outcome);
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
                self.coordinator.end_phase(phase, &outcome);
                if error.kind() == "panic" {
                    tracing::warn!(stage = %self.name, message = %error.message(), "stage panicked; its batch counts as failed");
                } else {
                    tracing::debug!(stage = %self.name, kind = %error.kind(), message = %error.message(), "stage call failed");
                }
                return;
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
        if run.delivers {
            let (records, facts) = (&envelope.records, &envelope.facts);
            envelope
                .lineage
                .deliver_all(facts.ids(records).iter().copied());
            if run.observed {
                self.stats
                    .record_delivered(facts.received(records), unix_ns());
            }
        }
        if envelope.records.is_empty() || self.outputs.is_empty() {
            return;
        }
        for (tx, envelope) in self
            .outputs
            .iter()
            .zip(envelope.fan_out(self.outputs.len()))
        {
            if let Err(mpsc::error::SendError(lost)) = tx.blocking_send(envelope) {
                lost.fail_all("pipeline_closed");
            }
        }
    }
}
