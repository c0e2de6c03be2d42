//! Vhosts, users, permissions, topic permissions, limits and definitions imports: every change
//! the management API makes to them is a `MetaOp` applied here by [`Admin::apply`]. A single
//! node applies it at once; in a cluster the metadata group commits it and every node applies
//! it, in the same order, through the same call (`replicated.rs`). The outcome depends only on
//! state every node holds alike (users, permissions, vhosts and their definitions); closing the
//! connections of a deleted user or vhost is each node's own business.
//!
//! Errors are AMQP-shaped, as every applied operation's: 404 for what does not exist, 406 with
//! the API's reason for a change that cannot be made, 541 for a change the store refused (the
//! management API answers 404, 400 and 500).

use super::vhost::{ExchangeDeclare, QueueDeclare, VHost};
use super::Broker;
use crate::auth::{Access, Permission, TopicPermission, User, VhostMeta, SHA256};
use crate::cluster::access::{
    Import, PasswordHash, PermissionDef, TopicPermissionDef, UserDef, VhostDef,
};
use crate::cluster::meta::MetaOp;
use crate::error::{code, AmqpError, AmqpResult};
use crate::observe::Registry;
use crate::store::{Store, StoreError};
use std::sync::Arc;

/// The parts of a node that access-control changes touch.
pub struct Admin<'a> {
    pub broker: &'a Broker,
    pub access: &'a Access,
    pub connections: &'a Registry,
    pub store: &'a Option<Arc<Store>>,
}

/// A store failure: nothing changed (the API's 500).
fn stored<T>(r: Result<T, StoreError>) -> AmqpResult<T> {
    r.map_err(|e| {
        tracing::error!("{e}");
        AmqpError::channel(code::INTERNAL_ERROR, e.to_string())
    })
}

fn not_found() -> AmqpError {
    AmqpError::not_found("Not Found")
}

/// A refusal the API answers with a 400 and this reason.
fn bad(reason: impl Into<String>) -> AmqpError {
    AmqpError::precondition(reason)
}

fn found(r: Result<bool, StoreError>) -> AmqpResult<()> {
    if stored(r)? {
        Ok(())
    } else {
        Err(not_found())
    }
}

pub fn permission_of(d: &PermissionDef) -> Permission {
    Permission {
        user: d.user.clone(),
        vhost: d.vhost.clone(),
        configure: d.configure.clone(),
        write: d.write.clone(),
        read: d.read.clone(),
    }
}

pub fn topic_permission_of(d: &TopicPermissionDef) -> TopicPermission {
    TopicPermission {
        user: d.user.clone(),
        vhost: d.vhost.clone(),
        exchange: d.exchange.clone(),
        write: d.write.clone(),
        read: d.read.clone(),
    }
}

/// A user's password as given to the API: hashed here, once (a cluster replicates the hash).
pub fn password(
    clear: Option<&str>,
    hash: Option<&str>,
    algorithm: Option<&str>,
) -> Option<PasswordHash> {
    match (clear, hash) {
        (Some(p), _) => Some(PasswordHash {
            hash: crate::auth::hash_password(p),
            algorithm: SHA256.to_owned(),
        }),
        (None, Some(h)) => Some(PasswordHash {
            hash: h.to_owned(),
            algorithm: algorithm.unwrap_or(SHA256).to_owned(),
        }),
        (None, None) => None,
    }
}

impl Admin<'_> {
    /// Apply one operation.
    pub fn apply(&self, op: &MetaOp) -> AmqpResult<()> {
        match op {
            MetaOp::PutVhost { def, grant } => self.put_vhost(def, grant.as_deref()).map(|_| ()),
            MetaOp::DeleteVhost { name } => self.delete_vhost(name),
            MetaOp::PutUser { def } => self.put_user(def),
            MetaOp::DeleteUser { name } => self.delete_user(name),
            MetaOp::PutPermission { def } => self.put_permission(def),
            MetaOp::DeletePermission { user, vhost } => {
                found(self.access.delete_permission(user, vhost))
            }
            MetaOp::PutTopicPermission { def } => self.put_topic_permission(def),
            MetaOp::DeleteTopicPermissions {
                user,
                vhost,
                exchange,
            } => found(
                self.access
                    .delete_topic_permissions(user, vhost, exchange.as_deref()),
            ),
            MetaOp::SetVhostLimit { vhost, name, value } => {
                found(self.access.set_vhost_limit(vhost, name, *value))
            }
            MetaOp::SetUserLimit { user, name, value } => {
                found(self.access.set_user_limit(user, name, *value))
            }
            _ => Err(AmqpError::channel(
                code::INTERNAL_ERROR,
                "not an access-control operation",
            )),
        }
    }

    /// Create or update a vhost (true: created). A new vhost gets `grant` if its user has no
    /// permission on it yet (the creator may use what it created, as in RabbitMQ's UI).
    pub fn put_vhost(&self, def: &VhostDef, grant: Option<&PermissionDef>) -> AmqpResult<bool> {
        let old = self.access.vhost(&def.name);
        let created = old.is_none() || self.broker.vhost(&def.name).is_none();
        let base = old.unwrap_or_else(|| VhostMeta {
            description: String::new(),
            ..VhostMeta::named(&def.name)
        });
        let meta = VhostMeta {
            name: def.name.clone(),
            description: def.description.clone().unwrap_or(base.description),
            tags: def.tags.clone().unwrap_or(base.tags),
            default_queue_type: def.default_queue_type.clone().or(base.default_queue_type),
            limits: base.limits,
        };
        let grant = grant
            .filter(|g| created && self.access.permission(&g.user, &def.name).is_none())
            .filter(|g| self.access.user(&g.user).is_some())
            .map(|g| Permission {
                vhost: def.name.clone(),
                ..permission_of(g)
            });
        stored(self.access.put_vhost(meta, grant))?;
        self.broker.add_vhost(&def.name, self.store.clone());
        Ok(created)
    }

    /// Delete a vhost and everything in it, closing its connections (320, RabbitMQ's text).
    pub fn delete_vhost(&self, name: &str) -> AmqpResult<()> {
        if self.access.vhost(name).is_none() && self.broker.vhost(name).is_none() {
            return Err(not_found());
        }
        // Its metadata and permissions leave the store first: if they cannot, nothing is deleted.
        stored(self.access.delete_vhost(name))?;
        for c in self.connections.list() {
            if c.details.lock().vhost.as_deref() == Some(name) {
                c.close(&format!("vhost '{name}' is deleted"));
            }
        }
        let groups: Vec<_> = self
            .broker
            .vhost(name)
            .map(|v| v.queue_list())
            .unwrap_or_default()
            .iter()
            .filter_map(|q| q.replica().map(|r| r.def.group))
            .collect();
        self.broker.delete_vhost(name);
        // Its quorum queues' groups and their files go with it, on every member (as when a
        // quorum queue is deleted).
        if let Some(c) = self.broker.cluster() {
            for g in groups {
                let c = c.clone();
                tokio::spawn(async move { c.stop_queue_group(g, true).await });
            }
        }
        Ok(())
    }

    /// The user `def` makes of the user named so now (`None`: it exists).
    fn user_of(&self, def: &UserDef) -> AmqpResult<User> {
        let old = self.access.user(&def.name);
        let (password_hash, hashing_algorithm) = match (&def.password, &old) {
            (Some(p), _) => (p.hash.clone(), p.algorithm.clone()),
            (None, Some(o)) => (o.password_hash.clone(), o.hashing_algorithm.clone()),
            (None, None) => {
                return Err(bad("Must specify password or password_hash for a new user"))
            }
        };
        let old_tags = old.as_ref().map(|o| o.tags.clone()).unwrap_or_default();
        Ok(User {
            name: def.name.clone(),
            password_hash,
            hashing_algorithm,
            tags: def.tags.clone().unwrap_or(old_tags),
            limits: match &def.limits {
                Some(l) => l.clone(),
                None => old.map(|o| o.limits).unwrap_or_default(),
            },
        })
    }

    /// Whether `def` can be applied now (a new user needs a password).
    pub fn check_user(&self, def: &UserDef) -> AmqpResult<()> {
        self.user_of(def).map(|_| ())
    }

    pub fn put_user(&self, def: &UserDef) -> AmqpResult<()> {
        let u = self.user_of(def)?;
        stored(self.access.put_user(u))
    }

    /// Delete a user and its permissions, closing its connections (320, RabbitMQ's text).
    pub fn delete_user(&self, name: &str) -> AmqpResult<()> {
        found(self.access.delete_user(name))?;
        for c in self.connections.list() {
            if c.details.lock().user == name {
                c.close(&format!("user '{name}' is deleted"));
            }
        }
        Ok(())
    }

    /// A permission's user and vhost exist and its patterns compile (the API's 400 reasons).
    pub fn check_permission(&self, p: &PermissionDef) -> AmqpResult<()> {
        if self.access.user(&p.user).is_none() {
            return Err(bad(format!("no_such_user: {}", p.user)));
        }
        if self.broker.vhost(&p.vhost).is_none() {
            return Err(bad(format!("no_such_vhost: {}", p.vhost)));
        }
        for (k, re) in [
            ("configure", &p.configure),
            ("write", &p.write),
            ("read", &p.read),
        ] {
            if let Err(e) = regex::RegexBuilder::new(re).size_limit(1 << 20).build() {
                return Err(bad(format!("invalid {k} pattern '{re}': {e}")));
            }
        }
        Ok(())
    }

    pub fn put_permission(&self, p: &PermissionDef) -> AmqpResult<()> {
        self.check_permission(p)?;
        stored(self.access.put_permission(permission_of(p)))
    }

    /// A topic permission's user and vhost exist (RabbitMQ's reason); its patterns are the
    /// API's to check before proposing it.
    pub fn check_topic_permission(&self, p: &TopicPermissionDef) -> AmqpResult<()> {
        if self.access.user(&p.user).is_none() || self.access.vhost(&p.vhost).is_none() {
            return Err(bad("vhost_or_user_not_found"));
        }
        Ok(())
    }

    pub fn put_topic_permission(&self, p: &TopicPermissionDef) -> AmqpResult<()> {
        self.check_topic_permission(p)?;
        stored(self.access.put_topic_permission(topic_permission_of(p)))
    }

    /// Apply a definitions import: what cannot be applied is reported (the reading's errors
    /// first), the rest applied; a store failure ends it with that error.
    pub fn import(&self, d: &Import) -> AmqpResult<Vec<String>> {
        let mut errors = d.errors.clone();
        for v in &d.vhosts {
            self.put_vhost(v, None)?;
        }
        for u in &d.users {
            match self.put_user(u) {
                Ok(()) => {}
                Err(e) if e.code == code::PRECONDITION_FAILED => {
                    errors.push(format!("user {}: {}", u.name, e.into_exception().text))
                }
                Err(e) => return Err(e),
            }
        }
        for p in &d.permissions {
            match self.put_permission(p) {
                Ok(()) => {}
                Err(e) if e.code == code::PRECONDITION_FAILED => {
                    errors.push(format!("permission: {}", e.into_exception().text))
                }
                Err(e) => return Err(e),
            }
        }
        for p in &d.topic_permissions {
            match self.put_topic_permission(p) {
                Ok(()) => {}
                Err(e) if e.code == code::PRECONDITION_FAILED => {
                    errors.push(format!("topic permission: {}", e.into_exception().text))
                }
                Err(e) => return Err(e),
            }
        }
        for (name, l) in &d.vhost_limits {
            for k in crate::auth::limits::VHOST_LIMITS {
                if !stored(self.access.set_vhost_limit(name, k, l.get(k).copied()))? {
                    errors.push(format!("vhost-limits: no vhost '{name}'"));
                    break;
                }
            }
        }
        let vhost_of = |name: &str| -> Result<Arc<VHost>, String> {
            self.broker
                .vhost(name)
                .ok_or_else(|| format!("no vhost '{name}'"))
        };
        for x in &d.exchanges {
            let r = vhost_of(&x.vhost).and_then(|vh| {
                let decl = ExchangeDeclare {
                    kind: x.kind.clone(),
                    passive: false,
                    durable: x.durable,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: x.arguments.clone(),
                };
                vh.declare_exchange(&x.name, &decl)
                    .map(|_| ())
                    .map_err(|e| format!("exchange {}: {}", x.name, e.into_exception().text))
            });
            errors.extend(r.err());
        }
        for q in &d.queues {
            let r = vhost_of(&q.vhost).and_then(|vh| {
                let decl = QueueDeclare {
                    passive: false,
                    durable: q.durable,
                    exclusive: false,
                    auto_delete: q.auto_delete,
                    arguments: q.arguments.clone(),
                };
                // In a cluster a new queue lives on the importing node, as if declared there.
                let new = !d.node.is_empty() && vh.find_queue(&q.name).is_none();
                if new {
                    vh.set_home(&q.name, &d.node);
                }
                let r = vh.declare_queue(&q.name, &decl, 0);
                if r.is_err() && new {
                    vh.forget_home(&q.name);
                }
                r.map(|_| ())
                    .map_err(|e| format!("queue {}: {}", q.name, e.into_exception().text))
            });
            errors.extend(r.err());
        }
        for b in &d.bindings {
            let r = vhost_of(&b.vhost).and_then(|vh| {
                let r = if b.to_queue {
                    vh.bind_queue(&b.destination, &b.source, &b.routing_key, &b.arguments, 0)
                } else {
                    vh.bind_exchange(&b.destination, &b.source, &b.routing_key, &b.arguments)
                };
                r.map_err(|e| {
                    format!(
                        "binding {} -> {}: {}",
                        b.source,
                        b.destination,
                        e.into_exception().text
                    )
                })
            });
            errors.extend(r.err());
        }
        Ok(errors)
    }
}

/// The operations that make a single node's vhosts, users, permissions and limits the
/// cluster's when its data directory first joins one (before its exchanges, queues and
/// bindings: `replicated::adoption_ops`). What every fresh node has anyway (the `/` vhost as
/// created, the default user with its default password, tags and permission) is left out, so
/// that joining with an untouched data directory changes nothing.
pub fn adoption_ops(access: &Access, default_user: &str, default_pass: &str) -> Vec<MetaOp> {
    let mut ops = Vec::new();
    for v in access.vhosts() {
        let fresh = VhostMeta::named(&v.name);
        if v.name != "/"
            || (&v.description, &v.tags, &v.default_queue_type)
                != (&fresh.description, &fresh.tags, &fresh.default_queue_type)
        {
            ops.push(MetaOp::PutVhost {
                def: VhostDef {
                    name: v.name.clone(),
                    description: Some(v.description.clone()),
                    tags: Some(v.tags.clone()),
                    default_queue_type: v.default_queue_type.clone(),
                },
                grant: None,
            });
        }
        for (k, n) in &v.limits {
            ops.push(MetaOp::SetVhostLimit {
                vhost: v.name.clone(),
                name: k.clone(),
                value: Some(*n),
            });
        }
    }
    for u in access.users() {
        let untouched = u.name == default_user
            && crate::auth::password_matches(&u.password_hash, &u.hashing_algorithm, default_pass)
            && u.tags == ["administrator"]
            && u.limits.is_empty();
        if !untouched {
            ops.push(MetaOp::PutUser {
                def: UserDef {
                    name: u.name.clone(),
                    password: Some(PasswordHash {
                        hash: u.password_hash.clone(),
                        algorithm: u.hashing_algorithm.clone(),
                    }),
                    tags: Some(u.tags.clone()),
                    limits: Some(u.limits.clone()),
                },
            });
        }
    }
    for p in access.permissions() {
        let default = p.user == default_user
            && p.vhost == "/"
            && [&p.configure, &p.write, &p.read].iter().all(|x| *x == ".*");
        if !default {
            ops.push(MetaOp::PutPermission {
                def: PermissionDef {
                    user: p.user,
                    vhost: p.vhost,
                    configure: p.configure,
                    write: p.write,
                    read: p.read,
                },
            });
        }
    }
    for p in access.topic_permissions() {
        ops.push(MetaOp::PutTopicPermission {
            def: TopicPermissionDef {
                user: p.user,
                vhost: p.vhost,
                exchange: p.exchange,
                write: p.write,
                read: p.read,
            },
        });
    }
    ops
}
