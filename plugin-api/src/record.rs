//! [`Record`]: one message's fields, plus what the host knows about the message.
//!
//! A record is a handle on shared, immutable data: cloning one (a fan-out hands each branch
//! the same records) costs a reference count, not a copy. The first change a stage makes to a
//! record that another branch also holds copies it for that stage alone (copy on write), so
//! one branch never changes what another sees, and a branch that only reads never pays for a
//! copy.
//!
//! The fields are kept flat, private to this crate: a table of small entries in document
//! order (a map or list is followed by its children) and one buffer holding every key and
//! string. Decoding a message fills both in one pass, three allocations whatever the number of
//! fields; reading hands out views ([`ValueRef`]) into them; copying a record for a writer is
//! two `memcpy`s. A kind of value a later release adds is stored with its JSON text, so an
//! older library passes it on and writes it out unchanged.

use std::fmt;

use abi_stable::{
    std_types::{RArc, RVec},
    StableAbi,
};
use serde::{Serialize, Serializer};

use crate::value::{IntoValue, Map, MapRef, Value, ValueRef, ValueWriter};

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
pub(crate) struct RecordMeta {
    id: u64,
    size_bytes: u64,
    received_at_ns: u64,
    trace: TraceContext,
    /// A fixture built with another record layout (a change that needs a new 0.x) has this.
    #[cfg(feature = "__compat_other_record_layout")]
    added: u64,
}

impl RecordMeta {
    /// What a source knows of a message it read (see [`Record::set_origin`]).
    pub(crate) fn origin(id: u64, size_bytes: u64, received_at_ns: u64) -> RecordMeta {
        RecordMeta {
            id,
            size_bytes,
            received_at_ns,
            ..RecordMeta::default()
        }
    }
}

/// One value in a record's table. Keys and strings live in the record's byte buffer.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Entry {
    pub(crate) key_off: u32,
    /// 0 for list items (and the record's top level has no entry of its own).
    pub(crate) key_len: u32,
    /// Str, Bytes and kinds added later: byte length; List, Map: number of children.
    pub(crate) len: u32,
    /// Entries below this one (its children and theirs); 0 for scalars.
    pub(crate) subtree: u32,
    /// Int: the value; Float: its bits; Bool: 0 or 1; Str, Bytes and kinds added later: the
    /// offset of their bytes (for later kinds, their JSON text).
    pub(crate) payload: u64,
    pub(crate) tag: u8,
    pub(crate) flags: u8,
    /// Unused (zero): room for a later 0.x. Plain integers rather than a byte array,
    /// which compilers fill through the stack, a store-forwarding stall per entry.
    pub(crate) reserved: u16,
    /// Since 0.2.2: a key or string whose bytes end at or below this offset of the record's
    /// buffer is one the decoder read without escapes, and is written as it is
    /// ([`Record::write_json`]). The decoder copies the message's text to the start of the
    /// buffer, points such keys and strings into it and sets this to the text's length;
    /// everything else writes 0 (unknown). It stays true whatever a library of any 0.2
    /// release does: a buffer only grows and its bytes never change, every key or string a
    /// library adds is appended past the end (so past the bound), and an entry copied or
    /// given another key keeps a bound that is still true of the same buffer. (Its name is
    /// the one 0.2.0 gave the field, which the layout check compares.)
    pub(crate) reserved_wide: u32,
}

impl Entry {
    pub(crate) const NULL: u8 = 0;
    pub(crate) const BOOL: u8 = 1;
    pub(crate) const INT: u8 = 2;
    pub(crate) const FLOAT: u8 = 3;
    pub(crate) const STR: u8 = 4;
    pub(crate) const BYTES: u8 = 5;
    pub(crate) const LIST: u8 = 6;
    pub(crate) const MAP: u8 = 7;

    #[inline]
    pub(crate) fn new(tag: u8, key: (u32, u32), len: u32, payload: u64) -> Entry {
        Entry {
            key_off: key.0,
            key_len: key.1,
            len,
            subtree: 0,
            payload,
            tag,
            flags: 0,
            reserved: 0,
            reserved_wide: 0,
        }
    }
}

/// A record's table and buffer, borrowed: what views read. Every access is bounds-checked,
/// so a table some library got wrong reads as missing values, never out of bounds.
#[derive(Clone, Copy)]
pub(crate) struct Tape<'a> {
    pub(crate) entries: &'a [Entry],
    pub(crate) bytes: &'a [u8],
}

impl<'a> Tape<'a> {
    #[inline]
    pub(crate) fn bytes_at(&self, off: u64, len: u32) -> &'a [u8] {
        usize::try_from(off)
            .ok()
            .and_then(|off| self.bytes.get(off..off.checked_add(len as usize)?))
            .unwrap_or_default()
    }

    #[inline]
    pub(crate) fn str_at(&self, off: u64, len: u32) -> &'a str {
        let bytes = self.bytes_at(off, len);
        // SAFETY: keys and `STR` values are only ever written by this crate (the table is
        // private to it, in every 0.2 release: a format invariant): by `TapeBuilder` from
        // `&str`, or by the JSON decoder as ranges of the message's text that it found to be
        // ASCII or checked as UTF-8 (`Scanner::string`); and `bytes_at` hands out exactly
        // such a range or none.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// Whether the entry at `at` has key `key`: lengths first, so most misses read no bytes.
    #[inline]
    pub(crate) fn key_is(&self, at: usize, key: &str) -> bool {
        self.entries.get(at).is_some_and(|e| {
            e.key_len as usize == key.len()
                && crate::same_bytes(
                    self.bytes_at(u64::from(e.key_off), e.key_len),
                    key.as_bytes(),
                )
        })
    }

    #[inline]
    pub(crate) fn key(&self, at: usize) -> &'a str {
        self.entries
            .get(at)
            .map_or("", |e| self.str_at(u64::from(e.key_off), e.key_len))
    }

    /// The indexes of `count` siblings starting at `first`, each past the subtree of the one
    /// before.
    #[inline]
    pub(crate) fn children(&self, first: usize, count: usize) -> impl Iterator<Item = usize> + 'a {
        let entries = self.entries;
        let mut next = first;
        (0..count).map_while(move |_| {
            let at = next;
            let e = entries.get(at)?;
            next = at + 1 + e.subtree as usize;
            Some(at)
        })
    }
}

#[repr(C)]
#[derive(StableAbi, Clone)]
struct RecordData {
    meta: RecordMeta,
    /// Top-level fields.
    fields: u32,
    entries: RVec<Entry>,
    bytes: RVec<u8>,
}

/// Converts a length or offset to the table's width; a record holds less than 4 GiB.
#[inline]
fn u32_of(n: usize) -> u32 {
    u32::try_from(n).expect("a record holds less than 4 GiB")
}

/// Builds a record's table and buffer: the decoder and [`Record::insert`] both write
/// through it.
pub(crate) struct TapeBuilder<'a> {
    pub(crate) entries: &'a mut RVec<Entry>,
    pub(crate) bytes: &'a mut RVec<u8>,
}

impl TapeBuilder<'_> {
    #[inline]
    pub(crate) fn push_bytes(&mut self, b: &[u8]) -> (u32, u32) {
        let off = u32_of(self.bytes.len());
        self.bytes.extend_from_copy_slice(b);
        (off, u32_of(b.len()))
    }

    #[inline]
    pub(crate) fn push(&mut self, entry: Entry) -> usize {
        let at = self.entries.len();
        if at == self.entries.capacity() {
            self.entries.reserve(at.max(8));
        }
        // SAFETY: `at` is the length and below the capacity (just reserved): the slot is
        // allocated and unused. Written in place: `RVec::push` takes the 32-byte entry by
        // value through a call, which costs a store-forwarding stall per entry.
        unsafe {
            self.entries.as_mut_ptr().add(at).write(entry);
            self.entries.set_len(at + 1);
        }
        at
    }

    /// Marks the entry at `at` (a list or map) as holding `children`, whose entries follow
    /// it to the end of the table.
    #[inline]
    pub(crate) fn close(&mut self, at: usize, children: usize) {
        let below = u32_of(self.entries.len() - at - 1);
        let e = &mut self.entries[at];
        e.len = u32_of(children);
        e.subtree = below;
    }

    /// Appends `value` under `key` (`(0, 0)` for a list item).
    pub(crate) fn value(&mut self, key: (u32, u32), value: &Value) {
        match value {
            Value::Null => {
                self.push(Entry::new(Entry::NULL, key, 0, 0));
            }
            Value::Bool(b) => {
                self.push(Entry::new(Entry::BOOL, key, 0, u64::from(*b)));
            }
            Value::Int(i) => {
                self.push(Entry::new(Entry::INT, key, 0, *i as u64));
            }
            Value::Float(f) => {
                self.push(Entry::new(Entry::FLOAT, key, 0, f.to_bits()));
            }
            Value::Str(s) => {
                let (off, len) = self.push_bytes(s.as_bytes());
                self.push(Entry::new(Entry::STR, key, len, u64::from(off)));
            }
            Value::Bytes(b) => {
                let (off, len) = self.push_bytes(b);
                self.push(Entry::new(Entry::BYTES, key, len, u64::from(off)));
            }
            Value::List(items) => {
                let at = self.push(Entry::new(Entry::LIST, key, 0, 0));
                for item in items {
                    self.value((0, 0), item);
                }
                self.close(at, items.len());
            }
            Value::Map(map) => {
                let at = self.push(Entry::new(Entry::MAP, key, 0, 0));
                for (k, v) in map.iter() {
                    let k = self.push_bytes(k.as_bytes());
                    self.value(k, v);
                }
                self.close(at, map.len());
            }
        }
    }
}

/// One record: fields plus the host's facts about its message.
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
        Record::with_meta(RecordMeta::default(), &fields)
    }

    fn with_meta(meta: RecordMeta, fields: &Map) -> Record {
        let mut entries = RVec::with_capacity(fields.len());
        let mut bytes = RVec::new();
        let mut b = TapeBuilder {
            entries: &mut entries,
            bytes: &mut bytes,
        };
        for (k, v) in fields.iter() {
            let k = b.push_bytes(k.as_bytes());
            b.value(k, v);
        }
        Record::from_parts(meta, u32_of(fields.len()), entries, bytes)
    }

    /// A record of a decoded message (the table and buffer the decoder filled): `meta`, with
    /// `trace` if it has one.
    pub(crate) fn decoded(
        mut meta: RecordMeta,
        trace: Option<TraceContext>,
        fields: usize,
        entries: RVec<Entry>,
        bytes: RVec<u8>,
    ) -> Record {
        if let Some(t) = trace {
            meta.trace = t;
        }
        Record::from_parts(meta, u32_of(fields), entries, bytes)
    }

    fn from_parts(meta: RecordMeta, fields: u32, entries: RVec<Entry>, bytes: RVec<u8>) -> Record {
        Record {
            data: RArc::new(RecordData {
                meta,
                fields,
                entries,
                bytes,
            }),
        }
    }

    /// An empty record that counts as coming from the same message as `self` (same id and
    /// trace context): what a stage that makes new records from old ones should build on, so
    /// that the message is still accounted for.
    pub fn derived(&self) -> Record {
        // Room for a few fields, as a stage that builds one field by field will add.
        Record::from_parts(
            self.data.meta,
            0,
            RVec::with_capacity(8),
            RVec::with_capacity(128),
        )
    }

    /// A record holding `fields` that counts as coming from the same message as `self`.
    pub fn derived_with(&self, fields: Map) -> Record {
        Record::with_meta(self.data.meta, &fields)
    }

    /// The message's sequence number in this host (unique, increasing); 0 for records no
    /// message produced.
    #[inline]
    pub fn id(&self) -> u64 {
        self.data.meta.id
    }

    /// The size of the original message on the wire, in bytes.
    #[inline]
    pub fn size_bytes(&self) -> u64 {
        self.data.meta.size_bytes
    }

    /// When the source received the message, in nanoseconds since the Unix epoch.
    #[inline]
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

    fn data_mut(&mut self) -> &mut RecordData {
        RArc::make_mut(&mut self.data)
    }

    #[inline]
    fn tape(&self) -> Tape<'_> {
        Tape {
            entries: &self.data.entries,
            bytes: &self.data.bytes,
        }
    }

    /// Whether another handle (another branch of a fan-out) shares this record's data.
    pub fn is_shared(&self) -> bool {
        RArc::strong_count(&self.data) > 1
    }

    /// The fields, as a map.
    #[inline]
    pub fn fields(&self) -> MapRef<'_> {
        MapRef {
            tape: self.tape(),
            first: 0,
            len: self.data.fields as usize,
        }
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<ValueRef<'_>> {
        self.fields().get(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.data.fields as usize
    }

    pub fn is_empty(&self) -> bool {
        self.data.fields == 0
    }

    /// The fields, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, ValueRef<'_>)> + '_ {
        self.fields().iter()
    }

    /// An owned copy of the fields.
    pub fn to_map(&self) -> Map {
        let mut map = Map::with_capacity(self.len());
        for (k, v) in self.iter() {
            map.push_unchecked(k.to_owned(), v.to_value());
        }
        map
    }

    /// The top-level entry of `key`.
    #[inline]
    fn position(&self, key: &str) -> Option<usize> {
        self.get(key).map(|v| v.at)
    }

    /// Replaces entries `at..at + 1 + subtree` with `with` (which keep their keys), in place.
    fn splice(data: &mut RecordData, at: usize, with: &[Entry]) {
        let entries = &mut data.entries;
        let (old, new) = (1 + entries[at].subtree as usize, with.len());
        let (end, len) = (at + old, entries.len());
        if new < old {
            entries.copy_within(end..len, at + new);
            entries.truncate(len - (old - new));
        } else if new > old {
            // Grow by the difference (placeholders at the end), then shift the tail up.
            for _ in old..new {
                entries.push(with[0]);
            }
            entries.copy_within(end..len, at + new);
        }
        entries[at..at + new].copy_from_slice(with);
    }

    /// Sets `key` to `value`, replacing an existing field in place (where it is) or
    /// appending a new one. Copies the record first if another branch holds it too. The
    /// value is written straight into the record: a number, a `&str` or a `&Value` costs no
    /// allocation of its own.
    pub fn insert(&mut self, key: &str, value: impl IntoValue) {
        let existing = self.position(key);
        let data = self.data_mut();
        match existing {
            Some(at) => {
                // The new value's entries are written past the end, then moved into place:
                // a scalar replacing a scalar allocates nothing.
                let key = (data.entries[at].key_off, data.entries[at].key_len);
                let start = data.entries.len();
                value.write(&mut ValueWriter {
                    b: TapeBuilder {
                        entries: &mut data.entries,
                        bytes: &mut data.bytes,
                    },
                    key,
                });
                if data.entries.len() - start == 1 && data.entries[at].subtree == 0 {
                    data.entries[at] = data.entries[start];
                    data.entries.truncate(start);
                } else {
                    let with: Vec<Entry> = data.entries[start..].to_vec();
                    data.entries.truncate(start);
                    Record::splice(data, at, &with);
                }
            }
            None => {
                let mut b = TapeBuilder {
                    entries: &mut data.entries,
                    bytes: &mut data.bytes,
                };
                let key = b.push_bytes(key.as_bytes());
                value.write(&mut ValueWriter { b, key });
                data.fields += 1;
            }
        }
    }

    /// Removes field `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let at = self.position(key)?;
        let value = ValueRef {
            tape: self.tape(),
            at,
        }
        .to_value();
        let data = self.data_mut();
        Record::splice(data, at, &[]);
        data.fields -= 1;
        Some(value)
    }

    /// Renames field `from` to `to`, keeping it where it is; a field already called `to`
    /// takes the value (at its own position) and `from` goes. False when there is no `from`.
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        let Some(src) = self.position(from) else {
            return false;
        };
        if from == to {
            return true;
        }
        match self.position(to) {
            Some(dst) => {
                let data = self.data_mut();
                let src_end = src + 1 + data.entries[src].subtree as usize;
                let (key_off, key_len) = (data.entries[dst].key_off, data.entries[dst].key_len);
                let mut moved: Vec<Entry> = data.entries[src..src_end].to_vec();
                moved[0].key_off = key_off;
                moved[0].key_len = key_len;
                // Remove the source first when it comes after the target, so that the
                // target's index stays put; the other way round, fix it up.
                if src > dst {
                    Record::splice(data, src, &[]);
                    Record::splice(data, dst, &moved);
                } else {
                    Record::splice(data, dst, &moved);
                    Record::splice(data, src, &[]);
                }
                data.fields -= 1;
            }
            None => {
                let data = self.data_mut();
                let (off, len) = TapeBuilder {
                    entries: &mut RVec::new(),
                    bytes: &mut data.bytes,
                }
                .push_bytes(to.as_bytes());
                data.entries[src].key_off = off;
                data.entries[src].key_len = len;
            }
        }
        true
    }

    /// Keeps the fields for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, ValueRef<'_>) -> bool) {
        let tape = self.tape();
        let drop: Vec<usize> = tape
            .children(0, self.len())
            .filter(|&at| !keep(tape.key(at), ValueRef { tape, at }))
            .collect();
        if drop.is_empty() {
            return;
        }
        let data = self.data_mut();
        for &at in drop.iter().rev() {
            Record::splice(data, at, &[]);
        }
        data.fields -= u32_of(drop.len());
    }

    /// Appends a value of a kind this release does not know, as a later release would store
    /// it: its tag and its JSON text. For tests of how older code treats newer values.
    #[doc(hidden)]
    pub fn insert_unknown_kind(&mut self, key: &str, tag: u8, json: &str) {
        assert!(tag > Entry::MAP, "tags up to {} are known", Entry::MAP);
        let data = self.data_mut();
        let mut b = TapeBuilder {
            entries: &mut data.entries,
            bytes: &mut data.bytes,
        };
        let key = b.push_bytes(key.as_bytes());
        let (off, len) = b.push_bytes(json.as_bytes());
        b.push(Entry::new(tag, key, len, u64::from(off)));
        data.fields += 1;
    }
}

impl PartialEq for Record {
    /// Records are equal when their fields are; what the host knows of their messages is not
    /// compared.
    fn eq(&self, other: &Record) -> bool {
        self.fields() == other.fields()
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("id", &self.id())
            .field("fields", &self.fields())
            .finish()
    }
}

/// A record serializes as its fields, as a JSON object.
impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.fields().serialize(s)
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
    use crate::ValueKind;

    fn keys(r: &Record) -> Vec<&str> {
        r.iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn a_change_to_a_shared_record_is_seen_by_its_changer_only() {
        let original: Record = [("level", "info")].into_iter().collect();
        let mut branch = original.clone();
        assert!(original.is_shared() && branch.is_shared());
        branch.insert("level", "debug");
        assert_eq!(original.get("level").and_then(|v| v.as_str()), Some("info"));
        assert_eq!(branch.get("level").and_then(|v| v.as_str()), Some("debug"));
        assert!(!original.is_shared());
    }

    #[test]
    fn edits_keep_order_and_nested_values() {
        let mut r: Record = [
            ("a", Value::Int(1)),
            (
                "m",
                Value::Map(
                    [("x", Value::List(vec![Value::Int(1), Value::Int(2)]))]
                        .into_iter()
                        .collect(),
                ),
            ),
            ("b", Value::from("two")),
        ]
        .into_iter()
        .collect();
        assert!(r.rename("a", "z"));
        assert_eq!(keys(&r), ["z", "m", "b"]);
        r.insert("m", "flat now");
        assert_eq!(keys(&r), ["z", "m", "b"]);
        assert_eq!(r.get("m").and_then(|v| v.as_str()), Some("flat now"));
        r.insert("z", Value::List(vec![Value::Null, Value::Map(Map::new())]));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"z":[null,{}],"m":"flat now","b":"two"}"#
        );
        assert!(r.rename("b", "z")); // the target takes the value, at its place
        assert_eq!(keys(&r), ["z", "m"]);
        assert_eq!(r.get("z").and_then(|v| v.as_str()), Some("two"));
        assert_eq!(r.remove("m"), Some(Value::from("flat now")));
        assert_eq!(keys(&r), ["z"]);
        r.insert("n", 5i64);
        r.retain(|k, _| k != "z");
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"n":5}"#);
        assert!(!r.rename("missing", "x"));
    }

    #[test]
    fn a_kind_of_value_added_later_passes_through_and_is_written_as_its_creator_wrote_it() {
        let mut r: Record = [("a", 1i64)].into_iter().collect();
        r.insert_unknown_kind("when", 42, r#""2026-11-24T00:00:00Z""#);
        r.insert("b", true);
        let when = r.get("when").unwrap();
        assert!(matches!(when.kind(), ValueKind::Unknown));
        assert_eq!(when.type_name(), "unknown");
        // A stage that does not know it leaves it be; a writer writes its JSON text.
        let mut copy = r.clone();
        copy.rename("a", "alpha");
        assert_eq!(
            serde_json::to_string(&copy).unwrap(),
            r#"{"alpha":1,"when":"2026-11-24T00:00:00Z","b":true}"#
        );
        assert_eq!(when.to_value(), Value::from("2026-11-24T00:00:00Z"));
    }

    #[test]
    fn a_table_a_library_got_wrong_reads_as_missing_values() {
        let mut entries = RVec::new();
        entries.push(Entry::new(Entry::STR, (0, 1), 1_000, 5)); // past the buffer
        let mut bytes = RVec::new();
        bytes.extend_from_copy_slice(b"kxyz");
        let r = Record::decoded(RecordMeta::default(), None, 3, entries, bytes); // claims 3 fields, has 1
        assert_eq!(r.get("k").and_then(|v| v.as_str()), Some(""));
        assert_eq!(r.iter().count(), 1);
        assert!(r.get("missing").is_none());
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
        let d = r.derived_with([("k", 1i64)].into_iter().collect());
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Insert(String, Value),
            Remove(String),
            Rename(String, String),
            Retain(String),
        }

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::Int),
                any::<f64>()
                    .prop_filter("not NaN", |f| !f.is_nan())
                    .prop_map(Value::Float),
                "(?s).{0,12}".prop_map(Value::Str),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                    prop::collection::vec(("[a-c]", inner), 0..4)
                        .prop_map(|kv| Value::Map(kv.into_iter().collect())),
                ]
            })
        }

        /// Mostly plain keys; some that JSON must escape.
        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => "[a-e]",
                1 => Just("q\"".to_owned()),
                1 => Just("\n\\".to_owned()),
            ]
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (key(), value()).prop_map(|(k, v)| Op::Insert(k, v)),
                1 => key().prop_map(Op::Remove),
                2 => (key(), key()).prop_map(|(a, b)| Op::Rename(a, b)),
                1 => key().prop_map(Op::Retain),
            ]
        }

        /// What each edit means, on an ordered list of fields.
        fn apply(model: &mut Vec<(String, Value)>, op: &Op) -> Option<Value> {
            let pos = |m: &Vec<(String, Value)>, k: &str| m.iter().position(|(x, _)| x == k);
            match op {
                Op::Insert(k, v) => {
                    match pos(model, k) {
                        Some(i) => model[i].1 = v.clone(),
                        None => model.push((k.clone(), v.clone())),
                    }
                    None
                }
                Op::Remove(k) => pos(model, k).map(|i| model.remove(i).1),
                Op::Rename(from, to) => {
                    let src = pos(model, from)?;
                    if from != to {
                        match pos(model, to) {
                            Some(dst) => {
                                model[dst].1 = model[src].1.clone();
                                model.remove(src);
                            }
                            None => model[src].0 = to.clone(),
                        }
                    }
                    Some(Value::Bool(true))
                }
                Op::Retain(drop) => {
                    model.retain(|(k, _)| k != drop);
                    None
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Any sequence of edits leaves a record holding what the same edits make of an
            /// ordered list of fields, and a branch sharing its data sees none of them. The
            /// record starts built from values or decoded from their JSON (which marks what
            /// needs no escaping), and `write_json` writes what serde_json writes after every
            /// edit.
            #[test]
            fn edits_match_the_model_and_never_reach_a_sharing_branch(
                start in prop::collection::vec((key(), value()), 0..5),
                decoded in any::<bool>(),
                ops in prop::collection::vec(op(), 0..12),
            ) {
                let mut record = Record::from_map(start.into_iter().collect());
                if decoded {
                    let text = serde_json::to_vec(&record).unwrap();
                    record = Record::from_json(&text).unwrap();
                }
                let map = record.to_map();
                let mut model: Vec<(String, Value)> =
                    map.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect();
                let branch = record.clone();
                for op in &ops {
                    let want = apply(&mut model, op);
                    match op {
                        Op::Insert(k, v) => record.insert(k, v),
                        Op::Remove(k) => prop_assert_eq!(record.remove(k), want),
                        Op::Rename(a, b) => prop_assert_eq!(record.rename(a, b), want.is_some()),
                        Op::Retain(drop) => record.retain(|k, _| k != drop),
                    }
                    prop_assert_eq!(record.len(), model.len());
                    let got: Vec<(String, Value)> =
                        record.iter().map(|(k, v)| (k.to_owned(), v.to_value())).collect();
                    prop_assert_eq!(&got, &model);
                    for (k, v) in &model {
                        prop_assert_eq!(record.get(k).map(Value::from), Some(v.clone()));
                    }
                    let mut text = b"[".to_vec();
                    record.write_json(&mut text).unwrap();
                    prop_assert_eq!(
                        String::from_utf8(text).unwrap(),
                        format!("[{}", serde_json::to_string(&record).unwrap())
                    );
                }
                prop_assert_eq!(branch.to_map(), map);
            }
        }
    }
}
