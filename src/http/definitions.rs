//! /api/definitions: export and import in RabbitMQ's definitions format (users with their
//! limits, vhosts, permissions, topic permissions, vhost limits as the `vhost-limits`
//! parameters, queues, exchanges, bindings; policies and other parameters are empty here and
//! ignored on import). A RabbitMQ export imports, and Warren's export imports into RabbitMQ.

use super::error::{lenient, parse_body};
use super::limits::check_topic_patterns;
use super::users::{parse_tags, user_def, UserBody};
use super::{change, known, vhost, ApiError, ApiResult, ApiUser, St};
use crate::auth::limits::{self, USER_LIMITS, VHOST_LIMITS};
use crate::broker::exchange::Dest;
use crate::broker::json::{json_to_table, table_to_json};
use crate::broker::vhost::VHost;
use crate::cluster::access::{
    BindingDef, ExchangeDef, Import, PermissionDef, QueueDef, TopicPermissionDef, VhostDef,
};
use crate::cluster::meta::MetaOp;
use crate::ServerState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/definitions", get(export_all).post(import_all))
        .route(
            "/api/definitions/{vhost}",
            get(export_vhost).post(import_vhost),
        )
}

fn vhost_items(v: &VHost, with_vhost: bool) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let tag = |mut m: Map<String, Value>| {
        if with_vhost {
            m.insert("vhost".into(), Value::String(v.name.clone()));
        }
        Value::Object(m)
    };
    let mut queues: Vec<_> = v
        .queue_list()
        .into_iter()
        .filter(|q| q.exclusive_owner.is_none())
        .collect();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let mut exchanges: Vec<_> = v
        .exchange_list()
        .into_iter()
        .filter(|e| !e.name.is_empty() && !e.name.starts_with("amq."))
        .collect();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    let qs = queues
        .iter()
        .map(|q| {
            let mut m = Map::new();
            m.insert("name".into(), q.name.clone().into());
            m.insert("durable".into(), q.durable.into());
            m.insert("auto_delete".into(), q.auto_delete.into());
            m.insert("arguments".into(), table_to_json(&q.arguments));
            tag(m)
        })
        .collect();
    let xs = exchanges
        .iter()
        .map(|e| {
            let mut m = Map::new();
            m.insert("name".into(), e.name.clone().into());
            m.insert("type".into(), e.type_name().into());
            m.insert("durable".into(), e.durable.into());
            m.insert("auto_delete".into(), e.auto_delete.into());
            m.insert("internal".into(), e.internal.into());
            m.insert("arguments".into(), table_to_json(&e.arguments));
            tag(m)
        })
        .collect();
    let mut bs = Vec::new();
    let mut sources = v.exchange_list();
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    for e in sources.iter().filter(|e| !e.name.is_empty()) {
        for b in e.bindings() {
            let (kind, exported) = match &b.dest {
                Dest::Queue(q) => ("queue", q.exclusive_owner.is_none()),
                Dest::Exchange(_) => ("exchange", true),
            };
            if !exported {
                continue;
            }
            let mut m = Map::new();
            m.insert("source".into(), e.name.clone().into());
            m.insert("destination".into(), b.dest.name().into());
            m.insert("destination_type".into(), kind.into());
            m.insert("routing_key".into(), b.routing_key.clone().into());
            m.insert("arguments".into(), table_to_json(&b.arguments));
            bs.push(tag(m));
        }
    }
    (qs, xs, bs)
}

fn header() -> Map<String, Value> {
    let v = env!("CARGO_PKG_VERSION");
    let mut m = Map::new();
    m.insert("rabbit_version".into(), v.into());
    m.insert("rabbitmq_version".into(), v.into());
    m.insert("product_name".into(), "Warren".into());
    m.insert("product_version".into(), v.into());
    m
}

async fn export_all(State(st): St, Extension(u): Extension<ApiUser>) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    let mut m = header();
    m.insert(
        "users".into(),
        st.users
            .users()
            .iter()
            .map(super::users::user_json)
            .collect(),
    );
    m.insert(
        "vhosts".into(),
        st.users
            .vhosts()
            .iter()
            .map(|v| {
                json!({
                    "name": v.name,
                    "description": v.description,
                    "tags": v.tags,
                    "default_queue_type": v.default_queue_type.clone().unwrap_or_else(|| "classic".into()),
                    "metadata": {"description": v.description, "tags": v.tags},
                    "limits": [],
                })
            })
            .collect(),
    );
    m.insert(
        "permissions".into(),
        st.users
            .permissions()
            .iter()
            .map(super::users::permission_json)
            .collect(),
    );
    m.insert(
        "topic_permissions".into(),
        st.users
            .topic_permissions()
            .iter()
            .map(super::limits::topic_permission_json)
            .collect(),
    );
    m.insert(
        "parameters".into(),
        super::limits::vhost_limit_parameters(&st).into(),
    );
    for k in ["global_parameters", "policies"] {
        m.insert(k.into(), json!([]));
    }
    let (mut qs, mut xs, mut bs) = (Vec::new(), Vec::new(), Vec::new());
    for v in st.broker.vhost_list() {
        let (q, x, b) = vhost_items(&v, true);
        qs.extend(q);
        xs.extend(x);
        bs.extend(b);
    }
    m.insert("queues".into(), qs.into());
    m.insert("exchanges".into(), xs.into());
    m.insert("bindings".into(), bs.into());
    Ok(Json(Value::Object(m)))
}

async fn export_vhost(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(v): Path<String>,
) -> ApiResult<Json<Value>> {
    u.require_admin()?;
    let vh = vhost(&st, &v)?;
    let (qs, xs, bs) = vhost_items(&vh, false);
    let mut m = header();
    let mut params = super::limits::vhost_limit_parameters(&st);
    params.retain(|p| p["vhost"] == v.as_str());
    // A vhost's own export names no vhost, as RabbitMQ's.
    for p in &mut params {
        if let Some(o) = p.as_object_mut() {
            o.remove("vhost");
        }
    }
    m.insert("parameters".into(), params.into());
    m.insert("policies".into(), json!([]));
    m.insert("queues".into(), qs.into());
    m.insert("exchanges".into(), xs.into());
    m.insert("bindings".into(), bs.into());
    Ok(Json(Value::Object(m)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Definitions {
    users: Vec<Value>,
    vhosts: Vec<Value>,
    permissions: Vec<Value>,
    topic_permissions: Vec<Value>,
    parameters: Vec<Value>,
    queues: Vec<Value>,
    exchanges: Vec<Value>,
    bindings: Vec<Value>,
}

fn text<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// A boolean field of an item, "true"/"false" taken too (as the API's bodies take them);
/// missing or null is the default. Anything else is an error for that item (it used to be read
/// as the default, so `"durable": "false"` made a durable queue).
fn flag(v: &Value, k: &str, default: bool) -> Result<bool, String> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => lenient::bool_of(x).map_err(|reason| format!("{k}: {reason}")),
    }
}

/// Read a definitions document into the import it asks for; `only` imports everything into
/// that one vhost (per-vhost import). Clear passwords are hashed here, once. What is wrong with
/// an item (a bad flag, arguments, limits or pattern) is collected in `errors` and the item
/// left out; what depends on the broker's state (a missing vhost or user) is found when the
/// import is applied (`broker::admin`).
fn read_import(d: Definitions, only: Option<&str>, node: &str) -> Import {
    let mut imp = Import {
        node: node.to_owned(),
        ..Default::default()
    };
    let errors = &mut imp.errors;
    if only.is_none() {
        for v in &d.vhosts {
            let Some(name) = text(v, "name").filter(|n| !n.is_empty() && n.len() <= 255) else {
                errors.push("vhost without a valid name".into());
                continue;
            };
            let meta = v.get("metadata");
            let description = text(v, "description")
                .or_else(|| meta.and_then(|m| text(m, "description")))
                .unwrap_or_default()
                .to_owned();
            let tags = parse_tags(v.get("tags").or_else(|| meta.and_then(|m| m.get("tags"))));
            // Limits come with the "parameters" below, as RabbitMQ exports them.
            imp.vhosts.push(VhostDef {
                name: name.to_owned(),
                description: Some(description),
                tags: Some(tags),
                default_queue_type: text(v, "default_queue_type").map(str::to_owned),
            });
        }
        for u in &d.users {
            let Some(name) = text(u, "name").filter(|n| !n.is_empty() && n.len() <= 255) else {
                errors.push("user without a valid name".into());
                continue;
            };
            let body = UserBody {
                password: text(u, "password").map(str::to_owned),
                password_hash: text(u, "password_hash").map(str::to_owned),
                hashing_algorithm: text(u, "hashing_algorithm").map(str::to_owned),
                tags: u.get("tags").cloned(),
            };
            let mut user = user_def(name, body);
            if let Some(l) = u.get("limits") {
                match limits_of(l, &USER_LIMITS, "user-limits") {
                    Ok(l) => user.limits = Some(l),
                    Err(e) => errors.push(format!("user {name}: {e}")),
                }
            }
            imp.users.push(user);
        }
        for p in &d.permissions {
            imp.permissions.push(PermissionDef {
                user: text(p, "user").unwrap_or_default().to_owned(),
                vhost: text(p, "vhost").unwrap_or_default().to_owned(),
                configure: text(p, "configure").unwrap_or("").to_owned(),
                write: text(p, "write").unwrap_or("").to_owned(),
                read: text(p, "read").unwrap_or("").to_owned(),
            });
        }
        for p in &d.topic_permissions {
            let perm = TopicPermissionDef {
                user: text(p, "user").unwrap_or_default().to_owned(),
                vhost: text(p, "vhost").unwrap_or_default().to_owned(),
                exchange: text(p, "exchange").unwrap_or_default().to_owned(),
                write: text(p, "write").unwrap_or("").to_owned(),
                read: text(p, "read").unwrap_or("").to_owned(),
            };
            match check_topic_patterns(&perm) {
                Ok(()) => imp.topic_permissions.push(perm),
                Err(ApiError::BadRequest(e)) => errors.push(format!("topic permission: {e}")),
                Err(ApiError::BadValue(e)) => errors.push(format!("topic permission: {e}")),
                Err(_) => errors.push("topic permission: invalid".into()),
            }
        }
    }
    // Vhost limits travel as the vhost's `vhost-limits` parameter; other parameters are ignored.
    for p in &d.parameters {
        if text(p, "component") != Some("vhost-limits") {
            continue;
        }
        let Some(name) = only.or_else(|| text(p, "vhost")) else {
            errors.push("vhost-limits parameter without a vhost".into());
            continue;
        };
        let value = p.get("value").unwrap_or(&Value::Null);
        match limits_of(value, &VHOST_LIMITS, "limits") {
            Ok(l) => imp.vhost_limits.push((name.to_owned(), l)),
            Err(e) => errors.push(format!("vhost-limits of vhost '{name}': {e}")),
        }
    }
    let vhost_of = |item: &Value| {
        only.or_else(|| text(item, "vhost"))
            .unwrap_or("/")
            .to_owned()
    };
    let args = |item: &Value| json_to_table(item.get("arguments")).map_err(|e| e.to_string());
    for x in &d.exchanges {
        let r = (|| -> Result<ExchangeDef, String> {
            let name = text(x, "name").ok_or("exchange without a name")?;
            Ok(ExchangeDef {
                vhost: vhost_of(x),
                name: name.to_owned(),
                kind: text(x, "type").unwrap_or("direct").to_owned(),
                durable: flag(x, "durable", true).map_err(|e| format!("exchange {name}: {e}"))?,
                auto_delete: flag(x, "auto_delete", false)
                    .map_err(|e| format!("exchange {name}: {e}"))?,
                internal: flag(x, "internal", false)
                    .map_err(|e| format!("exchange {name}: {e}"))?,
                arguments: args(x)?,
            })
        })();
        match r {
            Ok(x) => imp.exchanges.push(x),
            Err(e) => errors.push(e),
        }
    }
    for q in &d.queues {
        let r = (|| -> Result<QueueDef, String> {
            let name = text(q, "name").ok_or("queue without a name")?;
            let mut arguments = args(q)?;
            // RabbitMQ 3.13+ exports the queue type as a field of its own.
            if let Some(t) = text(q, "type") {
                if !arguments.inner().contains_key("x-queue-type") && t != "classic" {
                    arguments.insert(
                        "x-queue-type".into(),
                        amq_protocol::types::AMQPValue::LongString(t.into()),
                    );
                }
            }
            Ok(QueueDef {
                vhost: vhost_of(q),
                name: name.to_owned(),
                durable: flag(q, "durable", true).map_err(|e| format!("queue {name}: {e}"))?,
                auto_delete: flag(q, "auto_delete", false)
                    .map_err(|e| format!("queue {name}: {e}"))?,
                arguments,
            })
        })();
        match r {
            Ok(q) => imp.queues.push(q),
            Err(e) => errors.push(e),
        }
    }
    for b in &d.bindings {
        let r = (|| -> Result<BindingDef, String> {
            let source = text(b, "source").ok_or("binding without a source")?;
            let dest = text(b, "destination").ok_or("binding without a destination")?;
            Ok(BindingDef {
                vhost: vhost_of(b),
                source: source.to_owned(),
                destination: dest.to_owned(),
                to_queue: text(b, "destination_type") != Some("exchange"),
                routing_key: text(b, "routing_key").unwrap_or_default().to_owned(),
                arguments: args(b)?,
            })
        })();
        match r {
            Ok(b) => imp.bindings.push(b),
            Err(e) => errors.push(e),
        }
    }
    imp
}

/// Import a document. On a single node: one change, applied at once. In a cluster: its vhosts,
/// users, permissions, topic permissions and limits as one operation (applied at once on every
/// node), then each exchange, queue and binding as the declare or bind it is (a queue lives on
/// this node, a quorum queue gets its group, as when declared over AMQP). Item errors are one
/// 400 naming each (the others are imported, as RabbitMQ does), a store failure a 500.
async fn import(st: &ServerState, d: Definitions, only: Option<&str>) -> ApiResult<StatusCode> {
    let Some(c) = st.broker.cluster() else {
        let defs = Box::new(read_import(d, only, ""));
        change(st, MetaOp::Import { defs }).await?;
        return Ok(StatusCode::NO_CONTENT);
    };
    let mut imp = read_import(d, only, &c.name);
    let exchanges = std::mem::take(&mut imp.exchanges);
    let queues = std::mem::take(&mut imp.queues);
    let bindings = std::mem::take(&mut imp.bindings);
    let mut errors = Vec::new();
    match change(
        st,
        MetaOp::Import {
            defs: Box::new(imp),
        },
    )
    .await
    {
        Ok(()) => {}
        Err(ApiError::BadRequest(e)) => errors.push(e),
        Err(e) => return Err(e),
    }
    let ops = exchanges
        .into_iter()
        .map(|x| {
            let (what, vhost) = (format!("exchange {}", x.name), x.vhost.clone());
            let op = MetaOp::DeclareExchange {
                vhost: x.vhost,
                name: x.name,
                kind: x.kind,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments,
            };
            (what, vhost, op)
        })
        .chain(queues.into_iter().map(|q| {
            let (what, vhost) = (format!("queue {}", q.name), q.vhost.clone());
            let op = MetaOp::DeclareQueue {
                vhost: q.vhost,
                name: q.name,
                node: c.name.clone(),
                durable: q.durable,
                auto_delete: q.auto_delete,
                arguments: q.arguments,
            };
            (what, vhost, op)
        }))
        .chain(bindings.into_iter().map(|b| {
            let what = format!("binding {} -> {}", b.source, b.destination);
            let vhost = b.vhost.clone();
            let op = MetaOp::Bind {
                vhost: b.vhost,
                source: b.source,
                destination: b.destination,
                to_queue: b.to_queue,
                routing_key: b.routing_key,
                arguments: b.arguments,
            };
            (what, vhost, op)
        }));
    for (what, vhost, op) in ops {
        // As a single node reports it (the import's own vhosts are applied here by now).
        if st.broker.vhost(&vhost).is_none() {
            errors.push(format!("no vhost '{vhost}'"));
            continue;
        }
        let applied = c.propose(op).await.map_err(ApiError::Unavailable)?;
        if let Some(r) = applied.error {
            errors.push(format!("{what}: {}", r.text));
        }
    }
    if errors.is_empty() {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::bad(errors.join("; ")))
    }
}

/// A definitions' limits object, each checked as the API checks one.
fn limits_of(v: &Value, known: &[&str], what: &str) -> Result<BTreeMap<String, i64>, String> {
    let Some(m) = v.as_object() else {
        return Err(format!("limits must be an object, not {v}"));
    };
    m.iter()
        .map(|(k, v)| limits::check(known, k, v, what).map(|n| (k.clone(), n)))
        .collect()
}

async fn import_all(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    let d: Definitions = parse_body(&body)?;
    import(&st, d, None).await
}

async fn import_vhost(
    State(st): St,
    Extension(u): Extension<ApiUser>,
    Path(v): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    u.require_admin()?;
    if !known(&st, || st.broker.vhost(&v).is_some()).await {
        return Err(ApiError::NotFound);
    }
    let d: Definitions = parse_body(&body)?;
    import(&st, d, Some(&v)).await
}
