//! Health: a check per component (each stage, whose exporters also answer for their target;
//! each source socket; the event bus), each with a timeout, run every `health.interval` and
//! cached in between. A change of status is logged and emitted as an event.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use plugin_api::HealthStatus;
use serde::{Serialize, Serializer};
use tokio::sync::watch;

use crate::{clock::unix_secs, config::HealthConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    Stage,
    Exporter,
    Source,
    EventBus,
}

/// A check: resolves to a status and a reason (empty when healthy).
pub type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, (HealthStatus, String)> + Send + Sync>;

/// A component and how to check it.
pub struct Component {
    pub name: String,
    pub kind: ComponentKind,
    pub check: CheckFn,
}

fn status_str<S: Serializer>(s: &HealthStatus, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.as_str())
}

/// The last result of one component's check.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentHealth {
    pub component: String,
    pub kind: ComponentKind,
    #[serde(serialize_with = "status_str")]
    pub status: HealthStatus,
    pub reason: String,
    /// Unix seconds.
    pub checked_at: f64,
    pub check_ms: f64,
}

/// What a status change looks like, for events and logs.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub component: String,
    pub from: HealthStatus,
    pub to: HealthStatus,
    pub reason: String,
}

/// Receives every check result and every change (the event bus, when there is one).
pub trait HealthListener: Send + Sync {
    fn checked(&self, result: &ComponentHealth);
    fn changed(&self, change: &StatusChange);
}

/// The health view served by /health/live and /health/ready.
#[derive(Debug, Clone, Serialize)]
pub struct HealthView {
    #[serde(serialize_with = "status_str")]
    pub status: HealthStatus,
    pub ready: bool,
    /// Why the host is not ready (empty when it is).
    pub reasons: Vec<String>,
    pub components: Vec<ComponentHealth>,
}

pub struct Health {
    config: HealthConfig,
    components: Vec<Component>,
    cache: RwLock<(Option<Instant>, Vec<ComponentHealth>)>,
    /// One round of checks at a time: a slower, older round must not overwrite a newer one
    /// (and report a change back and forth).
    checking: tokio::sync::Mutex<()>,
    listener: Option<Arc<dyn HealthListener>>,
}

impl Health {
    pub fn new(
        config: HealthConfig,
        components: Vec<Component>,
        listener: Option<Arc<dyn HealthListener>>,
    ) -> Self {
        Health {
            config,
            components,
            cache: RwLock::new((None, Vec::new())),
            checking: tokio::sync::Mutex::new(()),
            listener,
        }
    }

    /// Runs every check (concurrently, each bounded by the timeout) and updates the cache.
    pub async fn check_now(&self) -> Vec<ComponentHealth> {
        let _round = self.checking.lock().await;
        self.run_checks().await
    }

    fn cached_if_fresh(&self) -> Option<Vec<ComponentHealth>> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        match cache.0 {
            Some(at) if at.elapsed() < self.config.interval => Some(cache.1.clone()),
            _ => None,
        }
    }

    async fn run_checks(&self) -> Vec<ComponentHealth> {
        let timeout = self.config.timeout;
        let checks = self.components.iter().map(|c| {
            let check = c.check.clone();
            async move {
                let started = Instant::now();
                let (status, reason) = match tokio::time::timeout(timeout, check()).await {
                    Ok(r) => r,
                    Err(_) => (
                        HealthStatus::Unhealthy,
                        format!("health check timed out after {timeout:?}"),
                    ),
                };
                ComponentHealth {
                    component: c.name.clone(),
                    kind: c.kind,
                    status,
                    reason,
                    checked_at: unix_secs(),
                    check_ms: started.elapsed().as_secs_f64() * 1e3,
                }
            }
        });
        let results = futures::future::join_all(checks).await;
        let previous = {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            let previous = std::mem::replace(&mut cache.1, results.clone());
            cache.0 = Some(Instant::now());
            previous
        };
        for r in &results {
            if let Some(l) = &self.listener {
                l.checked(r);
            }
            let before = previous
                .iter()
                .find(|p| p.component == r.component)
                .map_or(HealthStatus::Healthy, |p| p.status);
            if before != r.status {
                let change = StatusChange {
                    component: r.component.clone(),
                    from: before,
                    to: r.status,
                    reason: r.reason.clone(),
                };
                match r.status {
                    HealthStatus::Healthy => {
                        tracing::info!(component = %r.component, from = before.as_str(), "component healthy again")
                    }
                    _ => {
                        tracing::warn!(component = %r.component, status = r.status.as_str(), reason = %r.reason, "component health changed")
                    }
                }
                if let Some(l) = &self.listener {
                    l.changed(&change);
                }
            }
        }
        results
    }

    /// The cached results, checking first if they are older than the interval.
    pub async fn current(&self) -> Vec<ComponentHealth> {
        if let Some(results) = self.cached_if_fresh() {
            return results;
        }
        let _round = self.checking.lock().await;
        // Another caller may have checked while this one waited.
        match self.cached_if_fresh() {
            Some(results) => results,
            None => self.run_checks().await,
        }
    }

    /// Ready: every source is up and every stage healthy.
    pub async fn view(&self) -> HealthView {
        let components = self.current().await;
        let reasons: Vec<String> = components
            .iter()
            .filter(|c| c.kind != ComponentKind::EventBus && c.status != HealthStatus::Healthy)
            .map(|c| format!("{} is {}: {}", c.component, c.status.as_str(), c.reason))
            .collect();
        let status = components
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        HealthView {
            status,
            ready: reasons.is_empty(),
            reasons,
            components,
        }
    }

    /// Checks every `interval` until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => { self.check_now().await; }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    fn component(name: &str, kind: ComponentKind, state: Arc<AtomicU8>) -> Component {
        Component {
            name: name.into(),
            kind,
            check: Arc::new(move || {
                let state = state.clone();
                Box::pin(async move {
                    match state.load(Ordering::Relaxed) {
                        0 => (HealthStatus::Healthy, String::new()),
                        1 => (HealthStatus::Unhealthy, "down".to_string()),
                        _ => {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            (HealthStatus::Healthy, String::new())
                        }
                    }
                })
            }),
        }
    }

    #[derive(Default)]
    struct Changes(std::sync::Mutex<Vec<(String, HealthStatus)>>);
    impl HealthListener for Changes {
        fn checked(&self, _: &ComponentHealth) {}
        fn changed(&self, c: &StatusChange) {
            self.0.lock().unwrap().push((c.component.clone(), c.to));
        }
    }

    #[tokio::test]
    async fn readiness_follows_components_and_changes_are_reported() {
        let stage = Arc::new(AtomicU8::new(0));
        let bus = Arc::new(AtomicU8::new(1));
        let changes = Arc::new(Changes::default());
        let config = HealthConfig {
            interval: Duration::from_millis(0),
            timeout: Duration::from_millis(100),
            error_rate_threshold: 0.5,
        };
        let health = Health::new(
            config,
            vec![
                component("stage/a", ComponentKind::Stage, stage.clone()),
                component("event_bus", ComponentKind::EventBus, bus.clone()),
            ],
            Some(changes.clone()),
        );
        // An unhealthy bus is reported but does not make the host unready.
        let v = health.view().await;
        assert!(v.ready, "{v:?}");
        assert_eq!(v.status, HealthStatus::Unhealthy);
        stage.store(1, Ordering::Relaxed);
        let v = health.view().await;
        assert!(!v.ready);
        assert!(v.reasons[0].contains("stage/a is unhealthy: down"), "{v:?}");
        stage.store(2, Ordering::Relaxed); // hangs: the timeout answers
        let v = health.view().await;
        assert!(v.reasons[0].contains("timed out"), "{v:?}");
        stage.store(0, Ordering::Relaxed);
        assert!(health.view().await.ready);
        let seen = changes.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                ("event_bus".to_string(), HealthStatus::Unhealthy),
                ("stage/a".to_string(), HealthStatus::Unhealthy),
                ("stage/a".to_string(), HealthStatus::Healthy),
            ]
        );
    }
}
