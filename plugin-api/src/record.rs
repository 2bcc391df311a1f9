//! [`Record`]: one message's fields, plus what the host knows about the message.
//!
//! A record is a handle on shared, immutable data: cloning one (a fan-out hands each branch
//! the same records) costs a reference count, not a copy. The first change a stage makes to
//! a record that another branch also holds copies it for that stage alone (copy on write), so
//! one branch never changes what another sees, and a branch that only reads never pays for a
//! copy.

use std::fmt;

use abi_stable::{std_types::RArc, StableAbi};
use serde::{Serialize, Serializer};

use crate::value::{Map, Value};

/// W3C trace context: the trace and the span a record belongs to.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// A context; `None` when either id is all zeros (invalid in W3C trace context).
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<TraceContext> {
        let ctx = TraceContext {
            trace_id,
            span_id,
            flags,
        };
        ctx.is_valid().then_some(ctx)
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller sampled the trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.span_id != [0; 8]
    }

    /// Parses a W3C `traceparent` value: `00-<32 hex trace id>-<16 hex span id>-<2 hex
    /// flags>`. Versions other than `00` are read by the same rules (as the spec asks), as long
    /// as the first four fields have this shape.
    pub fn from_traceparent(text: &str) -> Option<TraceContext> {
        let mut parts = text.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flag = [0u8; 1];
        hex_into(trace, &mut trace_id)?;
        hex_into(span, &mut span_id)?;
        hex_into(flags, &mut flag)?;
        TraceContext::new(trace_id, span_id, flag[0])
    }

    /// The `traceparent` form of this context (version 00).
    pub fn to_traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        hex_out(&self.trace_id, &mut out);
        out.push('-');
        hex_out(&self.span_id, &mut out);
        out.push('-');
        hex_out(&[self.flags], &mut out);
        out
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_traceparent())
    }
}

/// Lower-case hex only, as W3C trace context requires.
fn hex_into(text: &str, out: &mut [u8]) -> Option<()> {
    let bytes = text.as_bytes();
    if bytes.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(bytes[2 * i])? << 4 | digit(bytes[2 * i + 1])?;
    }
    Some(())
}

fn hex_out(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// What the host knows about the message a record came from.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Default, Debug)]
struct RecordMeta {
    id: u64,
    size_bytes: u64,
    received_at_ns: u64,
    trace: TraceContext,
    /// A fixture built with another record layout (a change that needs a new 0.x) has this.
    #[cfg(feature = "__compat_other_record_layout")]
    added: u64,
}

#[repr(C)]
#[derive(StableAbi, Clone)]
struct RecordData {
    meta: RecordMeta,
    fields: Map,
}

/// One record: a map of fields plus the host's facts about its message.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct Record {
    data: RArc<RecordData>,
}

impl Default for Record {
    fn default() -> Record {
        Record::from_map(Map::new())
    }
}

impl Record {
    /// An empty record, from no message (id 0).
    pub fn new() -> Record {
        Record::default()
    }

    /// A record holding `fields`, from no message (id 0).
    pub fn from_map(fields: Map) -> Record {
        Record {
            data: RArc::new(RecordData {
                meta: RecordMeta::default(),
                fields,
            }),
        }
    }

    /// An empty record that counts as coming from the same message as `self` (same id and
    /// trace context): what a stage that makes new records from old ones should build on, so
    /// that the message is still accounted for.
    pub fn derived(&self) -> Record {
        self.derived_with(Map::new())
    }

    /// A record holding `fields` that counts as coming from the same message as `self`.
    pub fn derived_with(&self, fields: Map) -> Record {
        Record {
            data: RArc::new(RecordData {
                meta: self.data.meta,
                fields,
            }),
        }
    }

    /// The message's sequence number in this host; 0 for records no message produced.
    pub fn id(&self) -> u64 {
        self.data.meta.id
    }

    /// The size of the original message on the wire, in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.data.meta.size_bytes
    }

    /// When the source received the message, in nanoseconds since the Unix epoch.
    pub fn received_at_ns(&self) -> u64 {
        self.data.meta.received_at_ns
    }

    /// The trace the message belongs to: from its `traceparent` field, or set by a stage.
    pub fn trace(&self) -> Option<TraceContext> {
        let t = self.data.meta.trace;
        t.is_valid().then_some(t)
    }

    pub fn set_trace(&mut self, trace: TraceContext) {
        self.data_mut().meta.trace = trace;
    }

    /// Sets what the host knows of the message. For hosts (and tests): the host relies on
    /// ids to account for every message, so a stage must never change them.
    #[doc(hidden)]
    pub fn set_origin(&mut self, id: u64, size_bytes: u64, received_at_ns: u64) {
        let meta = &mut self.data_mut().meta;
        meta.id = id;
        meta.size_bytes = size_bytes;
        meta.received_at_ns = received_at_ns;
    }

    /// The fields.
    #[inline]
    pub fn fields(&self) -> &Map {
        &self.data.fields
    }

    /// The fields, to change: copies the record first if another branch holds it too.
    #[inline]
    pub fn fields_mut(&mut self) -> &mut Map {
        &mut self.data_mut().fields
    }

    fn data_mut(&mut self) -> &mut RecordData {
        RArc::make_mut(&mut self.data)
    }

    /// Whether another handle (another branch of a fan-out) shares this record's data.
    pub fn is_shared(&self) -> bool {
        RArc::strong_count(&self.data) > 1
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.data.fields.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.fields_mut().get_mut(key)
    }

    pub fn insert(&mut self, key: &str, value: impl Into<Value>) {
        self.fields_mut().insert(key, value);
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        if !self.data.fields.contains_key(key) {
            return None;
        }
        self.fields_mut().remove(key)
    }

    /// Renames field `from` to `to` in place (see [`Map::rename`]).
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        if !self.data.fields.contains_key(from) {
            return false;
        }
        self.fields_mut().rename(from, to)
    }

    pub fn len(&self) -> usize {
        self.data.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.fields.is_empty()
    }

    /// The fields, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.data.fields.iter()
    }
}

impl PartialEq for Record {
    /// Records are equal when their fields are; what the host knows of their messages is not
    /// compared.
    fn eq(&self, other: &Record) -> bool {
        self.data.fields == other.data.fields
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("id", &self.id())
            .field("fields", &self.data.fields)
            .finish()
    }
}

/// A record serializes as its fields, as a JSON object.
impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.data.fields.serialize(s)
    }
}

impl<K: AsRef<str>, V: Into<Value>> FromIterator<(K, V)> for Record {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Record {
        Record::from_map(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_to_a_shared_record_is_seen_by_its_changer_only() {
        let original: Record = [("level", "info")].into_iter().collect();
        let mut branch = original.clone();
        assert!(original.is_shared() && branch.is_shared());
        branch.insert("level", "debug");
        assert_eq!(original.get("level").and_then(Value::as_str), Some("info"));
        assert_eq!(branch.get("level").and_then(Value::as_str), Some("debug"));
        assert!(!original.is_shared());
    }

    #[test]
    fn derived_records_keep_the_message_and_its_trace() {
        let mut r = Record::new();
        r.set_origin(7, 100, 1);
        let t = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap();
        r.set_trace(t);
        let d = r.derived();
        assert_eq!((d.id(), d.trace()), (7, Some(t)));
        assert!(t.sampled());
        assert_eq!(
            t.to_traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn bad_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::from_traceparent(bad), None, "{bad:?}");
        }
        // A later version may append fields.
        assert!(TraceContext::from_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        )
        .is_some());
    }
}
