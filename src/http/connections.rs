//! /api/connections (DELETE closes one with 320 CONNECTION_FORCED), /api/channels and
//! /api/consumers, from the connection registry and the queues' consumer lists.

use super::paging::{ListParams, Row};
use super::{node_name, rate, vhost, ApiError, ApiResult, St};
use crate::amqp::channel::ChannelShared;
use crate::amqp::registry::{ConnInfo, Counters};
use crate::broker::queue::{Consumer, Queue};
use crate::ServerState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/connections", get(list_connections))
        .route(
            "/api/connections/{name}",
            get(show_connection).delete(close),
        )
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/channels", get(list_channels))
        .route("/api/channels/{name}", get(show_channel))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/api/consumers", get(list_consumers))
        .route("/api/consumers/{vhost}", get(vhost_consumers))
}

/// A connection, its vhost and its user.
struct CRow(Arc<ConnInfo>, String, String);

impl Row for CRow {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn vhost(&self) -> &str {
        &self.1
    }
    fn owner(&self) -> Option<&str> {
        Some(&self.2)
    }
}

fn conn_rows(st: &ServerState, only: Option<&str>) -> Vec<CRow> {
    st.connections
        .list()
        .into_iter()
        .filter_map(|c| {
            let (v, user) = {
                let d = c.details.lock();
                (d.vhost.clone()?, d.user.clone())
            };
            only.is_none_or(|o| o == v).then_some(CRow(c, v, user))
        })
        .collect()
}

pub fn connection_json(c: &ConnInfo) -> Value {
    let d = c.details.lock().clone();
    let oct_rates = c.oct_rates.get();
    json!({
        "name": c.name,
        "node": node_name(),
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "state": "running",
        "user": d.user,
        "user_who_performed_action": d.user,
        "vhost": d.vhost,
        "auth_mechanism": d.auth_mechanism,
        "client_properties": d.client_properties,
        "connected_at": c.connected_at,
        "host": c.local.ip().to_string(),
        "port": c.local.port(),
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "ssl": false,
        "peer_cert_subject": null,
        "peer_cert_issuer": null,
        "peer_cert_validity": null,
        "ssl_protocol": null,
        "frame_max": d.frame_max,
        "channel_max": d.channel_max,
        "timeout": d.heartbeat,
        "channels": c.channel_count(),
        "recv_oct": c.recv_oct.load(Ordering::Relaxed),
        "recv_oct_details": rate(oct_rates[0]),
        "recv_cnt": c.recv_cnt.load(Ordering::Relaxed),
        "send_oct": c.send_oct.load(Ordering::Relaxed),
        "send_oct_details": rate(oct_rates[1]),
        "send_cnt": c.send_cnt.load(Ordering::Relaxed),
    })
}

async fn list_connections(State(st): St, Query(p): Query<ListParams>) -> ApiResult<Json<Value>> {
    Ok(Json(
        p.apply(conn_rows(&st, None), |r| connection_json(&r.0))?,
    ))
}

async fn vhost_connections(
    State(st): St,
    Path(v): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    vhost(&st, &v)?;
    Ok(Json(p.apply(conn_rows(&st, Some(&v)), |r| {
        connection_json(&r.0)
    })?))
}

/// A connection the requesting user may see (management users: their own).
fn find_connection(st: &ServerState, name: &str) -> ApiResult<Arc<ConnInfo>> {
    let c = st.connections.by_name(name).ok_or(ApiError::NotFound)?;
    let (vhost, user) = {
        let d = c.details.lock();
        (d.vhost.clone().unwrap_or_default(), d.user.clone())
    };
    if !super::scope::visible(&vhost, Some(&user)) {
        return Err(ApiError::NotFound);
    }
    Ok(c)
}

async fn show_connection(State(st): St, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let c = find_connection(&st, &name)?;
    Ok(Json(connection_json(&c)))
}

/// Close a connection; the `X-Reason` header, if any, becomes the close reason.
async fn close(
    State(st): St,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let c = find_connection(&st, &name)?;
    let reason = headers
        .get("x-reason")
        .and_then(|h| h.to_str().ok())
        .filter(|r| !r.is_empty())
        .unwrap_or("Closed via management plugin");
    c.close(reason);
    Ok(StatusCode::NO_CONTENT)
}

// ---- channels and consumers ---------------------------------------------------------------

/// One consumer with the queue it consumes from.
struct ConsumerView {
    consumer: Arc<Consumer>,
    queue: Arc<Queue>,
}

/// Every consumer, keyed by the address of its channel (its sink).
fn consumers_by_channel(st: &ServerState) -> HashMap<usize, Vec<ConsumerView>> {
    let mut m: HashMap<usize, Vec<ConsumerView>> = HashMap::new();
    for v in st.broker.vhost_list() {
        for q in v.queue_list() {
            for c in q.consumer_list() {
                let key = Arc::as_ptr(&c.sink) as *const () as usize;
                m.entry(key).or_default().push(ConsumerView {
                    consumer: c,
                    queue: q.clone(),
                });
            }
        }
    }
    m
}

fn channel_key(ch: &Arc<ChannelShared>) -> usize {
    Arc::as_ptr(ch) as *const () as usize
}

struct ChRow {
    name: String,
    vhost: String,
    user: String,
    conn: Arc<ConnInfo>,
    number: u16,
    ch: Arc<ChannelShared>,
}

impl Row for ChRow {
    fn name(&self) -> &str {
        &self.name
    }
    fn vhost(&self) -> &str {
        &self.vhost
    }
    fn owner(&self) -> Option<&str> {
        Some(&self.user)
    }
}

fn channel_rows(conns: Vec<CRow>) -> Vec<ChRow> {
    conns
        .into_iter()
        .flat_map(|CRow(c, v, user)| {
            c.channels()
                .into_iter()
                .map(|(n, ch)| ChRow {
                    name: format!("{} ({n})", c.name),
                    vhost: v.clone(),
                    user: user.clone(),
                    conn: c.clone(),
                    number: n,
                    ch,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn message_stats(c: &Counters) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("publish", c.publish),
        ("confirm", c.confirm),
        ("return_unroutable", c.return_unroutable),
        ("drop_unroutable", c.drop_unroutable),
        ("deliver", c.deliver),
        ("deliver_no_ack", c.deliver_no_ack),
        ("get", c.get),
        ("get_no_ack", c.get_no_ack),
        (
            "deliver_get",
            c.deliver + c.deliver_no_ack + c.get + c.get_no_ack,
        ),
        ("ack", c.ack),
        ("redeliver", c.redeliver),
    ] {
        m.insert(k.into(), v.into());
        m.insert(format!("{k}_details"), rate(0.0));
    }
    Value::Object(m)
}

fn channel_json(r: &ChRow, consumers: &HashMap<usize, Vec<ConsumerView>>) -> Value {
    let user = r.conn.details.lock().user.clone();
    let s = &r.ch.stats;
    json!({
        "name": r.name,
        "number": r.number,
        "node": node_name(),
        "vhost": r.vhost,
        "user": user,
        "user_who_performed_action": user,
        "state": "running",
        "connection_details": {
            "name": r.conn.name,
            "peer_host": r.conn.peer.ip().to_string(),
            "peer_port": r.conn.peer.port(),
        },
        "consumer_count": consumers.get(&channel_key(&r.ch)).map_or(0, Vec::len),
        "messages_unacknowledged": r.ch.unacked_count(),
        "messages_unconfirmed": 0,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "prefetch_count": s.prefetch.load(Ordering::Relaxed),
        "global_prefetch_count": r.ch.global_prefetch(),
        "confirm": s.confirm_mode.load(Ordering::Relaxed),
        "transactional": s.transactional.load(Ordering::Relaxed),
        "message_stats": message_stats(&Counters::of(s)),
    })
}

fn render_channels(st: &ServerState, p: &ListParams, rows: Vec<ChRow>) -> ApiResult<Json<Value>> {
    let consumers = consumers_by_channel(st);
    Ok(Json(p.apply(rows, |r| channel_json(r, &consumers))?))
}

async fn list_channels(State(st): St, Query(p): Query<ListParams>) -> ApiResult<Json<Value>> {
    let rows = channel_rows(conn_rows(&st, None));
    render_channels(&st, &p, rows)
}

async fn vhost_channels(
    State(st): St,
    Path(v): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    vhost(&st, &v)?;
    let rows = channel_rows(conn_rows(&st, Some(&v)));
    render_channels(&st, &p, rows)
}

async fn connection_channels(
    State(st): St,
    Path(name): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    let c = find_connection(&st, &name)?;
    let rows = channel_rows(
        conn_rows(&st, None)
            .into_iter()
            .filter(|r| Arc::ptr_eq(&r.0, &c))
            .collect(),
    );
    render_channels(&st, &p, rows)
}

async fn show_channel(State(st): St, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let rows = channel_rows(conn_rows(&st, None));
    let r = rows
        .iter()
        .find(|r| r.name == name && super::scope::visible(&r.vhost, Some(&r.user)))
        .ok_or(ApiError::NotFound)?;
    let consumers = consumers_by_channel(&st);
    Ok(Json(channel_json(r, &consumers)))
}

struct ConsRow {
    tag: String,
    vhost: String,
    json: Value,
}

impl Row for ConsRow {
    fn name(&self) -> &str {
        &self.tag
    }
    fn vhost(&self) -> &str {
        &self.vhost
    }
}

fn consumer_rows(st: &ServerState, only: Option<&str>) -> Vec<ConsRow> {
    let channels = channel_rows(conn_rows(st, only));
    let mut by_channel = consumers_by_channel(st);
    let mut out = Vec::new();
    for r in &channels {
        let Some(list) = by_channel.remove(&channel_key(&r.ch)) else {
            continue;
        };
        let user = r.conn.details.lock().user.clone();
        for cv in list {
            let c = &cv.consumer;
            let mut args = serde_json::Map::new();
            if c.priority != 0 {
                args.insert("x-priority".into(), c.priority.into());
            }
            out.push(ConsRow {
                tag: c.tag.clone(),
                vhost: r.vhost.clone(),
                json: json!({
                    "consumer_tag": c.tag,
                    "exclusive": c.exclusive,
                    "ack_required": !c.no_ack,
                    "prefetch_count": c.prefetch,
                    "active": true,
                    "activity_status": "up",
                    "arguments": args,
                    "consumer_timeout": null,
                    "queue": {"name": cv.queue.name, "vhost": cv.queue.vhost},
                    "channel_details": {
                        "name": r.name,
                        "number": r.number,
                        "connection_name": r.conn.name,
                        "peer_host": r.conn.peer.ip().to_string(),
                        "peer_port": r.conn.peer.port(),
                        "node": node_name(),
                        "user": user,
                    },
                }),
            });
        }
    }
    out
}

async fn list_consumers(State(st): St, Query(p): Query<ListParams>) -> ApiResult<Json<Value>> {
    Ok(Json(p.apply(consumer_rows(&st, None), |r| r.json.clone())?))
}

async fn vhost_consumers(
    State(st): St,
    Path(v): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    vhost(&st, &v)?;
    Ok(Json(
        p.apply(consumer_rows(&st, Some(&v)), |r| r.json.clone())?,
    ))
}
