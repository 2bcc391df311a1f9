//! `plugin-api` builds on its own, outside this repository, as a plugin author would use it:
//! its folder is copied out (without `target`), the README's "Writing a plugin" example is
//! written next to it (its `Cargo.toml`, and `src/lib.rs` = `tests/fixtures/external-plugin`),
//! built with `cargo build --release --offline` (versions pinned by the workspace's
//! `Cargo.lock`), and the library it makes loads and runs in the real host. Also: the
//! README's example is that fixture and that `Cargo.toml`.
//!
//! The build shares `target/copy-out` between runs, so only the first one compiles the
//! dependencies (under a minute on two cores; later runs, a few seconds: the test prints
//! how long its build took, see `-- --nocapture`).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tests::{
    assert_reconciled, json, read_json_lines, send_json, totals, wait_for_lines, wait_until,
    workspace_dir, Host, Value,
};

/// The README's `Cargo.toml` of the example, verbatim.
const EXAMPLE_CARGO_TOML: &str = r#"[package]
name = "uppercase"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
plugin-api = { path = "../plugin-api" }   # or the published version
"#;

/// Hang detection for the build: a cold build of the dependencies takes a few minutes on
/// two cores.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Copies the folder `from` to `to`, leaving out entries named in `skip` (at any depth).
fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    for entry in
        fs::read_dir(from).unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()))
    {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&src, &dst, skip);
        } else {
            fs::copy(&src, &dst).unwrap_or_else(|e| panic!("cannot copy {}: {e}", src.display()));
        }
    }
}

/// Removes what earlier runs built from their own copies of plugin-api: each copy lives at
/// another path, so Cargo builds it anew under another hash, and the old ones would pile up.
/// The dependencies, the part worth keeping, stay.
fn prune_earlier_copies(target: &Path) {
    for (dir, prefixes) in [
        ("release/deps", &["libplugin_api-", "plugin_api-"][..]),
        ("release/.fingerprint", &["plugin-api-"][..]),
    ] {
        let Ok(entries) = fs::read_dir(target.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if prefixes
                .iter()
                .any(|p| name.to_string_lossy().starts_with(p))
            {
                let path = entry.path();
                let _ = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
            }
        }
    }
}

/// Runs `cargo build --release --offline` in `dir`, into `target`; panics with its output if
/// it fails or outlasts [`BUILD_TIMEOUT`]. Returns how long it took.
fn cargo_build(dir: &Path, target: &Path) -> Duration {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let log_path = dir.join("cargo-build.log");
    let log = fs::File::create(&log_path).expect("cannot create the build log");
    let started = Instant::now();
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--offline"])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("a second handle on the log"))
        .stderr(log)
        .spawn()
        .expect("cannot run cargo");
    let mut status = None;
    wait_until(BUILD_TIMEOUT, || {
        status = child.try_wait().expect("cannot wait for cargo");
        status.is_some()
    });
    let output = || fs::read_to_string(&log_path).unwrap_or_default();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "cargo build did not finish within {BUILD_TIMEOUT:?}:\n{}",
            output()
        );
    };
    assert!(
        status.success(),
        "cargo build failed ({status}):\n{}",
        output()
    );
    started.elapsed()
}

#[test]
fn the_readme_example_builds_against_a_copied_out_plugin_api_and_runs_in_the_host() {
    let workspace = workspace_dir();
    let out = tempfile::tempdir().expect("cannot create a temporary directory");
    let api = out.path().join("plugin-api");
    copy_dir(&workspace.join("plugin-api"), &api, &["target"]);
    assert!(!api.join("target").exists());
    let manifest = fs::read_to_string(api.join("Cargo.toml")).expect("plugin-api/Cargo.toml");
    assert!(
        !manifest.contains("workspace = true"),
        "plugin-api inherits from the workspace; copied out, it cannot build:\n{manifest}"
    );

    let example = out.path().join("uppercase");
    fs::create_dir_all(example.join("src")).unwrap();
    fs::write(example.join("Cargo.toml"), EXAMPLE_CARGO_TOML).unwrap();
    fs::copy(
        workspace.join("tests/fixtures/external-plugin/src/lib.rs"),
        example.join("src/lib.rs"),
    )
    .expect("the example's source");
    // The workspace's versions: resolving offline needs no index, and nothing drifts.
    fs::copy(workspace.join("Cargo.lock"), example.join("Cargo.lock")).unwrap();

    let target = workspace.join("target/copy-out");
    prune_earlier_copies(&target);
    let took = cargo_build(&example, &target);
    eprintln!("copied-out plugin-api and the README example built in {took:.1?}");
    let lib = target.join("release").join(format!(
        "{}uppercase{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(lib.exists(), "{} was not built", lib.display());

    let mut host = Host::start(&format!(
        r#"
plugins:
  paths: ["{{{{plugins}}}}", "{}"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  shout: {{ plugin: uppercase, inputs: [in], config: {{ field: msg }} }}
  out: {{ plugin: jsonl, inputs: [shout], config: {{ path: "{{{{dir}}}}/out.jsonl" }} }}
"#,
        lib.display()
    ));
    // Its log line, under the crate's own target (what `RUST_LOG=uppercase=debug` selects),
    // tagged with the stage.
    let log = host.log();
    assert!(
        log.lines()
            .any(|l| l.contains("uppercase: uppercase stage built") && l.contains("stage=shout")),
        "{log}"
    );
    let sent: Vec<Value> = vec![
        json!({ "msg": "hello from outside" }),
        json!({ "msg": "ünïcode" }),
    ];
    send_json(&host.endpoint, &sent);
    let out_file = host.path("out.jsonl");
    wait_for_lines(&out_file, sent.len());
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (2, 2, 0, 0));
    assert_eq!(
        read_json_lines(&out_file),
        vec![
            json!({ "msg": "HELLO FROM OUTSIDE" }),
            json!({ "msg": "ÜNÏCODE" })
        ]
    );
}

/// The first fenced block of `lang` after `after` in `text`.
fn fenced_block<'a>(text: &'a str, after: &str, lang: &str) -> Option<&'a str> {
    let rest = &text[text.find(after)?..];
    let open = format!("```{lang}\n");
    let start = rest.find(&open)? + open.len();
    let len = rest[start..].find("```")?;
    Some(&rest[start..start + len])
}

/// The code without its leading `//!` lines (the fixture says what it is for).
fn without_inner_docs(code: &str) -> &str {
    let mut rest = code;
    while rest.starts_with("//!") {
        rest = rest.split_once('\n').map_or("", |(_, r)| r);
    }
    rest.trim()
}

#[test]
fn the_readme_example_is_the_external_plugin_fixture() {
    let workspace = workspace_dir();
    let readme = fs::read_to_string(workspace.join("README.md")).expect("README.md");
    let section = "## Writing a plugin";
    let toml = fenced_block(&readme, section, "toml")
        .unwrap_or_else(|| panic!("no ```toml block under {section:?} in README.md"));
    assert_eq!(toml, EXAMPLE_CARGO_TOML, "the README's Cargo.toml changed");
    let rust = fenced_block(&readme, section, "rust")
        .unwrap_or_else(|| panic!("no ```rust block under {section:?} in README.md"));
    let fixture = fs::read_to_string(workspace.join("tests/fixtures/external-plugin/src/lib.rs"))
        .expect("the fixture's source");
    assert_eq!(
        without_inner_docs(rust),
        without_inner_docs(&fixture),
        "README.md's example and tests/fixtures/external-plugin/src/lib.rs differ"
    );
}
