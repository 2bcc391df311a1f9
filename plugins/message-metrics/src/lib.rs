//! A metrics stage that replaces each record with a record of measurements about it.
//!
//! The principal type in this crate is [`MessageMetrics`], the stage `message-metrics`: it is
//! built from a [`MessageMetricsConfig`] and turns every record into a metrics record (same
//! message, so the same `meta`) with the message's size, its latency since the timestamp it
//! carries and, when a type field is configured, its type and a running count of that type.
//! It also records the counters `records` and `records_by_type` through the host, once per
//! batch. See the crate's README for the config keys.

use std::{
    borrow::Cow,
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use plugin_api::{
    tracing, Batch, ConfigError, Record, Stage, StageContext, StageError, StageKind, Value,
    ValueKind, ValueRef,
};
use serde::Deserialize;

/// The `config:` block of a `message-metrics` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageMetricsConfig {
    /// The field holding when the message was sent, in seconds since the Unix epoch.
    #[serde(default = "default_timestamp_field")]
    pub timestamp_field: String,
    /// The field whose value is the message's type; no type fields are made without it.
    #[serde(default)]
    pub type_field: Option<String>,
    /// How many distinct types are counted apart; records of any further type count as
    /// [`OTHER`]. Bounds the stage's memory whatever values the messages carry.
    #[serde(default = "default_max_types")]
    pub max_types: usize,
}

fn default_timestamp_field() -> String {
    "timestamp".to_owned()
}

fn default_max_types() -> usize {
    1000
}

/// The type that records of a type beyond `max_types` are counted as.
pub const OTHER: &str = "other";

/// The `message-metrics` stage: see the crate documentation.
pub struct MessageMetrics {
    ctx: StageContext,
    timestamp_field: String,
    type_field: Option<String>,
    /// Counts by type value, since the stage was built: at most `max_types` of them, plus
    /// [`OTHER`].
    types: HashMap<String, TypeCount>,
    max_types: usize,
    /// The type values seen in the batch being processed, each once; kept between batches so
    /// that its allocation is reused.
    batch_types: Vec<String>,
}

#[derive(Debug, Default)]
struct TypeCount {
    total: u64,
    in_batch: u64,
}

impl MessageMetrics {
    /// Makes the metrics record for one record; `now` is in seconds since the Unix epoch.
    /// Fields are written straight into the new record: no map is built on the way.
    fn measure(&mut self, record: &Record, now: f64) -> Record {
        let mut out = record.derived();
        out.insert(
            "size_bytes",
            i64::try_from(record.size_bytes()).unwrap_or(i64::MAX),
        );
        match record.get(&self.timestamp_field).and_then(|v| v.as_f64()) {
            Some(sent_at) => out.insert("latency_ms", (now - sent_at) * 1000.0),
            None => out.insert("latency_ms", Value::Null),
        }
        if let Some(type_field) = &self.type_field {
            let name = type_value(record.get(type_field));
            let (name, count) = self.count_type(&name);
            out.insert("type", name);
            out.insert("type_count", i64::try_from(count).unwrap_or(i64::MAX));
        }
        out
    }

    /// Counts one record of type `name`: under its own name while fewer than `max_types`
    /// types have been seen (or it is one of them), as [`OTHER`] after. Returns the name it
    /// was counted under and how many have been counted so, this one included.
    fn count_type<'n>(&mut self, name: &'n str) -> (&'n str, u64) {
        // Look up by `&str` first, so that a type seen before costs one lookup and no
        // allocation.
        if let Some(total) = self.bump(name) {
            return (name, total);
        }
        if self.types.len() < self.max_types {
            self.types.insert(name.to_owned(), TypeCount::default());
            self.bump(name);
            return (name, 1);
        }
        if !self.types.contains_key(OTHER) {
            tracing::warn!(
                stage = self.ctx.instance(),
                max_types = self.max_types,
                "more distinct types than max_types: further ones are counted as `{OTHER}`"
            );
            self.types.insert(OTHER.to_owned(), TypeCount::default());
        }
        (OTHER, self.bump(OTHER).unwrap_or_default())
    }

    /// Counts one more record of a type already counted; its total, or `None` if the type
    /// is new.
    fn bump(&mut self, name: &str) -> Option<u64> {
        let count = self.types.get_mut(name)?;
        if count.in_batch == 0 {
            self.batch_types.push(name.to_owned());
        }
        count.in_batch += 1;
        count.total += 1;
        Some(count.total)
    }

    /// Records the batch's counters through the host: one call per counter and type, not per
    /// record, since each call crosses the library boundary.
    fn emit_batch_metrics(&mut self, records: usize) {
        self.ctx.counter("records", records as f64, &[]);
        for name in self.batch_types.drain(..) {
            if let Some(count) = self.types.get_mut(&name) {
                self.ctx
                    .counter("records_by_type", count.in_batch as f64, &[("type", &name)]);
                count.in_batch = 0;
            }
        }
    }
}

/// The type of a record as a string: a string value as it is, any other value as its JSON
/// text (`3`, `true`), and `unknown` when the field is missing or null.
fn type_value(value: Option<ValueRef<'_>>) -> Cow<'_, str> {
    match value.map(|v| (v, v.kind())) {
        None | Some((_, ValueKind::Null)) => Cow::Borrowed("unknown"),
        Some((_, ValueKind::Str(s))) => Cow::Borrowed(s),
        // Serializing a value to JSON cannot fail: keys are strings and non-finite floats
        // become null.
        Some((other, _)) => Cow::Owned(
            serde_json::to_string(&other).unwrap_or_else(|_| other.type_name().to_owned()),
        ),
    }
}

/// Seconds since the Unix epoch; 0 if the clock is set before it.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Stage for MessageMetrics {
    const NAME: &'static str = "message-metrics";
    const KIND: StageKind = StageKind::Metrics;
    type Config = MessageMetricsConfig;

    fn check(config: &MessageMetricsConfig) -> Result<(), ConfigError> {
        if config.timestamp_field.is_empty() {
            return Err(ConfigError::at(
                "timestamp_field",
                "`timestamp_field` must not be empty",
            ));
        }
        if config.max_types == 0 {
            return Err(ConfigError::at(
                "max_types",
                "`max_types` must be at least 1",
            ));
        }
        if config.type_field.as_deref() == Some("") {
            return Err(ConfigError::at(
                "type_field",
                "`type_field` must not be empty",
            ));
        }
        Ok(())
    }

    fn build(config: MessageMetricsConfig, ctx: StageContext) -> Result<Self, String> {
        tracing::debug!(
            stage = ctx.instance(),
            timestamp_field = %config.timestamp_field,
            type_field = ?config.type_field,
            "message-metrics stage built"
        );
        Ok(MessageMetrics {
            ctx,
            timestamp_field: config.timestamp_field,
            type_field: config.type_field,
            types: HashMap::new(),
            max_types: config.max_types,
            batch_types: Vec::new(),
        })
    }

    fn process(&mut self, batch: &mut Batch) -> Result<(), StageError> {
        if batch.is_empty() {
            return Ok(());
        }
        // One clock read per batch: a batch is handled in microseconds, far below the
        // millisecond latencies this measures.
        let now = unix_now();
        let records = batch.len();
        batch.derive(|record| self.measure(record, now));
        self.emit_batch_metrics(records);
        Ok(())
    }
}

plugin_api::export_plugin!(MessageMetrics);

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use plugin_api::{
        abi_stable::std_types::{RSlice, RStr},
        sdk, HostCallbacks, HostContext, HostCtx, Label, LogLevel, MetricKind,
    };

    fn stage(config: &str) -> MessageMetrics {
        stage_with_host(config, None)
    }

    fn stage_with_host(config: &str, host: Option<HostContext>) -> MessageMetrics {
        let config: MessageMetricsConfig = serde_json::from_str(config).unwrap();
        MessageMetrics::check(&config).unwrap();
        MessageMetrics::build(config, StageContext::new("t", host)).unwrap()
    }

    /// Records with ids 1, 2, ... and sizes 100, 200, ...
    fn batch(lines: &[String]) -> Batch {
        let records = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let mut r: Record = serde_json::from_str(line).unwrap();
                r.set_origin(i as u64 + 1, (i as u64 + 1) * 100, 0);
                r
            })
            .collect::<Vec<_>>();
        Batch::new(records)
    }

    fn lines(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    fn keys(record: &Record) -> Vec<&str> {
        record.iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn each_record_becomes_a_metrics_record_of_the_same_message() {
        let mut stage = stage("{}");
        let sent_at = unix_now() - 2.5;
        let mut b = batch(&[
            format!(r#"{{"timestamp":{sent_at},"body":"x"}}"#),
            format!(r#"{{"timestamp":{}}}"#, sent_at.floor() as i64),
        ]);
        stage.process(&mut b).unwrap();
        assert_eq!(b.len(), 2);
        assert!(b.failures().is_empty());

        let first = &b.records()[0];
        assert_eq!(keys(first), ["size_bytes", "latency_ms"]);
        assert_eq!(first.id(), 1);
        assert_eq!(
            first.get("size_bytes").map(Value::from),
            Some(Value::Int(100))
        );
        let Some(latency) = first.get("latency_ms").and_then(|v| v.as_f64()) else {
            panic!("latency_ms is not a float: {first:?}");
        };
        assert!((2500.0..3500.0).contains(&latency), "{latency}");

        // An integer timestamp works as well.
        let second = &b.records()[1];
        assert_eq!(second.id(), 2);
        assert_eq!(
            second.get("size_bytes").map(Value::from),
            Some(Value::Int(200))
        );
        let latency = second.get("latency_ms").and_then(|v| v.as_f64()).unwrap();
        assert!((2500.0..4500.0).contains(&latency), "{latency}");
    }

    #[test]
    fn a_missing_or_non_numeric_timestamp_gives_null_latency() {
        let mut stage = stage(r#"{"timestamp_field":"sent_at"}"#);
        let mut b = batch(&lines(&[
            r#"{"timestamp":1}"#,
            r#"{"sent_at":"yesterday"}"#,
            r#"{"sent_at":null}"#,
        ]));
        stage.process(&mut b).unwrap();
        assert_eq!(b.len(), 3);
        assert!(b.failures().is_empty());
        for r in b.records() {
            assert_eq!(
                r.get("latency_ms").map(Value::from),
                Some(Value::Null),
                "{r:?}"
            );
        }
    }

    #[test]
    fn type_counts_run_across_batches() {
        let mut stage = stage(r#"{"type_field":"kind"}"#);
        let mut b = batch(&lines(&[
            r#"{"kind":"a"}"#,
            r#"{"kind":"b"}"#,
            r#"{"kind":"a"}"#,
            r#"{}"#,
            r#"{"kind":3}"#,
            r#"{"kind":null}"#,
        ]));
        stage.process(&mut b).unwrap();
        let seen: Vec<(String, i64)> = b
            .records()
            .iter()
            .map(|r| {
                assert_eq!(keys(r), ["size_bytes", "latency_ms", "type", "type_count"]);
                let t = r.get("type").and_then(|v| v.as_str()).unwrap().to_owned();
                (t, r.get("type_count").and_then(|v| v.as_i64()).unwrap())
            })
            .collect();
        let expected = [
            ("a", 1),
            ("b", 1),
            ("a", 2),
            ("unknown", 1),
            ("3", 1),
            ("unknown", 2),
        ];
        assert_eq!(seen, expected.map(|(t, n)| (t.to_owned(), n)));

        let mut b = batch(&lines(&[r#"{"kind":"b"}"#]));
        stage.process(&mut b).unwrap();
        assert_eq!(
            b.records()[0].get("type_count").map(Value::from),
            Some(Value::Int(2))
        );
    }

    #[test]
    fn types_beyond_max_types_are_counted_as_other() {
        let mut stage = stage(r#"{"type_field":"kind","max_types":2}"#);
        // A thousand distinct types from outside: the stage keeps two and `other`.
        let many: Vec<String> = (0..1000).map(|i| format!(r#"{{"kind":"k{i}"}}"#)).collect();
        let mut b = batch(&many);
        stage.process(&mut b).unwrap();
        let mut b = batch(&lines(&[
            r#"{"kind":"k0"}"#,
            r#"{"kind":"new"}"#,
            r#"{"kind":"k1"}"#,
        ]));
        stage.process(&mut b).unwrap();
        let seen: Vec<(&str, i64)> = b
            .records()
            .iter()
            .map(|r| {
                let t = r.get("type").and_then(|v| v.as_str()).unwrap();
                (t, r.get("type_count").and_then(|v| v.as_i64()).unwrap())
            })
            .collect();
        assert_eq!(seen, [("k0", 2), (OTHER, 999), ("k1", 2)]);
        assert_eq!(stage.types.len(), 3);
    }

    #[test]
    fn max_types_must_be_at_least_one() {
        let config: MessageMetricsConfig = serde_json::from_str(r#"{"max_types":0}"#).unwrap();
        let err = MessageMetrics::check(&config).unwrap_err();
        assert!(format!("{err:?}").contains("max_types"), "{err:?}");
    }

    /// One counter call the host received: name, value, labels.
    type Counted = (String, f64, Vec<(String, String)>);

    thread_local! {
        // The stage calls the host on the test's own thread, so each test sees its own calls.
        static METRICS: RefCell<Vec<Counted>> = const {
            RefCell::new(Vec::new())
        };
    }

    extern "C" fn record_metric(
        _ctx: HostCtx,
        kind: MetricKind,
        name: RStr<'_>,
        value: f64,
        labels: RSlice<'_, Label<'_>>,
    ) {
        assert_eq!(kind, MetricKind::Counter);
        let labels = labels
            .iter()
            .map(|l| (l.key.to_string(), l.value.to_string()))
            .collect();
        METRICS.with(|m| m.borrow_mut().push((name.to_string(), value, labels)));
    }

    extern "C" fn ignore_log(
        _ctx: HostCtx,
        _level: LogLevel,
        _target: RStr<'_>,
        _message: RStr<'_>,
    ) {
    }

    extern "C" fn no_logs(_ctx: HostCtx, _level: LogLevel, _target: RStr<'_>) -> bool {
        false
    }

    /// A host that hands every counter to `record_metric`.
    fn recording_host() -> HostContext {
        use plugin_api::abi_stable::prefix_type::PrefixTypeTrait;
        HostContext {
            callbacks: HostCallbacks {
                log: ignore_log,
                metric: record_metric,
                log_enabled: no_logs,
            }
            .leak_into_prefix(),
            ctx: HostCtx::new(std::ptr::null()),
        }
    }

    fn take_metrics() -> Vec<Counted> {
        METRICS.with(|m| std::mem::take(&mut *m.borrow_mut()))
    }

    #[test]
    fn counters_are_recorded_once_per_batch_and_type() {
        let host = recording_host();
        let mut stage = stage_with_host(r#"{"type_field":"kind"}"#, Some(host));
        take_metrics();

        let mut b = batch(&lines(&[
            r#"{"kind":"a"}"#,
            r#"{"kind":"b"}"#,
            r#"{"kind":"a"}"#,
            r#"{"kind":"a"}"#,
        ]));
        stage.process(&mut b).unwrap();
        let label = |t: &str| vec![("type".to_owned(), t.to_owned())];
        assert_eq!(
            take_metrics(),
            [
                ("records".to_owned(), 4.0, vec![]),
                ("records_by_type".to_owned(), 3.0, label("a")),
                ("records_by_type".to_owned(), 1.0, label("b")),
            ]
        );

        // The per-batch counts start again from zero; the running count does not.
        let mut b = batch(&lines(&[r#"{"kind":"b"}"#]));
        stage.process(&mut b).unwrap();
        assert_eq!(
            take_metrics(),
            [
                ("records".to_owned(), 1.0, vec![]),
                ("records_by_type".to_owned(), 1.0, label("b")),
            ]
        );
        assert_eq!(
            b.records()[0].get("type_count").map(Value::from),
            Some(Value::Int(2))
        );

        // Without a type field, only `records` is counted.
        let mut stage = stage_with_host("{}", Some(host));
        let mut b = batch(&lines(&["{}", "{}"]));
        stage.process(&mut b).unwrap();
        assert_eq!(take_metrics(), [("records".to_owned(), 2.0, vec![])]);
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let config: MessageMetricsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config.timestamp_field, "timestamp");
        assert_eq!(config.type_field, None);
        assert_eq!(config.max_types, 1000);

        let check = |json: &str| {
            sdk::check::<MessageMetrics>(RStr::from_str(json))
                .into_result()
                .map_err(|e| e.to_string())
        };
        let err = check(r#"{"timestamp":"ts"}"#).unwrap_err();
        assert!(err.contains("unknown field `timestamp`"), "{err}");
        let err = check(r#"{"type_field":""}"#).unwrap_err();
        assert!(err.contains("`type_field` must not be empty"), "{err}");
        check(r#"{"timestamp_field":"ts","type_field":"kind"}"#).unwrap();
    }

    #[test]
    fn keeps_the_stage_contract() {
        let records = (0..3)
            .map(|i| {
                let mut r: Record =
                    serde_json::from_str(&format!(r#"{{"sent_at":1.0,"level":"l{i}"}}"#)).unwrap();
                r.set_origin(0, 30, 0);
                r
            })
            .collect();
        let out = plugin_api::testing::assert_stage_compliance::<MessageMetrics>(
            r#"{"timestamp_field":"sent_at","type_field":"level"}"#,
            records,
        );
        // One metrics record per message, each still that message's.
        let ids: Vec<u64> = out.batch.records().iter().map(|r| r.id()).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(out
            .batch
            .records()
            .iter()
            .all(|r| r.get("size_bytes").map(Value::from) == Some(Value::Int(30))));
    }
}
