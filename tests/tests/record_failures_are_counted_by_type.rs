//! Records a stage fails one by one are counted as failed messages under the error kind the
//! stage gave (`validation` here); the other records of the same batch go on.

use tests::{
    assert_reconciled, json, read_json_lines, send_json, stage, totals, wait_for_lines, Host, Value,
};

fn messages(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({ "n": i, "bad": i % 4 == 1 }))
        .collect()
}

fn ns(lines: &[Value]) -> Vec<u64> {
    lines.iter().map(|r| r["n"].as_u64().expect("n")).collect()
}

#[test]
fn failed_records_are_counted_as_validation() {
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libpanicky_plugin.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  check: { plugin: failing, inputs: [in] }
  out:
    plugin: jsonl
    inputs: [check]
    config: { path: "{{dir}}/out.jsonl" }
"#,
    );
    let n = 40;
    send_json(&host.endpoint, &messages(n));
    let good: Vec<u64> = (0..n as u64).filter(|i| i % 4 != 1).collect();
    let out = host.path("out.jsonl");
    wait_for_lines(&out, good.len());
    let summary = host.stop();

    assert_eq!(ns(&read_json_lines(&out)), good);
    let bad = (n - good.len()) as u64;
    assert_reconciled(&summary);
    assert_eq!(
        totals(&summary),
        (n as u64, good.len() as u64, 0, bad),
        "{summary:#}"
    );
    assert_eq!(
        summary["pipeline"]["failed_by_type"],
        json!({ "validation": bad })
    );
    let check = stage(&summary, "check");
    assert_eq!(check["records_in"], n, "{summary:#}");
    assert_eq!(check["records_out"], good.len(), "{summary:#}");
    assert_eq!(check["records_failed"], bad, "{summary:#}");
    assert_eq!(check["errors_by_type"], json!({ "validation": bad }));
}

#[test]
fn a_failure_in_one_branch_fails_the_message() {
    // `raw` exports every message; `checked` only the good ones. A message that one branch
    // failed counts as failed, even though the other branch delivered it.
    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}", "{{fixtures}}/libpanicky_plugin.so"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  raw:
    plugin: jsonl
    inputs: [in]
    config: { path: "{{dir}}/raw.jsonl" }
  check: { plugin: failing, inputs: [in] }
  checked:
    plugin: jsonl
    inputs: [check]
    config: { path: "{{dir}}/checked.jsonl" }
"#,
    );
    let n = 20;
    send_json(&host.endpoint, &messages(n));
    let good: Vec<u64> = (0..n as u64).filter(|i| i % 4 != 1).collect();
    let (raw, checked) = (host.path("raw.jsonl"), host.path("checked.jsonl"));
    wait_for_lines(&raw, n);
    wait_for_lines(&checked, good.len());
    let summary = host.stop();

    assert_eq!(
        ns(&read_json_lines(&raw)),
        (0..n as u64).collect::<Vec<_>>()
    );
    assert_eq!(ns(&read_json_lines(&checked)), good);
    let bad = (n - good.len()) as u64;
    assert_reconciled(&summary);
    assert_eq!(
        totals(&summary),
        (n as u64, good.len() as u64, 0, bad),
        "{summary:#}"
    );
    assert_eq!(
        summary["pipeline"]["failed_by_type"],
        json!({ "validation": bad })
    );
}
