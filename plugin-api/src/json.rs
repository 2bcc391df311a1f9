//! JSON in: one policy for every record, value and map read from JSON, by the host's sources
//! ([`Record::from_json`]) and by stages (`Deserialize`):
//!
//! - a key that appears twice in the same object, at any depth, is refused
//!   ([`JsonError::DuplicateKey`]): a stage that tests one occurrence and a reader downstream
//!   that takes the other would disagree about the record;
//! - integers are kept exactly as `i64`, and refused beyond it, as are numbers beyond `f64`
//!   ([`JsonError::NumberOutOfRange`]): never a silent conversion to a float.
//!
//! Decoding is one pass over the text, straight into the record's fields; keys and strings
//! of up to 31 bytes cost no allocation.

use std::{cell::Cell, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use abi_stable::std_types::RVec;

use crate::{
    record::{Entry, Record, TapeBuilder, TraceContext},
    value::{Map, Value},
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

/// What a parse found out beside the value: why it failed, when it was one of this module's
/// rules, and whether a float that may have been an overflowing integer was seen.
#[derive(Default)]
struct Policy {
    error: Cell<Option<JsonError>>,
    float_beyond_i64: Cell<bool>,
}

impl Policy {
    fn fail<E: de::Error>(&self, kind: JsonError, message: fmt::Arguments<'_>) -> E {
        self.error.set(Some(kind));
        E::custom(message)
    }

    fn integer<E: de::Error>(&self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| {
            self.fail(
                JsonError::NumberOutOfRange,
                format_args!("integer {v} is outside i64"),
            )
        })
    }

    /// serde_json hands an integer literal that overflows u64 or i64 over as a float. Only a
    /// float this large can be one; the text is checked for it after the parse.
    fn float(&self, v: f64) {
        if v.fract() == 0.0 && (v >= I64_BOUND || v <= -I64_BOUND) {
            self.float_beyond_i64.set(true);
        }
    }

    fn duplicate<E: de::Error>(&self, key: &str) -> E {
        self.fail(
            JsonError::DuplicateKey,
            format_args!("duplicate key `{key}`"),
        )
    }
}

/// 2^63: integers at or beyond it (or at or below its negative) do not fit `i64`.
const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;

/// Maps this small are checked for duplicate keys by comparing each key with those before
/// it; larger ones by sorting their keys once (a map of n keys costs n log n, not n^2).
const LINEAR_DUPLICATE_CHECK: usize = 16;

// ---- JSON into a record's table, in one pass ----

/// One value into the table, under `key`.
struct TapeSeed<'s, 'b> {
    b: &'s mut TapeBuilder<'b>,
    policy: &'s Policy,
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
        let v = self.policy.integer(v)?;
        self.visit_i64(v)
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.policy.float(v);
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
                policy: self.policy,
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
        let n = tape_fields(map, self.b, self.policy, None)?;
        self.b.close(at, n);
        Ok(())
    }
}

/// Reads an object's fields into the table; returns how many. At a record's top level,
/// `trace` receives a valid `traceparent` field's context.
fn tape_fields<'de, A: MapAccess<'de>>(
    mut map: A,
    b: &mut TapeBuilder<'_>,
    policy: &Policy,
    mut trace: Option<&mut Option<TraceContext>>,
) -> Result<usize, A::Error> {
    // The first keys, to check the next ones against without a pass over the table.
    let mut first_keys = [(0u32, 0u32); LINEAR_DUPLICATE_CHECK];
    let mut all_keys: Vec<(u32, u32)> = Vec::new();
    let mut n = 0;
    while let Some(key) = map.next_key_seed(KeySeed(&mut *b))? {
        if n < LINEAR_DUPLICATE_CHECK {
            let bytes: &[u8] = b.bytes;
            let k = |(off, len): (u32, u32)| &bytes[off as usize..(off + len) as usize];
            if first_keys[..n].iter().any(|&seen| k(seen) == k(key)) {
                let key = String::from_utf8_lossy(k(key)).into_owned();
                return Err(policy.duplicate(&key));
            }
            first_keys[n] = key;
        } else {
            if all_keys.is_empty() {
                all_keys.extend_from_slice(&first_keys);
            }
            all_keys.push(key);
        }
        let value_at = b.entries.len();
        map.next_value_seed(TapeSeed {
            b: &mut *b,
            policy,
            key,
        })?;
        if let Some(trace) = trace.as_deref_mut() {
            let e = b.entries[value_at];
            let bytes: &[u8] = b.bytes;
            if &bytes[key.0 as usize..(key.0 + key.1) as usize] == b"traceparent"
                && e.tag == Entry::STR
            {
                let text = std::str::from_utf8(
                    &bytes[e.payload as usize..e.payload as usize + e.len as usize],
                );
                *trace = text.ok().and_then(TraceContext::from_traceparent);
            }
        }
        n += 1;
    }
    if !all_keys.is_empty() {
        let bytes: &[u8] = b.bytes;
        let k = |(off, len): (u32, u32)| &bytes[off as usize..(off + len) as usize];
        all_keys.sort_unstable_by(|x, y| k(*x).cmp(k(*y)));
        if let Some(pair) = all_keys.windows(2).find(|w| k(w[0]) == k(w[1])) {
            let key = String::from_utf8_lossy(k(pair[0])).into_owned();
            return Err(policy.duplicate(&key));
        }
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
struct RecordSeed<'p> {
    policy: &'p Policy,
    hint: usize,
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
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
            self.policy,
            Some(&mut trace),
        )?;
        let mut record = Record::from_tape(n, entries, bytes);
        if let Some(t) = trace {
            record.set_trace(t);
        }
        Ok(record)
    }
}

impl Record {
    /// Parses one JSON object into a record, as the host's sources do with every message
    /// (see the [module](crate::json) for the policy). A top-level `traceparent` field (W3C
    /// trace context) also becomes the record's [`Record::trace`]; the field stays.
    pub fn from_json(bytes: &[u8]) -> Result<Record, JsonError> {
        let text = std::str::from_utf8(bytes).map_err(|_| JsonError::InvalidUtf8)?;
        let policy = Policy::default();
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = de
            .deserialize_map(RecordSeed {
                policy: &policy,
                hint: text.len(),
            })
            .and_then(|r| de.end().map(|()| r));
        match parsed {
            Ok(_) if policy.float_beyond_i64.get() && has_integer_beyond_i64(text) => {
                Err(JsonError::NumberOutOfRange)
            }
            Ok(record) => Ok(record),
            Err(e) => Err(policy.error.get().unwrap_or_else(|| match e.classify() {
                serde_json::error::Category::Data => JsonError::NotAnObject,
                // serde_json's own words for a float literal beyond f64.
                _ if e.to_string().starts_with("number out of range") => {
                    JsonError::NumberOutOfRange
                }
                _ => JsonError::Syntax,
            })),
        }
    }
}

/// Whether valid JSON `text` holds an integer literal (no fraction, no exponent) outside
/// `i64`. Only called when a parse saw a float that large, which is rare.
fn has_integer_beyond_i64(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let integer = !matches!(bytes.get(i), Some(b'.' | b'e' | b'E'));
                if integer && text[start..i].parse::<i64>().is_err() {
                    return true;
                }
                while i < bytes.len()
                    && matches!(bytes[i], b'.' | b'e' | b'E' | b'+' | b'-' | b'0'..=b'9')
                {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    false
}

/// Records read from JSON by `serde` (in a stage's tests, say) follow the same rules; what
/// the host knows of the message is left for the host to fill in.
impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RecordSeed {
            policy: &Policy::default(),
            hint: 64,
        })
    }
}

// ---- JSON into owned values (stage configs) ----

struct ValueVisitor<'p>(&'p Policy);

impl<'de> DeserializeSeed<'de> for ValueVisitor<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueVisitor<'_> {
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
        self.0.integer(v).map(Value::Int)
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        self.0.float(v);
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
        while let Some(v) = seq.next_element_seed(ValueVisitor(self.0))? {
            items.push(v);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        owned_fields(map, self.0).map(Value::Map)
    }
}

fn owned_fields<'de, A: MapAccess<'de>>(mut map: A, policy: &Policy) -> Result<Map, A::Error> {
    let mut fields = Map::new();
    let mut seen = std::collections::HashSet::new();
    while let Some(key) = map.next_key::<String>()? {
        if !seen.insert(key.clone()) {
            return Err(policy.duplicate(&key));
        }
        let value = map.next_value_seed(ValueVisitor(policy))?;
        fields.push_unchecked(key, value);
    }
    Ok(fields)
}

/// Values read from any format (stage configs are JSON) under the same rules.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ValueVisitor(&Policy::default()).deserialize(d)
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
                owned_fields(map, &Policy::default())
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
    fn integers_keep_their_exact_value_and_large_floats_stay_floats() {
        let text = r#"{"max":9223372036854775807,"min":-9223372036854775808,"f":1e+19,"s":"99999999999999999999"}"#;
        let r = Record::from_json(text.as_bytes()).unwrap();
        assert_eq!(r.get("max").unwrap(), Value::Int(i64::MAX));
        assert_eq!(r.get("min").unwrap(), Value::Int(i64::MIN));
        assert_eq!(r.get("f").unwrap(), Value::Float(1e19));
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
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
                    }
                    (true, false) => prop_assert_eq!(got.err(), Some(JsonError::DuplicateKey)),
                    (false, true) => prop_assert_eq!(got.err(), Some(JsonError::NumberOutOfRange)),
                    (true, true) => prop_assert!(matches!(
                        got,
                        Err(JsonError::DuplicateKey | JsonError::NumberOutOfRange)
                    )),
                }
            }

            /// Any bytes: an answer, never a panic.
            #[test]
            fn arbitrary_bytes_are_answered(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = Record::from_json(&bytes);
            }
        }
    }
}
