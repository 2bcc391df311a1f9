//! Metrics that plugins record through the host context: counters, gauges, histograms and
//! timers, with labels, kept under the stage's name.

use std::{collections::BTreeMap, sync::Mutex};

use plugin_api::MetricKind;
use serde::Serialize;

use crate::context::MetricSink;
use crate::lock;

/// Histogram bucket bounds for plugin histograms: decades cover seconds and sizes alike.
pub const PLUGIN_BUCKETS: [f64; 12] = [
    1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6,
];

/// Series beyond this many are dropped (and counted): plugins must not blow up memory.
const MAX_SERIES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub stage: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SeriesValue {
    Counter {
        value: f64,
    },
    Gauge {
        value: f64,
    },
    Histogram {
        count: u64,
        sum: f64,
        buckets: Vec<u64>,
    },
}

#[derive(Default)]
struct Inner {
    series: BTreeMap<SeriesKey, SeriesValue>,
    dropped: u64,
}

/// Every plugin metric series.
#[derive(Default)]
pub struct PluginMetrics {
    inner: Mutex<Inner>,
}

/// One series, as `/api/metrics` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesSnapshot {
    pub stage: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub value: SeriesValue,
}

impl PluginMetrics {
    pub fn series(&self) -> Vec<(SeriesKey, SeriesValue)> {
        lock(&self.inner)
            .series
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn snapshot(&self) -> Vec<SeriesSnapshot> {
        self.series()
            .into_iter()
            .map(|(k, value)| SeriesSnapshot {
                stage: k.stage,
                name: k.name,
                labels: k.labels.into_iter().collect(),
                value,
            })
            .collect()
    }

    pub fn dropped(&self) -> u64 {
        lock(&self.inner).dropped
    }
}

impl MetricSink for PluginMetrics {
    fn record(
        &self,
        stage: &str,
        kind: MetricKind,
        name: &str,
        value: f64,
        labels: &[(&str, &str)],
    ) {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        let key = SeriesKey {
            stage: stage.to_owned(),
            name: name.to_owned(),
            labels,
        };
        let mut inner = lock(&self.inner);
        if !inner.series.contains_key(&key) && inner.series.len() >= MAX_SERIES {
            inner.dropped += 1;
            return;
        }
        let entry = inner.series.entry(key).or_insert_with(|| match kind {
            MetricKind::Counter => SeriesValue::Counter { value: 0.0 },
            MetricKind::Gauge => SeriesValue::Gauge { value: 0.0 },
            MetricKind::Histogram => SeriesValue::Histogram {
                count: 0,
                sum: 0.0,
                buckets: vec![0; PLUGIN_BUCKETS.len()],
            },
        });
        match entry {
            SeriesValue::Counter { value: v } if kind == MetricKind::Counter && value >= 0.0 => {
                *v += value
            }
            SeriesValue::Gauge { value: v } if kind == MetricKind::Gauge => *v = value,
            SeriesValue::Histogram {
                count,
                sum,
                buckets,
            } if kind == MetricKind::Histogram => {
                *count += 1;
                *sum += value;
                for (b, bound) in buckets.iter_mut().zip(PLUGIN_BUCKETS) {
                    if value <= bound {
                        *b += 1;
                    }
                }
            }
            // A series used with another kind than it was created with, or a negative
            // counter increment: refused, and counted.
            _ => inner.dropped += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_kept_per_stage_name_and_labels() {
        let m = PluginMetrics::default();
        m.record("s", MetricKind::Counter, "records", 2.0, &[("type", "a")]);
        m.record("s", MetricKind::Counter, "records", 3.0, &[("type", "a")]);
        m.record("s", MetricKind::Counter, "records", 1.0, &[("type", "b")]);
        m.record("s", MetricKind::Gauge, "depth", 7.0, &[]);
        m.record("s", MetricKind::Histogram, "write_seconds", 0.005, &[]);
        m.record("s", MetricKind::Gauge, "records", 1.0, &[("type", "a")]); // wrong kind
        let series = m.series();
        assert_eq!(series.len(), 4);
        assert!(
            matches!(series.iter().find(|(k, _)| k.labels == [("type".into(), "a".into())]).unwrap().1, SeriesValue::Counter { value } if value == 5.0)
        );
        let (_, h) = series
            .iter()
            .find(|(k, _)| k.name == "write_seconds")
            .unwrap();
        match h {
            SeriesValue::Histogram { count, buckets, .. } => {
                assert_eq!(*count, 1);
                assert_eq!(buckets[2], 0); // <= 1e-3
                assert_eq!(buckets[3], 1); // <= 1e-2
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.dropped(), 1);
    }
}
