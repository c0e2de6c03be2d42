//! What the metadata group's access-control operations carry (`MetaOp::PutVhost`, `PutUser`,
//! …): vhosts, users (a password only ever as its hash, made once on the proposing node),
//! permissions, topic permissions; and a definitions import read into these items (a single
//! node applies it at once; a cluster proposes its items one by one).
//!
//! These structures are written into the Raft log with postcard, which reads fields by
//! position: never add, remove or reorder a field of a structure already in use, and never use
//! `skip_serializing_if` (a new field means a new operation variant at the end of `MetaOp`).

use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A vhost created or updated. `None` keeps what the vhost has (or the default for a new one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostDef {
    pub name: String,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub default_queue_type: Option<String>,
}

/// A password hash in RabbitMQ's format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasswordHash {
    pub hash: String,
    pub algorithm: String,
}

/// A user created or updated. `None` keeps what the user has; a new user needs a password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDef {
    pub name: String,
    pub password: Option<PasswordHash>,
    pub tags: Option<Vec<String>>,
    /// All its limits at once (definitions import); the API sets them one by one.
    pub limits: Option<BTreeMap<String, i64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionDef {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicPermissionDef {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub to_queue: bool,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// A definitions document (`POST /api/definitions`), read and checked on the node that took
/// it: in order, items that cannot be applied are reported and the others applied. Not itself
/// written into the Raft log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Import {
    pub vhosts: Vec<VhostDef>,
    pub users: Vec<UserDef>,
    pub permissions: Vec<PermissionDef>,
    pub topic_permissions: Vec<TopicPermissionDef>,
    /// A vhost and all its limits (its `vhost-limits` parameter).
    pub vhost_limits: Vec<(String, BTreeMap<String, i64>)>,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
    /// The node where queues it creates live (the importing node; empty on a single node).
    pub node: String,
    /// What reading the document found wrong (reported first, with what applying finds).
    pub errors: Vec<String>,
}
