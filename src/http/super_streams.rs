//! /api/super-streams: Warren's API for super streams (RabbitMQ 3.10 makes them only with
//! `rabbitmq-streams add_super_stream`): list, show, create (PUT), delete.
//!
//! PUT /api/super-streams/{vhost}/{name} with `{"partitions": 3}` or `{"binding_keys": ["eu",
//! "us"]}`, optionally `"routing": "key"` (the default: a direct exchange, as RabbitMQ's) or
//! `"hash"` (Warren's `x-super-stream` exchange type), and `"arguments"`: the partitions'
//! stream arguments (`x-max-length-bytes`, `x-max-age`, `x-stream-max-segment-size-bytes`).
//! Answers 201 with the super stream. Creating needs the configure permission on the exchange
//! and every partition, and what binding them needs (read on the exchange, write on the
//! partitions), as an AMQP client making the same would; deleting, configure on all of them.

use super::error::parse_body;
use super::paging::{ListParams, Row};
use super::scope::allow;
use super::{vhost, ApiError, ApiResult, ApiUser, St};
use crate::auth::grants::{Perm, Resource};
use crate::broker::json::{json_to_table, table_to_json};
use crate::broker::vhost::super_stream::{
    binding_keys, partition_name, PartitionSpec, Routing, SuperStreamInfo,
};
use crate::ServerState;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/super-streams", get(list_all))
        .route("/api/super-streams/{vhost}", get(list_vhost))
        .route(
            "/api/super-streams/{vhost}/{name}",
            get(show).put(create).delete(remove),
        )
}

struct SRow(String, SuperStreamInfo);

impl Row for SRow {
    fn name(&self) -> &str {
        &self.1.name
    }
    fn vhost(&self) -> &str {
        &self.0
    }
}

/// A super stream as the API shows it.
pub fn super_stream_json(vhost: &str, s: &SuperStreamInfo) -> Value {
    json!({
        "name": s.name,
        "vhost": vhost,
        "routing": s.routing.as_str(),
        "partitions": s.partitions.iter().map(|p| &p.queue).collect::<Vec<_>>(),
        "binding_keys": s.partitions.iter().map(|p| &p.binding_key).collect::<Vec<_>>(),
        "arguments": table_to_json(&s.arguments),
    })
}

async fn list_all(State(st): St, Query(p): Query<ListParams>) -> ApiResult<Json<Value>> {
    let rows = st
        .broker
        .vhost_list()
        .iter()
        .flat_map(|v| {
            v.super_streams()
                .into_iter()
                .map(|s| SRow(v.name.clone(), s))
        })
        .collect();
    Ok(Json(p.apply(rows, |r| super_stream_json(&r.0, &r.1))?))
}

async fn list_vhost(
    State(st): St,
    Path(v): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    let vh = vhost(&st, &v)?;
    let rows = vh
        .super_streams()
        .into_iter()
        .map(|s| SRow(vh.name.clone(), s))
        .collect();
    Ok(Json(p.apply(rows, |r| super_stream_json(&r.0, &r.1))?))
}

async fn show(State(st): St, Path((v, name)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let vh = vhost(&st, &v)?;
    let s = vh.super_stream(&name).ok_or(ApiError::NotFound)?;
    Ok(Json(super_stream_json(&vh.name, &s)))
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    partitions: Option<Value>,
    #[serde(default)]
    binding_keys: Option<Value>,
    #[serde(default)]
    routing: Option<Value>,
    #[serde(default)]
    arguments: Option<Value>,
}

/// The partitions a body asks for: a positive count or a list of keys, not both.
fn partition_spec(b: &CreateBody) -> ApiResult<PartitionSpec> {
    match (&b.partitions, &b.binding_keys) {
        (Some(_), Some(_)) => Err(ApiError::bad(
            "give either partitions or binding_keys, not both",
        )),
        (None, None) => Err(ApiError::bad(
            "give partitions (a number) or binding_keys (a list of strings)",
        )),
        (Some(n), None) => match n.as_u64() {
            Some(n) => Ok(PartitionSpec::Count(u32::try_from(n).unwrap_or(u32::MAX))),
            None => Err(ApiError::bad(format!(
                "partitions must be a positive integer, not {n}"
            ))),
        },
        (None, Some(Value::Array(keys))) => keys
            .iter()
            .map(|k| match k {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::bad(format!(
                    "binding_keys must be strings, not {other}"
                ))),
            })
            .collect::<ApiResult<Vec<String>>>()
            .map(PartitionSpec::Keys),
        (None, Some(other)) => Err(ApiError::bad(format!(
            "binding_keys must be a list of strings, not {other}"
        ))),
    }
}

fn routing(b: &CreateBody) -> ApiResult<Routing> {
    match &b.routing {
        None | Some(Value::Null) => Ok(Routing::Key),
        Some(Value::String(s)) => Routing::parse(s).ok_or_else(|| {
            ApiError::bad(format!("routing must be \"key\" or \"hash\", not \"{s}\""))
        }),
        Some(other) => Err(ApiError::bad(format!(
            "routing must be \"key\" or \"hash\", not {other}"
        ))),
    }
}

async fn create(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let b: CreateBody = parse_body(&body)?;
    let vh = vhost(&st, &v)?;
    let spec = partition_spec(&b)?;
    let routing = routing(&b)?;
    let arguments =
        json_to_table(b.arguments.as_ref()).map_err(|e| ApiError::bad(e.to_string()))?;
    let keys = binding_keys(&name, &spec)?;
    allow(&st, &u, &v, Perm::Configure, Resource::Exchange, &name)?;
    allow(&st, &u, &v, Perm::Read, Resource::Exchange, &name)?;
    for k in &keys {
        let q = partition_name(&name, k);
        allow(&st, &u, &v, Perm::Configure, Resource::Queue, &q)?;
        allow(&st, &u, &v, Perm::Write, Resource::Queue, &q)?;
    }
    // The vhost's max-queues counts every partition (RabbitMQ's 400 and text for the first
    // one over).
    if let Some(limit) = st.users.queue_limit(&v) {
        let have = vh.queue_count() as i64;
        if have + keys.len() as i64 > limit {
            let over = (limit - have).max(0) as usize;
            let q = partition_name(&name, keys.get(over).map_or("", String::as_str));
            return Err(ApiError::bad(crate::auth::limits::queues_refused(
                &q, &v, limit,
            )));
        }
    }
    let s = vh.add_super_stream(&name, &spec, routing, &arguments)?;
    Ok((StatusCode::CREATED, Json(super_stream_json(&vh.name, &s))))
}

async fn remove(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let vh = vhost(&st, &v)?;
    let s = vh.super_stream(&name).ok_or(ApiError::NotFound)?;
    allow(&st, &u, &v, Perm::Configure, Resource::Exchange, &name)?;
    for p in &s.partitions {
        allow(&st, &u, &v, Perm::Configure, Resource::Queue, &p.queue)?;
    }
    vh.delete_super_stream(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
