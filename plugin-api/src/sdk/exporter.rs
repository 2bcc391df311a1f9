//! What every exporter that talks to a network would otherwise write itself: a bounded
//! sending queue, batching by size and by time, retry with capped exponential backoff, and
//! retryable versus permanent errors (the OpenTelemetry Collector's exporterhelper, Vector's
//! acknowledgements).
//!
//! Implement [`Exporter`] (build, and send one batch) and export [`Queued<YourExporter>`] as
//! the stage: `plugin_api::export_plugin!(Queued<MyExporter>)`. The stage takes each batch
//! for later ([`crate::Batch::defer_all`]), queues it, and a sending thread of its own
//! batches, sends and retries; records are settled (delivered, or failed with their error
//! type) only when the outcome is known. A target that is down slows the pipeline (the queue
//! is bounded, then the host's in-flight bound holds the source back); it never makes records
//! count as delivered that were not.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Deserialize};

use super::{Stage, StageContext};
use crate::{
    batch::{Batch, Deferred},
    kinds::{HealthReport, HealthStatus, StageError, StageKind},
    module::ConfigError,
    record::Record,
};

/// Why a send failed.
#[derive(Debug, Clone)]
pub enum SendError {
    /// It may work later (the target is down, overloaded, timed out): the batch is sent
    /// again after a backoff, until `retry.max_elapsed`.
    Retryable(StageError),
    /// It will not work (the target rejected the data as invalid): the records fail, counted
    /// under this error's kind.
    Permanent(StageError),
}

/// An exporter, as the SDK's sending queue drives it.
pub trait Exporter: Sized + Send + 'static {
    /// The name pipelines use in `plugin:`.
    const NAME: &'static str;
    /// The stage's `config:` block. Include a `sending` key of type [`SendingConfig`]
    /// (`#[serde(default)] sending: SendingConfig`) and return it from [`Exporter::sending`].
    type Config: DeserializeOwned;

    fn check(_config: &Self::Config) -> Result<(), ConfigError> {
        Ok(())
    }

    /// How to queue, batch and retry.
    fn sending(config: &Self::Config) -> SendingConfig;

    fn build(config: Self::Config, ctx: StageContext) -> Result<Self, String>;

    /// Sends one batch (at most `sending.batch_size` records). Called on the sending thread
    /// only, one batch at a time; it may block (its own timeout is its business).
    fn send(&mut self, records: &[Record]) -> Result<(), SendError>;
}

/// `sending:` in an exporter's config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendingConfig {
    /// Most records per send.
    pub batch_size: usize,
    /// How long the first record of a batch waits for more before the batch is sent anyway.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Records queued (taken, not yet sent) before the stage stops taking more (and the
    /// pipeline slows down behind it); the queue may pass it by one batch.
    pub queue_size: usize,
    pub retry: RetryConfig,
}

impl Default for SendingConfig {
    fn default() -> Self {
        SendingConfig {
            batch_size: 512,
            max_delay: Duration::from_millis(200),
            queue_size: 10_000,
            retry: RetryConfig::default(),
        }
    }
}

/// `sending.retry:`: capped exponential backoff with jitter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Give up on a batch after retrying it this long (its records fail with the last error's
    /// kind); `0s` retries for ever.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
    pub multiplier: f64,
    /// Each wait is the interval times a random factor in `1 ± jitter`.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            enabled: true,
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl SendingConfig {
    /// The checks a config loader cannot make, for [`Exporter::check`].
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.batch_size == 0 {
            return Err(ConfigError::at("sending.batch_size", "must be at least 1"));
        }
        if self.queue_size < self.batch_size {
            return Err(ConfigError::at(
                "sending.queue_size",
                "must be at least `sending.batch_size`",
            ));
        }
        let r = &self.retry;
        if r.multiplier < 1.0 || !(0.0..1.0).contains(&r.jitter) {
            return Err(ConfigError::at(
                "sending.retry",
                "`multiplier` must be at least 1 and `jitter` in [0, 1)",
            ));
        }
        if r.initial_interval.is_zero() || r.max_interval < r.initial_interval {
            return Err(ConfigError::at(
                "sending.retry",
                "`initial_interval` must be above 0 and at most `max_interval`",
            ));
        }
        Ok(())
    }
}

/// The backoff before retry number `attempt` (0 for the first retry): `initial_interval`
/// times `multiplier^attempt`, times a factor in `1 ± jitter` drawn from `random` (in
/// [0, 1)), and never more than `max_interval`.
pub fn backoff(retry: &RetryConfig, attempt: u32, random: f64) -> Duration {
    let base = retry.initial_interval.as_secs_f64()
        * retry
            .multiplier
            .powi(i32::try_from(attempt).unwrap_or(i32::MAX));
    let factor = 1.0 + retry.jitter * (2.0 * random - 1.0);
    Duration::from_secs_f64((base * factor).clamp(0.0, retry.max_interval.as_secs_f64()))
}

/// What the stage and its sending thread share.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Deferred>,
    queued_records: usize,
    flush_now: bool,
    stop: bool,
    /// Why the last send failed, while it has not succeeded since.
    failing: Option<Failing>,
}

struct Failing {
    error: StageError,
    permanent: bool,
    since: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An [`Exporter`] behind the SDK's sending queue: the stage to export.
pub struct Queued<E: Exporter> {
    shared: Arc<Shared>,
    sending: SendingConfig,
    thread: Option<JoinHandle<()>>,
    _exporter: std::marker::PhantomData<fn() -> E>,
}

impl<E: Exporter> Stage for Queued<E> {
    const NAME: &'static str = E::NAME;
    const KIND: StageKind = StageKind::Exporter;
    type Config = E::Config;

    fn check(config: &E::Config) -> Result<(), ConfigError> {
        E::sending(config).check()?;
        E::check(config)
    }

    fn build(config: E::Config, ctx: StageContext) -> Result<Self, String> {
        let sending = E::sending(&config);
        let exporter = E::build(config, ctx.clone())?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let thread = {
            let (shared, sending) = (shared.clone(), sending.clone());
            std::thread::Builder::new()
                .name(format!("send-{}", ctx.instance()))
                .spawn(move || {
                    let c = ctx.clone();
                    c.in_scope(|| send_loop(exporter, &shared, &sending, &ctx))
                })
                .map_err(|e| format!("cannot start the sending thread: {e}"))?
        };
        Ok(Queued {
            shared,
            sending,
            thread: Some(thread),
            _exporter: std::marker::PhantomData,
        })
    }

    /// Not while the queue is full: the host then leaves batches in the stage's input queue,
    /// and the pipeline slows down behind it (nothing is dropped).
    fn ready(&mut self) -> bool {
        self.shared.lock().queued_records < self.sending.queue_size
    }

    fn process(&mut self, batch: &mut Batch) -> Result<(), StageError> {
        let deferred = batch.defer_all();
        if deferred.is_empty() {
            return Ok(());
        }
        // Never waits: `ready` keeps the queue from growing past `queue_size` by more than the
        // one batch it last let in.
        let mut state = self.shared.lock();
        state.queued_records += deferred.len();
        state.queue.push_back(deferred);
        self.shared.changed.notify_all();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        // Send what is queued without waiting for `max_delay`; the host waits for the
        // records to be settled (up to its drain timeout).
        self.shared.lock().flush_now = true;
        self.shared.changed.notify_all();
        Ok(())
    }

    fn health(&mut self) -> HealthReport {
        let state = self.shared.lock();
        match &state.failing {
            None => HealthReport::healthy(),
            Some(f) if f.permanent => HealthReport::new(
                HealthStatus::Degraded,
                format!("the target rejected the last batch: {}", f.error),
            ),
            Some(f) => HealthReport::new(
                HealthStatus::Unhealthy,
                format!(
                    "cannot send for {:.1} s: {} ({} records queued)",
                    f.since.elapsed().as_secs_f64(),
                    f.error,
                    state.queued_records
                ),
            ),
        }
    }
}

impl<E: Exporter> Drop for Queued<E> {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Takes the next batch: waits for a first record, then for `batch_size` records or
/// `max_delay`, whichever comes first (or a flush). None once the stage is dropped, even
/// with records queued: the host drops a stage after its drain (the queue is empty then) or
/// after its drain timeout, when it has counted what is left as failed; sending the rest
/// would only hold the exit up. Records left queued are failed as `unsettled` when dropped.
fn next_batch(shared: &Shared, sending: &SendingConfig) -> Option<Deferred> {
    let mut state = shared.lock();
    loop {
        if state.stop {
            return None;
        }
        if !state.queue.is_empty() {
            break;
        }
        state = shared
            .changed
            .wait(state)
            .unwrap_or_else(|e| e.into_inner());
    }
    let first = Instant::now();
    while state.queued_records < sending.batch_size && !state.flush_now && !state.stop {
        let waited = first.elapsed();
        if waited >= sending.max_delay {
            break;
        }
        state = shared
            .changed
            .wait_timeout(state, sending.max_delay - waited)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    if state.stop {
        return None;
    }
    let mut batch = state.queue.pop_front()?;
    while batch.len() < sending.batch_size {
        let Some(next) = state.queue.pop_front() else {
            break;
        };
        batch.merge(next);
    }
    if batch.len() > sending.batch_size {
        let rest = batch.split_off(sending.batch_size);
        state.queue.push_front(rest);
    }
    state.queued_records -= batch.len();
    if state.queue.is_empty() {
        state.flush_now = false;
    }
    // Room in the queue: `ready` says so again.
    shared.changed.notify_all();
    Some(batch)
}

fn send_loop<E: Exporter>(
    mut exporter: E,
    shared: &Shared,
    sending: &SendingConfig,
    ctx: &StageContext,
) {
    let mut random = Jitter::seeded();
    while let Some(batch) = next_batch(shared, sending) {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let outcome = exporter.send(batch.records());
            match outcome {
                Ok(()) => {
                    if shared.lock().failing.take().is_some() {
                        tracing::info!(stage = ctx.instance(), "sending again");
                    }
                    ctx.counter("exporter_sent_records", batch.len() as f64, &[]);
                    batch.delivered();
                    break;
                }
                Err(SendError::Permanent(error)) => {
                    tracing::warn!(stage = ctx.instance(), error = %error, records = batch.len(), "the target rejected a batch; its records fail");
                    note_failure(shared, &error, true);
                    ctx.counter(
                        "exporter_failed_records",
                        batch.len() as f64,
                        &[("reason", "permanent")],
                    );
                    batch.failed(error);
                    break;
                }
                Err(SendError::Retryable(error)) => {
                    let gave_up = !sending.retry.enabled
                        || (!sending.retry.max_elapsed.is_zero()
                            && started.elapsed() >= sending.retry.max_elapsed);
                    if attempt == 0 {
                        tracing::warn!(stage = ctx.instance(), error = %error, records = batch.len(), "sending failed; retrying");
                    }
                    note_failure(shared, &error, false);
                    if gave_up {
                        ctx.counter(
                            "exporter_failed_records",
                            batch.len() as f64,
                            &[("reason", "retries_exhausted")],
                        );
                        batch.failed(error);
                        break;
                    }
                    ctx.counter("exporter_send_retries", 1.0, &[]);
                    let wait = backoff(&sending.retry, attempt, random.next());
                    attempt = attempt.saturating_add(1);
                    // Waits, unless the stage is dropped (then the batch is left unsettled:
                    // the host has given up on it by then).
                    let state = shared.lock();
                    let (state, _) = shared
                        .changed
                        .wait_timeout_while(state, wait, |s| !s.stop)
                        .unwrap_or_else(|e| e.into_inner());
                    if state.stop {
                        return;
                    }
                }
            }
        }
    }
}

fn note_failure(shared: &Shared, error: &StageError, permanent: bool) {
    let mut state = shared.lock();
    let since = state
        .failing
        .as_ref()
        .filter(|f| f.permanent == permanent)
        .map_or_else(Instant::now, |f| f.since);
    state.failing = Some(Failing {
        error: error.clone(),
        permanent,
        since,
    });
}

/// A small xorshift generator: jitter needs spread, not quality, and no dependency.
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.subsec_nanos());
        Jitter(u64::from(nanos) | 1)
    }

    /// A number in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let r = RetryConfig::default();
        assert_eq!(backoff(&r, 0, 0.5), Duration::from_millis(100));
        assert_eq!(backoff(&r, 3, 0.5), Duration::from_millis(800));
        assert_eq!(backoff(&r, 30, 0.5), Duration::from_secs(5));
        assert!(backoff(&r, 0, 0.0) < Duration::from_millis(100));
        assert!(backoff(&r, 0, 0.999) > Duration::from_millis(100));
        assert_eq!(backoff(&r, 30, 0.999), Duration::from_secs(5));
        // 6.4 s less 20% is still above the cap; 3.2 s plus 20% is not.
        assert_eq!(backoff(&r, 6, 0.0), Duration::from_secs(5));
        assert!(backoff(&r, 5, 0.999) < Duration::from_secs(5));
    }

    use std::sync::atomic::{AtomicUsize, Ordering};

    use abi_stable::{
        sabi_trait::TD_Opaque,
        std_types::{RArc, RVec},
    };

    use crate::{
        module::FfiAck_TO,
        testing::{assert_stage_compliance, RecordingAck},
    };

    /// Every send takes `delay_ms`, then fails as retryable (`target_down`), or succeeds
    /// with `up`. `attempts` counts sends, a counter for each test.
    struct Down {
        delay: Duration,
        up: bool,
        attempts: &'static AtomicUsize,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DownConfig {
        sending: SendingConfig,
        delay_ms: u64,
        #[serde(default)]
        up: bool,
        counter: usize,
    }

    static COUNTERS: [AtomicUsize; 3] = [
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ];

    impl Exporter for Down {
        const NAME: &'static str = "down";
        type Config = DownConfig;
        fn sending(config: &DownConfig) -> SendingConfig {
            config.sending.clone()
        }
        fn build(config: DownConfig, _: StageContext) -> Result<Self, String> {
            Ok(Down {
                delay: Duration::from_millis(config.delay_ms),
                up: config.up,
                attempts: &COUNTERS[config.counter],
            })
        }
        fn send(&mut self, _: &[Record]) -> Result<(), SendError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            if self.up {
                return Ok(());
            }
            Err(SendError::Retryable(StageError::new(
                "target_down",
                "refused",
            )))
        }
    }

    fn records(n: u64) -> Vec<Record> {
        (1..=n)
            .map(|i| {
                let mut r = Record::new();
                r.set_origin(i, 0, 0);
                r
            })
            .collect()
    }

    #[test]
    fn a_batch_that_keeps_failing_fails_with_its_error_once_retries_run_out() {
        let config = r#"{"delay_ms": 0, "counter": 0, "sending": {"batch_size": 4, "max_delay": "1ms",
            "retry": {"initial_interval": "1ms", "max_interval": "5ms", "max_elapsed": "60ms"}}}"#;
        let out = assert_stage_compliance::<Queued<Down>>(config, records(4));
        let failed: Vec<(u64, &str)> = out.failed.iter().map(|(id, k)| (*id, k.as_str())).collect();
        assert_eq!(
            failed,
            [
                (1, "target_down"),
                (2, "target_down"),
                (3, "target_down"),
                (4, "target_down")
            ]
        );
        assert!(out.delivered.is_empty());
        // Retried until `max_elapsed` (waits of at most 5 ms in 60 ms), then given up.
        assert!(COUNTERS[0].load(Ordering::SeqCst) >= 5, "{:?}", COUNTERS[0]);
    }

    #[test]
    fn with_retry_off_a_failed_send_fails_its_records_at_once() {
        let config = r#"{"delay_ms": 0, "counter": 1, "sending": {"batch_size": 2, "max_delay": "1ms",
            "retry": {"enabled": false}}}"#;
        let out = assert_stage_compliance::<Queued<Down>>(config, records(4));
        assert_eq!(out.failed.len(), 4);
        assert!(out.failed.iter().all(|(_, kind)| kind == "target_down"));
        // Two batches of two, each sent once.
        assert_eq!(COUNTERS[1].load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_dropped_stage_sends_nothing_more_and_what_it_held_fails_as_unsettled() {
        let config: DownConfig = serde_json::from_str(
            r#"{"delay_ms": 100, "up": true, "counter": 2, "sending": {"batch_size": 1, "max_delay": "0s"}}"#,
        )
        .unwrap();
        let mut stage = Queued::<Down>::build(config, StageContext::detached("down")).unwrap();
        let ack = RecordingAck::default();
        let handle = FfiAck_TO::from_ptr(RArc::new(ack.clone()), TD_Opaque);
        let mut batch = Batch::with_ack(
            RArc::new(records(10).into_iter().collect::<RVec<_>>()),
            handle,
        );
        stage.process(&mut batch).unwrap();
        drop(batch);
        // The first send is under way (or about to be): drop the stage now.
        while COUNTERS[2].load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(stage);
        // One batch was being sent, and is delivered; the stage took no other (it would
        // have sent all ten, one by one) and failed what it still held, each record once.
        assert_eq!(COUNTERS[2].load(Ordering::SeqCst), 1);
        assert_eq!(ack.with(|s| s.delivered.clone()), [1]);
        let mut failed = ack.with(|s| s.failed.clone());
        failed.sort_unstable();
        let expected: Vec<(u64, String)> =
            (2..=10).map(|id| (id, "unsettled".to_owned())).collect();
        assert_eq!(failed, expected);
    }

    #[test]
    fn sending_config_reads_durations_and_checks_itself() {
        let c: SendingConfig = serde_json::from_str(
            r#"{"batch_size":10,"max_delay":"50ms","retry":{"max_interval":"1s"}}"#,
        )
        .unwrap();
        assert_eq!(c.max_delay, Duration::from_millis(50));
        assert_eq!(c.retry.max_interval, Duration::from_secs(1));
        assert!(c.check().is_ok());
        let bad = SendingConfig { queue_size: 5, ..c };
        assert_eq!(bad.check().unwrap_err().path, "sending.queue_size");
    }
}
