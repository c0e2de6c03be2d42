//! The cluster through the API: Warren's `/api/warren/cluster` (status, join, forget), which
//! `warrenctl cluster_status`, `join_cluster` and `forget_cluster_node` and the dashboard's
//! nodes panel call. `/api/nodes` (in overview.rs) lists every member.
//!
//! The status's `cluster_link` is this node's cluster link address (what another node joins it
//! by), or null on a node without `[cluster]`; `members` is empty while a node with `[cluster]`
//! has not yet formed or joined a cluster.

use super::error::parse_body;
use super::{ApiError, ApiResult, ApiUser, St};
use crate::ServerState;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/warren/cluster", get(status))
        .route("/api/warren/cluster/join", post(join))
        .route("/api/warren/cluster/nodes/{name}", delete(forget))
        .route(
            "/api/warren/queues/{vhost}/{name}/members",
            post(add_member),
        )
        .route(
            "/api/warren/queues/{vhost}/{name}/members/{node}",
            delete(delete_member),
        )
        .route("/api/warren/quorum/grow", post(grow))
        .route("/api/warren/quorum/shrink", post(shrink))
        .route("/api/warren/stages", get(stages))
}

/// Per-stage counters (`observe::stages`): cumulative since start; read twice for rates.
async fn stages(Extension(u): Extension<ApiUser>) -> ApiResult<Json<Value>> {
    u.require_monitor()?;
    Ok(Json(json!(crate::observe::stages::snapshot())))
}

fn not_clustered() -> ApiError {
    ApiError::BadRequest("this node is not in a cluster (no [cluster] listen)".into())
}

async fn status(State(st): St, Extension(u): Extension<ApiUser>) -> ApiResult<Json<Value>> {
    u.require_monitor()?;
    let Some(c) = st.broker.cluster() else {
        return Ok(Json(json!({
            "node_name": super::node_name(),
            "cluster_link": null,
            "cluster_id": null,
            "leader": null,
            "members": [{"name": super::node_name(), "running": true, "voter": true,
                         "leader": false, "me": true}],
        })));
    };
    let mut v = serde_json::to_value(c.status().await).unwrap_or(Value::Null);
    v["cluster_link"] = json!(c.addr);
    Ok(Json(v))
}

#[derive(Deserialize)]
struct JoinBody {
    /// The cluster link address (HOST:PORT) of a node of the cluster to join.
    node: String,
}

/// This node joins the cluster the node at `node` belongs to, as `rabbitmqctl join_cluster`.
async fn join(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let b: JoinBody = parse_body(&body)?;
    let c = st.broker.cluster().ok_or_else(not_clustered)?;
    c.join_cluster(&b.node)
        .await
        .map_err(ApiError::BadRequest)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a node from the cluster, as `rabbitmqctl forget_cluster_node`.
async fn forget(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let c = st.broker.cluster().ok_or_else(not_clustered)?;
    if name == c.name {
        return Err(ApiError::BadRequest(format!(
            "{name} cannot forget itself: ask another member"
        )));
    }
    c.forget_node(&name).await.map_err(ApiError::BadRequest)?;
    Ok(StatusCode::NO_CONTENT)
}

fn member_error(e: crate::broker::quorum::MemberError) -> ApiError {
    use crate::broker::quorum::MemberError;
    match e {
        MemberError::NotFound => ApiError::NotFound,
        MemberError::Failed(e) => ApiError::Unavailable(e),
        e => ApiError::BadRequest(e.to_string()),
    }
}

#[derive(Deserialize)]
struct NodeBody {
    node: String,
    #[serde(default)]
    strategy: Option<String>,
}

/// A replica of a quorum queue on a node, as `rabbitmq-queues add_member`.
async fn add_member(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let b: NodeBody = parse_body(&body)?;
    crate::broker::quorum::add_member(&st.broker, &vhost, &name, &b.node)
        .await
        .map_err(member_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A quorum queue's replica on a node goes, as `rabbitmq-queues delete_member`.
async fn delete_member(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((vhost, name, node)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    crate::broker::quorum::delete_member(&st.broker, &vhost, &name, &node)
        .await
        .map_err(member_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `rabbitmq-queues grow NODE all|even`: the queues changed, with their new sizes.
async fn grow(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    let b: NodeBody = parse_body(&body)?;
    let even = match b.strategy.as_deref().unwrap_or("all") {
        "all" => false,
        "even" => true,
        s => {
            return Err(ApiError::BadRequest(format!(
                "strategy '{s}' is not recognised."
            )))
        }
    };
    let rows = crate::broker::quorum::grow(&st.broker, &b.node, even).await;
    Ok(Json(serde_json::to_value(rows).unwrap_or(Value::Null)))
}

/// `rabbitmq-queues shrink NODE`: the queues changed, with their new sizes.
async fn shrink(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    let b: NodeBody = parse_body(&body)?;
    let rows = crate::broker::quorum::shrink(&st.broker, &b.node).await;
    Ok(Json(serde_json::to_value(rows).unwrap_or(Value::Null)))
}
