//! Fan-out and fan-in: every exporter gets exactly what the rules upstream of it imply, line
//! by line, and each message is accounted for once however many branches it took.

use tests::{assert_reconciled, read_lines, send, stage, totals, wait_for_lines, Host};

const LEVELS: [&str; 4] = ["info", "debug", "warn", "error"];

/// Message `i` as sent: fields in this order, `healthcheck: true` on every 5th.
fn message(i: usize) -> String {
    let health = if i.is_multiple_of(5) {
        r#","healthcheck":true"#
    } else {
        ""
    };
    format!(
        r#"{{"id":{i},"level":"{}","msg":"message {i}","value":{}{health}}}"#,
        LEVELS[i % 4],
        i * 10
    )
}

#[test]
fn each_branch_holds_exactly_what_the_rules_imply() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  ingest: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  process:
    plugin: rules
    inputs: [ingest]
    config:
      drop:
        - { field: level, equals: debug }
        - { field: healthcheck, equals: true }
      rename: { msg: message, value: amount }
      set: { pipeline: fanout, level: checked }
  export-a:
    plugin: jsonl
    inputs: [process]
    config: { path: "{{dir}}/out/a.jsonl" }
  export-b:
    plugin: jsonl
    inputs: [process]
    config: { path: "{{dir}}/out/b.jsonl" }
"#,
    );
    let n = 60;
    let sent: Vec<String> = (0..n).map(message).collect();
    send(&host.endpoint, &sent);

    // Drop debug and health checks; rename in place; `set` replaces `level` in place and
    // appends `pipeline`.
    let expected: Vec<String> = (0..n)
        .filter(|i| LEVELS[i % 4] != "debug" && i % 5 != 0)
        .map(|i| {
            format!(
                r#"{{"id":{i},"level":"checked","message":"message {i}","amount":{},"pipeline":"fanout"}}"#,
                i * 10
            )
        })
        .collect();
    let (a, b) = (host.path("out/a.jsonl"), host.path("out/b.jsonl"));
    wait_for_lines(&a, expected.len());
    wait_for_lines(&b, expected.len());
    let summary = host.stop();

    assert_eq!(read_lines(&a), expected, "export-a");
    assert_eq!(read_lines(&b), expected, "export-b");
    assert_reconciled(&summary);
    let dropped = (n - expected.len()) as u64;
    assert_eq!(
        totals(&summary),
        (n as u64, expected.len() as u64, dropped, 0),
        "(received, completed, filtered, failed): {summary:#}"
    );
    let process = stage(&summary, "process");
    assert_eq!(process["records_in"], n);
    assert_eq!(process["records_out"], expected.len());
    for export in ["export-a", "export-b"] {
        assert_eq!(stage(&summary, export)["records_in"], expected.len());
    }
}

#[test]
fn fan_in_merges_two_sources_and_a_diamond() {
    // Two sources feed `merge`; `merge` fans out to two taggers that both feed `export`, so
    // every message reaches `export` twice, once per tag, and still counts once.
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  left: { type: zmq, socket: pull, bind: "{{endpoint}}" }
  right: { type: zmq, socket: pull, bind: "{{endpoint2}}" }
stages:
  merge:
    plugin: rules
    inputs: [left, right]
    config:
      drop: [{ field: skip, equals: 1 }]
  tag-a: { plugin: rules, inputs: [merge], config: { set: { tag: a } } }
  tag-b: { plugin: rules, inputs: [merge], config: { set: { tag: b } } }
  export:
    plugin: jsonl
    inputs: [tag-a, tag-b]
    config: { path: "{{dir}}/merged.jsonl" }
"#,
    );
    let left: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"from":"left","n":{i},"skip":{}}}"#, i % 4))
        .collect();
    let right: Vec<String> = (0..15)
        .map(|i| format!(r#"{{"from":"right","n":{i}}}"#))
        .collect();
    send(&host.endpoint, &left);
    send(&host.endpoint2, &right);

    let mut expected: Vec<String> = Vec::new();
    for tag in ["a", "b"] {
        for i in (0..20).filter(|i| i % 4 != 1) {
            expected.push(format!(
                r#"{{"from":"left","n":{i},"skip":{},"tag":"{tag}"}}"#,
                i % 4
            ));
        }
        for i in 0..15 {
            expected.push(format!(r#"{{"from":"right","n":{i},"tag":"{tag}"}}"#));
        }
    }
    expected.sort();
    let out = host.path("merged.jsonl");
    wait_for_lines(&out, expected.len());
    let summary = host.stop();

    // Branches and sources interleave freely; the set of lines is what is fixed.
    let mut lines = read_lines(&out);
    lines.sort();
    assert_eq!(lines, expected);
    assert_reconciled(&summary);
    assert_eq!(
        totals(&summary),
        (35, 30, 5, 0),
        "(received, completed, filtered, failed): {summary:#}"
    );
    assert_eq!(stage(&summary, "merge")["records_in"], 35);
    assert_eq!(stage(&summary, "export")["records_in"], 60);
}

#[test]
fn a_change_in_one_branch_is_never_seen_by_another_on_one_thread() {
    branches_see_only_their_own_changes("trees");
}

#[test]
fn a_change_in_one_branch_is_never_seen_by_another_on_threads_of_their_own() {
    branches_see_only_their_own_changes("none");
}

/// One source, three branches sharing each record: two rewrite it differently (in place, by
/// rename, by set, by dropping a nested field's parent), one writes it as it came. With
/// `runtime.fuse: trees` (the default) the three are called one after the other on one
/// thread; with `none` each runs on its own, at the same time as the others.
fn branches_see_only_their_own_changes(fuse: &str) {
    let pipeline = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  ingest: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  rewrite-a:
    plugin: rules
    inputs: [ingest]
    config:
      rename: { msg: message }
      set: { level: a, extra: { nested: [1, 2] } }
  rewrite-b:
    plugin: rules
    inputs: [ingest]
    config:
      rename: { level: severity, msg: level }
      set: { ctx: b }
  export-a: { plugin: jsonl, inputs: [rewrite-a], config: { path: "{{dir}}/a.jsonl" } }
  export-b: { plugin: jsonl, inputs: [rewrite-b], config: { path: "{{dir}}/b.jsonl" } }
  export-raw: { plugin: jsonl, inputs: [ingest], config: { path: "{{dir}}/raw.jsonl" } }
"#
    .to_owned();
    let mut host = Host::start(&(pipeline + &format!("runtime: {{ fuse: {fuse} }}\n")));
    let n = 40;
    let sent: Vec<String> = (0..n)
        .map(|i| {
            format!(r#"{{"level":"info","msg":"m{i}","ctx":{{"user":"u{i}","tags":["x","y"]}},"n":{i}}}"#)
        })
        .collect();
    send(&host.endpoint, &sent);
    let a_want: Vec<String> = (0..n)
        .map(|i| {
            format!(r#"{{"level":"a","message":"m{i}","ctx":{{"user":"u{i}","tags":["x","y"]}},"n":{i},"extra":{{"nested":[1,2]}}}}"#)
        })
        .collect();
    let b_want: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"severity":"info","level":"m{i}","ctx":"b","n":{i}}}"#))
        .collect();
    let (a, b, raw) = (
        host.path("a.jsonl"),
        host.path("b.jsonl"),
        host.path("raw.jsonl"),
    );
    for (file, count) in [(&a, n), (&b, n), (&raw, n)] {
        wait_for_lines(file, count);
    }
    let summary = host.stop();
    // Each branch gets records in message order (one source; each stage called by one thread).
    assert_eq!(read_lines(&raw), sent, "the untouched branch");
    assert_eq!(read_lines(&a), a_want, "rewrite-a");
    assert_eq!(read_lines(&b), b_want, "rewrite-b");
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (n as u64, n as u64, 0, 0), "{summary:#}");
}
