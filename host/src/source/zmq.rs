//! The ZeroMQ source: a PULL or SUB socket, bound or connected, whose messages are decoded
//! and sent on in batches of whatever is ready (never waiting to fill a batch).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use abi_stable::std_types::RVec;
use futures::FutureExt;
use plugin_api::Record;
use tokio::sync::{mpsc, watch};
use zeromq::{Socket, SocketRecv, ZmqError, ZmqMessage, ZmqResult};

use super::decode;
use crate::{
    accounting::{Envelope, Lineage, PipelineCounters},
    config::{SocketKind, SourceConfig},
};

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source `{source_name}`: cannot {action} {endpoint}")]
    Socket {
        source_name: String,
        action: &'static str,
        endpoint: String,
        #[source]
        source: ZmqError,
    },
}

enum ZmqSocket {
    Pull(zeromq::PullSocket),
    Sub(zeromq::SubSocket),
}

impl ZmqSocket {
    async fn recv(&mut self) -> ZmqResult<ZmqMessage> {
        match self {
            ZmqSocket::Pull(s) => s.recv().await,
            ZmqSocket::Sub(s) => s.recv().await,
        }
    }
}

/// A source whose socket is open, ready to run.
pub struct ZmqSource {
    name: String,
    config: SourceConfig,
    socket: ZmqSocket,
    /// The endpoint as bound (with the port resolved) or connected.
    pub endpoint: String,
    /// True while the socket is open and the source reads it.
    pub up: Arc<AtomicBool>,
}

impl ZmqSource {
    /// Opens the socket: subscribes, then binds or connects.
    pub async fn open(name: &str, config: &SourceConfig) -> Result<ZmqSource, SourceError> {
        let (endpoint, bind) = config.endpoint();
        let err = |action, source| SourceError::Socket {
            source_name: name.to_owned(),
            action,
            endpoint: endpoint.to_owned(),
            source,
        };
        let mut socket = match config.socket {
            SocketKind::Pull => ZmqSocket::Pull(zeromq::PullSocket::new()),
            SocketKind::Sub => {
                let mut s = zeromq::SubSocket::new();
                let topics = if config.topics.is_empty() {
                    vec![String::new()]
                } else {
                    config.topics.clone()
                };
                for topic in &topics {
                    s.subscribe(topic)
                        .await
                        .map_err(|e| err("subscribe on", e))?;
                }
                ZmqSocket::Sub(s)
            }
        };
        let resolved = if bind {
            let bound = match &mut socket {
                ZmqSocket::Pull(s) => s.bind(endpoint).await,
                ZmqSocket::Sub(s) => s.bind(endpoint).await,
            };
            bound.map_err(|e| err("bind", e))?.to_string()
        } else {
            let connected = match &mut socket {
                ZmqSocket::Pull(s) => s.connect(endpoint).await,
                ZmqSocket::Sub(s) => s.connect(endpoint).await,
            };
            connected.map_err(|e| err("connect to", e))?;
            endpoint.to_owned()
        };
        tracing::info!(source = name, endpoint = %resolved, bind, "source listening");
        Ok(ZmqSource {
            name: name.to_owned(),
            config: config.clone(),
            socket,
            endpoint: resolved,
            up: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Reads until `stop` turns true, then sends what it has and returns. Dropping the
    /// output senders on return is what lets the stages drain and finish.
    pub async fn run(
        mut self,
        outputs: Vec<mpsc::Sender<Envelope>>,
        counters: Arc<PipelineCounters>,
        next_id: Arc<AtomicU64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let batch_size = self.config.batch_size;
        let mut batch: RVec<Record> = RVec::with_capacity(batch_size);
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.changed() => break,
                m = self.socket.recv() => m,
            };
            let now_ns = crate::clock::unix_ns();
            if !self.accept(first, &mut batch, &counters, now_ns) {
                // A receive error (a peer went away): nothing to read right now.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Take whatever else is ready without waiting: batches form under load and
            // stay small (low latency) when traffic is light. `recv` is cancel-safe.
            while batch.len() < batch_size {
                match self.socket.recv().now_or_never() {
                    Some(m) => {
                        if !self.accept(m, &mut batch, &counters, now_ns) {
                            break;
                        }
                    }
                    None => break,
                }
            }
            if !batch.is_empty() {
                let full = std::mem::replace(&mut batch, RVec::with_capacity(batch_size));
                send_batch(full, &outputs, &counters, &next_id).await;
            }
        }
        self.up.store(false, Relaxed);
        tracing::info!(source = %self.name, "source stopped reading");
    }

    /// Decodes one received message into `batch`; false when the receive itself failed.
    fn accept(
        &self,
        message: ZmqResult<ZmqMessage>,
        batch: &mut RVec<Record>,
        counters: &PipelineCounters,
        now_ns: u64,
    ) -> bool {
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(source = %self.name, error = %e, "receive error");
                return false;
            }
        };
        // Multipart messages (a topic frame, then the payload) carry the payload last.
        let Some(payload) = message.get(message.len().saturating_sub(1)) else {
            counters.reject("empty_message", 1);
            return true;
        };
        match decode(payload, self.config.decode, self.config.max_message_bytes) {
            Ok(mut record) => {
                record.meta.size_bytes = payload.len() as u64;
                record.meta.received_at_ns = now_ns;
                batch.push(record);
            }
            Err(e) => counters.reject(e.error_type(), 1),
        }
        true
    }
}

/// Admits a batch (ids, lineage) and sends it to every consumer.
pub async fn send_batch(
    mut records: RVec<Record>,
    outputs: &[mpsc::Sender<Envelope>],
    counters: &Arc<PipelineCounters>,
    next_id: &AtomicU64,
) {
    let first_id = next_id.fetch_add(records.len() as u64, Relaxed);
    for (i, r) in records.iter_mut().enumerate() {
        r.meta.id = first_id + i as u64;
    }
    let lineage = Lineage::admit(first_id, records.len(), counters.clone());
    // A source nobody reads delivers its messages nowhere: they settle as filtered.
    let envelopes = Envelope { records, lineage }.fan_out(outputs.len());
    for (tx, envelope) in outputs.iter().zip(envelopes) {
        if let Err(mpsc::error::SendError(lost)) = tx.send(envelope).await {
            lost.fail_all("pipeline_closed");
        }
    }
}
