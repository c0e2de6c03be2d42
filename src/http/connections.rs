//! /api/connections (DELETE closes one with 320 CONNECTION_FORCED), /api/channels and
//! /api/consumers, from what `observe` records of connections, channels and their consumers:
//! nothing here takes a lock the message path takes.

use super::paging::{ListParams, Row};
use super::{node_name, rate, vhost, ApiError, ApiResult, St};
use crate::observe::{ChannelObs, ConnInfo, Counters};
use crate::ServerState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
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
    let tls = c.tls.as_deref();
    let cert = tls.and_then(|t| t.peer_cert.as_ref());
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
        "ssl": tls.is_some(),
        "peer_cert_subject": cert.map(|p| &p.subject),
        "peer_cert_issuer": cert.map(|p| &p.issuer),
        "peer_cert_validity": cert.map(|p| &p.validity),
        "ssl_protocol": tls.map(|t| &t.protocol),
        "ssl_cipher": tls.map(|t| &t.cipher),
        "ssl_key_exchange": tls.map(|t| &t.key_exchange),
        "ssl_hash": tls.map(|t| &t.hash),
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

struct ChRow {
    name: String,
    vhost: String,
    user: String,
    conn: Arc<ConnInfo>,
    number: u16,
    ch: Arc<ChannelObs>,
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

fn channel_json(r: &ChRow) -> Value {
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
        "consumer_count": r.ch.consumer_count(),
        "messages_unacknowledged": r.ch.unacked(),
        "messages_unconfirmed": s.unconfirmed.load(Ordering::Relaxed),
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "prefetch_count": s.prefetch.load(Ordering::Relaxed),
        "global_prefetch_count": s.global_prefetch.load(Ordering::Relaxed),
        "confirm": s.confirm_mode.load(Ordering::Relaxed),
        "transactional": s.transactional.load(Ordering::Relaxed),
        "message_stats": message_stats(&Counters::of(s)),
    })
}

fn render_channels(p: &ListParams, rows: Vec<ChRow>) -> ApiResult<Json<Value>> {
    Ok(Json(p.apply(rows, channel_json)?))
}

async fn list_channels(State(st): St, Query(p): Query<ListParams>) -> ApiResult<Json<Value>> {
    let rows = channel_rows(conn_rows(&st, None));
    render_channels(&p, rows)
}

async fn vhost_channels(
    State(st): St,
    Path(v): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    vhost(&st, &v)?;
    let rows = channel_rows(conn_rows(&st, Some(&v)));
    render_channels(&p, rows)
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
    render_channels(&p, rows)
}

async fn show_channel(State(st): St, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let rows = channel_rows(conn_rows(&st, None));
    let r = rows
        .iter()
        .find(|r| r.name == name && super::scope::visible(&r.vhost, Some(&r.user)))
        .ok_or(ApiError::NotFound)?;
    Ok(Json(channel_json(r)))
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
    let mut out = Vec::new();
    for r in channel_rows(conn_rows(st, only)) {
        for c in r.ch.consumers() {
            out.push(ConsRow {
                tag: c.tag.clone(),
                vhost: r.vhost.clone(),
                json: json!({
                    "consumer_tag": c.tag,
                    "exclusive": c.exclusive,
                    "ack_required": c.ack_required,
                    "prefetch_count": c.prefetch,
                    // RabbitMQ 3.10 shows every 0-9-1 stream consumer as not active.
                    "active": !c.stream,
                    "activity_status": "up",
                    "arguments": crate::broker::json::table_to_json(&c.arguments),
                    "consumer_timeout": null,
                    "queue": {"name": c.queue, "vhost": c.vhost},
                    "channel_details": {
                        "name": r.name,
                        "number": r.number,
                        "connection_name": r.conn.name,
                        "peer_host": r.conn.peer.ip().to_string(),
                        "peer_port": r.conn.peer.port(),
                        "node": node_name(),
                        "user": r.user,
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
