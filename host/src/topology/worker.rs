//! One stage's worker: takes batches from its queue, calls the stage, settles what the stage
//! decided, and passes the rest on. Runs on its own thread: stage calls are synchronous and
//! may block (an exporter writing a file) without stalling the async runtime. The worker owns
//! its stage: nothing else calls it, so no lock is taken per batch, and health checks are
//! answered by the worker between calls (see [`StageProbe`]).

use std::sync::Arc;

use abi_stable::std_types::{RErr, ROk};
use plugin_api::{Batch, StageBox, StageKind};
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::probe::StageProbe;
use crate::{
    accounting::Envelope,
    clock::unix_ns,
    coordinator::Coordinator,
    monitor::{CallOutcome, StageStats},
};

pub struct Worker {
    pub name: String,
    pub kind: StageKind,
    pub stage: StageBox,
    /// In-call marks and health answers, shared with the health check.
    pub probe: Arc<StageProbe>,
    pub coordinator: Coordinator,
    pub stats: Arc<StageStats>,
    /// The field whose values are counted per stage (`monitoring.type_field`).
    pub type_field: Arc<str>,
    pub input: mpsc::Receiver<Envelope>,
    pub outputs: Vec<mpsc::Sender<Envelope>>,
}

/// What wakes the worker.
enum Next {
    Batch(Envelope),
    Health,
    Closed,
}

impl Worker {
    /// The next thing to do: a health answer when one is wanted, else the next batch (waiting
    /// for either when there is none).
    fn next(&mut self) -> Next {
        if self.probe.take_request() {
            return Next::Health;
        }
        match self.input.try_recv() {
            Ok(envelope) => return Next::Batch(envelope),
            Err(TryRecvError::Disconnected) => return Next::Closed,
            Err(TryRecvError::Empty) => {}
        }
        let (input, probe) = (&mut self.input, &self.probe);
        futures::executor::block_on(async {
            tokio::select! {
                biased;
                envelope = input.recv() => envelope.map_or(Next::Closed, Next::Batch),
                () = probe.requested() => Next::Health,
            }
        })
    }

    fn answer_health(&mut self) {
        let stage = &mut self.stage;
        let report = self.probe.call(|| stage.health());
        self.probe.answer(report);
    }

    /// Runs until every producer of the input queue is gone, then flushes the stage.
    pub fn run(mut self) {
        self.probe.bind_thread();
        // Exporters deliver what they keep; so does any stage nobody reads from.
        let delivers = self.kind == StageKind::Exporter || self.outputs.is_empty();
        // Data types and ingest-to-delivery latency are observation too: none when disabled.
        let observed = self.coordinator.is_enabled();
        let mut ids: Vec<u64> = Vec::with_capacity(1024);
        loop {
            let Envelope { records, lineage } = match self.next() {
                Next::Batch(envelope) => envelope,
                Next::Health => {
                    self.answer_health();
                    continue;
                }
                Next::Closed => break,
            };
            // What is still queued behind this batch: a stage that keeps a deep queue is the
            // pipeline's bottleneck.
            self.coordinator
                .record_metric("input_queue_batches", self.input.len() as f64);
            let records_in = records.len();
            ids.clear();
            ids.extend(records.iter().map(|r| r.meta.id));
            if observed {
                self.stats.record_types(&records, &self.type_field);
            }
            let mut batch = Batch::new(records);
            let phase = self.coordinator.start_phase();
            let stage = &mut self.stage;
            let result = self.probe.call(|| stage.process(&mut batch));
            let (records, failures) = batch.into_parts();
            match result {
                ROk(()) => {
                    for f in failures.iter() {
                        lineage.failed(f.id, &f.error.kind);
                    }
                    self.coordinator.end_phase(
                        phase,
                        &CallOutcome::Success {
                            records_in,
                            records_out: records.len(),
                            failures: &failures,
                        },
                    );
                }
                RErr(error) => {
                    // The whole batch failed; whatever the stage left in it is suspect.
                    for id in &ids {
                        lineage.failed(*id, &error.kind);
                    }
                    self.coordinator.end_phase(
                        phase,
                        &CallOutcome::Error {
                            records_in,
                            error: &error,
                        },
                    );
                    if error.kind == "panic" {
                        tracing::warn!(stage = %self.name, message = %error.message, "stage panicked; its batch counts as failed");
                    } else {
                        tracing::debug!(stage = %self.name, kind = %error.kind, message = %error.message, "stage call failed");
                    }
                    continue;
                }
            }
            if delivers {
                lineage.deliver_all(&records);
                if observed {
                    self.stats.record_delivered(&records, unix_ns());
                }
            }
            if records.is_empty() {
                continue;
            }
            let envelopes = Envelope { records, lineage }.fan_out(self.outputs.len());
            for (tx, envelope) in self.outputs.iter().zip(envelopes) {
                if let Err(mpsc::error::SendError(lost)) = tx.blocking_send(envelope) {
                    lost.fail_all("pipeline_closed");
                }
            }
        }
        let stage = &mut self.stage;
        if let RErr(error) = self.probe.call(|| stage.flush()) {
            tracing::error!(stage = %self.name, kind = %error.kind, message = %error.message, "flush failed");
            self.stats.record_error(&error);
        }
        tracing::debug!(stage = %self.name, "stage drained");
    }
}
