//! The in-memory bus: events go straight to this process's subscribers.
//!
//! Each subscriber has a bounded queue. Publishing tries each matching queue once and moves
//! on: a full queue loses the event (counted, for the subscriber and for the bus) rather than
//! slowing the stage that published it. Publishing takes a read lock on the subscriber list
//! and never waits for anything else, so stage workers (plain threads) and async tasks can
//! both publish.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc, RwLock,
};

use tokio::sync::mpsc::{self, error::TrySendError};

use super::{BusHealth, BusStats, Event, EventBus, Pattern};

struct Subscriber {
    pattern: Pattern,
    queue: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

/// An in-process event bus with bounded, lossy subscriber queues.
#[derive(Default)]
pub struct MemoryBus {
    subscribers: RwLock<Vec<Subscriber>>,
    published: AtomicU64,
    dropped: AtomicU64,
}

impl MemoryBus {
    pub fn new() -> MemoryBus {
        MemoryBus::default()
    }

    /// Subscriptions still open (closed ones are forgotten on the next publish that meets them).
    pub fn subscriber_count(&self) -> usize {
        self.read().iter().filter(|s| !s.queue.is_closed()).count()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Subscriber>> {
        // A panic while holding the lock cannot leave the list half-written (push and retain
        // do not unwind midway in a way that matters here), so a poisoned lock is still usable.
        self.subscribers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Subscriber>> {
        self.subscribers.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers `event` to each matching subscriber once; returns how many queues were full.
    fn deliver(&self, event: &Event) -> u64 {
        let mut full = 0;
        let mut closed = false;
        for s in self.read().iter() {
            if !s.pattern.matches(event.kind) {
                continue;
            }
            match s.queue.try_send(event.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    s.dropped.fetch_add(1, Relaxed);
                    full += 1;
                }
                Err(TrySendError::Closed(_)) => closed = true,
            }
        }
        if closed {
            self.write().retain(|s| !s.queue.is_closed());
        }
        full
    }
}

impl EventBus for MemoryBus {
    fn publish(&self, event: Event) {
        self.published.fetch_add(1, Relaxed);
        let full = self.deliver(&event);
        if full > 0 {
            self.dropped.fetch_add(full, Relaxed);
        }
    }

    fn subscribe(&self, pattern: Pattern, capacity: usize) -> Subscription {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        self.write().push(Subscriber {
            pattern,
            queue,
            dropped: dropped.clone(),
        });
        Subscription { rx, dropped }
    }

    fn stats(&self) -> BusStats {
        BusStats {
            bus: "memory",
            published: self.published.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            publish_failed: 0,
            written: 0,
            subscribers: self.subscriber_count(),
            healthy: true,
            reason: String::new(),
        }
    }

    fn health(&self) -> BusHealth {
        BusHealth {
            healthy: true,
            reason: String::new(),
        }
    }
}

/// The receiving end of a subscription: a bounded queue of the events that matched its
/// pattern. Dropping it unsubscribes.
pub struct Subscription {
    rx: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next event; `None` once the bus is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next event on a plain thread. Panics if called from async code (use
    /// [`Subscription::recv`] there).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// Events this subscription lost because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::events::{samples::sample_event, EventKind, EventKind as K};

    fn drain(s: &mut Subscription) -> Vec<EventKind> {
        std::iter::from_fn(|| s.try_recv())
            .map(|e| e.kind)
            .collect()
    }

    #[test]
    fn subscribers_get_what_their_pattern_matches() {
        let bus = MemoryBus::new();
        let mut perf = bus.subscribe("performance.*".parse().unwrap(), 16);
        let mut all = bus.subscribe(Pattern::all(), 16);
        let mut status = bus.subscribe("health.status.changed".parse().unwrap(), 16);
        let mut none = bus.subscribe("pipeline.stopped".parse().unwrap(), 16);
        let sent = [
            K::PipelineStarted,
            K::PhaseStart,
            K::HealthStatusChanged,
            K::OperationComplete,
            K::HealthCheckCompleted,
        ];
        for k in sent {
            bus.publish(sample_event(k));
        }
        assert_eq!(drain(&mut perf), vec![K::PhaseStart, K::OperationComplete]);
        assert_eq!(drain(&mut all), sent.to_vec());
        assert_eq!(drain(&mut status), vec![K::HealthStatusChanged]);
        assert_eq!(drain(&mut none), vec![]);
        let stats = bus.stats();
        assert_eq!((stats.published, stats.dropped), (5, 0));
        assert!(stats.healthy);
        assert_eq!(stats.subscribers, 4);
    }

    #[test]
    fn a_full_subscriber_loses_events_counted_and_never_blocks() {
        let bus = Arc::new(MemoryBus::new());
        let mut slow = bus.subscribe(Pattern::all(), 2);
        let mut fast = bus.subscribe(Pattern::all(), 1000);
        // Published from a plain thread with no runtime, as stage workers do; nobody reads.
        let publisher = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                for _ in 0..1000 {
                    bus.publish(sample_event(K::OperationComplete));
                }
                started.elapsed()
            })
        };
        let took = publisher.join().unwrap();
        assert!(
            took < Duration::from_secs(2),
            "publishing blocked: {took:?}"
        );
        assert_eq!(slow.dropped(), 998);
        assert_eq!(fast.dropped(), 0);
        assert_eq!(bus.stats().dropped, 998);
        assert_eq!(bus.stats().published, 1000);
        assert_eq!(drain(&mut slow).len(), 2);
        assert_eq!(drain(&mut fast).len(), 1000);
        // Once read, the slow subscriber gets new events again.
        bus.publish(sample_event(K::PipelineStopped));
        assert_eq!(drain(&mut slow), vec![K::PipelineStopped]);
    }

    #[test]
    fn dropped_subscriptions_are_forgotten() {
        let bus = MemoryBus::new();
        let kept = bus.subscribe(Pattern::all(), 4);
        drop(bus.subscribe(Pattern::all(), 4));
        assert_eq!(bus.subscriber_count(), 1);
        bus.publish(sample_event(K::PipelineStarted));
        assert_eq!(bus.read().len(), 1);
        assert_eq!(bus.stats().dropped, 0);
        drop(kept);
    }

    #[test]
    fn many_threads_publish_concurrently() {
        let bus = Arc::new(MemoryBus::new());
        let mut sub = bus.subscribe("performance.operation.complete".parse().unwrap(), 40_000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let bus = bus.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        bus.publish(sample_event(K::OperationComplete));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(drain(&mut sub).len(), 40_000);
        assert_eq!(bus.stats().dropped, 0);
    }

    #[tokio::test]
    async fn async_receivers_wake_and_end_with_the_bus() {
        let bus = Arc::new(MemoryBus::new());
        let mut sub = bus.subscribe(Pattern::all(), 8);
        let publisher = {
            let bus = bus.clone();
            std::thread::spawn(move || bus.publish(sample_event(K::PipelineStarted)))
        };
        let e = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .expect("event within 5 s")
            .unwrap();
        assert_eq!(e.kind, K::PipelineStarted);
        publisher.join().unwrap();
        drop(bus);
        assert!(sub.recv().await.is_none());
    }
}
