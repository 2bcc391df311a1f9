//! The Prometheus text exposition format (version 0.0.4), written directly.
//!
//! prometheus-client only writes OpenMetrics text, whose counter families are named without
//! `_total` (`# TYPE x counter` then `x_total 1`); Prometheus-format tooling such as
//! `promtool check metrics` reads that as a sample with no HELP. The format below is small
//! and is what Prometheus scrapes by default.

use std::fmt::Write;

use crate::monitor::families::{Family, Kind};

/// One metric family being written: HELP and TYPE once, then its samples.
pub struct Exposition {
    out: String,
}

/// Prometheus metric names allow `[a-zA-Z_:][a-zA-Z0-9_:]*`; anything else becomes `_`.
pub fn sanitize_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn escape_label(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

impl Default for Exposition {
    fn default() -> Self {
        Exposition {
            out: String::with_capacity(16 * 1024),
        }
    }
}

impl Exposition {
    /// Starts a family: its HELP and TYPE.
    pub fn family(&mut self, family: &Family) {
        self.family_named(family.name, family.kind, family.help);
    }

    /// Starts a family whose name is made at run time (a plugin's).
    pub fn family_named(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let kind = kind.as_str();
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
        if labels.is_empty() && extra.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(extra) {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(&sanitize_name(k));
            self.out.push_str("=\"");
            escape_label(v, &mut self.out);
            self.out.push('"');
        }
        self.out.push('}');
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", format_value(value));
    }

    /// A histogram's series: `buckets` are (upper bound, cumulative count), without +Inf.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        let bucket = format!("{name}_bucket");
        for (le, c) in buckets {
            self.out.push_str(&bucket);
            self.labels(labels, Some(("le", &format_value(*le))));
            let _ = writeln!(self.out, " {c}");
        }
        self.out.push_str(&bucket);
        self.labels(labels, Some(("le", "+Inf")));
        let _ = writeln!(self.out, " {count}");
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_samples_and_histograms() {
        let mut e = Exposition::default();
        e.family(&Family {
            name: "x_total",
            kind: Kind::Counter,
            unit: "{thing}",
            help: "Things.",
        });
        e.sample("x_total", &[("stage", "a\"b")], 3.0);
        e.family_named("d_seconds", Kind::Histogram, "Durations.");
        e.histogram(
            "d_seconds",
            &[("stage", "a")],
            &[(0.1, 1), (1.0, 2)],
            0.6,
            2,
        );
        let text = e.finish();
        assert!(text.contains("x_total{stage=\"a\\\"b\"} 3\n"), "{text}");
        assert!(
            text.contains("d_seconds_bucket{stage=\"a\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("d_seconds_count{stage=\"a\"} 2\n"), "{text}");
        assert_eq!(sanitize_name("records-by.type"), "records_by_type");
    }
}
