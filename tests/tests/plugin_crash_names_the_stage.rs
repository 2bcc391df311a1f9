//! A plugin that aborts, segfaults or calls `exit` takes the host down with it: a library
//! runs inside the host's process, and nothing in-process can catch that. What the host does
//! is leave one line on stderr naming the stage and the library that was in a call.

use std::time::Duration;

use tests::{fixture_lib, send_json, wait_until, Host};

fn crash_with(how: &str) -> (Option<i32>, Option<i32>, String) {
    let lib = fixture_lib("panicky-plugin");
    let pipeline = format!(
        r#"
plugins:
  paths: ["{}"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  boom: {{ plugin: crash, inputs: [in], config: {{ how: {how} }} }}
  out: {{ plugin: "null", inputs: [boom] }}
"#,
        lib.display()
    );
    let mut host = Host::start(&pipeline);
    send_json(&host.endpoint, &[tests::json!({ "crash": true })]);
    let ended = wait_until(Duration::from_secs(20), || !host.is_running());
    assert!(ended, "the host survived a {how}?\n{}", host.log());
    let status = host.exit_status().expect("the host exited");
    use std::os::unix::process::ExitStatusExt;
    (status.code(), status.signal(), host.log())
}

fn assert_names_the_stage(log: &str, what: &str) {
    let lib = fixture_lib("panicky-plugin");
    let line = log
        .lines()
        .find(|l| l.starts_with("host: ") && l.contains(what))
        .unwrap_or_else(|| panic!("no `host: {what}` line:\n{log}"));
    assert!(
        line.contains("stage `boom`") && line.contains(&lib.display().to_string()),
        "the line does not name the stage and its library: {line}"
    );
}

#[test]
fn an_abort_in_a_stage_is_reported_with_the_stage_and_library() {
    let (code, signal, log) = crash_with("abort");
    assert_eq!((code, signal), (None, Some(libc::SIGABRT)), "{log}");
    assert_names_the_stage(&log, "SIGABRT");
}

#[test]
fn a_segfault_in_a_stage_is_reported_with_the_stage_and_library() {
    let (code, signal, log) = crash_with("segfault");
    assert_eq!((code, signal), (None, Some(libc::SIGSEGV)), "{log}");
    assert_names_the_stage(&log, "SIGSEGV");
}

#[test]
fn exit_called_in_a_stage_is_reported_with_the_stage_and_library() {
    let (code, signal, log) = crash_with("exit");
    assert_eq!((code, signal), (Some(3), None), "{log}");
    assert_names_the_stage(&log, "exit() called");
}
