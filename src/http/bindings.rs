//! /api/bindings: every binding (the default exchange's implicit ones included, as RabbitMQ
//! lists them), and the bindings between one exchange and one queue or exchange, created with
//! POST and addressed for DELETE by their `properties_key`.

use super::error::{lenient, parse_body};
use super::exchanges::exchange_name;
use super::paging::{json_list, ListParams};
use super::replicate;
use super::scope::allow;
use super::{vhost, ApiError, ApiResult, ApiUser, St};
use crate::auth::grants::{Perm, Resource};
use crate::broker::exchange::Dest;
use crate::broker::json::{json_to_table, table_to_json};
use crate::broker::vhost::VHost;
use crate::ServerState;
use amq_protocol::types::FieldTable;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use std::sync::Arc;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/bindings", get(list_all))
        .route("/api/bindings/{vhost}", get(list_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(between).post(create),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(show).delete(remove),
        )
}

/// One binding as the API shows it.
#[derive(Debug, Clone)]
pub struct BindingView {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub destination_type: &'static str,
    pub routing_key: String,
    pub arguments: FieldTable,
}

const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'!')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

impl BindingView {
    /// RabbitMQ's `properties_key`: the quoted routing key (`~` when empty), followed by `~`
    /// and a hash of the arguments when there are any.
    pub fn properties_key(&self) -> String {
        let key = if self.routing_key.is_empty() && self.arguments.inner().is_empty() {
            return "~".into();
        } else {
            utf8_percent_encode(&self.routing_key, KEY_SET).to_string()
        };
        if self.arguments.inner().is_empty() {
            return key;
        }
        let json = serde_json::to_vec(&table_to_json(&self.arguments)).unwrap_or_default();
        let digest = sha2::Sha256::digest(&json);
        let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..6]);
        format!("{key}~{hash}")
    }

    pub fn to_json(&self) -> Value {
        json!({
            "source": self.source,
            "vhost": self.vhost,
            "destination": self.destination,
            "destination_type": self.destination_type,
            "routing_key": self.routing_key,
            "arguments": table_to_json(&self.arguments),
            "properties_key": self.properties_key(),
        })
    }

    fn matches_props(&self, props: &str) -> bool {
        let k = self.properties_key();
        k == props || percent_decode_str(&k).decode_utf8_lossy() == props
    }
}

/// Every binding of a vhost: the default exchange's (one per queue) first, then the others, by
/// source, destination and routing key, as RabbitMQ lists them.
pub fn all_bindings(v: &VHost) -> Vec<BindingView> {
    let mut queues = v.queue_list();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out: Vec<BindingView> = queues
        .iter()
        .map(|q| BindingView {
            vhost: v.name.clone(),
            source: String::new(),
            destination: q.name.clone(),
            destination_type: "queue",
            routing_key: q.name.clone(),
            arguments: FieldTable::default(),
        })
        .collect();
    let mut exchanges = v.exchange_list();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    for e in exchanges {
        let mut bs: Vec<BindingView> = e
            .bindings()
            .into_iter()
            .map(|b| BindingView {
                vhost: v.name.clone(),
                source: e.name.clone(),
                destination: b.dest.name().to_owned(),
                destination_type: match b.dest {
                    Dest::Queue(_) => "queue",
                    Dest::Exchange(_) => "exchange",
                },
                routing_key: b.routing_key,
                arguments: b.arguments,
            })
            .collect();
        // RabbitMQ's order: by destination name, then routing key (the destination's kind
        // only breaks ties).
        bs.sort_by(|a, b| {
            (&a.destination, &a.routing_key, a.destination_type).cmp(&(
                &b.destination,
                &b.routing_key,
                b.destination_type,
            ))
        });
        out.extend(bs);
    }
    out
}

async fn list_all(State(st): St, Query(p): Query<ListParams>) -> ApiResult<Json<Value>> {
    let all: Vec<Value> = st
        .broker
        .vhost_list()
        .iter()
        .filter(|v| super::scope::visible(&v.name, None))
        .flat_map(|v| all_bindings(v))
        .map(|b| b.to_json())
        .collect();
    Ok(Json(list_unsorted(&p, all)?))
}

async fn list_vhost(
    State(st): St,
    Path(v): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    let vh = vhost(&st, &v)?;
    let all = all_bindings(&vh).into_iter().map(|b| b.to_json()).collect();
    Ok(Json(list_unsorted(&p, all)?))
}

/// Bindings have no name: keep their order unless a sort is asked for.
fn list_unsorted(p: &ListParams, all: Vec<Value>) -> ApiResult<Value> {
    if p.page.is_none() && p.sort.is_none() && p.name.is_none() && p.columns.is_none() {
        return Ok(Value::Array(all));
    }
    json_list(p, all)
}

fn dest_kind(kind: &str) -> ApiResult<&'static str> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::NotFound),
    }
}

/// The vhost, and the bindings from `source` to `dest` (both must exist).
fn bindings_between(
    st: &ServerState,
    v: &str,
    source: &str,
    kind: &str,
    dest: &str,
) -> ApiResult<(Arc<VHost>, Vec<BindingView>)> {
    let vh = vhost(st, v)?;
    let kind = dest_kind(kind)?;
    let source = exchange_name(source);
    vh.exchange(source)?;
    match kind {
        "queue" => {
            vh.find_queue(dest).ok_or(ApiError::NotFound)?;
        }
        _ => {
            vh.exchange(exchange_name(dest))?;
        }
    }
    let dest = if kind == "exchange" {
        exchange_name(dest)
    } else {
        dest
    };
    let found = all_bindings(&vh)
        .into_iter()
        .filter(|b| b.source == source && b.destination_type == kind && b.destination == dest)
        .collect();
    Ok((vh, found))
}

async fn between(
    State(st): St,
    Path((v, source, kind, dest)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, found) = bindings_between(&st, &v, &source, &kind, &dest)?;
    Ok(Json(Value::Array(
        found.iter().map(BindingView::to_json).collect(),
    )))
}

#[derive(Deserialize)]
struct BindBody {
    #[serde(default, deserialize_with = "lenient::text")]
    routing_key: String,
    #[serde(default)]
    arguments: Option<Value>,
}

/// Binding and unbinding need write on the destination and read on the source, as in AMQP.
fn allow_binding(
    st: &ServerState,
    u: &ApiUser,
    v: &str,
    source: &str,
    kind: &str,
    dest: &str,
) -> ApiResult<()> {
    let (dest_kind, dest) = match kind {
        "q" => (Resource::Queue, dest),
        _ => (Resource::Exchange, exchange_name(dest)),
    };
    allow(st, u, v, Perm::Write, dest_kind, dest)?;
    allow(
        st,
        u,
        v,
        Perm::Read,
        Resource::Exchange,
        exchange_name(source),
    )
}

/// The read topic permission on a topic exchange's binding key, refused as RabbitMQ refuses
/// it here: 401 "Access refused.".
fn allow_topic_binding(
    st: &ServerState,
    u: &ApiUser,
    v: &str,
    source: &str,
    key: &str,
) -> ApiResult<()> {
    super::scope::check_topic(st, u, v, Perm::Read, exchange_name(source), key).map_err(|why| {
        tracing::info!(user = %u.name, "management: {why}");
        ApiError::Other(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "Access refused.".into(),
        )
    })
}

fn bind_op(
    vhost: &str,
    source: &str,
    destination: &str,
    to_queue: bool,
    key: &str,
    args: &amq_protocol::types::FieldTable,
) -> crate::cluster::meta::MetaOp {
    crate::cluster::meta::MetaOp::Bind {
        vhost: vhost.to_owned(),
        source: source.to_owned(),
        destination: destination.to_owned(),
        to_queue,
        routing_key: key.to_owned(),
        arguments: args.clone(),
    }
}

async fn create(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let b: BindBody = parse_body(&body)?;
    let (vh, _) = bindings_between(&st, &v, &source, &kind, &dest)?;
    allow_binding(&st, &u, &v, &source, &kind, &dest)?;
    if b.routing_key.len() > 255 {
        return Err(ApiError::bad("routing_key must be at most 255 bytes"));
    }
    allow_topic_binding(&st, &u, &v, &source, &b.routing_key)?;
    let args = json_to_table(b.arguments.as_ref()).map_err(|e| ApiError::bad(e.to_string()))?;
    let source = exchange_name(&source);
    let view = if kind == "q" {
        let owner = vh
            .find_queue(&dest)
            .and_then(|q| q.exclusive_owner)
            .unwrap_or(0);
        let op = || bind_op(&vh.name, source, &dest, true, &b.routing_key, &args);
        // An exclusive queue's bindings are its node's alone.
        let replicated = match owner {
            0 => replicate(&st, op).await,
            _ => None,
        };
        match replicated {
            Some(r) => drop(r?),
            None => vh.bind_queue(&dest, source, &b.routing_key, &args, owner)?,
        }
        BindingView {
            vhost: vh.name.clone(),
            source: source.to_owned(),
            destination: dest.clone(),
            destination_type: "queue",
            routing_key: b.routing_key,
            arguments: args,
        }
    } else {
        let dest = exchange_name(&dest);
        let op = || bind_op(&vh.name, source, dest, false, &b.routing_key, &args);
        match replicate(&st, op).await {
            Some(r) => drop(r?),
            None => vh.bind_exchange(dest, source, &b.routing_key, &args)?,
        }
        BindingView {
            vhost: vh.name.clone(),
            source: source.to_owned(),
            destination: dest.to_owned(),
            destination_type: "exchange",
            routing_key: b.routing_key,
            arguments: args,
        }
    };
    let mut r = StatusCode::CREATED.into_response();
    // As RabbitMQ: relative to the collection, the properties key quoted once more.
    let location = format!(
        "{}/{}",
        utf8_percent_encode(&view.destination, KEY_SET),
        utf8_percent_encode(&view.properties_key(), KEY_SET)
    );
    if let Ok(h) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, h);
    }
    Ok(r)
}

async fn show(
    State(st): St,
    Path((v, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, found) = bindings_between(&st, &v, &source, &kind, &dest)?;
    let b = found
        .iter()
        .find(|b| b.matches_props(&props))
        .ok_or(ApiError::NotFound)?;
    Ok(Json(b.to_json()))
}

async fn remove(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let (vh, found) = bindings_between(&st, &v, &source, &kind, &dest)?;
    allow_binding(&st, &u, &v, &source, &kind, &dest)?;
    let b = found
        .into_iter()
        .find(|b| b.matches_props(&props))
        .ok_or(ApiError::NotFound)?;
    allow_topic_binding(&st, &u, &v, &source, &b.routing_key)?;
    if b.source.is_empty() {
        return Err(ApiError::bad(
            "operation not permitted on the default exchange",
        ));
    }
    let to_queue = b.destination_type == "queue";
    let owner = vh
        .find_queue(&b.destination)
        .and_then(|q| q.exclusive_owner)
        .unwrap_or(0);
    if owner == 0 {
        let op = || crate::cluster::meta::MetaOp::Unbind {
            vhost: vh.name.clone(),
            source: b.source.clone(),
            destination: b.destination.clone(),
            to_queue,
            routing_key: b.routing_key.clone(),
            arguments: b.arguments.clone(),
        };
        if let Some(r) = replicate(&st, op).await {
            r?;
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    if to_queue {
        vh.unbind_queue(
            &b.destination,
            &b.source,
            &b.routing_key,
            &b.arguments,
            owner,
        )?;
    } else {
        vh.unbind_exchange(&b.destination, &b.source, &b.routing_key, &b.arguments)?;
    }
    Ok(StatusCode::NO_CONTENT)
}
