//! The receive side of ZeroMQ's wire protocol (ZMTP 3, NULL mechanism), written for the
//! host's sources: PULL and SUB sockets that bind or connect over `tcp://` or `ipc://`.
//!
//! The host reads ZMTP itself rather than through a ZeroMQ library because neither library
//! bounds what a peer can make it hold: the `zeromq` crate reserves whatever length a frame
//! header claims (73 bytes of a hostile peer abort the process), and libzmq's
//! `ZMQ_MAXMSGSIZE` limits single frames, so a multipart message of many small frames is
//! still buffered whole (512 MiB was, in a test with pyzmq), and it drops the peer without
//! saying why, so the message cannot be counted. Here a message larger than
//! `max_message_bytes` is counted as `message_too_large` and skipped as it arrives, and each
//! connection's buffer is bounded by that size (see [`reader`]).
//!
//! One task per connection reads, hands each whole message to a [`Sink`] straight from its
//! read buffer (no copy), and flushes the sink whenever the socket has nothing more ready:
//! batches form under load and stay small when traffic is light. A sink's flush may wait
//! (the pipeline's queues are full); the connection then stops reading, and the backlog stays
//! with the peer and the kernel.

pub mod reader;
pub mod send;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{watch, Semaphore},
    task::JoinSet,
};

use reader::{ProtocolError, Reader, Step};

/// Where a socket binds or connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `tcp://host:port`; `*` as host is every interface, `0` or `*` as port a free one.
    Tcp { host: String, port: u16 },
    /// `ipc://path`: a Unix domain socket.
    Ipc(PathBuf),
}

/// Why an endpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("`{0}` is not a ZeroMQ endpoint (expected tcp://HOST:PORT or ipc://PATH)")]
    Syntax(String),
    #[error("cannot bind {endpoint}")]
    Bind {
        endpoint: String,
        #[source]
        source: io::Error,
    },
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Endpoint, EndpointError> {
        let bad = || EndpointError::Syntax(text.to_owned());
        if let Some(path) = text.strip_prefix("ipc://") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Endpoint::Ipc(PathBuf::from(path)));
        }
        let rest = text.strip_prefix("tcp://").ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port = match port {
            "*" => 0,
            p => p.parse().map_err(|_| bad())?,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Endpoint::Tcp {
            host: host.to_owned(),
            port,
        })
    }

    fn tcp_host(host: &str) -> &str {
        if host == "*" {
            "0.0.0.0"
        } else {
            host
        }
    }
}

/// A connection's byte stream.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            Stream::Unix(s) => s.write_all(buf).await,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf).await,
            Stream::Unix(s) => s.read(buf).await,
        }
    }

    /// Closes this side's half of the connection (after everything written).
    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Unix(s) => s.shutdown().await,
        }
    }

    /// Opens a connection to `endpoint`.
    pub async fn connect(endpoint: &Endpoint) -> io::Result<Stream> {
        match endpoint {
            Endpoint::Tcp { host, port } => {
                let s = TcpStream::connect((Endpoint::tcp_host(host), *port)).await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Endpoint::Ipc(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
        }
    }
}

/// A bound socket, accepting connections.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `endpoint`. An `ipc://` path left behind by an earlier process is replaced, as
    /// libzmq does; anything else at that path is an error.
    pub async fn bind(endpoint: &Endpoint, text: &str) -> Result<Listener, EndpointError> {
        let err = |source| EndpointError::Bind {
            endpoint: text.to_owned(),
            source,
        };
        match endpoint {
            Endpoint::Tcp { host, port } => {
                let l = TcpListener::bind((Endpoint::tcp_host(host), *port))
                    .await
                    .map_err(err)?;
                Ok(Listener::Tcp(l))
            }
            Endpoint::Ipc(path) => {
                use std::os::unix::fs::FileTypeExt;
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if meta.file_type().is_socket() {
                        std::fs::remove_file(path).map_err(err)?;
                    }
                }
                let l = UnixListener::bind(path).map_err(err)?;
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }

    /// The endpoint as bound, with a port picked by the system filled in.
    pub fn endpoint(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(SocketAddr::V6(a)) => format!("tcp://[{}]:{}", a.ip(), a.port()),
                Ok(a) => format!("tcp://{a}"),
                Err(_) => "tcp://?".into(),
            },
            Listener::Unix(_, path) => format!("ipc://{}", path.display()),
        }
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Which socket this side is.
#[derive(Debug, Clone)]
pub enum Role {
    Pull,
    /// Subscribed to these topic prefixes (one empty prefix: everything).
    Sub {
        topics: Vec<Vec<u8>>,
    },
}

impl Role {
    fn socket_type(&self) -> &'static str {
        match self {
            Role::Pull => "PULL",
            Role::Sub { .. } => "SUB",
        }
    }

    fn accepts(&self, peer: &[u8]) -> bool {
        match self {
            Role::Pull => peer == b"PUSH",
            Role::Sub { .. } => peer == b"PUB" || peer == b"XPUB",
        }
    }

    fn wants(&self, first: &[u8]) -> bool {
        match self {
            Role::Pull => true,
            Role::Sub { topics } => topics.iter().any(|t| first.starts_with(t)),
        }
    }
}

/// What limits one source's connections.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A peer must complete its greeting and READY within this time.
    pub handshake_timeout: Duration,
}

/// Where a connection hands its messages. One per connection.
pub trait Sink: Send + 'static {
    /// A whole message: its first frame and its last (the same one for a single frame).
    /// `received_at_ns` is when the read that completed it returned.
    fn message(&mut self, first: &[u8], last: &[u8], received_at_ns: u64);
    /// A message larger than `max_message_bytes` began; it is skipped.
    fn too_large(&mut self);
    /// True when enough is collected that it should be handed on before reading more.
    fn full(&self) -> bool;
    /// Hands on what was collected. May wait (back-pressure); reading waits with it.
    fn flush(&mut self) -> impl Future<Output = ()> + Send;
    /// How much longer what was collected may wait for more when the socket has nothing
    /// ready; `None` hands it on now.
    fn linger(&self) -> Option<Duration> {
        None
    }
}

/// Counters of one source's connections, shown on /metrics and /api/metrics.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub active: AtomicU64,
    pub accepted: AtomicU64,
    /// Closed at once because `max_connections` were being served.
    pub refused: AtomicU64,
    /// Peers dropped for not completing the handshake in time.
    pub handshake_timeouts: AtomicU64,
    /// Peers dropped for bytes that are not ZMTP this host speaks, by reason.
    pub protocol_errors: ProtocolErrorCounts,
}

/// Protocol errors by [`ProtocolError::reason`]; a fixed set, so no map or lock.
#[derive(Debug, Default)]
pub struct ProtocolErrorCounts([AtomicU64; PROTOCOL_ERROR_REASONS.len()]);

/// Every value [`ProtocolError::reason`] and [`ConnError::reason`] can take.
pub const PROTOCOL_ERROR_REASONS: [&str; 7] = [
    "bad_greeting",
    "unsupported_version",
    "unsupported_mechanism",
    "bad_frame",
    "command_too_large",
    "bad_command",
    "wrong_socket_type",
];

impl ProtocolErrorCounts {
    fn add(&self, reason: &str) {
        if let Some(i) = PROTOCOL_ERROR_REASONS.iter().position(|r| *r == reason) {
            self.0[i].fetch_add(1, Relaxed);
        }
    }

    /// `(reason, count)` for every reason.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        PROTOCOL_ERROR_REASONS
            .iter()
            .zip(&self.0)
            .map(|(r, c)| (*r, c.load(Relaxed)))
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the peer is a {0} socket, which cannot talk to this one")]
    SocketType(String),
    #[error("the peer sent ERROR: {0}")]
    PeerError(String),
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the peer did not close the connection within {0:?} of the last message")]
    DrainTimeout(Duration),
}

impl ConnError {
    fn reason(&self) -> Option<&'static str> {
        match self {
            ConnError::Protocol(p) => Some(p.reason()),
            ConnError::SocketType(_) => Some("wrong_socket_type"),
            _ => None,
        }
    }
}

/// Bytes read on a connection, not yet consumed, in a buffer that grows only as far as the
/// message at its front needs (never past [`Reader::max_buffer`]) and shrinks back after.
struct Buffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

/// What a connection's buffer holds when it holds no large message. Reads are this big.
const BASE_BUFFER: usize = 64 * 1024;

impl Buffer {
    fn new() -> Buffer {
        Buffer {
            data: vec![0; BASE_BUFFER],
            start: 0,
            end: 0,
        }
    }

    fn unread(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.len() > BASE_BUFFER {
                self.data.truncate(BASE_BUFFER);
                self.data.shrink_to_fit();
            }
        }
    }

    /// Makes room for `need` unread bytes from the front, and for a read of a useful size:
    /// unread bytes move to the front when the space behind them runs short.
    fn reserve(&mut self, need: usize) {
        let short =
            self.data.len() - self.start < need || self.data.len() - self.end < BASE_BUFFER / 4;
        if short && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.data.len() < need {
            self.data.resize(need, 0);
        }
    }

    fn space(&mut self) -> &mut [u8] {
        &mut self.data[self.end..]
    }
}

/// Serves one connection until the peer goes, a protocol error, or `stop`.
pub async fn serve<S: Sink>(
    mut stream: Stream,
    role: &Role,
    limits: &Limits,
    sink: &mut S,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ConnError> {
    write(&mut stream, &reader::our_greeting(), limits).await?;
    let mut reader = Reader::new(limits.max_message_bytes);
    let mut buf = Buffer::new();
    let handshake_deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    // Greeting, then READY, then messages.
    let mut phase = 0u8;
    let mut replies: Vec<u8> = Vec::new();
    loop {
        // Everything the buffer holds, step by step.
        let now_ns = crate::clock::unix_ns();
        loop {
            let (consumed, step) = reader.step(buf.unread())?;
            match step {
                Step::More { need } => {
                    buf.reserve(need);
                    break;
                }
                Step::Greeting => {
                    phase = 1;
                    replies.extend_from_slice(&reader::ready(role.socket_type()));
                }
                Step::Command { name, data } => match name {
                    b"READY" if phase == 1 => {
                        let peer = reader::socket_type(data)?;
                        if !role.accepts(peer) {
                            return Err(ConnError::SocketType(
                                String::from_utf8_lossy(peer).into_owned(),
                            ));
                        }
                        phase = 2;
                        if let Role::Sub { topics } = role {
                            for t in topics {
                                replies.extend_from_slice(&reader::subscribe(t));
                            }
                        }
                    }
                    b"PING" => replies.extend_from_slice(&reader::pong(data)),
                    b"ERROR" => {
                        let reason = data.get(1..).unwrap_or_default();
                        return Err(ConnError::PeerError(
                            String::from_utf8_lossy(reason).into_owned(),
                        ));
                    }
                    // PONG, SUBSCRIBE, CANCEL, unknown commands: nothing to do for a reader.
                    _ => {}
                },
                Step::Message { first, last } => {
                    if phase < 2 {
                        return Err(ProtocolError::BadCommand("a message before READY").into());
                    }
                    if role.wants(first) {
                        sink.message(first, last, now_ns);
                    }
                }
                Step::TooLarge => {
                    if phase < 2 {
                        return Err(ProtocolError::BadCommand("a message before READY").into());
                    }
                    sink.too_large();
                }
                Step::Skipped => {}
            }
            buf.consume(consumed);
            if sink.full() {
                sink.flush().await;
            }
        }
        if !replies.is_empty() {
            write(&mut stream, &replies, limits).await?;
            replies.clear();
        }
        // Stopping: every whole message read so far is handed on; what is still in the
        // kernel's buffers was never accepted. (Checked here, not only when the socket has
        // nothing ready: a peer with a backlog would otherwise keep the source reading.)
        if *stop.borrow() {
            sink.flush().await;
            return Ok(());
        }
        match stream.try_read(buf.space()) {
            Ok(0) => {
                sink.flush().await;
                return Ok(());
            }
            Ok(n) => buf.end += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // A batch that is not full may wait for more, up to the source's
                // `max_delay`: the connection sleeps that long (without waking for each
                // message that comes in meanwhile; the kernel holds them), then reads what
                // came and hands the batch on.
                if let Some(left) = sink.linger() {
                    tokio::select! {
                        () = tokio::time::sleep(left) => continue,
                        _ = stop.changed() => {
                            sink.flush().await;
                            return Ok(());
                        }
                    }
                }
                // Nothing more is ready: hand on what was collected, then wait.
                sink.flush().await;
                if phase < 2 {
                    tokio::select! {
                        r = tokio::time::timeout_at(handshake_deadline, stream.readable()) => match r {
                            Ok(r) => r?,
                            Err(_) => return Err(ConnError::HandshakeTimeout(limits.handshake_timeout)),
                        },
                        _ = stop.changed() => return Ok(()),
                    }
                } else {
                    tokio::select! {
                        r = stream.readable() => r?,
                        _ = stop.changed() => return Ok(()),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                sink.flush().await;
                return Err(e.into());
            }
        }
    }
}

/// Writes this side's few bytes (greeting, READY, subscriptions, PONG). A peer that does
/// not read them within the handshake timeout is dropped, so it cannot hold a connection
/// task in a write that never ends.
async fn write(stream: &mut Stream, bytes: &[u8], limits: &Limits) -> Result<(), ConnError> {
    match tokio::time::timeout(limits.handshake_timeout, stream.write_all(bytes)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ConnError::HandshakeTimeout(limits.handshake_timeout)),
    }
}

fn note_end(name: &str, peer: &str, result: Result<(), ConnError>, stats: &ConnectionStats) {
    match result {
        Ok(()) => tracing::debug!(source = name, peer, "peer disconnected"),
        Err(ConnError::HandshakeTimeout(t)) => {
            stats.handshake_timeouts.fetch_add(1, Relaxed);
            tracing::debug!(
                source = name,
                peer,
                "peer dropped: no handshake within {t:?}"
            );
        }
        Err(e) => {
            if let Some(reason) = e.reason() {
                stats.protocol_errors.add(reason);
            }
            tracing::debug!(source = name, peer, error = %e, "peer dropped");
        }
    }
}

/// Accepts connections on `listener` until `stop`, serving each in its own task with a sink
/// from `make_sink`; returns once every connection has ended (each flushes first).
pub async fn run_bound<S: Sink>(
    name: Arc<str>,
    listener: Listener,
    role: Role,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    make_sink: impl Fn() -> S,
    mut stop: watch::Receiver<bool>,
) {
    let role = Arc::new(role);
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(source = %name, error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Relaxed);
            tracing::debug!(source = %name, max = limits.max_connections, "connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Relaxed);
        stats.active.fetch_add(1, Relaxed);
        let (name, role, limits, stats) =
            (name.clone(), role.clone(), limits.clone(), stats.clone());
        let mut sink = make_sink();
        let mut stop = stop.clone();
        tasks.spawn(async move {
            let peer = peer_name(&stream);
            let result = serve(stream, &role, &limits, &mut sink, &mut stop).await;
            note_end(&name, &peer, result, &stats);
            stats.active.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Connects to `endpoint`, and again whenever the connection ends (backing off from 100 ms to
/// 5 s while it cannot), until `stop`. `connected` says whether a peer is there now.
#[allow(clippy::too_many_arguments)]
pub async fn run_connected<S: Sink>(
    name: Arc<str>,
    endpoint: Endpoint,
    role: Role,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    mut sink: S,
    connected: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    const FIRST_RETRY: Duration = Duration::from_millis(100);
    const MAX_RETRY: Duration = Duration::from_secs(5);
    let mut retry = FIRST_RETRY;
    loop {
        let attempt = tokio::select! {
            biased;
            _ = stop.changed() => break,
            s = Stream::connect(&endpoint) => s,
        };
        match attempt {
            Ok(stream) => {
                stats.accepted.fetch_add(1, Relaxed);
                stats.active.fetch_add(1, Relaxed);
                connected.store(true, Relaxed);
                retry = FIRST_RETRY;
                let peer = peer_name(&stream);
                let result = serve(stream, &role, &limits, &mut sink, &mut stop).await;
                connected.store(false, Relaxed);
                stats.active.fetch_sub(1, Relaxed);
                note_end(&name, &peer, result, &stats);
            }
            Err(e) => {
                tracing::debug!(source = %name, error = %e, "cannot connect; retrying in {retry:?}");
            }
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
    sink.flush().await;
}

fn peer_name(stream: &Stream) -> String {
    match stream {
        Stream::Tcp(s) => s.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        Stream::Unix(_) => "ipc".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:5555").unwrap(),
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 5555
            }
        );
        assert_eq!(
            Endpoint::parse("tcp://*:*").unwrap(),
            Endpoint::Tcp {
                host: "*".into(),
                port: 0
            }
        );
        assert_eq!(
            Endpoint::parse("tcp://[::1]:9").unwrap(),
            Endpoint::Tcp {
                host: "::1".into(),
                port: 9
            }
        );
        assert_eq!(
            Endpoint::parse("ipc:///tmp/x.sock").unwrap(),
            Endpoint::Ipc("/tmp/x.sock".into())
        );
        for bad in [
            "udp://x:1",
            "tcp://x",
            "tcp://:5",
            "tcp://x:99999",
            "ipc://",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_buffer_grows_for_the_message_at_its_front_and_shrinks_after() {
        let mut b = Buffer::new();
        b.end = 100;
        b.consume(40);
        b.reserve(BASE_BUFFER * 3);
        assert_eq!((b.start, b.end), (0, 60));
        assert_eq!(b.data.len(), BASE_BUFFER * 3);
        b.consume(60);
        assert_eq!(b.data.len(), BASE_BUFFER);
    }
}
