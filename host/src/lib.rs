//! The plugin host: runs YAML pipelines of dynamically loaded stages over ZeroMQ.
//!
//! The principal type in this crate is [`topology::Topology`]: [`config::PipelineConfig`]
//! (the YAML, typed and validated) plus a [`plugins::registry::Registry`] (built-in and loaded
//! stage types) go into [`topology::build_topology`], whose result starts as a
//! [`topology::RunningPipeline`] and drains on shutdown. The binary `host` adds the CLI.

pub mod accounting;
pub mod admin;
pub mod alloc;
pub mod bench;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod crash;
pub mod events;
pub mod health;
pub mod logging;
pub mod monitor;
pub mod observer;
pub mod plugins;
pub mod publish;
pub mod source;
pub mod telemetry;
pub mod topology;

/// Locks a mutex, recovering it if a thread panicked while holding it: what these mutexes
/// guard (counters, histograms, a stage between calls) stays meaningful after such a panic.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
