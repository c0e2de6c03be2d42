//! The management listener. For now: the dashboard placeholder from `web/` and RabbitMQ's
//! liveness check; the management API comes with its own issue.

use crate::ServerState;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

const INDEX_HTML: &str = include_str!("../../web/index.html");

pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/", get(|| async { axum::response::Html(INDEX_HTML) }))
        .route(
            "/api/health/checks/alive",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .with_state(state);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!("http listener stopped: {e}");
    }
}
