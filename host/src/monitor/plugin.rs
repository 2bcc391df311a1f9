//! Metrics that plugins record through the host context: counters, gauges, histograms and
//! timers, with labels, kept under the stage's name.

use std::{collections::BTreeMap, sync::Mutex};

use plugin_api::MetricKind;
use serde::Serialize;

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
    /// Every sample name rendered on /metrics so far, with the (kind, plugin name) it belongs
    /// to: two plugin names that render the same (`x` and `x_total` as counters, a gauge
    /// `x_count` beside a histogram `x`) would make the page unreadable.
    claimed: std::collections::HashMap<String, (MetricKind, String)>,
    /// Updates refused, by reason.
    dropped: BTreeMap<&'static str, u64>,
}

/// Label names the host sets itself (`stage`), or that Prometheus reserves for histograms
/// (`le`) and summaries (`quantile`): a plugin label of that name would render duplicate or
/// invalid series.
const RESERVED_LABELS: [&str; 3] = ["stage", "le", "quantile"];

/// Whether `name` is a Prometheus label name (and not reserved).
fn valid_label(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// The family a plugin metric is exposed under on /metrics: `host_plugin_<name>_total` for a
/// counter, `host_plugin_<name>` otherwise (`:` becomes `_`).
pub fn family_name(kind: MetricKind, name: &str) -> String {
    let mut base = name.replace(':', "_");
    if base.starts_with(|c: char| c.is_ascii_digit()) {
        base.insert(0, '_');
    }
    if kind == MetricKind::Counter {
        format!("host_plugin_{}_total", base.trim_end_matches("_total"))
    } else {
        format!("host_plugin_{base}")
    }
}

/// Every sample name a family renders.
fn sample_names(kind: MetricKind, name: &str) -> Vec<String> {
    let family = family_name(kind, name);
    if kind == MetricKind::Histogram {
        let mut names: Vec<String> = ["_bucket", "_sum", "_count"]
            .iter()
            .map(|suffix| format!("{family}{suffix}"))
            .collect();
        names.push(family);
        names
    } else {
        vec![family]
    }
}

/// Whether `name` can be a metric name under `host_plugin_`.
fn valid_metric(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
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

    /// How many series exist: grows when a plugin records a new name or label set.
    pub fn series_count(&self) -> usize {
        lock(&self.inner).series.len()
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

    /// Updates refused so far, by reason: `too_many_series`, `kind_mismatch`,
    /// `negative_increment`, `reserved_label`, `invalid_label`, `duplicate_label`,
    /// `invalid_name`, `name_conflict`, `unknown_kind`.
    pub fn dropped(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.inner).dropped.clone()
    }

    fn refuse(&self, reason: &'static str) {
        *lock(&self.inner).dropped.entry(reason).or_default() += 1;
    }

    /// Records one update of stage `stage`'s metric `name`; refuses (and counts) what would
    /// render a broken or ambiguous series.
    pub fn record(
        &self,
        stage: &str,
        kind: MetricKind,
        name: &str,
        value: f64,
        labels: &[(&str, &str)],
    ) {
        if !kind.is_known() {
            return self.refuse("unknown_kind");
        }
        if !valid_metric(name) {
            return self.refuse("invalid_name");
        }
        // NaN counts as negative: neither may be added to a counter.
        if kind == MetricKind::Counter && (value < 0.0 || value.is_nan()) {
            return self.refuse("negative_increment");
        }
        for (k, _) in labels {
            if RESERVED_LABELS.contains(k) {
                return self.refuse("reserved_label");
            }
            if !valid_label(k) {
                return self.refuse("invalid_label");
            }
        }
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        // One name twice would render a sample Prometheus cannot read.
        if labels.windows(2).any(|w| w[0].0 == w[1].0) {
            return self.refuse("duplicate_label");
        }
        let key = SeriesKey {
            stage: stage.to_owned(),
            name: name.to_owned(),
            labels,
        };
        let mut inner = lock(&self.inner);
        if !inner.series.contains_key(&key) {
            if inner.series.len() >= MAX_SERIES {
                *inner.dropped.entry("too_many_series").or_default() += 1;
                return;
            }
            let names = sample_names(kind, name);
            let owner = (kind, name.to_owned());
            if names
                .iter()
                .any(|n| inner.claimed.get(n).is_some_and(|o| *o != owner))
            {
                *inner.dropped.entry("name_conflict").or_default() += 1;
                return;
            }
            for n in names {
                inner.claimed.entry(n).or_insert_with(|| owner.clone());
            }
        }
        let entry = inner.series.entry(key).or_insert_with(|| match kind {
            MetricKind::Counter => SeriesValue::Counter { value: 0.0 },
            MetricKind::Gauge => SeriesValue::Gauge { value: 0.0 },
            // Histogram (other kinds were refused above).
            _ => SeriesValue::Histogram {
                count: 0,
                sum: 0.0,
                buckets: vec![0; PLUGIN_BUCKETS.len()],
            },
        });
        match entry {
            SeriesValue::Counter { value: v } if kind == MetricKind::Counter => *v += value,
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
            // A series used with another kind than it was created with.
            _ => *inner.dropped.entry("kind_mismatch").or_default() += 1,
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
        assert_eq!(m.dropped()["kind_mismatch"], 1);
    }

    #[test]
    fn names_that_would_render_the_same_are_refused() {
        let m = PluginMetrics::default();
        m.record("s", MetricKind::Counter, "x", 1.0, &[]);
        m.record("t", MetricKind::Counter, "x", 1.0, &[]); // same family, other stage: fine
        m.record("s", MetricKind::Counter, "x_total", 1.0, &[]);
        m.record("s", MetricKind::Histogram, "h", 0.1, &[]);
        m.record("s", MetricKind::Gauge, "h_count", 1.0, &[]);
        m.record("s", MetricKind::Gauge, "a:b", 1.0, &[]);
        m.record("s", MetricKind::Gauge, "a_b", 1.0, &[]);
        assert_eq!(m.series().len(), 4);
        assert_eq!(m.dropped()["name_conflict"], 3);
        assert_eq!(
            family_name(MetricKind::Counter, "x_total"),
            "host_plugin_x_total"
        );
    }

    #[test]
    fn reserved_and_invalid_labels_are_refused_and_counted() {
        let m = PluginMetrics::default();
        m.record("s", MetricKind::Counter, "x", 1.0, &[("stage", "other")]);
        m.record("s", MetricKind::Counter, "x", 1.0, &[("le", "1")]);
        m.record("s", MetricKind::Counter, "x", 1.0, &[("bad-label", "1")]);
        m.record(
            "s",
            MetricKind::Counter,
            "x",
            1.0,
            &[("a", "1"), ("b", "2"), ("a", "3")],
        );
        m.record("s", MetricKind::Counter, "bad name", 1.0, &[]);
        m.record("s", MetricKind::Counter, "x", -1.0, &[]);
        assert!(m.series().is_empty());
        let d = m.dropped();
        assert_eq!(
            (
                d["reserved_label"],
                d["invalid_label"],
                d["duplicate_label"],
                d["invalid_name"]
            ),
            (2, 1, 1, 1)
        );
    }
}
