//! `monitoring.mode: custom`: every stage call's outcome also goes to an observer plugin,
//! so a third party can ship its own monitoring without touching the host.
//!
//! The coordinator hands each outcome to a bounded queue ([`ObserverFeed::push`]) and never
//! waits: a full queue drops the outcome and counts it. A thread of the observer's own takes
//! them off in batches and calls the plugin; a slow observer slows nothing but itself.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc, Arc,
    },
    thread::JoinHandle,
};

use abi_stable::std_types::RSlice;
use plugin_api::{CallReport, ObserverBox};

/// Outcomes handed to the observer in one call, at most.
const BATCH: usize = 1024;

/// The coordinators' end of the observer's queue.
pub struct ObserverFeed {
    tx: mpsc::SyncSender<CallReport>,
    pub stats: Arc<ObserverStats>,
}

/// What the observer was handed and what had to be dropped.
#[derive(Debug, Default)]
pub struct ObserverStats {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
}

impl ObserverFeed {
    /// Queues one outcome, or drops it (counted) when the queue is full.
    pub fn push(&self, report: CallReport) {
        if self.tx.try_send(report).is_err() {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Starts the observer's thread with a queue of `capacity` outcomes. The thread ends (after
/// the observer's `flush`) once every feed is dropped: when the last worker has stopped.
pub fn start(
    mut observer: ObserverBox,
    name: &str,
    capacity: usize,
) -> std::io::Result<(Arc<ObserverFeed>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel::<CallReport>(capacity);
    let stats = Arc::new(ObserverStats::default());
    let thread = {
        let stats = stats.clone();
        std::thread::Builder::new()
            .name(format!("observer-{name}"))
            .spawn(move || {
                let mut batch = Vec::with_capacity(BATCH);
                while let Ok(first) = rx.recv() {
                    batch.push(first);
                    batch.extend(rx.try_iter().take(BATCH - 1));
                    observer.observe(RSlice::from_slice(&batch));
                    stats.delivered.fetch_add(batch.len() as u64, Relaxed);
                    batch.clear();
                }
                observer.flush();
            })?
    };
    Ok((Arc::new(ObserverFeed { tx, stats }), thread))
}
