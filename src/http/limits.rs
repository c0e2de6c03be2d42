//! /api/vhost-limits, /api/user-limits and /api/topic-permissions, shaped as RabbitMQ's
//! (3.10): bodies, list rows, status codes and refusal reasons as its management plugin
//! answers them. Changes need the `administrator` tag and persist in the store
//! ([`crate::auth`]); open connections meet them at their next operation.

use super::error::parse_body;
use super::paging::{plain_or_paged, ListParams};
use super::scope::visible;
use super::{change, checked, known, ApiError, ApiResult, ApiUser, St};
use crate::auth::limits::{self, USER_LIMITS, VHOST_LIMITS};
use crate::auth::TopicPermission;
use crate::cluster::access::TopicPermissionDef;
use crate::cluster::meta::MetaOp;
use crate::ServerState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/vhost-limits", get(list_vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(show_vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(put_vhost_limit).delete(delete_vhost_limit),
        )
        .route("/api/parameters", get(list_parameters))
        .route("/api/parameters/{component}", get(list_parameters_of))
        .route(
            "/api/parameters/{component}/{vhost}",
            get(list_vhost_parameters_of),
        )
        .route("/api/user-limits", get(list_user_limits))
        .route("/api/user-limits/{user}", get(show_user_limits))
        .route(
            "/api/user-limits/{user}/{name}",
            put(put_user_limit).delete(delete_user_limit),
        )
        .route("/api/topic-permissions", get(list_topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(show_topic_permissions)
                .put(put_topic_permission)
                .delete(delete_topic_permissions),
        )
        .route(
            "/api/users/{user}/topic-permissions",
            get(user_topic_permissions),
        )
        .route(
            "/api/vhosts/{vhost}/topic-permissions",
            get(vhost_topic_permissions),
        )
}

/// One row of a limits listing: `{"vhost": …, "value": {…}}` or `{"user": …, "value": {…}}`.
fn limits_row(key: &str, name: &str, l: &BTreeMap<String, i64>) -> Value {
    json!({ key: name, "value": l })
}

/// Every vhost's limits, as definitions export them in "parameters" (component
/// `vhost-limits`, name `limits`).
pub fn vhost_limit_parameters(st: &ServerState) -> Vec<Value> {
    st.users
        .vhosts()
        .into_iter()
        .filter(|v| !v.limits.is_empty())
        .map(|v| {
            json!({"value": v.limits, "vhost": v.name, "component": "vhost-limits", "name": "limits"})
        })
        .collect()
}

/// Runtime parameters: Warren has no others than vhost limits, which RabbitMQ lists among them
/// (component `vhost-limits`). Policymakers and administrators, as RabbitMQ.
fn parameters(
    st: &ServerState,
    u: &ApiUser,
    component: Option<&str>,
    vhost: Option<&str>,
) -> ApiResult<Json<Value>> {
    if !u.is_admin() && !u.tags.iter().any(|t| t == "policymaker") {
        return Err(ApiError::Other(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "Not policymaker user".into(),
        ));
    }
    if component.is_some_and(|c| c != "vhost-limits") {
        return Ok(Json(json!([])));
    }
    Ok(Json(Value::Array(
        vhost_limit_parameters(st)
            .into_iter()
            .filter(|p| {
                let v = p["vhost"].as_str().unwrap_or_default();
                visible(v, None) && vhost.is_none_or(|w| w == v)
            })
            .collect(),
    )))
}

async fn list_parameters(
    State(st): St,
    Extension(u): Extension<ApiUser>,
) -> ApiResult<Json<Value>> {
    parameters(&st, &u, None, None)
}

async fn list_parameters_of(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(component): Path<String>,
) -> ApiResult<Json<Value>> {
    parameters(&st, &u, Some(&component), None)
}

async fn list_vhost_parameters_of(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((component, v)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    st.users.vhost(&v).ok_or(ApiError::NotFound)?;
    parameters(&st, &u, Some(&component), Some(&v))
}

async fn list_vhost_limits(State(st): St) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(
        st.users
            .vhosts()
            .iter()
            .filter(|v| !v.limits.is_empty() && visible(&v.name, None))
            .map(|v| limits_row("vhost", &v.name, &v.limits))
            .collect(),
    )))
}

async fn show_vhost_limits(State(st): St, Path(v): Path<String>) -> ApiResult<Json<Value>> {
    let m = st.users.vhost(&v).ok_or(ApiError::NotFound)?;
    let rows = if m.limits.is_empty() {
        vec![]
    } else {
        vec![limits_row("vhost", &m.name, &m.limits)]
    };
    Ok(Json(Value::Array(rows)))
}

/// The `value` of a limit's body; RabbitMQ's reason when there is none.
fn body_value(body: &[u8]) -> ApiResult<Value> {
    let b: Map<String, Value> = parse_body(body)?;
    b.get("value")
        .cloned()
        .ok_or_else(|| ApiError::bad("[{key_missing,value}]"))
}

async fn put_vhost_limit(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let value = body_value(&body)?;
    if !known(&st, || st.users.vhost(&v).is_some()).await {
        return Err(ApiError::Other(
            StatusCode::NOT_FOUND,
            "not_found",
            "vhost_not_found".into(),
        ));
    }
    let n = limits::check(&VHOST_LIMITS, &name, &value, "limits")
        .map_err(|why| ApiError::bad(format!("Validation failed\n\n{why}\n")))?;
    let op = MetaOp::SetVhostLimit {
        vhost: v,
        name,
        value: Some(n),
    };
    change(&st, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_vhost_limit(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    // RabbitMQ answers an unknown vhost with a 500; a 404 says what is wrong.
    let op = MetaOp::SetVhostLimit {
        vhost: v,
        name,
        value: None,
    };
    change(&st, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_user_limits(
    State(st): St,
    Extension(u): Extension<ApiUser>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    Ok(Json(Value::Array(
        st.users
            .users()
            .iter()
            .filter(|u| !u.limits.is_empty())
            .map(|u| limits_row("user", &u.name, &u.limits))
            .collect(),
    )))
}

async fn show_user_limits(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    let user = st.users.user(&name).ok_or(ApiError::NotFound)?;
    let rows = if user.limits.is_empty() {
        vec![]
    } else {
        vec![limits_row("user", &user.name, &user.limits)]
    };
    Ok(Json(Value::Array(rows)))
}

async fn put_user_limit(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let value = body_value(&body)?;
    let n = limits::check(&USER_LIMITS, &name, &value, "user-limits").map_err(ApiError::bad)?;
    if !known(&st, || st.users.user(&user).is_some()).await {
        return Err(ApiError::BadValue(json!(["no_such_user", user])));
    }
    let op = MetaOp::SetUserLimit {
        user,
        name,
        value: Some(n),
    };
    change(&st, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_user_limit(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let op = MetaOp::SetUserLimit {
        user,
        name,
        value: None,
    };
    change(&st, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn topic_permission_json(p: &TopicPermission) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "exchange": p.exchange,
        "write": p.write,
        "read": p.read,
    })
}

fn topic_list(p: &ListParams, ps: impl Iterator<Item = TopicPermission>) -> ApiResult<Json<Value>> {
    Ok(Json(plain_or_paged(
        p,
        ps.map(|p| topic_permission_json(&p)).collect(),
    )?))
}

async fn list_topic_permissions(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    topic_list(&p, st.users.topic_permissions().into_iter())
}

async fn show_topic_permissions(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    let ps = st.users.topic_permissions_of(&user, &v);
    if ps.is_empty() {
        return Err(ApiError::NotFound);
    }
    Ok(Json(ps.iter().map(topic_permission_json).collect()))
}

async fn user_topic_permissions(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(name): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    st.users.user(&name).ok_or(ApiError::NotFound)?;
    topic_list(
        &p,
        st.users
            .topic_permissions()
            .into_iter()
            .filter(|t| t.user == name),
    )
}

async fn vhost_topic_permissions(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(v): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    st.users.vhost(&v).ok_or(ApiError::NotFound)?;
    topic_list(
        &p,
        st.users
            .topic_permissions()
            .into_iter()
            .filter(|t| t.vhost == v),
    )
}

#[derive(Deserialize)]
struct TopicBody {
    exchange: Option<String>,
    write: Option<String>,
    read: Option<String>,
}

/// Check a topic permission's patterns as RabbitMQ does (as PCRE reads them, before
/// expansion); that its user and vhost exist is `Admin::check_topic_permission`'s. `Err` is
/// the API's answer.
pub fn check_topic_patterns(p: &TopicPermissionDef) -> ApiResult<()> {
    for re in [&p.write, &p.read] {
        let pcre = crate::auth::grants::pcre_braces(re);
        if let Err(e) = regex::RegexBuilder::new(&pcre).size_limit(1 << 20).build() {
            return Err(ApiError::BadValue(json!([
                "invalid_regexp",
                re,
                e.to_string()
            ])));
        }
    }
    Ok(())
}

async fn put_topic_permission(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let b: TopicBody = parse_body(&body)?;
    let missing = |k: &str| ApiError::bad(format!("[{{key_missing,{k}}}]"));
    let def = TopicPermissionDef {
        user: user.clone(),
        vhost: v.clone(),
        exchange: b.exchange.ok_or_else(|| missing("exchange"))?,
        write: b.write.ok_or_else(|| missing("write"))?,
        read: b.read.ok_or_else(|| missing("read"))?,
    };
    // As RabbitMQ: a missing user or vhost is reported before a bad pattern.
    checked(&st, |a| a.check_topic_permission(&def)).await?;
    check_topic_patterns(&def)?;
    // As RabbitMQ: 201 for the user's first topic permission in the vhost, 204 after.
    let existed = !st.users.topic_permissions_of(&user, &v).is_empty();
    change(&st, MetaOp::PutTopicPermission { def }).await?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeleteTopicParams {
    exchange: Option<String>,
}

/// Remove the user's topic permissions in the vhost. RabbitMQ removes all of them; Warren
/// takes `?exchange=` to remove only that exchange's (what `warrenctl clear_topic_permissions
/// user exchange` sends).
async fn delete_topic_permissions(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, user)): Path<(String, String)>,
    Query(q): Query<DeleteTopicParams>,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let op = MetaOp::DeleteTopicPermissions {
        user,
        vhost: v,
        exchange: q.exchange,
    };
    change(&st, op).await?;
    Ok(StatusCode::NO_CONTENT)
}
