//! /api/vhosts, /api/users and /api/permissions, shaped as RabbitMQ's. Changes need the
//! `administrator` tag and persist in the store.

use super::error::{lenient, parse_body};
use super::paging::{json_list, plain_or_paged, ListParams};
use super::{node_name, ApiError, ApiResult, ApiUser, St};
use crate::auth::{hash_password, Permission, User, VhostMeta, SHA256};
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

/// Create or update a vhost (with `grant`, a permission on it), as an import or a PUT does:
/// stored first, so a vhost the store refuses is not created.
pub fn create_vhost(st: &ServerState, meta: VhostMeta, grant: Option<Permission>) -> ApiResult<()> {
    let name = meta.name.clone();
    st.users.put_vhost(meta, grant)?;
    st.broker.add_vhost(&name, st.store.clone());
    Ok(())
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
    let old = st.users.vhost(&name);
    let meta = VhostMeta {
        name: name.clone(),
        description: b
            .description
            .or_else(|| old.as_ref().map(|o| o.description.clone()))
            .unwrap_or_default(),
        tags: match b.tags {
            Some(t) => parse_tags(Some(&t)),
            None => old.as_ref().map(|o| o.tags.clone()).unwrap_or_default(),
        },
        default_queue_type: b
            .default_queue_type
            .or_else(|| old.as_ref().and_then(|o| o.default_queue_type.clone())),
        limits: old.as_ref().map(|o| o.limits.clone()).unwrap_or_default(),
    };
    let created = old.is_none() || st.broker.vhost(&name).is_none();
    // As in RabbitMQ's management UI: the creator may use what it created.
    let grant = (created && st.users.permission(&u.name, &name).is_none()).then(|| Permission {
        user: u.name.clone(),
        vhost: name,
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    });
    create_vhost(&st, meta, grant)?;
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
    if st.users.vhost(&name).is_none() && st.broker.vhost(&name).is_none() {
        return Err(ApiError::NotFound);
    }
    // Its metadata and permissions leave the store first: if they cannot, nothing is deleted.
    st.users.delete_vhost(&name)?;
    for c in st.connections.list() {
        if c.details.lock().vhost.as_deref() == Some(name.as_str()) {
            c.close(&format!("vhost '{name}' is deleted"));
        }
    }
    st.broker.delete_vhost(&name);
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

/// The user a PUT (or an import) describes; `old` keeps its password if none is given.
pub fn user_from(name: &str, b: UserBody, old: Option<User>) -> ApiResult<User> {
    let (hash, algo) = match (b.password, b.password_hash) {
        (Some(p), _) => (hash_password(&p), SHA256.to_owned()),
        (None, Some(h)) => (h, b.hashing_algorithm.unwrap_or_else(|| SHA256.to_owned())),
        (None, None) => match &old {
            Some(o) => (o.password_hash.clone(), o.hashing_algorithm.clone()),
            None => {
                return Err(ApiError::bad(
                    "Must specify password or password_hash for a new user",
                ))
            }
        },
    };
    let tags = match b.tags {
        Some(t) => parse_tags(Some(&t)),
        None => old.as_ref().map(|o| o.tags.clone()).unwrap_or_default(),
    };
    Ok(User {
        name: name.to_owned(),
        password_hash: hash,
        hashing_algorithm: algo,
        tags,
        // Limits are set apart (/api/user-limits); a PUT of the user keeps them.
        limits: old.map(|o| o.limits).unwrap_or_default(),
    })
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
    let old = st.users.user(&name);
    let existed = old.is_some();
    st.users.put_user(user_from(&name, b, old)?)?;
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
    if st.users.delete_user(&name)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
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

/// Check a permission's patterns and that its user and vhost exist.
pub fn check_permission(st: &ServerState, p: &Permission) -> ApiResult<()> {
    if st.users.user(&p.user).is_none() {
        return Err(ApiError::bad(format!("no_such_user: {}", p.user)));
    }
    if st.broker.vhost(&p.vhost).is_none() {
        return Err(ApiError::bad(format!("no_such_vhost: {}", p.vhost)));
    }
    for (k, re) in [
        ("configure", &p.configure),
        ("write", &p.write),
        ("read", &p.read),
    ] {
        if let Err(e) = regex::RegexBuilder::new(re).size_limit(1 << 20).build() {
            return Err(ApiError::bad(format!("invalid {k} pattern '{re}': {e}")));
        }
    }
    Ok(())
}

async fn put_permission(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let b: PermissionBody = parse_body(&body)?;
    let p = Permission {
        user: user.clone(),
        vhost: v.clone(),
        configure: b.configure,
        write: b.write,
        read: b.read,
    };
    check_permission(&st, &p)?;
    let existed = st.users.permission(&user, &v).is_some();
    st.users.put_permission(p)?;
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
    if st.users.delete_permission(&user, &v)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
