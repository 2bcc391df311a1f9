//! The ZeroMQ source: a PULL or SUB socket, bound or connected, read by the host's own ZMTP
//! receive side ([`super::zmtp`]). Each connection decodes its messages straight from its
//! read buffer and sends them on in batches of whatever is ready (never waiting to fill a
//! batch).

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    Arc,
};

use abi_stable::std_types::{RArc, RVec};
use plugin_api::Record;
use tokio::sync::{mpsc, watch};

use super::{
    decode,
    zmtp::{self, ConnectionStats, Endpoint, EndpointError, Limits, Listener, Role, Sink},
    DecodeError,
};
use crate::{
    accounting::{Envelope, Facts, PipelineCounters, DRAIN_TIMEOUT},
    config::{Decode, SocketKind, SourceConfig},
};

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source `{source_name}`")]
    Endpoint {
        source_name: String,
        #[source]
        source: EndpointError,
    },
}

enum Socket {
    Bound(Listener),
    Connecting(Endpoint),
}

/// A source whose socket is open (bound, or about to connect), ready to run.
pub struct ZmqSource {
    name: Arc<str>,
    config: SourceConfig,
    socket: Socket,
    /// The endpoint as bound (with the port resolved) or connected to.
    pub endpoint: String,
    /// True while the source reads: its socket is bound, or connected to its peer.
    pub up: Arc<AtomicBool>,
    pub stats: Arc<ConnectionStats>,
}

impl ZmqSource {
    /// Binds the socket, or checks the endpoint it will connect to.
    pub async fn open(name: &str, config: &SourceConfig) -> Result<ZmqSource, SourceError> {
        let (text, bind) = config.endpoint();
        let err = |source| SourceError::Endpoint {
            source_name: name.to_owned(),
            source,
        };
        let endpoint = Endpoint::parse(text).map_err(err)?;
        let (socket, resolved, up) = if bind {
            let listener = Listener::bind(&endpoint, text).await.map_err(err)?;
            let resolved = listener.endpoint();
            (Socket::Bound(listener), resolved, true)
        } else {
            (Socket::Connecting(endpoint), text.to_owned(), false)
        };
        tracing::info!(source = name, endpoint = %resolved, bind, "source listening");
        Ok(ZmqSource {
            name: name.into(),
            config: config.clone(),
            socket,
            endpoint: resolved,
            up: Arc::new(AtomicBool::new(up)),
            stats: Arc::default(),
        })
    }

    /// Reads until `stop` turns true, then sends what it has and returns. Dropping the
    /// output senders on return is what lets the stages drain and finish.
    ///
    /// `give_up` turns true when a shutdown's drain timeout ends: a batch still waiting then
    /// (for room in flight, or in a queue) fails as `drain_timeout` instead of waiting on.
    pub async fn run(
        self,
        outputs: Vec<mpsc::Sender<Envelope>>,
        counters: Arc<PipelineCounters>,
        next_id: Arc<AtomicU64>,
        stop: watch::Receiver<bool>,
        give_up: watch::Receiver<bool>,
    ) {
        let cfg = &self.config;
        let role = match cfg.socket {
            SocketKind::Pull => Role::Pull,
            SocketKind::Sub => Role::Sub {
                topics: if cfg.topics.is_empty() {
                    vec![Vec::new()]
                } else {
                    cfg.topics.iter().map(|t| t.as_bytes().to_vec()).collect()
                },
            },
        };
        let limits = Limits {
            max_message_bytes: cfg.max_message_bytes,
            max_connections: cfg.max_connections,
            handshake_timeout: cfg.handshake_timeout,
        };
        let outputs: Arc<[mpsc::Sender<Envelope>]> = outputs.into();
        let make_sink = || BatchSink {
            decode: cfg.decode,
            max_bytes: cfg.max_message_bytes,
            batch_size: cfg.batch_size,
            batch: RVec::new(),
            outputs: outputs.clone(),
            counters: counters.clone(),
            next_id: next_id.clone(),
            give_up: give_up.clone(),
        };
        match self.socket {
            Socket::Bound(listener) => {
                zmtp::run_bound(
                    self.name.clone(),
                    listener,
                    role,
                    limits,
                    self.stats.clone(),
                    make_sink,
                    stop,
                )
                .await
            }
            Socket::Connecting(endpoint) => {
                zmtp::run_connected(
                    self.name.clone(),
                    endpoint,
                    role,
                    limits,
                    self.stats.clone(),
                    make_sink(),
                    self.up.clone(),
                    stop,
                )
                .await
            }
        }
        self.up.store(false, Relaxed);
        tracing::info!(source = %self.name, "source stopped reading");
    }
}

/// One connection's messages, decoded into a batch for the stages.
struct BatchSink {
    decode: Decode,
    max_bytes: usize,
    batch_size: usize,
    batch: RVec<Record>,
    outputs: Arc<[mpsc::Sender<Envelope>]>,
    counters: Arc<PipelineCounters>,
    next_id: Arc<AtomicU64>,
    give_up: watch::Receiver<bool>,
}

impl Sink for BatchSink {
    fn message(&mut self, _first: &[u8], payload: &[u8], received_at_ns: u64) {
        if self.batch.capacity() == 0 {
            self.batch.reserve(self.batch_size.min(64));
        }
        match decode(payload, self.decode, self.max_bytes) {
            Ok(mut record) => {
                // The id is set when the batch is admitted.
                record.set_origin(0, payload.len() as u64, received_at_ns);
                self.batch.push(record);
            }
            Err(e) => self.counters.reject(e.error_type(), 1),
        }
    }

    fn too_large(&mut self) {
        self.counters.reject(DecodeError::TooLarge.error_type(), 1);
    }

    fn full(&self) -> bool {
        self.batch.len() >= self.batch_size
    }

    async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.batch);
        send_batch(
            records,
            &self.outputs,
            &self.counters,
            &self.next_id,
            &mut self.give_up,
        )
        .await;
    }
}

/// Admits a batch (ids, lineage; waiting while the pipeline holds `runtime.max_in_flight`
/// messages) and sends it to every consumer. If `give_up` turns true first (the end of a
/// shutdown's drain timeout), the batch fails as `drain_timeout`: received and counted, not
/// lost.
pub async fn send_batch(
    mut records: RVec<Record>,
    outputs: &[mpsc::Sender<Envelope>],
    counters: &Arc<PipelineCounters>,
    next_id: &AtomicU64,
    give_up: &mut watch::Receiver<bool>,
) {
    let first_id = next_id.fetch_add(records.len() as u64, Relaxed);
    // What every consumer would otherwise read off each record: ids and receive times.
    let mut received: Vec<(u64, u64)> = Vec::new();
    for (i, r) in records.iter_mut().enumerate() {
        let (size, at) = (r.size_bytes(), r.received_at_ns());
        r.set_origin(first_id + i as u64, size, at);
        match received.last_mut() {
            Some((t, n)) if *t == at => *n += 1,
            _ => received.push((at, 1)),
        }
    }
    let facts = Facts::known(
        (first_id..first_id + records.len() as u64).collect(),
        received.into(),
    );
    let lineage = tokio::select! {
        lineage = counters.admit(first_id, records.len()) => lineage,
        () = gave_up(give_up) => {
            counters.reject(DRAIN_TIMEOUT, records.len() as u64);
            return;
        }
    };
    // A source nobody reads delivers its messages nowhere: they settle as filtered.
    let envelope = Envelope {
        records: RArc::new(records),
        lineage,
        facts: Arc::new(facts),
    };
    let envelopes = envelope.fan_out(outputs.len());
    for (tx, envelope) in outputs.iter().zip(envelopes) {
        let sent = tokio::select! {
            sent = tx.reserve() => sent,
            () = gave_up(give_up) => {
                envelope.fail_all(DRAIN_TIMEOUT);
                continue;
            }
        };
        match sent {
            Ok(permit) => permit.send(envelope),
            Err(_) => envelope.fail_all("pipeline_closed"),
        }
    }
}

/// Resolves when `give_up` turns true; never, if its sender is gone without it.
async fn gave_up(give_up: &mut watch::Receiver<bool>) {
    if give_up.wait_for(|g| *g).await.is_err() {
        std::future::pending::<()>().await;
    }
}
