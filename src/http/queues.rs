//! /api/queues: list, declare (PUT), delete, purge (/contents), get messages (/get), bindings.

use super::error::{lenient, parse_body};
use super::message::get_properties_json;
use super::paging::{ListParams, Row};
use super::replicate;
use super::scope::allow;
use super::{node_name, vhost, ApiError, ApiResult, ApiUser, St};
use crate::auth::grants::{Perm, Resource};
use crate::broker::json::{json_to_table, table_to_json};
use crate::broker::queue::dead_letter::Reason;
use crate::broker::queue::{cancel_consumers, Queue};
use crate::broker::stats::QueueSnapshot;
use crate::broker::stream::{ReaderStatus, StreamStatus};
use crate::broker::vhost::QueueDeclare;
use crate::cluster::meta::MetaOp;
use crate::metrics::{queue_memory, QueueRates};
use crate::ServerState;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/queues", get(list_all))
        .route("/api/queues/{vhost}", get(list_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(show).put(declare).delete(remove),
        )
        .route("/api/queues/{vhost}/{name}/contents", delete(purge))
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(bindings))
}

pub struct QRow(pub Arc<Queue>);

impl Row for QRow {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn vhost(&self) -> &str {
        &self.0.vhost
    }
    fn sort_value(&self, field: &str) -> Option<f64> {
        let s = self.0.snapshot();
        let c = &s.counters;
        Some(match field {
            "messages" => (s.ready + s.unacked) as f64,
            "messages_ready" => s.ready as f64,
            "messages_unacknowledged" => s.unacked as f64,
            "consumers" => s.consumers as f64,
            "memory" => s.memory() as f64,
            "message_bytes" | "message_bytes_ready" => s.ready_bytes as f64,
            "head_message_age_seconds" => s.head_age_secs(),
            "message_stats.publish" => c.publish as f64,
            "message_stats.deliver" => c.deliver as f64,
            "message_stats.deliver_get" => {
                (c.deliver + c.deliver_no_ack + c.get + c.get_no_ack) as f64
            }
            "message_stats.ack" => c.ack as f64,
            "message_stats.redeliver" => c.redeliver as f64,
            _ => return None,
        })
    }
}

/// RabbitMQ's `{"rate": r}`.
#[derive(Serialize)]
struct Rate {
    rate: f64,
}

fn r(x: f64) -> Rate {
    Rate {
        rate: (x * 10.0).round() / 10.0,
    }
}

#[derive(Serialize)]
struct QueueStats {
    publish: u64,
    publish_details: Rate,
    deliver: u64,
    deliver_details: Rate,
    deliver_no_ack: u64,
    deliver_no_ack_details: Rate,
    get: u64,
    get_details: Rate,
    get_no_ack: u64,
    get_no_ack_details: Rate,
    deliver_get: u64,
    deliver_get_details: Rate,
    ack: u64,
    ack_details: Rate,
    redeliver: u64,
    redeliver_details: Rate,
}

/// A queue as /api/queues shows it, serialised without an intermediate JSON tree.
#[derive(Serialize)]
pub struct QueueView {
    name: String,
    vhost: String,
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    arguments: Value,
    #[serde(rename = "type")]
    kind: String,
    state: &'static str,
    node: String,
    policy: Option<()>,
    effective_policy_definition: serde_json::Map<String, Value>,
    exclusive_consumer_tag: Option<()>,
    single_active_consumer_tag: Option<()>,
    consumers: u32,
    consumer_capacity: f64,
    consumer_utilisation: f64,
    messages: u64,
    messages_details: Rate,
    messages_ready: u64,
    messages_ready_details: Rate,
    messages_unacknowledged: u64,
    messages_unacknowledged_details: Rate,
    message_bytes: u64,
    message_bytes_ready: u64,
    message_bytes_unacknowledged: u64,
    memory: u64,
    head_message_age_seconds: f64,
    message_stats: QueueStats,
    // Stream queues (one node) and a cluster's quorum queues only (absent from classic
    // queues' JSON): RabbitMQ's replica fields, and Warren's own `stream` object.
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<String>,
    /// RabbitMQ's readers per node: `{"node": count}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    readers: Option<serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<StreamView>,
}

/// Warren's `stream` object of a stream queue: what the log holds and where its named
/// consumers' tracked offsets are. Timestamps are wall-clock milliseconds (0: empty stream).
#[derive(Serialize)]
pub struct StreamView {
    first_offset: u64,
    next_offset: u64,
    messages: u64,
    segments: u32,
    disk_bytes: u64,
    first_timestamp: u64,
    last_timestamp: u64,
    tracked: Vec<TrackedView>,
}

/// A named consumer's offset the broker keeps (`x-stream-consumer-name`), connected or not.
#[derive(Serialize)]
pub struct TrackedView {
    name: String,
    next_offset: u64,
    lag_messages: u64,
}

impl StreamView {
    pub fn of(st: &StreamStatus) -> StreamView {
        let i = &st.info;
        StreamView {
            first_offset: i.first,
            next_offset: i.next,
            messages: i.messages,
            segments: i.segments,
            disk_bytes: i.bytes,
            first_timestamp: i.first_timestamp,
            last_timestamp: i.last_timestamp,
            tracked: st
                .tracked
                .iter()
                .map(|(name, next, lag)| TrackedView {
                    name: name.clone(),
                    next_offset: *next,
                    lag_messages: *lag,
                })
                .collect(),
        }
    }
}

/// A stream consumer's `stream` object in `consumer_details`: where it reads and how far its
/// acknowledgements are behind the stream's end.
#[derive(Serialize)]
pub struct ReaderView {
    name: Option<String>,
    active: bool,
    first_offset: u64,
    next_offset: u64,
    acked_offset: Option<u64>,
    lag_messages: u64,
    lag_seconds: f64,
    unacked: u32,
}

impl ReaderView {
    pub fn of(r: &ReaderStatus) -> ReaderView {
        ReaderView {
            name: r.name.clone(),
            active: r.active,
            first_offset: r.first_offset,
            next_offset: r.next_offset,
            acked_offset: r.acked_offset,
            lag_messages: r.lag_messages,
            lag_seconds: r.lag_ms as f64 / 1000.0,
            unacked: r.unacked,
        }
    }
}

pub fn queue_view(q: &Queue, s: &QueueSnapshot, rt: &QueueRates) -> QueueView {
    let status = q.stream_status();
    queue_view_with(q, s, rt, status.as_ref())
}

/// `queue_view` with the stream's status already taken (None for other queues).
fn queue_view_with(
    q: &Queue,
    s: &QueueSnapshot,
    rt: &QueueRates,
    status: Option<&StreamStatus>,
) -> QueueView {
    let c = &s.counters;
    let rc = &rt.counters;
    let quorum = q
        .vhost_handle()
        .upgrade()
        .and_then(|v| v.quorum_of(&q.name));
    let kind = match q.arguments.inner().get("x-queue-type") {
        Some(v) => crate::broker::args::as_str(v).unwrap_or_else(|| "classic".into()),
        None => "classic".into(),
    };
    let used = if s.consumers > 0 { 1.0 } else { 0.0 };
    QueueView {
        name: q.name.clone(),
        vhost: q.vhost.clone(),
        durable: q.durable,
        auto_delete: q.auto_delete,
        exclusive: q.exclusive_owner.is_some(),
        arguments: table_to_json(&q.arguments),
        kind,
        state: "running",
        node: q.home().unwrap_or_else(|| node_name().to_owned()),
        policy: None,
        effective_policy_definition: Default::default(),
        exclusive_consumer_tag: None,
        single_active_consumer_tag: None,
        consumers: s.consumers,
        consumer_capacity: used,
        consumer_utilisation: used,
        messages: s.ready + s.unacked,
        messages_details: r(rt.messages),
        messages_ready: s.ready,
        messages_ready_details: r(rt.ready),
        messages_unacknowledged: s.unacked,
        messages_unacknowledged_details: r(rt.unacked),
        message_bytes: s.ready_bytes,
        message_bytes_ready: s.ready_bytes,
        message_bytes_unacknowledged: 0,
        memory: queue_memory(q, s),
        head_message_age_seconds: (s.head_age_secs() * 100.0).round() / 100.0,
        message_stats: QueueStats {
            publish: c.publish,
            publish_details: r(rc[QueueRates::PUBLISH]),
            deliver: c.deliver,
            deliver_details: r(rc[QueueRates::DELIVER]),
            deliver_no_ack: c.deliver_no_ack,
            deliver_no_ack_details: r(rc[QueueRates::DELIVER_NO_ACK]),
            get: c.get,
            get_details: r(rc[QueueRates::GET]),
            get_no_ack: c.get_no_ack,
            get_no_ack_details: r(rc[QueueRates::GET_NO_ACK]),
            deliver_get: c.deliver + c.deliver_no_ack + c.get + c.get_no_ack,
            deliver_get_details: r(rc[QueueRates::DELIVER]
                + rc[QueueRates::DELIVER_NO_ACK]
                + rc[QueueRates::GET]
                + rc[QueueRates::GET_NO_ACK]),
            ack: c.ack,
            ack_details: r(rc[QueueRates::ACK]),
            redeliver: c.redeliver,
            redeliver_details: r(rc[QueueRates::REDELIVER]),
        },
        members: status
            .map(|_| vec![node_name().to_owned()])
            .or_else(|| quorum.as_ref().map(|d| d.members.clone())),
        online: status.map(|_| vec![node_name().to_owned()]),
        leader: quorum.as_ref().and_then(|_| q.home()),
        readers: status.map(|st| {
            let mut m = serde_json::Map::new();
            m.insert(node_name().to_owned(), json!(st.readers.len()));
            m
        }),
        stream: status.map(StreamView::of),
    }
}

fn render(st: &ServerState, p: &ListParams, queues: Vec<Arc<Queue>>) -> ApiResult<Response> {
    let rows: Vec<QRow> = queues.into_iter().map(QRow).collect();
    p.apply_typed(rows, |row| {
        let rates = st.rates.queues(std::slice::from_ref(&row.0));
        queue_view(&row.0, &row.0.snapshot(), &rates[0])
    })
}

async fn list_all(State(st): St, Query(p): Query<ListParams>) -> ApiResult<Response> {
    let qs = st
        .broker
        .vhost_list()
        .iter()
        .flat_map(|v| v.queue_list())
        .collect();
    render(&st, &p, qs)
}

async fn list_vhost(
    State(st): St,
    Path(v): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Response> {
    let qs = vhost(&st, &v)?.queue_list();
    render(&st, &p, qs)
}

pub fn find(st: &ServerState, v: &str, name: &str) -> ApiResult<Arc<Queue>> {
    vhost(st, v)?.find_queue(name).ok_or(ApiError::NotFound)
}

/// `find`, for reading the queue's messages here: a cluster's queue living on another node is
/// refused (400, naming the node).
fn find_local(st: &ServerState, v: &str, name: &str) -> ApiResult<Arc<Queue>> {
    let q = find(st, v, name)?;
    vhost(st, v)?.local_queue(name, q.exclusive_owner.unwrap_or(0))?;
    Ok(q)
}

async fn show(State(st): St, Path((v, name)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let q = find(&st, &v, &name)?;
    let rates = st.rates.queues(std::slice::from_ref(&q));
    let status = q.stream_status();
    let view = queue_view_with(&q, &q.snapshot(), &rates[0], status.as_ref());
    let mut j = serde_json::to_value(view).unwrap_or(Value::Null);
    // The single-queue view lists its consumers, as RabbitMQ's does; a stream's consumers
    // carry Warren's `stream` object (offsets and lag), from the same status as the queue's.
    j["consumer_details"] = q
        .consumer_list()
        .iter()
        .map(|c| {
            let mut d = json!({
                "consumer_tag": c.tag,
                "ack_required": !c.no_ack,
                "exclusive": c.exclusive,
                "prefetch_count": c.prefetch,
                "active": true,
                "activity_status": "up",
                "arguments": table_to_json(&c.arguments),
                "queue": {"name": q.name, "vhost": q.vhost},
            });
            let reader = status
                .as_ref()
                .and_then(|st| st.readers.iter().find(|r| r.consumer_tag == c.tag));
            if let Some(r) = reader {
                // RabbitMQ 3.10 shows every 0-9-1 stream consumer as `active: false`; whether
                // it reads now (single active consumer) is in `stream.active`.
                d["active"] = json!(false);
                d["stream"] = serde_json::to_value(ReaderView::of(r)).unwrap_or(Value::Null);
            }
            d
        })
        .collect();
    Ok(Json(j))
}

#[derive(Deserialize)]
struct DeclareBody {
    #[serde(default, deserialize_with = "lenient::bool")]
    durable: bool,
    #[serde(default, deserialize_with = "lenient::bool")]
    auto_delete: bool,
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
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::bad("queue name must be 1 to 255 bytes"));
    }
    allow(&st, &u, &v, Perm::Configure, Resource::Queue, &name)?;
    let arguments =
        json_to_table(b.arguments.as_ref()).map_err(|e| ApiError::bad(e.to_string()))?;
    let d = QueueDeclare {
        passive: false,
        durable: b.durable,
        exclusive: false,
        auto_delete: b.auto_delete,
        arguments,
    };
    // The vhost's max-queues, for a new queue (RabbitMQ's 400 and text).
    if vh.find_queue(&name).is_none() {
        if let Some(limit) = st.users.queue_limit(&v) {
            if vh.queue_count() as i64 >= limit {
                return Err(ApiError::bad(crate::auth::limits::queues_refused(
                    &name, &v, limit,
                )));
            }
        }
    }
    let op = || MetaOp::DeclareQueue {
        vhost: vh.name.clone(),
        name: name.clone(),
        node: node_name().to_owned(),
        durable: d.durable,
        auto_delete: d.auto_delete,
        arguments: d.arguments.clone(),
    };
    let existed = vh.find_queue(&name).is_some();
    let created = match replicate(&st, op).await {
        Some(r) => r.map(|_| !existed)?,
        None => vh.declare_queue(&name, &d, 0)?.1,
    };
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeleteParams {
    #[serde(rename = "if-empty")]
    if_empty: Option<String>,
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
    let q = vh.find_queue(&name).ok_or(ApiError::NotFound)?;
    allow(&st, &u, &v, Perm::Configure, Resource::Queue, &name)?;
    let (if_unused, if_empty) = (
        p.if_unused.as_deref() == Some("true"),
        p.if_empty.as_deref() == Some("true"),
    );
    // An exclusive queue is its node's alone, also in a cluster.
    if q.exclusive_owner.is_none() {
        let op = || MetaOp::DeleteQueue {
            vhost: vh.name.clone(),
            name: name.clone(),
            if_unused,
            if_empty,
        };
        if let Some(r) = replicate(&st, op).await {
            r?;
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    let (_, consumers) =
        vh.delete_queue(&name, if_unused, if_empty, q.exclusive_owner.unwrap_or(0))?;
    cancel_consumers(consumers);
    Ok(StatusCode::NO_CONTENT)
}

async fn purge(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let q = find_local(&st, &v, &name)?;
    allow(&st, &u, &v, Perm::Read, Resource::Queue, &name)?;
    q.purge();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct GetBody {
    /// RabbitMQ 3.10 takes a negative count as "every message"; Warren refuses it (400).
    #[serde(default = "one", deserialize_with = "lenient::int")]
    count: i64,
    #[serde(default = "requeue")]
    ackmode: String,
    #[serde(default = "auto")]
    encoding: String,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    truncate: Option<i64>,
}

/// One message of a /get answer, its fields in RabbitMQ's order (`rabbitmqadmin -f raw_json get`
/// prints the answer as it comes).
#[derive(Serialize)]
struct GotMessage {
    payload_bytes: usize,
    redelivered: bool,
    exchange: String,
    routing_key: String,
    message_count: u32,
    properties: Value,
    payload: String,
    payload_encoding: &'static str,
}

/// Most payload bytes one /get answer carries (it stops taking messages beyond).
const MAX_GET_BYTES: usize = 64 << 20;

fn one() -> i64 {
    1
}
fn requeue() -> String {
    "ack_requeue_true".into()
}
fn auto() -> String {
    "auto".into()
}

async fn get_messages(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path((v, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Vec<GotMessage>>> {
    // RabbitMQ looks the queue up before it reads the body.
    let q = find_local(&st, &v, &name)?;
    let b: GetBody = parse_body(&body)?;
    // RabbitMQ answers this one with the AMQP refusal as its reason.
    super::scope::check(&st, &u, &v, Perm::Read, Resource::Queue, &name).map_err(|why| {
        ApiError::Other(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            format!("ACCESS_REFUSED - {why}"),
        )
    })?;
    let (requeue, dead) = match b.ackmode.as_str() {
        "ack_requeue_true" | "reject_requeue_true" => (true, false),
        "ack_requeue_false" => (false, false),
        "reject_requeue_false" => (false, true),
        other => {
            return Err(ApiError::bad(format!(
                "unknown ackmode '{other}' (ack_requeue_true, ack_requeue_false, \
                 reject_requeue_true or reject_requeue_false)"
            )))
        }
    };
    if !matches!(b.encoding.as_str(), "auto" | "base64") {
        return Err(ApiError::bad(format!(
            "unknown encoding '{}' (auto or base64)",
            b.encoding
        )));
    }
    let count = u64::try_from(b.count)
        .map_err(|_| ApiError::bad(format!("count must not be negative (got {})", b.count)))?;
    let truncate = match b.truncate {
        None => usize::MAX,
        Some(t) => usize::try_from(t)
            .map_err(|_| ApiError::bad(format!("truncate must not be negative (got {t})")))?,
    };
    let mut taken = Vec::new();
    let mut out = Vec::new();
    // Bound the answer: a huge count on a deep queue must not build an unbounded response.
    let mut bytes = 0usize;
    while (taken.len() as u64) < count && bytes < MAX_GET_BYTES {
        let Some((e, left)) = q.get(false) else {
            break;
        };
        let body = &e.msg.body;
        let shown = &body[..truncate.min(body.len())];
        bytes += shown.len() + 256;
        let (payload, enc) = match (b.encoding.as_str(), std::str::from_utf8(shown)) {
            ("auto", Ok(s)) => (s.to_owned(), "string"),
            _ => (
                base64::engine::general_purpose::STANDARD.encode(shown),
                "base64",
            ),
        };
        out.push(GotMessage {
            payload_bytes: body.len(),
            redelivered: e.redelivered,
            exchange: String::from_utf8_lossy(&e.msg.exchange).into_owned(),
            routing_key: String::from_utf8_lossy(&e.msg.routing_key).into_owned(),
            message_count: left,
            properties: get_properties_json(&e.msg.properties),
            payload,
            payload_encoding: enc,
        });
        taken.push(e);
    }
    if requeue {
        q.settle(0, taken);
    } else {
        q.settle(taken.len() as u64, Vec::new());
        if dead {
            q.dead_letter(taken, Reason::Rejected);
        }
    }
    Ok(Json(out))
}

async fn bindings(
    State(st): St,
    Path((v, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let q = find(&st, &v, &name)?;
    let vh = vhost(&st, &v)?;
    let all = super::bindings::all_bindings(&vh);
    Ok(Json(Value::Array(
        all.into_iter()
            .filter(|b| b.destination_type == "queue" && b.destination == q.name)
            .map(|b| b.to_json())
            .collect(),
    )))
}
