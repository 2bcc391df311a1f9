//! The admin API's accept loop: each connection is one of hyper's HTTP/1 connections, with
//! the limits `axum::serve` does not set. Without them, a client that sends half a request
//! head and waits holds a file descriptor for ever, and a few hundred such clients leave the
//! host none for its ingest port either.
//!
//! - A request head must arrive within `header_timeout`. hyper (1.12) enforces it from the
//!   moment the connection is first polled (right after the accept), and again from the moment
//!   a kept-alive connection starts waiting for its next request, whatever bytes arrive in
//!   between: a deadline, not an idle timer. So a quiet kept-alive connection ends after the
//!   shorter of the two timeouts.
//! - A connection with nothing read or written for `idle_timeout` is closed ([`IdleTimeout`]):
//!   this covers what hyper's timer does not, a request body that stops arriving and a client
//!   that stops reading its answer.
//! - At most `max_connections` are served at once; a connection accepted beyond that is closed
//!   there and then, so the descriptors the admin API can take are bounded.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::{Instant, Sleep},
};

use crate::config::AdminConfig;

/// How long requests in progress may take to finish once the host stops; clients that hold
/// a connection open must not hold up the shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The pause after a failed accept. The usual cause, no file descriptor left, does not clear
/// at once; retrying straight away would only spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the accept loop counts, for /metrics.
#[derive(Debug, Default)]
pub(crate) struct ConnectionStats {
    accepted: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
}

/// A reading of [`ConnectionStats`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionCounts {
    /// Connections served.
    pub accepted: u64,
    /// Connections closed as soon as they were accepted: `max_connections` were open.
    pub refused: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections closed because no whole request head arrived within `header_timeout` of
    /// the accept, or of the previous answer on a kept-alive connection.
    pub header_timeouts: u64,
    /// Connections closed because nothing was read or written for `idle_timeout`.
    pub idle_timeouts: u64,
}

impl ConnectionStats {
    pub(crate) fn counts(&self) -> ConnectionCounts {
        ConnectionCounts {
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            header_timeouts: self.header_timeouts.load(Ordering::Relaxed),
            idle_timeouts: self.idle_timeouts.load(Ordering::Relaxed),
        }
    }
}

/// One of the `max_connections` places, held by a connection's task: dropped, however the task
/// ends (aborted at shutdown included), it gives the place back.
struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnectionStats>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, stats: Arc<ConnectionStats>) -> Slot {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        Slot {
            _permit: permit,
            stats,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

type Connection = http1::Connection<TokioIo<IdleTimeout>, TowerToHyperService<Router>>;

/// Serves `app` on `listener` until `stop` turns true (or its sender is gone), then lets the
/// requests in progress finish for at most [`SHUTDOWN_GRACE`] and returns.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    config: &AdminConfig,
    stats: Arc<ConnectionStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    let slots = Arc::new(Semaphore::new(
        config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let mut connections = JoinSet::new();
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => break,
            // Reaps finished tasks, so the set holds only the connections still open.
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                accept_failing = false;
                stream
            }
            Err(error) => {
                // Once per run of failures: a client that can exhaust descriptors must not be
                // able to flood the log as well.
                if !accept_failing {
                    tracing::warn!(%error, "admin API: cannot accept connections");
                    accept_failing = true;
                }
                tokio::select! {
                    _ = stopped(&mut stop) => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let slot = Slot::new(permit, stats.clone());
        let io = TokioIo::new(IdleTimeout::new(stream, config.idle_timeout, stats.clone()));
        let connection = http.serve_connection(io, TowerToHyperService::new(app.clone()));
        connections.spawn(drive(connection, slot, stop.clone()));
    }
    // The kernel refuses new connections from here on.
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            connections = connections.len(),
            "admin API: closing connections with requests still in progress"
        );
    }
    // Dropping the set aborts what is left, which closes those connections.
}

/// Serves one connection to its end. When the host stops, hyper finishes the request in
/// progress, if any, and closes the connection; [`run`] bounds how long that may take.
async fn drive(connection: Connection, slot: Slot, mut stop: watch::Receiver<bool>) {
    let mut connection = std::pin::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        // Idle timeouts were counted where they happened; hyper may report them as a plain
        // end of the connection, or as an I/O error, depending on where it was.
        if error.is_timeout() {
            slot.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%error, "admin API: connection ended");
    }
}

/// Resolves once `stop` is true or can no longer change.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Nothing was read or written on an admin connection for `idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("nothing read or written for {0:?}")]
struct IdleTimedOut(Duration);

/// A TCP stream whose reads and writes fail with [`io::ErrorKind::TimedOut`] once nothing has
/// been read or written for `timeout`.
///
/// The timer is moved only when it fires, to the last activity plus `timeout`, so a busy
/// connection pays a clock read per read or write, not a timer update.
struct IdleTimeout {
    io: TcpStream,
    timeout: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    stats: Arc<ConnectionStats>,
    counted: bool,
}

impl IdleTimeout {
    fn new(io: TcpStream, timeout: Duration, stats: Arc<ConnectionStats>) -> IdleTimeout {
        let now = Instant::now();
        IdleTimeout {
            io,
            timeout,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            stats,
            counted: false,
        }
    }

    fn active<T>(&mut self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Ok(_)) = result {
            self.last_activity = Instant::now();
        }
        result
    }

    /// Pending until the connection has been idle for `timeout`; then the error to fail with.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last_activity + self.timeout;
            if deadline > self.timer.deadline() {
                self.timer.as_mut().reset(deadline);
                continue;
            }
            if !self.counted {
                self.counted = true;
                self.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                IdleTimedOut(self.timeout),
            ));
        }
    }

    /// An I/O poll that is pending fails instead once the connection has been idle too long.
    fn or_idle<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.poll_idle(cx).map(Err),
            ready => self.active(ready),
        }
    }
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        this.or_idle(cx, result)
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.or_idle(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.or_idle(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(timeout: Duration) -> (IdleTimeout, TcpStream, Arc<ConnectionStats>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stats = Arc::new(ConnectionStats::default());
        (
            IdleTimeout::new(server, timeout, stats.clone()),
            client,
            stats,
        )
    }

    /// The timer wheel rounds deadlines up to the next millisecond.
    fn about(elapsed: Duration, expected: Duration) {
        assert!(
            elapsed >= expected && elapsed < expected + Duration::from_millis(10),
            "{elapsed:?}, expected {expected:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_once() {
        let (mut server, _client, stats) = pair(Duration::from_secs(5)).await;
        let start = Instant::now();
        let error = server.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        about(start.elapsed(), Duration::from_secs(5));
        let _ = server.read(&mut [0; 8]).await;
        assert_eq!(stats.counts().idle_timeouts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_moves_the_deadline() {
        let (mut server, mut client, stats) = pair(Duration::from_secs(5)).await;
        let start = Instant::now();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(server.read(&mut [0; 8]).await.unwrap(), 1);
        }
        let error = server.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        about(start.elapsed(), Duration::from_secs(12 + 5));
        assert_eq!(stats.counts().idle_timeouts, 1);
    }
}
