//! Typed events and the buses that carry them (`monitoring.mode: event_driven`).
//!
//! An [`Event`] is one of a closed set of types ([`EventKind`]: `performance.phase.start`,
//! `performance.operation.complete`, `health.status.changed`, `pipeline.started`, ...) with a
//! typed payload, the time, the emitting instance and a context id. Publishers hand events to an
//! [`EventBus`]; subscribers receive those matching a [`Pattern`] (`performance.*`, `*`, or an
//! exact type).
//!
//! Two buses:
//! - [`MemoryBus`]: in-process only. Each subscriber has a bounded queue; a slow subscriber
//!   loses events (counted) and never slows the stage that published them.
//! - [`RedisBus`] (`monitoring.events.bus: redis`): the same local delivery, plus every event
//!   written to a Redis stream per event type, so other processes can read every instance's
//!   events (schema in [its module](self::redis)). When Redis is unreachable the pipeline keeps
//!   running: the bus counts what it could not write, reports itself unhealthy with the reason,
//!   and reconnects by itself.
//!
//! Publishing never blocks and never awaits: stage workers are plain threads, and an
//! observation must never hold up the data it observes.

mod event;
mod memory;
mod pattern;
pub mod redis;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

pub use self::redis::{decode_entry, stream_key, DecodeError, RedisBus, RedisOptions, Trim};
#[cfg(test)]
pub(crate) use event::samples;
pub use event::{
    instance_id, next_context_id, now_ns, Event, EventKind, EventPayload, EventTrace, HealthState,
    UnknownEventKind,
};
pub use memory::{MemoryBus, Subscription};
pub use pattern::{Pattern, PatternError};

/// Where events go. Implementations are shared between stage worker threads and async tasks.
pub trait EventBus: Send + Sync {
    /// Hands `event` to the bus. Never blocks and never awaits: whatever cannot be delivered
    /// right away (a full queue, an unreachable Redis) is counted in [`BusStats`] and lost.
    fn publish(&self, event: Event);

    /// A new subscription to the events matching `pattern`, queued up to `capacity` (at least
    /// 1) until read. Only events published after this call are received.
    fn subscribe(&self, pattern: Pattern, capacity: usize) -> Subscription;

    fn stats(&self) -> BusStats;

    fn health(&self) -> BusHealth;

    /// Writes out what is still queued for external stores and stops writing, waiting at most
    /// `timeout`; true if everything queued was dealt with (written, or counted as failed) in
    /// time. Local subscribers keep receiving events published afterwards. The memory bus has
    /// nothing to flush.
    fn shutdown(&self, timeout: Duration) -> BoxFuture<'_, bool> {
        let _ = timeout;
        Box::pin(async { true })
    }
}

/// A running bus, shared by the coordinator, the monitor, health checks and the admin API.
pub type BusHandle = Arc<dyn EventBus>;

/// A bus's counters since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusStats {
    /// `memory` or `redis`.
    pub bus: &'static str,
    /// Events handed to [`EventBus::publish`].
    pub published: u64,
    /// Events lost to a full queue: one per subscriber whose queue was full, plus (Redis) one
    /// per event that did not fit the queue to the Redis writer.
    pub dropped: u64,
    /// Events that reached the Redis writer but could not be written (Redis unreachable, or
    /// it refused them), or were published after shutdown. Always 0 for the memory bus.
    pub publish_failed: u64,
    /// Events Redis confirmed writing. Always 0 for the memory bus.
    pub written: u64,
    /// Open local subscriptions.
    pub subscribers: usize,
    pub healthy: bool,
    /// Why the bus is unhealthy; empty when healthy.
    pub reason: String,
}

/// Whether a bus can currently deliver everything it is given, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusHealth {
    pub healthy: bool,
    pub reason: String,
}

/// Which bus carries events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    #[default]
    Memory,
    Redis,
}

/// `monitoring.events` in a pipeline file:
///
/// ```yaml
/// monitoring:
///   mode: event_driven
///   events: { bus: redis, redis_url: "redis://127.0.0.1:6379", stream_maxlen: 10000 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    #[serde(default)]
    pub bus: BusKind,
    /// Required with `bus: redis`, e.g. `redis://127.0.0.1:6379` or `redis://:password@host/0`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Streams are named `{stream_prefix}:{event type}`.
    #[serde(default = "default_stream_prefix")]
    pub stream_prefix: String,
    /// How many entries each stream keeps (see [`Trim`]).
    #[serde(default = "default_stream_maxlen")]
    pub stream_maxlen: usize,
    #[serde(default)]
    pub trim: Trim,
    /// Events waiting for the Redis writer; beyond this they are dropped (counted).
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

fn default_stream_prefix() -> String {
    redis::DEFAULT_STREAM_PREFIX.to_owned()
}
fn default_stream_maxlen() -> usize {
    redis::DEFAULT_STREAM_MAXLEN
}
fn default_queue_capacity() -> usize {
    redis::DEFAULT_QUEUE_CAPACITY
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            bus: BusKind::Memory,
            redis_url: None,
            stream_prefix: default_stream_prefix(),
            stream_maxlen: default_stream_maxlen(),
            trim: Trim::default(),
            queue_capacity: default_queue_capacity(),
        }
    }
}

/// Why a bus could not be started. Redis being unreachable is not one of them: the Redis bus
/// starts unhealthy and connects when it can.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("monitoring.events.bus is `redis` but monitoring.events.redis_url is not set")]
    MissingRedisUrl,
    #[error("invalid monitoring.events.redis_url `{url}`: {source}")]
    InvalidRedisUrl {
        /// The URL with any password replaced by `***`.
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("monitoring.events.{name} must be at least 1")]
    Zero { name: &'static str },
}

/// Starts the bus `config` asks for. The Redis bus's writer runs on `runtime`.
pub fn start_bus(config: &EventsConfig, runtime: &Handle) -> Result<BusHandle, EventsError> {
    Ok(match config.bus {
        BusKind::Memory => Arc::new(MemoryBus::new()),
        BusKind::Redis => {
            let url = config
                .redis_url
                .as_deref()
                .ok_or(EventsError::MissingRedisUrl)?;
            let options = RedisOptions {
                prefix: config.stream_prefix.clone(),
                maxlen: config.stream_maxlen,
                trim: config.trim,
                queue_capacity: config.queue_capacity,
                ..RedisOptions::new(url)
            };
            Arc::new(RedisBus::start(options, runtime)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_from_yaml_with_defaults() {
        let c: EventsConfig = serde_yaml::from_str("{}").unwrap();
        assert_eq!(c, EventsConfig::default());
        assert_eq!(c.stream_prefix, "plugin_host:events");
        assert_eq!(c.stream_maxlen, 10_000);
        let c: EventsConfig = serde_yaml::from_str(
            "bus: redis\nredis_url: redis://127.0.0.1:1\nstream_maxlen: 50\ntrim: exact\n",
        )
        .unwrap();
        assert_eq!(c.bus, BusKind::Redis);
        assert_eq!(c.trim, Trim::Exact);
        assert_eq!(c.stream_maxlen, 50);
        assert!(serde_yaml::from_str::<EventsConfig>("bus: kafka").is_err());
        assert!(serde_yaml::from_str::<EventsConfig>("redis: x").is_err());
    }

    #[tokio::test]
    async fn start_bus_checks_its_settings() {
        let rt = Handle::current();
        let bus = start_bus(&EventsConfig::default(), &rt).unwrap();
        assert_eq!(bus.stats().bus, "memory");
        assert!(bus.shutdown(Duration::from_secs(1)).await);

        let redis = EventsConfig {
            bus: BusKind::Redis,
            ..EventsConfig::default()
        };
        assert!(matches!(
            start_bus(&redis, &rt).err(),
            Some(EventsError::MissingRedisUrl)
        ));
        let bad = EventsConfig {
            redis_url: Some("http://user:secret@host/".into()),
            ..redis.clone()
        };
        let err = start_bus(&bad, &rt).err().unwrap().to_string();
        assert!(err.contains("***") && !err.contains("secret"), "{err}");
        let zero = EventsConfig {
            redis_url: Some("redis://127.0.0.1:1".into()),
            stream_maxlen: 0,
            ..redis
        };
        let err = start_bus(&zero, &rt).err().unwrap().to_string();
        assert!(err.contains("stream_maxlen"), "{err}");
    }
}
