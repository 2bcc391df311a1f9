//! Every mistake in a pipeline file is reported as `error: FILE:LINE:COL: message`, with exit
//! status 2, before anything starts: by `host validate`, and by running the pipeline.

use std::path::Path;

use tests::{host_command, run_with_timeout, Output};

/// Status of a pipeline that is invalid.
const INVALID: i32 = 2;

/// A variable no test environment sets.
const UNSET_VAR: &str = "HOST_TEST_UNSET_ENDPOINT_0B7F";

/// Line and column (1-based) of the first occurrence of `needle` in `text`.
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let found = text
        .lines()
        .enumerate()
        .find_map(|(i, line)| line.find(needle).map(|at| (i, line, at)));
    let (i, line, at) = found.unwrap_or_else(|| panic!("{needle:?} is not in the pipeline"));
    assert_eq!(
        text.matches(needle).count(),
        1,
        "{needle:?} must occur once in the pipeline"
    );
    (i + 1, line[..at].chars().count() + 1)
}

fn validate(file: &Path) -> Output {
    let mut cmd = host_command();
    cmd.env_remove(UNSET_VAR)
        .arg("validate")
        .arg("--pipeline")
        .arg(file);
    run_with_timeout(cmd)
}

fn run(file: &Path, summary: &Path) -> Output {
    let mut cmd = host_command();
    cmd.env_remove(UNSET_VAR)
        .arg("--pipeline")
        .arg(file)
        .arg("--summary")
        .arg(summary);
    run_with_timeout(cmd)
}

/// Writes `yaml` (with `{{plugins}}` filled in), then checks that both `validate` and a run
/// report exactly one error, at the position of `at` in the file, whose message contains
/// `message`; and that the run started nothing.
fn check(name: &str, yaml: &str, at: &str, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml.replace("{{plugins}}", &tests::plugin_dir().display().to_string());
    let file = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, &yaml).unwrap();
    let (line, column) = position_of(&yaml, at);
    let prefix = format!("error: {}:{line}:{column}: ", file.display());

    let summary = dir.path().join("summary.json");
    for (how, out) in [("validate", validate(&file)), ("run", run(&file, &summary))] {
        assert_eq!(out.code(), INVALID, "{name} ({how}): {out:#?}");
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "{name} ({how}): one error expected: {out:#?}"
        );
        assert!(
            errors[0].starts_with(&prefix) && errors[0].contains(message),
            "{name} ({how}): expected {prefix:?} ... {message:?}, got:\n{}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{name} ({how}): {out:#?}");
        for started in ["source listening", "pipeline started"] {
            assert!(
                !out.stderr.contains(started),
                "{name} ({how}): something started: {out:#?}"
            );
        }
    }
    assert!(!summary.exists(), "{name}: a summary was written");
}

const HEAD: &str = r#"plugins:
  paths: ["{{plugins}}"]
sources:
  in: { type: zmq, socket: pull, bind: "tcp://127.0.0.1:0" }
stages:
"#;

#[test]
fn unknown_keys_are_located() {
    check(
        "unknown_stage_key",
        &format!("{HEAD}  a: {{ plugin: passthrough, inputs: [in], confg: {{}} }}\n"),
        "confg",
        "unknown field `confg`",
    );
    check(
        "unknown_source_key",
        "sources:\n  in:\n    type: zmq\n    socket: pull\n    bind: \"tcp://127.0.0.1:0\"\n    batch_sise: 1\nstages:\n  out: { plugin: null, inputs: [in] }\n",
        "batch_sise",
        "unknown field `batch_sise`",
    );
    check(
        "unknown_top_level_key",
        &format!("{HEAD}  out: {{ plugin: null, inputs: [in] }}\nmonitorin: {{ mode: direct }}\n"),
        "monitorin",
        "unknown field `monitorin`",
    );
}

#[test]
fn source_limits_out_of_range_are_located() {
    check(
        "max_message_bytes_too_large",
        "sources:\n  in:\n    type: zmq\n    socket: pull\n    bind: \"tcp://127.0.0.1:0\"\n    max_message_bytes: 8589934592\nstages:\n  out: { plugin: null, inputs: [in] }\n",
        "max_message_bytes: 8589934592",
        "is above the limit of 1073741824 (1 GiB)",
    );
}

#[test]
fn unknown_stage_type_is_located() {
    check(
        "unknown_plugin",
        &format!("{HEAD}  a:\n    plugin: nosuch\n    inputs: [in]\n"),
        "plugin: nosuch",
        "no stage type named `nosuch`",
    );
}

#[test]
fn missing_input_is_located() {
    check(
        "missing_input",
        &format!(
            "{HEAD}  a: {{ plugin: passthrough, inputs: [in] }}\n  b: {{ plugin: null, inputs: [a, nope] }}\n"
        ),
        "nope",
        "input `nope` is neither a source nor a stage",
    );
}

#[test]
fn cycle_is_located() {
    check(
        "cycle",
        &format!(
            "{HEAD}  a: {{ plugin: passthrough, inputs: [in, c] }}\n  b: {{ plugin: passthrough, inputs: [a] }}\n  c: {{ plugin: passthrough, inputs: [b] }}\n"
        ),
        "inputs: [a]",
        "stages form a cycle: b -> c -> a -> b",
    );
}

#[test]
fn configs_the_plugin_rejects_are_located() {
    check(
        "jsonl_unknown_key",
        &format!(
            "{HEAD}  out:\n    plugin: jsonl\n    inputs: [in]\n    config:\n      path: out.jsonl\n      flush_every: 10\n"
        ),
        "flush_every",
        "stage `out` (jsonl): invalid config at `flush_every`: unknown field `flush_every`",
    );
    // The error names the key it is about, and points at it.
    check(
        "rules_drop_is_a_number",
        &format!(
            "{HEAD}  p:\n    plugin: rules\n    inputs: [in]\n    config: {{ drop: 5 }}\n  out: {{ plugin: null, inputs: [p] }}\n"
        ),
        "drop",
        "stage `p` (rules): invalid config at `drop`: invalid type: integer `5`, expected a sequence",
    );
    check(
        "rules_nested_key",
        &format!(
            "{HEAD}  p:\n    plugin: rules\n    inputs: [in]\n    config:\n      drop:\n        - {{ field: level, equals: debug }}\n        - {{ field: level, equal: info }}\n  out: {{ plugin: null, inputs: [p] }}\n"
        ),
        "equal:",
        "invalid config at `drop[1].equal`: unknown field `equal`",
    );
    check(
        "rules_empty_drop_field",
        &format!(
            "{HEAD}  p:\n    plugin: rules\n    inputs: [in]\n    config:\n      drop:\n        - {{ field: \"\", equals: debug }}\n  out: {{ plugin: null, inputs: [p] }}\n"
        ),
        "field: \"\"",
        "stage `p` (rules): invalid config at `drop[0].field`: `field` must not be empty",
    );
    check(
        "rules_drop_equals_a_list",
        &format!(
            "{HEAD}  p:\n    plugin: rules\n    inputs: [in]\n    config:\n      drop:\n        - {{ field: level, equals: [1, 2] }}\n  out: {{ plugin: null, inputs: [p] }}\n"
        ),
        "equals: [1, 2]",
        "invalid config at `drop[0].equals`: `equals` must be a scalar",
    );
}

#[test]
fn unset_variable_without_default_is_located() {
    check(
        "unset_variable",
        &format!(
            "plugins:\n  paths: [\"{{{{plugins}}}}\"]\nsources:\n  in: {{ type: zmq, socket: pull, bind: \"${{{UNSET_VAR}}}\" }}\nstages:\n  out: {{ plugin: null, inputs: [in] }}\n"
        ),
        "${",
        &format!("environment variable `{UNSET_VAR}` is not set"),
    );
}

#[test]
fn unreadable_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-pipeline.yaml");
    let directory = dir.path().join("a-directory.yaml");
    std::fs::create_dir(&directory).unwrap();
    let summary = dir.path().join("summary.json");
    for file in [&missing, &directory] {
        let expected = format!("error: cannot read pipeline file {}: ", file.display());
        for (how, out) in [("validate", validate(file)), ("run", run(file, &summary))] {
            assert!(
                out.stderr.lines().any(|l| l.starts_with(&expected)),
                "{} ({how}): expected {expected:?}: {out:#?}",
                file.display()
            );
            assert_eq!(out.code(), INVALID, "{} ({how}): {out:#?}", file.display());
        }
    }
    assert!(!summary.exists());
}

#[test]
fn names_outside_the_documented_set_are_located() {
    check(
        "stage_name_with_a_newline",
        &format!("{HEAD}  \"bad\\nname\": {{ plugin: null, inputs: [in] }}\n"),
        "\"bad",
        "stages: \"bad\\nname\" is not a valid name",
    );
    check(
        "empty_source_name",
        "sources:\n  \"\": { type: zmq, socket: pull, bind: \"tcp://127.0.0.1:0\" }\nstages:\n  out: { plugin: null, inputs: [\"\"] }\n",
        "\"\":",
        "sources: \"\" is not a valid name",
    );
}

/// Writes `yaml` (with `{{plugins}}` filled in) and checks that `validate` finds it valid,
/// with `stages` stages. The command's time limit is the only clock: a validation that took
/// time or memory out of proportion to the file would be killed at it, or end by a signal.
/// How long it took is printed (`-- --nocapture`), not asserted.
fn assert_valid(name: &str, yaml: &str, stages: usize) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml.replace("{{plugins}}", &tests::plugin_dir().display().to_string());
    let file = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, &yaml).unwrap();
    let started = std::time::Instant::now();
    let out = validate(&file);
    println!(
        "{name}: {} bytes validated in {:.2} s",
        yaml.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.code(), 0, "{name}: {out:#?}");
    assert_eq!(
        out.stdout.trim_end(),
        format!("{}: ok (1 sources, {stages} stages)", file.display()),
        "{name}"
    );
}

/// A pipeline whose `rules` stage `p` sets the fields written in `set` (indented by 8).
fn with_set(set: &str) -> String {
    format!("{HEAD}  p:\n    plugin: rules\n    inputs: [in]\n    config:\n      set:\n{set}  out: {{ plugin: null, inputs: [p] }}\n")
}

/// Validation takes time in proportion to the file: a `set` of 400,000 keys (about 12 MB)
/// validates well within the command time limit (a check of each key against the keys
/// before it made 80,000 keys take 13 s, and would make these take minutes).
#[test]
fn a_large_config_validates_in_linear_time() {
    let mut set = String::new();
    for i in 0..400_000 {
        set.push_str(&format!("        key{i}: value{i}\n"));
    }
    assert_valid("large", &with_set(&set), 2);
}

/// Keys of 1,000 characters nested 100 deep, above a map of 200,000 keys (3 MB): each key is
/// indexed once, not with the path of keys above it (which cost 100 kB per key here: 54 s
/// and 22 GB).
#[test]
fn long_keys_nested_deep_validate_in_linear_time() {
    let depth = 100;
    let mut set = String::new();
    for level in 0..depth {
        let key = format!("{level:<1000}").replace(' ', "k");
        set.push_str(&format!("{:indent$}{key}:\n", "", indent = 8 + 2 * level));
    }
    let children: Vec<String> = (0..200_000).map(|i| format!("c{i}: {i}")).collect();
    set.truncate(set.len() - 1);
    set.push_str(&format!(" {{ {} }}\n", children.join(", ")));
    assert_valid("deep_long_keys", &with_set(&set), 2);
}

/// One key of 1 MB (written as an explicit `? ` key, which has no length limit) above
/// 100,000 keys: stored once, not once per key below it (100 GB).
#[test]
fn a_long_key_above_many_keys_validates_in_linear_time() {
    let mut set = format!("        ? {}\n        :\n", "k".repeat(1 << 20));
    for i in 0..100_000 {
        set.push_str(&format!("          c{i}: {i}\n"));
    }
    assert_valid("long_key", &with_set(&set), 2);
}

/// Nesting deeper than 128 levels (counted from the top of the file) is refused, at the first
/// level too deep, before anything walks it.
#[test]
fn nesting_past_128_levels_is_located() {
    let mut set = String::new();
    for level in 0..200 {
        set.push_str(&format!(
            "{:indent$}n{level}:\n",
            "",
            indent = 8 + 2 * level
        ));
    }
    set.push_str(&format!("{:indent$}leaf: 1\n", "", indent = 8 + 2 * 200));
    // The top map, `stages`, stage `p`, its `config` and `set` are the first five levels.
    check(
        "too_deep",
        &with_set(&set),
        "n124:",
        "recursion limit exceeded",
    );
}

/// 150,000 stages (7.6 MB), each taking the next one's output: walked for cycles with a stack
/// of the host's own (a call per stage overflowed the host's stack at 100,000). Closed into
/// a ring, the cycle is reported at the stage whose input closes it.
#[test]
fn a_long_chain_of_stages_validates_and_its_cycle_is_located() {
    let n = 150_000;
    let chain = |last_input: &str| {
        let mut yaml = HEAD.to_owned();
        for i in 0..n - 1 {
            yaml.push_str(&format!(
                "  s{i}: {{ plugin: passthrough, inputs: [s{}] }}\n",
                i + 1
            ));
        }
        yaml.push_str(&format!(
            "  s{}: {{ plugin: passthrough, inputs: [{last_input}] }}\n",
            n - 1
        ));
        yaml
    };
    assert_valid("chain", &chain("in"), n);
    check(
        "ring",
        &chain("in, s0"),
        "inputs: [in, s0]",
        &format!(
            "stages form a cycle: s{} -> s{} -> s{} -> ",
            n - 1,
            n - 2,
            n - 3
        ),
    );
}

/// A file past the size limit (16 MiB) is refused before it is parsed; so is one that never
/// ends.
#[test]
fn a_pipeline_file_past_the_limit_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.yaml");
    let mut yaml = String::from("# padding\n");
    while yaml.len() <= 16 << 20 {
        yaml.push_str(&"#".repeat(1023));
        yaml.push('\n');
    }
    std::fs::write(&file, &yaml).unwrap();
    for file in [file.as_path(), Path::new("/dev/zero")] {
        let out = validate(file);
        assert_eq!(out.code(), INVALID, "{out:#?}");
        let expected = format!(
            "error: pipeline file {} is larger than 16777216 bytes",
            file.display()
        );
        assert!(out.stderr.contains(&expected), "{out:#?}");
    }
}
