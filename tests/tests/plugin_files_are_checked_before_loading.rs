//! A library file is checked before the dynamic loader sees it: a truncated or corrupt file is
//! refused with one line naming it (never a SIGBUS), a file that others than its owner could
//! have written is refused unless `allow_insecure_paths` says otherwise, a directory scan never
//! runs a foreign library's initialisers, and a bare file name is a file in the working
//! directory, not a lookup on the system's library path.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use tests::{
    fixture_lib, host_command, json, plugin_dir, read_json_lines, run_with_timeout, send_json,
    wait_for_lines, Host, Output,
};

/// The shipped `jsonl` stage library.
fn jsonl_lib() -> PathBuf {
    plugin_dir().join(format!(
        "{}plugin_jsonl{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A fresh directory only its owner can write (explicitly, whatever the umask).
fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o700);
    dir
}

/// Copies `from` to `dir/name`, mode 0644.
fn copy(from: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    fs::copy(from, &to).unwrap();
    chmod(&to, 0o644);
    to
}

/// `host plugins --path P...`, which must exit normally (with 0): a signal fails the test.
fn plugins(paths: &[&Path]) -> Output {
    let mut cmd = host_command();
    cmd.arg("plugins");
    for path in paths {
        cmd.arg("--path").arg(path);
    }
    plugins_with(cmd)
}

fn plugins_with(cmd: Command) -> Output {
    let out = run_with_timeout(cmd);
    assert_eq!(out.code(), 0, "{out:#?}");
    out
}

/// The `refused: ` lines of `host plugins` output.
fn refused(out: &Output) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("refused: "))
        .collect()
}

/// The library a listed stage comes from, from `host plugins` output.
fn library_of<'a>(out: &'a Output, stage: &str) -> Option<&'a str> {
    out.stdout.lines().find_map(|l| {
        let columns: Vec<&str> = l.split_whitespace().collect();
        (columns.len() == 5 && columns[0] == stage).then_some(columns[4])
    })
}

/// Checks that `out` refused exactly one library, `lib`, for a reason containing `reason`.
fn assert_refused(out: &Output, lib: &Path, reason: &str) {
    let lines = refused(out);
    assert_eq!(lines.len(), 1, "one refusal expected: {out:#?}");
    let prefix = format!("refused: {}: ", lib.display());
    assert!(
        lines[0].starts_with(&prefix) && lines[0].contains(reason),
        "expected {prefix:?} and {reason:?}, got {:?}",
        lines[0]
    );
    assert!(lines[0].len() < 400, "not short: {}", lines[0]);
}

/// Writes a pipeline to `dir/pipeline.yaml` whose `jsonl` stage comes from `paths` (YAML).
fn pipeline(dir: &Path, paths: &str, allow_insecure: bool) -> PathBuf {
    let file = dir.join("pipeline.yaml");
    let allow = if allow_insecure {
        "\n  allow_insecure_paths: true"
    } else {
        ""
    };
    fs::write(
        &file,
        format!(
            "plugins:\n  paths: {paths}{allow}\nsources:\n  in: {{ type: zmq, socket: pull, bind: \"tcp://127.0.0.1:0\" }}\nstages:\n  out: {{ plugin: jsonl, inputs: [in], config: {{ path: \"{}/out.jsonl\" }} }}\n",
            dir.display()
        ),
    )
    .unwrap();
    file
}

/// `host validate --pipeline FILE`, run in `cwd` if given.
fn validate(file: &Path, cwd: Option<&Path>) -> Output {
    let mut cmd = host_command();
    cmd.arg("validate").arg("--pipeline").arg(file);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    run_with_timeout(cmd)
}

/// The lines of `text` that name `lib` (its file name).
fn naming<'a>(text: &'a str, lib: &Path) -> Vec<&'a str> {
    let name = lib.file_name().unwrap().to_str().unwrap();
    text.lines().filter(|l| l.contains(name)).collect()
}

/// Checks that a pipeline needing the `jsonl` stage from `lib` alone is invalid, and says why
/// in one line naming `lib`, under `validate` and when run.
fn assert_pipeline_refuses(file: &Path, lib: &Path, reason: &str) {
    let mut run = host_command();
    run.arg("--pipeline").arg(file);
    for (how, out) in [
        ("validate", validate(file, None)),
        ("run", run_with_timeout(run)),
    ] {
        assert_eq!(out.code(), 2, "{how}: {out:#?}");
        let lines = naming(&out.stderr, lib);
        assert_eq!(
            lines.len(),
            1,
            "{how}: one line should name the library: {out:#?}"
        );
        assert!(
            lines[0].contains(&lib.display().to_string()) && lines[0].contains(reason),
            "{how}: expected the path and {reason:?}: {}",
            lines[0]
        );
        assert!(
            out.stderr.contains("no stage type named `jsonl`"),
            "{how}: {out:#?}"
        );
        assert!(!out.stderr.contains("pipeline started"), "{how}: {out:#?}");
    }
}

#[test]
fn a_truncated_plugin_is_refused_not_a_crash() {
    let dir = private_dir();
    let whole = fs::metadata(jsonl_lib()).unwrap().len();
    // Half: the loaded segments are whole, the section headers are gone. A sixteenth: the
    // segments the dynamic loader would map are cut too.
    for (name, len) in [
        ("libplugin_half.so", whole / 2),
        ("libplugin_cut.so", whole / 16),
    ] {
        let lib = copy(&jsonl_lib(), dir.path(), name);
        fs::File::options()
            .write(true)
            .open(&lib)
            .unwrap()
            .set_len(len)
            .unwrap();

        let out = plugins(&[&lib]);
        assert_refused(&out, &lib, "not a library this host can load: truncated: ");
        assert!(
            refused(&out)[0].contains(&format!("ends past the end of the file ({len} bytes)")),
            "{out:#?}"
        );
        assert_eq!(library_of(&out, "jsonl"), None, "{out:#?}");

        let file = pipeline(dir.path(), &format!("[\"{}\"]", lib.display()), false);
        assert_pipeline_refuses(&file, &lib, "truncated: ");
    }
}

#[test]
fn a_file_that_is_not_elf_or_is_corrupt_is_refused() {
    let dir = private_dir();
    // Random bytes (a fixed xorshift sequence, so a failure can be reproduced).
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let random = dir.path().join("libx.so");
    fs::write(&random, &noise).unwrap();
    chmod(&random, 0o644);
    let out = plugins(&[&random]);
    assert_refused(
        &out,
        &random,
        "not a library this host can load: not an ELF file",
    );

    // A real ELF header followed by noise: the headers it points to are garbage.
    let mut garbled = fs::read(jsonl_lib()).unwrap()[..64].to_vec();
    garbled.extend_from_slice(&noise);
    let corrupt = dir.path().join("libgarbled.so");
    fs::write(&corrupt, &garbled).unwrap();
    chmod(&corrupt, 0o644);
    let out = plugins(&[&corrupt]);
    assert_refused(&out, &corrupt, "not a library this host can load: ");

    let file = pipeline(dir.path(), &format!("[\"{}\"]", random.display()), false);
    assert_pipeline_refuses(&file, &random, "not an ELF file");
}

/// The little-endian number of `n` bytes at `at`.
fn le(bytes: &[u8], at: usize, n: usize) -> usize {
    let mut word = [0u8; 8];
    word[..n].copy_from_slice(&bytes[at..at + n]);
    usize::try_from(u64::from_le_bytes(word)).unwrap()
}

/// Sets the value of the first entry `tag` of the dynamic section of `lib`, a 64-bit
/// little-endian ELF file, to `value`. By hand: the ELF header gives the program headers
/// (`e_phoff` at 32, `e_phentsize` at 54, `e_phnum` at 56); the one of type `PT_DYNAMIC` (2)
/// gives the section (`p_offset` at 8, `p_filesz` at 32), entries of 16 bytes: tag, value.
fn patch_dynamic(lib: &Path, tag: usize, value: u64) {
    let mut bytes = fs::read(lib).unwrap();
    assert!(
        bytes.starts_with(b"\x7fELF\x02\x01"),
        "{}: a 64-bit little-endian ELF file expected",
        lib.display()
    );
    let (phoff, phentsize, phnum) = (le(&bytes, 32, 8), le(&bytes, 54, 2), le(&bytes, 56, 2));
    let dynamic = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&header| le(&bytes, header, 4) == 2)
        .expect("a PT_DYNAMIC program header");
    let (start, len) = (le(&bytes, dynamic + 8, 8), le(&bytes, dynamic + 32, 8));
    let entry = (start..start + len)
        .step_by(16)
        .find(|&entry| le(&bytes, entry, 8) == tag)
        .unwrap_or_else(|| panic!("no dynamic entry {tag}"));
    bytes[entry + 8..entry + 16].copy_from_slice(&value.to_le_bytes());
    fs::write(lib, bytes).unwrap();
}

/// The dynamic section is inside the file, but a table it points to is not: the dynamic
/// loader would read there as it loads the library (before this check, the host died of a
/// SIGSEGV inside `dlopen`).
#[test]
fn a_plugin_whose_dynamic_section_points_outside_it_is_refused_not_a_crash() {
    let dir = private_dir();
    for (tag, name) in [(5, "DT_STRTAB"), (6, "DT_SYMTAB")] {
        let lib = copy(&jsonl_lib(), dir.path(), &format!("libplugin_{tag}.so"));
        patch_dynamic(&lib, tag, 0x7fff_0000_0000);

        let out = plugins(&[&lib]);
        assert_refused(
            &out,
            &lib,
            &format!(
                "not a library this host can load: corrupt: {name} (addresses 0x7fff00000000.."
            ),
        );
        assert!(
            refused(&out)[0].ends_with(") is not in the bytes the file loads"),
            "{out:#?}"
        );
        assert_eq!(library_of(&out, "jsonl"), None, "{out:#?}");

        let file = pipeline(dir.path(), &format!("[\"{}\"]", lib.display()), false);
        assert_pipeline_refuses(&file, &lib, &format!("corrupt: {name} (addresses "));
    }
}

#[test]
fn a_plugin_in_a_directory_others_can_write_is_refused_unless_allowed() {
    let root = private_dir();
    let shared = root.path().join("shared");
    fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let lib = copy(&jsonl_lib(), &shared, "libplugin_x.so");
    let reason = format!(
        "writable by others than its owner ({} has mode 0777",
        shared.display()
    );

    // Named directly, and the directory scanned: one line each.
    let out = plugins(&[&lib]);
    assert_refused(&out, &lib, &reason);
    assert_eq!(library_of(&out, "jsonl"), None, "{out:#?}");
    let out = plugins(&[&shared]);
    assert_refused(&out, &shared, &reason);
    assert_eq!(library_of(&out, "jsonl"), None, "{out:#?}");

    let strict = pipeline(root.path(), &format!("[\"{}\"]", lib.display()), false);
    assert_pipeline_refuses(&strict, &lib, &reason);

    // Allowed: it loads, with a warning that names it.
    let allowed = pipeline(root.path(), &format!("[\"{}\"]", lib.display()), true);
    let out = validate(&allowed, None);
    assert_eq!(out.code(), 0, "{out:#?}");
    let warnings: Vec<&str> = naming(&out.stderr, &lib);
    assert_eq!(warnings.len(), 1, "{out:#?}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("writable by others than its owner"),
        "{}",
        warnings[0]
    );
    let mut cmd = host_command();
    cmd.args(["plugins", "--allow-insecure-paths", "--path"])
        .arg(&lib);
    let out = plugins_with(cmd);
    assert!(refused(&out).is_empty(), "{out:#?}");
    assert_eq!(library_of(&out, "jsonl"), Some(&*lib.display().to_string()));
    assert_eq!(naming(&out.stderr, &lib).len(), 1, "{out:#?}");

    // The sticky bit (as on /tmp): only an entry's owner can replace it, so it loads quietly.
    chmod(&shared, 0o1777);
    let out = plugins(&[&lib]);
    assert!(refused(&out).is_empty(), "{out:#?}");
    assert_eq!(library_of(&out, "jsonl"), Some(&*lib.display().to_string()));
    assert!(!out.stderr.contains("WARN"), "{out:#?}");
}

#[test]
fn a_plugin_file_others_can_write_is_refused() {
    let dir = private_dir();
    let lib = copy(&jsonl_lib(), dir.path(), "libplugin_x.so");
    for mode in [0o666, 0o664, 0o646] {
        chmod(&lib, mode);
        let out = plugins(&[&lib]);
        let reason = format!(
            "writable by others than its owner ({} has mode {mode:04o}",
            lib.display()
        );
        assert_refused(&out, &lib, &reason);
        assert_eq!(library_of(&out, "jsonl"), None, "{out:#?}");
    }
    chmod(&lib, 0o644);
    let out = plugins(&[&lib]);
    assert!(refused(&out).is_empty(), "{out:#?}");
    assert_eq!(library_of(&out, "jsonl"), Some(&*lib.display().to_string()));
}

#[test]
fn a_directory_scan_runs_no_foreign_initialiser() {
    let dir = private_dir();
    let marker_lib = copy(&fixture_lib("init-marker"), dir.path(), "libinit_marker.so");
    copy(
        &fixture_lib("not-a-plugin"),
        dir.path(),
        "libnot_a_plugin.so",
    );
    let plugin = copy(&jsonl_lib(), dir.path(), "libplugin_jsonl.so");
    let marker = dir.path().join("initialised");

    // The fixture does what it says: whoever loads it creates the marker.
    let mut preload = Command::new("/bin/true");
    preload
        .env("LD_PRELOAD", &marker_lib)
        .env("INIT_MARKER_FILE", &marker);
    assert!(run_with_timeout(preload).status.success());
    assert!(marker.exists(), "the init-marker fixture wrote no marker");
    fs::remove_file(&marker).unwrap();

    let mut cmd = host_command();
    cmd.env("INIT_MARKER_FILE", &marker)
        .env("RUST_LOG", "info,host::plugins::loader=debug")
        .args(["plugins", "--path"])
        .arg(dir.path());
    let out = plugins_with(cmd);
    assert!(refused(&out).is_empty(), "{out:#?}");
    assert_eq!(
        library_of(&out, "jsonl"),
        Some(&*plugin.display().to_string())
    );
    let skipped: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("skipped: not a plugin"))
        .collect();
    assert_eq!(skipped.len(), 2, "{out:#?}");
    assert!(
        !marker.exists(),
        "scanning the directory ran the library's initialiser"
    );

    // Named directly, it is refused, and still not loaded.
    let mut cmd = host_command();
    cmd.env("INIT_MARKER_FILE", &marker)
        .args(["plugins", "--path"])
        .arg(&marker_lib);
    let out = plugins_with(cmd);
    assert_refused(&out, &marker_lib, "not a plugin");
    assert!(!marker.exists(), "refusing the library ran its initialiser");
}

#[test]
fn a_bare_file_name_is_a_file_in_the_working_directory() {
    let dir = private_dir();
    copy(&jsonl_lib(), dir.path(), "libplugin_x.so");

    let mut cmd = host_command();
    cmd.current_dir(dir.path())
        .args(["plugins", "--path", "libplugin_x.so"]);
    let out = plugins_with(cmd);
    assert!(refused(&out).is_empty(), "{out:#?}");
    assert_eq!(library_of(&out, "jsonl"), Some("libplugin_x.so"));

    let file = pipeline(dir.path(), "[\"libplugin_x.so\"]", false);
    let out = validate(&file, Some(dir.path()));
    assert_eq!(out.code(), 0, "{out:#?}");

    // On the system's library path, but not here: not found, and not loaded from there.
    let mut cmd = host_command();
    cmd.current_dir(dir.path())
        .args(["plugins", "--path", "libc.so.6"]);
    let out = plugins_with(cmd);
    assert_refused(&out, Path::new("libc.so.6"), "not found");
    let file = pipeline(dir.path(), "[\"libc.so.6\"]", false);
    let out = validate(&file, Some(dir.path()));
    assert_eq!(out.code(), 2, "{out:#?}");
    let lines = naming(&out.stderr, Path::new("libc.so.6"));
    assert_eq!(lines.len(), 1, "{out:#?}");
    assert!(lines[0].contains("libc.so.6: not found"), "{}", lines[0]);
}

#[test]
fn the_same_plugin_named_twice_loads_and_runs() {
    let lib = jsonl_lib();
    let out = plugins(&[&lib, &lib, &plugin_dir()]);
    assert!(refused(&out).is_empty(), "{out:#?}");
    assert_eq!(library_of(&out, "jsonl"), Some(&*lib.display().to_string()));

    let mut host = Host::start(
        r#"
plugins:
  paths: ["{{plugins}}/libplugin_jsonl.so", "{{plugins}}/libplugin_jsonl.so", "{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "{{endpoint}}" }
stages:
  out: { plugin: jsonl, inputs: [in], config: { path: "{{dir}}/out.jsonl" } }
"#,
    );
    let sent = vec![json!({ "n": 0 }), json!({ "n": 1 })];
    send_json(&host.endpoint, &sent);
    let out = host.path("out.jsonl");
    wait_for_lines(&out, sent.len());
    host.stop();
    assert_eq!(read_json_lines(&out), sent);
}
