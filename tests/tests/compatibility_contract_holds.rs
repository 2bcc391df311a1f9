//! plugin-api 0.2's compatibility contract (the README's "compatibility contract"), clause by
//! clause, each proven by a fixture library built against another shape of plugin-api (the
//! `tests/fixtures/compat-*` crates, each built on its own) and loaded by the real host:
//!
//! 1. a library built against an earlier 0.2 patch (0.2.0), before fields were appended to
//!    the root module and to the host's callbacks, loads and runs (`compat-older-shape`);
//! 2. one built against a later 0.2.x, with fields appended to both, loads and runs
//!    (`compat-newer-shape`);
//! 3. one built against the next minor (0.3.0) is refused, in one line stating both versions
//!    (`compat-next-minor`);
//! 4. one whose `Record` layout differs is refused, in one line naming where and what
//!    (`compat-other-record-layout`);
//! 5. enums that will grow are non-exhaustive across the boundary: proven at the type level,
//!    by unit tests in plugin-api (`kinds.rs`, `value.rs`);
//! 6. the host's callbacks come with a context, not a global sink: two instances of one stage
//!    type keep their metrics apart;
//!
//! and a library built with `panic = "abort"`, whose first panic would end the host, does not
//! compile.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tests::{
    assert_reconciled, host_command, isolated_fixture_lib, json, plugin_dir, read_json_lines,
    run_host, run_with_timeout, send_json, totals, wait_for_lines, wait_until, workspace_dir, Host,
    Output, Value,
};

/// The shipped JSON-lines exporter, the only other library the running pipelines load.
fn jsonl_lib() -> PathBuf {
    plugin_dir().join(format!(
        "{}plugin_jsonl{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

/// The plugin-api version this host was built against: the `api` column of a built-in stage
/// in `host plugins`.
fn host_api_version() -> String {
    let out = run_host(["plugins", "--path", "/nonexistent"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    out.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("passthrough"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_else(|| panic!("no built-in `passthrough` listed: {out:#?}"))
        .to_owned()
}

/// `host plugins --path LIB`: the stage types listed (each line's columns: stage, kind,
/// version, api, library) and the `refused:` lines.
fn plugins_listing(lib: &Path) -> (Vec<Vec<String>>, Vec<String>) {
    let out = run_host(["plugins".as_ref(), "--path".as_ref(), lib.as_os_str()]);
    assert_eq!(out.code(), 0, "{out:#?}");
    let refused = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("refused: "))
        .map(str::to_owned)
        .collect();
    let listed = out
        .stdout
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("refused: "))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    (listed, refused)
}

/// Runs five messages through stage type `stage` of library `lib` (as instance `reshaped`)
/// into a JSON-lines file; checks that each comes out with `shape` set to `shape`, that the
/// stage's build log line reached the host's log, and that its per-batch counter reached
/// `/metrics`.
fn records_pass_through(lib: &Path, stage: &str, shape: &str) -> String {
    let mut host = Host::start(&format!(
        r#"
plugins:
  paths: ["{jsonl}", "{lib}"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  reshaped: {{ plugin: {stage}, inputs: [in] }}
  out: {{ plugin: jsonl, inputs: [reshaped], config: {{ path: "{{{{dir}}}}/out.jsonl" }} }}
"#,
        jsonl = jsonl_lib().display(),
        lib = lib.display(),
    ));
    let log = host.log();
    let built: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("{stage} stage built")))
        .collect();
    assert_eq!(built.len(), 1, "the library's build log line:\n{log}");
    assert!(
        built[0].contains("INFO") && built[0].contains("reshaped"),
        "at info level, tagged with the instance: {}",
        built[0]
    );

    // One string with an escape, so that the decoder writes it after the message's text.
    let sent: Vec<Value> = (0..5)
        .map(|n| json!({ "n": n, "msg": format!("message\t{n}") }))
        .collect();
    send_json(&host.endpoint, &sent);
    let out = host.path("out.jsonl");
    wait_for_lines(&out, sent.len());
    let counted = host.metrics().value(
        "host_plugin_compat_records_total",
        &[("stage", "reshaped"), ("shape", shape)],
    );
    let summary = host.stop();

    let expected: Vec<Value> = (0..5)
        .map(|n| json!({ "n": n, "say \"hi\"": format!("message\t{n}"), "shape": shape }))
        .collect();
    assert_eq!(read_json_lines(&out), expected);
    assert_eq!(counted, 5.0, "the stage's own counter");
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (5, 5, 0, 0), "{summary:#}");
    log
}

/// Checks that `host plugins --path LIB` lists stage type `stage` from `lib`, built against
/// plugin-api `api`, and refuses nothing.
fn listed(lib: &Path, stage: &str, api: &str) {
    let (listed, refused) = plugins_listing(lib);
    assert!(refused.is_empty(), "{refused:?}");
    let line = listed
        .iter()
        .find(|c| c[0] == stage)
        .unwrap_or_else(|| panic!("`{stage}` not listed: {listed:?}"));
    assert_eq!(
        line[1..],
        [
            "processor".to_owned(),
            "0.1.0".to_owned(),
            api.to_owned(),
            lib.display().to_string()
        ],
        "{line:?}"
    );
}

#[test]
fn a_library_built_before_fields_were_appended_loads_runs_and_logs() {
    let lib = isolated_fixture_lib("compat-older-shape");
    // Built against the first 0.2 release, a patch before this host's.
    assert_ne!(host_api_version(), "0.2.0", "the host is a later 0.2 patch");
    listed(&lib, "compat-older", "0.2.0");
    // Its log line came through the `log` callback alone (it knows no `log_enabled`), its
    // counter through `metric`.
    records_pass_through(&lib, "compat-older", "older");
}

#[test]
fn a_library_built_against_a_later_0_2_loads_and_runs() {
    let lib = isolated_fixture_lib("compat-newer-shape");
    listed(&lib, "compat-newer", "0.2.999");
    let log = records_pass_through(&lib, "compat-newer", "newer");
    // The library read a callback this host does not have, and found it missing.
    assert!(log.contains(r#"host_added_later="missing""#), "{log}");
}

/// A pipeline asking for stage type `stage` of library `lib` alone, written into `dir`.
fn pipeline_naming(dir: &Path, lib: &Path, stage: &str) -> PathBuf {
    let file = dir.join("pipeline.yaml");
    fs::write(
        &file,
        format!(
            "plugins:\n  paths: [\"{}\"]\nsources:\n  in: {{ type: zmq, socket: pull, bind: \"tcp://127.0.0.1:0\" }}\nstages:\n  s: {{ plugin: {stage}, inputs: [in] }}\n",
            lib.display()
        ),
    )
    .unwrap();
    file
}

/// Checks that `lib` is refused with one short line, wherever a user meets the refusal:
/// `host plugins`, `host validate` and `host --pipeline` (at the default log level); returns
/// the line `host plugins` printed.
fn refused_in_one_line(lib: &Path, stage: &str, reason: &str) -> String {
    let shown = lib.display().to_string();
    let (listed, refused) = plugins_listing(lib);
    assert_eq!(refused.len(), 1, "{refused:?}");
    let line = refused[0].clone();
    assert!(
        line.starts_with(&format!(
            "refused: {shown}: incompatible plugin-api: {reason}"
        )),
        "{line}"
    );
    assert!(listed.iter().all(|c| c[0] != stage), "{listed:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = pipeline_naming(dir.path(), lib, stage);
    let validate = run_host(["validate".as_ref(), "--pipeline".as_ref(), file.as_os_str()]);
    let mut run = host_command();
    run.arg("--pipeline").arg(&file);
    let run = run_with_timeout(run);
    for (how, out) in [("validate", validate), ("run", run)] {
        assert_eq!(out.code(), 2, "{how}: {out:#?}");
        let naming: Vec<&str> = out.stderr.lines().filter(|l| l.contains(&shown)).collect();
        assert_eq!(naming.len(), 1, "{how}: one line names the file: {out:#?}");
        assert!(
            naming[0].contains(&line["refused: ".len()..]),
            "{how}: the same reason as `host plugins` gives: {}",
            naming[0]
        );
        // No layout dump at the default level: a few lines in all, none of abi_stable's.
        assert!(out.stderr.lines().count() < 10, "{how}: {out:#?}");
        assert!(
            !out.stderr.contains("Type Layout") && !out.stderr.contains("layout mismatch"),
            "{how}: {out:#?}"
        );
        assert!(
            out.stderr
                .contains(&format!("no stage type named `{stage}`")),
            "{how}: {out:#?}"
        );
    }
    line
}

#[test]
fn a_library_built_against_the_next_minor_is_refused_naming_both_versions() {
    let lib = isolated_fixture_lib("compat-next-minor");
    let host_api = host_api_version();
    let line = refused_in_one_line(
        &lib,
        "compat-next-minor",
        &format!("library built against plugin-api 0.3.0, this host has {host_api}"),
    );
    assert!(line.len() < 300, "not short: {line}");
    assert!(
        !line.contains("layout"),
        "the version is the reason: {line}"
    );
}

#[test]
fn a_library_with_another_record_layout_is_refused_naming_the_first_difference() {
    let lib = isolated_fixture_lib("compat-other-record-layout");
    let line = refused_in_one_line(&lib, "compat-other-layout", "type layouts differ: at ");
    // Where, down to the type that differs, and what differs in it; not just "they differ".
    assert!(
        line.contains("Record.data > RecordData.meta (RecordMeta): "),
        "the path to the type: {line}"
    );
    let sizes = line
        .split("(RecordMeta): ")
        .nth(1)
        .expect("what differs in RecordMeta");
    assert!(
        sizes.starts_with("size ")
            && sizes.contains(" here, ")
            && sizes.contains(" in the library"),
        "its sizes: {line}"
    );
    assert!(line.len() < 400, "not short: {line}");

    // The full report is there for whoever asks for it, at debug level.
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline_naming(dir.path(), &lib, "compat-other-layout");
    let mut validate = host_command();
    validate.env("RUST_LOG", "debug").args([
        "validate".as_ref(),
        "--pipeline".as_ref(),
        file.as_os_str(),
    ]);
    let out = run_with_timeout(validate);
    assert_eq!(out.code(), 2, "{out:#?}");
    assert!(
        out.stderr.contains("layout mismatch") && out.stderr.contains("RecordMeta"),
        "{out:#?}"
    );
}

#[test]
fn two_instances_of_one_stage_type_record_metrics_under_their_own_names() {
    for (fixture, stage) in [
        ("compat-older-shape", "compat-older"),
        ("compat-newer-shape", "compat-newer"),
    ] {
        let lib = isolated_fixture_lib(fixture);
        let mut host = Host::start(&format!(
            r#"
plugins:
  paths: ["{jsonl}", "{lib}"]
sources:
  left: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
  right: {{ type: zmq, socket: pull, bind: "{{{{endpoint2}}}}" }}
stages:
  a: {{ plugin: {stage}, inputs: [left] }}
  b: {{ plugin: {stage}, inputs: [right] }}
  out: {{ plugin: jsonl, inputs: [a, b], config: {{ path: "{{{{dir}}}}/out.jsonl" }} }}
"#,
            jsonl = jsonl_lib().display(),
            lib = lib.display(),
        ));
        let message = |n: usize| json!({ "n": n });
        send_json(&host.endpoint, &(0..3).map(message).collect::<Vec<_>>());
        send_json(&host.endpoint2, &(0..7).map(message).collect::<Vec<_>>());
        wait_for_lines(&host.path("out.jsonl"), 10);
        let metrics = host.metrics();
        let count = |instance: &str| {
            metrics.value("host_plugin_compat_records_total", &[("stage", instance)])
        };
        assert_eq!(
            (count("a"), count("b")),
            (3.0, 7.0),
            "{fixture}: each instance's own count:\n{}",
            metrics.text
        );
        // The log lines of the two builds are told apart the same way.
        let log = host.log();
        let built: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("{stage} stage built")))
            .collect();
        assert_eq!(built.len(), 2, "{fixture}:\n{log}");
        let tagged = |instance: &str| {
            built
                .iter()
                .filter(|l| l.contains(&format!("stage={instance}")))
                .count()
        };
        assert_eq!((tagged("a"), tagged("b")), (1, 1), "{fixture}: {built:#?}");
        let summary = host.stop();
        assert_reconciled(&summary);
        assert_eq!(totals(&summary), (10, 10, 0, 0), "{fixture}: {summary:#}");
    }
}

/// How long the `cargo check` of a library built with `panic = "abort"` may take: its
/// dependencies are checked once (with that flag) into a target directory of their own, kept
/// between runs.
const ABORT_CHECK_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `cmd` with its output in files under `dir` (cargo can print more than a pipe holds),
/// killing it after `timeout`.
fn run_logged(mut cmd: Command, dir: &Path, timeout: Duration) -> Output {
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout).unwrap())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().expect("cannot wait for cargo");
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {timeout:?}");
    };
    Output {
        status,
        stdout: fs::read_to_string(stdout).unwrap_or_default(),
        stderr: fs::read_to_string(stderr).unwrap_or_default(),
    }
}

#[test]
fn a_library_built_with_panic_abort_does_not_compile() {
    let workspace = workspace_dir();
    let krate = tempfile::tempdir().unwrap();
    fs::create_dir(krate.path().join("src")).unwrap();
    fs::write(
        krate.path().join("Cargo.toml"),
        format!(
            r#"[package]
name = "abort-plugin"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
plugin-api = {{ path = "{}" }}

# Not part of any workspace above the temporary directory.
[workspace]
"#,
            workspace.join("plugin-api").display()
        ),
    )
    .unwrap();
    fs::write(
        krate.path().join("src/lib.rs"),
        r#"use plugin_api::{Batch, Stage, StageContext, StageError, StageKind};

pub struct Abort;

impl Stage for Abort {
    const NAME: &'static str = "abort";
    const KIND: StageKind = StageKind::Processor;
    type Config = ();

    fn build((): (), _ctx: StageContext) -> Result<Self, String> {
        Ok(Abort)
    }

    fn process(&mut self, _batch: &mut Batch) -> Result<(), StageError> {
        Ok(())
    }
}

plugin_api::export_plugin!(Abort);
"#,
    )
    .unwrap();
    // The workspace's lock file, so that every version resolves offline.
    fs::copy(
        workspace.join("Cargo.lock"),
        krate.path().join("Cargo.lock"),
    )
    .unwrap();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut check = Command::new(cargo);
    check
        .args(["check", "--offline", "--manifest-path"])
        .arg(krate.path().join("Cargo.toml"))
        .env(
            "CARGO_TARGET_DIR",
            workspace.join("target/panic-abort-check"),
        )
        // What a plugin author's `[profile.release] panic = "abort"` amounts to; flags from
        // the environment this test runs in must not override it.
        .env("RUSTFLAGS", "-C panic=abort")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .current_dir(krate.path());
    let started = Instant::now();
    let out = run_logged(check, krate.path(), ABORT_CHECK_TIMEOUT);
    eprintln!(
        "cargo check of a panic = \"abort\" library: {:.1?}",
        started.elapsed()
    );

    assert!(!out.status.success(), "it compiled: {out:#?}");
    assert!(
        out.stderr.contains(
            "error: plugin-api: this library is built with panic = \"abort\": the host could not survive its first panic."
        ),
        "not refused by plugin-api's compile_error: {}",
        out.stderr
    );
    // That error, and no other: the crate is fine otherwise.
    assert!(
        out.stderr.contains("due to 1 previous error"),
        "{}",
        out.stderr
    );
}
