//! /api/overview, /api/nodes, /api/whoami, health checks and the small fixed resources.

use super::{node_name, rate, vhost, ApiError, ApiResult, ApiUser, St};
use crate::metrics::GlobalRates;
use crate::ServerState;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{name}", get(node))
        .route("/api/whoami", get(whoami))
        .route("/api/cluster-name", get(cluster_name))
        .route("/api/extensions", get(empty_list))
        .route("/api/policies", get(empty_list))
        .route("/api/policies/{vhost}", get(empty_list))
        .route("/api/operator-policies", get(empty_list))
        .route("/api/global-parameters", get(empty_list))
        .route("/api/health/checks/alive", get(ok))
        .route("/api/health/checks/local-alarms", get(local_alarms))
        .route("/api/health/checks/alarms", get(local_alarms))
        .route("/api/health/checks/virtual-hosts", get(ok))
        .route("/api/health/checks/node-is-quorum-critical", get(ok))
        .route("/api/health/checks/node-is-mirror-sync-critical", get(ok))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(protocol_listener),
        )
        .route("/api/health/checks/ready-to-serve-clients", get(ok))
        .route("/api/aliveness-test/{vhost}", get(aliveness))
}

async fn empty_list() -> Json<Value> {
    Json(json!([]))
}

async fn ok() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn local_alarms(State(st): St) -> ApiResult<Json<Value>> {
    if st.broker.memory.alarmed() {
        return Err(ApiError::Unavailable(format!(
            "memory alarm in effect on node {}",
            node_name()
        )));
    }
    Ok(Json(json!({"status": "ok"})))
}

async fn port_listener(State(st): St, Path(port): Path<String>) -> ApiResult<Json<Value>> {
    let p: u16 = port
        .parse()
        .map_err(|_| ApiError::bad(format!("invalid port '{port}'")))?;
    let l = &st.listeners;
    let ports = [
        Some(l.amqp.port()),
        Some(l.http.port()),
        l.prometheus.map(|a| a.port()),
    ];
    if ports.contains(&Some(p)) {
        Ok(Json(json!({"status": "ok", "port": p})))
    } else {
        Err(ApiError::Unavailable(format!(
            "No active listener on port {p}"
        )))
    }
}

async fn protocol_listener(Path(proto): Path<String>) -> ApiResult<Json<Value>> {
    match proto.as_str() {
        "amqp" | "amqp091" | "amqp0-9-1" | "http" => {
            Ok(Json(json!({"status": "ok", "protocol": proto})))
        }
        _ => Err(ApiError::Unavailable(format!(
            "No active listener for protocol {proto}"
        ))),
    }
}

/// Declare `aliveness-test` in the vhost, publish to it and get the message back.
async fn aliveness(State(st): St, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    use crate::broker::message::Properties;
    use crate::broker::vhost::{Publish, RouteCache};
    let v = vhost(&st, &name)?;
    let (q, _) = v.declare_queue(
        "aliveness-test",
        &crate::broker::vhost::QueueDeclare::default(),
        0,
    )?;
    q.purge();
    // Through the default exchange, as any publish.
    let p = Publish::new(
        bytes::Bytes::new(),
        bytes::Bytes::from_static(b"aliveness-test"),
        Properties::default(),
        bytes::Bytes::from_static(b"test_message"),
        st.broker.memory,
        false,
    )?;
    v.publish(&p, &mut RouteCache::default())?;
    match q.get(true) {
        Some((e, _)) if e.msg.body[..] == b"test_message"[..] => Ok(Json(json!({"status": "ok"}))),
        _ => Err(ApiError::Unavailable("aliveness test failed".into())),
    }
}

async fn whoami(Extension(u): Extension<ApiUser>) -> Json<Value> {
    Json(json!({"name": u.name, "tags": u.tags}))
}

async fn cluster_name() -> Json<Value> {
    Json(json!({"name": node_name()}))
}

/// RabbitMQ's global `message_stats`: counters and their rates.
pub fn message_stats(c: &crate::observe::Counters, r: &GlobalRates) -> Value {
    let deliver_get = c.deliver + c.deliver_no_ack + c.get + c.get_no_ack;
    let rg = r.counters;
    json!({
        "publish": c.publish, "publish_details": rate(rg[0]),
        "confirm": c.confirm, "confirm_details": rate(rg[2]),
        "return_unroutable": c.return_unroutable, "return_unroutable_details": rate(rg[3]),
        "drop_unroutable": c.drop_unroutable, "drop_unroutable_details": rate(rg[4]),
        "deliver": c.deliver, "deliver_details": rate(rg[5]),
        "deliver_no_ack": c.deliver_no_ack, "deliver_no_ack_details": rate(rg[6]),
        "get": c.get, "get_details": rate(rg[7]),
        "get_no_ack": c.get_no_ack, "get_no_ack_details": rate(rg[8]),
        "deliver_get": deliver_get,
        "deliver_get_details": rate(rg[5] + rg[6] + rg[7] + rg[8]),
        "ack": c.ack, "ack_details": rate(rg[9]),
        "redeliver": c.redeliver, "redeliver_details": rate(rg[10]),
    })
}

fn exchange_types() -> Value {
    json!([
        {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
        {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
        {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
        {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
    ])
}

async fn overview(State(st): St) -> Json<Value> {
    // Totals over what the user may see (management users: their vhosts and connections).
    let conns: Vec<_> = st
        .connections
        .list()
        .into_iter()
        .filter(|c| {
            let d = c.details.lock();
            super::scope::visible(d.vhost.as_deref().unwrap_or(""), Some(&d.user))
        })
        .collect();
    let channels: usize = conns.iter().map(|c| c.channel_count()).sum();
    let (mut queues, mut exchanges, mut consumers) = (0usize, 0usize, 0u64);
    let (mut ready, mut unacked) = (0u64, 0u64);
    for v in st.broker.vhost_list() {
        if !super::scope::visible(&v.name, None) {
            continue;
        }
        exchanges += v.exchange_count();
        for q in v.queue_list() {
            let s = q.snapshot();
            queues += 1;
            consumers += s.consumers as u64;
            ready += s.ready;
            unacked += s.unacked;
        }
    }
    let r = st.rates.global();
    let version = env!("CARGO_PKG_VERSION");
    let listen = |proto: &str, addr: std::net::SocketAddr| {
        json!({
            "node": node_name(),
            "protocol": proto,
            "ip_address": addr.ip().to_string(),
            "port": addr.port(),
            "socket_opts": {},
        })
    };
    let l = st.listeners;
    let mut listeners = vec![listen("amqp", l.amqp), listen("http", l.http)];
    if let Some(p) = l.amqps {
        listeners.push(listen("amqp/ssl", p));
    }
    if let Some(p) = l.https {
        listeners.push(listen("https", p));
    }
    if let Some(p) = l.prometheus {
        listeners.push(listen("http/prometheus", p));
    }
    Json(json!({
        "management_version": version,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [600, 3600, 28800, 86400], "basic": [600, 3600], "detailed": [600]},
        "exchange_types": exchange_types(),
        "product_version": version,
        "product_name": "Warren",
        "rabbitmq_version": version,
        "cluster_name": node_name(),
        "erlang_version": "none (Rust)",
        "erlang_full_version": "none (Rust)",
        "release_series_support_status": "supported",
        "disable_stats": false,
        "is_op_policy_updating_enabled": false,
        "enable_queue_totals": true,
        "message_stats": message_stats(&st.connections.totals(), &r),
        "churn_rates": {},
        "queue_totals": {
            "messages": ready + unacked, "messages_details": rate(r.messages),
            "messages_ready": ready, "messages_ready_details": rate(r.ready),
            "messages_unacknowledged": unacked, "messages_unacknowledged_details": rate(r.unacked),
        },
        "object_totals": {
            "channels": channels,
            "connections": conns.len(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "statistics_db_event_queue": 0,
        "node": node_name(),
        "listeners": listeners,
        "contexts": [{"node": node_name(), "description": "RabbitMQ Management", "path": "/", "port": l.http.port().to_string()}],
    }))
}

fn node_json(st: &ServerState) -> Value {
    let used = st.broker.memory.used();
    let limit = st.config.memory_limit();
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "being_drained": false,
        "mem_used": crate::metrics::resident_memory().unwrap_or(used),
        "mem_used_details": rate(0.0),
        "mem_limit": limit,
        "mem_alarm": st.broker.memory.alarmed(),
        "disk_free_alarm": st.broker.disk.alarmed(),
        "disk_free": st.broker.disk.free(),
        "disk_free_limit": st.broker.disk.limit(),
        "fd_used": crate::metrics::open_fds().unwrap_or(0),
        "fd_total": crate::metrics::max_fds().unwrap_or(0),
        "sockets_used": st.connections.list().len(),
        "sockets_total": st.config.max_connections,
        "proc_used": 0,
        "processors": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "uptime": st.rates.uptime().as_millis() as u64,
        "run_queue": 0,
        "os_pid": std::process::id().to_string(),
        "rates_mode": "basic",
        "partitions": [],
        "applications": [],
        "exchange_types": exchange_types(),
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_prometheus"],
    })
}

/// Every node: this one with its figures; in a cluster, the other members too, each with
/// whether it answers this node now (`running`), as RabbitMQ lists a stopped member. A node with
/// `[cluster]` that has not yet formed or joined one lists itself alone.
async fn all_nodes(st: &ServerState) -> Vec<Value> {
    let Some(c) = st.broker.cluster() else {
        return vec![node_json(st)];
    };
    let status = c.status().await;
    if status.members.is_empty() {
        return vec![node_json(st)];
    }
    status
        .members
        .iter()
        .map(|m| {
            let mut v = if m.me {
                node_json(st)
            } else {
                json!({"name": m.name, "type": "disc", "running": m.running})
            };
            v["cluster_addr"] = json!(m.addr);
            v["voter"] = json!(m.voter);
            v["metadata_leader"] = json!(m.leader);
            v
        })
        .collect()
}

async fn nodes(State(st): St, Extension(u): Extension<ApiUser>) -> ApiResult<Json<Value>> {
    u.require_monitor()?;
    Ok(Json(Value::Array(all_nodes(&st).await)))
}

async fn node(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    u.require_monitor()?;
    all_nodes(&st)
        .await
        .into_iter()
        .find(|n| n["name"] == name.as_str())
        .map(Json)
        .ok_or(ApiError::NotFound)
}
