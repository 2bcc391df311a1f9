//! `host bench`, the command behind the README's figures, runs the default pipeline end to
//! end and prints every figure it promises in one run: raw receive, the pipeline fused and
//! with one thread per stage, their ratios, CPU and allocations per message, the fan-out
//! ratio, and p50/p99 at a fixed offered rate (with the CPU per message at that rate). It
//! asserts that each is there and consistent, never a speed.

use tests::{host_command, plugin_dir, run_with_timeout, workspace_dir};

/// The numbers in a table row, after its name.
fn row(out: &str, name: &str) -> Vec<f64> {
    let line = out
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row `{name}` in:\n{out}"));
    line[name.len()..]
        .split_whitespace()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("not a number in {line:?}"))
        })
        .collect()
}

/// The number after `label` in `line`, up to a space, comma or parenthesis.
fn after(line: &str, label: &str) -> f64 {
    let rest = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"))
        + label.len()..];
    let end = rest.find([' ', ',', ')', ':']).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {line:?}"))
}

#[test]
fn bench_prints_every_figure_of_one_run() {
    let mut cmd = host_command();
    cmd.current_dir(workspace_dir())
        .env("PLUGIN_DIR", plugin_dir())
        .env("RUST_LOG", "error")
        .args([
            "bench",
            "--pipeline",
            "pipelines/default.yaml",
            "--count",
            "3000",
            "--rounds",
            "1",
            "--latency-rate",
            "20000",
            "--fanout",
            "3",
        ]);
    let out = run_with_timeout(cmd);
    assert_eq!(out.code(), 0, "{out:?}");
    let text = &out.stdout;

    assert!(
        text.lines().next().is_some_and(|l| l.contains("CPU: ")),
        "the first line names the CPU:\n{text}"
    );
    // msg/s, vs raw, cpu us/msg, allocs/msg
    for name in [
        "raw zeromq PULL",
        "raw host ZMTP receive",
        "pipeline, monitoring direct",
        "pipeline, one thread per stage",
        "fan-out to 1 null exporter",
        "fan-out to 3 null exporters",
        "fan-out to 3, one thread each",
    ] {
        let v = row(text, name);
        assert_eq!(v.len(), 4, "{name}: {v:?}");
        assert!(v[0] > 0.0 && v[1] > 0.0 && v[2] > 0.0, "{name}: {v:?}");
    }
    assert_eq!(row(text, "raw host ZMTP receive")[1], 1.0, "{text}");
    // The host's receive side allocates nothing per message; a decoded record does.
    assert!(row(text, "raw host ZMTP receive")[3] < 0.5, "{text}");
    assert!(row(text, "pipeline, monitoring direct")[3] >= 1.0, "{text}");

    for label in [
        "ratio host ZMTP receive / zeromq PULL: ",
        "ratio fused / one thread per stage: ",
        "ratio fan-out 3 / 1: ",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` line in:\n{text}"));
        assert!(after(line, label) > 0.0, "{line}");
    }
    let latency: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ingest -> delivery at 20000 msg/s offered"))
        .collect();
    assert_eq!(latency.len(), 2, "fused and one thread per stage:\n{text}");
    for line in latency {
        let (p50, p99, max) = (
            after(line, "p50 "),
            after(line, "p99 "),
            after(line, "max "),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{line}");
        assert!(
            after(line, "took ") > 0.0 && after(line, "cpu ") > 0.0,
            "{line}"
        );
    }
}
