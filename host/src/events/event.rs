//! The events themselves: a closed set of types ([`EventKind`]), each with a typed payload
//! ([`EventPayload`]), stamped with the time, the instance that emitted it and a context id.
//!
//! Events are made on the data path (one per stage call in `event_driven` mode) and cloned once
//! per subscriber, so both must be cheap: names are `Arc<str>` (a stage's name is allocated
//! once, when the pipeline starts, and shared by every event about it) and the payload sits
//! behind an `Arc`, so a clone is two reference-count increments.
//!
//! # JSON
//!
//! ```json
//! {"type": "performance.operation.complete", "timestamp_ns": 1718000000000000000,
//!  "instance": "web-1-4242", "context_id": 17,
//!  "payload": {"stage": "process", "operation": "process", "duration_ns": 5300,
//!              "records_in": 1024, "records_out": 1000}}
//! ```
//!
//! An event about a stage call that was traced (`monitoring.otlp.traces`, a sampled call) also
//! carries `"trace_id"` (32 hex digits) and `"span_id"` (16), the call's span; other events
//! have neither field.
//!
//! The payload carries no tag of its own: `type` says which shape it has. Readers of this crate
//! ignore payload fields they do not know, so a payload may grow a field without breaking older
//! readers; removing or retyping a field is a new event type.

use std::{
    fmt,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, OnceLock,
    },
};

use serde::{
    de::{self, MapAccess, Visitor},
    ser::{SerializeMap, SerializeStruct},
    Deserialize, Deserializer, Serialize, Serializer,
};

/// The type of an event. The set is closed: a subscription pattern or a reader that names a
/// type not listed here is an error, found when it is parsed rather than by silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `performance.phase.start`: a stage call begins.
    PhaseStart,
    /// `performance.phase.end`: a stage call returned (whatever its outcome).
    PhaseEnd,
    /// `performance.operation.complete`: a stage call succeeded.
    OperationComplete,
    /// `performance.operation.failed`: a stage call, or some of its records, failed.
    OperationFailed,
    /// `performance.metric.recorded`: a stage recorded a metric value.
    MetricRecorded,
    /// `health.check.completed`: a component's health check ran.
    HealthCheckCompleted,
    /// `health.status.changed`: a component's health moved from one state to another.
    HealthStatusChanged,
    /// `health.component.degraded`: a component keeps working, but not well.
    HealthComponentDegraded,
    /// `pipeline.started`: every stage and source is running.
    PipelineStarted,
    /// `pipeline.stopped`: the pipeline has drained and stopped.
    PipelineStopped,
}

impl EventKind {
    /// Every event type, in declaration order.
    pub const ALL: [EventKind; 10] = [
        EventKind::PhaseStart,
        EventKind::PhaseEnd,
        EventKind::OperationComplete,
        EventKind::OperationFailed,
        EventKind::MetricRecorded,
        EventKind::HealthCheckCompleted,
        EventKind::HealthStatusChanged,
        EventKind::HealthComponentDegraded,
        EventKind::PipelineStarted,
        EventKind::PipelineStopped,
    ];

    /// The dotted name: the JSON `type`, the Redis stream suffix, what patterns match.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::PhaseStart => "performance.phase.start",
            EventKind::PhaseEnd => "performance.phase.end",
            EventKind::OperationComplete => "performance.operation.complete",
            EventKind::OperationFailed => "performance.operation.failed",
            EventKind::MetricRecorded => "performance.metric.recorded",
            EventKind::HealthCheckCompleted => "health.check.completed",
            EventKind::HealthStatusChanged => "health.status.changed",
            EventKind::HealthComponentDegraded => "health.component.degraded",
            EventKind::PipelineStarted => "pipeline.started",
            EventKind::PipelineStopped => "pipeline.stopped",
        }
    }

    /// This type's position in [`EventKind::ALL`]; patterns keep a bit per type.
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// The [`EventPayload`] variant that events of this type carry.
    fn payload_variant(self) -> &'static str {
        match self {
            EventKind::PhaseStart | EventKind::PhaseEnd => "Phase",
            EventKind::OperationComplete => "OperationComplete",
            EventKind::OperationFailed => "OperationFailed",
            EventKind::MetricRecorded => "MetricRecorded",
            EventKind::HealthCheckCompleted => "HealthCheck",
            EventKind::HealthStatusChanged => "StatusChanged",
            EventKind::HealthComponentDegraded => "Degraded",
            EventKind::PipelineStarted | EventKind::PipelineStopped => "Pipeline",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`EventKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type `{name}` (known: {})", known_names())]
pub struct UnknownEventKind {
    pub name: String,
}

fn known_names() -> String {
    EventKind::ALL.map(EventKind::as_str).join(", ")
}

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownEventKind { name: s.to_owned() })
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        name.parse().map_err(de::Error::custom)
    }
}

/// A component's health, as health events report it: [`plugin_api::HealthStatus`] with a
/// serialized form (that type is ABI-stable and has none); they convert both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthState {
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

impl From<plugin_api::HealthStatus> for HealthState {
    fn from(s: plugin_api::HealthStatus) -> Self {
        match s {
            plugin_api::HealthStatus::Healthy => HealthState::Healthy,
            plugin_api::HealthStatus::Degraded => HealthState::Degraded,
            // A status a later plugin-api added counts as unhealthy.
            _ => HealthState::Unhealthy,
        }
    }
}

impl From<HealthState> for plugin_api::HealthStatus {
    fn from(s: HealthState) -> Self {
        match s {
            HealthState::Healthy => plugin_api::HealthStatus::Healthy,
            HealthState::Degraded => plugin_api::HealthStatus::Degraded,
            HealthState::Unhealthy => plugin_api::HealthStatus::Unhealthy,
        }
    }
}

/// What an event says. Which variant goes with which [`EventKind`] is fixed (see
/// [`EventPayload::fits`]); the JSON form is the variant's fields only, since the event's
/// `type` already names the shape.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum EventPayload {
    /// `performance.phase.start` / `performance.phase.end`. The event's `context_id` pairs a
    /// start with its end.
    Phase {
        stage: Arc<str>,
        operation: Arc<str>,
    },
    /// `performance.operation.complete`.
    OperationComplete {
        stage: Arc<str>,
        operation: Arc<str>,
        duration_ns: u64,
        records_in: u64,
        records_out: u64,
    },
    /// `performance.operation.failed`: `records` is how many records the failure covers (the
    /// whole batch when the call failed, one for a single record); `duration_ns` is the
    /// failed call's duration (0 for a single record's failure).
    OperationFailed {
        stage: Arc<str>,
        operation: Arc<str>,
        error_type: Arc<str>,
        message: String,
        records: u64,
        #[serde(default)]
        duration_ns: u64,
    },
    /// `performance.metric.recorded`. A non-finite `value` is written as JSON `null` (JSON has
    /// no NaN) and read back as NaN. Labels keep their order and are a JSON object.
    MetricRecorded {
        stage: Arc<str>,
        name: Arc<str>,
        #[serde(deserialize_with = "f64_or_null")]
        value: f64,
        #[serde(default, deserialize_with = "labels_from_map")]
        labels: Vec<(String, String)>,
    },
    /// `health.check.completed`.
    HealthCheck {
        component: Arc<str>,
        status: HealthState,
        reason: String,
    },
    /// `health.status.changed`.
    StatusChanged {
        component: Arc<str>,
        from: HealthState,
        to: HealthState,
        reason: String,
    },
    /// `health.component.degraded`.
    Degraded { component: Arc<str>, reason: String },
    /// `pipeline.started` / `pipeline.stopped`.
    Pipeline { stages: usize, sources: usize },
}

impl EventPayload {
    /// Whether this payload is the one events of type `kind` carry.
    pub fn fits(&self, kind: EventKind) -> bool {
        use EventKind as K;
        matches!(
            (self, kind),
            (EventPayload::Phase { .. }, K::PhaseStart | K::PhaseEnd)
                | (EventPayload::OperationComplete { .. }, K::OperationComplete)
                | (EventPayload::OperationFailed { .. }, K::OperationFailed)
                | (EventPayload::MetricRecorded { .. }, K::MetricRecorded)
                | (EventPayload::HealthCheck { .. }, K::HealthCheckCompleted)
                | (EventPayload::StatusChanged { .. }, K::HealthStatusChanged)
                | (EventPayload::Degraded { .. }, K::HealthComponentDegraded)
                | (
                    EventPayload::Pipeline { .. },
                    K::PipelineStarted | K::PipelineStopped
                )
        )
    }

    /// Reads a payload of the shape `kind` carries from its JSON text. Fields this version
    /// does not know are ignored.
    pub fn from_json(kind: EventKind, text: &str) -> Result<EventPayload, serde_json::Error> {
        // The derived Deserialize is externally tagged; the tag comes from the event's type.
        // Parsing the text directly (not through `serde_json::Value`) keeps the labels' order.
        let payload: EventPayload =
            serde_json::from_str(&format!("{{\"{}\":{text}}}", kind.payload_variant()))?;
        // Text that closes the object early could name another variant; refuse it.
        if !payload.fits(kind) {
            return Err(serde::de::Error::custom(format!(
                "payload is not the shape `{kind}` carries"
            )));
        }
        Ok(payload)
    }
}

/// The untagged JSON form: the variant's fields only.
impl Serialize for EventPayload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EventPayload::Phase { stage, operation } => {
                let mut st = s.serialize_struct("Phase", 2)?;
                st.serialize_field("stage", stage)?;
                st.serialize_field("operation", operation)?;
                st.end()
            }
            EventPayload::OperationComplete {
                stage,
                operation,
                duration_ns,
                records_in,
                records_out,
            } => {
                let mut st = s.serialize_struct("OperationComplete", 5)?;
                st.serialize_field("stage", stage)?;
                st.serialize_field("operation", operation)?;
                st.serialize_field("duration_ns", duration_ns)?;
                st.serialize_field("records_in", records_in)?;
                st.serialize_field("records_out", records_out)?;
                st.end()
            }
            EventPayload::OperationFailed {
                stage,
                operation,
                error_type,
                message,
                records,
                duration_ns,
            } => {
                let mut st = s.serialize_struct("OperationFailed", 6)?;
                st.serialize_field("stage", stage)?;
                st.serialize_field("operation", operation)?;
                st.serialize_field("error_type", error_type)?;
                st.serialize_field("message", message)?;
                st.serialize_field("records", records)?;
                st.serialize_field("duration_ns", duration_ns)?;
                st.end()
            }
            EventPayload::MetricRecorded {
                stage,
                name,
                value,
                labels,
            } => {
                let mut st = s.serialize_struct("MetricRecorded", 4)?;
                st.serialize_field("stage", stage)?;
                st.serialize_field("name", name)?;
                st.serialize_field("value", &value.is_finite().then_some(*value))?;
                st.serialize_field("labels", &LabelsAsMap(labels))?;
                st.end()
            }
            EventPayload::HealthCheck {
                component,
                status,
                reason,
            } => {
                let mut st = s.serialize_struct("HealthCheck", 3)?;
                st.serialize_field("component", component)?;
                st.serialize_field("status", status)?;
                st.serialize_field("reason", reason)?;
                st.end()
            }
            EventPayload::StatusChanged {
                component,
                from,
                to,
                reason,
            } => {
                let mut st = s.serialize_struct("StatusChanged", 4)?;
                st.serialize_field("component", component)?;
                st.serialize_field("from", from)?;
                st.serialize_field("to", to)?;
                st.serialize_field("reason", reason)?;
                st.end()
            }
            EventPayload::Degraded { component, reason } => {
                let mut st = s.serialize_struct("Degraded", 2)?;
                st.serialize_field("component", component)?;
                st.serialize_field("reason", reason)?;
                st.end()
            }
            EventPayload::Pipeline { stages, sources } => {
                let mut st = s.serialize_struct("Pipeline", 2)?;
                st.serialize_field("stages", stages)?;
                st.serialize_field("sources", sources)?;
                st.end()
            }
        }
    }
}

struct LabelsAsMap<'a>(&'a [(String, String)]);

impl Serialize for LabelsAsMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn labels_from_map<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Labels;
    impl<'de> Visitor<'de> for Labels {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of string labels")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut labels = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(entry) = map.next_entry()? {
                labels.push(entry);
            }
            Ok(labels)
        }
    }
    d.deserialize_map(Labels)
}

fn f64_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One event. Cheap to clone (reference counts only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawEvent")]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When it happened: nanoseconds since the Unix epoch, from the emitting host's clock.
    pub timestamp_ns: u64,
    /// Which host process emitted it; see [`instance_id`].
    pub instance: Arc<str>,
    /// Ties related events together (a phase's start and end, a call and its failure). 0
    /// means none. See [`next_context_id`]; a traced call's trace is in `trace`.
    pub context_id: u64,
    /// The span of the traced call the event is about (`trace_id` and `span_id` in JSON).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub trace: Option<EventTrace>,
    pub payload: Arc<EventPayload>,
}

/// The span of a traced stage call, as events carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventTrace {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl EventTrace {
    /// The trace id as 32 lower-case hex digits, as W3C trace context and OTLP/JSON write it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// Reads the two hex forms back; `None` unless both have the right length and digits.
    pub fn from_hex(trace_id: &str, span_id: &str) -> Option<EventTrace> {
        let bytes = |text: &str, out: &mut [u8]| -> Option<()> {
            if text.len() != out.len() * 2 || !text.is_ascii() {
                return None;
            }
            for (i, b) in out.iter_mut().enumerate() {
                *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
            }
            Some(())
        };
        let mut t = EventTrace {
            trace_id: [0; 16],
            span_id: [0; 8],
        };
        bytes(trace_id, &mut t.trace_id)?;
        bytes(span_id, &mut t.span_id)?;
        Some(t)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Serialize for EventTrace {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("trace_id", &self.trace_id_hex())?;
        map.serialize_entry("span_id", &self.span_id_hex())?;
        map.end()
    }
}

/// The wire form, before the payload's shape is known.
#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: EventKind,
    timestamp_ns: u64,
    instance: Arc<str>,
    context_id: u64,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    span_id: Option<String>,
    payload: Box<serde_json::value::RawValue>,
}

impl TryFrom<RawEvent> for Event {
    type Error = String;

    fn try_from(raw: RawEvent) -> Result<Self, Self::Error> {
        let payload = EventPayload::from_json(raw.kind, raw.payload.get())
            .map_err(|e| format!("bad payload for `{}`: {e}", raw.kind))?;
        let trace = match (raw.trace_id, raw.span_id) {
            (None, None) => None,
            (Some(t), Some(s)) => Some(
                EventTrace::from_hex(&t, &s)
                    .ok_or_else(|| format!("bad trace_id `{t}` or span_id `{s}`"))?,
            ),
            _ => return Err("trace_id and span_id come together".into()),
        };
        Ok(Event {
            kind: raw.kind,
            timestamp_ns: raw.timestamp_ns,
            instance: raw.instance,
            context_id: raw.context_id,
            trace,
            payload: Arc::new(payload),
        })
    }
}

impl Event {
    /// An event stamped with the current time.
    ///
    /// `payload` must fit `kind` ([`EventPayload::fits`]); a mismatch is a bug in the caller,
    /// caught by a debug assertion.
    pub fn new(
        kind: EventKind,
        instance: Arc<str>,
        context_id: u64,
        payload: EventPayload,
    ) -> Event {
        debug_assert!(
            payload.fits(kind),
            "payload {payload:?} does not fit event type {kind}"
        );
        Event {
            kind,
            timestamp_ns: now_ns(),
            instance,
            context_id,
            trace: None,
            payload: Arc::new(payload),
        }
    }

    /// The event, about the traced call `trace` (when there is one).
    pub fn with_trace(mut self, trace: Option<EventTrace>) -> Event {
        self.trace = trace;
        self
    }

    /// The JSON form (see the module docs).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events always serialize: string keys, no errors")
    }

    /// Reads the JSON form; unknown payload fields are ignored. (`Event`'s `Deserialize` reads
    /// the payload as raw JSON text, so it works with `serde_json`'s text deserializers, not
    /// from a `serde_json::Value`.)
    pub fn from_json(text: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(text)
    }
}

pub use crate::clock::unix_ns as now_ns;

/// This process's instance id, `<hostname>-<pid>`, computed once.
///
/// It tells apart the instances whose events share one Redis stream: the hostname says which
/// machine (or container), the pid which process on it. The hostname comes from
/// `/proc/sys/kernel/hostname` (the kernel's, which is the container's own inside a
/// container), else `/etc/hostname`, else `$HOSTNAME`, else `unknown-host`. It is not stable
/// across restarts, on purpose: a restarted host is a new instance.
pub fn instance_id() -> Arc<str> {
    static ID: OnceLock<Arc<str>> = OnceLock::new();
    ID.get_or_init(|| format!("{}-{}", hostname(), std::process::id()).into())
        .clone()
}

fn hostname() -> String {
    let from_file = |path: &str| std::fs::read_to_string(path).ok();
    [
        from_file("/proc/sys/kernel/hostname"),
        from_file("/etc/hostname"),
        std::env::var("HOSTNAME").ok(),
    ]
    .into_iter()
    .flatten()
    .map(|h| h.trim().to_owned())
    .find(|h| !h.is_empty() && !h.contains(char::is_whitespace))
    .unwrap_or_else(|| "unknown-host".to_owned())
}

/// A fresh context id, unique within this process (1, 2, 3, ...). Together with the
/// event's instance it is unique across instances.
pub fn next_context_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Relaxed)
}

/// Events of every type, for tests across the module.
#[cfg(test)]
pub(crate) mod samples {
    use std::sync::Arc;

    use super::*;

    pub(crate) fn sample(kind: EventKind) -> EventPayload {
        let stage: Arc<str> = "process".into();
        let op: Arc<str> = "process".into();
        match kind {
            EventKind::PhaseStart | EventKind::PhaseEnd => EventPayload::Phase {
                stage,
                operation: op,
            },
            EventKind::OperationComplete => EventPayload::OperationComplete {
                stage,
                operation: op,
                duration_ns: 5300,
                records_in: 1024,
                records_out: 1000,
            },
            EventKind::OperationFailed => EventPayload::OperationFailed {
                stage,
                operation: op,
                error_type: "parse_error".into(),
                message: "field `x` is not a number".into(),
                records: 3,
                duration_ns: 700,
            },
            EventKind::MetricRecorded => EventPayload::MetricRecorded {
                stage,
                name: "latency_ms".into(),
                value: 1.5,
                labels: vec![("z".into(), "1".into()), ("a".into(), "2".into())],
            },
            EventKind::HealthCheckCompleted => EventPayload::HealthCheck {
                component: "bus".into(),
                status: HealthState::Healthy,
                reason: String::new(),
            },
            EventKind::HealthStatusChanged => EventPayload::StatusChanged {
                component: "bus".into(),
                from: HealthState::Healthy,
                to: HealthState::Unhealthy,
                reason: "redis unreachable".into(),
            },
            EventKind::HealthComponentDegraded => EventPayload::Degraded {
                component: "export".into(),
                reason: "slow".into(),
            },
            EventKind::PipelineStarted | EventKind::PipelineStopped => EventPayload::Pipeline {
                stages: 3,
                sources: 1,
            },
        }
    }

    pub(crate) fn sample_event(kind: EventKind) -> Event {
        Event::new(kind, "test-host-1".into(), 7, sample(kind))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{samples::sample_event, *};

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut names: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>().unwrap(), k);
            assert_eq!(EventKind::ALL[k.index()], k);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventKind::ALL.len());
        let err = "performance.nope".parse::<EventKind>().unwrap_err();
        assert!(err.to_string().contains("performance.nope"), "{err}");
    }

    #[test]
    fn json_shape_is_flat_with_an_untagged_payload() {
        let mut e = sample_event(EventKind::OperationComplete);
        e.timestamp_ns = 1_718_000_000_000_000_000;
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            v,
            json!({
                "type": "performance.operation.complete",
                "timestamp_ns": 1_718_000_000_000_000_000u64,
                "instance": "test-host-1",
                "context_id": 7,
                "payload": {
                    "stage": "process", "operation": "process", "duration_ns": 5300,
                    "records_in": 1024, "records_out": 1000
                }
            })
        );
    }

    #[test]
    fn a_traced_calls_event_carries_its_trace_and_span_ids_in_hex() {
        let trace = EventTrace::from_hex("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
        let e = sample_event(EventKind::PhaseEnd).with_trace(trace);
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
        let plain = sample_event(EventKind::PhaseEnd).to_json();
        assert!(!plain.contains("trace_id"), "{plain}");
        assert_eq!(EventTrace::from_hex("4bf9", "00f067aa0ba902b7"), None);
        assert_eq!(
            EventTrace::from_hex(&"g".repeat(32), "00f067aa0ba902b7"),
            None
        );
    }

    #[test]
    fn labels_are_an_ordered_object_and_nan_is_null() {
        let mut e = sample_event(EventKind::MetricRecorded);
        let json = e.to_json();
        assert!(json.contains(r#""labels":{"z":"1","a":"2"}"#), "{json}");
        assert_eq!(Event::from_json(&json).unwrap(), e);

        if let Some(EventPayload::MetricRecorded { value, .. }) = Arc::get_mut(&mut e.payload) {
            *value = f64::NAN;
        }
        let json = e.to_json();
        assert!(json.contains(r#""value":null"#), "{json}");
        let back = Event::from_json(&json).unwrap();
        match &*back.payload {
            EventPayload::MetricRecorded { value, .. } => assert!(value.is_nan()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_kind_round_trips_and_its_payload_fits() {
        for kind in EventKind::ALL {
            let e = sample_event(kind);
            assert!(e.payload.fits(kind));
            let back = Event::from_json(&e.to_json()).unwrap();
            assert_eq!(back, e, "{kind}");
            let others = EventKind::ALL
                .iter()
                .filter(|k| e.payload.fits(**k))
                .count();
            assert!(others <= 2, "{kind}");
        }
    }

    #[test]
    fn readers_ignore_new_payload_fields_but_reject_wrong_shapes() {
        let e = Event::from_json(
            r#"{"type":"health.component.degraded","timestamp_ns":1,"instance":"h-1",
                "context_id":0,"payload":{"component":"x","reason":"r","since_ns":5}}"#,
        )
        .unwrap();
        assert_eq!(
            *e.payload,
            EventPayload::Degraded {
                component: "x".into(),
                reason: "r".into()
            }
        );
        let err = Event::from_json(
            r#"{"type":"pipeline.started","timestamp_ns":1,"instance":"h-1",
                "context_id":0,"payload":{"component":"x","reason":"r"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("pipeline.started"), "{err}");
        let err = Event::from_json(
            r#"{"type":"pipeline.restarted","timestamp_ns":1,"instance":"h-1",
                "context_id":0,"payload":{}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown event type"), "{err}");
        // A payload cannot smuggle in another shape.
        let sneaky = r#"{"stage":"s","operation":"o"},"Degraded":{"component":"x","reason":"r"}"#;
        assert!(EventPayload::from_json(EventKind::PhaseStart, sneaky).is_err());
        let sneaky = r#"{"stages":1,"sources":1}}, {"Degraded":{"component":"x","reason":"r"}"#;
        assert!(EventPayload::from_json(EventKind::PipelineStarted, sneaky).is_err());
    }

    #[test]
    fn instance_and_context_ids() {
        let id = instance_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(Arc::ptr_eq(&id, &instance_id()));
        let a = next_context_id();
        assert!(next_context_id() > a);
        assert!(now_ns() > 1_600_000_000_000_000_000);
    }
}
