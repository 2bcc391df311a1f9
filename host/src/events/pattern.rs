//! Subscription patterns: an exact event type (`health.status.changed`), a prefix wildcard
//! (`performance.*`, `performance.phase.*`) or everything (`*`).
//!
//! The set of event types is closed, so a pattern is resolved once, when it is parsed, into a
//! bit per type: matching on the publish path is one AND, and a pattern that can never match
//! (a typo in a pipeline file) is an error instead of a silent, empty subscription.

use std::{fmt, str::FromStr};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::EventKind;

const _: () = assert!(EventKind::ALL.len() <= u16::BITS as usize);

/// Which event types a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Box<str>,
    mask: u16,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty event pattern")]
    Empty,
    #[error("event pattern `{0}`: `*` may only be a whole last segment, as in `performance.*`")]
    MisplacedWildcard(String),
    #[error("event pattern `{0}` matches no event type (known: {known})", known = known())]
    MatchesNothing(String),
}

fn known() -> String {
    EventKind::ALL.map(EventKind::as_str).join(", ")
}

impl Pattern {
    /// Parses `*`, `<prefix>.*` or an exact event type name.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let mask = if text == "*" {
            all_mask()
        } else if let Some(prefix) = text.strip_suffix(".*") {
            if prefix.is_empty() || prefix.contains('*') {
                return Err(PatternError::MisplacedWildcard(text.to_owned()));
            }
            mask_where(|name| {
                name.strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.'))
            })
        } else if text.contains('*') {
            return Err(PatternError::MisplacedWildcard(text.to_owned()));
        } else {
            mask_where(|name| name == text)
        };
        if mask == 0 {
            return Err(PatternError::MatchesNothing(text.to_owned()));
        }
        Ok(Pattern {
            text: text.into(),
            mask,
        })
    }

    /// `*`: every event type.
    pub fn all() -> Pattern {
        Pattern {
            text: "*".into(),
            mask: all_mask(),
        }
    }

    /// Exactly one event type.
    pub fn exact(kind: EventKind) -> Pattern {
        Pattern {
            text: kind.as_str().into(),
            mask: bit(kind),
        }
    }

    #[inline]
    pub fn matches(&self, kind: EventKind) -> bool {
        self.mask & bit(kind) != 0
    }

    /// The event types this pattern matches.
    pub fn kinds(&self) -> impl Iterator<Item = EventKind> + '_ {
        EventKind::ALL.into_iter().filter(|k| self.matches(*k))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[inline]
const fn bit(kind: EventKind) -> u16 {
    1 << kind.index()
}

fn all_mask() -> u16 {
    EventKind::ALL.into_iter().fold(0, |m, k| m | bit(k))
}

fn mask_where(f: impl Fn(&str) -> bool) -> u16 {
    EventKind::ALL
        .into_iter()
        .filter(|k| f(k.as_str()))
        .fold(0, |m, k| m | bit(k))
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Pattern::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind as K;

    fn kinds(p: &str) -> Vec<EventKind> {
        Pattern::parse(p).unwrap().kinds().collect()
    }

    #[test]
    fn exact_names_match_one_type() {
        for k in EventKind::ALL {
            let p = Pattern::parse(k.as_str()).unwrap();
            assert_eq!(p, Pattern::exact(k));
            assert_eq!(p.kinds().collect::<Vec<_>>(), vec![k]);
        }
    }

    #[test]
    fn wildcards_match_by_whole_segments() {
        assert_eq!(kinds("*"), EventKind::ALL.to_vec());
        assert_eq!(Pattern::parse("*").unwrap(), Pattern::all());
        assert_eq!(
            kinds("performance.*"),
            vec![
                K::PhaseStart,
                K::PhaseEnd,
                K::OperationComplete,
                K::OperationFailed,
                K::MetricRecorded
            ]
        );
        assert_eq!(
            kinds("performance.phase.*"),
            vec![K::PhaseStart, K::PhaseEnd]
        );
        assert_eq!(
            kinds("health.*"),
            vec![
                K::HealthCheckCompleted,
                K::HealthStatusChanged,
                K::HealthComponentDegraded
            ]
        );
        assert_eq!(
            kinds("pipeline.*"),
            vec![K::PipelineStarted, K::PipelineStopped]
        );
        let p = Pattern::parse("performance.*").unwrap();
        assert!(p.matches(K::OperationComplete));
        assert!(!p.matches(K::PipelineStarted));
        assert_eq!(p.to_string(), "performance.*");
    }

    #[test]
    fn bad_patterns_are_refused() {
        use PatternError as E;
        assert_eq!(Pattern::parse(""), Err(E::Empty));
        for p in ["perf*", "*.end", "performance.*.end", "**", "*.*", ".*"] {
            assert_eq!(
                Pattern::parse(p),
                Err(E::MisplacedWildcard(p.into())),
                "{p}"
            );
        }
        // A prefix matches whole segments only, and a name must be a known type.
        for p in [
            "perf.*",
            "performance.phase",
            "pipeline.started.*",
            "Pipeline.started",
        ] {
            assert_eq!(Pattern::parse(p), Err(E::MatchesNothing(p.into())), "{p}");
        }
        let msg = Pattern::parse("pipeline.restarted")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("pipeline.started"), "{msg}");
    }

    #[test]
    fn patterns_deserialize_from_strings() {
        let p: Pattern = serde_json::from_str(r#""health.*""#).unwrap();
        assert_eq!(p.as_str(), "health.*");
        assert!(serde_json::from_str::<Pattern>(r#""heath.*""#).is_err());
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""health.*""#);
    }
}
