//! The ZMTP 3 wire format, read without I/O: a [`Reader`] is handed the bytes a connection has
//! buffered and says what they hold (the greeting, a command, a whole message) or how many
//! bytes it needs before it can say more.
//!
//! It never asks for more than a message may hold: a frame header that announces more than
//! `max_message_bytes` (alone or with the frames before it in the same message) is reported
//! once as [`Step::TooLarge`], and the rest of that message is skipped as it arrives, in
//! whatever pieces it comes, without being buffered. Whatever a header claims, the caller's
//! buffer never has to grow beyond [`Reader::max_buffer`].

use std::fmt;

/// The length of a ZMTP 3 greeting.
pub const GREETING_LEN: usize = 64;
/// Frames a message may have. libzmq sets no limit; a bound keeps frame headers (which cost
/// buffer space even for empty frames) from growing a message without bound.
pub const MAX_FRAMES: u32 = 1024;
/// The largest command body accepted (READY with metadata, PING, ERROR).
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;
const RESERVED_FLAGS: u8 = !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND);

/// Why a connection's bytes are not ZMTP 3 a host can talk to. The connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The first ten bytes are not a ZMTP signature.
    BadSignature,
    /// ZMTP 1.0 or 2.0 (libzmq 2.x and 3.x).
    UnsupportedVersion(u8),
    /// A security mechanism other than NULL (PLAIN, CURVE, ...).
    UnsupportedMechanism(String),
    /// A frame whose reserved flag bits are set.
    BadFlags(u8),
    /// A command frame in the middle of a multipart message.
    CommandInMessage,
    /// A command larger than [`MAX_COMMAND_BYTES`].
    CommandTooLarge(u64),
    /// A command whose body cannot be parsed.
    BadCommand(&'static str),
}

impl ProtocolError {
    /// A short, fixed name for counting (`host_source_protocol_errors_total{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::BadSignature => "bad_greeting",
            ProtocolError::UnsupportedVersion(_) => "unsupported_version",
            ProtocolError::UnsupportedMechanism(_) => "unsupported_mechanism",
            ProtocolError::BadFlags(_) => "bad_frame",
            ProtocolError::CommandInMessage => "bad_frame",
            ProtocolError::CommandTooLarge(_) => "command_too_large",
            ProtocolError::BadCommand(_) => "bad_command",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::BadSignature => f.write_str("not a ZMTP greeting"),
            ProtocolError::UnsupportedVersion(v) => {
                write!(f, "ZMTP version {v} is not supported (3.0 or newer is)")
            }
            ProtocolError::UnsupportedMechanism(m) => {
                write!(f, "security mechanism {m:?} is not supported (NULL is)")
            }
            ProtocolError::BadFlags(flags) => write!(f, "frame flags {flags:#04x} are invalid"),
            ProtocolError::CommandInMessage => {
                f.write_str("a command frame inside a multipart message")
            }
            ProtocolError::CommandTooLarge(n) => write!(
                f,
                "a command of {n} bytes (at most {MAX_COMMAND_BYTES} are accepted)"
            ),
            ProtocolError::BadCommand(why) => write!(f, "malformed command: {why}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// What the bytes at the front of the buffer hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Nothing more can be said until the buffer holds `need` bytes from its front.
    More { need: usize },
    /// The peer's greeting was valid (ZMTP 3.x, NULL mechanism).
    Greeting,
    /// A command frame: its name and the data after the name.
    Command { name: &'a [u8], data: &'a [u8] },
    /// A whole message: its first frame (a topic, for PUB/SUB) and its last (the payload).
    /// For a single-frame message both are the same frame.
    Message { first: &'a [u8], last: &'a [u8] },
    /// A message that is larger than allowed began; the rest of it will be skipped.
    TooLarge,
    /// Bytes of an oversized message were skipped.
    Skipped,
}

/// How far into a message that is not yet complete the reader has looked. Offsets are
/// relative to the front of the buffer, where the message starts.
#[derive(Debug, Default, Clone)]
struct Progress {
    /// Bytes of complete frames looked at so far.
    scanned: usize,
    frames: u32,
    /// Sum of the frame bodies so far.
    body_bytes: u64,
    first: (usize, usize),
    last: (usize, usize),
}

#[derive(Debug, Clone)]
enum State {
    Greeting,
    Frames(Progress),
    /// Skipping the rest of an oversized message: what is left of the current frame, and
    /// whether more frames of the message follow it.
    Discarding {
        frame_left: u64,
        more: bool,
    },
}

/// The frame reader of one connection.
#[derive(Debug, Clone)]
pub struct Reader {
    state: State,
    max_message_bytes: usize,
}

/// A parsed frame header.
struct Header {
    flags: u8,
    len: u64,
    header_len: usize,
}

/// The header at the front of `input`, or how many bytes it needs.
fn header(input: &[u8]) -> Result<Result<Header, usize>, ProtocolError> {
    let Some(&flags) = input.first() else {
        return Ok(Err(1));
    };
    if flags & RESERVED_FLAGS != 0 {
        return Err(ProtocolError::BadFlags(flags));
    }
    if flags & FLAG_LONG != 0 {
        let Some(bytes) = input.get(1..9) else {
            return Ok(Err(9));
        };
        let len = u64::from_be_bytes(bytes.try_into().expect("eight bytes"));
        Ok(Ok(Header {
            flags,
            len,
            header_len: 9,
        }))
    } else {
        let Some(&len) = input.get(1) else {
            return Ok(Err(2));
        };
        Ok(Ok(Header {
            flags,
            len: u64::from(len),
            header_len: 2,
        }))
    }
}

impl Reader {
    /// A reader for a new connection: it expects the peer's greeting first.
    pub fn new(max_message_bytes: usize) -> Reader {
        Reader {
            state: State::Greeting,
            max_message_bytes,
        }
    }

    /// The most bytes [`Step::More`] ever asks for: a whole message of the largest size with
    /// the most frame headers, or the largest command.
    pub fn max_buffer(&self) -> usize {
        let headers = MAX_FRAMES as usize * 9;
        (self.max_message_bytes + headers).max(MAX_COMMAND_BYTES + 9 + 256)
    }

    /// Looks at the front of `input` (the bytes buffered and not yet consumed) and returns
    /// how many of them it consumed and what they held. Call it again with the rest (after
    /// dropping the consumed bytes) until it says [`Step::More`].
    pub fn step<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Step<'a>), ProtocolError> {
        match &mut self.state {
            State::Greeting => {
                greeting(input)?;
                if input.len() < GREETING_LEN {
                    return Ok((0, Step::More { need: GREETING_LEN }));
                }
                self.state = State::Frames(Progress::default());
                Ok((GREETING_LEN, Step::Greeting))
            }
            State::Discarding { frame_left, more } => {
                if *frame_left > 0 {
                    if input.is_empty() {
                        return Ok((0, Step::More { need: 1 }));
                    }
                    let n =
                        usize::try_from(*frame_left).map_or(input.len(), |l| l.min(input.len()));
                    *frame_left -= n as u64;
                    return Ok((n, Step::Skipped));
                }
                if !*more {
                    self.state = State::Frames(Progress::default());
                    return self.step(input);
                }
                // The next frame of the oversized message: skip its body too.
                let h = match header(input)? {
                    Ok(h) => h,
                    Err(need) => return Ok((0, Step::More { need })),
                };
                if h.flags & FLAG_COMMAND != 0 {
                    return Err(ProtocolError::CommandInMessage);
                }
                *frame_left = h.len;
                *more = h.flags & FLAG_MORE != 0;
                Ok((h.header_len, Step::Skipped))
            }
            State::Frames(p) => {
                let max = self.max_message_bytes as u64;
                loop {
                    let rest = &input[p.scanned..];
                    let h = match header(rest)? {
                        Ok(h) => h,
                        Err(need) => {
                            return Ok((
                                0,
                                Step::More {
                                    need: p.scanned + need,
                                },
                            ))
                        }
                    };
                    if h.flags & FLAG_COMMAND != 0 {
                        if p.frames > 0 {
                            return Err(ProtocolError::CommandInMessage);
                        }
                        if h.len > MAX_COMMAND_BYTES as u64 {
                            return Err(ProtocolError::CommandTooLarge(h.len));
                        }
                        let end = h.header_len + h.len as usize;
                        if input.len() < end {
                            return Ok((0, Step::More { need: end }));
                        }
                        let (name, data) = command(&input[h.header_len..end])?;
                        return Ok((end, Step::Command { name, data }));
                    }
                    let body_bytes = p.body_bytes.saturating_add(h.len);
                    if body_bytes > max || p.frames + 1 > MAX_FRAMES {
                        // Drop the frames seen so far and this header; skip the rest.
                        let consumed = p.scanned + h.header_len;
                        self.state = State::Discarding {
                            frame_left: h.len,
                            more: h.flags & FLAG_MORE != 0,
                        };
                        return Ok((consumed, Step::TooLarge));
                    }
                    // Fits in usize: it is at most max_message_bytes.
                    let body_start = p.scanned + h.header_len;
                    let end = body_start + h.len as usize;
                    if input.len() < end {
                        return Ok((0, Step::More { need: end }));
                    }
                    if p.frames == 0 {
                        p.first = (body_start, end);
                    }
                    p.last = (body_start, end);
                    p.frames += 1;
                    p.body_bytes = body_bytes;
                    p.scanned = end;
                    if h.flags & FLAG_MORE == 0 {
                        let done = std::mem::take(p);
                        return Ok((
                            done.scanned,
                            Step::Message {
                                first: &input[done.first.0..done.first.1],
                                last: &input[done.last.0..done.last.1],
                            },
                        ));
                    }
                }
            }
        }
    }
}

/// Checks as much of a greeting as `input` holds, so that a peer that is not speaking ZMTP
/// is refused at its first wrong byte rather than after a timeout.
fn greeting(input: &[u8]) -> Result<(), ProtocolError> {
    if input.first().is_some_and(|&b| b != 0xff) {
        return Err(ProtocolError::BadSignature);
    }
    if input.get(9).is_some_and(|&b| b & 0x01 == 0) {
        return Err(ProtocolError::BadSignature);
    }
    if let Some(&major) = input.get(10) {
        if major < 3 {
            return Err(ProtocolError::UnsupportedVersion(major));
        }
    }
    if let Some(mechanism) = input.get(12..32) {
        let name: Vec<u8> = mechanism.iter().copied().take_while(|&b| b != 0).collect();
        if name != b"NULL" {
            return Err(ProtocolError::UnsupportedMechanism(
                String::from_utf8_lossy(&name).into_owned(),
            ));
        }
    }
    Ok(())
}

/// Splits a command body into its name and data.
fn command(body: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let (&len, rest) = body
        .split_first()
        .ok_or(ProtocolError::BadCommand("empty command"))?;
    let len = usize::from(len);
    if len == 0 || rest.len() < len {
        return Err(ProtocolError::BadCommand("command name"));
    }
    Ok(rest.split_at(len))
}

/// One metadata property of a READY command: its name and value.
pub type Property<'a> = (&'a [u8], &'a [u8]);

/// The properties of a READY command's metadata.
pub fn properties(mut data: &[u8]) -> Result<Vec<Property<'_>>, ProtocolError> {
    let mut out = Vec::new();
    while let Some((&name_len, rest)) = data.split_first() {
        let name_len = usize::from(name_len);
        if rest.len() < name_len + 4 {
            return Err(ProtocolError::BadCommand("property name"));
        }
        let (name, rest) = rest.split_at(name_len);
        let (size, rest) = rest.split_at(4);
        let size = u32::from_be_bytes(size.try_into().expect("four bytes")) as usize;
        if rest.len() < size {
            return Err(ProtocolError::BadCommand("property value"));
        }
        let (value, rest) = rest.split_at(size);
        out.push((name, value));
        data = rest;
    }
    Ok(out)
}

/// The socket type a READY command's metadata announces (empty when it names none).
pub fn socket_type(ready: &[u8]) -> Result<&[u8], ProtocolError> {
    Ok(properties(ready)?
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"Socket-Type"))
        .map(|(_, v)| v)
        .unwrap_or_default())
}

// ---- what this side writes ----

/// This side's greeting: ZMTP 3.0, NULL mechanism. 3.0 rather than 3.1, so that every peer
/// (libzmq 4.x, zmq.rs) takes subscriptions as messages, the form both understand.
pub fn our_greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// Appends one frame (a command when `command`) with body `body` to `out`.
pub fn write_frame(out: &mut Vec<u8>, body: &[u8], command: bool, more: bool) {
    let mut flags = 0;
    if command {
        flags |= FLAG_COMMAND;
    }
    if more {
        flags |= FLAG_MORE;
    }
    if body.len() > 255 {
        out.push(flags | FLAG_LONG);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
}

/// A READY command announcing `socket_type` (`PULL`, `SUB`).
pub fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(32);
    body.push(5);
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    let mut out = Vec::with_capacity(body.len() + 2);
    write_frame(&mut out, &body, true, false);
    out
}

/// A PONG answering a PING whose data is `ping` (a 2-byte TTL, then the context to echo).
pub fn pong(ping: &[u8]) -> Vec<u8> {
    let context = ping.get(2..).unwrap_or_default();
    let context = &context[..context.len().min(16)];
    let mut body = Vec::with_capacity(5 + context.len());
    body.push(4);
    body.extend_from_slice(b"PONG");
    body.extend_from_slice(context);
    let mut out = Vec::with_capacity(body.len() + 2);
    write_frame(&mut out, &body, true, false);
    out
}

/// A subscription to `topic`, as a SUB socket sends it to a ZMTP 3.0 PUB.
pub fn subscribe(topic: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + 1);
    body.push(1);
    body.extend_from_slice(topic);
    let mut out = Vec::with_capacity(body.len() + 9);
    write_frame(&mut out, &body, false, false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting_bytes() -> Vec<u8> {
        our_greeting().to_vec()
    }

    fn frame(body: &[u8], more: bool) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, body, false, more);
        out
    }

    /// What a reader makes of `input` when it arrives in pieces of `chunk` bytes, as a
    /// connection would see it: every message, `None` for each oversized one.
    fn read_all(
        input: &[u8],
        max: usize,
        chunk: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, ProtocolError> {
        let mut reader = Reader::new(max);
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            loop {
                let (consumed, step) = reader.step(&buf)?;
                let need = match step {
                    Step::More { need } => Some(need),
                    Step::Message { last, .. } => {
                        out.push(Some(last.to_vec()));
                        None
                    }
                    Step::TooLarge => {
                        out.push(None);
                        None
                    }
                    Step::Greeting | Step::Skipped | Step::Command { .. } => None,
                };
                buf.drain(..consumed);
                if let Some(need) = need {
                    assert!(need <= reader.max_buffer(), "asked for {need} bytes");
                    assert!(need > buf.len(), "asked for bytes it has");
                    break;
                }
            }
            if fed == input.len() {
                return Ok(out);
            }
            let n = chunk.min(input.len() - fed);
            buf.extend_from_slice(&input[fed..fed + n]);
            fed += n;
        }
    }

    #[test]
    fn messages_arrive_whole_in_any_pieces() {
        let mut input = greeting_bytes();
        input.extend(frame(b"one", false));
        input.extend(frame(b"topic", true));
        input.extend(frame(&[7u8; 300], false));
        input.extend(frame(b"", false));
        for chunk in [1, 2, 3, 7, 64, 1000] {
            let got = read_all(&input, 1000, chunk).unwrap();
            assert_eq!(
                got,
                vec![Some(b"one".to_vec()), Some(vec![7u8; 300]), Some(vec![])],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn an_oversized_message_is_skipped_and_the_next_one_read() {
        let mut input = greeting_bytes();
        input.extend(frame(b"before", false));
        input.extend(frame(&[1u8; 600], true)); // 600 + 500 > 1000: too large
        input.extend(frame(&[2u8; 500], true));
        input.extend(frame(&[3u8; 10], false));
        input.extend(frame(&[4u8; 1001], false)); // too large alone
        input.extend(frame(b"after", false));
        for chunk in [1, 5, 64, 4096] {
            let got = read_all(&input, 1000, chunk).unwrap();
            assert_eq!(
                got,
                vec![
                    Some(b"before".to_vec()),
                    None,
                    None,
                    Some(b"after".to_vec())
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_huge_claimed_length_asks_for_nothing() {
        let mut reader = Reader::new(1 << 20);
        let mut input = greeting_bytes();
        input.push(FLAG_LONG);
        input.extend_from_slice(&(1u64 << 50).to_be_bytes());
        let (n, step) = reader.step(&input).unwrap();
        assert_eq!((n, step), (GREETING_LEN, Step::Greeting));
        let (n, step) = reader.step(&input[GREETING_LEN..]).unwrap();
        assert_eq!((n, step), (9, Step::TooLarge));
        let (n, step) = reader.step(&[0u8; 4096]).unwrap();
        assert_eq!((n, step), (4096, Step::Skipped));
        let (n, step) = reader.step(&[]).unwrap();
        assert_eq!((n, step), (0, Step::More { need: 1 }));
    }

    #[test]
    fn too_many_frames_is_too_large() {
        let mut input = greeting_bytes();
        for _ in 0..MAX_FRAMES + 5 {
            input.extend(frame(b"", true));
        }
        input.extend(frame(b"", false));
        input.extend(frame(b"ok", false));
        let got = read_all(&input, 1000, 4096).unwrap();
        assert_eq!(got, vec![None, Some(b"ok".to_vec())]);
    }

    #[test]
    fn bad_greetings_are_refused_at_the_first_wrong_byte() {
        let r = |bytes: &[u8]| Reader::new(10).step(bytes).map(|(n, _)| n);
        assert_eq!(r(b"G"), Err(ProtocolError::BadSignature));
        let mut g = greeting_bytes();
        g[9] = 0x7e;
        assert_eq!(r(&g[..10]), Err(ProtocolError::BadSignature));
        let mut g = greeting_bytes();
        g[10] = 1;
        assert_eq!(r(&g[..11]), Err(ProtocolError::UnsupportedVersion(1)));
        let mut g = greeting_bytes();
        g[12..17].copy_from_slice(b"CURVE");
        assert!(matches!(r(&g), Err(ProtocolError::UnsupportedMechanism(m)) if m == "CURVE"));
        assert_eq!(r(&greeting_bytes()[..20]), Ok(0));
    }

    #[test]
    fn commands_are_parsed_and_bounded() {
        let mut input = greeting_bytes();
        input.extend(ready("PUSH"));
        let mut reader = Reader::new(100);
        let (n, _) = reader.step(&input).unwrap();
        let (_, step) = reader.step(&input[n..]).unwrap();
        let Step::Command { name, data } = step else {
            panic!("{step:?}")
        };
        assert_eq!(name, b"READY");
        assert_eq!(
            properties(data).unwrap(),
            vec![(&b"Socket-Type"[..], &b"PUSH"[..])]
        );
        let mut huge = vec![FLAG_COMMAND | FLAG_LONG];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(
            reader.step(&huge),
            Err(ProtocolError::CommandTooLarge(1 << 40))
        );
        assert_eq!(reader.step(&[0x80, 0]), Err(ProtocolError::BadFlags(0x80)));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const LIMIT: usize = 1000;

        /// A message: its frames' sizes (bodies are filled with the frame's index).
        fn message() -> impl Strategy<Value = Vec<usize>> {
            prop_oneof![
                4 => prop::collection::vec(0usize..300, 1..4),
                1 => prop::collection::vec(0usize..1200, 1..3),
                1 => prop::collection::vec(0usize..2, 1..1100),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// Whatever the messages and however the bytes are split, each message comes
            /// out whole, or as too large exactly when its frames add up past the limit.
            #[test]
            fn messages_come_out_whole_or_as_too_large(
                messages in prop::collection::vec(message(), 1..12),
                chunk in 1usize..5000,
            ) {
                let mut input = our_greeting().to_vec();
                let mut expected = Vec::new();
                for frames in &messages {
                    for (i, size) in frames.iter().enumerate() {
                        let more = i + 1 < frames.len();
                        input.extend(frame(&vec![i as u8; *size], more));
                    }
                    input.extend(pong(b"\0\0ctx"));
                    let total: usize = frames.iter().sum();
                    expected.push(if total > LIMIT || frames.len() > MAX_FRAMES as usize {
                        None
                    } else {
                        let last = frames.len() - 1;
                        Some(vec![last as u8; frames[last]])
                    });
                }
                prop_assert_eq!(read_all(&input, LIMIT, chunk).unwrap(), expected);
            }

            /// Any bytes after a greeting: no panic, never a request for more than the
            /// bound, always progress (the harness checks both).
            #[test]
            fn arbitrary_bytes_never_make_it_ask_for_more_than_the_bound(
                bytes in prop::collection::vec(any::<u8>(), 0..4096),
                chunk in 1usize..512,
            ) {
                let mut input = our_greeting().to_vec();
                input.extend(bytes);
                let _ = read_all(&input, LIMIT, chunk);
            }
        }
    }
}
