//! JSON in: one policy for every record, value and map read from JSON, by the host's sources
//! ([`Record::from_json`]) and by stages (`Deserialize`):
//!
//! - a key that appears twice in the same object, at any depth, is refused
//!   ([`JsonError::DuplicateKey`]): a stage that tests one occurrence and a reader downstream
//!   that takes the other would disagree about the record;
//! - integers are kept exactly as `i64`, and refused beyond it, as are numbers beyond `f64`
//!   ([`JsonError::NumberOutOfRange`]): never a silent conversion to a float.
//!
//! [`Record::from_json`] (what sources run on every message) is one pass over the text,
//! straight into the record's table: three allocations per message (handle, table,
//! buffer), none per field. The buffer starts with a copy of the text, and a key or string
//! without escapes is a range of it; one with escapes is written unescaped after it. The
//! `Deserialize` impls (stage configs, tests) go through serde with the same rules, except
//! that serde's JSON reader hands integers beyond `u64` over as floats, so there they cannot
//! be told from floats.
//!
//! JSON out: [`Record::write_json`] writes what serde_json writes for a record, copying the
//! keys and strings the decoder found free of escapes as they are.

use std::{fmt, io};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use abi_stable::std_types::RVec;

use crate::{
    record::{Entry, Record, RecordMeta, TapeBuilder, TraceContext},
    value::{Map, MapRef, Value, ValueKind, ValueRef},
};

/// Why a JSON text is not a record. Each kind is its own error type in the host's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonError {
    /// Not UTF-8.
    InvalidUtf8,
    /// Not JSON (or JSON followed by more text, or nested deeper than 128 levels).
    Syntax,
    /// JSON, but not an object.
    NotAnObject,
    /// An object (at any depth) with the same key twice.
    DuplicateKey,
    /// An integer outside `i64`, or a number outside `f64`.
    NumberOutOfRange,
}

impl JsonError {
    /// The error type a message that fails this way is counted under.
    pub fn error_type(self) -> &'static str {
        match self {
            JsonError::InvalidUtf8 => "invalid_utf8",
            JsonError::Syntax => "invalid_json",
            JsonError::NotAnObject => "not_an_object",
            JsonError::DuplicateKey => "duplicate_key",
            JsonError::NumberOutOfRange => "number_out_of_range",
        }
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.error_type())
    }
}

impl std::error::Error for JsonError {}

/// The serde path's refusal of an integer beyond `i64` (the scanner's is
/// [`JsonError::NumberOutOfRange`]).
fn integer<E: de::Error>(v: u64) -> Result<i64, E> {
    i64::try_from(v).map_err(|_| E::custom(format_args!("integer {v} is outside i64")))
}

/// The serde path's refusal of a key given twice (the scanner's is
/// [`JsonError::DuplicateKey`]).
fn duplicate<E: de::Error>(key: &str) -> E {
    E::custom(format_args!("duplicate key `{key}`"))
}

/// Objects with up to this many keys are checked for duplicates linearly (see [`KeyCheck`]).
const LINEAR_DUPLICATE_CHECK: usize = 16;

// ---- JSON into a record's table, in one pass ----

/// Checks an object's keys for duplicates as they come: each of the first ones against
/// those before it, the rest by sorting them all once at the end (a map of n keys costs
/// n log n, not n^2).
struct KeyCheck {
    first: [(u32, u32); LINEAR_DUPLICATE_CHECK],
    n: usize,
    all: Vec<(u32, u32)>,
}

impl KeyCheck {
    fn new() -> KeyCheck {
        KeyCheck {
            first: [(0, 0); LINEAR_DUPLICATE_CHECK],
            n: 0,
            all: Vec::new(),
        }
    }

    /// Adds `key` (where it is in `bytes`); returns it again if it was seen before.
    #[inline]
    fn add<'a>(&mut self, key: (u32, u32), bytes: &'a [u8]) -> Option<&'a [u8]> {
        let k = |(off, len): (u32, u32)| &bytes[off as usize..(off + len) as usize];
        if self.n < LINEAR_DUPLICATE_CHECK {
            if self.first[..self.n]
                .iter()
                .any(|&seen| crate::same_bytes(k(seen), k(key)))
            {
                return Some(k(key));
            }
            self.first[self.n] = key;
        } else {
            if self.all.is_empty() {
                self.all.extend_from_slice(&self.first);
            }
            self.all.push(key);
        }
        self.n += 1;
        None
    }

    /// After the last key: a key that came twice among the later ones, if any.
    fn finish(mut self, bytes: &[u8]) -> Option<&[u8]> {
        let k = |(off, len): (u32, u32)| &bytes[off as usize..(off + len) as usize];
        self.all.sort_unstable_by(|x, y| k(*x).cmp(k(*y)));
        self.all
            .windows(2)
            .find(|w| k(w[0]) == k(w[1]))
            .map(|pair| k(pair[0]))
    }
}

/// The field that carries W3C trace context.
const TRACEPARENT: &[u8] = b"traceparent";

/// The trace context of a top-level field written at `value_at` under `key`, when it is a
/// valid `traceparent` string.
fn traceparent(b: &TapeBuilder<'_>, key: (u32, u32), value_at: usize) -> Option<TraceContext> {
    let bytes: &[u8] = b.bytes;
    let e = b.entries.get(value_at)?;
    if &bytes[key.0 as usize..(key.0 + key.1) as usize] != TRACEPARENT || e.tag != Entry::STR {
        return None;
    }
    let text = bytes.get(e.payload as usize..e.payload as usize + e.len as usize)?;
    std::str::from_utf8(text)
        .ok()
        .and_then(TraceContext::from_traceparent)
}

/// One value into the table, under `key`.
struct TapeSeed<'s, 'b> {
    b: &'s mut TapeBuilder<'b>,
    key: (u32, u32),
}

impl<'de> DeserializeSeed<'de> for TapeSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TapeSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.b.push(Entry::new(Entry::NULL, self.key, 0, 0));
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        self.b.push(Entry::new(Entry::NULL, self.key, 0, 0));
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.b
            .push(Entry::new(Entry::BOOL, self.key, 0, u64::from(v)));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.b.push(Entry::new(Entry::INT, self.key, 0, v as u64));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        let v = integer(v)?;
        self.visit_i64(v)
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.b
            .push(Entry::new(Entry::FLOAT, self.key, 0, v.to_bits()));
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        let (off, len) = self.b.push_bytes(v.as_bytes());
        self.b
            .push(Entry::new(Entry::STR, self.key, len, u64::from(off)));
        Ok(())
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<(), E> {
        let (off, len) = self.b.push_bytes(v);
        self.b
            .push(Entry::new(Entry::BYTES, self.key, len, u64::from(off)));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let at = self.b.push(Entry::new(Entry::LIST, self.key, 0, 0));
        let mut n = 0;
        while seq
            .next_element_seed(TapeSeed {
                b: &mut *self.b,
                key: (0, 0),
            })?
            .is_some()
        {
            n += 1;
        }
        self.b.close(at, n);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let at = self.b.push(Entry::new(Entry::MAP, self.key, 0, 0));
        let n = tape_fields(map, self.b, None)?;
        self.b.close(at, n);
        Ok(())
    }
}

/// Reads an object's fields into the table; returns how many. At a record's top level,
/// `trace` receives a valid `traceparent` field's context.
fn tape_fields<'de, A: MapAccess<'de>>(
    mut map: A,
    b: &mut TapeBuilder<'_>,
    mut trace: Option<&mut Option<TraceContext>>,
) -> Result<usize, A::Error> {
    let mut keys = KeyCheck::new();
    let mut n = 0;
    while let Some(key) = map.next_key_seed(KeySeed(&mut *b))? {
        if let Some(twice) = keys.add(key, b.bytes) {
            return Err(duplicate(&String::from_utf8_lossy(twice)));
        }
        let value_at = b.entries.len();
        map.next_value_seed(TapeSeed { b: &mut *b, key })?;
        if let Some(trace) = trace.as_deref_mut() {
            if let Some(t) = traceparent(b, key, value_at) {
                *trace = Some(t);
            }
        }
        n += 1;
    }
    if let Some(twice) = keys.finish(b.bytes) {
        return Err(duplicate(&String::from_utf8_lossy(twice)));
    }
    Ok(n)
}

/// A map key, straight into the record's buffer.
struct KeySeed<'s, 'b>(&'s mut TapeBuilder<'b>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = (u32, u32);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(u32, u32), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = (u32, u32);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E>(self, v: &str) -> Result<(u32, u32), E> {
        Ok(self.0.push_bytes(v.as_bytes()))
    }
}

/// A whole record: an object, into a fresh table (sized for `hint` bytes of text).
struct RecordSeed {
    hint: usize,
}

impl<'de> Visitor<'de> for RecordSeed {
    type Value = Record;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Record, A::Error> {
        // Unescaped strings are never longer than their JSON; the slack is for a few edits.
        let mut entries = RVec::with_capacity(8);
        let mut bytes = RVec::with_capacity(self.hint + 64);
        let mut trace = None;
        let n = tape_fields(
            map,
            &mut TapeBuilder {
                entries: &mut entries,
                bytes: &mut bytes,
            },
            Some(&mut trace),
        )?;
        Ok(Record::decoded(
            RecordMeta::default(),
            trace,
            n,
            entries,
            bytes,
        ))
    }
}

impl Record {
    /// Parses one JSON object into a record, as the host's sources do with every message
    /// (see the [module](crate::json) for the policy). A top-level `traceparent` field (W3C
    /// trace context) also becomes the record's [`Record::trace`]; the field stays.
    ///
    /// One pass over the text, straight into the record's table: three allocations per
    /// message, none per field.
    pub fn from_json(bytes: &[u8]) -> Result<Record, JsonError> {
        Record::read_json(bytes, RecordMeta::default())
    }

    /// [`Record::from_json`], with what the host knows of the message (its id, its size:
    /// the text's length, when it was received) set in the same step. For hosts' sources,
    /// as [`Record::set_origin`] is; the record is made once, never changed after.
    #[doc(hidden)]
    pub fn from_json_with_origin(
        bytes: &[u8],
        id: u64,
        received_at_ns: u64,
    ) -> Result<Record, JsonError> {
        let meta = RecordMeta::origin(id, bytes.len() as u64, received_at_ns);
        Record::read_json(bytes, meta)
    }

    fn read_json(bytes: &[u8], meta: RecordMeta) -> Result<Record, JsonError> {
        // Text that is not UTF-8 is refused as such, whatever else is wrong with it. The
        // scanner checks each string's contents (outside strings it accepts ASCII alone), so
        // a record read is valid UTF-8 throughout; only a refusal needs the whole text
        // checked, to give that reason first.
        Record::scan(bytes, meta).map_err(|e| match std::str::from_utf8(bytes) {
            Ok(_) => e,
            Err(_) => JsonError::InvalidUtf8,
        })
    }

    fn scan(bytes: &[u8], meta: RecordMeta) -> Result<Record, JsonError> {
        let mut entries = RVec::with_capacity(8);
        // The text itself goes first: a string without escapes is a range of it (no copy of
        // its own); a string with escapes is written, unescaped, after it. The slack is for
        // a few edits.
        let mut bytes_out = RVec::with_capacity(bytes.len() + 64);
        bytes_out.extend_from_copy_slice(bytes);
        let text_len = u32::try_from(bytes.len()).map_err(|_| JsonError::Syntax)?;
        let mut scan = Scanner {
            s: bytes,
            i: 0,
            b: TapeBuilder {
                entries: &mut entries,
                bytes: &mut bytes_out,
            },
            // The record's own object counts, as in serde_json's limit.
            depth: 1,
        };
        scan.ws();
        // Another JSON value (not checked to its end) is not an object; anything else is
        // not JSON at all.
        let literal = |word: &[u8]| match bytes[scan.i..].starts_with(word) {
            true => JsonError::NotAnObject,
            false => JsonError::Syntax,
        };
        match scan.peek() {
            Some(b'{') => scan.i += 1,
            Some(b'[' | b'"' | b'-' | b'0'..=b'9') => return Err(JsonError::NotAnObject),
            Some(b't') => return Err(literal(b"true")),
            Some(b'f') => return Err(literal(b"false")),
            Some(b'n') => return Err(literal(b"null")),
            _ => return Err(JsonError::Syntax),
        }
        let mut trace = None;
        let n = scan.object(Some(&mut trace))?;
        scan.ws();
        if scan.i != bytes.len() {
            return Err(JsonError::Syntax);
        }
        // The strings within the text had no escapes and need none when written again:
        // each entry carries that bound (see `Entry::reserved_wide`).
        for e in entries.iter_mut() {
            e.reserved_wide = text_len;
        }
        Ok(Record::decoded(meta, trace, n, entries, bytes_out))
    }
}

/// Where the first byte that ends a run of plain string contents is in `s`: a quote, a
/// backslash or a control character (invalid in JSON strings); `s.len()` if none. Eight bytes
/// at a time, as serde_json does.
#[inline]
fn special_at(s: &[u8]) -> usize {
    special_or_non_ascii_at::<false>(s)
}

/// [`special_at`], or with `NON_ASCII` also the first byte above 0x7f (where a character
/// that the caller checks as UTF-8 starts).
#[inline(always)]
fn special_or_non_ascii_at<const NON_ASCII: bool>(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `v` that is zero (exact for the lowest such byte).
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let special = |v: u64| {
        zero(v ^ (ONES * u64::from(b'"')))
            | zero(v ^ (ONES * u64::from(b'\\')))
            | (v.wrapping_sub(ONES * 0x20) & !v & HIGH)
            | if NON_ASCII { v & HIGH } else { 0 }
    };
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let hits = special(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
        if hits != 0 {
            return i + hits.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    if i == s.len() {
        return i;
    }
    // The last few bytes: the last eight again (those before `i` are known to be plain), or
    // for a string shorter than eight (most keys), its bytes padded with plain ones, built
    // in a register (through memory it would cost a store-forwarding stall).
    let (base, v) = match s.len().checked_sub(8) {
        Some(base) => (
            base,
            u64::from_le_bytes(s[base..].try_into().expect("eight bytes")),
        ),
        None => (
            0,
            s.iter()
                .enumerate()
                .fold(0x6161_6161_6161_6161_u64, |v, (k, &c)| {
                    v & !(0xff << (8 * k)) | u64::from(c) << (8 * k)
                }),
        ),
    };
    match special(v) {
        0 => s.len(),
        hits => base + hits.trailing_zeros() as usize / 8,
    }
}

/// `mantissa * 10^exp10` when one operation on exact operands gives it (the mantissa at most
/// 2^53, the power of ten at most 10^22): IEEE arithmetic then rounds it correctly, as a full
/// parse would (Clinger's fast path). `None` otherwise.
#[inline]
fn exact_float(mantissa: u64, exp10: i64) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    if mantissa > 1 << 53 {
        return None;
    }
    let m = mantissa as f64;
    let p = *POW10.get(exp10.unsigned_abs() as usize)?;
    Some(if exp10 < 0 { m / p } else { m * p })
}

/// Objects and lists nested deeper than this are refused, as serde_json refuses them.
const MAX_DEPTH: usize = 128;

impl Record {
    /// Appends the record to `out` as one JSON object, without a line end: the text
    /// serde_json writes for it, byte for byte, in less time. Keys and strings that the
    /// host's decoder read without an escape are copied as they are (the table says which
    /// they are); other strings are checked as they are written and escaped by serde_json
    /// when they need it.
    ///
    /// Fails only on a kind of value added by a later release whose text is not JSON (which
    /// only a broken library writes); `out` is then as it was.
    pub fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        let written = write_map(self.fields(), out);
        if written.is_err() {
            out.truncate(start);
        }
        written
    }
}

fn write_map(map: MapRef<'_>, out: &mut Vec<u8>) -> io::Result<()> {
    let tape = map.tape;
    out.push(b'{');
    for (n, at) in tape.children(map.first, map.len).enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let e = &tape.entries[at];
        let key = tape.str_at(u64::from(e.key_off), e.key_len);
        write_str(key, u64::from(e.key_off), e.reserved_wide, out)?;
        out.push(b':');
        write_value(ValueRef { tape, at }, out)?;
    }
    out.push(b'}');
    Ok(())
}

/// Scalars here, in the caller's loop; containers and the rarer kinds in [`write_nested`].
#[inline(always)]
fn write_value(value: ValueRef<'_>, out: &mut Vec<u8>) -> io::Result<()> {
    use serde_json::ser::{CompactFormatter, Formatter};
    match value.kind() {
        ValueKind::Str(s) => {
            let e = &value.tape.entries[value.at];
            write_str(s, e.payload, e.reserved_wide, out)
        }
        ValueKind::Int(i) => CompactFormatter.write_i64(out, i),
        // Not finite: serde_json writes `null`, in `write_nested`.
        ValueKind::Float(f) if f.is_finite() => CompactFormatter.write_f64(out, f),
        _ => write_nested(value, out),
    }
}

#[inline(never)]
fn write_nested(value: ValueRef<'_>, out: &mut Vec<u8>) -> io::Result<()> {
    match value.kind() {
        ValueKind::Map(map) => write_map(map, out),
        ValueKind::List(list) => {
            out.push(b'[');
            for (n, item) in list.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
            Ok(())
        }
        _ => serde_json::to_writer(&mut *out, &value).map_err(io::Error::from),
    }
}

/// A key or string at `off` in its record's buffer, quoted; `plain_below` is its entry's
/// bound below which the buffer needs no escaping.
#[inline(always)]
fn write_str(s: &str, off: u64, plain_below: u32, out: &mut Vec<u8>) -> io::Result<()> {
    let bytes = s.as_bytes();
    let plain = off.saturating_add(bytes.len() as u64) <= u64::from(plain_below)
        || match bytes.len() {
            // Short ones (most keys) byte by byte; longer ones eight bytes at a time.
            0..8 => bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\'),
            _ => special_at(bytes) == bytes.len(),
        };
    if !plain {
        return serde_json::to_writer(&mut *out, s).map_err(io::Error::from);
    }
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
    Ok(())
}

/// JSON text into a record's table, in one pass.
struct Scanner<'s, 'b> {
    s: &'s [u8],
    i: usize,
    b: TapeBuilder<'b>,
    depth: usize,
}

type Scanned<T> = Result<T, JsonError>;

impl Scanner<'_, '_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Scanned<()> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(JsonError::Syntax)
        }
    }

    fn deeper(&mut self) -> Scanned<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(JsonError::Syntax);
        }
        Ok(())
    }

    /// An object's fields, after its `{`; returns how many. At a record's top level,
    /// `trace` receives a valid `traceparent` field's context.
    fn object(&mut self, mut trace: Option<&mut Option<TraceContext>>) -> Scanned<usize> {
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(0);
        }
        let mut keys = KeyCheck::new();
        let mut n = 0;
        loop {
            self.eat(b'"')?;
            let key = self.string()?;
            if keys.add(key, self.b.bytes).is_some() {
                return Err(JsonError::DuplicateKey);
            }
            self.eat(b':')?;
            let value_at = self.b.entries.len();
            self.value(key)?;
            // Only a key of its length is looked at further (no call per key).
            if key.1 as usize == TRACEPARENT.len() {
                if let Some(trace) = trace.as_deref_mut() {
                    if let Some(t) = traceparent(&self.b, key, value_at) {
                        *trace = Some(t);
                    }
                }
            }
            n += 1;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(JsonError::Syntax),
            }
        }
        if keys.finish(self.b.bytes).is_some() {
            return Err(JsonError::DuplicateKey);
        }
        Ok(n)
    }

    /// A list's items, after its `[`; returns how many.
    fn list(&mut self) -> Scanned<usize> {
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(0);
        }
        let mut n = 0;
        loop {
            self.ws();
            self.value((0, 0))?;
            n += 1;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(n);
                }
                _ => return Err(JsonError::Syntax),
            }
        }
    }

    /// One value under `key` (`(0, 0)` for a list item), at the current position.
    fn value(&mut self, key: (u32, u32)) -> Scanned<()> {
        self.ws();
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                self.deeper()?;
                let at = self.b.push(Entry::new(Entry::MAP, key, 0, 0));
                let n = self.object(None)?;
                self.b.close(at, n);
                self.depth -= 1;
            }
            Some(b'[') => {
                self.i += 1;
                self.deeper()?;
                let at = self.b.push(Entry::new(Entry::LIST, key, 0, 0));
                let n = self.list()?;
                self.b.close(at, n);
                self.depth -= 1;
            }
            Some(b'"') => {
                self.i += 1;
                let (off, len) = self.string()?;
                self.b
                    .push(Entry::new(Entry::STR, key, len, u64::from(off)));
            }
            Some(b't') => {
                self.literal(b"true")?;
                self.b.push(Entry::new(Entry::BOOL, key, 0, 1));
            }
            Some(b'f') => {
                self.literal(b"false")?;
                self.b.push(Entry::new(Entry::BOOL, key, 0, 0));
            }
            Some(b'n') => {
                self.literal(b"null")?;
                self.b.push(Entry::new(Entry::NULL, key, 0, 0));
            }
            Some(b'-' | b'0'..=b'9') => self.number(key)?,
            _ => return Err(JsonError::Syntax),
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Scanned<()> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(JsonError::Syntax)
        }
    }

    /// A string's contents, after its opening quote: where they are in the record's buffer.
    /// Most strings are plain ASCII without escapes, found by one scan: then they are the
    /// range of the text (which the buffer starts with) between the quotes.
    #[inline(always)]
    fn string(&mut self) -> Scanned<(u32, u32)> {
        let start = self.i;
        self.i += special_or_non_ascii_at::<true>(&self.s[self.i..]);
        if self.peek() == Some(b'"') {
            // Both within the text, whose length fits a u32 (checked before the scan).
            let range = (start as u32, (self.i - start) as u32);
            self.i += 1;
            return Ok(range);
        }
        self.string_rest(start)
    }

    /// A string with characters beyond ASCII or escapes (or not a string at all), from its
    /// start, the scan stopped at `self.i`. Its raw contents are checked as UTF-8 here, the
    /// only place the text is: outside strings a scanner accepts ASCII alone.
    #[inline(never)]
    fn string_rest(&mut self, start: usize) -> Scanned<(u32, u32)> {
        // The closing quote: the first one not escaped. Bytes above 0x7f never end a run
        // (nor do they occur inside a UTF-8 character below 0x80, so no quote hides there).
        let (mut end, mut escapes) = (self.i, false);
        loop {
            end += special_at(self.s.get(end..).unwrap_or_default());
            match self.s.get(end) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escapes = true;
                    end += 2;
                }
                _ => return Err(JsonError::Syntax),
            }
        }
        if std::str::from_utf8(&self.s[start..end]).is_err() {
            return Err(JsonError::InvalidUtf8);
        }
        if !escapes {
            self.i = end + 1;
            return Ok((start as u32, (end - start) as u32));
        }
        // Unescaped into the buffer after the text.
        self.i = start;
        let off = u32::try_from(self.b.bytes.len()).map_err(|_| JsonError::Syntax)?;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    let len = self.b.bytes.len() - off as usize;
                    return Ok((off, u32::try_from(len).map_err(|_| JsonError::Syntax)?));
                }
                Some(b'\\') => {
                    self.i += 1;
                    self.escape()?;
                }
                Some(0..=0x1f) | None => return Err(JsonError::Syntax),
                Some(_) => {
                    // Up to the next quote or backslash in one copy.
                    let run = special_at(&self.s[self.i..]);
                    self.b
                        .bytes
                        .extend_from_copy_slice(&self.s[self.i..self.i + run]);
                    self.i += run;
                }
            }
        }
    }

    /// One escape, after its backslash.
    fn escape(&mut self) -> Scanned<()> {
        let c = self.peek().ok_or(JsonError::Syntax)?;
        self.i += 1;
        let plain = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let first = self.hex4()?;
                let code = match first {
                    0xD800..=0xDBFF => {
                        // A surrogate pair: the low half must follow at once.
                        if !self.s[self.i..].starts_with(b"\\u") {
                            return Err(JsonError::Syntax);
                        }
                        self.i += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(JsonError::Syntax);
                        }
                        0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(JsonError::Syntax),
                    code => code,
                };
                let c = char::from_u32(code).ok_or(JsonError::Syntax)?;
                let mut buf = [0u8; 4];
                self.b
                    .bytes
                    .extend_from_copy_slice(c.encode_utf8(&mut buf).as_bytes());
                return Ok(());
            }
            _ => return Err(JsonError::Syntax),
        };
        self.b.bytes.push(plain);
        Ok(())
    }

    fn hex4(&mut self) -> Scanned<u32> {
        let digits = self.s.get(self.i..self.i + 4).ok_or(JsonError::Syntax)?;
        let mut code = 0;
        for &d in digits {
            let v = (d as char).to_digit(16).ok_or(JsonError::Syntax)?;
            code = code * 16 + v;
        }
        self.i += 4;
        Ok(code)
    }

    /// The run of ASCII digits at the current position, appended to `acc` (`acc * 10 +
    /// digit` for each): how many there were, and the result, which is exact when `acc`'s
    /// digits and these together are at most 19 (they fit a `u64`) and wrapped otherwise.
    /// No check per digit: the caller counts digits instead.
    #[inline]
    fn digits(&mut self, mut acc: u64) -> (usize, u64) {
        let start = self.i;
        while let Some(&c) = self.s.get(self.i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            acc = acc.wrapping_mul(10).wrapping_add(u64::from(d));
            self.i += 1;
        }
        (self.i - start, acc)
    }

    /// A number: an integer (no fraction, no exponent) kept exactly as `i64` or refused; any
    /// other number as the nearest `f64`, refused beyond its range.
    fn number(&mut self, key: (u32, u32)) -> Scanned<()> {
        /// Decimal digits that always fit a `u64`.
        const EXACT_DIGITS: usize = 19;
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let (int_digits, magnitude) = match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(JsonError::Syntax); // no leading zeros
                }
                (1, 0)
            }
            Some(b'1'..=b'9') => self.digits(0),
            _ => return Err(JsonError::Syntax),
        };
        // Without leading zeros, more than 19 digits are beyond any 64-bit integer.
        let overflow = int_digits > EXACT_DIGITS;
        // A float's digits, as an integer (while they fit) and a power of ten: most floats
        // (a timestamp with microseconds, say) are then one exact operation away.
        let (mut mantissa, mut all_digits) = (magnitude, int_digits);
        let mut exp10: i64 = 0;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            float = true;
            let (n, m) = self.digits(mantissa);
            if n == 0 {
                return Err(JsonError::Syntax);
            }
            (mantissa, all_digits) = (m, all_digits + n);
            exp10 = -(n as i64);
        }
        let exact = all_digits <= EXACT_DIGITS;
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            float = true;
            let sign = match self.peek() {
                Some(b'-') => -1,
                Some(b'+') => 1,
                _ => 0,
            };
            if sign != 0 {
                self.i += 1;
            }
            let first = self.i;
            let mut e: i64 = 0;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                // Beyond this the fast path is out of reach anyway.
                e = (e * 10 + i64::from(d - b'0')).min(1 << 20);
                self.i += 1;
            }
            if self.i == first {
                return Err(JsonError::Syntax);
            }
            exp10 += if sign < 0 { -e } else { e };
        }
        let entry = if float {
            let f = match exact_float(mantissa, exp10) {
                Some(f) if exact => f,
                // ASCII digits, signs, `.` and `e`: always UTF-8.
                _ => std::str::from_utf8(&self.s[start..self.i])
                    .map_err(|_| JsonError::Syntax)?
                    .parse()
                    .map_err(|_| JsonError::Syntax)?,
            };
            let f = if negative { -f.abs() } else { f };
            if !f.is_finite() {
                return Err(JsonError::NumberOutOfRange);
            }
            Entry::new(Entry::FLOAT, key, 0, f.to_bits())
        } else if overflow {
            return Err(JsonError::NumberOutOfRange);
        } else if negative && magnitude == 0 {
            // `-0` keeps its sign, as a float (serde_json reads it so too).
            Entry::new(Entry::FLOAT, key, 0, (-0.0f64).to_bits())
        } else if negative {
            let v = 0i64
                .checked_sub_unsigned(magnitude)
                .ok_or(JsonError::NumberOutOfRange)?;
            Entry::new(Entry::INT, key, 0, v as u64)
        } else {
            let v = i64::try_from(magnitude).map_err(|_| JsonError::NumberOutOfRange)?;
            Entry::new(Entry::INT, key, 0, v as u64)
        };
        self.b.push(entry);
        Ok(())
    }
}

/// Records read from JSON by `serde` (in a stage's tests, say) follow the same rules; what
/// the host knows of the message is left for the host to fill in.
impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RecordSeed { hint: 64 })
    }
}

// ---- JSON into owned values (stage configs) ----

struct ValueVisitor;

impl<'de> DeserializeSeed<'de> for ValueVisitor {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        integer(v).map(Value::Int)
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(ValueVisitor)? {
            items.push(v);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        owned_fields(map).map(Value::Map)
    }
}

fn owned_fields<'de, A: MapAccess<'de>>(mut map: A) -> Result<Map, A::Error> {
    let mut fields = Map::new();
    let mut seen = std::collections::HashSet::new();
    while let Some(key) = map.next_key::<String>()? {
        if !seen.insert(key.clone()) {
            return Err(duplicate(&key));
        }
        let value = map.next_value_seed(ValueVisitor)?;
        fields.push_unchecked(key, value);
    }
    Ok(fields)
}

/// Values read from any format (stage configs are JSON) under the same rules.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ValueVisitor.deserialize(d)
    }
}

impl<'de> Deserialize<'de> for Map {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = Map;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Map, A::Error> {
                owned_fields(map)
            }
        }
        d.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_field_order_and_types() {
        let text = r#"{"b":1,"a":"x","n":null,"f":1.5,"l":[true,{"k":-2}]}"#;
        let record = Record::from_json(text.as_bytes()).unwrap();
        assert_eq!(record.iter().next().map(|(k, _)| k), Some("b"));
        assert_eq!(record.get("b").unwrap(), Value::Int(1));
        assert_eq!(record.get("f").and_then(|v| v.as_f64()), Some(1.5));
        assert_eq!(serde_json::to_string(&record).unwrap(), text);
    }

    #[test]
    fn each_way_of_not_being_a_record_has_its_own_kind() {
        let e = |t: &[u8]| Record::from_json(t).map(|_| ());
        assert_eq!(e(br#"{"a":[1,{"b":2}]}"#), Ok(()));
        assert_eq!(e(b"{\"a\":\"\xff\"}"), Err(JsonError::InvalidUtf8));
        assert_eq!(e(b"{\"a\":"), Err(JsonError::Syntax));
        assert_eq!(e(b"{} {}"), Err(JsonError::Syntax));
        assert_eq!(e(b"[1]"), Err(JsonError::NotAnObject));
        assert_eq!(e(b"42"), Err(JsonError::NotAnObject));
        assert_eq!(e(b" null"), Err(JsonError::NotAnObject));
        assert_eq!(e(b"not json"), Err(JsonError::Syntax));
        assert_eq!(
            e(br#"{"level":"info","level":"debug"}"#),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(e(br#"{"a":{"x":1,"x":2}}"#), Err(JsonError::DuplicateKey));
        assert_eq!(e(br#"{"a":[{"x":1,"x":2}]}"#), Err(JsonError::DuplicateKey));
        let many: String = (0..100).map(|i| format!("\"k{}\":0,", i % 99)).collect();
        assert_eq!(
            e(format!("{{{many}\"z\":0}}").as_bytes()),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(
            e(br#"{"n":18446744073709551617}"#),
            Err(JsonError::NumberOutOfRange)
        );
        assert_eq!(
            e(br#"{"n":9223372036854775808}"#),
            Err(JsonError::NumberOutOfRange)
        );
        assert_eq!(
            e(br#"{"n":-9223372036854775809}"#),
            Err(JsonError::NumberOutOfRange)
        );
        assert_eq!(e(br#"{"n":1e400}"#), Err(JsonError::NumberOutOfRange));
    }

    #[test]
    fn strings_numbers_and_nesting_read_as_json_says() {
        let r = Record::from_json(
            br#"{"e":"caf\u00e9 \ud83d\ude00 \"q\" \\ \/ \b\f\n\r\t","z":-0,"x":1.5e3,"y":-2E-2}"#,
        )
        .unwrap();
        assert_eq!(
            r.get("e").and_then(|v| v.as_str()),
            Some("café 😀 \"q\" \\ / \u{8}\u{c}\n\r\t")
        );
        let z = r.get("z").and_then(|v| v.as_f64()).unwrap();
        assert!(z == 0.0 && z.is_sign_negative(), "-0 keeps its sign");
        assert_eq!(r.get("x").unwrap(), Value::Float(1500.0));
        assert_eq!(r.get("y").unwrap(), Value::Float(-0.02));
        let e = |t: &str| Record::from_json(t.as_bytes()).map(|_| ());
        for bad in [
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00x"}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":tru}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            "",
            "   ",
            "{",
        ] {
            assert_eq!(e(bad), Err(JsonError::Syntax), "{bad:?}");
        }
        let deep = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        assert_eq!(e(&deep(127)), Ok(()));
        assert_eq!(e(&deep(128)), Err(JsonError::Syntax));
        assert_eq!(e(" \n{ \"a\" : [ 1 , { } ] } \t"), Ok(()));
    }

    #[test]
    fn integers_keep_their_exact_value_and_large_floats_stay_floats() {
        let text = r#"{"max":9223372036854775807,"min":-9223372036854775808,"f":1e+19,"s":"99999999999999999999"}"#;
        let r = Record::from_json(text.as_bytes()).unwrap();
        assert_eq!(r.get("max").unwrap(), Value::Int(i64::MAX));
        assert_eq!(r.get("min").unwrap(), Value::Int(i64::MIN));
        assert_eq!(r.get("f").unwrap(), Value::Float(1e19));
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
    }

    /// What `write_json` writes, against serde_json, where the decoder's mark of what needs
    /// no escaping matters: strings after an escaped one, keys renamed or set later (past the
    /// mark, so checked as they are written), values serde_json writes its own way.
    #[test]
    fn write_json_writes_what_serde_json_writes() {
        let written = |r: &Record| {
            let mut out = Vec::new();
            r.write_json(&mut out).unwrap();
            let out = String::from_utf8(out).unwrap();
            assert_eq!(out, serde_json::to_string(r).unwrap());
            out
        };
        let text = r#"{"a":"x","b\n":"q\"","c":"y","d":[1,"z\\",{"e":-0.5}],"f":{}}"#;
        let mut r = Record::from_json(text.as_bytes()).unwrap();
        assert_eq!(written(&r), text);
        r.rename("a", "k\"");
        r.rename("c", "b\n");
        r.insert("new\t", "v\u{1}");
        r.insert("nan", f64::NAN);
        r.insert("bytes", Value::Bytes(vec![1, 2]));
        assert_eq!(
            written(&r),
            r#"{"k\"":"x","b\n":"y","d":[1,"z\\",{"e":-0.5}],"f":{},"new\t":"v\u0001","nan":null,"bytes":[1,2]}"#
        );
        // A kind of value added later is written as its creator wrote it; text that is not
        // JSON (only a broken library writes it) fails, and leaves the output as it was.
        r.insert_unknown_kind("later", 42, r#"{"x":1}"#);
        assert!(written(&r).ends_with(r#""later":{"x":1}}"#));
        r.insert_unknown_kind("broken", 43, "{not json");
        let mut out = b"before".to_vec();
        assert!(r.write_json(&mut out).is_err());
        assert_eq!(out, b"before");
    }

    #[test]
    fn traceparent_fills_the_trace_context() {
        let r = Record::from_json(
            br#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","m":1}"#,
        )
        .unwrap();
        let t = r.trace().expect("a trace context");
        assert_eq!(
            t.span_id(),
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(r.get("traceparent").is_some(), "the field stays");
        let nested = Record::from_json(
            br#"{"x":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}"#,
        )
        .unwrap();
        assert_eq!(nested.trace(), None, "only a top-level field counts");
        let bad = Record::from_json(br#"{"traceparent":"nonsense"}"#).unwrap();
        assert_eq!(bad.trace(), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A JSON document as text is written: duplicate keys and integers of any size allowed.
        #[derive(Debug, Clone)]
        enum Doc {
            Null,
            Bool(bool),
            Int(i128),
            Float(f64),
            Str(String),
            List(Vec<Doc>),
            Map(Vec<(String, Doc)>),
        }

        impl Doc {
            fn write(&self, out: &mut String) {
                match self {
                    Doc::Null => out.push_str("null"),
                    Doc::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                    Doc::Int(i) => out.push_str(&i.to_string()),
                    Doc::Float(f) => out.push_str(&format!("{f:?}")),
                    Doc::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
                    Doc::List(items) => {
                        out.push('[');
                        for (i, item) in items.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            item.write(out);
                        }
                        out.push(']');
                    }
                    Doc::Map(fields) => {
                        out.push('{');
                        for (i, (k, v)) in fields.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            out.push_str(&serde_json::to_string(k).unwrap());
                            out.push(':');
                            v.write(out);
                        }
                        out.push('}');
                    }
                }
            }

            fn has_duplicate_key(&self) -> bool {
                match self {
                    Doc::List(items) => items.iter().any(Doc::has_duplicate_key),
                    Doc::Map(fields) => {
                        let mut keys: Vec<&String> = fields.iter().map(|(k, _)| k).collect();
                        keys.sort();
                        keys.windows(2).any(|w| w[0] == w[1])
                            || fields.iter().any(|(_, v)| v.has_duplicate_key())
                    }
                    _ => false,
                }
            }

            fn has_int_beyond_i64(&self) -> bool {
                match self {
                    Doc::Int(i) => i64::try_from(*i).is_err(),
                    Doc::List(items) => items.iter().any(Doc::has_int_beyond_i64),
                    Doc::Map(fields) => fields.iter().any(|(_, v)| v.has_int_beyond_i64()),
                    _ => false,
                }
            }
        }

        fn doc() -> impl Strategy<Value = Doc> {
            let leaf = prop_oneof![
                Just(Doc::Null),
                any::<bool>().prop_map(Doc::Bool),
                any::<i64>().prop_map(|i| Doc::Int(i.into())),
                any::<i128>().prop_map(Doc::Int),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Doc::Float),
                "(?s).{0,40}".prop_map(Doc::Str),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Doc::List),
                    // Keys from a small alphabet, so that duplicates happen.
                    prop::collection::vec(("[a-d]{1,2}", inner), 0..8).prop_map(Doc::Map),
                ]
            })
        }

        fn object() -> impl Strategy<Value = Doc> {
            prop::collection::vec(("[a-f]{1,2}|[a-z]{32,40}", doc()), 0..20).prop_map(Doc::Map)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// A record is exactly what serde_json reads, or refused for the documented reason.
            #[test]
            fn records_are_what_serde_json_reads_or_refused_for_a_reason(doc in object()) {
                let mut text = String::new();
                doc.write(&mut text);
                let got = Record::from_json(text.as_bytes());
                match (doc.has_duplicate_key(), doc.has_int_beyond_i64()) {
                    (false, false) => {
                        let record = got.expect("a valid object");
                        let oracle: serde_json::Value = serde_json::from_str(&text).unwrap();
                        prop_assert_eq!(serde_json::to_value(&record).unwrap(), oracle);
                        let mut written = Vec::new();
                        record.write_json(&mut written).unwrap();
                        prop_assert_eq!(written, serde_json::to_vec(&record).unwrap());
                        // The serde path (configs, tests) reads the same record.
                        let via_serde: Record = serde_json::from_str(&text).unwrap();
                        prop_assert_eq!(&via_serde, &record);

                    }
                    (true, false) => prop_assert_eq!(got.err(), Some(JsonError::DuplicateKey)),
                    (false, true) => prop_assert_eq!(got.err(), Some(JsonError::NumberOutOfRange)),
                    (true, true) => prop_assert!(matches!(
                        got,
                        Err(JsonError::DuplicateKey | JsonError::NumberOutOfRange)
                    )),
                }
            }

            /// Any string, written by serde_json (escapes and all), reads back exactly, as a
            /// key and as a value.
            #[test]
            fn strings_read_back_exactly(text in "(?s).{0,40}", pad in 0usize..9) {
                let other = "p".repeat(pad);
                prop_assume!(text != other);
                let quoted = serde_json::to_string(&text).unwrap();
                let doc = format!("{{{quoted}:{quoted},\"{other}\":1}}");
                let r = Record::from_json(doc.as_bytes()).unwrap();
                prop_assert_eq!(r.iter().next().map(|(k, _)| k), Some(text.as_str()));
                prop_assert_eq!(r.get(&text).and_then(|v| v.as_str()), Some(text.as_str()));
                let mut written = Vec::new();
                r.write_json(&mut written).unwrap();
                prop_assert_eq!(written, doc.into_bytes());
            }

            /// Any float, however written, is the nearest `f64`, as the standard library's
            /// parse gives it (the exact fast path and the full parse agree), or refused beyond
            /// `f64`'s range.
            #[test]
            fn floats_are_the_nearest_f64(
                text in "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,20}([eE][+-]?[0-9]{1,3})?|[eE][+-]?[0-9]{1,3})",
                f in any::<f64>().prop_filter("finite", |f| f.is_finite()),
            ) {
                for text in [text, format!("{f:?}"), format!("{f:e}"), format!("{f:.7}")] {
                    let got = Record::from_json(format!("{{\"f\":{text}}}").as_bytes());
                    let expected: f64 = text.parse().unwrap();
                    match got {
                        Ok(r) => prop_assert_eq!(
                            r.get("f").and_then(|v| v.as_f64()).map(f64::to_bits),
                            Some(expected.to_bits()),
                            "{}", text
                        ),
                        Err(e) => {
                            prop_assert!(!expected.is_finite(), "{} refused: {:?}", text, e);
                            prop_assert_eq!(e, JsonError::NumberOutOfRange);
                        }
                    }
                }
            }

            /// The eight-bytes-at-a-time scan finds what a byte-by-byte one finds.
            #[test]
            fn the_fast_scan_agrees_with_a_plain_one(bytes in prop::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..=0xff], 0..40)
            ) {
                let plain = bytes
                    .iter()
                    .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                    .unwrap_or(bytes.len());
                prop_assert_eq!(special_at(&bytes), plain);
            }

            /// Any bytes: an answer, never a panic; `invalid_utf8` exactly when they are not
            /// UTF-8.
            #[test]
            fn arbitrary_bytes_are_answered(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let got = Record::from_json(&bytes);
                let utf8 = std::str::from_utf8(&bytes).is_ok();
                prop_assert_eq!(got.err() == Some(JsonError::InvalidUtf8), !utf8);
            }

            /// A document with bytes that are not UTF-8 anywhere (inside a string, in a key,
            /// between tokens, after the end) is refused as `invalid_utf8`, whatever else is
            /// wrong with it; the same bytes' valid neighbours read as serde_json reads them.
            #[test]
            fn text_that_is_not_utf8_is_refused_as_such(
                doc in object(),
                at in any::<prop::sample::Index>(),
                bad in prop_oneof![
                    Just(&b"\xff"[..]),
                    Just(&b"\xc0\x80"[..]),
                    Just(&b"\x80"[..]),
                    Just(&b"\xe2\x82"[..]),
                    Just(&b"\xed\xa0\x80"[..]),
                ],
            ) {
                let mut text = String::new();
                doc.write(&mut text);
                let mut bytes = text.into_bytes();
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, bad.iter().copied());
                prop_assert_eq!(Record::from_json(&bytes).err(), Some(JsonError::InvalidUtf8));
            }
        }
    }
}
