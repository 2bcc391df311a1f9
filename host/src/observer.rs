//! `monitoring.mode: custom`: every stage call's outcome also goes to an observer plugin,
//! so a third party can ship its own monitoring without touching the host.
//!
//! The coordinator hands each outcome to a bounded queue ([`ObserverFeed::push`]) and never
//! waits: a full queue drops the outcome and counts it. A thread of the observer's own takes
//! them off in batches and calls the plugin; a slow observer slows nothing but itself.
//!
//! Its shutdown is bounded too, since the host waits for it before it writes its summary and
//! exits. Once the last stage has stopped, the observer gets [`CATCH_UP`] to take what is
//! still queued; the rest is dropped (counted), and its `flush` is called. An observer still
//! in one call [`GIVE_UP`] after the last stage stopped is left behind: whatever it was not
//! handed yet counts as dropped, and its `flush` is not called. Either way every outcome ends
//! up delivered or counted as dropped.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc, Arc, Mutex, OnceLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use abi_stable::std_types::RSlice;
use plugin_api::{CallReport, ObserverBox};

use crate::lock;

/// Outcomes handed to the observer in one call, at most.
const BATCH: usize = 1024;

/// After the last stage has stopped, how long the observer may go on taking queued outcomes
/// before the rest is dropped and its `flush` is called.
pub const CATCH_UP: Duration = Duration::from_secs(1);

/// After the last stage has stopped, how long the host waits for the observer's thread; an
/// observer still in a call then is left behind. Under the 5 s the topology allows it.
pub const GIVE_UP: Duration = Duration::from_secs(4);

/// The coordinators' end of the observer's queue. Dropping the last one (when the last
/// worker stops) starts the observer's shutdown.
pub struct ObserverFeed {
    tx: mpsc::SyncSender<CallReport>,
    shared: Arc<Shared>,
    closed: mpsc::Sender<Instant>,
    pub stats: Arc<ObserverStats>,
}

/// What the observer was handed and what had to be dropped.
#[derive(Debug, Default)]
pub struct ObserverStats {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
}

/// Shared by the feed, the observer's thread and its stop.
struct Shared {
    stats: Arc<ObserverStats>,
    /// Outcomes offered to the queue, taken or dropped.
    offered: AtomicU64,
    /// When the last feed was dropped.
    closed_at: OnceLock<Instant>,
    /// Set when the stop gives up on the observer's thread. Taken for every count the thread
    /// makes, so that the stop's final count and the thread's never overlap.
    abandoned: Mutex<bool>,
}

impl Shared {
    /// Counts for the observer's thread; false (nothing counted) once it was left behind.
    fn count(&self, f: impl FnOnce(&ObserverStats)) -> bool {
        let abandoned = lock(&self.abandoned);
        if !*abandoned {
            f(&self.stats);
        }
        !*abandoned
    }

    /// Leaves the thread behind: what it holds or has queued counts as dropped. Returns how
    /// many outcomes that was.
    fn abandon(&self) -> u64 {
        let mut abandoned = lock(&self.abandoned);
        *abandoned = true;
        let counted = self.stats.delivered.load(Relaxed) + self.stats.dropped.load(Relaxed);
        let lost = self.offered.load(Relaxed).saturating_sub(counted);
        self.stats.dropped.fetch_add(lost, Relaxed);
        lost
    }
}

impl ObserverFeed {
    /// Queues one outcome, or drops it (counted) when the queue is full.
    pub fn push(&self, report: CallReport) {
        self.shared.offered.fetch_add(1, Relaxed);
        if self.tx.try_send(report).is_err() {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for ObserverFeed {
    fn drop(&mut self) {
        let now = Instant::now();
        let _ = self.shared.closed_at.set(now);
        let _ = self.closed.send(now);
    }
}

/// Starts the observer's thread with a queue of `capacity` outcomes. The handle returned
/// finishes once every feed is dropped (when the last worker has stopped) and the observer
/// has been flushed, or has been left behind (see the module's documentation).
pub fn start(
    mut observer: ObserverBox,
    name: &str,
    capacity: usize,
) -> std::io::Result<(Arc<ObserverFeed>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel::<CallReport>(capacity);
    let stats = Arc::new(ObserverStats::default());
    let shared = Arc::new(Shared {
        stats: stats.clone(),
        offered: AtomicU64::new(0),
        closed_at: OnceLock::new(),
        abandoned: Mutex::new(false),
    });
    // Dropped when the observer's thread ends, however it ends.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("observer-{name}"))
            .spawn(move || {
                let _done = done_tx;
                let mut batch = Vec::with_capacity(BATCH);
                while let Ok(first) = rx.recv() {
                    batch.push(first);
                    batch.extend(rx.try_iter().take(BATCH - 1));
                    observer.observe(RSlice::from_slice(&batch));
                    let n = batch.len() as u64;
                    if !shared.count(|s| {
                        s.delivered.fetch_add(n, Relaxed);
                    }) {
                        return;
                    }
                    batch.clear();
                    if shared
                        .closed_at
                        .get()
                        .is_some_and(|at| at.elapsed() >= CATCH_UP)
                    {
                        // No feed is left to send more: this empties the queue.
                        let left = rx.try_iter().count() as u64;
                        if !shared.count(|s| {
                            s.dropped.fetch_add(left, Relaxed);
                        }) {
                            return;
                        }
                        break;
                    }
                }
                observer.flush();
            })?
    };
    let (closed_tx, closed_rx) = mpsc::channel::<Instant>();
    let stop = {
        let (shared, name) = (shared.clone(), name.to_owned());
        std::thread::Builder::new()
            .name(format!("observer-{name}-stop"))
            .spawn(move || {
                let Ok(closed_at) = closed_rx.recv() else {
                    return;
                };
                let left = (closed_at + GIVE_UP).saturating_duration_since(Instant::now());
                match done_rx.recv_timeout(left) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let lost = shared.abandon();
                        tracing::error!(
                            observer = %name,
                            lost,
                            "observer still in a call {GIVE_UP:?} after the last stage stopped; leaving it behind, not flushed (the outcomes it holds or had queued count as dropped)"
                        );
                    }
                    _ => {
                        let _ = thread.join();
                    }
                }
            })?
    };
    let feed = ObserverFeed {
        tx,
        shared,
        closed: closed_tx,
        stats,
    };
    Ok((Arc::new(feed), stop))
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::{sabi_trait::TD_Opaque, std_types::RString};
    use plugin_api::{module::FfiObserver_TO, FfiObserver};
    use std::sync::atomic::AtomicBool;

    struct Sleepy {
        per_call: Duration,
        flushed: Arc<AtomicBool>,
    }

    impl FfiObserver for Sleepy {
        fn observe(&mut self, _calls: RSlice<'_, CallReport>) {
            std::thread::sleep(self.per_call);
        }

        fn flush(&mut self) {
            self.flushed.store(true, Relaxed);
        }
    }

    fn report() -> CallReport {
        CallReport {
            stage: RString::from("s"),
            operation: RString::from("process"),
            ended_at_ns: 0,
            duration_ns: 1,
            records_in: 1,
            records_out: 1,
            records_failed: 0,
            error_type: RString::new(),
        }
    }

    /// Pushes `n` outcomes, closes the feed, and waits for the stop; returns the counts, whether
    /// the observer was flushed, and how long the stop took after the close.
    fn run(per_call: Duration, n: u64) -> (u64, u64, bool, Duration) {
        let flushed = Arc::new(AtomicBool::new(false));
        let observer = FfiObserver_TO::from_value(
            Sleepy {
                per_call,
                flushed: flushed.clone(),
            },
            TD_Opaque,
        );
        let (feed, stop) = start(observer, "t", 1 << 16).unwrap();
        for _ in 0..n {
            feed.push(report());
        }
        // Let the thread get into its first call.
        std::thread::sleep(Duration::from_millis(50));
        let stats = feed.stats.clone();
        let closed = Instant::now();
        drop(feed);
        stop.join().unwrap();
        (
            stats.delivered.load(Relaxed),
            stats.dropped.load(Relaxed),
            flushed.load(Relaxed),
            closed.elapsed(),
        )
    }

    #[test]
    fn a_fast_observer_gets_everything_then_flush() {
        let (delivered, dropped, flushed, _) = run(Duration::ZERO, 5000);
        assert_eq!((delivered, dropped, flushed), (5000, 0, true));
    }

    #[test]
    fn a_slow_observer_catches_up_for_a_while_then_the_rest_is_dropped_and_it_is_flushed() {
        // 1024 outcomes per 400 ms call: 10_000 would take 4 s.
        let (delivered, dropped, flushed, took) = run(Duration::from_millis(400), 10_000);
        assert!(flushed);
        assert_eq!(delivered + dropped, 10_000);
        assert!(dropped > 0 && delivered > 0, "{delivered} {dropped}");
        assert!(took < GIVE_UP, "{took:?}");
    }

    #[test]
    fn a_stuck_observer_is_left_behind_and_what_it_holds_counts_as_dropped() {
        let (delivered, dropped, flushed, took) = run(Duration::from_secs(3600), 10);
        assert_eq!((delivered, dropped, flushed), (0, 10, false));
        assert!(
            took >= GIVE_UP && took < GIVE_UP + Duration::from_secs(2),
            "{took:?}"
        );
    }
}
