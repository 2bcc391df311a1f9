//! `host publish`: sends generated JSON messages, for trying a pipeline by hand and for the
//! benchmark.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use zeromq::{Socket, SocketSend, ZmqError, ZmqMessage};

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
    #[error("sending message {index} failed")]
    Send {
        index: u64,
        #[source]
        source: ZmqError,
    },
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
pub async fn publish(opts: &Publish) -> Result<(), PublishError> {
    let mut sender = match opts.socket {
        SendSocket::Push => Sender::Push(zeromq::PushSocket::new()),
        SendSocket::Pub => Sender::Pub(zeromq::PubSocket::new()),
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
        match &mut sender {
            Sender::Push(s) => s.connect(endpoint).await,
            Sender::Pub(s) => s.connect(endpoint).await,
        }
        .map_err(|e| sock_err("connect to", e))?;
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
    // Rate limiting works in 1 ms ticks: each tick sends that tick's share, so a paced
    // stream comes in small bursts (latency measurements depend on it).
    let per_tick = opts.rate.map(|r| (r / 1000).max(1));
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut i = 0;
    while i < opts.count {
        let chunk = match per_tick {
            Some(n) => {
                ticker.tick().await;
                n.min(opts.count - i)
            }
            None => (opts.count - i).min(1024),
        };
        let sent_at = unix_secs();
        for _ in 0..chunk {
            let mut m = ZmqMessage::from(generated_message(i, sent_at));
            // A PUSH socket with no peer hands the message back; wait for one.
            loop {
                match sender.send(m).await {
                    Ok(()) => break,
                    Err(ZmqError::ReturnToSender { message, .. }) => {
                        m = message;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(source) => return Err(PublishError::Send { index: i, source }),
                }
            }
            i += 1;
        }
        bar.set_position(i);
    }
    bar.finish();
    // The socket writes from its own tasks; give them time to hand the tail to the kernel.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
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
}
