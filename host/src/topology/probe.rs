//! What a stage's worker shares with the world outside its thread: whether the stage is in a
//! call and since when, and its last health answer.
//!
//! The worker owns its stage outright (no lock around it), so a health check never waits on
//! a stage that is busy, and never needs a thread of its own: it asks, and the worker answers
//! between calls, or at once when it is idle. A check that finds the stage in a call answers
//! from the stage's last report; one that finds it in the same call for longer than the
//! check's timeout calls it stuck. A worker may run several stages (`runtime.fuse`, see
//! `worker`): a check of one of them while the thread is in another's call answers from the
//! last report too, without waiting.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use plugin_api::{HealthReport, HealthStatus};
use tokio::sync::Notify;

use crate::{crash::CallMarker, lock};

/// What the stages run by one worker thread share: what wakes the thread, and whether it is
/// in a call of any of them.
#[derive(Default)]
pub struct WorkerThread {
    /// Wakes the idle worker: a health answer is wanted, or records were settled or handed
    /// back. One permit is kept when the worker is not waiting, so no wake-up is lost.
    wake: Notify,
    busy: AtomicBool,
}

impl WorkerThread {
    /// Resolves when something may be waiting for the worker (see `wake`).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Shared between a stage's worker and its health check.
pub struct StageProbe {
    /// The clock `busy_since` counts from.
    epoch: Instant,
    /// When the current call began, in ns since `epoch` plus one; 0 when not in a call.
    busy_since: AtomicU64,
    /// A health answer is wanted.
    requested: AtomicBool,
    /// The thread that runs the stage.
    thread: Arc<WorkerThread>,
    /// The last answer and when it was given.
    last: Mutex<Option<(HealthReport, Instant)>>,
    answered: Notify,
    marker: CallMarker,
}

impl StageProbe {
    /// The probe of a stage that `thread` runs.
    pub fn new(marker: CallMarker, thread: Arc<WorkerThread>) -> StageProbe {
        StageProbe {
            epoch: Instant::now(),
            busy_since: AtomicU64::new(0),
            requested: AtomicBool::new(false),
            thread,
            last: Mutex::new(None),
            answered: Notify::new(),
            marker,
        }
    }

    // ---- the worker's side ----

    /// Runs one call into the plugin, marked as such for health checks and crash reports.
    #[inline]
    pub fn call<T>(&self, f: impl FnOnce() -> T) -> T {
        let since = self.epoch.elapsed().as_nanos() as u64 + 1;
        self.busy_since.store(since, Ordering::Relaxed);
        self.thread.busy.store(true, Ordering::Relaxed);
        self.marker.enter();
        let out = f();
        self.marker.leave();
        self.thread.busy.store(false, Ordering::Relaxed);
        self.busy_since.store(0, Ordering::Relaxed);
        out
    }

    /// The thread that runs the stage.
    pub fn thread(&self) -> &Arc<WorkerThread> {
        &self.thread
    }

    /// Whether a health answer is wanted (and takes the request).
    #[inline]
    pub fn take_request(&self) -> bool {
        self.requested.load(Ordering::Relaxed) && self.requested.swap(false, Ordering::AcqRel)
    }

    /// Stores the stage's answer.
    pub fn answer(&self, report: HealthReport) {
        *lock(&self.last) = Some((report, Instant::now()));
        self.answered.notify_waiters();
    }

    // ---- the health check's side ----

    /// How long the stage has been in its current call, if it is in one.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(since - 1)),
            ),
        }
    }

    fn last(&self) -> Option<(HealthReport, Instant)> {
        lock(&self.last).clone()
    }

    /// The stage's health, asked of the worker. Waits at most `timeout`, and not at all when
    /// the stage is in a call: then its last report stands (or, in a call longer than
    /// `timeout`, it is stuck).
    pub async fn check(&self, timeout: Duration) -> (HealthStatus, String) {
        if let Some(busy) = self.busy_for() {
            self.requested.store(true, Ordering::Release);
            return self.while_busy(busy, timeout);
        }
        if self.thread.busy.load(Ordering::Relaxed) {
            // In another stage's call on the same thread: that one's check says whether it
            // is stuck; this one answers after it.
            self.requested.store(true, Ordering::Release);
            return self.while_busy(Duration::ZERO, timeout);
        }
        let asked = Instant::now();
        let answered = self.answered.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        self.requested.store(true, Ordering::Release);
        self.thread.wake();
        if tokio::time::timeout(timeout, answered).await.is_ok() {
            if let Some((report, at)) = self.last() {
                if at >= asked {
                    return (report.status(), report.reason().to_string());
                }
            }
        }
        match self.busy_for() {
            Some(busy) => self.while_busy(busy, timeout),
            None => (
                HealthStatus::Unhealthy,
                format!("the stage did not answer within {timeout:?}"),
            ),
        }
    }

    fn while_busy(&self, busy: Duration, timeout: Duration) -> (HealthStatus, String) {
        if busy > timeout {
            return (
                HealthStatus::Unhealthy,
                format!(
                    "in one call for {:.1} s (longer than the health timeout, {timeout:?}): stuck?",
                    busy.as_secs_f64()
                ),
            );
        }
        match self.last() {
            Some((report, _)) => (report.status(), report.reason().to_string()),
            None => (HealthStatus::Healthy, String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_worker_answers_and_a_stuck_one_is_reported_without_waiting() {
        let probe = Arc::new(StageProbe::new(
            CallMarker::new("s", "built-in"),
            Arc::default(),
        ));
        // A worker thread that answers requests until told to block in a call.
        let (block_tx, block_rx) = std::sync::mpsc::channel::<()>();
        let worker = {
            let probe = probe.clone();
            std::thread::spawn(move || loop {
                futures::executor::block_on(probe.thread().woken());
                if probe.take_request() {
                    probe.answer(HealthReport::new(HealthStatus::Degraded, "slow target"));
                }
                if block_rx.try_recv().is_ok() {
                    probe.call(|| std::thread::sleep(Duration::from_millis(600)));
                    return;
                }
            })
        };
        let (status, reason) = probe.check(Duration::from_secs(5)).await;
        assert_eq!(
            (status, reason.as_str()),
            (HealthStatus::Degraded, "slow target")
        );

        block_tx.send(()).unwrap();
        probe.thread().wake();
        while probe.busy_for().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // In a call, shorter than the timeout: the last report, at once.
        let started = Instant::now();
        let (status, _) = probe.check(Duration::from_secs(5)).await;
        assert_eq!(status, HealthStatus::Degraded);
        assert!(started.elapsed() < Duration::from_millis(100));
        // Longer than the timeout: stuck.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, reason) = probe.check(Duration::from_millis(50)).await;
        assert_eq!(status, HealthStatus::Unhealthy);
        assert!(reason.contains("in one call"), "{reason}");
        worker.join().unwrap();
    }

    #[tokio::test]
    async fn a_stage_whose_thread_is_in_another_stages_call_answers_at_once() {
        let thread = Arc::new(WorkerThread::default());
        let first = Arc::new(StageProbe::new(
            CallMarker::new("first", "built-in"),
            thread.clone(),
        ));
        let second = StageProbe::new(CallMarker::new("second", "built-in"), thread);
        second.answer(HealthReport::new(HealthStatus::Degraded, "earlier"));
        let (in_call_tx, in_call_rx) = std::sync::mpsc::channel::<()>();
        let worker = {
            let first = first.clone();
            std::thread::spawn(move || {
                first.call(|| {
                    in_call_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(500));
                })
            })
        };
        in_call_rx.recv().unwrap();
        let started = Instant::now();
        let (status, reason) = second.check(Duration::from_secs(5)).await;
        assert_eq!(
            (status, reason.as_str()),
            (HealthStatus::Degraded, "earlier")
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        // Asked, so the worker answers once it is free.
        assert!(second.take_request());
        worker.join().unwrap();
    }
}
