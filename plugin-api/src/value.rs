//! Values: [`Value`] (owned: what a stage builds, inserts and reads from its config) and the
//! views a record hands out, [`ValueRef`], [`MapRef`] and [`ListRef`], matched on through
//! [`ValueKind`].
//!
//! A record keeps its fields in a private, flat form (see [`crate::Record`]), so reading one
//! gives a view into it, not a `Value`: nothing is copied to read. `Value` itself never
//! crosses the boundary; a record does.

use std::fmt;

use serde::{ser::SerializeMap, ser::SerializeSeq, Serialize, Serializer};

use crate::record::{Entry, Tape, TapeBuilder};

/// A dynamically typed value, owned: what a stage builds and hands to
/// [`crate::Record::insert`], and what [`ValueRef::to_value`] makes of a view.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Map(Map),
}

/// Fields in the order they were written, keys unique. Owned, like [`Value`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map {
    fields: Vec<(String, Value)>,
}

impl Map {
    pub fn new() -> Map {
        Map::default()
    }

    pub fn with_capacity(n: usize) -> Map {
        Map {
            fields: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.fields
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`, replacing an existing field in place or appending a new one.
    pub fn insert(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.get_mut(key) {
            Some(slot) => *slot = value,
            None => self.fields.push((key.to_owned(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.fields.iter().position(|(k, _)| k == key)?;
        Some(self.fields.remove(pos).1)
    }

    /// The fields, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.fields.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Appends a field whose key the caller knows is new.
    pub(crate) fn push_unchecked(&mut self, key: String, value: Value) {
        self.fields.push((key, value));
    }
}

impl<K: AsRef<str>, V: Into<Value>> FromIterator<(K, V)> for Map {
    /// Later pairs replace earlier ones with the same key.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Map {
        let mut map = Map::new();
        for (k, v) in iter {
            map.insert(k.as_ref(), v);
        }
        map
    }
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
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

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The name of this value's type, as the monitor counts it ("string", "int", ...).
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
}

macro_rules! from_scalar {
    ($($t:ty => |$v:ident| $e:expr),+ $(,)?) => {$(
        impl From<$t> for Value {
            fn from($v: $t) -> Value {
                $e
            }
        }
    )+};
}

from_scalar! {
    bool => |v| Value::Bool(v),
    i64 => |v| Value::Int(v),
    i32 => |v| Value::Int(v.into()),
    u32 => |v| Value::Int(v.into()),
    f64 => |v| Value::Float(v),
    &str => |v| Value::Str(v.to_owned()),
    String => |v| Value::Str(v),
    Vec<Value> => |v| Value::List(v),
    Map => |v| Value::Map(v),
}

/// What [`crate::Record::insert`] takes: anything a [`Value`] can be made from, written
/// straight into the record, so that a number or a `&str` costs no allocation of its own.
pub trait IntoValue: sealed::Sealed {
    #[doc(hidden)]
    fn write(self, w: &mut ValueWriter<'_>);
}

mod sealed {
    pub trait Sealed {}
}

/// Where [`IntoValue`] writes: a record's table, under one key.
#[doc(hidden)]
pub struct ValueWriter<'b> {
    pub(crate) b: TapeBuilder<'b>,
    pub(crate) key: (u32, u32),
}

impl ValueWriter<'_> {
    fn scalar(&mut self, tag: u8, payload: u64) {
        self.b.push(Entry::new(tag, self.key, 0, payload));
    }
}

macro_rules! into_value {
    ($($t:ty => |$v:ident, $w:ident| $e:expr),+ $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl IntoValue for $t {
            #[inline]
            fn write(self, $w: &mut ValueWriter<'_>) {
                let $v = self;
                $e
            }
        }
    )+};
}

into_value! {
    bool => |v, w| w.scalar(Entry::BOOL, u64::from(v)),
    i64 => |v, w| w.scalar(Entry::INT, v as u64),
    i32 => |v, w| w.scalar(Entry::INT, i64::from(v) as u64),
    u32 => |v, w| w.scalar(Entry::INT, u64::from(v)),
    f64 => |v, w| w.scalar(Entry::FLOAT, v.to_bits()),
    &str => |v, w| {
        let (off, len) = w.b.push_bytes(v.as_bytes());
        w.b.push(Entry::new(Entry::STR, w.key, len, u64::from(off)));
    },
    &String => |v, w| v.as_str().write(w),
    String => |v, w| v.as_str().write(w),
    &Value => |v, w| w.b.value(w.key, v),
    Value => |v, w| w.b.value(w.key, &v),
    Option<Value> => |v, w| w.b.value(w.key, &v.unwrap_or_default()),
    Vec<Value> => |v, w| w.b.value(w.key, &Value::List(v)),
    Map => |v, w| w.b.value(w.key, &Value::Map(v)),
    ValueRef<'_> => |v, w| w.b.value(w.key, &v.to_value()),
}

impl From<Option<Value>> for Value {
    fn from(v: Option<Value>) -> Value {
        v.unwrap_or_default()
    }
}

impl From<ValueRef<'_>> for Value {
    fn from(v: ValueRef<'_>) -> Value {
        v.to_value()
    }
}

/// A value seen as what it holds: what a plugin matches on.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ValueKind<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    List(ListRef<'a>),
    Map(MapRef<'a>),
    /// A kind of value added by a later release than the one this library was built
    /// against. It passes through unchanged, and serializes as its creator wrote it.
    Unknown,
}

/// A view of one value inside a record.
#[derive(Clone, Copy)]
pub struct ValueRef<'a> {
    pub(crate) tape: Tape<'a>,
    /// The value's entry.
    pub(crate) at: usize,
}

impl<'a> ValueRef<'a> {
    #[inline]
    fn entry(self) -> &'a Entry {
        &self.tape.entries[self.at]
    }

    /// What the value holds.
    #[inline]
    pub fn kind(self) -> ValueKind<'a> {
        let e = self.entry();
        match e.tag {
            Entry::NULL => ValueKind::Null,
            Entry::BOOL => ValueKind::Bool(e.payload != 0),
            Entry::INT => ValueKind::Int(e.payload as i64),
            Entry::FLOAT => ValueKind::Float(f64::from_bits(e.payload)),
            Entry::STR => ValueKind::Str(self.tape.str_at(e.payload, e.len)),
            Entry::BYTES => ValueKind::Bytes(self.tape.bytes_at(e.payload, e.len)),
            Entry::LIST => ValueKind::List(ListRef {
                tape: self.tape,
                first: self.at + 1,
                len: e.len as usize,
            }),
            Entry::MAP => ValueKind::Map(MapRef {
                tape: self.tape,
                first: self.at + 1,
                len: e.len as usize,
            }),
            _ => ValueKind::Unknown,
        }
    }

    #[inline]
    pub fn as_str(self) -> Option<&'a str> {
        match self.kind() {
            ValueKind::Str(s) => Some(s),
            _ => None,
        }
    }

    #[inline]
    pub fn as_i64(self) -> Option<i64> {
        match self.kind() {
            ValueKind::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The value as a float, for numbers of either kind.
    #[inline]
    pub fn as_f64(self) -> Option<f64> {
        match self.kind() {
            ValueKind::Int(i) => Some(i as f64),
            ValueKind::Float(f) => Some(f),
            _ => None,
        }
    }

    #[inline]
    pub fn as_bool(self) -> Option<bool> {
        match self.kind() {
            ValueKind::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn is_null(self) -> bool {
        matches!(self.kind(), ValueKind::Null)
    }

    pub fn as_map(self) -> Option<MapRef<'a>> {
        match self.kind() {
            ValueKind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_list(self) -> Option<ListRef<'a>> {
        match self.kind() {
            ValueKind::List(l) => Some(l),
            _ => None,
        }
    }

    /// Looks a key up in a map value.
    pub fn get(self, key: &str) -> Option<ValueRef<'a>> {
        self.as_map().and_then(|m| m.get(key))
    }

    /// The name of this value's type, as the monitor counts it ("string", "int", ...).
    pub fn type_name(self) -> &'static str {
        match self.kind() {
            ValueKind::Null => "null",
            ValueKind::Bool(_) => "bool",
            ValueKind::Int(_) => "int",
            ValueKind::Float(_) => "float",
            ValueKind::Str(_) => "string",
            ValueKind::Bytes(_) => "bytes",
            ValueKind::List(_) => "list",
            ValueKind::Map(_) => "map",
            _ => "unknown",
        }
    }

    /// An owned copy (a value of a kind this release does not know becomes its JSON text,
    /// parsed).
    pub fn to_value(self) -> Value {
        match self.kind() {
            ValueKind::Null => Value::Null,
            ValueKind::Bool(b) => Value::Bool(b),
            ValueKind::Int(i) => Value::Int(i),
            ValueKind::Float(f) => Value::Float(f),
            ValueKind::Str(s) => Value::Str(s.to_owned()),
            ValueKind::Bytes(b) => Value::Bytes(b.to_vec()),
            ValueKind::List(l) => Value::List(l.iter().map(ValueRef::to_value).collect()),
            ValueKind::Map(m) => Value::Map(Map {
                fields: m
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_value()))
                    .collect(),
            }),
            _ => {
                let e = self.entry();
                serde_json::from_str(self.tape.str_at(e.payload, e.len)).unwrap_or_default()
            }
        }
    }

    /// Equality as a pipeline author means it: an integer and a float are equal when they
    /// are the same number (exactly: 2^53 + 1 is not 2^53); otherwise values are equal when
    /// they have the same type and content.
    pub fn loosely_eq(self, other: &Value) -> bool {
        match (self.kind(), other) {
            (ValueKind::Int(i), Value::Float(f)) => int_eq_float(i, *f),
            (ValueKind::Float(f), Value::Int(i)) => int_eq_float(*i, f),
            _ => self == *other,
        }
    }
}

/// Exact: `i as f64 == f` would call 2^53 + 1 equal to 2^53.
fn int_eq_float(i: i64, f: f64) -> bool {
    f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 && f as i64 == i
}

impl PartialEq<Value> for ValueRef<'_> {
    fn eq(&self, other: &Value) -> bool {
        match (self.kind(), other) {
            (ValueKind::Null, Value::Null) => true,
            (ValueKind::Bool(a), Value::Bool(b)) => a == *b,
            (ValueKind::Int(a), Value::Int(b)) => a == *b,
            (ValueKind::Float(a), Value::Float(b)) => a == *b,
            (ValueKind::Str(a), Value::Str(b)) => crate::same_bytes(a.as_bytes(), b.as_bytes()),
            (ValueKind::Bytes(a), Value::Bytes(b)) => a == &b[..],
            (ValueKind::List(a), Value::List(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == *y)
            }
            (ValueKind::Map(a), Value::Map(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v == *w))
            }
            _ => false,
        }
    }
}

/// Views compared in place, as [`PartialEq<Value>`] does (no copy).
impl PartialEq for ValueRef<'_> {
    fn eq(&self, other: &ValueRef<'_>) -> bool {
        match (self.kind(), other.kind()) {
            (ValueKind::Null, ValueKind::Null) => true,
            (ValueKind::Bool(a), ValueKind::Bool(b)) => a == b,
            (ValueKind::Int(a), ValueKind::Int(b)) => a == b,
            (ValueKind::Float(a), ValueKind::Float(b)) => a == b,
            (ValueKind::Str(a), ValueKind::Str(b)) => crate::same_bytes(a.as_bytes(), b.as_bytes()),
            (ValueKind::Bytes(a), ValueKind::Bytes(b)) => a == b,
            (ValueKind::List(a), ValueKind::List(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x == y)
            }
            (ValueKind::Map(a), ValueKind::Map(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v == w))
            }
            // Kinds of a later release: as against an owned copy (rare).
            (ValueKind::Unknown, ValueKind::Unknown) => *self == other.to_value(),
            _ => false,
        }
    }
}

impl fmt::Debug for ValueRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&ValueRef::to_value(*self), f)
    }
}

/// A view of a map inside a record (or of the record's own fields).
#[derive(Clone, Copy)]
pub struct MapRef<'a> {
    pub(crate) tape: Tape<'a>,
    /// Its first field's entry.
    pub(crate) first: usize,
    pub(crate) len: usize,
}

impl<'a> MapRef<'a> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<ValueRef<'a>> {
        self.tape
            .children(self.first, self.len)
            .find(|&i| self.tape.key_is(i, key))
            .map(|at| ValueRef {
                tape: self.tape,
                at,
            })
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The fields, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, ValueRef<'a>)> + 'a {
        let tape = self.tape;
        tape.children(self.first, self.len)
            .map(move |at| (tape.key(at), ValueRef { tape, at }))
    }
}

impl PartialEq for MapRef<'_> {
    fn eq(&self, other: &MapRef<'_>) -> bool {
        self.len == other.len
            && self
                .iter()
                .all(|(k, v)| other.get(k).is_some_and(|w| v == w))
    }
}

impl fmt::Debug for MapRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A view of a list inside a record.
#[derive(Clone, Copy)]
pub struct ListRef<'a> {
    pub(crate) tape: Tape<'a>,
    pub(crate) first: usize,
    pub(crate) len: usize,
}

impl<'a> ListRef<'a> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, index: usize) -> Option<ValueRef<'a>> {
        self.iter().nth(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = ValueRef<'a>> + 'a {
        let tape = self.tape;
        tape.children(self.first, self.len)
            .map(move |at| ValueRef { tape, at })
    }
}

impl PartialEq for ListRef<'_> {
    fn eq(&self, other: &ListRef<'_>) -> bool {
        self.len == other.len && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl fmt::Debug for ListRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

// ---- JSON out ----

impl Serialize for ValueRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.kind() {
            ValueKind::Null => s.serialize_unit(),
            ValueKind::Bool(b) => s.serialize_bool(b),
            ValueKind::Int(i) => s.serialize_i64(i),
            ValueKind::Float(f) => s.serialize_f64(f),
            ValueKind::Str(v) => s.serialize_str(v),
            ValueKind::Bytes(b) => s.serialize_bytes(b),
            ValueKind::List(l) => l.serialize(s),
            ValueKind::Map(m) => m.serialize(s),
            _ => {
                // A kind from a later release carries its JSON text: written as it is.
                let e = self.entry();
                let text = self.tape.str_at(e.payload, e.len);
                let raw = serde_json::value::RawValue::from_string(text.to_owned())
                    .map_err(serde::ser::Error::custom)?;
                raw.serialize(s)
            }
        }
    }
}

impl Serialize for MapRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, &v)?;
        }
        map.end()
    }
}

impl Serialize for ListRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len))?;
        for v in self.iter() {
            seq.serialize_element(&v)?;
        }
        seq.end()
    }
}

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
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(m) => m.serialize(s),
        }
    }
}

impl Serialize for Map {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.fields.len()))?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Record;

    #[test]
    fn numbers_compare_loosely_and_exactly() {
        let r: Record = [("i", Value::Int(3)), ("f", Value::Float(3.0))]
            .into_iter()
            .collect();
        let i = r.get("i").unwrap();
        assert!(i.loosely_eq(&Value::Float(3.0)));
        assert!(!i.loosely_eq(&Value::Float(3.5)));
        assert!(!i.loosely_eq(&Value::from("3")));
        assert!(r.get("f").unwrap().loosely_eq(&Value::Int(3)));
        let big: Record = [("n", Value::Int((1 << 53) + 1))].into_iter().collect();
        assert!(!big
            .get("n")
            .unwrap()
            .loosely_eq(&Value::Float((1i64 << 53) as f64)));
    }

    #[test]
    fn views_and_owned_values_agree() {
        let nested = Value::Map(
            [
                (
                    "l",
                    Value::List(vec![Value::Int(1), Value::from("x"), Value::Null]),
                ),
                (
                    "m",
                    Value::Map([("k", Value::Bool(true))].into_iter().collect()),
                ),
            ]
            .into_iter()
            .collect(),
        );
        let r: Record = [("a", nested.clone()), ("b", Value::Float(1.5))]
            .into_iter()
            .collect();
        let a = r.get("a").unwrap();
        assert_eq!(a, nested);
        assert_eq!(a.to_value(), nested);
        assert_eq!(
            a.get("m")
                .and_then(|m| m.get("k"))
                .and_then(|v| v.as_bool()),
            Some(true)
        );
        let l = a.get("l").unwrap().as_list().unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l.get(1).and_then(|v| v.as_str()), Some("x"));
        assert_eq!(r.get("b").and_then(|v| v.as_f64()), Some(1.5));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"a":{"l":[1,"x",null],"m":{"k":true}},"b":1.5}"#
        );
    }
}
