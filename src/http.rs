//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process
//! is alive) and `/readyz` (streaming from PostgreSQL). Health answers are
//! JSON with a reason when not OK.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use pgfanout_core::Metrics;

/// State the endpoint reports on.
#[derive(Clone)]
pub struct HttpState {
    /// Every metric.
    pub metrics: Metrics,
    /// Whether the replication stream is running.
    pub streaming: Arc<AtomicBool>,
}

/// Binds `listen` and serves until the process ends.
pub async fn serve(listen: SocketAddr, state: HttpState) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on http.listen = {listen}; pick a free address"))?;
    tracing::info!(%listen, "serving /metrics, /healthz and /readyz");
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { json(StatusCode::OK, r#"{"status":"ok"}"#) }))
        .route("/readyz", get(ready))
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

async fn ready(axum::extract::State(state): axum::extract::State<HttpState>) -> impl IntoResponse {
    if state.streaming.load(Ordering::Acquire) {
        json(StatusCode::OK, r#"{"status":"ready"}"#)
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready","reason":"not streaming from PostgreSQL"}"#)
    }
}

fn json(status: StatusCode, body: &'static str) -> impl IntoResponse {
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}
