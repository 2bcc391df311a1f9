//! The data a record holds: [`Value`], [`Map`] and the string type under both, [`Str`].
//!
//! All three keep their layout private, so their representation can change without changing a
//! plugin's source. [`Value`] can also grow across the boundary: a later 0.2 release may add a
//! kind of value, and a library built against this one sees a value of that kind as
//! [`ValueKind::Unknown`], passes it on untouched, and can still write it out as JSON
//! (abi_stable's `NonExhaustive` carries the creator's functions along with the value).
//!
//! Strings of up to 31 bytes (most keys and many values) are stored inline, without an
//! allocation; longer ones in one buffer each.

// abi_stable's derive generates impls of foreign traits next to the type; the lint misreads
// that.
#![allow(non_local_definitions)]

use std::{cmp::Ordering, fmt};

use abi_stable::{
    nonexhaustive_enum::{NonExhaustive, SerializeEnum},
    std_types::{RBoxError, RString, RVec},
    StableAbi,
};
use serde::{ser::SerializeMap, ser::SerializeSeq, Serialize, Serializer};

// ---- Str ----

/// Bytes a string may have and still be stored inline.
const INLINE: usize = 31;

#[repr(C, u8)]
#[derive(StableAbi, Clone)]
enum StrRepr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(RString),
}

/// An immutable UTF-8 string, inline when short. Keys and string values are `Str`s; a
/// plugin sees them as `&str`.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct Str {
    repr: StrRepr,
}

impl Str {
    pub fn new(s: &str) -> Str {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Str {
                repr: StrRepr::Inline {
                    len: s.len() as u8,
                    bytes,
                },
            }
        } else {
            Str {
                repr: StrRepr::Heap(s.into()),
            }
        }
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.repr {
            StrRepr::Inline { len, bytes } => {
                let bytes = &bytes[..usize::from(*len).min(INLINE)];
                // SAFETY: inline bytes are only ever copied from a `&str` (see `new`), whole.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            StrRepr::Heap(s) => s.as_str(),
        }
    }
}

impl std::ops::Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Str {
    fn eq(&self, other: &Str) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Str {
        Str::new(s)
    }
}

impl From<String> for Str {
    fn from(s: String) -> Str {
        if s.len() <= INLINE {
            Str::new(&s)
        } else {
            Str {
                repr: StrRepr::Heap(s.into()),
            }
        }
    }
}

// ---- Value ----

/// How a [`Value`] is stored. Not part of the API: match on [`Value::kind`] instead.
#[doc(hidden)]
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Debug)]
#[sabi(kind(WithNonExhaustive(
    size = [u64; 6],
    align = u64,
    traits(Debug, Clone, PartialEq, Serialize)
)))]
#[non_exhaustive]
pub enum ValueRepr {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Str),
    Bytes(RVec<u8>),
    List(RVec<Value>),
    Map(Map),
}

impl SerializeEnum<ValueRepr> for ValueRepr_Interface {
    /// JSON text: how a library writes out a kind of value it does not know (see
    /// [`Value`]'s `Serialize`).
    type Proxy = RString;

    fn serialize_enum(this: &ValueRepr) -> Result<RString, RBoxError> {
        serde_json::to_string(&KnownValue(this))
            .map(RString::from)
            .map_err(RBoxError::new)
    }
}

/// A dynamically typed value, as decoded from JSON.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq)]
pub struct Value(ValueRepr_NE);

/// A [`Value`], seen as what it holds: what a plugin matches on.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ValueKind<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    List(&'a [Value]),
    Map(&'a Map),
    /// A kind of value added by a later release than the one this library was built
    /// against. It passes through unchanged, and serializes as its creator wrote it.
    Unknown,
}

impl Value {
    fn of(repr: ValueRepr) -> Value {
        Value(NonExhaustive::new(repr))
    }

    pub fn null() -> Value {
        Value::of(ValueRepr::Null)
    }

    pub fn bytes(bytes: impl Into<RVec<u8>>) -> Value {
        Value::of(ValueRepr::Bytes(bytes.into()))
    }

    pub fn list(items: impl IntoIterator<Item = Value>) -> Value {
        Value::of(ValueRepr::List(items.into_iter().collect()))
    }

    pub fn map(map: Map) -> Value {
        Value::of(ValueRepr::Map(map))
    }

    /// What the value holds.
    #[inline]
    pub fn kind(&self) -> ValueKind<'_> {
        match self.0.as_enum() {
            Ok(ValueRepr::Null) => ValueKind::Null,
            Ok(ValueRepr::Bool(b)) => ValueKind::Bool(*b),
            Ok(ValueRepr::Int(i)) => ValueKind::Int(*i),
            Ok(ValueRepr::Float(f)) => ValueKind::Float(*f),
            Ok(ValueRepr::Str(s)) => ValueKind::Str(s.as_str()),
            Ok(ValueRepr::Bytes(b)) => ValueKind::Bytes(b),
            Ok(ValueRepr::List(l)) => ValueKind::List(l),
            Ok(ValueRepr::Map(m)) => ValueKind::Map(m),
            Err(_) => ValueKind::Unknown,
        }
    }

    /// The name of this value's type, as the monitor counts it ("string", "int", ...).
    pub fn type_name(&self) -> &'static str {
        match self.kind() {
            ValueKind::Null => "null",
            ValueKind::Bool(_) => "bool",
            ValueKind::Int(_) => "int",
            ValueKind::Float(_) => "float",
            ValueKind::Str(_) => "string",
            ValueKind::Bytes(_) => "bytes",
            ValueKind::List(_) => "list",
            ValueKind::Map(_) => "map",
            ValueKind::Unknown => "unknown",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind(), ValueKind::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self.kind() {
            ValueKind::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self.kind() {
            ValueKind::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The value as a float, for numbers of either kind.
    pub fn as_f64(&self) -> Option<f64> {
        match self.kind() {
            ValueKind::Int(i) => Some(i as f64),
            ValueKind::Float(f) => Some(f),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.kind() {
            ValueKind::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self.kind() {
            ValueKind::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&Map> {
        match self.kind() {
            ValueKind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The map inside, to change in place.
    pub fn as_map_mut(&mut self) -> Option<&mut Map> {
        match self.0.as_enum_mut() {
            Ok(ValueRepr::Map(m)) => Some(m),
            _ => None,
        }
    }

    /// The items inside, to change in place.
    pub fn as_list_mut(&mut self) -> Option<&mut RVec<Value>> {
        match self.0.as_enum_mut() {
            Ok(ValueRepr::List(l)) => Some(l),
            _ => None,
        }
    }

    /// Looks a key up in a map value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map().and_then(|m| m.get(key))
    }

    /// Equality as a pipeline author means it: an integer and a float are equal when they
    /// are the same number (exactly: 2^53 + 1 is not 2^53); otherwise values are equal when
    /// they have the same type and content.
    pub fn loosely_eq(&self, other: &Value) -> bool {
        match (self.kind(), other.kind()) {
            (ValueKind::Int(i), ValueKind::Float(f)) | (ValueKind::Float(f), ValueKind::Int(i)) => {
                f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 && f as i64 == i
            }
            _ => self == other,
        }
    }
}

impl Default for Value {
    fn default() -> Value {
        Value::null()
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            ValueKind::Null => f.write_str("null"),
            ValueKind::Bool(b) => write!(f, "{b}"),
            ValueKind::Int(i) => write!(f, "{i}"),
            ValueKind::Float(x) => write!(f, "{x:?}"),
            ValueKind::Str(s) => write!(f, "{s:?}"),
            ValueKind::Bytes(b) => write!(f, "bytes{b:?}"),
            ValueKind::List(l) => f.debug_list().entries(l).finish(),
            ValueKind::Map(m) => fmt::Debug::fmt(m, f),
            ValueKind::Unknown => f.write_str("<unknown value>"),
        }
    }
}

macro_rules! from_scalar {
    ($($t:ty => |$v:ident| $e:expr),+ $(,)?) => {$(
        impl From<$t> for Value {
            fn from($v: $t) -> Value {
                Value::of($e)
            }
        }
    )+};
}

from_scalar! {
    bool => |v| ValueRepr::Bool(v),
    i64 => |v| ValueRepr::Int(v),
    i32 => |v| ValueRepr::Int(v.into()),
    u32 => |v| ValueRepr::Int(v.into()),
    f64 => |v| ValueRepr::Float(v),
    &str => |v| ValueRepr::Str(Str::new(v)),
    String => |v| ValueRepr::Str(Str::from(v)),
    Str => |v| ValueRepr::Str(v),
    Map => |v| ValueRepr::Map(v),
}

impl From<Option<Value>> for Value {
    fn from(v: Option<Value>) -> Value {
        v.unwrap_or_default()
    }
}

// ---- Map ----

/// One key/value pair of a [`Map`].
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq)]
struct Field {
    key: Str,
    value: Value,
}

/// Fields in the order they were written: messages are small, so a linear scan beats hashing,
/// and the order of the input survives to the output. Keys are unique.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Default)]
pub struct Map {
    fields: RVec<Field>,
}

impl Map {
    pub fn new() -> Map {
        Map::default()
    }

    pub fn with_capacity(n: usize) -> Map {
        Map {
            fields: RVec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    #[inline]
    fn position(&self, key: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.key.as_str() == key)
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|f| f.key.as_str() == key)
            .map(|f| &f.value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.fields
            .iter_mut()
            .find(|f| f.key.as_str() == key)
            .map(|f| &mut f.value)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Sets `key` to `value`, replacing an existing field in place or appending a new one.
    pub fn insert(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.get_mut(key) {
            Some(slot) => *slot = value,
            None => self.fields.push(Field {
                key: Str::new(key),
                value,
            }),
        }
    }

    /// Appends a field whose key the caller knows is not in the map yet (decoders that check
    /// for duplicates themselves).
    #[doc(hidden)]
    pub fn push_unchecked(&mut self, key: Str, value: Value) {
        self.fields.push(Field { key, value });
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.position(key)?;
        Some(self.fields.remove(pos).value)
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
                let value = self.fields.remove(src).value;
                let dst = if dst > src { dst - 1 } else { dst };
                self.fields[dst].value = value;
            }
            None => self.fields[src].key = Str::new(to),
        }
        true
    }

    /// Keeps the fields for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut Value) -> bool) {
        crate::retain_mut(&mut self.fields, |f| keep(f.key.as_str(), &mut f.value));
    }

    /// The fields, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.fields.iter().map(|f| (f.key.as_str(), &f.value))
    }

    /// The fields, in order, with their values open to change.
    pub fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = (&str, &mut Value)> + '_ {
        self.fields
            .iter_mut()
            .map(|f| (f.key.as_str(), &mut f.value))
    }

    pub fn reserve(&mut self, additional: usize) {
        self.fields.reserve(additional);
    }
}

impl fmt::Debug for Map {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
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

// ---- JSON out ----

/// A value whose kind is known here, for serializing without the vtable.
struct KnownValue<'a>(&'a ValueRepr);

impl Serialize for KnownValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            ValueRepr::Null => s.serialize_unit(),
            ValueRepr::Bool(b) => s.serialize_bool(*b),
            ValueRepr::Int(i) => s.serialize_i64(*i),
            ValueRepr::Float(f) => s.serialize_f64(*f),
            ValueRepr::Str(v) => s.serialize_str(v),
            ValueRepr::Bytes(b) => s.serialize_bytes(b),
            ValueRepr::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            ValueRepr::Map(m) => m.serialize(s),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_enum() {
            Ok(repr) => KnownValue(repr).serialize(s),
            // A kind of value from a later release: its creator's code writes it.
            Err(_) => {
                let json = self
                    .0
                    .serialize_into_proxy()
                    .map_err(serde::ser::Error::custom)?;
                let raw = serde_json::value::RawValue::from_string(json.into())
                    .map_err(serde::ser::Error::custom)?;
                raw.serialize(s)
            }
        }
    }
}

impl Serialize for Map {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.fields.len()))?;
        for f in self.fields.iter() {
            map.serialize_entry(f.key.as_str(), &f.value)?;
        }
        map.end()
    }
}

impl PartialOrd for Str {
    fn partial_cmp(&self, other: &Str) -> Option<Ordering> {
        Some(self.as_str().cmp(other.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_inline_and_long_ones_are_not() {
        let short = Str::new("generated message number 99999");
        assert!(matches!(short.repr, StrRepr::Inline { .. }));
        assert_eq!(short.as_str(), "generated message number 99999");
        let long = Str::new(&"x".repeat(32));
        assert!(matches!(long.repr, StrRepr::Heap(_)));
        assert_eq!(long.len(), 32);
        assert_eq!(std::mem::size_of::<Str>(), 40);
    }

    #[test]
    fn maps_keep_order_rename_in_place_and_replace() {
        let mut m: Map = [("a", 1i64), ("b", 2), ("c", 3)].into_iter().collect();
        assert!(m.rename("a", "z"));
        assert_eq!(
            m.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["z", "b", "c"]
        );
        assert!(m.rename("z", "c"));
        assert_eq!(m.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(m.get("c"), Some(&Value::from(1i64)));
        m.insert("b", "now a string");
        assert_eq!(m.get("b").and_then(Value::as_str), Some("now a string"));
        assert!(!m.rename("missing", "x"));
    }

    #[test]
    fn numbers_compare_loosely_and_exactly() {
        assert!(Value::from(3i64).loosely_eq(&Value::from(3.0)));
        assert!(!Value::from(3i64).loosely_eq(&Value::from(3.5)));
        let big = (1i64 << 53) + 1;
        assert!(!Value::from(big).loosely_eq(&Value::from((1i64 << 53) as f64)));
        assert!(!Value::from("3").loosely_eq(&Value::from(3i64)));
    }

    /// A later 0.2.x's `Value`, with a kind of value this release does not have: what a
    /// library built against it would hand over. Same names, in a module of their own, so
    /// that abi_stable compares them as the same types.
    mod later {
        // The whole shape of the later release, of which the test uses a little.
        #![allow(non_local_definitions, dead_code)]

        use abi_stable::{
            nonexhaustive_enum::SerializeEnum,
            std_types::{RBoxError, RString, RVec},
            StableAbi,
        };

        use super::super::{Map, Str};

        #[repr(u8)]
        #[derive(StableAbi, Clone, PartialEq, Debug)]
        #[sabi(kind(WithNonExhaustive(
            size = [u64; 6],
            align = u64,
            traits(Debug, Clone, PartialEq, Serialize)
        )))]
        #[non_exhaustive]
        pub enum ValueRepr {
            Null,
            Bool(bool),
            Int(i64),
            Float(f64),
            Str(Str),
            Bytes(RVec<u8>),
            List(RVec<Value>),
            Map(Map),
            /// The kind a later release adds.
            Timestamp {
                unix_ns: i64,
            },
        }

        impl SerializeEnum<ValueRepr> for ValueRepr_Interface {
            type Proxy = RString;

            fn serialize_enum(this: &ValueRepr) -> Result<RString, RBoxError> {
                match this {
                    ValueRepr::Timestamp { unix_ns } => {
                        Ok(format!("{{\"unix_ns\":{unix_ns}}}").into())
                    }
                    other => Err(RBoxError::from_fmt(&format_args!("{other:?}"))),
                }
            }
        }

        #[repr(C)]
        #[derive(StableAbi, Clone, PartialEq, Debug)]
        pub struct Value(pub ValueRepr_NE);
    }

    #[test]
    fn a_value_of_a_kind_added_later_passes_the_layout_check() {
        use abi_stable::abi_stability::abi_checking::check_layout_compatibility;

        // `Value` is non-exhaustive across the boundary: a host of this release loads a
        // library whose `Value` has a kind more.
        if let Err(e) = check_layout_compatibility(Value::LAYOUT, later::Value::LAYOUT) {
            panic!("{e}");
        }
        // The check does see the new kind: it accepts it from the newer side only (which is
        // why a host checks an older library with the roles swapped).
        let swapped = check_layout_compatibility(later::Value::LAYOUT, Value::LAYOUT)
            .expect_err("a kind more on the interface's side is not allowed");
        assert!(
            swapped.to_string().contains("too many variants"),
            "{swapped}"
        );
        // And the later kind fits the storage both agree on.
        let later = later::Value(later::ValueRepr_NE::new(later::ValueRepr::Timestamp {
            unix_ns: 7,
        }));
        assert!(later.0.as_enum().is_ok());
    }
}
