//! The Redis bus: events delivered to this process's subscribers, as the [`MemoryBus`] does,
//! and written to Redis streams so that other processes can read every instance's events.
//!
//! # Stream schema
//!
//! One stream per event type, shared by every instance: `{prefix}:{type}`, for example
//! `plugin_host:events:performance.operation.complete` (the prefix is `plugin_host:events`
//! unless `monitoring.events.stream_prefix` says otherwise; see [`stream_key`]). Each event is
//! one entry, added with `XADD {key} MAXLEN ~ {maxlen} * ...`; the entry id is assigned by
//! Redis, so a stream is in the order Redis received the events. Fields, all strings:
//!
//! | field          | value                                                               |
//! |----------------|---------------------------------------------------------------------|
//! | `type`         | the event type, e.g. `performance.operation.complete`               |
//! | `instance`     | the emitting process, `<hostname>-<pid>` ([`instance_id`][iid])     |
//! | `timestamp_ns` | decimal nanoseconds since the Unix epoch, by the emitter's clock    |
//! | `context_id`   | decimal u64 tying related events together; `0` for none             |
//! | `trace_id`     | only on events about a traced call: its trace id, 32 hex digits     |
//! | `span_id`      | with `trace_id`: the call's span id, 16 hex digits                  |
//! | `payload`      | a JSON object whose shape depends on `type` ([`EventPayload`])      |
//!
//! [iid]: super::instance_id
//!
//! [`decode_entry`] turns an entry back into an [`Event`]. Another process follows a type with
//! e.g. `XREAD BLOCK 0 STREAMS plugin_host:events:performance.operation.complete $`.
//!
//! **Length.** With [`Trim::Approximate`] (the default) Redis trims whole internal nodes only,
//! which is much cheaper: a stream holds at least the newest `maxlen` entries (once that many
//! were written) and fewer than `maxlen + stream-node-max-entries` (a server setting, 100 by
//! default). With [`Trim::Exact`] it holds at most exactly `maxlen`.
//!
//! # Failure
//!
//! [`EventBus::publish`] never touches the network: it delivers locally and puts the event
//! on a bounded queue (full: the event is dropped and counted). A background task drains the
//! queue, writing up to `batch_max` events per round trip (one pipeline of `XADD`s). When Redis
//! is unreachable or stops answering, the bus turns unhealthy with the reason, counts the
//! events it could not write in `publish_failed`, and reconnects with a backoff (100 ms
//! doubling to 5 s by default). Events that arrive while it is disconnected are counted and
//! discarded rather than kept: a backlog would only replay stale observations late. Local
//! subscribers get every event throughout, so the in-process monitor stays complete.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use ::redis::{
    aio::{ConnectionLike, MultiplexedConnection},
    streams::StreamId,
    AsyncConnectionConfig, Client, RedisError, Value,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::{
    runtime::Handle,
    sync::{
        mpsc::{self, error::TrySendError},
        Notify,
    },
    task::JoinHandle,
    time::{timeout, Instant},
};

use super::{
    BusHealth, BusStats, Event, EventBus, EventKind, EventPayload, EventsError, MemoryBus, Pattern,
    Subscription,
};
use crate::lock;

/// The default stream prefix.
pub const DEFAULT_STREAM_PREFIX: &str = "plugin_host:events";
/// The default number of entries a stream keeps.
pub const DEFAULT_STREAM_MAXLEN: usize = 10_000;
/// The default capacity of the queue to the Redis writer.
pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;

/// How `XADD` bounds a stream's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trim {
    /// `MAXLEN ~ N`: at least N entries, fewer than N + `stream-node-max-entries`; cheap.
    #[default]
    Approximate,
    /// `MAXLEN N`: at most exactly N entries.
    Exact,
}

/// Everything [`RedisBus::start`] needs; [`RedisOptions::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[:password@]host[:port][/db]` (or `rediss://`, `unix://`, as the `redis` crate
    /// accepts them).
    pub url: String,
    /// Streams are named `{prefix}:{event type}`.
    pub prefix: String,
    /// How many entries each stream keeps (see [`Trim`]); at least 1.
    pub maxlen: usize,
    pub trim: Trim,
    /// Events waiting for the writer; beyond this, published events are dropped (counted).
    pub queue_capacity: usize,
    /// At most this many events per round trip to Redis.
    pub batch_max: usize,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long Redis may take to answer; beyond it the connection is considered broken.
    pub response_timeout: Duration,
    /// The first wait before reconnecting; doubled after each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// With nothing to write for this long, the writer PINGs Redis, so that a lost connection
    /// shows in the bus's health even when no events flow.
    pub idle_ping: Duration,
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            prefix: DEFAULT_STREAM_PREFIX.to_owned(),
            maxlen: DEFAULT_STREAM_MAXLEN,
            trim: Trim::Approximate,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            batch_max: 512,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            idle_ping: Duration::from_secs(1),
        }
    }
}

/// The stream events of type `kind` are written to: `{prefix}:{type}`.
pub fn stream_key(prefix: &str, kind: EventKind) -> String {
    format!("{prefix}:{}", kind.as_str())
}

/// Why a stream entry is not an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("stream entry {id} has no `{field}` field")]
    Missing { id: String, field: &'static str },
    #[error("stream entry {id}: field `{field}` is invalid: {reason}")]
    Invalid {
        id: String,
        field: &'static str,
        reason: String,
    },
}

/// Reads an event back from a stream entry written by [`RedisBus`] (from `XRANGE` or `XREAD`).
/// Payload fields this version does not know are ignored.
pub fn decode_entry(entry: &StreamId) -> Result<Event, DecodeError> {
    let text = |field: &'static str| -> Result<String, DecodeError> {
        let value = entry.map.get(field).ok_or_else(|| DecodeError::Missing {
            id: entry.id.clone(),
            field,
        })?;
        ::redis::from_redis_value::<String>(value).map_err(|e| DecodeError::Invalid {
            id: entry.id.clone(),
            field,
            reason: e.to_string(),
        })
    };
    let invalid = |field: &'static str, reason: String| DecodeError::Invalid {
        id: entry.id.clone(),
        field,
        reason,
    };
    let number = |field: &'static str| -> Result<u64, DecodeError> {
        text(field)?
            .parse()
            .map_err(|e: std::num::ParseIntError| invalid(field, e.to_string()))
    };
    let kind: EventKind = text("type")?
        .parse()
        .map_err(|e: super::UnknownEventKind| invalid("type", e.to_string()))?;
    let payload = EventPayload::from_json(kind, &text("payload")?)
        .map_err(|e| invalid("payload", e.to_string()))?;
    let trace = match entry.map.contains_key("trace_id") {
        false => None,
        true => {
            let (trace_id, span_id) = (text("trace_id")?, text("span_id")?);
            Some(
                super::EventTrace::from_hex(&trace_id, &span_id)
                    .ok_or_else(|| invalid("trace_id", format!("`{trace_id}` / `{span_id}`")))?,
            )
        }
    };
    Ok(Event {
        kind,
        timestamp_ns: number("timestamp_ns")?,
        instance: text("instance")?.into(),
        context_id: number("context_id")?,
        trace,
        payload: Arc::new(payload),
    })
}

/// `url` with any password replaced, for messages.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The state the writer and the bus's readers share.
struct Shared {
    /// Where Redis is, for messages (host:port, never the password).
    target: String,
    /// Mirrors `health.healthy`, so the writer's success path takes no lock.
    healthy: AtomicBool,
    health: Mutex<BusHealth>,
    queue_dropped: AtomicU64,
    publish_failed: AtomicU64,
    written: AtomicU64,
}

impl Shared {
    fn set_unhealthy(&self, reason: String) {
        let mut health = lock(&self.health);
        if health.healthy {
            tracing::warn!(
                bus = "redis",
                %reason,
                "event bus unhealthy: events reach local subscribers only until redis is back"
            );
        } else if health.reason != reason {
            tracing::debug!(bus = "redis", %reason, "event bus still unhealthy");
        }
        *health = BusHealth {
            healthy: false,
            reason,
        };
        self.healthy.store(false, Relaxed);
    }

    fn set_healthy(&self) {
        if self.healthy.load(Relaxed) {
            return;
        }
        let mut health = lock(&self.health);
        tracing::info!(bus = "redis", target = %self.target, "event bus connected to redis");
        *health = BusHealth {
            healthy: true,
            reason: String::new(),
        };
        self.healthy.store(true, Relaxed);
    }

    fn failed(&self, n: usize) {
        self.publish_failed.fetch_add(n as u64, Relaxed);
    }
}

/// The Redis event bus; see the module docs.
pub struct RedisBus {
    local: MemoryBus,
    queue: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    prefix: String,
    /// Set by [`RedisBus::shutdown`]; later events are delivered locally only.
    closing: AtomicBool,
    stop: Arc<Notify>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl RedisBus {
    /// Starts the bus, its writer running on `runtime`. Fails only for settings that can never
    /// work (an unparsable URL, a zero size); an unreachable Redis is not an error: the bus
    /// starts unhealthy and connects when it can.
    pub fn start(options: RedisOptions, runtime: &Handle) -> Result<RedisBus, EventsError> {
        for (name, value) in [
            ("stream_maxlen", options.maxlen),
            ("queue_capacity", options.queue_capacity),
            ("batch_max", options.batch_max),
        ] {
            if value == 0 {
                return Err(EventsError::Zero { name });
            }
        }
        let client =
            Client::open(options.url.as_str()).map_err(|source| EventsError::InvalidRedisUrl {
                url: redact_url(&options.url),
                source,
            })?;
        let target = client.get_connection_info().addr.to_string();
        let shared = Arc::new(Shared {
            health: Mutex::new(BusHealth {
                healthy: false,
                reason: format!("connecting to redis at {target}"),
            }),
            target,
            healthy: AtomicBool::new(false),
            queue_dropped: AtomicU64::new(0),
            publish_failed: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        let (queue, rx) = mpsc::channel(options.queue_capacity);
        let stop = Arc::new(Notify::new());
        let prefix = options.prefix.clone();
        let writer = Writer {
            keys: EventKind::ALL.map(|k| stream_key(&options.prefix, k)),
            client,
            options,
            shared: shared.clone(),
            stop: stop.clone(),
        };
        let writer = runtime.spawn(writer.run(rx));
        Ok(RedisBus {
            local: MemoryBus::new(),
            queue,
            shared,
            prefix,
            closing: AtomicBool::new(false),
            stop,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The stream events of type `kind` go to.
    pub fn stream_key(&self, kind: EventKind) -> String {
        stream_key(&self.prefix, kind)
    }

    /// Writes what is queued (or counts it as failed if Redis is unreachable) and stops the
    /// writer, waiting at most `timeout`; true if done in time. Events published afterwards
    /// reach local subscribers only and count as `publish_failed`.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.closing.store(true, Relaxed);
        self.stop.notify_one();
        let writer = lock(&self.writer).take();
        match writer {
            Some(writer) => tokio::time::timeout(timeout, writer).await.is_ok(),
            None => true,
        }
    }
}

impl EventBus for RedisBus {
    fn publish(&self, event: Event) {
        self.local.publish(event.clone());
        if self.closing.load(Relaxed) {
            self.shared.failed(1);
            return;
        }
        match self.queue.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.queue_dropped.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Closed(_)) => self.shared.failed(1),
        }
    }

    fn subscribe(&self, pattern: Pattern, capacity: usize) -> Subscription {
        self.local.subscribe(pattern, capacity)
    }

    fn stats(&self) -> BusStats {
        let local = self.local.stats();
        let health = self.health();
        BusStats {
            bus: "redis",
            published: local.published,
            dropped: local.dropped + self.shared.queue_dropped.load(Relaxed),
            publish_failed: self.shared.publish_failed.load(Relaxed),
            written: self.shared.written.load(Relaxed),
            subscribers: local.subscribers,
            healthy: health.healthy,
            reason: health.reason,
        }
    }

    fn health(&self) -> BusHealth {
        lock(&self.shared.health).clone()
    }

    fn shutdown(&self, timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(RedisBus::shutdown(self, timeout))
    }
}

/// The connection to Redis went bad; the writer reconnects.
struct Broken {
    reason: String,
    /// A shutdown was asked for meanwhile: do not reconnect.
    stopping: bool,
}

/// The background task: drains the queue into Redis, reconnecting as needed.
struct Writer {
    client: Client,
    options: RedisOptions,
    /// Stream names, by [`EventKind::index`].
    keys: [String; EventKind::ALL.len()],
    shared: Arc<Shared>,
    stop: Arc<Notify>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Event>) {
        let mut backoff = self.options.backoff_initial;
        let mut batch = Vec::with_capacity(self.options.batch_max);
        loop {
            let stopping = match self.connect().await {
                Ok(mut conn) => {
                    self.shared.set_healthy();
                    backoff = self.options.backoff_initial;
                    match self
                        .write_until_broken(&mut conn, &mut rx, &mut batch)
                        .await
                    {
                        Ok(()) => return,
                        Err(broken) => {
                            self.shared.set_unhealthy(broken.reason);
                            broken.stopping
                        }
                    }
                }
                Err(reason) => {
                    self.shared.set_unhealthy(reason);
                    false
                }
            };
            if stopping || !self.wait_discarding(&mut rx, &mut batch, backoff).await {
                rx.close();
                let mut left = 0;
                while rx.try_recv().is_ok() {
                    left += 1;
                }
                self.shared.failed(left);
                return;
            }
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let o = &self.options;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(o.connect_timeout)
            .set_response_timeout(o.response_timeout);
        let target = &self.shared.target;
        match timeout(
            o.connect_timeout + o.response_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("cannot connect to redis at {target}: {e}")),
            Err(_) => Err(format!(
                "cannot connect to redis at {target}: no answer within {:?}",
                o.connect_timeout + o.response_timeout
            )),
        }
    }

    /// Writes batches until the queue closes or a shutdown is asked for (`Ok`, all written),
    /// or the connection breaks.
    async fn write_until_broken(
        &self,
        conn: &mut MultiplexedConnection,
        rx: &mut mpsc::Receiver<Event>,
        batch: &mut Vec<Event>,
    ) -> Result<(), Broken> {
        let max = self.options.batch_max;
        let ping_every = self.options.idle_ping;
        let mut idle = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        loop {
            batch.clear();
            tokio::select! {
                n = rx.recv_many(batch, max) => {
                    if n == 0 {
                        return Ok(());
                    }
                }
                () = self.stop.notified() => {
                    rx.close();
                    return self.flush(conn, rx, batch).await;
                }
                _ = idle.tick() => {
                    self.ping(conn).await?;
                    continue;
                }
            }
            self.write(conn, batch).await?;
            idle.reset();
        }
    }

    /// Writes everything still queued (the queue is closed).
    async fn flush(
        &self,
        conn: &mut MultiplexedConnection,
        rx: &mut mpsc::Receiver<Event>,
        batch: &mut Vec<Event>,
    ) -> Result<(), Broken> {
        loop {
            batch.clear();
            while batch.len() < self.options.batch_max {
                match rx.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return Ok(());
            }
            self.write(conn, batch).await.map_err(|broken| Broken {
                stopping: true,
                ..broken
            })?;
        }
    }

    /// One pipelined round trip: an `XADD` per event.
    async fn write(&self, conn: &mut MultiplexedConnection, batch: &[Event]) -> Result<(), Broken> {
        let o = &self.options;
        let mut pipe = ::redis::pipe();
        for e in batch {
            let payload = serde_json::to_string(&*e.payload)
                .expect("payloads always serialize: string keys, no errors");
            pipe.cmd("XADD")
                .arg(&self.keys[e.kind.index()])
                .arg("MAXLEN");
            if o.trim == Trim::Approximate {
                pipe.arg("~");
            }
            pipe.arg(o.maxlen)
                .arg("*")
                .arg("type")
                .arg(e.kind.as_str())
                .arg("instance")
                .arg(&*e.instance)
                .arg("timestamp_ns")
                .arg(e.timestamp_ns)
                .arg("context_id")
                .arg(e.context_id);
            if let Some(trace) = &e.trace {
                pipe.arg("trace_id")
                    .arg(trace.trace_id_hex())
                    .arg("span_id")
                    .arg(trace.span_id_hex());
            }
            pipe.arg("payload").arg(payload);
        }
        let target = &self.shared.target;
        let n = batch.len();
        let replies = match timeout(o.response_timeout, conn.req_packed_commands(&pipe, 0, n)).await
        {
            Ok(Ok(replies)) => replies,
            Ok(Err(e)) => {
                self.shared.failed(n);
                return Err(broken(format!("writing to redis at {target} failed: {e}")));
            }
            Err(_) => {
                self.shared.failed(n);
                return Err(broken(format!(
                    "redis at {target} did not answer within {:?}",
                    o.response_timeout
                )));
            }
        };
        // The connection works; Redis may still refuse some commands (a key of another type,
        // a missing AUTH, out of memory). Those events are lost and the bus says why.
        let mut refused = 0;
        let mut first_refusal = None;
        for reply in &replies {
            if let Value::ServerError(e) = reply {
                refused += 1;
                first_refusal.get_or_insert_with(|| RedisError::from(e.clone()).to_string());
            }
        }
        let refused = refused.max(n.saturating_sub(replies.len()));
        self.shared.failed(refused);
        self.shared.written.fetch_add((n - refused) as u64, Relaxed);
        match first_refusal {
            Some(e) => self
                .shared
                .set_unhealthy(format!("redis at {target} refused events: {e}")),
            None => self.shared.set_healthy(),
        }
        Ok(())
    }

    async fn ping(&self, conn: &mut MultiplexedConnection) -> Result<(), Broken> {
        let target = &self.shared.target;
        let limit = self.options.response_timeout;
        match timeout(limit, ::redis::cmd("PING").query_async::<()>(conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(broken(format!("redis at {target} failed a PING: {e}"))),
            Err(_) => Err(broken(format!(
                "redis at {target} did not answer a PING within {limit:?}"
            ))),
        }
    }

    /// Waits `backoff` before the next connection attempt, counting and discarding the events
    /// that arrive meanwhile. False if the bus is shutting down or gone.
    async fn wait_discarding(
        &self,
        rx: &mut mpsc::Receiver<Event>,
        batch: &mut Vec<Event>,
        backoff: Duration,
    ) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            batch.clear();
            tokio::select! {
                () = &mut sleep => return true,
                () = self.stop.notified() => return false,
                n = rx.recv_many(batch, self.options.batch_max) => {
                    if n == 0 {
                        return false;
                    }
                    self.shared.failed(n);
                }
            }
        }
    }
}

fn broken(reason: String) -> Broken {
    Broken {
        reason,
        stopping: false,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        process::{Child, Command, Stdio},
        time::Instant as StdInstant,
    };

    use ::redis::streams::StreamRangeReply;

    use super::*;
    use crate::events::{samples::sample_event, EventKind as K};

    /// A real `redis-server` on 127.0.0.1:`port`, killed when dropped.
    struct RedisServer {
        child: Child,
        port: u16,
    }

    impl RedisServer {
        /// Starts `redis-server` (or `$REDIS_SERVER`) and waits until it accepts connections.
        /// A missing binary fails the test: CI installs it, and a skipped test proves nothing.
        fn start(port: u16) -> RedisServer {
            let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
            let child = Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run `{bin}` ({e}). The Redis event bus tests need a real \
                         redis-server: install it (apt-get install -y redis-server) or point \
                         $REDIS_SERVER at one"
                    )
                });
            let mut server = RedisServer { child, port };
            let deadline = StdInstant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("redis-server on port {port} exited at start: {status}");
                }
                assert!(
                    StdInstant::now() < deadline,
                    "redis-server did not listen on port {port} within 10 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Polls `check` until it holds, or fails the test after `limit`, saying what it waited for.
    async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = StdInstant::now() + limit;
        while !check() {
            assert!(
                StdInstant::now() < deadline,
                "timed out after {limit:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn reader(url: &str) -> MultiplexedConnection {
        let client = Client::open(url).unwrap();
        timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("connect within 5 s")
        .unwrap()
    }

    async fn xlen(conn: &mut MultiplexedConnection, key: &str) -> usize {
        ::redis::cmd("XLEN")
            .arg(key)
            .query_async(conn)
            .await
            .unwrap()
    }

    async fn xrange(conn: &mut MultiplexedConnection, key: &str) -> Vec<StreamId> {
        let reply: StreamRangeReply = ::redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(conn)
            .await
            .unwrap();
        reply.ids
    }

    fn options(url: &str, prefix: &str) -> RedisOptions {
        RedisOptions {
            prefix: prefix.into(),
            ..RedisOptions::new(url)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_reach_one_stream_per_type_with_the_documented_fields() {
        let server = RedisServer::start(free_port());
        let bus = RedisBus::start(options(&server.url(), "t1:events"), &Handle::current()).unwrap();
        let mut local = bus.subscribe(Pattern::all(), 64);
        let sent: Vec<Event> = EventKind::ALL.into_iter().map(sample_event).collect();
        for e in &sent {
            bus.publish(e.clone());
        }
        wait_until(Duration::from_secs(10), "10 events written", || {
            bus.stats().written == 10
        })
        .await;

        let mut conn = reader(&server.url()).await;
        for e in &sent {
            let key = bus.stream_key(e.kind);
            assert_eq!(key, format!("t1:events:{}", e.kind.as_str()));
            let entries = xrange(&mut conn, &key).await;
            assert_eq!(entries.len(), 1, "{key}");
            let entry = &entries[0];
            let mut fields: Vec<_> = entry.map.keys().map(String::as_str).collect();
            fields.sort_unstable();
            assert_eq!(
                fields,
                ["context_id", "instance", "payload", "timestamp_ns", "type"]
            );
            assert_eq!(entry.get::<String>("type").unwrap(), e.kind.as_str());
            assert_eq!(entry.get::<String>("instance").unwrap(), "test-host-1");
            assert_eq!(entry.get::<u64>("timestamp_ns").unwrap(), e.timestamp_ns);
            assert_eq!(entry.get::<u64>("context_id").unwrap(), 7);
            let payload: serde_json::Value =
                serde_json::from_str(&entry.get::<String>("payload").unwrap()).unwrap();
            assert_eq!(payload, serde_json::to_value(&*e.payload).unwrap());
            assert_eq!(&decode_entry(entry).unwrap(), e);
        }
        // Local subscribers got them too.
        let got: Vec<_> = std::iter::from_fn(|| local.try_recv()).collect();
        assert_eq!(got, sent);
        let stats = bus.stats();
        assert!(stats.healthy, "{stats:?}");
        assert_eq!(
            (stats.published, stats.dropped, stats.publish_failed),
            (10, 0, 0)
        );
        assert!(bus.shutdown(Duration::from_secs(5)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_traced_calls_event_carries_trace_and_span_ids_as_fields() {
        let server = RedisServer::start(free_port());
        let bus = RedisBus::start(options(&server.url(), "t9:events"), &Handle::current()).unwrap();
        let trace = super::super::EventTrace::from_hex(
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
        );
        let e = sample_event(EventKind::OperationComplete).with_trace(trace);
        bus.publish(e.clone());
        wait_until(Duration::from_secs(10), "1 event written", || {
            bus.stats().written == 1
        })
        .await;
        let mut conn = reader(&server.url()).await;
        let entries = xrange(&mut conn, &bus.stream_key(e.kind)).await;
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_eq!(
            entry.get::<String>("trace_id").unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(entry.get::<String>("span_id").unwrap(), "00f067aa0ba902b7");
        assert_eq!(decode_entry(entry).unwrap(), e);
        assert!(bus.shutdown(Duration::from_secs(5)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_stay_within_their_documented_length() {
        let server = RedisServer::start(free_port());
        let rt = Handle::current();
        let approx = RedisBus::start(
            RedisOptions {
                maxlen: 50,
                ..options(&server.url(), "approx")
            },
            &rt,
        )
        .unwrap();
        let exact = RedisBus::start(
            RedisOptions {
                maxlen: 50,
                trim: Trim::Exact,
                ..options(&server.url(), "exact")
            },
            &rt,
        )
        .unwrap();
        for i in 0..1000 {
            approx.publish(sample_event(K::OperationComplete));
            exact.publish(sample_event(K::OperationComplete));
            if i % 200 == 0 {
                // Let the writers keep up, so nothing is dropped from a full queue.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        wait_until(Duration::from_secs(10), "2 x 1000 events written", || {
            approx.stats().written == 1000 && exact.stats().written == 1000
        })
        .await;
        let mut conn = reader(&server.url()).await;
        let n = xlen(&mut conn, &approx.stream_key(K::OperationComplete)).await;
        // Redis's default stream-node-max-entries is 100.
        assert!(
            (50..150).contains(&n),
            "approximate trimming left {n} entries"
        );
        let n = xlen(&mut conn, &exact.stream_key(K::OperationComplete)).await;
        assert_eq!(n, 50, "exact trimming");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_at_start_then_up() {
        let port = free_port();
        let url = format!("redis://127.0.0.1:{port}");
        let bus = RedisBus::start(options(&url, "t3"), &Handle::current()).unwrap();
        assert!(!bus.health().healthy, "not healthy before connecting");
        let mut local = bus.subscribe(Pattern::all(), 100_000);

        wait_until(
            Duration::from_secs(10),
            "failed publishes counted while redis is down",
            || {
                bus.publish(sample_event(K::OperationComplete));
                bus.stats().publish_failed > 0
            },
        )
        .await;
        let stats = bus.stats();
        assert!(!stats.healthy, "{stats:?}");
        assert!(
            stats.reason.contains(&format!("127.0.0.1:{port}")),
            "the reason says where: {stats:?}"
        );

        // Publishing while down returns at once (it only ever `try_send`s), whatever the
        // volume; every event is accounted for.
        for _ in 0..50_000 {
            bus.publish(sample_event(K::PhaseEnd));
        }
        let stats = bus.stats();
        assert_eq!(stats.written, 0);
        assert!(stats.published >= 50_000);
        assert!(stats.dropped + stats.publish_failed <= stats.published);
        // Local delivery is complete throughout.
        let delivered = std::iter::from_fn(|| local.try_recv()).count() as u64;
        assert_eq!(delivered, stats.published);

        let server = RedisServer::start(port);
        wait_until(
            Duration::from_secs(20),
            "healthy again and writing after redis started",
            || {
                bus.publish(sample_event(K::PipelineStarted));
                let s = bus.stats();
                s.healthy && s.written > 0
            },
        )
        .await;
        let mut conn = reader(&server.url()).await;
        let entries = xrange(&mut conn, &bus.stream_key(K::PipelineStarted)).await;
        assert!(!entries.is_empty());
        assert_eq!(decode_entry(&entries[0]).unwrap().kind, K::PipelineStarted);
        assert!(bus.health().reason.is_empty());
        assert!(bus.shutdown(Duration::from_secs(5)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_lost_while_running_then_back() {
        let port = free_port();
        let server = RedisServer::start(port);
        let bus = RedisBus::start(options(&server.url(), "t4"), &Handle::current()).unwrap();
        wait_until(Duration::from_secs(10), "connected", || {
            bus.health().healthy
        })
        .await;
        bus.publish(sample_event(K::PipelineStarted));
        wait_until(Duration::from_secs(10), "first event written", || {
            bus.stats().written == 1
        })
        .await;

        drop(server);
        // Detected by the next write, or by the idle PING with nothing to write.
        wait_until(
            Duration::from_secs(10),
            "unhealthy after redis died",
            || !bus.health().healthy,
        )
        .await;
        wait_until(Duration::from_secs(10), "failed publishes counted", || {
            bus.publish(sample_event(K::OperationFailed));
            bus.stats().publish_failed > 0
        })
        .await;
        let reason = bus.health().reason;
        assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");

        let server = RedisServer::start(port);
        let written = bus.stats().written;
        wait_until(
            Duration::from_secs(20),
            "writing again after redis came back",
            || {
                bus.publish(sample_event(K::OperationFailed));
                let s = bus.stats();
                s.healthy && s.written > written
            },
        )
        .await;
        let mut conn = reader(&server.url()).await;
        assert!(xlen(&mut conn, &bus.stream_key(K::OperationFailed)).await > 0);
        assert!(bus.shutdown(Duration::from_secs(5)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_writes_what_is_queued() {
        let server = RedisServer::start(free_port());
        let bus = RedisBus::start(options(&server.url(), "t5"), &Handle::current()).unwrap();
        wait_until(Duration::from_secs(10), "connected", || {
            bus.health().healthy
        })
        .await;
        for _ in 0..2000 {
            bus.publish(sample_event(K::MetricRecorded));
        }
        bus.publish(sample_event(K::PipelineStopped));
        assert!(bus.shutdown(Duration::from_secs(10)).await);
        let stats = bus.stats();
        assert_eq!(stats.written + stats.dropped, 2001, "{stats:?}");
        assert_eq!(stats.publish_failed, 0, "{stats:?}");
        let mut conn = reader(&server.url()).await;
        let metrics = xlen(&mut conn, &bus.stream_key(K::MetricRecorded)).await;
        let stopped = xlen(&mut conn, &bus.stream_key(K::PipelineStopped)).await;
        assert_eq!((metrics + stopped) as u64, stats.written);

        // Afterwards: local delivery only, counted as not published.
        let mut local = bus.subscribe(Pattern::all(), 4);
        bus.publish(sample_event(K::PipelineStopped));
        assert!(local.try_recv().is_some());
        assert_eq!(bus.stats().publish_failed, 1);
    }

    #[test]
    fn urls_are_redacted_for_messages() {
        assert_eq!(
            redact_url("redis://:hunter2@db.example:6379/0"),
            "redis://***@db.example:6379/0"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
