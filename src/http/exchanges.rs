//! /api/exchanges: list, declare (PUT), delete, publish, and binding listings.
//! The default exchange (named "") is `amq.default` in paths, as in RabbitMQ.

use super::error::{lenient, parse_body};
use super::message::json_to_properties;
use super::paging::{ListParams, Row};
use super::scope::allow;
use super::{replicate, vhost, ApiError, ApiResult, ApiUser, St};
use crate::auth::grants::{Perm, Resource};
use crate::broker::exchange::Exchange;
use crate::broker::json::{json_to_table, table_to_json};
use crate::broker::vhost::{ExchangeDeclare, Publish, RouteCache};
use crate::cluster::meta::MetaOp;
use crate::ServerState;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/exchanges", get(list_all))
        .route("/api/exchanges/{vhost}", get(list_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(show).put(declare).delete(remove),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(bindings_destination),
        )
}

/// The exchange name a path segment means (`amq.default` is the default exchange).
pub fn exchange_name(segment: &str) -> &str {
    if segment == "amq.default" {
        ""
    } else {
        segment
    }
}

struct XRow(String, Arc<Exchange>);

impl Row for XRow {
    fn name(&self) -> &str {
        &self.1.name
    }
    fn vhost(&self) -> &str {
        &self.0
    }
}

pub fn exchange_json(vhost: &str, e: &Exchange) -> Value {
    let mut v = json!({
        "name": e.name,
        "vhost": vhost,
        "type": e.type_name(),
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": table_to_json(&e.arguments),
        "user_who_performed_action": "rmq-internal",
        "policy": null,
    });
    // As RabbitMQ: message_stats appears once the exchange has seen a publish.
    let [publish_in, publish_out] = e.stats.counts();
    if publish_in > 0 {
        let [rate_in, rate_out] = e.stats.rates.get();
        v["message_stats"] = json!({
            "publish_in": publish_in,
            "publish_in_details": super::rate(rate_in),
            "publish_out": publish_out,
            "publish_out_details": super::rate(rate_out),
        });
    }
    v
}

fn render(p: &ListParams, rows: Vec<XRow>) -> ApiResult<Json<Value>> {
    Ok(Json(p.apply(rows, |r| exchange_json(&r.0, &r.1))?))
}

async fn list_all(State(st): St, Query(p): Query<ListParams>) -> ApiResult<Json<Value>> {
    let rows = st
        .broker
        .vhost_list()
        .iter()
        .flat_map(|v| {
            v.exchange_list()
                .into_iter()
                .map(|e| XRow(v.name.clone(), e))
        })
        .collect();
    render(&p, rows)
}

async fn list_vhost(
    State(st): St,
    Path(v): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    let vh = vhost(&st, &v)?;
    let rows = vh
        .exchange_list()
        .into_iter()
        .map(|e| XRow(vh.name.clone(), e))
        .collect();
    render(&p, rows)
}

async fn show(State(st): St, Path((v, name)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let vh = vhost(&st, &v)?;
    let e = vh.exchange(exchange_name(&name))?;
    let mut j = exchange_json(&vh.name, &e);
    j["incoming"] = json!([]);
    j["outgoing"] = json!([]);
    Ok(Json(j))
}

#[derive(Deserialize)]
struct DeclareBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient::bool")]
    durable: bool,
    #[serde(default, deserialize_with = "lenient::bool")]
    auto_delete: bool,
    #[serde(default, deserialize_with = "lenient::bool")]
    internal: bool,
    #[serde(default)]
    arguments: Option<Value>,
}

async fn declare(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let b: DeclareBody = parse_body(&body)?;
    let vh = vhost(&st, &v)?;
    let kind = b.kind.unwrap_or_else(|| "direct".into());
    if name.len() > 255 {
        return Err(ApiError::bad("exchange name must be at most 255 bytes"));
    }
    allow(
        &st,
        &u,
        &v,
        Perm::Configure,
        Resource::Exchange,
        exchange_name(&name),
    )?;
    let arguments =
        json_to_table(b.arguments.as_ref()).map_err(|e| ApiError::bad(e.to_string()))?;
    let name = exchange_name(&name);
    let existed = vh.exchange(name).is_ok();
    let d = ExchangeDeclare {
        kind,
        passive: false,
        durable: b.durable,
        auto_delete: b.auto_delete,
        internal: b.internal,
        arguments,
    };
    let op = || MetaOp::DeclareExchange {
        vhost: vh.name.clone(),
        name: name.to_owned(),
        kind: d.kind.clone(),
        durable: d.durable,
        auto_delete: d.auto_delete,
        internal: d.internal,
        arguments: d.arguments.clone(),
    };
    match replicate(&st, op).await {
        Some(r) => drop(r?),
        None => vh.declare_exchange(name, &d)?,
    }
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeleteParams {
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
}

async fn remove(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, name)): Path<(String, String)>,
    Query(p): Query<DeleteParams>,
) -> ApiResult<StatusCode> {
    let vh = vhost(&st, &v)?;
    let name = exchange_name(&name);
    vh.exchange(name)?;
    if !name.is_empty() && !name.starts_with("amq.") {
        allow(&st, &u, &v, Perm::Configure, Resource::Exchange, name)?;
    }
    let if_unused = p.if_unused.as_deref() == Some("true");
    let op = || MetaOp::DeleteExchange {
        vhost: vh.name.clone(),
        name: name.to_owned(),
        if_unused,
    };
    match replicate(&st, op).await {
        Some(r) => drop(r?),
        None => vh.delete_exchange(name, if_unused)?,
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct PublishBody {
    #[serde(default, deserialize_with = "lenient::text")]
    routing_key: String,
    #[serde(default)]
    payload: String,
    #[serde(default = "string", deserialize_with = "payload_encoding")]
    payload_encoding: String,
    #[serde(default)]
    properties: Option<Value>,
}

fn string() -> String {
    "string".into()
}

/// "string" or "base64"; anything else is refused with RabbitMQ's reason.
fn payload_encoding<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if s == "string" || s == "base64" => Ok(s),
        other => Err(lenient::reason_error(json!([
            "unsupported_encoding",
            other
        ]))),
    }
}

async fn publish(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let b: PublishBody = parse_body(&body)?;
    let vh = vhost(&st, &v)?;
    let name = exchange_name(&name);
    // RabbitMQ answers this one with a 400 carrying the AMQP refusal.
    super::scope::check(&st, &u, &v, Perm::Write, Resource::Exchange, name)
        .map_err(|why| ApiError::bad(format!("403 ACCESS_REFUSED - {why}")))?;
    if !name.is_empty() {
        // RabbitMQ answers a publish to a missing exchange with a 400 carrying the AMQP error.
        vh.exchange(name)
            .map_err(|e| ApiError::bad(format!("404 {}", e.reply_text())))?;
    }
    if b.routing_key.len() > 255 {
        return Err(ApiError::bad("routing_key must be at most 255 bytes"));
    }
    super::scope::check_topic(&st, &u, &v, Perm::Write, name, &b.routing_key)
        .map_err(|why| ApiError::bad(format!("403 ACCESS_REFUSED - {why}")))?;
    let payload = match b.payload_encoding.as_str() {
        "string" => Bytes::from(b.payload.into_bytes()),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.payload.as_bytes())
                .map_err(|e| ApiError::bad(format!("payload is not valid base64: {e}")))?,
        ),
        other => {
            return Err(ApiError::bad(format!(
                "unknown payload_encoding '{other}' (string or base64)"
            )))
        }
    };
    if payload.len() as u64 > st.config.max_message_size {
        return Err(ApiError::bad(format!(
            "message size {} is larger than configured max size {}",
            payload.len(),
            st.config.max_message_size
        )));
    }
    let props = json_to_properties(b.properties.as_ref())?;
    // The same publish as AMQP's: CC/BCC, x-delay, persistence and confirms' storage included.
    let p = Publish::new(
        Bytes::copy_from_slice(name.as_bytes()),
        Bytes::from(b.routing_key.into_bytes()),
        props,
        payload,
        st.broker.memory,
        false,
    )?;
    let outcome = vh.publish(&p, &mut RouteCache::default())?;
    // As RabbitMQ, which publishes with confirms: answer once the message is stored, and a
    // full queue's refusal is an error.
    if outcome.rejected {
        return Err(ApiError::bad(
            "Unable to publish message. Check queue limits.",
        ));
    }
    if !st
        .broker
        .stored(outcome.ticket, std::time::Duration::from_secs(30))
        .await
    {
        return Err(ApiError::Other(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the message could not be written to disk in time".into(),
        ));
    }
    // Held by a delayed exchange is not (yet) routed, as in RabbitMQ.
    let routed = outcome.queues > 0;
    Ok(Json(json!({ "routed": routed })))
}

async fn bindings_source(
    State(st): St,
    Path((v, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let vh = vhost(&st, &v)?;
    let e = vh.exchange(exchange_name(&name))?;
    let all = super::bindings::all_bindings(&vh);
    Ok(Json(Value::Array(
        all.into_iter()
            .filter(|b| b.source == e.name)
            .map(|b| b.to_json())
            .collect(),
    )))
}

async fn bindings_destination(
    State(st): St,
    Path((v, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let vh = vhost(&st, &v)?;
    let e = vh.exchange(exchange_name(&name))?;
    let all = super::bindings::all_bindings(&vh);
    Ok(Json(Value::Array(
        all.into_iter()
            .filter(|b| b.destination_type == "exchange" && b.destination == e.name)
            .map(|b| b.to_json())
            .collect(),
    )))
}
