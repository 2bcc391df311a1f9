//! A real `redis-server`, started by a test on a port of its own and killed when the guard
//! is dropped, and a client that reads the event streams the host writes.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use redis::{streams::StreamRangeReply, Value as RedisValue};
use serde_json::Value;

use crate::{free_port, wait_until};

/// How long a redis-server may take to accept connections.
pub const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The stream prefix the host writes to unless `stream_prefix` says otherwise.
pub const DEFAULT_STREAM_PREFIX: &str = "plugin_host:events";

/// `redis-server`: `/usr/bin/redis-server` (Debian's `redis-server` package, which `.ci/run`
/// installs), or the first one on `PATH`. Panics with what to install if there is none.
pub fn redis_server_bin() -> PathBuf {
    let fixed = Path::new("/usr/bin/redis-server");
    if fixed.exists() {
        return fixed.to_path_buf();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "redis-server is missing: install the Debian package `redis-server` \
                 (`apt-get install redis-server`, as .ci/run does)"
            )
        })
}

/// A running `redis-server` without persistence, in a temporary directory of its own.
/// Dropping it kills the server.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port (retrying on another port if that one was taken in
    /// the meantime) and waits until it answers.
    pub fn start() -> RedisServer {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start_on(free_port()) {
                Ok(server) => return server,
                Err(log) => last = log,
            }
        }
        panic!("redis-server did not start in 3 attempts; its log:\n{last}");
    }

    /// Starts a server on `port` and waits until it answers; panics with its log if it
    /// cannot.
    pub fn start_on(port: u16) -> RedisServer {
        Self::try_start_on(port)
            .unwrap_or_else(|log| panic!("redis-server did not start on port {port}:\n{log}"))
    }

    fn try_start_on(port: u16) -> Result<RedisServer, String> {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let log = dir.path().join("redis.log");
        let child = Command::new(redis_server_bin())
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--logfile", &log.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        let mut server = RedisServer { child, port, dir };
        let mut exited = false;
        let up = wait_until(REDIS_START_TIMEOUT, || {
            exited = !server.is_running();
            exited || server.try_connect().is_ok()
        });
        if up && !exited {
            return Ok(server);
        }
        let log = server.log();
        Err(if exited {
            format!("redis-server exited; its log:\n{log}")
        } else {
            format!("redis-server did not answer within {REDIS_START_TIMEOUT:?}; its log:\n{log}")
        })
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        redis_url(self.port)
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("cannot wait for redis-server")
            .is_none()
    }

    fn try_connect(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.set_write_timeout(Some(Duration::from_secs(10)))?;
        redis::cmd("PING").query::<String>(&mut conn)?;
        Ok(conn)
    }

    /// A new connection to the server.
    pub fn connect(&self) -> redis::Connection {
        self.try_connect()
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `redis://127.0.0.1:PORT`.
pub fn redis_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// The stream the host writes events of `event_type` to, under the default prefix.
pub fn stream_key(event_type: &str) -> String {
    format!("{DEFAULT_STREAM_PREFIX}:{event_type}")
}

/// One stream entry, its fields as strings.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub id: String,
    pub fields: BTreeMap<String, String>,
}

impl StreamEntry {
    /// Field `name`; panics (showing the entry) if it is missing.
    pub fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .unwrap_or_else(|| panic!("stream entry has no `{name}` field: {self:?}"))
    }

    /// The `payload` field, parsed as JSON.
    pub fn payload(&self) -> Value {
        let text = self.field("payload");
        serde_json::from_str(text).unwrap_or_else(|e| panic!("payload is not JSON ({e}): {self:?}"))
    }
}

/// Every entry of stream `key`, oldest first (`XRANGE key - +`); none if it does not exist.
pub fn read_stream(conn: &mut redis::Connection, key: &str) -> Vec<StreamEntry> {
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap_or_else(|e| panic!("XRANGE {key} failed: {e}"));
    reply
        .ids
        .into_iter()
        .map(|entry| StreamEntry {
            fields: entry
                .map
                .iter()
                .map(|(k, v)| {
                    let text: String = redis::from_redis_value(v).unwrap_or_else(|e| {
                        panic!("{key} {}: field {k} is not a string ({e}): {v:?}", entry.id)
                    });
                    (k.clone(), text)
                })
                .collect(),
            id: entry.id,
        })
        .collect()
}

/// Every key in the server's current database (`KEYS *`), sorted.
pub fn redis_keys(conn: &mut redis::Connection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(conn)
        .unwrap_or_else(|e| panic!("KEYS * failed: {e}"));
    keys.sort();
    keys
}

/// A field of `INFO section` as text (e.g. `total_connections_received` in `stats`).
pub fn redis_info_field(conn: &mut redis::Connection, section: &str, field: &str) -> String {
    let info: RedisValue = redis::cmd("INFO")
        .arg(section)
        .query(conn)
        .unwrap_or_else(|e| panic!("INFO {section} failed: {e}"));
    let text: String = redis::from_redis_value(&info)
        .unwrap_or_else(|e| panic!("INFO {section} is not text ({e}): {info:?}"));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("INFO {section} has no {field}:\n{text}"))
}
