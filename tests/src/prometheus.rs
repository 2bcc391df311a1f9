//! Reading the Prometheus text format (version 0.0.4) that `/metrics` serves, and checking
//! it with the real `promtool`.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{run_with_timeout, Output};

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: its samples, and each family's TYPE and HELP.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
    /// Family name -> type (`counter`, `gauge`, `histogram`, ...).
    pub types: BTreeMap<String, String>,
    /// Family name -> help text.
    pub help: BTreeMap<String, String>,
}

fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        t => t
            .parse()
            .unwrap_or_else(|e| panic!("bad sample value {t:?}: {e}")),
    }
}

/// Parses `{a="x",b="y\"z"}` (without the braces); returns the labels.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',' | ' ')) {
            chars.next();
        }
        let mut name = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            name.push(c);
        }
        if name.is_empty() {
            return labels;
        }
        assert_eq!(chars.next(), Some('"'), "label {name} has no quoted value");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => panic!("unterminated escape in label {name}"),
                },
                c => value.push(c),
            }
        }
        labels.insert(name.trim().to_owned(), value);
    }
}

impl Metrics {
    /// Parses the exposition; panics on a line it cannot read.
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        let mut help = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                help.insert(name.to_owned(), text.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, rest) = match line.find('{') {
                Some(open) => {
                    let close = line
                        .rfind('}')
                        .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                    (
                        &line[..open],
                        parse_labels(&line[open + 1..close]),
                        &line[close + 1..],
                    )
                }
                None => {
                    let (name, rest) = line
                        .split_once(' ')
                        .unwrap_or_else(|| panic!("a sample without value: {line:?}"));
                    (name, BTreeMap::new(), rest)
                }
            };
            let value = rest
                .split_whitespace()
                .next()
                .unwrap_or_else(|| panic!("a sample without value: {line:?}"));
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value: parse_value(value),
            });
        }
        Metrics {
            text: text.to_owned(),
            samples,
            types,
            help,
        }
    }

    /// Every sample named `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample named `name` whose labels include `labels`; `None` if
    /// there is none, a panic if there are several.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{} samples match {name}{labels:?}: {found:?}",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// Like [`Metrics::get`], but the sample must exist.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.text))
    }

    /// The family's TYPE, if the exposition declares it.
    pub fn family_type(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }
}

/// `promtool`: `/usr/bin/promtool` (Debian's `prometheus` package, which `.ci/run`
/// installs), or the first one on `PATH`. Panics with what to install if there is none.
pub fn promtool_bin() -> PathBuf {
    let fixed = Path::new("/usr/bin/promtool");
    if fixed.exists() {
        return fixed.to_path_buf();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "promtool is missing: install the Debian package `prometheus` \
                 (`apt-get install prometheus`, as .ci/run does)"
            )
        })
}

/// Runs `promtool check metrics` on `text` (through a file in `dir`, as its stdin).
pub fn promtool_check_metrics(text: &str, dir: &Path) -> Output {
    let file = dir.join("metrics.prom");
    fs::write(&file, text).expect("cannot write the metrics file");
    let mut cmd = Command::new(promtool_bin());
    cmd.args(["check", "metrics"])
        .stdin(fs::File::open(&file).expect("cannot open the metrics file"));
    run_with_timeout(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_labels_and_families_are_read() {
        let m = Metrics::parse(
            "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"{}\"} 3\nb 2.5\nh_bucket{le=\"+Inf\"} 4\n",
        );
        assert_eq!(m.value("a_total", &[("x", "1")]), 3.0);
        assert_eq!(m.value("a_total", &[("y", "q\"{}")]), 3.0);
        assert_eq!(m.value("b", &[]), 2.5);
        assert_eq!(m.value("h_bucket", &[("le", "+Inf")]), 4.0);
        assert_eq!(m.family_type("a_total"), Some("counter"));
        assert_eq!(m.help["a_total"], "Things.");
        assert_eq!(m.get("a_total", &[("x", "2")]), None);
    }
}
