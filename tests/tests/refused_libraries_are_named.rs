//! A library named directly in `plugins.paths` that is not a plugin, or was built against an
//! incompatible plugin-api (another major version, another layout), is refused with one short
//! line naming the file and the reason; the layout dump stays out of the default log.

use std::path::Path;

use tests::{fixture_lib, host_command, run_host, run_with_timeout};

const CASES: [(&str, &str); 3] = [
    ("not-a-plugin", "not a plugin"),
    ("incompatible-plugin", "incompatible plugin-api"),
    ("layout-mismatch-plugin", "incompatible plugin-api"),
];

/// A pipeline loading `lib` alone and asking for `uppercase`, a stage it does not offer.
fn pipeline(dir: &Path, lib: &Path) -> std::path::PathBuf {
    let file = dir.join("pipeline.yaml");
    std::fs::write(
        &file,
        format!(
            "plugins:\n  paths: [\"{}\"]\nsources:\n  in: {{ type: zmq, socket: pull, bind: \"tcp://127.0.0.1:0\" }}\nstages:\n  up: {{ plugin: uppercase, inputs: [in], config: {{ field: msg }} }}\n",
            lib.display()
        ),
    )
    .unwrap();
    file
}

/// The lines of `text` that name `lib`.
fn naming<'a>(text: &'a str, lib: &Path) -> Vec<&'a str> {
    let name = lib.file_name().unwrap().to_str().unwrap();
    text.lines().filter(|l| l.contains(name)).collect()
}

#[test]
fn each_bad_library_is_refused_in_one_short_line() {
    for (package, reason) in CASES {
        let lib = fixture_lib(package);
        let dir = tempfile::tempdir().unwrap();
        let file = pipeline(dir.path(), &lib);
        let validate = run_host(["validate".as_ref(), "--pipeline".as_ref(), file.as_os_str()]);
        let mut cmd = host_command();
        cmd.arg("--pipeline").arg(&file);
        let run = run_with_timeout(cmd);
        for (how, out) in [("validate", validate), ("run", run)] {
            // The stage it would have offered is unknown: the pipeline is invalid.
            assert_eq!(out.code(), 2, "{package} ({how}): {out:#?}");
            assert!(
                out.stderr.lines().count() < 10,
                "{package} ({how}): too much output: {out:#?}"
            );
            let lines = naming(&out.stderr, &lib);
            assert_eq!(
                lines.len(),
                1,
                "{package} ({how}): one line should name the library: {out:#?}"
            );
            let line = lines[0];
            assert!(
                line.contains(&lib.display().to_string()) && line.contains(reason),
                "{package} ({how}): expected the path and {reason:?}: {line}"
            );
            assert!(line.len() < 400, "{package} ({how}): not short: {line}");
            assert!(
                out.stderr.contains("no stage type named `uppercase`"),
                "{package} ({how}): {out:#?}"
            );
            assert!(!out.stderr.contains("pipeline started"), "{out:#?}");
        }
    }
}

#[test]
fn plugins_command_prints_refused_libraries() {
    for (package, reason) in CASES {
        let lib = fixture_lib(package);
        let out = run_host(["plugins".as_ref(), "--path".as_ref(), lib.as_os_str()]);
        assert_eq!(out.code(), 0, "{package}: {out:#?}");
        let expected = format!("refused: {}: {reason}", lib.display());
        let refused: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("refused: "))
            .collect();
        assert_eq!(refused.len(), 1, "{package}: {out:#?}");
        assert!(
            refused[0].starts_with(&expected),
            "{package}: expected {expected:?}, got {:?}",
            refused[0]
        );
        assert!(out.stdout.lines().count() < 10, "{package}: {out:#?}");
    }
}
