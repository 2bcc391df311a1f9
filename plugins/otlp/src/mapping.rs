//! Records to OTLP messages: values to `AnyValue`s, level names to severity numbers, time
//! fields to nanoseconds, and whole batches to export requests (see the crate's README for
//! the mapping as users read it).

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest},
    common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    metrics::v1::{
        metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
        Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use plugin_api::{Record, ValueKind, ValueRef};

use crate::config::{MetricConfig, MetricKind, OtlpConfig, DEFAULT_BUCKETS};

/// What turns a batch of records into one export request: the parts of the config the
/// mapping needs, read once.
pub struct Mapping {
    resource: Resource,
    scope: InstrumentationScope,
    body_field: Option<String>,
    severity_field: Option<String>,
    timestamp_field: Option<String>,
    metrics: Vec<MetricConfig>,
}

impl Mapping {
    pub fn new(config: &OtlpConfig) -> Mapping {
        let attributes = config
            .resource
            .iter()
            .map(|(key, value)| KeyValue {
                key: key.clone(),
                value: Some(json_value(value)),
                ..KeyValue::default()
            })
            .collect();
        Mapping {
            resource: Resource {
                attributes,
                ..Resource::default()
            },
            scope: InstrumentationScope {
                name: env!("CARGO_PKG_NAME").to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..InstrumentationScope::default()
            },
            body_field: config.body_field.clone(),
            severity_field: config.severity_field.clone(),
            timestamp_field: config.timestamp_field.clone(),
            metrics: config.metrics.clone(),
        }
    }

    /// When the event happened: the timestamp field, or 0 (unknown) if missing or unreadable.
    fn time(&self, record: &Record) -> u64 {
        self.timestamp_field
            .as_deref()
            .and_then(|f| record.get(f))
            .and_then(time_ns)
            .unwrap_or(0)
    }

    /// One log record per record, in one resource and one scope.
    pub fn logs(&self, records: &[Record]) -> ExportLogsServiceRequest {
        let log_records = records.iter().map(|r| self.log_record(r)).collect();
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(self.scope.clone()),
                    log_records,
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        }
    }

    pub fn log_record(&self, record: &Record) -> LogRecord {
        let body_field = self.body_field.as_deref();
        let mut log = LogRecord {
            time_unix_nano: self.time(record),
            // When the host's source received the message: the same on every retry.
            observed_time_unix_nano: record.received_at_ns(),
            attributes: Vec::with_capacity(record.len()),
            ..LogRecord::default()
        };
        for (key, value) in record.iter() {
            if Some(key) == body_field {
                log.body = Some(any_value(value));
            } else {
                log.attributes.push(KeyValue {
                    key: key.to_owned(),
                    value: Some(any_value(value)),
                    ..KeyValue::default()
                });
            }
        }
        if let Some(level) = self.severity_field.as_deref().and_then(|f| record.get(f)) {
            let (number, text) = severity(level);
            log.severity_number = number as i32;
            log.severity_text = text;
        }
        if let Some(trace) = record.trace() {
            log.trace_id = trace.trace_id().to_vec();
            log.span_id = trace.span_id().to_vec();
            // The low 8 bits of a log record's flags are the W3C trace flags.
            log.flags = u32::from(trace.flags());
        }
        log
    }

    /// One metric per configured entry, with a data point per record that holds a number in
    /// the entry's field; entries no record feeds are left out.
    pub fn metrics(&self, records: &[Record]) -> ExportMetricsServiceRequest {
        let metrics = self
            .metrics
            .iter()
            .filter_map(|m| self.metric(m, records))
            .collect();
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(self.scope.clone()),
                    metrics,
                    ..ScopeMetrics::default()
                }],
                ..ResourceMetrics::default()
            }],
        }
    }

    /// The attributes of a record's data points: its fields, except the metric fields and
    /// the timestamp field.
    fn point_attributes(&self, record: &Record) -> Vec<KeyValue> {
        record
            .iter()
            .filter(|(key, _)| {
                Some(*key) != self.timestamp_field.as_deref()
                    && !self.metrics.iter().any(|m| m.field == *key)
            })
            .map(|(key, value)| KeyValue {
                key: key.to_owned(),
                value: Some(any_value(value)),
                ..KeyValue::default()
            })
            .collect()
    }

    fn time_or_received(&self, record: &Record) -> u64 {
        match self.time(record) {
            0 => record.received_at_ns(),
            t => t,
        }
    }

    fn metric(&self, config: &MetricConfig, records: &[Record]) -> Option<Metric> {
        let values = records.iter().filter_map(|r| {
            let v = r.get(&config.field)?;
            let number = match v.kind() {
                ValueKind::Int(i) => number_data_point::Value::AsInt(i),
                ValueKind::Float(f) if f.is_finite() => number_data_point::Value::AsDouble(f),
                _ => return None,
            };
            Some((r, number))
        });
        let number_point = |(r, value): (&Record, number_data_point::Value)| {
            let time = self.time_or_received(r);
            NumberDataPoint {
                attributes: self.point_attributes(r),
                start_time_unix_nano: time,
                time_unix_nano: time,
                value: Some(value),
                ..NumberDataPoint::default()
            }
        };
        let data = match config.kind {
            MetricKind::Gauge => metric::Data::Gauge(Gauge {
                data_points: values.map(number_point).collect(),
            }),
            MetricKind::Sum => metric::Data::Sum(Sum {
                data_points: values.map(number_point).collect(),
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: config.monotonic,
            }),
            MetricKind::Histogram => {
                let bounds = config
                    .buckets
                    .clone()
                    .unwrap_or_else(|| DEFAULT_BUCKETS.to_vec());
                let data_points = values
                    .map(|(r, value)| {
                        let v = match value {
                            number_data_point::Value::AsInt(i) => i as f64,
                            number_data_point::Value::AsDouble(f) => f,
                        };
                        // Bucket i holds (bounds[i-1], bounds[i]]; the last one the rest.
                        let bucket = bounds.partition_point(|b| *b < v);
                        let mut bucket_counts = vec![0; bounds.len() + 1];
                        bucket_counts[bucket] = 1;
                        let time = self.time_or_received(r);
                        HistogramDataPoint {
                            attributes: self.point_attributes(r),
                            start_time_unix_nano: time,
                            time_unix_nano: time,
                            count: 1,
                            sum: Some(v),
                            bucket_counts,
                            explicit_bounds: bounds.clone(),
                            min: Some(v),
                            max: Some(v),
                            ..HistogramDataPoint::default()
                        }
                    })
                    .collect();
                metric::Data::Histogram(Histogram {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                })
            }
        };
        let empty = match &data {
            metric::Data::Gauge(g) => g.data_points.is_empty(),
            metric::Data::Sum(s) => s.data_points.is_empty(),
            metric::Data::Histogram(h) => h.data_points.is_empty(),
            _ => false,
        };
        (!empty).then(|| Metric {
            name: config.name().to_owned(),
            description: config.description.clone(),
            unit: config.unit.clone(),
            data: Some(data),
            ..Metric::default()
        })
    }
}

/// A record's value as an OTLP `AnyValue`: maps become key-value lists, lists arrays; null
/// is the empty `AnyValue`; a kind of value this release does not know is its JSON text.
pub fn any_value(value: ValueRef<'_>) -> AnyValue {
    use any_value::Value as V;
    let value = match value.kind() {
        ValueKind::Null => None,
        ValueKind::Bool(b) => Some(V::BoolValue(b)),
        ValueKind::Int(i) => Some(V::IntValue(i)),
        ValueKind::Float(f) => Some(V::DoubleValue(f)),
        ValueKind::Str(s) => Some(V::StringValue(s.to_owned())),
        ValueKind::Bytes(b) => Some(V::BytesValue(b.to_vec())),
        ValueKind::List(list) => Some(V::ArrayValue(ArrayValue {
            values: list.iter().map(any_value).collect(),
        })),
        ValueKind::Map(map) => Some(V::KvlistValue(KeyValueList {
            values: map
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.to_owned(),
                    value: Some(any_value(v)),
                    ..KeyValue::default()
                })
                .collect(),
        })),
        _ => Some(V::StringValue(
            serde_json::to_string(&value.to_value()).unwrap_or_default(),
        )),
    };
    AnyValue { value }
}

/// A resource attribute from the config (checked to be a string, number or boolean).
fn json_value(value: &serde_json::Value) -> AnyValue {
    use any_value::Value as V;
    let value = match value {
        serde_json::Value::Bool(b) => V::BoolValue(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => V::IntValue(i),
            None => V::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => V::StringValue(s.clone()),
        other => V::StringValue(other.to_string()),
    };
    AnyValue { value: Some(value) }
}

/// The severity number and text of a level field: a name is matched without regard to case
/// (the OpenTelemetry log data model's mapping, syslog names included) and kept as the text;
/// an integer from 1 to 24 is taken as an OTel severity number, with no text.
pub fn severity(level: ValueRef<'_>) -> (SeverityNumber, String) {
    use SeverityNumber as S;
    match level.kind() {
        ValueKind::Str(text) => {
            let number = match text.trim().to_ascii_lowercase().as_str() {
                "trace" | "finest" => S::Trace,
                "debug" | "fine" | "finer" => S::Debug,
                "info" | "information" | "informational" => S::Info,
                "notice" => S::Info2,
                "warn" | "warning" => S::Warn,
                "error" | "err" | "severe" => S::Error,
                "critical" | "crit" => S::Error2,
                "alert" => S::Error3,
                "fatal" | "emergency" | "emerg" | "panic" => S::Fatal,
                _ => S::Unspecified,
            };
            (number, text.to_owned())
        }
        ValueKind::Int(n) => {
            let number = i32::try_from(n)
                .ok()
                .and_then(|n| S::try_from(n).ok())
                .unwrap_or(S::Unspecified);
            (number, String::new())
        }
        _ => (S::Unspecified, String::new()),
    }
}

/// A time field in nanoseconds since the Unix epoch: an RFC 3339 string, or a number of
/// seconds (integer or float). `None` for anything else, or a time before 1970.
pub fn time_ns(value: ValueRef<'_>) -> Option<u64> {
    match value.kind() {
        ValueKind::Int(s) => u64::try_from(s).ok()?.checked_mul(1_000_000_000),
        ValueKind::Float(s) if (0.0..1.8e10).contains(&s) => Some((s * 1e9).round() as u64),
        ValueKind::Str(text) => rfc3339_ns(text),
        _ => None,
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `t`, `z` and a space for `T` are accepted.
pub fn rfc3339_ns(text: &str) -> Option<u64> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let minutes = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset * 60;
    u64::try_from(seconds.checked_mul(1_000_000_000)?.checked_add(nanos)?).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use plugin_api::{Map, Record, TraceContext, Value};

    use super::*;

    #[test]
    fn rfc3339_reads_fractions_and_offsets() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ns("2024-06-10T06:13:20.25Z"),
            Some(1_718_000_000_250_000_000)
        );
        assert_eq!(
            rfc3339_ns("2024-06-10T08:13:20.25+02:00"),
            rfc3339_ns("2024-06-10T06:13:20.250000000Z")
        );
        assert_eq!(
            rfc3339_ns("2024-06-10 01:13:20-05:00"),
            Some(1_718_000_000_000_000_000)
        );
        for bad in [
            "2024-06-10",
            "2024-13-10T00:00:00Z",
            "2024-06-10T00:00:00",
            "x",
        ] {
            assert_eq!(rfc3339_ns(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_record_becomes_a_log_record() {
        let config: OtlpConfig = serde_json::from_str(
            r#"{"endpoint":"x:1","body_field":"msg","severity_field":"level","timestamp_field":"ts","resource":{"service.name":"svc"}}"#,
        )
        .unwrap();
        let mut nested = Map::new();
        nested.insert("k", Value::List(vec![Value::Int(1), Value::Null]));
        let mut record: Record = [
            ("msg", Value::from("hello")),
            ("level", Value::from("Warning")),
            ("ts", Value::Float(1.5)),
            ("n", Value::Int(3)),
            ("f", Value::Float(0.5)),
            ("ok", Value::Bool(true)),
            ("m", Value::Map(nested)),
        ]
        .into_iter()
        .collect();
        record.set_trace(TraceContext::new([1; 16], [2; 8], 1).unwrap());
        let request = Mapping::new(&config).logs(&[record]);
        let rl = &request.resource_logs[0];
        assert_eq!(
            rl.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let log = &rl.scope_logs[0].log_records[0];
        assert_eq!(
            log.body,
            Some(AnyValue {
                value: Some(any_value::Value::StringValue("hello".into()))
            })
        );
        assert_eq!(log.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(log.severity_text, "Warning");
        assert_eq!(log.time_unix_nano, 1_500_000_000);
        assert_eq!(log.trace_id, vec![1; 16]);
        assert_eq!(log.span_id, vec![2; 8]);
        assert_eq!(log.flags, 1);
        let keys: Vec<&str> = log.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["level", "ts", "n", "f", "ok", "m"]);
        let m = log.attributes[5].value.as_ref().unwrap();
        let Some(any_value::Value::KvlistValue(kv)) = &m.value else {
            panic!("{m:?}")
        };
        let Some(any_value::Value::ArrayValue(list)) = &kv.values[0].value.as_ref().unwrap().value
        else {
            panic!("{kv:?}")
        };
        assert_eq!(list.values[1], AnyValue { value: None });
    }

    #[test]
    fn histogram_buckets_hold_upper_bounds() {
        let config: OtlpConfig = serde_json::from_str(
            r#"{"endpoint":"x:1","signal":"metrics","metrics":[{"field":"v","kind":"histogram","buckets":[1,10]}]}"#,
        )
        .unwrap();
        let records: Vec<Record> = [1.0, 5.0, 11.0]
            .into_iter()
            .map(|v| {
                [("v", Value::Float(v)), ("t", Value::from("a"))]
                    .into_iter()
                    .collect()
            })
            .collect();
        let request = Mapping::new(&config).metrics(&records);
        let metric = &request.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(metric::Data::Histogram(h)) = &metric.data else {
            panic!("{metric:?}")
        };
        let buckets: Vec<Vec<u64>> = h
            .data_points
            .iter()
            .map(|p| p.bucket_counts.clone())
            .collect();
        assert_eq!(buckets, [vec![1, 0, 0], vec![0, 1, 0], vec![0, 0, 1]]);
        assert_eq!(h.data_points[0].attributes.len(), 1);
    }
}
