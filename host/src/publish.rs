//! `host publish`: sends generated JSON messages, for trying a pipeline by hand and for the
//! benchmark.
//!
//! Connecting waits for someone to listen at the endpoint for at most [`CONNECT_TIMEOUT`]; a
//! bound PUSH socket waits for a peer to connect for as long as it takes. Either wait is
//! announced on stderr (a warning in the log) once it has lasted [`PEER_NOTICE_AFTER`], so
//! that a publisher with nobody to send to does not look like a hung one.
//!
//! PUSH goes through the host's own ZMTP code ([`crate::source::zmtp::send`]): a run ends
//! once the peer has read every message written, where the `zeromq` crate's socket could
//! only be given time and lost its queue's tail to a receiver that fell behind. PUB stays
//! on the `zeromq` crate: a subscriber that falls behind loses messages by design.

use std::{
    fmt,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use zeromq::{Socket, SocketOptions, SocketSend, ZmqMessage};

use crate::{
    clock::unix_secs,
    source::zmtp::{send::PushConnection, Endpoint, Listener, Stream},
};

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
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A send failed for good, or the peer did not read what was sent; `published` says
    /// what went before it.
    #[error("sending message {} failed", published.sent)]
    Send {
        published: Published,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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

/// How long a PUSH connection may take for its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the end of a run waits for the peer to read what was written.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a PUSH socket finds its peer.
enum PushTarget {
    Connect(Endpoint),
    Bind(Listener),
}

/// Where the messages go: a PUSH connection of the host's own ZMTP code (which can tell when
/// the peer has read everything), or the `zeromq` crate's PUB socket (which drops what nobody
/// subscribed to anyway).
enum Out {
    Push {
        target: PushTarget,
        conn: Option<PushConnection>,
    },
    Pub(zeromq::PubSocket),
}

impl PushTarget {
    /// A connection to a peer, handshake done. Connecting retries until something listens, for
    /// at most [`CONNECT_TIMEOUT`]; a bound socket waits for a peer as long as it takes. Either
    /// wait is announced once it has lasted [`PEER_NOTICE_AFTER`].
    async fn establish(&self, endpoint: &str) -> Result<PushConnection, PublishError> {
        let started = Instant::now();
        let mut told = false;
        let stream = loop {
            // Nothing within PEER_NOTICE_AFTER: `None`, and the wait goes on.
            let attempt = match tokio::time::timeout(PEER_NOTICE_AFTER, async {
                match self {
                    PushTarget::Connect(e) => Stream::connect(e).await,
                    PushTarget::Bind(l) => l.accept().await,
                }
            })
            .await
            {
                Ok(r) => r.map(Some),
                Err(_) => Ok(None),
            };
            match attempt {
                Ok(Some(stream)) => break stream,
                // Nothing listens yet (or nobody connected): try again shortly.
                Ok(None) | Err(_) if started.elapsed() < CONNECT_TIMEOUT || self.waits() => {}
                Ok(None) => {
                    return Err(PublishError::Socket {
                        action: "connect to",
                        endpoint: endpoint.to_owned(),
                        source: format!("nobody listened within {}s", CONNECT_TIMEOUT.as_secs())
                            .into(),
                    })
                }
                Err(e) => {
                    return Err(PublishError::Socket {
                        action: "connect to",
                        endpoint: endpoint.to_owned(),
                        source: e.into(),
                    })
                }
            }
            if !told && started.elapsed() >= PEER_NOTICE_AFTER {
                told = true;
                if self.waits() {
                    tracing::warn!(
                        "waiting for a peer to connect to {endpoint} (bound here; waiting as long as it takes)"
                    );
                } else {
                    tracing::warn!(
                        "waiting for a peer at {endpoint}: nobody listens there yet (giving up after {}s)",
                        CONNECT_TIMEOUT.as_secs()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let conn = PushConnection::handshake(stream, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|e| PublishError::Socket {
                action: "complete the handshake with",
                endpoint: endpoint.to_owned(),
                source: e.into(),
            })?;
        if told {
            tracing::info!("a peer at {endpoint} takes messages");
        }
        Ok(conn)
    }

    /// Whether a wait for a peer has no end (a bound socket).
    fn waits(&self) -> bool {
        matches!(self, PushTarget::Bind(_))
    }
}

/// Sends `count` messages. PUSH waits for a peer, and at the end for the peer to have read
/// every message; PUB sends to whoever has subscribed.
pub async fn publish(opts: &Publish) -> Result<Published, PublishError> {
    let endpoint = opts.endpoint.as_str();
    let sock_err =
        |action, source: Box<dyn std::error::Error + Send + Sync>| PublishError::Socket {
            action,
            endpoint: endpoint.to_owned(),
            source,
        };
    let mut out = match opts.socket {
        SendSocket::Push => {
            let e = Endpoint::parse(endpoint).map_err(|e| sock_err("use", e.into()))?;
            let target = if opts.bind {
                PushTarget::Bind(
                    Listener::bind(&e, endpoint)
                        .await
                        .map_err(|e| sock_err("bind", e.into()))?,
                )
            } else {
                PushTarget::Connect(e)
            };
            Out::Push { target, conn: None }
        }
        SendSocket::Pub => {
            let mut options = SocketOptions::default();
            options.connect_timeout(CONNECT_TIMEOUT);
            let mut s = zeromq::PubSocket::with_options(options);
            if opts.bind {
                s.bind(endpoint)
                    .await
                    .map(drop)
                    .map_err(|e| sock_err("bind", e.into()))?;
            } else {
                s.connect(endpoint)
                    .await
                    .map_err(|e| sock_err("connect to", e.into()))?;
            }
            // Subscriptions travel after the connection is made; give them a moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Out::Pub(s)
        }
    };
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
        match &mut out {
            Out::Push { target, conn } => loop {
                let c = match conn {
                    Some(c) => c,
                    None => conn.insert(
                        target
                            .establish(endpoint)
                            .await
                            .inspect_err(|_| bar.abandon())?,
                    ),
                };
                for k in i..i + chunk {
                    c.queue(generated_message(k, sent_at).as_bytes());
                }
                first_taken.get_or_insert_with(Instant::now);
                match c.flush().await {
                    Ok(()) => break,
                    Err(e) => {
                        // The peer went away. The chunk goes again to the next peer: the old
                        // one may have read part of it (at least once, not at most once).
                        tracing::warn!(
                            sent = i,
                            "the peer at {endpoint} went away ({e}); waiting for one to send to"
                        );
                        *conn = None;
                    }
                }
            },
            Out::Pub(s) => {
                for k in i..i + chunk {
                    let m = ZmqMessage::from(generated_message(k, sent_at));
                    if let Err(source) = s.send(m).await {
                        bar.abandon();
                        return Err(PublishError::Send {
                            published: published(first_taken, k, 1),
                            source: source.into(),
                        });
                    }
                    first_taken.get_or_insert_with(Instant::now);
                }
            }
        }
        i += chunk;
        bar.set_position(i);
    }
    bar.finish();
    let done = published(first_taken, i, 0);
    match out {
        Out::Push {
            conn: Some(c),
            target: _,
        } => {
            // Done only once the peer has read every message written.
            if let Err(e) = c.finish(DRAIN_TIMEOUT).await {
                return Err(PublishError::Send {
                    published: Published { errors: 1, ..done },
                    source: e.into(),
                });
            }
        }
        Out::Push { conn: None, .. } => {}
        Out::Pub(_) => {
            // The socket writes from its own tasks; give them time to hand the tail to the
            // kernel. (Subscribers that fall behind lose messages anyway: that is PUB.)
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
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
