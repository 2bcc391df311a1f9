//! A stage and the stages that take their only input from it run on one thread
//! (`runtime.fuse: trees`, the default), and so do the stages that take only the same
//! source's output, and that changes nothing a user can see but the threads: the same records
//! come out of every branch, a stage that changes its records changes nothing another branch
//! sees, every count is exact, and records a stage on the shared thread hands back are called
//! again. `chains` fuses only a stage that is its input's only consumer; `none` gives every
//! stage its own thread.

use std::{collections::BTreeSet, fs};

use tests::{
    assert_reconciled, json, read_json_lines, send_json, stage, totals, wait_for_lines, Host,
};

/// The names of the host's threads (`/proc/<pid>/task/*/comm`).
fn thread_names(pid: u32) -> BTreeSet<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the host's threads")
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// `in -> process (rules) -> back (hand-back: fails every third record, hands the others
/// back once, delivers them on the retry)`, `process -> keep (jsonl)` and `in -> raw
/// (jsonl)`; returns the `n`s `back` and `keep` delivered and the threads.
fn run(fuse: &str) -> (BTreeSet<u64>, BTreeSet<u64>, BTreeSet<String>) {
    let mut host = Host::start(&format!(
        r#"
plugins:
  paths:
    - "{{{{plugins}}}}/libplugin_rules.so"
    - "{{{{plugins}}}}/libplugin_jsonl.so"
    - "{{{{fixtures}}}}/libdeferred_exporter.so"
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}", batch_size: 64 }}
stages:
  process:
    plugin: rules
    inputs: [in]
    config:
      drop: [{{ field: level, equals: debug }}]
      set: {{ chained: true }}
  back:
    plugin: hand-back
    inputs: [process]
    config: {{ out: "{{{{dir}}}}/back.jsonl", retry_after_ms: 20 }}
  keep:
    plugin: jsonl
    inputs: [process]
    config: {{ path: "{{{{dir}}}}/kept.jsonl" }}
  raw:
    plugin: jsonl
    inputs: [in]
    config: {{ path: "{{{{dir}}}}/raw.jsonl" }}
runtime:
  fuse: {fuse}
monitoring:
  mode: direct
  admin: {{ listen: "127.0.0.1:0" }}
"#
    ));
    let threads = thread_names(host.pid());
    let count: u64 = 900;
    // Every fourth message is dropped by `process`; `back` fails those whose `n` is a
    // multiple of 3 (300 of 900, 75 of them dropped before) and delivers the rest. `raw`
    // delivers every message: those `process` dropped complete there, those `back` failed
    // count as failed.
    let messages: Vec<_> = (0..count)
        .map(|n| json!({ "n": n, "level": if n % 4 == 0 { "debug" } else { "info" } }))
        .collect();
    send_json(&host.endpoint, &messages);
    let api = host.wait_settled(count);
    let (filtered, failed) = (count / 4, count / 3 - count / 12);
    let done = count - filtered - failed;
    let completed = api["pipeline"]["completed"].as_u64().expect("completed");
    assert_eq!(completed, count - failed, "{api:#}");
    let out = host.path("back.jsonl");
    wait_for_lines(&out, done as usize);
    let kept_out = host.path("kept.jsonl");
    wait_for_lines(&kept_out, (count - count / 4) as usize);
    let raw_out = host.path("raw.jsonl");
    wait_for_lines(&raw_out, count as usize);

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(
        totals(&summary),
        (count, count - failed, 0, failed),
        "{summary:#}"
    );
    let p = stage(&summary, "process");
    assert_eq!(p["records_in"], count, "{summary:#}");
    assert_eq!(p["records_out"], count - filtered, "{summary:#}");
    // `back` was called with everything `process` kept, then again with what it handed back.
    let b = stage(&summary, "back");
    assert_eq!(b["records_in"], (count - filtered) + done, "{summary:#}");
    assert_eq!(b["records_delivered_later"], done, "{summary:#}");
    assert_eq!(b["records_failed"], failed, "{summary:#}");

    let mut delivered = BTreeSet::new();
    for line in read_json_lines(&out) {
        let record = &line["record"];
        assert_eq!(record["chained"], true, "{line}");
        assert_eq!(record["_retried"], true, "{line}");
        let n = record["n"].as_u64().expect("n");
        assert_eq!(line["message_id"], n + 1, "{line}");
        assert!(delivered.insert(n), "n = {n} delivered twice");
    }
    assert_eq!(delivered.len() as u64, done);
    // The source's other stage has every message as it came, unchanged by `process`.
    let raw: Vec<_> = read_json_lines(&raw_out);
    assert_eq!(raw, messages, "raw: every message, in order, unchanged");
    // The other branch has every record `process` kept, unchanged by `back`.
    let mut kept = BTreeSet::new();
    for record in read_json_lines(&kept_out) {
        assert_eq!(record["chained"], true, "{record}");
        assert_eq!(record.get("_retried"), None, "{record}");
        assert!(kept.insert(record["n"].as_u64().expect("n")), "{record}");
    }
    assert_eq!(kept, (0..count).filter(|n| n % 4 != 0).collect());
    (delivered, kept, threads)
}

#[test]
fn stages_share_their_inputs_thread_and_deliver_what_separate_threads_do() {
    let (trees, trees_kept, trees_threads) = run("trees");
    let (chains, chains_kept, chains_threads) = run("chains");
    let (none, none_kept, none_threads) = run("none");
    assert_eq!(trees, none, "the same records come out either way");
    assert_eq!(chains, none, "the same records come out either way");
    assert_eq!(trees_kept, none_kept);
    assert_eq!(chains_kept, none_kept);
    // Linux keeps the first 15 bytes of a thread's name.
    let has = |threads: &BTreeSet<String>, stage: &str| threads.contains(&format!("stage-{stage}"));
    assert!(has(&trees_threads, "process"), "{trees_threads:?}");
    assert!(
        ["back", "keep", "raw"]
            .iter()
            .all(|s| !has(&trees_threads, s)),
        "{trees_threads:?}"
    );
    // `process` has two consumers, `in` too: no chain to fuse.
    for threads in [&chains_threads, &none_threads] {
        assert!(
            ["process", "back", "keep", "raw"]
                .iter()
                .all(|s| has(threads, s)),
            "{threads:?}"
        );
    }
}
