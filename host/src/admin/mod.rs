//! The admin HTTP API (127.0.0.1:9464 by default): `/metrics` (Prometheus text),
//! `/health/live`, `/health/ready`, `/api/metrics` (the monitor's snapshot as JSON) and
//! `/api/pipeline` (the running graph with per-stage totals).

mod exposition;
mod metrics;
mod server;

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Extension, Json, Router,
};
use serde::Serialize;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    config::AdminConfig, events::BusHandle, health::Health, monitor::Monitor,
    telemetry::ExportStats,
};
pub use metrics::LATENCY_BUCKETS;
use server::ConnectionStats;

/// The running graph, as /api/pipeline shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineGraph {
    pub file: String,
    pub sources: Vec<SourceView>,
    pub stages: Vec<StageView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceView {
    pub name: String,
    pub socket: String,
    pub endpoint: String,
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageView {
    pub name: String,
    pub plugin: String,
    pub kind: &'static str,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// The worker thread that calls it (`runtime.fuse`), named after its first stage.
    pub thread: String,
}

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub monitor: Arc<Monitor>,
    pub health: Arc<Health>,
    pub graph: Arc<PipelineGraph>,
    pub bus: Option<BusHandle>,
    /// Export outcomes of `monitoring.otlp`, when it is set.
    pub telemetry: Option<Arc<ExportStats>>,
}

/// The API, without a server: tests can call it directly.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(prometheus))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/api/metrics", get(api_metrics))
        .route("/api/pipeline", get(api_pipeline))
        .with_state(state)
}

/// Serves the API on `listener` until `stop` turns true, within `config`'s limits: the time a
/// request head may take, the time a connection may stay idle, and how many connections are
/// served at once (see [`server`]). Returns soon after `stop`, whatever clients still hold.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    config: AdminConfig,
    stop: watch::Receiver<bool>,
) {
    let stats = Arc::new(ConnectionStats::default());
    // The counts belong to this server, not to the API: `router` alone has none to show.
    let app = router(state).layer(Extension(stats.clone()));
    server::run(listener, app, &config, stats, stop).await;
}

async fn prometheus(
    State(state): State<AdminState>,
    connections: Option<Extension<Arc<ConnectionStats>>>,
) -> Response {
    let connections = connections.map(|Extension(stats)| stats.counts());
    let body = metrics::render(&state, connections).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn live(State(state): State<AdminState>) -> Response {
    // Answering at all is the proof of life; the components are there for the reader.
    let view = state.health.view().await;
    (StatusCode::OK, Json(serde_json::json!({ "live": true, "status": view.status.as_str(), "components": view.components }))).into_response()
}

async fn ready(State(state): State<AdminState>) -> Response {
    let view = state.health.view().await;
    let code = if view.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(view)).into_response()
}

async fn api_metrics(State(state): State<AdminState>) -> Response {
    let mut snap = serde_json::to_value(state.monitor.snapshot()).unwrap_or_default();
    if let (Some(bus), Some(obj)) = (&state.bus, snap.as_object_mut()) {
        obj.insert(
            "events".into(),
            serde_json::to_value(bus.stats()).unwrap_or_default(),
        );
    }
    Json(snap).into_response()
}

async fn api_pipeline(State(state): State<AdminState>) -> Response {
    let snap = state.monitor.snapshot();
    let mut graph = serde_json::to_value(&*state.graph).unwrap_or_default();
    if let Some(stages) = graph.get_mut("stages").and_then(|s| s.as_array_mut()) {
        for stage in stages {
            let name = stage
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_owned();
            if let Some(s) = snap.stages.iter().find(|s| s.stage == name) {
                stage["totals"] = serde_json::to_value(&s.counts).unwrap_or_default();
            }
        }
    }
    graph["totals"] = serde_json::to_value(&snap.pipeline).unwrap_or_default();
    Json(graph).into_response()
}
