//! /api/definitions: export and import in RabbitMQ's definitions format (users with their
//! limits, vhosts, permissions, topic permissions, vhost limits as the `vhost-limits`
//! parameters, queues, exchanges, bindings; policies and other parameters are empty here and
//! ignored on import). A RabbitMQ export imports, and Warren's export imports into RabbitMQ.

use super::error::{lenient, parse_body};
use super::limits::check_topic_patterns;
use super::users::{parse_tags, user_def, UserBody};
use super::{known, vhost, ApiError, ApiResult, ApiUser, St};
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

/// Operations of a cluster import proposed at once.
const IMPORT_WINDOW: usize = 32;

/// One operation of a cluster import: how its refusal is reported, and the vhost it needs
/// (reported as a single node reports it when missing).
struct Item {
    op: MetaOp,
    /// The refusal's text follows this; `whole`: the report is this, whatever the refusal.
    what: String,
    whole: bool,
    needs: Option<String>,
}

fn item(op: MetaOp, what: String) -> Item {
    Item {
        op,
        what,
        whole: false,
        needs: None,
    }
}

/// Import a document. On a single node: applied at once (`Admin::import`). In a cluster: each
/// vhost, user, permission, limit, exchange, queue and binding proposed as the operation it is,
/// in that order, a window of them at a time (each one light to apply: a queue lives on this
/// node, a quorum queue gets its group, as when declared over AMQP). Item errors are one 400
/// naming each (the others are imported, as RabbitMQ does), a store failure a 500.
async fn import(st: &ServerState, d: Definitions, only: Option<&str>) -> ApiResult<StatusCode> {
    let Some(c) = st.broker.cluster() else {
        let errors = st.admin().import(&read_import(d, only, ""))?;
        return finish(errors);
    };
    let imp = read_import(d, only, &c.name);
    let mut errors = imp.errors;
    let vhosts = imp
        .vhosts
        .into_iter()
        .map(|def| item(MetaOp::PutVhost { def, grant: None }, String::new()))
        .collect();
    let users = imp
        .users
        .into_iter()
        .map(|def| {
            let what = format!("user {}", def.name);
            item(MetaOp::PutUser { def }, what)
        })
        .collect();
    let mut grants: Vec<Item> = imp
        .permissions
        .into_iter()
        .map(|def| item(MetaOp::PutPermission { def }, "permission".into()))
        .collect();
    grants.extend(imp.topic_permissions.into_iter().map(|def| {
        item(
            MetaOp::PutTopicPermission { def },
            "topic permission".into(),
        )
    }));
    for (vhost, l) in imp.vhost_limits {
        for k in VHOST_LIMITS {
            grants.push(Item {
                op: MetaOp::SetVhostLimit {
                    vhost: vhost.clone(),
                    name: k.to_owned(),
                    value: l.get(k).copied(),
                },
                what: format!("vhost-limits: no vhost '{vhost}'"),
                whole: true,
                needs: None,
            });
        }
    }
    let exchanges = imp
        .exchanges
        .into_iter()
        .map(|x| Item {
            what: format!("exchange {}", x.name),
            needs: Some(x.vhost.clone()),
            whole: false,
            op: MetaOp::DeclareExchange {
                vhost: x.vhost,
                name: x.name,
                kind: x.kind,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments,
            },
        })
        .collect();
    let queues = imp
        .queues
        .into_iter()
        .map(|q| Item {
            what: format!("queue {}", q.name),
            needs: Some(q.vhost.clone()),
            whole: false,
            op: MetaOp::DeclareQueue {
                vhost: q.vhost,
                name: q.name,
                node: c.name.clone(),
                durable: q.durable,
                auto_delete: q.auto_delete,
                arguments: q.arguments,
            },
        })
        .collect();
    let bindings = imp
        .bindings
        .into_iter()
        .map(|b| Item {
            what: format!("binding {} -> {}", b.source, b.destination),
            needs: Some(b.vhost.clone()),
            whole: false,
            op: MetaOp::Bind {
                vhost: b.vhost,
                source: b.source,
                destination: b.destination,
                to_queue: b.to_queue,
                routing_key: b.routing_key,
                arguments: b.arguments,
            },
        })
        .collect();
    // Each stage needs the ones before it applied (proposals answer once applied here).
    let stages: [Vec<Item>; 6] = [vhosts, users, grants, exchanges, queues, bindings];
    for stage in stages {
        use futures_util::StreamExt;
        let results: Vec<ApiResult<Option<String>>> = futures_util::stream::iter(stage)
            .map(|i| async move {
                if let Some(v) = i.needs.filter(|v| st.broker.vhost(v).is_none()) {
                    return Ok(Some(format!("no vhost '{v}'")));
                }
                let applied = c.propose(i.op).await.map_err(ApiError::Unavailable)?;
                match applied.error {
                    None => Ok(None),
                    // The store refused it: the import ends with that error (as alone).
                    Some(r) if r.code == crate::error::code::INTERNAL_ERROR => {
                        Err(ApiError::Internal(r.text))
                    }
                    Some(_) if i.whole => Ok(Some(i.what)),
                    Some(r) => Ok(Some(format!("{}: {}", i.what, r.text))),
                }
            })
            .buffered(IMPORT_WINDOW)
            .collect()
            .await;
        for r in results {
            if let Some(e) = r? {
                // A vhost's missing limits are reported once.
                if errors.last() != Some(&e) {
                    errors.push(e);
                }
            }
        }
    }
    finish(errors)
}

fn finish(errors: Vec<String>) -> ApiResult<StatusCode> {
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
