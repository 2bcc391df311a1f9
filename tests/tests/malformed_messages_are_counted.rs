//! Messages that cannot become records are counted as failed, each under its own error type,
//! and do not disturb the good messages around them: whether the source's one consumer
//! decodes them on its own thread, the one thread of a fan-out's stages decodes them
//! (`runtime.fuse: trees`, the default), or the source decodes them once for a fan-out to
//! several threads.

use std::collections::BTreeMap;

use tests::{assert_reconciled, read_json_lines, send, totals, wait_for_lines, Host};

/// `max_message_bytes` in the pipeline below.
const MAX: usize = 200;

/// A valid JSON object of exactly `len` bytes.
fn object_of_len(n: usize, len: usize) -> Vec<u8> {
    let head = format!(r#"{{"n":{n},"pad":""#);
    let pad = len - head.len() - 2;
    format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
}

const SOURCE: &str = r#"
plugins:
  paths: ["{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}", max_message_bytes: 200 }
stages:
"#;

/// One exporter stage writing `{name}.jsonl`.
fn jsonl(name: &str) -> String {
    format!(
        "  {name}:\n    plugin: jsonl\n    inputs: [in]\n    config: {{ path: \"{{{{dir}}}}/{name}.jsonl\" }}\n"
    )
}

#[test]
fn each_malformed_message_is_counted_by_type_by_the_one_consumer() {
    check(&["out"], "trees");
}

#[test]
fn each_malformed_message_is_counted_by_type_by_a_fan_outs_one_thread() {
    check(&["left", "right"], "trees");
}

#[test]
fn each_malformed_message_is_counted_by_type_before_a_fan_out_to_threads() {
    check(&["left", "right"], "none");
}

fn check(exporters: &[&str], fuse: &str) {
    let pipeline = exporters
        .iter()
        .fold(SOURCE.to_owned(), |p, e| p + &jsonl(e))
        + &format!("runtime: {{ fuse: {fuse} }}\n");
    let mut host = Host::start(&pipeline);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_json", b"{\"a\":".to_vec()),
        ("invalid_json", b"not json".to_vec()),
        ("empty_message", b"".to_vec()),
        ("invalid_json", b"{\"a\":1} trailing".to_vec()),
        ("invalid_utf8", b"{\"a\":\"\xff\"}".to_vec()),
        ("invalid_utf8", b"\xc3\x28".to_vec()),
        ("not_an_object", b"[1,2]".to_vec()),
        ("not_an_object", b"\"text\"".to_vec()),
        ("not_an_object", b"42".to_vec()),
        ("not_an_object", b"null".to_vec()),
        // One policy for duplicate keys, at any depth: refused, so that what a stage tests
        // is what an exporter writes.
        (
            "duplicate_key",
            br#"{"level":"info","level":"debug"}"#.to_vec(),
        ),
        ("duplicate_key", br#"{"a":[{"k":1,"k":1}]}"#.to_vec()),
        // Integers are kept exactly or not at all.
        (
            "number_out_of_range",
            br#"{"n":18446744073709551617}"#.to_vec(),
        ),
        (
            "number_out_of_range",
            br#"{"n":9223372036854775808}"#.to_vec(),
        ),
        ("number_out_of_range", br#"{"x":1e999}"#.to_vec()),
        ("message_too_large", object_of_len(0, MAX + 1)),
        // Too large is decided before anything else is looked at.
        ("message_too_large", vec![0xff; MAX * 2]),
    ];
    // Good messages between and after the bad ones; one exactly at the size limit.
    let mut payloads = Vec::new();
    let mut good = Vec::new();
    let mut n = 0;
    let mut push_good = |payloads: &mut Vec<Vec<u8>>, len: Option<usize>| {
        payloads.push(match len {
            Some(len) => object_of_len(n, len),
            None => format!(
                r#"{{"n":{n},"nested":{{"list":[1,2.5,null,true]}},"big":-9223372036854775808}}"#
            )
            .into_bytes(),
        });
        good.push(n);
        n += 1;
    };
    push_good(&mut payloads, Some(MAX));
    for (_, payload) in &bad {
        payloads.push(payload.clone());
        push_good(&mut payloads, None);
    }
    let good_count = good.len();

    send(&host.endpoint, &payloads);
    let outs: Vec<_> = exporters
        .iter()
        .map(|e| host.path(&format!("{e}.jsonl")))
        .collect();
    for out in &outs {
        wait_for_lines(out, good_count);
    }
    let summary = host.stop();

    for out in &outs {
        let lines = read_json_lines(out);
        let ns: Vec<u64> = lines.iter().map(|r| r["n"].as_u64().expect("n")).collect();
        assert_eq!(ns, good.iter().map(|&n| n as u64).collect::<Vec<_>>());
        assert_eq!(
            lines[1]["nested"],
            tests::json!({ "list": [1, 2.5, null, true] })
        );
        assert_eq!(
            lines[1]["big"],
            tests::json!(i64::MIN),
            "integers stay exact"
        );
    }

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (kind, _) in &bad {
        *expected.entry((*kind).to_owned()).or_default() += 1;
    }
    assert_reconciled(&summary);
    assert_eq!(
        totals(&summary),
        (
            payloads.len() as u64,
            good_count as u64,
            0,
            bad.len() as u64
        ),
        "(received, completed, filtered, failed): {summary:#}"
    );
    assert_eq!(
        summary["pipeline"]["failed_by_type"],
        serde_json::to_value(&expected).unwrap(),
        "{summary:#}"
    );
}
