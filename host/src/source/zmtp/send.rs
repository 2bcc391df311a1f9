//! The send side of a PUSH socket, for `host publish`: one connection to a PULL peer, the
//! same handshake as the receive side, messages written a chunk at a time, and an end that
//! waits until the peer has read everything.
//!
//! A ZeroMQ library's socket queues messages for its own writer task and cannot say when the
//! queue has reached the peer: a sender that exits after its last `send` loses the queue's
//! tail with the process. Here [`PushConnection::finish`] writes what is left, closes this
//! side's half of the connection and waits for the peer to close its half, which a receiver
//! (libzmq, or the host's sources) does only after reading everything before it.

use std::{io, time::Duration};

use super::{
    reader::{self, Reader, Step},
    ConnError, Stream,
};

/// The largest command the peer may send during the handshake (READY with metadata).
const HANDSHAKE_BYTES: usize = 64 * 1024;

/// A connection to a PULL peer, handshake done.
pub struct PushConnection {
    stream: Stream,
    out: Vec<u8>,
}

impl PushConnection {
    /// Completes the handshake on a connection this side opened or accepted: greetings,
    /// then READY both ways; a peer that is not a PULL socket is refused.
    pub async fn handshake(mut stream: Stream, timeout: Duration) -> Result<Self, ConnError> {
        tokio::time::timeout(timeout, Self::exchange(&mut stream))
            .await
            .map_err(|_| ConnError::HandshakeTimeout(timeout))??;
        Ok(PushConnection {
            stream,
            out: Vec::with_capacity(64 * 1024),
        })
    }

    async fn exchange(stream: &mut Stream) -> Result<(), ConnError> {
        stream.write_all(&reader::our_greeting()).await?;
        let mut reader = Reader::new(HANDSHAKE_BYTES);
        let mut buf = vec![0u8; reader.max_buffer()];
        let mut filled = 0;
        loop {
            loop {
                let (consumed, step) = reader.step(&buf[..filled])?;
                match step {
                    Step::More { .. } => break,
                    Step::Greeting => stream.write_all(&reader::ready("PUSH")).await?,
                    Step::Command { name, data } => match name {
                        b"READY" => {
                            let peer = reader::socket_type(data)?;
                            if peer != b"PULL" {
                                return Err(ConnError::SocketType(
                                    String::from_utf8_lossy(peer).into_owned(),
                                ));
                            }
                            return Ok(());
                        }
                        b"ERROR" => {
                            let reason = data.get(1..).unwrap_or_default();
                            return Err(ConnError::PeerError(
                                String::from_utf8_lossy(reason).into_owned(),
                            ));
                        }
                        _ => {}
                    },
                    Step::Message { .. } | Step::TooLarge | Step::Skipped => {
                        return Err(
                            reader::ProtocolError::BadCommand("a message before READY").into()
                        )
                    }
                }
                buf.copy_within(consumed..filled, 0);
                filled -= consumed;
            }
            match stream.read(&mut buf[filled..]).await? {
                0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                n => filled += n,
            }
        }
    }

    /// Adds one single-frame message to what the next [`PushConnection::flush`] writes.
    pub fn queue(&mut self, body: &[u8]) {
        reader::write_frame(&mut self.out, body, false, false);
    }

    /// Writes everything queued. On an error the connection is done for, and what was
    /// queued may have reached the peer in part.
    pub async fn flush(&mut self) -> io::Result<()> {
        let result = self.stream.write_all(&self.out).await;
        self.out.clear();
        result
    }

    /// Writes what is queued, closes this side, and waits (up to `timeout`) for the peer to
    /// close its side: by then it has read every byte written.
    pub async fn finish(mut self, timeout: Duration) -> Result<(), ConnError> {
        self.flush().await?;
        self.stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let drained = async {
            // The peer says nothing more after READY (a PING at most): read until it closes.
            while self.stream.read(&mut sink).await? > 0 {}
            Ok::<(), io::Error>(())
        };
        tokio::time::timeout(timeout, drained)
            .await
            .map_err(|_| ConnError::DrainTimeout(timeout))??;
        Ok(())
    }
}
