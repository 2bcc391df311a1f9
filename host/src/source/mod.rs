//! Sources: where messages enter the pipeline. Each source decodes messages into records and
//! sends them on in batches; a source with one consumer sends the messages as they came
//! ([`Messages`]) and the consumer's worker decodes them.

pub mod zmq;
pub mod zmtp;

use std::sync::Arc;

use abi_stable::std_types::{RArc, RVec};
use plugin_api::{JsonError, Record, Value};

use crate::{
    accounting::{add_to_runs, Envelope, Facts, Lineage},
    config::Decode,
};

/// Why a message could not become a record. Each is counted as a failed message under its
/// own error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    TooLarge,
    Empty,
    Json(JsonError),
}

impl DecodeError {
    pub fn error_type(self) -> &'static str {
        match self {
            DecodeError::TooLarge => "message_too_large",
            DecodeError::Empty => "empty_message",
            DecodeError::Json(e) => e.error_type(),
        }
    }
}

/// Turns one message payload into a record, with what the host knows of the message: its
/// `id`, its size (the payload's) and when it was received. A JSON record is made with them
/// (changing it after would cost a check of its handle through abi_stable per message).
pub fn decode(
    payload: &[u8],
    decode: Decode,
    max_bytes: usize,
    id: u64,
    received_at_ns: u64,
) -> Result<Record, DecodeError> {
    if payload.len() > max_bytes {
        return Err(DecodeError::TooLarge);
    }
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    match decode {
        Decode::Json => {
            Record::from_json_with_origin(payload, id, received_at_ns).map_err(DecodeError::Json)
        }
        Decode::Raw => {
            let value = match std::str::from_utf8(payload) {
                Ok(text) => Value::from(text),
                Err(_) => Value::Bytes(payload.to_vec()),
            };
            let mut record: Record = [("message", value)].into_iter().collect();
            record.set_origin(id, payload.len() as u64, received_at_ns);
            Ok(record)
        }
    }
}

/// Messages read and admitted, not decoded yet: their bytes one after the other in one
/// buffer. Handing these to the one consumer of a source, rather than records, moves one
/// sequential buffer between threads instead of three allocations per message, and the
/// records are then made (and later freed) on the thread that reads them: in the source's
/// thread's cache they would have to travel to the consumer's core, a miss at a time.
pub struct Messages {
    bytes: Vec<u8>,
    /// Per message: where it ends in `bytes`, and when it was received.
    ends: Vec<(usize, u64)>,
    decode: Decode,
    max_bytes: usize,
    /// The id of the first message; the others follow in order.
    first_id: u64,
    lineage: Arc<Lineage>,
}

/// A batch a source gathers is handed on once its payloads reach this many bytes, whatever
/// its `batch_size`: 512 messages of 1 MiB would otherwise be gathered whole per connection.
pub const BATCH_BYTES: usize = 4 << 20;

/// Messages being gathered by a source, before they are admitted.
#[derive(Default)]
pub struct MessageBuffer {
    bytes: Vec<u8>,
    ends: Vec<(usize, u64)>,
    /// The bytes and messages of the last buffer taken from here, which the next one is
    /// sized like: growing each batch's buffer step by step from small copies it each time.
    last: (usize, usize),
}

impl MessageBuffer {
    /// A batch of large messages does not make every later batch reserve as much up front.
    const MAX_PRESIZE: usize = 4 << 20;

    /// Makes room, in an empty buffer, for as much as the last batch held (an eighth more,
    /// up to [`MessageBuffer::MAX_PRESIZE`] bytes), and at least for `messages` like
    /// `payload`.
    pub fn reserve_like(&mut self, payload: &[u8], messages: usize) {
        let (last_bytes, last_messages) = self.last;
        let like_last = (last_bytes + last_bytes / 8).min(Self::MAX_PRESIZE);
        self.bytes.reserve(like_last.max(payload.len() * messages));
        self.ends
            .reserve((last_messages + last_messages / 8).max(messages));
    }

    /// The messages gathered so far, leaving this buffer empty (and remembering their size).
    pub fn take(&mut self) -> MessageBuffer {
        self.last = (self.bytes.len(), self.ends.len());
        MessageBuffer {
            bytes: std::mem::take(&mut self.bytes),
            ends: std::mem::take(&mut self.ends),
            last: self.last,
        }
    }

    pub fn push(&mut self, payload: &[u8], received_at_ns: u64) {
        self.bytes.extend_from_slice(payload);
        self.ends.push((self.bytes.len(), received_at_ns));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The payloads' bytes gathered so far.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The messages, admitted as `first_id..` in `lineage`, to be decoded as `decode` says.
    pub fn admitted(
        self,
        decode: Decode,
        max_bytes: usize,
        first_id: u64,
        lineage: Arc<Lineage>,
    ) -> Messages {
        Messages {
            bytes: self.bytes,
            ends: self.ends,
            decode,
            max_bytes,
            first_id,
            lineage,
        }
    }
}

impl Messages {
    /// Decodes every message into a record (with its id, size and receive time); one that
    /// cannot be decoded fails in the lineage with its error type.
    pub fn decode(self) -> Envelope {
        let mut records = RVec::with_capacity(self.ends.len());
        let mut ids = Vec::with_capacity(self.ends.len());
        let mut received: Vec<(u64, u64)> = Vec::new();
        let mut start = 0;
        for (i, &(end, at)) in self.ends.iter().enumerate() {
            let payload = &self.bytes[start..end];
            start = end;
            let id = self.first_id + i as u64;
            match decode(payload, self.decode, self.max_bytes, id, at) {
                Ok(record) => {
                    records.push(record);
                    ids.push(id);
                    add_to_runs(&mut received, at);
                }
                Err(e) => self.lineage.failed(id, e.error_type()),
            }
        }
        Envelope {
            records: RArc::new(records),
            lineage: self.lineage,
            facts: Arc::new(Facts::known(ids.into(), received.into())),
        }
    }

    pub fn fail_all(&self, error_type: &str) {
        for i in 0..self.ends.len() {
            self.lineage.failed(self.first_id + i as u64, error_type);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_message_has_its_own_error_type() {
        let d = |p: &[u8]| {
            decode(p, Decode::Json, 64, 1, 2)
                .map(|_| ())
                .map_err(DecodeError::error_type)
        };
        assert_eq!(d(br#"{"a":1}"#), Ok(()));
        assert_eq!(d(b"{\"a\":\"\xff\"}"), Err("invalid_utf8"));
        assert_eq!(d(b"{\"a\":"), Err("invalid_json"));
        assert_eq!(d(b"[1,2]"), Err("not_an_object"));
        assert_eq!(d(&[b' '; 65]), Err("message_too_large"));
        assert_eq!(d(b""), Err("empty_message"));
        assert_eq!(d(br#"{"a":1,"a":2}"#), Err("duplicate_key"));
        assert_eq!(
            d(br#"{"a":18446744073709551617}"#),
            Err("number_out_of_range")
        );
    }

    #[test]
    fn a_batch_buffer_starts_at_the_size_of_the_last_one_up_to_a_cap() {
        let mut buffer = MessageBuffer::default();
        let payload = [b'x'; 100];
        for _ in 0..1000 {
            buffer.push(&payload, 0);
        }
        let taken = buffer.take();
        assert_eq!((taken.len(), buffer.len()), (1000, 0));
        buffer.reserve_like(&payload, 64);
        assert!(
            buffer.bytes.capacity() >= 100_000,
            "{}",
            buffer.bytes.capacity()
        );
        assert!(buffer.ends.capacity() >= 1000, "{}", buffer.ends.capacity());

        // A batch of large messages: the next buffer is not reserved as large.
        let large = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            buffer.push(&large, 0);
        }
        buffer.take();
        buffer.reserve_like(&payload, 64);
        let reserved = buffer.bytes.capacity();
        assert!(
            (MessageBuffer::MAX_PRESIZE..2 * MessageBuffer::MAX_PRESIZE).contains(&reserved),
            "{reserved}"
        );
    }

    #[test]
    fn a_record_carries_its_message_id_size_receive_time_and_trace() {
        let traced =
            br#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","a":1}"#;
        for (payload, how) in [(&traced[..], Decode::Json), (&traced[..], Decode::Raw)] {
            let r = decode(payload, how, 1024, 7, 42).unwrap();
            assert_eq!(
                (r.id(), r.size_bytes(), r.received_at_ns()),
                (7, payload.len() as u64, 42),
                "{how:?}"
            );
            // Trace context is read from JSON fields; a raw message has none.
            assert_eq!(r.trace().is_some(), how == Decode::Json, "{how:?}");
        }
        let plain = decode(br#"{"a":1}"#, Decode::Json, 64, 8, 43).unwrap();
        assert_eq!(
            (plain.id(), plain.size_bytes(), plain.trace()),
            (8, 7, None)
        );
    }

    #[test]
    fn raw_keeps_text_or_bytes() {
        let r = decode(b"hello", Decode::Raw, 64, 1, 2).unwrap();
        assert_eq!(r.get("message").and_then(|v| v.as_str()), Some("hello"));
        let r = decode(b"\xff", Decode::Raw, 64, 1, 2).unwrap();
        assert!(matches!(
            r.get("message").map(|v| v.kind()),
            Some(plugin_api::ValueKind::Bytes(_))
        ));
    }
}
