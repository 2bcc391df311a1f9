//! `host plugins` lists every stage type it can find: name, kind, version, plugin-api version
//! and the library it comes from (`built-in` for the host's own).

use std::{collections::BTreeMap, path::Path};

use tests::{host_bin, is_version, plugin_dir, run_host, Output};

/// Stage name -> (kind, version, api, library), from `host plugins` output.
fn listing(out: &Output) -> BTreeMap<String, [String; 4]> {
    assert_eq!(out.code(), 0, "{out:#?}");
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(header, ["stage", "kind", "version", "api", "library"]);
    lines
        .filter(|l| !l.starts_with("refused: "))
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(c.len(), 5, "{l:?}");
            (c[0].to_owned(), [c[1], c[2], c[3], c[4]].map(str::to_owned))
        })
        .collect()
}

fn lib(dir: &Path, name: &str) -> String {
    dir.join(format!(
        "{}plugin_{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
    .display()
    .to_string()
}

/// Checks the listing of the shipped stages, found in `dir`.
fn check(stages: &BTreeMap<String, [String; 4]>, dir: &Path) {
    let expected = [
        ("passthrough", "processor", "built-in".to_owned()),
        ("null", "exporter", "built-in".to_owned()),
        ("rules", "processor", lib(dir, "rules")),
        ("message-metrics", "metrics", lib(dir, "message_metrics")),
        ("jsonl", "exporter", lib(dir, "jsonl")),
        ("otlp", "exporter", lib(dir, "otlp")),
    ];
    let api = &stages["passthrough"][2];
    for (name, kind, library) in expected {
        let [k, version, a, l] = stages
            .get(name)
            .unwrap_or_else(|| panic!("`{name}` not listed: {stages:#?}"));
        assert_eq!(k, kind, "{name}");
        assert!(is_version(version), "{name}: version {version:?}");
        assert!(is_version(a), "{name}: api {a:?}");
        assert_eq!(
            a, api,
            "{name}: every stage here is built against one plugin-api"
        );
        assert_eq!(l, &library, "{name}");
    }
}

#[test]
fn lists_the_shipped_stages_of_a_directory() {
    let dir = plugin_dir();
    let out = run_host(["plugins".as_ref(), "--path".as_ref(), dir.as_os_str()]);
    check(&listing(&out), &dir);
    // target/release holds other libraries too; they are not stage libraries, and are
    // skipped quietly rather than refused.
    assert!(!out.stdout.contains("refused: "), "{out:#?}");
}

#[test]
fn looks_next_to_the_host_binary_by_default() {
    let out = run_host(["plugins"]);
    // The host finds its own directory through /proc/self/exe, which resolves symlinks.
    let exe = host_bin().canonicalize().unwrap();
    check(&listing(&out), exe.parent().unwrap());
}

#[test]
fn looks_where_a_pipeline_says() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(
        &file,
        format!(
            "plugins:\n  paths: [\"{}\"]\nsources:\n  in: {{ type: zmq, socket: pull, bind: \"tcp://127.0.0.1:0\" }}\nstages:\n  out: {{ plugin: null, inputs: [in] }}\n",
            plugin_dir().display()
        ),
    )
    .unwrap();
    let out = run_host(["plugins".as_ref(), "--pipeline".as_ref(), file.as_os_str()]);
    check(&listing(&out), &plugin_dir());
}
