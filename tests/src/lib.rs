//! The harness of the integration tests: they run the real `host` binary, built by
//! `cargo build --workspace --release`, against real ZeroMQ sockets, files and libraries.
//!
//! The principal type in this crate is [`Host`], a running `host --pipeline` in a fresh
//! temporary directory: it writes the pipeline file, waits until the pipeline has started, and
//! [`Host::stop`] sends SIGTERM and returns the summary the host wrote as it exited. Around it:
//! where the binary and the libraries are ([`host_bin`], [`plugin_dir`], [`fixtures_dir`]),
//! a ZeroMQ sender for arbitrary payloads ([`send`]), short-lived host commands with a time
//! limit ([`run_host`]), and the checks every pipeline summary must pass
//! ([`assert_reconciled`]).
//!
//! For the monitoring layer: the admin API over real HTTP ([`Host::admin_address`],
//! [`Host::get`], [`http_get`]), the Prometheus text it serves, parsed ([`Metrics`]) and checked
//! by the real `promtool` ([`promtool_check_metrics`]), and a real `redis-server` with a client
//! for the event streams ([`RedisServer`], [`read_stream`]). For the `otlp` exporter: a real
//! OTLP receiver, gRPC or HTTP, decoding with the official protobuf types ([`OtlpReceiver`]).
//!
//! Every wait has a time limit, so a hang fails the test instead of eating CI time.

mod http;
mod otlp_receiver;
mod prometheus;
mod redis_server;

pub use http::{http_get, HttpResponse, HTTP_TIMEOUT};
pub use otlp_receiver::{
    any_to_json, attributes_json, histogram_points, is_gauge, number_points, sum_shape, Answer,
    OtlpProtocol, OtlpReceiver, Received, Seen, ServerTls, TestCerts, PARTIAL_MESSAGE,
    RECEIVER_TIMEOUT,
};
pub use prometheus::{promtool_bin, promtool_check_metrics, Metrics, Sample};
/// The official OTLP protobuf types the receiver decodes into, for tests that read what
/// arrived beyond what [`Received`] sums up (a request's resource, a number point's value).
pub mod otlp {
    pub use opentelemetry_proto::tonic::{
        collector::{
            metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
        },
        common::v1::{any_value, AnyValue, KeyValue},
        metrics::v1::{
            metric, number_data_point, AggregationTemporality, HistogramDataPoint, Metric,
            NumberDataPoint,
        },
        trace::v1::{status, Span},
    };
}

pub use redis_server::{
    read_stream, redis_info_field, redis_keys, redis_server_bin, redis_url, stream_key,
    RedisServer, StreamEntry, DEFAULT_STREAM_PREFIX, REDIS_START_TIMEOUT,
};

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, OnceLock},
    thread,
    time::{Duration, Instant},
};

pub use serde_json::{json, Value};

/// How long a host may take to start its pipeline.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a host may take to drain and exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a short command (`validate`, `plugins`, a sender) may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long messages may take to travel through a pipeline into its output files.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Appended to pipelines without a `monitoring:` section: the admin API (on by default, on
/// a fixed port) listens on a port the system picks.
pub const ADMIN_ON_ANY_PORT: &str = "\nmonitoring:\n  admin:\n    listen: \"127.0.0.1:0\"\n";

/// The main workspace (this crate's parent folder).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

fn built(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --release` first",
        path.display()
    );
    path
}

/// `target/release/host`.
pub fn host_bin() -> PathBuf {
    built(workspace_dir().join("target/release/host"))
}

/// `target/release`, where the shipped stage libraries (`libplugin_*.so`) are built.
pub fn plugin_dir() -> PathBuf {
    let dir = built(workspace_dir().join("target/release"));
    built(dir.join(format!("libplugin_jsonl{}", std::env::consts::DLL_SUFFIX)));
    dir
}

/// The fixture libraries' folder, `target/fixtures/release`. The fixtures are a workspace of
/// their own, built against `plugin-api` alone like any third-party plugin; they are built
/// once per test process.
pub fn fixtures_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let workspace = workspace_dir();
            let target = workspace.join("target/fixtures");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let output = Command::new(cargo)
                .args(["build", "--release", "--locked", "--manifest-path"])
                .arg(workspace.join("tests/fixtures/Cargo.toml"))
                .arg("--target-dir")
                .arg(&target)
                .current_dir(&workspace)
                .output()
                .expect("cannot run cargo to build the fixture libraries");
            assert!(
                output.status.success(),
                "building the fixture libraries failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            target.join("release")
        })
        .clone()
}

/// A fixture built on its own (`cargo build -p NAME`), for the `compat-*` fixtures: each is
/// built against another shape of plugin-api (a cargo feature), and building them together
/// would unify those features into all of them. Built once per test process.
pub fn isolated_fixture_lib(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let workspace = workspace_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                name,
                "--manifest-path",
            ])
            .arg(workspace.join("tests/fixtures/Cargo.toml"))
            .arg("--target-dir")
            .arg(workspace.join("target/fixtures"))
            .current_dir(&workspace)
            .output()
            .expect("cannot run cargo to build a fixture library");
        assert!(
            output.status.success(),
            "building fixture {name} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        built.push(name.to_owned());
    }
    drop(built);
    fixture_lib(name)
}

/// The fixture library of package `name` (e.g. `panicky-plugin`), as a file path.
pub fn fixture_lib(name: &str) -> PathBuf {
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let path = fixtures_dir().join(file);
    assert!(path.exists(), "fixture library {} missing", path.display());
    path
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0")
        .port()
}

/// A `tcp://127.0.0.1:PORT` endpoint on a free port.
pub fn free_endpoint() -> String {
    format!("tcp://127.0.0.1:{}", free_port())
}

/// The host as a command, with plain (colourless) logs at info level whatever the caller's
/// environment says.
pub fn host_command() -> Command {
    let mut cmd = Command::new(host_bin());
    cmd.env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The exit code (panics if a signal ended the process).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("ended by a signal: {self:?}"))
    }
}

/// Runs `cmd` to its end, killing it (and failing) after [`COMMAND_TIMEOUT`].
pub fn run_with_timeout(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    wait_with_timeout(child, &format!("{cmd:?}"))
}

/// Waits for `child` (`what` it runs) to end, with what it printed on its piped streams
/// (none when not piped), killing it (and failing) after [`COMMAND_TIMEOUT`].
pub fn wait_with_timeout(child: Child, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(output) => {
            let output = output.expect("cannot wait for the command");
            Output {
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => {
            // Not `signal`: the process may have ended (and been reaped) just now.
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            panic!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
    }
}

/// Runs `host ARGS...` to its end (see [`run_with_timeout`]).
pub fn run_host<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = host_command();
    cmd.args(args);
    run_with_timeout(cmd)
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child of this process
    // that has not been reaped yet, so the id cannot have been reused.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Polls `condition` every 20 ms until it holds; false if `timeout` passed first.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit, for at most `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().expect("cannot wait for the host");
        status.is_some()
    });
    status
}

/// The lines of a text file (none if it does not exist yet). Only complete lines count.
pub fn read_lines(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete.lines().map(str::to_owned).collect()
}

/// The lines of a JSON-lines file, each parsed (panics on a line that is not valid JSON).
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    read_lines(path)
        .iter()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{} line {}: not valid JSON ({e}): {line:?}",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// Waits until `path` holds at least `n` complete lines; panics after [`DELIVERY_TIMEOUT`].
pub fn wait_for_lines(path: &Path, n: usize) {
    let mut have = 0;
    let arrived = wait_until(DELIVERY_TIMEOUT, || {
        have = read_lines(path).len();
        have >= n
    });
    assert!(
        arrived,
        "{} holds {have} lines after {DELIVERY_TIMEOUT:?}, expected {n}",
        path.display()
    );
}

/// Checks the invariants every final summary must satisfy: nothing is still in flight, and
/// every received message ended exactly once (`received = completed + filtered + failed`),
/// with `failed` split by type.
pub fn assert_reconciled(summary: &Value) {
    let p = &summary["pipeline"];
    let n = |key: &str| {
        p[key]
            .as_u64()
            .unwrap_or_else(|| panic!("summary has no pipeline.{key}: {summary:#}"))
    };
    assert_eq!(n("in_flight"), 0, "messages still in flight: {summary:#}");
    assert_eq!(
        n("received"),
        n("completed") + n("filtered") + n("failed"),
        "received != completed + filtered + failed: {summary:#}"
    );
    let by_type: u64 = p["failed_by_type"]
        .as_object()
        .unwrap_or_else(|| panic!("summary has no pipeline.failed_by_type: {summary:#}"))
        .values()
        .map(|v| v.as_u64().expect("counts are integers"))
        .sum();
    assert_eq!(
        by_type,
        n("failed"),
        "failed_by_type does not add up to failed: {summary:#}"
    );
}

/// The pipeline's `(received, completed, filtered, failed)`.
pub fn totals(summary: &Value) -> (u64, u64, u64, u64) {
    let p = &summary["pipeline"];
    let n = |key: &str| p[key].as_u64().unwrap_or_default();
    (n("received"), n("completed"), n("filtered"), n("failed"))
}

/// The summary's statistics of stage `name`.
pub fn stage<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["stages"]
        .as_array()
        .and_then(|stages| stages.iter().find(|s| s["stage"] == name))
        .unwrap_or_else(|| panic!("no stage `{name}` in the summary: {summary:#}"))
}

/// A `host --pipeline` process, running in a temporary directory of its own. Dropping it
/// kills the process if it still runs.
pub struct Host {
    child: Child,
    dir: tempfile::TempDir,
    /// The endpoint the pipeline's `{{endpoint}}` stands for.
    pub endpoint: String,
    /// The endpoint the pipeline's `{{endpoint2}}` stands for.
    pub endpoint2: String,
    log: PathBuf,
    summary: PathBuf,
}

impl Host {
    /// Writes `pipeline` to `pipeline.yaml` in a fresh temporary directory, starts the host on
    /// it, and waits until it logs "pipeline started".
    ///
    /// In `pipeline`, `{{dir}}` stands for that directory (write outputs there),
    /// `{{endpoint}}` for a free `tcp://127.0.0.1:PORT`, `{{endpoint2}}` for another one,
    /// `{{plugins}}` for [`plugin_dir`] and `{{fixtures}}` for [`fixtures_dir`] (built on
    /// first use). A pipeline without a `monitoring:` section gets one whose admin API
    /// listens on a port of the system's choosing ([`ADMIN_ON_ANY_PORT`]), so that hosts can
    /// run side by side. A start that fails because another process took the port in the
    /// meantime is retried on new ports.
    pub fn start(pipeline: &str) -> Host {
        Self::start_with(pipeline, |_| {})
    }

    /// [`Host::start`], with `configure` applied to the host's command before each attempt
    /// to spawn it: for what the pipeline file cannot say, such as the process's resource
    /// limits (`CommandExt::pre_exec`) or its environment.
    pub fn start_with(pipeline: &str, mut configure: impl FnMut(&mut Command)) -> Host {
        const ATTEMPTS: usize = 3;
        let mut last_log = String::new();
        for _ in 0..ATTEMPTS {
            match Self::try_start(pipeline, &mut configure) {
                Ok(host) => return host,
                Err(log)
                    if log.contains("cannot bind") || log.contains("Address already in use") =>
                {
                    last_log = log
                }
                Err(log) => panic!("the host did not start its pipeline:\n{log}"),
            }
        }
        panic!("the host could not bind a free port in {ATTEMPTS} attempts:\n{last_log}");
    }

    fn try_start(pipeline: &str, configure: &mut dyn FnMut(&mut Command)) -> Result<Host, String> {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let endpoint = free_endpoint();
        let endpoint2 = loop {
            let other = free_endpoint();
            if other != endpoint {
                break other;
            }
        };
        let mut text = pipeline
            .replace("{{dir}}", &dir.path().display().to_string())
            .replace("{{endpoint}}", &endpoint)
            .replace("{{endpoint2}}", &endpoint2)
            .replace("{{plugins}}", &plugin_dir().display().to_string());
        if text.contains("{{fixtures}}") {
            text = text.replace("{{fixtures}}", &fixtures_dir().display().to_string());
        }
        if !text.lines().any(|l| l.starts_with("monitoring:")) {
            // The admin API listens on a fixed port by default; tests run side by side.
            text.push_str(ADMIN_ON_ANY_PORT);
        }
        let file = dir.path().join("pipeline.yaml");
        fs::write(&file, text).expect("cannot write the pipeline file");
        let log = dir.path().join("host.log");
        let summary = dir.path().join("summary.json");
        let stderr = fs::File::create(&log).expect("cannot create the host's log file");
        let mut command = host_command();
        configure(&mut command);
        let child = command
            .arg("--pipeline")
            .arg(&file)
            .arg("--summary")
            .arg(&summary)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("cannot start the host");
        let mut host = Host {
            child,
            dir,
            endpoint,
            endpoint2,
            log,
            summary,
        };
        let mut exited = None;
        let started = wait_until(START_TIMEOUT, || {
            exited = host.child.try_wait().expect("cannot wait for the host");
            // Read the log after checking the process, so a start just before the exit is seen.
            host.log().contains("pipeline started") || exited.is_some()
        });
        if host.log().contains("pipeline started") {
            return Ok(host);
        }
        let why = match exited {
            Some(status) => format!("the host exited ({status}) before starting"),
            None if !started => format!("no \"pipeline started\" after {START_TIMEOUT:?}"),
            None => "the host did not start".to_owned(),
        };
        Err(format!("{why}; its log:\n{}", host.log()))
    }

    /// The temporary directory the host runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside [`Host::dir`].
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the host wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let found = wait_until(timeout, || self.log().contains(needle));
        assert!(
            found,
            "no {needle:?} in the host's log after {timeout:?}:\n{}",
            self.log()
        );
    }

    /// Where the admin API listens (`127.0.0.1:PORT`), from the host's
    /// "admin API listening" log line (text or JSON); panics if the host has not logged one.
    pub fn admin_address(&self) -> String {
        let log = self.log();
        log.lines()
            .filter(|l| l.contains("admin API listening"))
            .find_map(|l| match serde_json::from_str::<Value>(l) {
                Ok(v) => v["fields"]["address"].as_str().map(str::to_owned),
                Err(_) => l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .map(str::to_owned),
            })
            .map(|a| a.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("the host logged no admin API address:\n{log}"))
    }

    /// `GET path` from the admin API, over real HTTP.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(&self.admin_address(), path)
    }

    /// `GET path` from the admin API, which must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let response = self.get(path);
        assert_eq!(response.status, 200, "GET {path}: {response:#?}");
        response.json()
    }

    /// `/metrics`, which must answer 200, parsed.
    pub fn metrics(&self) -> Metrics {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "GET /metrics: {response:#?}");
        Metrics::parse(&response.body)
    }

    /// Polls `GET path` until `condition` holds for the answer (whatever its status), for at
    /// most `timeout`; returns that answer. Panics with `what`, the last answer and the log
    /// otherwise.
    pub fn wait_for_answer(
        &self,
        path: &str,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut(&HttpResponse) -> bool,
    ) -> HttpResponse {
        let address = self.admin_address();
        let mut last = None;
        let held = wait_until(timeout, || {
            let response = http_get(&address, path);
            let ok = condition(&response);
            last = Some(response);
            ok
        });
        let last = last.expect("polled at least once");
        assert!(
            held,
            "{what}: not within {timeout:?} (GET {path}); the last answer: {last:#?}\nthe host's log:\n{}",
            self.log()
        );
        last
    }

    /// Waits until `/api/metrics` says the pipeline received `n` messages and has none in
    /// flight; returns that answer.
    pub fn wait_settled(&self, n: u64) -> Value {
        let what = format!("{n} messages received and settled");
        self.wait_for_answer("/api/metrics", DELIVERY_TIMEOUT, &what, |r| {
            let p = &r.json()["pipeline"];
            r.status == 200 && p["received"] == n && p["in_flight"] == 0
        })
        .json()
    }

    /// Sends signal `sig` to the host.
    pub fn signal(&self, sig: libc::c_int) {
        signal(self.pid(), sig);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("cannot wait for the host")
            .is_none()
    }

    /// How the process ended, once it has (`None` while it runs).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("cannot wait for the host")
    }

    /// Sends SIGTERM, waits for the host to drain and exit, checks that it exited with 0,
    /// and returns the summary it wrote. The directory stays until the `Host` is dropped, so
    /// the outputs can be read afterwards.
    pub fn stop(&mut self) -> Value {
        self.signal(libc::SIGTERM);
        let Some(status) = wait_exit(&mut self.child, STOP_TIMEOUT) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "the host did not exit within {STOP_TIMEOUT:?} of SIGTERM; its log:\n{}",
                self.log()
            );
        };
        assert_eq!(
            status.code(),
            Some(0),
            "the host exited with {status} after SIGTERM; its log:\n{}",
            self.log()
        );
        let text = fs::read_to_string(&self.summary).unwrap_or_else(|e| {
            panic!(
                "no summary at {} ({e}); the host's log:\n{}",
                self.summary.display(),
                self.log()
            )
        });
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the summary is not JSON ({e}):\n{text}"))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Connects a ZeroMQ PUSH socket to `endpoint` and sends each payload as one single-frame
/// message, in order. Payloads may be anything (invalid UTF-8, empty, huge).
pub fn send<P: AsRef<[u8]>>(endpoint: &str, payloads: &[P]) {
    use zeromq::{Socket, SocketSend, ZmqError, ZmqMessage};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime");
    let sending = async {
        let mut socket = zeromq::PushSocket::new();
        socket
            .connect(endpoint)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {endpoint}: {e}"));
        for payload in payloads {
            let mut message = ZmqMessage::from(payload.as_ref().to_vec());
            // A PUSH socket hands a message back while it has no peer yet.
            loop {
                match socket.send(message).await {
                    Ok(()) => break,
                    Err(ZmqError::ReturnToSender { message: m, .. }) => {
                        message = m;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => panic!("sending to {endpoint} failed: {e}"),
                }
            }
        }
        // The socket writes from background tasks: give them time to hand everything to
        // the kernel before the socket (and the runtime) go away.
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(socket);
    };
    // The timer must be made inside the runtime.
    let sent = runtime.block_on(async { tokio::time::timeout(COMMAND_TIMEOUT, sending).await });
    assert!(
        sent.is_ok(),
        "sending {} messages to {endpoint} took longer than {COMMAND_TIMEOUT:?}",
        payloads.len()
    );
}

/// Sends each value as one JSON message (see [`send`]).
pub fn send_json(endpoint: &str, messages: &[Value]) {
    let payloads: Vec<String> = messages.iter().map(Value::to_string).collect();
    send(endpoint, &payloads);
}

/// A background process that is killed when this guard is dropped, so that a failing test
/// leaves nothing running.
pub struct Background {
    child: Child,
}

impl Background {
    /// Starts `cmd` with its output thrown away.
    pub fn spawn(mut cmd: Command) -> Background {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Background { child }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("cannot wait for a background process")
            .is_none()
    }

    /// Waits for the process to exit on its own, for at most [`COMMAND_TIMEOUT`].
    pub fn wait(mut self) -> ExitStatus {
        wait_exit(&mut self.child, COMMAND_TIMEOUT).unwrap_or_else(|| {
            panic!("a background process did not finish within {COMMAND_TIMEOUT:?}")
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `s` looks like a version: `MAJOR.MINOR.PATCH`, optionally with a suffix.
pub fn is_version(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// The system Python, which has pyzmq (`python3-zmq`); a pyenv one may not.
pub const PYTHON: &str = "/usr/bin/python3";

/// Sends `count` JSON messages `{"i": N, "from": "pyzmq"}` from a libzmq PUSH socket (pyzmq)
/// to `endpoint`, and waits until libzmq has handed all of them over.
pub fn pyzmq_push(endpoint: &str, count: usize) {
    const SENDER: &str = r#"
import json, sys, zmq
endpoint, count = sys.argv[1], int(sys.argv[2])
ctx = zmq.Context()
push = ctx.socket(zmq.PUSH)
push.setsockopt(zmq.LINGER, 20000)  # close() waits until everything is sent
push.connect(endpoint)
for i in range(count):
    push.send_string(json.dumps({"i": i, "from": "pyzmq"}))
push.close()
ctx.term()
"#;
    let mut python = Command::new(PYTHON);
    python
        .arg("-c")
        .arg(SENDER)
        .arg(endpoint)
        .arg(count.to_string());
    let out = run_with_timeout(python);
    assert!(
        out.status.success(),
        "the pyzmq sender failed: {}",
        out.stderr
    );
}

/// A field of `/proc/PID/status` in kB or as a plain count (`VmRSS`, `VmHWM`, `Threads`).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Raw ZMTP 3 bytes, for peers that misbehave on purpose.
pub mod zmtp {
    /// A ZMTP 3.0 greeting with the NULL mechanism.
    pub fn greeting() -> Vec<u8> {
        let mut g = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
        g.extend_from_slice(b"NULL");
        g.resize(64, 0);
        g
    }

    /// A frame header for a body of `len` bytes (`more`: another frame follows).
    pub fn header(len: u64, more: bool, command: bool) -> Vec<u8> {
        let flags = u8::from(more) | if command { 0x04 } else { 0 };
        if len > 255 {
            let mut h = vec![flags | 0x02];
            h.extend_from_slice(&len.to_be_bytes());
            h
        } else {
            vec![flags, len as u8]
        }
    }

    /// A whole frame.
    pub fn frame(body: &[u8], more: bool) -> Vec<u8> {
        let mut f = header(body.len() as u64, more, false);
        f.extend_from_slice(body);
        f
    }

    /// READY announcing `socket_type`.
    pub fn ready(socket_type: &str) -> Vec<u8> {
        let mut body = vec![5];
        body.extend_from_slice(b"READY");
        body.push(11);
        body.extend_from_slice(b"Socket-Type");
        body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
        body.extend_from_slice(socket_type.as_bytes());
        let mut f = header(body.len() as u64, false, true);
        f.extend_from_slice(&body);
        f
    }

    /// Greeting then READY as a PUSH socket: what a good peer sends before its messages.
    pub fn push_handshake() -> Vec<u8> {
        let mut h = greeting();
        h.extend(ready("PUSH"));
        h
    }
}
