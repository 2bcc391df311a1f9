//! `host publish`: sends generated JSON messages, for trying a pipeline by hand and for the
//! benchmark.
//!
//! Connecting waits for someone to listen at the endpoint for at most [`CONNECT_TIMEOUT`]; a
//! bound PUSH socket waits for a peer to connect for as long as it takes. Either wait is
//! announced on stderr (a warning in the log) once it has lasted [`PEER_NOTICE_AFTER`], so
//! that a publisher with nobody to send to does not look like a hung one.

use std::{
    fmt,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use zeromq::{Socket, SocketOptions, SocketSend, ZmqError, ZmqMessage};

use crate::clock::unix_secs;

/// What kind of socket to send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendSocket {
    Push,
    Pub,
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot {action} {endpoint}")]
    Socket {
        action: &'static str,
        endpoint: String,
        #[source]
        source: ZmqError,
    },
    /// A send failed for good; `published` says what went before it.
    #[error("sending message {} failed", published.sent)]
    Send {
        published: Published,
        #[source]
        source: ZmqError,
    },
}

/// How long connecting to an endpoint waits for someone to listen there.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a wait for a peer lasts before it is announced.
pub const PEER_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// What a publishing run did: `host publish` prints it as its last line.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub endpoint: String,
    /// Messages handed to the socket.
    pub sent: u64,
    /// Sends that failed for good (the run stops at the first).
    pub errors: u64,
    /// From the first message the socket took to the last (a wait for a peer before the first
    /// does not count; one later does).
    #[serde(rename = "elapsed_seconds", serialize_with = "as_secs")]
    pub elapsed: Duration,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Published {
    /// Messages per second over [`Published::elapsed`] (0 when nothing was sent).
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if self.sent == 0 || secs <= 0.0 {
            0.0
        } else {
            self.sent as f64 / secs
        }
    }

    /// The summary as one JSON object (`rate_per_second` added).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["rate_per_second"] = serde_json::json!(self.rate());
        v
    }
}

/// `published sent=1000 errors=0 elapsed=0.052s rate=19231/s endpoint=tcp://...`
impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "published sent={} errors={} elapsed={:.3}s rate={:.0}/s endpoint={}",
            self.sent,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.endpoint
        )
    }
}

/// Announces a wait for a peer once it has lasted [`PEER_NOTICE_AFTER`]; once per wait.
struct PeerWait<'a> {
    endpoint: &'a str,
    bound: bool,
    since: Option<Instant>,
    told: bool,
}

impl PeerWait<'_> {
    /// A message came back: no peer takes it now.
    fn waiting(&mut self, sent: u64) {
        let since = *self.since.get_or_insert_with(Instant::now);
        if !self.told && since.elapsed() >= PEER_NOTICE_AFTER {
            self.told = true;
            let endpoint = self.endpoint;
            if self.bound {
                tracing::warn!(
                    sent,
                    "waiting for a peer to connect to {endpoint} (bound here; waiting as long as it takes)"
                );
            } else {
                tracing::warn!(
                    sent,
                    "waiting for a peer at {endpoint}: the connection has no peer to take messages"
                );
            }
        }
    }

    fn peer_took(&mut self) {
        if self.since.take().is_some() && self.told {
            self.told = false;
            tracing::info!("a peer at {} takes messages again", self.endpoint);
        }
    }
}

const LEVELS: [&str; 4] = ["info", "debug", "warn", "error"];

/// Message `i`: about 100 bytes of JSON with `id`, `level`, `sent_at`, `msg`, `value`.
/// Levels cycle info, debug, warn, error.
pub fn generated_message(i: u64, sent_at: f64) -> String {
    format!(
        r#"{{"id":{i},"level":"{}","sent_at":{sent_at:.6},"msg":"generated message number {i}","value":{}}}"#,
        LEVELS[(i % 4) as usize],
        i % 100
    )
}

enum Sender {
    Push(zeromq::PushSocket),
    Pub(zeromq::PubSocket),
}

impl Sender {
    async fn send(&mut self, m: ZmqMessage) -> Result<(), ZmqError> {
        match self {
            Sender::Push(s) => s.send(m).await,
            Sender::Pub(s) => s.send(m).await,
        }
    }
}

/// Options of one publishing run.
pub struct Publish {
    pub endpoint: String,
    pub count: u64,
    /// Messages per second; `None` sends as fast as the peer takes them.
    pub rate: Option<u64>,
    pub socket: SendSocket,
    pub bind: bool,
    pub progress: bool,
}

/// Sends `count` messages. PUSH waits for a peer; PUB sends to whoever has subscribed.
pub async fn publish(opts: &Publish) -> Result<Published, PublishError> {
    let mut options = SocketOptions::default();
    options.connect_timeout(CONNECT_TIMEOUT);
    let mut sender = match opts.socket {
        SendSocket::Push => Sender::Push(zeromq::PushSocket::with_options(options)),
        SendSocket::Pub => Sender::Pub(zeromq::PubSocket::with_options(options)),
    };
    let endpoint = opts.endpoint.as_str();
    let sock_err = |action, source| PublishError::Socket {
        action,
        endpoint: endpoint.to_owned(),
        source,
    };
    if opts.bind {
        match &mut sender {
            Sender::Push(s) => s.bind(endpoint).await.map(drop),
            Sender::Pub(s) => s.bind(endpoint).await.map(drop),
        }
        .map_err(|e| sock_err("bind", e))?;
    } else {
        let connect = async {
            match &mut sender {
                Sender::Push(s) => s.connect(endpoint).await,
                Sender::Pub(s) => s.connect(endpoint).await,
            }
        };
        tokio::pin!(connect);
        let connected = tokio::select! {
            connected = &mut connect => connected,
            () = tokio::time::sleep(PEER_NOTICE_AFTER) => {
                tracing::warn!(
                    "waiting for a peer at {endpoint}: nobody listens there yet (giving up after {}s)",
                    CONNECT_TIMEOUT.as_secs()
                );
                connect.await
            }
        };
        connected.map_err(|e| sock_err("connect to", e))?;
    }
    if opts.socket == SendSocket::Pub {
        // Subscriptions travel after the connection is made; give them a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let bar = if opts.progress {
        let bar = ProgressBar::new(opts.count);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} messages, {per_sec}, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    // Rate limiting works in 1 ms ticks: each tick sends what the rate allows by then, so a
    // paced stream comes in small bursts (latency measurements depend on it).
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut peer = PeerWait {
        endpoint,
        bound: opts.bind,
        since: None,
        told: false,
    };
    let mut first_taken: Option<Instant> = None;
    let published = |first_taken: Option<Instant>, sent, errors| Published {
        endpoint: endpoint.to_owned(),
        sent,
        errors,
        elapsed: first_taken.map(|t| t.elapsed()).unwrap_or_default(),
    };
    let mut i = 0;
    while i < opts.count {
        let chunk = match opts.rate {
            Some(rate) => {
                ticker.tick().await;
                // Counted from the first message the socket took: any rate (not only whole
                // messages per tick), and nothing owed for time spent waiting for a peer.
                let since = first_taken.map_or(Duration::ZERO, |t| t.elapsed());
                let allowed = u128::from(rate) * since.as_micros() / 1_000_000 + 1;
                u64::try_from(allowed)
                    .unwrap_or(u64::MAX)
                    .min(opts.count)
                    .saturating_sub(i)
            }
            None => (opts.count - i).min(1024),
        };
        let sent_at = unix_secs();
        for _ in 0..chunk {
            let mut m = ZmqMessage::from(generated_message(i, sent_at));
            // A PUSH socket with no peer hands the message back; wait for one.
            loop {
                match sender.send(m).await {
                    Ok(()) => {
                        first_taken.get_or_insert_with(Instant::now);
                        peer.peer_took();
                        break;
                    }
                    Err(ZmqError::ReturnToSender { message, .. }) => {
                        m = message;
                        peer.waiting(i);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(source) => {
                        bar.abandon();
                        return Err(PublishError::Send {
                            published: published(first_taken, i, 1),
                            source,
                        });
                    }
                }
            }
            i += 1;
        }
        bar.set_position(i);
    }
    bar.finish();
    let done = published(first_taken, i, 0);
    // The socket writes from its own tasks; give them time to hand the tail to the kernel.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(done)
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_messages_are_small_json_objects() {
        let m = super::generated_message(7, 1_700_000_000.5);
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["level"], "error");
        assert!(m.len() > 80 && m.len() < 130, "{} bytes", m.len());
    }

    #[test]
    fn the_summary_says_what_was_sent_how_fast() {
        let p = super::Published {
            endpoint: "tcp://127.0.0.1:5555".into(),
            sent: 1000,
            errors: 0,
            elapsed: std::time::Duration::from_millis(500),
        };
        assert_eq!(
            p.to_string(),
            "published sent=1000 errors=0 elapsed=0.500s rate=2000/s endpoint=tcp://127.0.0.1:5555"
        );
        let v = p.to_json();
        assert_eq!(v["sent"], 1000);
        assert_eq!(v["elapsed_seconds"], 0.5);
        assert_eq!(v["rate_per_second"], 2000.0);
        let none = super::Published { sent: 0, ..p };
        assert_eq!(none.rate(), 0.0);
    }
}
