//! /api/vhosts, /api/users and /api/permissions, shaped as RabbitMQ's. Changes need the
//! `administrator` tag and persist in the store.

use super::error::{lenient, parse_body};
use super::paging::{json_list, plain_or_paged, ListParams};
use super::{change, checked, node_name, ApiError, ApiResult, ApiUser, St};
use crate::auth::{Permission, User, VhostMeta};
use crate::cluster::access::{PermissionDef, UserDef, VhostDef};
use crate::cluster::meta::MetaOp;
use crate::ServerState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/vhosts", get(list_vhosts))
        .route(
            "/api/vhosts/{name}",
            get(show_vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/vhosts/{name}/permissions", get(vhost_permissions))
        .route("/api/users", get(list_users))
        .route(
            "/api/users/without-permissions",
            get(users_without_permissions),
        )
        .route(
            "/api/users/{name}",
            get(show_user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{name}/permissions", get(user_permissions))
        .route("/api/permissions", get(list_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(show_permission)
                .put(put_permission)
                .delete(delete_permission),
        )
}

/// Tags as RabbitMQ accepts them: an array, or one comma-separated string.
pub fn parse_tags(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

pub fn vhost_json(st: &ServerState, m: &VhostMeta) -> Value {
    let (mut ready, mut unacked) = (0u64, 0u64);
    if let Some(v) = st.broker.vhost(&m.name) {
        for q in v.queue_list() {
            let s = q.snapshot();
            ready += s.ready;
            unacked += s.unacked;
        }
    }
    json!({
        "name": m.name,
        "description": m.description,
        "tags": m.tags,
        "default_queue_type": m.default_queue_type.clone().unwrap_or_else(|| "classic".into()),
        "metadata": {
            "description": m.description,
            "tags": m.tags,
            "default_queue_type": m.default_queue_type.clone().unwrap_or_else(|| "classic".into()),
        },
        "tracing": false,
        "cluster_state": { node_name(): "running" },
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    })
}

async fn list_vhosts(State(st): St, Query(p): Query<ListParams>) -> ApiResult<Json<Value>> {
    let all = st
        .users
        .vhosts()
        .iter()
        .map(|m| vhost_json(&st, m))
        .collect();
    Ok(Json(json_list(&p, all)?))
}

async fn show_vhost(State(st): St, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let m = st.users.vhost(&name).ok_or(ApiError::NotFound)?;
    Ok(Json(vhost_json(&st, &m)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct VhostBody {
    description: Option<String>,
    tags: Option<Value>,
    default_queue_type: Option<String>,
    /// Checked as RabbitMQ checks it ("true"/"false" too); Warren has no tracing, so unused.
    #[serde(deserialize_with = "lenient::opt_bool")]
    #[allow(dead_code)]
    tracing: Option<bool>,
}

async fn put_vhost(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let b: VhostBody = parse_body(&body)?;
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::bad("vhost name must be 1 to 255 bytes"));
    }
    let created = st.users.vhost(&name).is_none() || st.broker.vhost(&name).is_none();
    let def = VhostDef {
        name: name.clone(),
        description: b.description,
        tags: b.tags.map(|t| parse_tags(Some(&t))),
        default_queue_type: b.default_queue_type,
    };
    // As in RabbitMQ's management UI: the creator may use what it created (given only if the
    // vhost is new and the creator has no permission on it).
    let grant = Some(Box::new(PermissionDef {
        user: u.name.clone(),
        vhost: name,
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    }));
    change(&st, MetaOp::PutVhost { def, grant }).await?;
    if created {
        Ok(StatusCode::CREATED)
    } else {
        Ok(StatusCode::NO_CONTENT)
    }
}

async fn delete_vhost(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    // Its connections are closed (on every node), as RabbitMQ closes them.
    change(&st, MetaOp::DeleteVhost { name }).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn user_json(u: &User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
        "limits": u.limits,
    })
}

async fn list_users(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    let all = st.users.users().iter().map(user_json).collect();
    Ok(Json(json_list(&p, all)?))
}

async fn users_without_permissions(
    State(st): St,
    Extension(u): Extension<ApiUser>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    let perms = st.users.permissions();
    Ok(Json(Value::Array(
        st.users
            .users()
            .iter()
            .filter(|u| !perms.iter().any(|p| p.user == u.name))
            .map(user_json)
            .collect(),
    )))
}

async fn show_user(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    Ok(Json(user_json(
        &st.users.user(&name).ok_or(ApiError::NotFound)?,
    )))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct UserBody {
    pub password: Option<String>,
    pub password_hash: Option<String>,
    pub hashing_algorithm: Option<String>,
    pub tags: Option<Value>,
}

/// The user a PUT (or an import) describes: a clear password is hashed here, once; what is
/// not given (password, tags, limits) the user keeps.
pub fn user_def(name: &str, b: UserBody) -> UserDef {
    UserDef {
        name: name.to_owned(),
        password: crate::broker::admin::password(
            b.password.as_deref(),
            b.password_hash.as_deref(),
            b.hashing_algorithm.as_deref(),
        ),
        tags: b.tags.map(|t| parse_tags(Some(&t))),
        // Limits are set apart (/api/user-limits); a PUT of the user keeps them.
        limits: None,
    }
}

async fn put_user(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let b: UserBody = parse_body(&body)?;
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::bad("user name must be 1 to 255 bytes"));
    }
    let def = user_def(&name, b);
    checked(&st, |a| a.check_user(&def)).await?;
    let existed = st.users.user(&name).is_some();
    change(&st, MetaOp::PutUser { def }).await?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

async fn delete_user(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    // Its connections are closed (on every node), as RabbitMQ closes them.
    change(&st, MetaOp::DeleteUser { name }).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn permission_json(p: &Permission) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "configure": p.configure,
        "write": p.write,
        "read": p.read,
    })
}

fn permission_list(p: &ListParams, ps: impl Iterator<Item = Permission>) -> ApiResult<Json<Value>> {
    Ok(Json(plain_or_paged(
        p,
        ps.map(|p| permission_json(&p)).collect(),
    )?))
}

async fn list_permissions(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    permission_list(&p, st.users.permissions().into_iter())
}

async fn vhost_permissions(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(v): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    st.users.vhost(&v).ok_or(ApiError::NotFound)?;
    permission_list(
        &p,
        st.users.permissions().into_iter().filter(|x| x.vhost == v),
    )
}

async fn user_permissions(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(name): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    st.users.user(&name).ok_or(ApiError::NotFound)?;
    permission_list(
        &p,
        st.users
            .permissions()
            .into_iter()
            .filter(|x| x.user == name),
    )
}

async fn show_permission(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    let p = st.users.permission(&user, &v).ok_or(ApiError::NotFound)?;
    Ok(Json(permission_json(&p)))
}

#[derive(Deserialize)]
pub struct PermissionBody {
    pub configure: String,
    pub write: String,
    pub read: String,
}

async fn put_permission(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let b: PermissionBody = parse_body(&body)?;
    let def = PermissionDef {
        user: user.clone(),
        vhost: v.clone(),
        configure: b.configure,
        write: b.write,
        read: b.read,
    };
    checked(&st, |a| a.check_permission(&def)).await?;
    let existed = st.users.permission(&user, &v).is_some();
    change(&st, MetaOp::PutPermission { def }).await?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

async fn delete_permission(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    change(&st, MetaOp::DeletePermission { user, vhost: v }).await?;
    Ok(StatusCode::NO_CONTENT)
}
