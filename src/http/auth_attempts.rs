//! `/api/auth/attempts/{node}`: login attempts per protocol, as RabbitMQ's management API
//! shows them (monitoring users and administrators). `/source` is the per-address breakdown
//! RabbitMQ fills only with `track_auth_attempt_source` on, off by default: an empty list here.

use super::{node_name, ApiError, ApiResult, ApiUser, St};
use crate::auth::throttle::Protocol;
use crate::ServerState;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/auth/attempts/{node}", get(attempts))
        .route("/api/auth/attempts/{node}/source", get(sources))
}

fn check(u: &ApiUser, node: &str) -> ApiResult<()> {
    u.require_monitor()?;
    if node != node_name() {
        return Err(ApiError::NotFound);
    }
    Ok(())
}

async fn attempts(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(node): Path<String>,
) -> ApiResult<Json<Value>> {
    check(&u, &node)?;
    let rows: Vec<Value> = Protocol::ALL
        .iter()
        .map(|p| {
            let c = st.logins.counts(*p);
            json!({
                "protocol": p.label(),
                "auth_attempts": c.total(),
                "auth_attempts_failed": c.failed,
                "auth_attempts_succeeded": c.succeeded,
            })
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}

async fn sources(
    Extension(u): Extension<ApiUser>,
    Path(node): Path<String>,
) -> ApiResult<Json<Value>> {
    check(&u, &node)?;
    Ok(Json(json!([])))
}
