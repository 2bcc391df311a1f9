//! The ZeroMQ source: a PULL or SUB socket, bound or connected, read by the host's own ZMTP
//! receive side ([`super::zmtp`]). Each connection gathers its messages (as they came, for a
//! source whose stages share one thread, which decodes them; decoded, for one that feeds
//! several) and sends them on in batches of whatever is ready, waiting to fill a batch only
//! as long as the source's `max_delay` (0 by default).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use abi_stable::std_types::{RArc, RVec};
use plugin_api::Record;
use tokio::sync::{mpsc, watch};

use super::{
    decode,
    zmtp::{self, ConnectionStats, Endpoint, EndpointError, Limits, Listener, Role, Sink},
    DecodeError, MessageBuffer, BATCH_BYTES,
};
use crate::{
    accounting::{add_to_runs, Envelope, Facts, Lineage, PipelineCounters, Queued, DRAIN_TIMEOUT},
    clock::unix_ns,
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
        outputs: Vec<mpsc::Sender<Queued>>,
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
        let outputs: Arc<[mpsc::Sender<Queued>]> = outputs.into();
        let make_sink = || BatchSink {
            decode: cfg.decode,
            max_bytes: cfg.max_message_bytes,
            batch_size: cfg.batch_size,
            max_delay_ns: u64::try_from(cfg.max_delay.as_nanos()).unwrap_or(u64::MAX),
            first_at_ns: 0,
            // One consumer decodes what it takes; several share what the source decoded.
            decode_here: outputs.len() != 1,
            batch: RVec::new(),
            batch_bytes: 0,
            buffer: MessageBuffer::default(),
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

/// One connection's messages, gathered into a batch for the stages: decoded into records for
/// a fan-out, as they came (in one buffer) for a single consumer, which decodes them.
struct BatchSink {
    decode: Decode,
    max_bytes: usize,
    batch_size: usize,
    /// The source's `max_delay`, and when the first message of what is collected came (0:
    /// nothing collected).
    max_delay_ns: u64,
    first_at_ns: u64,
    decode_here: bool,
    batch: RVec<Record>,
    /// The payload bytes of `batch`'s messages.
    batch_bytes: usize,
    buffer: MessageBuffer,
    outputs: Arc<[mpsc::Sender<Queued>]>,
    counters: Arc<PipelineCounters>,
    next_id: Arc<AtomicU64>,
    give_up: watch::Receiver<bool>,
}

impl Sink for BatchSink {
    fn message(&mut self, _first: &[u8], payload: &[u8], received_at_ns: u64) {
        if self.first_at_ns == 0 {
            self.first_at_ns = received_at_ns;
        }
        if !self.decode_here {
            if self.buffer.is_empty() {
                self.buffer.reserve_like(payload, self.batch_size.min(64));
            }
            self.buffer.push(payload, received_at_ns);
            return;
        }
        if self.batch.capacity() == 0 {
            self.batch.reserve(self.batch_size.min(64));
        }
        self.batch_bytes += payload.len();
        // The id is set when the batch is admitted.
        match decode(payload, self.decode, self.max_bytes, 0, received_at_ns) {
            Ok(record) => {
                self.batch.push(record);
            }
            Err(e) => self.counters.reject(e.error_type(), 1),
        }
    }

    fn too_large(&mut self) {
        self.counters.reject(DecodeError::TooLarge.error_type(), 1);
    }

    fn full(&self) -> bool {
        self.batch.len() + self.buffer.len() >= self.batch_size
            || self.batch_bytes + self.buffer.bytes() >= BATCH_BYTES
    }

    fn linger(&self) -> Option<Duration> {
        if self.max_delay_ns == 0 || self.first_at_ns == 0 || self.full() {
            return None;
        }
        let waited = unix_ns().saturating_sub(self.first_at_ns);
        (waited < self.max_delay_ns).then(|| Duration::from_nanos(self.max_delay_ns - waited))
    }

    async fn flush(&mut self) {
        self.first_at_ns = 0;
        if !self.buffer.is_empty() {
            let buffer = self.buffer.take();
            let (n, bytes) = (buffer.len(), buffer.bytes());
            let Some((first_id, lineage)) =
                admit(n, bytes, &self.counters, &self.next_id, &mut self.give_up).await
            else {
                return;
            };
            let messages = buffer.admitted(self.decode, self.max_bytes, first_id, lineage);
            send(
                vec![Queued::Messages(messages)],
                &self.outputs,
                &mut self.give_up,
            )
            .await;
        }
        if !self.batch.is_empty() {
            let records = std::mem::take(&mut self.batch);
            let bytes = std::mem::take(&mut self.batch_bytes);
            send_batch(
                records,
                bytes,
                &self.outputs,
                &self.counters,
                &self.next_id,
                &mut self.give_up,
            )
            .await;
        }
    }
}

/// Admits `n` messages (ids, lineage; waiting while the pipeline holds
/// `runtime.max_in_flight` messages). If `give_up` turns true first (the end of a shutdown's
/// drain timeout), they fail as `drain_timeout`, received and counted, not lost: `None`.
async fn admit(
    n: usize,
    bytes: usize,
    counters: &Arc<PipelineCounters>,
    next_id: &AtomicU64,
    give_up: &mut watch::Receiver<bool>,
) -> Option<(u64, Arc<Lineage>)> {
    let first_id = next_id.fetch_add(n as u64, Relaxed);
    tokio::select! {
        lineage = counters.admit(first_id, n, bytes) => Some((first_id, lineage)),
        () = gave_up(give_up) => {
            counters.reject(DRAIN_TIMEOUT, n as u64);
            None
        }
    }
}

/// Sends one item to each output (as many items as outputs), waiting for room; what finds
/// no room before `give_up`, or no consumer, fails.
async fn send(
    items: Vec<Queued>,
    outputs: &[mpsc::Sender<Queued>],
    give_up: &mut watch::Receiver<bool>,
) {
    for (tx, item) in outputs.iter().zip(items) {
        let sent = tokio::select! {
            sent = tx.reserve() => sent,
            () = gave_up(give_up) => {
                item.fail_all(DRAIN_TIMEOUT);
                continue;
            }
        };
        match sent {
            Ok(permit) => permit.send(item),
            Err(_) => item.fail_all("pipeline_closed"),
        }
    }
}

/// Admits a batch of records (see [`admit`]) and sends it to every consumer, shared.
async fn send_batch(
    mut records: RVec<Record>,
    bytes: usize,
    outputs: &[mpsc::Sender<Queued>],
    counters: &Arc<PipelineCounters>,
    next_id: &AtomicU64,
    give_up: &mut watch::Receiver<bool>,
) {
    let Some((first_id, lineage)) = admit(records.len(), bytes, counters, next_id, give_up).await
    else {
        return;
    };
    // What every consumer would otherwise read off each record: ids and receive times.
    let mut received: Vec<(u64, u64)> = Vec::new();
    for (i, r) in records.iter_mut().enumerate() {
        let (size, at) = (r.size_bytes(), r.received_at_ns());
        r.set_origin(first_id + i as u64, size, at);
        add_to_runs(&mut received, at);
    }
    let facts = Facts::known(
        (first_id..first_id + records.len() as u64).collect(),
        received.into(),
    );
    // A source nobody reads delivers its messages nowhere: they settle as filtered.
    let envelope = Envelope {
        records: RArc::new(records),
        lineage,
        facts: Arc::new(facts),
    };
    let items = envelope
        .fan_out(outputs.len())
        .into_iter()
        .map(Queued::from)
        .collect();
    send(items, outputs, give_up).await;
}

/// Resolves when `give_up` turns true; never, if its sender is gone without it.
async fn gave_up(give_up: &mut watch::Receiver<bool>) {
    if give_up.wait_for(|g| *g).await.is_err() {
        std::future::pending::<()>().await;
    }
}
