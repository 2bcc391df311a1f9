//! `Value`, `Field` and `Record`: the data that moves between stages.

use std::fmt;

use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};
use serde::{
    de::{self, MapAccess, SeqAccess, Visitor},
    ser::{SerializeMap, SerializeSeq},
    Deserialize, Deserializer, Serialize, Serializer,
};

/// A dynamically typed value, as decoded from a JSON message.
///
/// Maps keep their keys in insertion order as a list of [`Field`]s: messages are small, so a
/// linear scan beats hashing, and the order of the input survives to the output.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(RString),
    Bytes(RVec<u8>),
    List(RVec<Value>),
    Map(RVec<Field>),
}

/// One key/value pair of a map or a record.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Field {
    pub key: RString,
    pub value: Value,
}

impl Field {
    pub fn new(key: impl Into<RString>, value: impl Into<Value>) -> Self {
        Field {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl Value {
    /// The name of this value's type, as counted by the monitor ("string", "int", ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The value as a float, for numbers of either kind.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Looks a key up in a map value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(fields) => fields.iter().find(|f| f.key == key).map(|f| &f.value),
            _ => None,
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.into())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v.into())
    }
}
impl From<RString> for Value {
    fn from(v: RString) -> Self {
        Value::Str(v)
    }
}

/// Host-owned facts about the message a record came from. Stages may read them; the host
/// uses `id` to account for every message, so a stage that builds a new record from an old
/// one should copy the old one's `meta` (see [`Record::derived`]).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordMeta {
    /// The message's sequence number in this host; 0 for records no message produced.
    pub id: u64,
    /// The size of the original message on the wire, in bytes.
    pub size_bytes: u64,
    /// When the source received the message, in nanoseconds since the Unix epoch.
    pub received_at_ns: u64,
}

/// One record: a map of fields plus the host's [`RecordMeta`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Default)]
pub struct Record {
    pub meta: RecordMeta,
    pub fields: RVec<Field>,
}

impl Record {
    pub fn new(meta: RecordMeta, fields: RVec<Field>) -> Self {
        Record { meta, fields }
    }

    /// An empty record that counts as coming from the same message as `self`.
    pub fn derived(&self) -> Record {
        Record {
            meta: self.meta,
            fields: RVec::new(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|f| f.key == key).map(|f| &f.value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.fields
            .iter_mut()
            .find(|f| f.key == key)
            .map(|f| &mut f.value)
    }

    /// Sets `key` to `value`, replacing an existing field in place or appending a new one.
    pub fn insert(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.get_mut(key) {
            Some(slot) => *slot = value,
            None => self.fields.push(Field::new(key, value)),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.fields.iter().position(|f| f.key == key)?;
        Some(self.fields.remove(pos).value)
    }

    /// Renames field `from` to `to`, replacing any field already called `to`.
    /// Returns false when there was no field `from`.
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        if from == to {
            return self.get(from).is_some();
        }
        let Some(value) = self.remove(from) else {
            return false;
        };
        self.insert(to, value);
        true
    }
}

// ---- serde: JSON in and out without an intermediate tree ----

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(v) => s.serialize_str(v),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(fields) => serialize_fields(fields, s),
        }
    }
}

fn serialize_fields<S: Serializer>(fields: &[Field], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(fields.len()))?;
    for f in fields {
        map.serialize_entry(f.key.as_str(), &f.value)?;
    }
    map.end()
}

/// A record serializes as its fields, as a JSON object; `meta` stays host-side.
impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fields(&self.fields, s)
    }
}

/// Why a JSON text is not a record. Each kind is its own error type in the host's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Not UTF-8.
    InvalidUtf8,
    /// Not JSON (or JSON followed by more text).
    Syntax,
    /// JSON, but not an object.
    NotAnObject,
    /// An object (at any depth) with the same key twice. Refused rather than resolved: a
    /// stage that tests one occurrence and a reader downstream that takes the other would
    /// disagree about the record.
    DuplicateKey,
    /// An integer outside `i64`, or a number outside `f64`: kept exactly or not at all.
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

/// What a parse found out beside the value: why it failed, when it was one of this crate's
/// own rules, and whether a float that may have been an overflowing integer was seen.
#[derive(Default)]
struct Policy {
    error: std::cell::Cell<Option<JsonError>>,
    float_beyond_i64: std::cell::Cell<bool>,
}

impl Policy {
    fn fail<E: de::Error>(&self, kind: JsonError, message: fmt::Arguments<'_>) -> E {
        self.error.set(Some(kind));
        E::custom(message)
    }
}

struct ValueVisitor<'p>(&'p Policy);

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
        match i64::try_from(v) {
            Ok(i) => Ok(Value::Int(i)),
            Err(_) => Err(self.0.fail(
                JsonError::NumberOutOfRange,
                format_args!("integer {v} is outside i64"),
            )),
        }
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json hands an integer literal that overflows u64 or i64 over as a float. Only
        // a float this large can be one; the text is checked for it after the parse.
        if v.fract() == 0.0 && (v >= I64_BOUND || v <= -I64_BOUND) {
            self.0.float_beyond_i64.set(true);
        }
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.into()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v.into()))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.into()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = RVec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(ValueSeed(self.0))? {
            items.push(v);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        visit_fields(map, self.0).map(Value::Map)
    }
}

/// 2^63: integers at or beyond it (or below its negative) do not fit `i64`.
const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;

struct ValueSeed<'p>(&'p Policy);

impl<'de> de::DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor(self.0))
    }
}

/// Maps this small are checked for duplicate keys by comparing each key with those before
/// it; larger ones by sorting their keys once (so a map of many keys costs n log n, not n^2).
const LINEAR_DUPLICATE_CHECK: usize = 16;

fn visit_fields<'de, A: MapAccess<'de>>(
    mut map: A,
    policy: &Policy,
) -> Result<RVec<Field>, A::Error> {
    let mut fields: RVec<Field> = RVec::with_capacity(map.size_hint().unwrap_or(8));
    while let Some(key) = map.next_key::<KeyString>()? {
        if fields.len() < LINEAR_DUPLICATE_CHECK && fields.iter().any(|f| f.key == key.0) {
            return Err(policy.fail(
                JsonError::DuplicateKey,
                format_args!("duplicate key `{}`", key.0),
            ));
        }
        let value = map.next_value_seed(ValueSeed(policy))?;
        fields.push(Field { key: key.0, value });
    }
    if fields.len() > LINEAR_DUPLICATE_CHECK {
        let mut keys: Vec<&str> = fields.iter().map(|f| f.key.as_str()).collect();
        keys.sort_unstable();
        if let Some(pair) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(policy.fail(
                JsonError::DuplicateKey,
                format_args!("duplicate key `{}`", pair[0]),
            ));
        }
    }
    Ok(fields)
}

/// Deserializes a map key straight into an `RString`, borrowing when the input allows.
struct KeyString(RString);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyString, E> {
                Ok(KeyString(v.into()))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Values deserialize under the same rules as records (see [`Record::from_json`]).
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor(&Policy::default()))
    }
}

struct RecordVisitor<'p>(&'p Policy);

impl<'de> Visitor<'de> for RecordVisitor<'_> {
    type Value = Record;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Record, A::Error> {
        Ok(Record {
            meta: RecordMeta::default(),
            fields: visit_fields(map, self.0)?,
        })
    }
}

/// Deserializes the fields of a record from a JSON object; anything but an object is an error,
/// and so is a duplicate key at any depth. `meta` is left at its default for the host to fill
/// in.
impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RecordVisitor(&Policy::default()))
    }
}

impl Record {
    /// Parses one JSON object into a record (with `meta` at its default), as the host's
    /// sources do with every message: duplicate keys at any depth are refused, integers are
    /// kept exactly as `i64` and refused beyond it, and each failure has its own kind.
    pub fn from_json(bytes: &[u8]) -> Result<Record, JsonError> {
        let text = std::str::from_utf8(bytes).map_err(|_| JsonError::InvalidUtf8)?;
        let policy = Policy::default();
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = de
            .deserialize_map(RecordVisitor(&policy))
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

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(_d: D) -> Result<Self, D::Error> {
        Err(de::Error::custom(
            "a field is deserialized as part of a map",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_field_order_and_types() {
        let text = r#"{"b":1,"a":"x","n":null,"f":1.5,"l":[true,{"k":-2}]}"#;
        let record: Record = serde_json::from_str(text).unwrap();
        assert_eq!(record.fields[0].key, "b");
        assert_eq!(record.get("b"), Some(&Value::Int(1)));
        assert_eq!(record.get("f").and_then(Value::as_f64), Some(1.5));
        assert_eq!(serde_json::to_string(&record).unwrap(), text);
    }

    #[test]
    fn a_record_must_be_an_object() {
        assert!(serde_json::from_str::<Record>("[1,2]").is_err());
        assert!(serde_json::from_str::<Record>("42").is_err());
    }

    #[test]
    fn each_way_of_not_being_a_record_has_its_own_kind() {
        let e = |t: &[u8]| Record::from_json(t).map(|_| ());
        assert_eq!(e(br#"{"a":[1,{"b":2}]}"#), Ok(()));
        assert_eq!(e(b"{\"a\":\"\xff\"}"), Err(JsonError::InvalidUtf8));
        assert_eq!(e(b"{\"a\":"), Err(JsonError::Syntax));
        assert_eq!(e(b"{} {}"), Err(JsonError::Syntax));
        assert_eq!(e(b"[1]"), Err(JsonError::NotAnObject));
        assert_eq!(
            e(br#"{"level":"info","level":"debug"}"#),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(e(br#"{"a":{"x":1,"x":2}}"#), Err(JsonError::DuplicateKey));
        assert_eq!(e(br#"{"a":[{"x":1,"x":2}]}"#), Err(JsonError::DuplicateKey));
        let many: String = (0..100).map(|i| format!("\"k{}\":0,", i % 99)).collect();
        assert_eq!(
            e(format!("{{{}\"z\":0}}", many).as_bytes()),
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
        let r = Record::from_json(
            br#"{"max":9223372036854775807,"min":-9223372036854775808,"f":1e19,"s":"99999999999999999999"}"#,
        )
        .unwrap();
        assert_eq!(r.get("max"), Some(&Value::Int(i64::MAX)));
        assert_eq!(r.get("min"), Some(&Value::Int(i64::MIN)));
        assert_eq!(r.get("f"), Some(&Value::Float(1e19)));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"max":9223372036854775807,"min":-9223372036854775808,"f":1e+19,"s":"99999999999999999999"}"#
        );
    }

    #[test]
    fn rename_replaces_the_target_and_keeps_the_value() {
        let mut r: Record = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
        assert!(r.rename("a", "b"));
        assert_eq!(r.fields.len(), 1);
        assert_eq!(r.get("b"), Some(&Value::Int(1)));
        assert!(!r.rename("missing", "x"));
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
                "(?s).{0,12}".prop_map(Doc::Str),
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
            prop::collection::vec(("[a-f]{1,2}", doc()), 0..20).prop_map(Doc::Map)
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
