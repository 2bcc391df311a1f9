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
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        i64::try_from(v).map_or(Value::Float(v as f64), Value::Int)
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

struct ValueVisitor;

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
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
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
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        visit_fields(map).map(Value::Map)
    }
}

fn visit_fields<'de, A: MapAccess<'de>>(mut map: A) -> Result<RVec<Field>, A::Error> {
    let mut fields = RVec::with_capacity(map.size_hint().unwrap_or(8));
    while let Some(key) = map.next_key::<KeyString>()? {
        let value = map.next_value()?;
        fields.push(Field { key: key.0, value });
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

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// Deserializes the fields of a record from a JSON object; anything but an object is an error.
/// `meta` is left at its default for the host to fill in.
impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RecordVisitor;
        impl<'de> Visitor<'de> for RecordVisitor {
            type Value = Record;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Record, A::Error> {
                Ok(Record {
                    meta: RecordMeta::default(),
                    fields: visit_fields(map)?,
                })
            }
        }
        d.deserialize_map(RecordVisitor)
    }
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
    fn rename_replaces_the_target_and_keeps_the_value() {
        let mut r: Record = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
        assert!(r.rename("a", "b"));
        assert_eq!(r.fields.len(), 1);
        assert_eq!(r.get("b"), Some(&Value::Int(1)));
        assert!(!r.rename("missing", "x"));
    }
}
