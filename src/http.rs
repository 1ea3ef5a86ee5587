//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (alive and
//! not wedged: no sink has had work pending without progress for longer
//! than `http.wedged_after_secs`) and `/readyz` (streaming from PostgreSQL,
//! every sink reachable and none blocked on an error; `"standby"`, also
//! 200, while another pgfanout streams from the slot and this one waits to
//! take over). Health answers are JSON with a reason, naming the sink and
//! its error, when not OK. `POST /rebuild` starts a rebuild of one sink's
//! tables and `GET /rebuild` reports on it ([`crate::rebuild`]); `POST
//! /replay` and `GET /replay` do the same for replays ([`crate::replay`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use pgfanout_core::{Metrics, SinkStatus};
use pgfanout_source::StandbyState;

/// State the endpoint reports on.
#[derive(Clone)]
pub struct HttpState {
    /// Every metric.
    pub metrics: Metrics,
    /// Whether the replication stream is running.
    pub streaming: Arc<AtomicBool>,
    /// Names of the configured sinks.
    pub sinks: Arc<Vec<String>>,
    /// Each started sink worker's state, by sink name; filled once the workers start.
    pub statuses: Arc<std::sync::RwLock<Vec<(String, SinkStatus)>>>,
    /// `http.wedged_after_secs`.
    pub wedged_after: std::time::Duration,
    /// Set while standing by for the slot.
    pub standby: StandbyState,
    /// `POST /rebuild` and `GET /rebuild` (see [`crate::rebuild`]).
    pub rebuild: crate::rebuild::RebuildControl,
    /// `POST /replay` and `GET /replay` (see [`crate::replay`]).
    pub replay: crate::replay::ReplayControl,
}

/// The answer to a `POST` that schedules a job (`/rebuild`, `/replay`): 202
/// with the scheduled job as JSON, or the refusal's status with
/// `{"error": message}`.
pub fn scheduled_answer<T: serde::Serialize>(scheduled: Result<T, (u16, String)>) -> impl IntoResponse {
    let (status, body) = match scheduled {
        Ok(scheduled) => (StatusCode::ACCEPTED, serde_json::to_string(&scheduled).unwrap_or_default()),
        Err((status, message)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            serde_json::json!({ "error": message }).to_string(),
        ),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// A 200 answer holding `value` as JSON (`GET /rebuild`, `GET /replay`).
pub fn json_answer<T: serde::Serialize>(value: &T) -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], serde_json::to_string(value).unwrap_or_default())
}

/// Binds `listen` and serves until the process ends.
pub async fn serve(listen: SocketAddr, state: HttpState) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on http.listen = {listen}; pick a free address"))?;
    tracing::info!(%listen, "serving /metrics, /healthz, /readyz, /rebuild and /replay");
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthy))
        .route("/readyz", get(ready))
        .route("/rebuild", get(crate::rebuild::endpoint::list).post(crate::rebuild::endpoint::trigger))
        .route("/replay", get(crate::replay::endpoint::list).post(crate::replay::endpoint::trigger))
        .with_state(state);
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(error = %err, "http server stopped");
        }
    }))
}

async fn metrics(axum::extract::State(state): axum::extract::State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

/// Ready = streaming from PostgreSQL and every sink's store reachable
/// (`pgfanout_sink_up` is 1; a sink not yet started counts as down), or
/// standing by: a standby is ready to take over, which is its job (and lets
/// a rolling update proceed).
async fn ready(axum::extract::State(state): axum::extract::State<HttpState>) -> impl IntoResponse {
    if let Some(reason) = state.standby.reason() {
        return json(StatusCode::OK, serde_json::json!({ "status": "standby", "reason": reason }));
    }
    let mut reasons = Vec::new();
    if !state.streaming.load(Ordering::Acquire) {
        reasons.push("not streaming from PostgreSQL".to_owned());
    }
    let down: Vec<&str> = state
        .sinks
        .iter()
        .filter(|sink| state.metrics.sink_up.get_metric_with_label_values(&[sink]).map_or(true, |up| up.get() != 1))
        .map(String::as_str)
        .collect();
    if !down.is_empty() {
        reasons.push(format!("sink(s) not connected: {}", down.join(", ")));
    }
    for (sink, status) in state.statuses.read().unwrap_or_else(|poisoned| poisoned.into_inner()).iter() {
        if let Some(error) = status.blocked_on() {
            reasons.push(format!("sink {sink} is blocked: {error}"));
        }
    }
    for sink in state.sinks.iter() {
        let remaining = state
            .metrics
            .snapshot_tables_remaining
            .get_metric_with_label_values(&[sink])
            .map_or(0, |remaining| remaining.get());
        if remaining > 0 {
            reasons.push(format!("snapshotting: sink {sink} has {remaining} table(s) left to copy"));
        }
        let failed =
            state.metrics.snapshot_tables_failed.get_metric_with_label_values(&[sink]).map_or(0, |failed| failed.get());
        if failed > 0 {
            reasons.push(format!(
                "snapshot failed: sink {sink} has {failed} table(s) that cannot be copied (see the log); \
                 retried until fixed"
            ));
        }
    }
    for sink in state.replay.paused_sinks() {
        reasons.push(format!("replaying: sink {sink} is paused while the archive is replayed into it"));
    }
    if reasons.is_empty() {
        json(StatusCode::OK, serde_json::json!({ "status": "ready" }))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "not ready", "reason": reasons.join("; ") }),
        )
    }
}

/// Healthy = not wedged: every sink with changes queued made progress
/// within `wedged_after`.
async fn healthy(axum::extract::State(state): axum::extract::State<HttpState>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    for (sink, status) in state.statuses.read().unwrap_or_else(|poisoned| poisoned.into_inner()).iter() {
        let pending =
            state.metrics.sink_queue_depth.get_metric_with_label_values(&[sink]).map_or(0, |depth| depth.get());
        let stalled = status.since_progress();
        // A batch being retried has left the queue: a blocked sink has work pending too.
        let blocked_on = status.blocked_on();
        if (pending > 0 || blocked_on.is_some()) && stalled > state.wedged_after {
            reasons.push(format!(
                "sink {sink} is wedged: no progress for {}s with work pending ({pending} transaction(s) queued; \
                 http.wedged_after_secs = {}){}",
                stalled.as_secs(),
                state.wedged_after.as_secs(),
                blocked_on.map(|error| format!("; last error: {error}")).unwrap_or_default()
            ));
        }
    }
    if reasons.is_empty() {
        json(StatusCode::OK, serde_json::json!({ "status": "ok" }))
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "status": "wedged", "reason": reasons.join("; ") }))
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> impl IntoResponse {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}
