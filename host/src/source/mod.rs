//! Sources: where messages enter the pipeline. Each source decodes messages into records and
//! sends them on in batches.

pub mod zmq;
pub mod zmtp;

use plugin_api::{JsonError, Record, Value};

use crate::config::Decode;

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

/// Turns one message payload into a record (its `meta` is filled in by the caller).
pub fn decode(payload: &[u8], decode: Decode, max_bytes: usize) -> Result<Record, DecodeError> {
    if payload.len() > max_bytes {
        return Err(DecodeError::TooLarge);
    }
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    match decode {
        Decode::Json => Record::from_json(payload).map_err(DecodeError::Json),
        Decode::Raw => {
            let value = match std::str::from_utf8(payload) {
                Ok(text) => Value::from(text),
                Err(_) => Value::Bytes(payload.to_vec()),
            };
            Ok([("message", value)].into_iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_message_has_its_own_error_type() {
        let d = |p: &[u8]| {
            decode(p, Decode::Json, 64)
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
    fn raw_keeps_text_or_bytes() {
        let r = decode(b"hello", Decode::Raw, 64).unwrap();
        assert_eq!(r.get("message").and_then(|v| v.as_str()), Some("hello"));
        let r = decode(b"\xff", Decode::Raw, 64).unwrap();
        assert!(matches!(
            r.get("message").map(|v| v.kind()),
            Some(plugin_api::ValueKind::Bytes(_))
        ));
    }
}
