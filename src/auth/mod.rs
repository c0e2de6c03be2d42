//! Users, password hashes, permissions and virtual host metadata.
//!
//! Passwords are kept as RabbitMQ keeps them (`rabbit_password_hashing_sha256`: base64 of a
//! 4-byte salt followed by SHA-256(salt ++ password); sha512 likewise), so users exported from
//! RabbitMQ's definitions import with their passwords working, and back. On first start the
//! configured default user is created with full permissions on `/`. Everything persists through
//! the store. A permission entry grants access to its vhost at connection.open; its configure,
//! write and read patterns are checked per operation as RabbitMQ checks them ([`grants`]).
//!
//! Every change is persisted first and applied in memory only once the store has made it
//! durable: a change the store refuses returns its error and changes nothing, so what clients
//! see is what a restart brings back. Changes are serialised, so that the store and memory take
//! them in the same order.

pub mod grants;
pub mod limits;
pub mod throttle;

use crate::store::{Store, StoreError};
use base64::Engine;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const SHA256: &str = "rabbit_password_hashing_sha256";
pub const SHA512: &str = "rabbit_password_hashing_sha512";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub hashing_algorithm: String,
    pub tags: Vec<String>,
    /// `max-connections` and `max-channels` ([`limits`]); absent: unlimited.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Permission {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostMeta {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub default_queue_type: Option<String>,
    /// `max-connections` and `max-queues` ([`limits`]); absent: unlimited.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, i64>,
}

/// A user's write and read patterns for routing keys on one topic exchange of a vhost
/// ([`grants`] checks them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicPermission {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

impl VhostMeta {
    pub fn named(name: &str) -> Self {
        VhostMeta {
            name: name.to_owned(),
            description: if name == "/" {
                "Default virtual host".into()
            } else {
                String::new()
            },
            tags: Vec::new(),
            default_queue_type: None,
            limits: BTreeMap::new(),
        }
    }
}

/// A salted hash the way RabbitMQ's sha256 scheme stores it.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    let mut h = sha2::Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Whether `password` matches a stored hash (sha256 or sha512 scheme; empty hash: never).
pub fn password_matches(hash: &str, algorithm: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash) else {
        return false;
    };
    if raw.len() < 5 {
        return false;
    }
    let (salt, expected) = raw.split_at(4);
    let got: Vec<u8> = match algorithm {
        SHA512 => {
            let mut h = sha2::Sha512::new();
            h.update(salt);
            h.update(password.as_bytes());
            h.finalize().to_vec()
        }
        _ => {
            let mut h = sha2::Sha256::new();
            h.update(salt);
            h.update(password.as_bytes());
            h.finalize().to_vec()
        }
    };
    // Constant-time enough for a comparison of digests of equal length.
    got.len() == expected.len() && got.iter().zip(expected).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
}

/// The access-control state: users, permissions, topic permissions, vhost metadata, and what
/// counts against the limits ([`limits`]).
#[derive(Debug)]
pub struct Access {
    users: RwLock<BTreeMap<String, User>>,
    perms: RwLock<BTreeMap<(String, String), Permission>>,
    /// By (user, vhost, exchange).
    topic_perms: RwLock<BTreeMap<(String, String, String), TopicPermission>>,
    vhosts: RwLock<BTreeMap<String, VhostMeta>>,
    /// Connections per vhost, created at a vhost's first connection.
    vhost_slots: Mutex<HashMap<String, Arc<limits::Slot>>>,
    /// Connections and channels per user, created at a user's first connection.
    user_slots: Mutex<HashMap<String, Arc<limits::UserSlots>>>,
    loopback_users: Vec<String>,
    store: Option<Arc<Store>>,
    /// Bumped whenever a permission changes, so connections recompile theirs ([`grants`]).
    generation: AtomicU64,
    /// Held by each change across its store write and its update of memory.
    writer: Mutex<()>,
}

impl Access {
    /// Load from the store; on first start, create the default user and vhost. A store that
    /// cannot be read, or that refuses the defaults, is an error (the broker does not start).
    pub fn load(
        store: Option<Arc<Store>>,
        default_user: &str,
        default_pass: &str,
        loopback_users: &[String],
    ) -> Result<Self, StoreError> {
        let (users, perms, vhosts) = match &store {
            Some(s) => s.load_access()?,
            None => Default::default(),
        };
        let topic_perms = match &store {
            Some(s) => s.load_topic_permissions()?,
            None => Vec::new(),
        };
        let a = Access {
            users: RwLock::new(users.into_iter().map(|u| (u.name.clone(), u)).collect()),
            perms: RwLock::new(
                perms
                    .into_iter()
                    .map(|p| ((p.user.clone(), p.vhost.clone()), p))
                    .collect(),
            ),
            topic_perms: RwLock::new(
                topic_perms
                    .into_iter()
                    .map(|p| ((p.user.clone(), p.vhost.clone(), p.exchange.clone()), p))
                    .collect(),
            ),
            vhosts: RwLock::new(vhosts.into_iter().map(|v| (v.name.clone(), v)).collect()),
            vhost_slots: Mutex::new(HashMap::new()),
            user_slots: Mutex::new(HashMap::new()),
            loopback_users: loopback_users.to_vec(),
            store,
            generation: AtomicU64::new(0),
            writer: Mutex::new(()),
        };
        if a.vhosts.read().is_empty() {
            a.put_vhost(VhostMeta::named("/"), None)?;
        }
        if a.users.read().is_empty() {
            a.put_user(User {
                name: default_user.to_owned(),
                password_hash: hash_password(default_pass),
                hashing_algorithm: SHA256.into(),
                tags: vec!["administrator".into()],
                limits: BTreeMap::new(),
            })?;
            a.put_permission(Permission {
                user: default_user.to_owned(),
                vhost: "/".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            })?;
        }
        Ok(a)
    }

    /// Run a store write, if there is a store (call with `writer` held).
    fn persist(&self, f: impl FnOnce(&Store) -> Result<(), StoreError>) -> Result<(), StoreError> {
        match &self.store {
            Some(s) => f(s),
            None => Ok(()),
        }
    }

    /// Forget the permissions and topic permissions whose (user, vhost) `gone` selects
    /// (already gone from the store).
    fn forget_permissions(&self, gone: impl Fn(&str, &str) -> bool) {
        let mut perms = self.perms.write();
        let mut topics = self.topic_perms.write();
        let before = perms.len() + topics.len();
        perms.retain(|_, p| !gone(&p.user, &p.vhost));
        topics.retain(|_, p| !gone(&p.user, &p.vhost));
        if perms.len() + topics.len() != before {
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    pub fn check_password(&self, user: &str, password: &str) -> bool {
        self.users
            .read()
            .get(user)
            .is_some_and(|u| password_matches(&u.password_hash, &u.hashing_algorithm, password))
    }

    /// Whether `user` may log in from a peer (loopback_users only from the local host).
    pub fn allowed_from(&self, user: &str, loopback_peer: bool) -> bool {
        loopback_peer || !self.loopback_users.iter().any(|u| u == user)
    }

    pub fn may_access(&self, user: &str, vhost: &str) -> bool {
        self.perms
            .read()
            .contains_key(&(user.to_owned(), vhost.to_owned()))
    }

    pub fn user(&self, name: &str) -> Option<User> {
        self.users.read().get(name).cloned()
    }

    pub fn users(&self) -> Vec<User> {
        self.users.read().values().cloned().collect()
    }

    /// Create or replace a user.
    pub fn put_user(&self, u: User) -> Result<(), StoreError> {
        let _w = self.writer.lock();
        self.put_user_locked(u)
    }

    /// `put_user` with `writer` held.
    fn put_user_locked(&self, u: User) -> Result<(), StoreError> {
        self.persist(|s| s.put_user(&u))?;
        let slots = self.user_slots.lock().get(&u.name).cloned();
        if let Some(slots) = slots {
            slots
                .connections
                .set_limit(limit_of(&u.limits, limits::MAX_CONNECTIONS));
            slots
                .channels
                .set_limit(limit_of(&u.limits, limits::MAX_CHANNELS));
        }
        self.users.write().insert(u.name.clone(), u);
        Ok(())
    }

    /// Remove a user and its permissions; false if there was none.
    pub fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        let _w = self.writer.lock();
        if !self.users.read().contains_key(name) {
            return Ok(false);
        }
        self.persist(|s| s.delete_user(name))?;
        self.users.write().remove(name);
        self.forget_permissions(|user, _| user == name);
        Ok(true)
    }

    pub fn permissions(&self) -> Vec<Permission> {
        self.perms.read().values().cloned().collect()
    }

    pub fn permission(&self, user: &str, vhost: &str) -> Option<Permission> {
        self.perms
            .read()
            .get(&(user.to_owned(), vhost.to_owned()))
            .cloned()
    }

    /// Create or replace a permission.
    pub fn put_permission(&self, p: Permission) -> Result<(), StoreError> {
        let _w = self.writer.lock();
        self.persist(|s| s.put_permission(&p))?;
        self.perms
            .write()
            .insert((p.user.clone(), p.vhost.clone()), p);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Changes with every permission change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remove a permission; false if there was none.
    pub fn delete_permission(&self, user: &str, vhost: &str) -> Result<bool, StoreError> {
        let _w = self.writer.lock();
        let key = (user.to_owned(), vhost.to_owned());
        if !self.perms.read().contains_key(&key) {
            return Ok(false);
        }
        self.persist(|s| s.delete_permission(user, vhost))?;
        self.perms.write().remove(&key);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(true)
    }

    pub fn vhosts(&self) -> Vec<VhostMeta> {
        self.vhosts.read().values().cloned().collect()
    }

    pub fn vhost(&self, name: &str) -> Option<VhostMeta> {
        self.vhosts.read().get(name).cloned()
    }

    /// Create or replace a vhost's metadata, and with it (all or nothing) the permission
    /// `grant` if given (its vhost should be `v`).
    pub fn put_vhost(&self, v: VhostMeta, grant: Option<Permission>) -> Result<(), StoreError> {
        let _w = self.writer.lock();
        self.put_vhost_locked(v, grant)
    }

    /// `put_vhost` with `writer` held.
    fn put_vhost_locked(&self, v: VhostMeta, grant: Option<Permission>) -> Result<(), StoreError> {
        self.persist(|s| s.put_vhost(&v, grant.as_ref()))?;
        let slot = self.vhost_slots.lock().get(&v.name).cloned();
        if let Some(slot) = slot {
            slot.set_limit(limit_of(&v.limits, limits::MAX_CONNECTIONS));
        }
        self.vhosts.write().insert(v.name.clone(), v);
        if let Some(p) = grant {
            self.perms
                .write()
                .insert((p.user.clone(), p.vhost.clone()), p);
            self.generation.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    /// Forget a vhost's metadata and every permission on it.
    pub fn delete_vhost(&self, name: &str) -> Result<(), StoreError> {
        let _w = self.writer.lock();
        self.persist(|s| s.delete_vhost(name))?;
        self.vhosts.write().remove(name);
        self.forget_permissions(|_, vhost| vhost == name);
        Ok(())
    }
}

impl Access {
    /// Set (`Some`) or clear (`None`) one of a vhost's limits; false if there is no such vhost.
    pub fn set_vhost_limit(
        &self,
        vhost: &str,
        name: &str,
        value: Option<i64>,
    ) -> Result<bool, StoreError> {
        // Read, change and write under one hold of `writer`, so that no change is lost.
        let _w = self.writer.lock();
        let Some(mut v) = self.vhost(vhost) else {
            return Ok(false);
        };
        match value {
            Some(n) => v.limits.insert(name.to_owned(), n),
            None => v.limits.remove(name),
        };
        self.put_vhost_locked(v, None)?;
        Ok(true)
    }

    /// Set (`Some`) or clear (`None`) one of a user's limits; false if there is no such user.
    pub fn set_user_limit(
        &self,
        user: &str,
        name: &str,
        value: Option<i64>,
    ) -> Result<bool, StoreError> {
        let _w = self.writer.lock();
        let Some(mut u) = self.user(user) else {
            return Ok(false);
        };
        match value {
            Some(n) => u.limits.insert(name.to_owned(), n),
            None => u.limits.remove(name),
        };
        self.put_user_locked(u)?;
        Ok(true)
    }

    /// A connection of `user` to `vhost` takes its place under both `max-connections`, or is
    /// refused with RabbitMQ's text (the vhost's limit is checked first, as RabbitMQ does).
    pub fn admit(&self, user: &str, vhost: &str) -> Result<limits::Admission, String> {
        let vslot = self
            .vhost_slots
            .lock()
            .entry(vhost.to_owned())
            .or_insert_with(|| {
                let meta = self.vhosts.read();
                let l = meta.get(vhost).map(|m| &m.limits);
                limits::Slot::new(l.and_then(|l| limit_of(l, limits::MAX_CONNECTIONS)))
            })
            .clone();
        let uslots = self
            .user_slots
            .lock()
            .entry(user.to_owned())
            .or_insert_with(|| {
                let users = self.users.read();
                let l = users.get(user).map(|u| &u.limits);
                Arc::new(limits::UserSlots {
                    connections: limits::Slot::new(
                        l.and_then(|l| limit_of(l, limits::MAX_CONNECTIONS)),
                    ),
                    channels: limits::Slot::new(l.and_then(|l| limit_of(l, limits::MAX_CHANNELS))),
                })
            })
            .clone();
        let v = vslot
            .take()
            .map_err(|n| limits::vhost_connections_refused(vhost, user, n))?;
        let u = uslots
            .connections
            .take()
            .map_err(|n| limits::user_connections_refused(user, n))?;
        Ok(limits::Admission::new(v, u, user, uslots.channels.clone()))
    }

    /// The vhost's `max-queues`, if it has one (not negative).
    pub fn queue_limit(&self, vhost: &str) -> Option<i64> {
        self.vhosts
            .read()
            .get(vhost)
            .and_then(|v| limit_of(&v.limits, limits::MAX_QUEUES))
    }

    pub fn topic_permissions(&self) -> Vec<TopicPermission> {
        self.topic_perms.read().values().cloned().collect()
    }

    /// A user's topic permissions in a vhost, one per exchange.
    pub fn topic_permissions_of(&self, user: &str, vhost: &str) -> Vec<TopicPermission> {
        self.topic_perms
            .read()
            .values()
            .filter(|p| p.user == user && p.vhost == vhost)
            .cloned()
            .collect()
    }

    /// Create or replace the topic permission of (user, vhost, exchange).
    pub fn put_topic_permission(&self, p: TopicPermission) -> Result<(), StoreError> {
        let _w = self.writer.lock();
        self.persist(|s| s.put_topic_permission(&p))?;
        self.topic_perms
            .write()
            .insert((p.user.clone(), p.vhost.clone(), p.exchange.clone()), p);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Remove a user's topic permissions in a vhost (only `exchange`'s if given); false if
    /// there were none.
    pub fn delete_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<bool, StoreError> {
        let _w = self.writer.lock();
        let selected = |p: &TopicPermission| {
            p.user == user && p.vhost == vhost && exchange.is_none_or(|e| e == p.exchange)
        };
        if !self.topic_perms.read().values().any(selected) {
            return Ok(false);
        }
        self.persist(|s| s.delete_topic_permissions(user, vhost, exchange))?;
        self.topic_perms.write().retain(|_, p| !selected(p));
        self.generation.fetch_add(1, Ordering::Release);
        Ok(true)
    }
}

/// A limit that limits: present and not negative.
fn limit_of(limits: &BTreeMap<String, i64>, name: &str) -> Option<i64> {
    limits.get(name).copied().filter(|n| *n >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> (std::path::PathBuf, Arc<Store>) {
        let d = std::env::temp_dir().join(format!("warren-auth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let s = Arc::new(Store::open(&d).unwrap());
        (d, s)
    }

    /// A change the store refuses is an error and changes nothing in memory (the bug: it was
    /// logged, memory changed anyway, and a restart brought the old state back).
    #[test]
    fn a_refused_change_changes_nothing() {
        let (d, s) = store("refused");
        let a = Access::load(Some(s.clone()), "guest", "guest", &[]).unwrap();
        a.put_vhost(VhostMeta::named("v"), None).unwrap();
        let grant = |user: &str, vhost: &str| Permission {
            user: user.into(),
            vhost: vhost.into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        };
        a.put_permission(grant("guest", "v")).unwrap();
        let generation = a.generation();
        s.inject_definition_write_failure(true);
        let new = User {
            name: "new".into(),
            password_hash: hash_password("pw"),
            hashing_algorithm: SHA256.into(),
            tags: Vec::new(),
            limits: BTreeMap::new(),
        };
        assert!(a.put_user(new.clone()).is_err());
        assert!(a.user("new").is_none());
        assert!(a.delete_user("guest").is_err());
        assert!(a.check_password("guest", "guest"));
        assert!(a.put_permission(grant("guest", "w")).is_err());
        assert!(a.delete_permission("guest", "/").is_err());
        assert!(a.may_access("guest", "/") && !a.may_access("guest", "w"));
        assert!(a
            .put_vhost(VhostMeta::named("w"), Some(grant("guest", "w")))
            .is_err());
        assert!(a.vhost("w").is_none() && a.permission("guest", "w").is_none());
        assert!(a.delete_vhost("v").is_err());
        assert!(a.vhost("v").is_some() && a.may_access("guest", "v"));
        assert_eq!(a.generation(), generation, "open connections keep theirs");
        // Nothing to remove: nothing to write, no error.
        assert!(!a.delete_user("nobody").unwrap());
        assert!(!a.delete_permission("nobody", "/").unwrap());

        s.inject_definition_write_failure(false);
        assert!(a.delete_user("guest").unwrap());
        assert!(a.user("guest").is_none() && !a.may_access("guest", "v"));
        assert!(a.generation() > generation);
        drop(a);
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Limits and topic permissions the store refuses change nothing (in memory, for open
    /// connections, after a restart); the ones it takes survive a reopen, and a user's or
    /// vhost's deletion takes its topic permissions along.
    #[test]
    fn limits_and_topic_permissions_persist_or_change_nothing() {
        let (d, s) = store("limits");
        let a = Access::load(Some(s.clone()), "guest", "guest", &[]).unwrap();
        let topic = |exchange: &str| TopicPermission {
            user: "guest".into(),
            vhost: "/".into(),
            exchange: exchange.into(),
            write: "^a".into(),
            read: "^b".into(),
        };
        assert!(a
            .set_vhost_limit("/", limits::MAX_CONNECTIONS, Some(1))
            .unwrap());
        assert!(a
            .set_user_limit("guest", limits::MAX_CHANNELS, Some(1))
            .unwrap());
        a.put_topic_permission(topic("amq.topic")).unwrap();
        assert!(!a
            .set_vhost_limit("none", limits::MAX_QUEUES, Some(1))
            .unwrap());
        assert!(!a
            .set_user_limit("nobody", limits::MAX_CHANNELS, Some(1))
            .unwrap());
        let held = a.admit("guest", "/").unwrap();
        assert_eq!(
            a.admit("guest", "/").unwrap_err(),
            limits::vhost_connections_refused("/", "guest", 1)
        );
        let _ch = held.open_channel().unwrap();
        assert!(held.open_channel().is_err());

        s.inject_definition_write_failure(true);
        assert!(a
            .set_vhost_limit("/", limits::MAX_CONNECTIONS, None)
            .is_err());
        assert!(a
            .set_user_limit("guest", limits::MAX_CHANNELS, Some(5))
            .is_err());
        assert!(a.put_topic_permission(topic("t2")).is_err());
        assert!(a.delete_topic_permissions("guest", "/", None).is_err());
        assert!(a.admit("guest", "/").is_err(), "the old limit holds");
        assert!(held.open_channel().is_err(), "the old limit holds");
        assert_eq!(a.topic_permissions(), vec![topic("amq.topic")]);
        s.inject_definition_write_failure(false);
        drop(held);
        drop(a);

        let a = Access::load(Some(s.clone()), "guest", "guest", &[]).unwrap();
        assert_eq!(a.vhost("/").unwrap().limits[limits::MAX_CONNECTIONS], 1);
        assert_eq!(a.user("guest").unwrap().limits[limits::MAX_CHANNELS], 1);
        assert_eq!(a.topic_permissions(), vec![topic("amq.topic")]);
        let _held = a.admit("guest", "/").unwrap();
        assert!(a.admit("guest", "/").is_err(), "enforced after a reload");
        assert!(a.delete_user("guest").unwrap());
        assert!(a.topic_permissions().is_empty());
        drop(a);
        let a = Access::load(Some(s.clone()), "guest", "guest", &[]).unwrap();
        assert!(a.topic_permissions().is_empty(), "gone from the store too");
        drop(a);
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// On first start, a store that refuses the default user is a start error, not a warning
    /// (the bug: the broker started with a user that a restart would not have).
    #[test]
    fn defaults_the_store_refuses_are_a_start_error() {
        let (d, s) = store("defaults");
        s.inject_definition_write_failure(true);
        let e = Access::load(Some(s.clone()), "guest", "guest", &[]).unwrap_err();
        assert!(e.to_string().contains("vhost '/'"), "{e}");
        s.inject_definition_write_failure(false);
        s.put_vhost(&VhostMeta::named("/"), None).unwrap();
        s.inject_definition_write_failure(true);
        let e = Access::load(Some(s.clone()), "admin", "pw", &[]).unwrap_err();
        assert!(e.to_string().contains("user 'admin'"), "{e}");
        s.inject_definition_write_failure(false);
        let a = Access::load(Some(s.clone()), "admin", "pw", &[]).unwrap();
        assert!(a.check_password("admin", "pw") && a.may_access("admin", "/"));
        drop(a);
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn hashes_check_and_match_rabbitmq_format() {
        let h = hash_password("secret");
        assert!(password_matches(&h, SHA256, "secret"));
        assert!(!password_matches(&h, SHA256, "Secret"));
        assert!(!password_matches("", SHA256, ""));
        assert!(!password_matches("!!", SHA256, "x"));
        // 4 bytes of salt + 32 of digest.
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&h)
            .unwrap();
        assert_eq!(raw.len(), 36);
    }
}
