//! Users, password hashes, permissions and virtual host metadata.
//!
//! Passwords are kept as RabbitMQ keeps them (`rabbit_password_hashing_sha256`: base64 of a
//! 4-byte salt followed by SHA-256(salt ++ password); sha512 likewise), so users exported from
//! RabbitMQ's definitions import with their passwords working, and back. On first start the
//! configured default user is created with full permissions on `/`. Everything persists through
//! the store. A permission entry grants access to its vhost at connection.open; its configure,
//! write and read patterns are checked per operation as RabbitMQ checks them ([`grants`]).

pub mod grants;

use crate::store::Store;
use base64::Engine;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::warn;

pub const SHA256: &str = "rabbit_password_hashing_sha256";
pub const SHA512: &str = "rabbit_password_hashing_sha512";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub hashing_algorithm: String,
    pub tags: Vec<String>,
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

/// The access-control state: users, permissions, vhost metadata.
#[derive(Debug)]
pub struct Access {
    users: RwLock<BTreeMap<String, User>>,
    perms: RwLock<BTreeMap<(String, String), Permission>>,
    vhosts: RwLock<BTreeMap<String, VhostMeta>>,
    loopback_users: Vec<String>,
    store: Option<Arc<Store>>,
    /// Bumped whenever a permission changes, so connections recompile theirs ([`grants`]).
    generation: AtomicU64,
}

impl Access {
    /// Load from the store; on first start, create the default user and vhost.
    pub fn load(
        store: Option<Arc<Store>>,
        default_user: &str,
        default_pass: &str,
        loopback_users: &[String],
    ) -> Self {
        let (users, perms, vhosts) = match &store {
            Some(s) => s.load_access().unwrap_or_else(|e| {
                warn!("cannot read stored users: {e}");
                Default::default()
            }),
            None => Default::default(),
        };
        let a = Access {
            users: RwLock::new(users.into_iter().map(|u| (u.name.clone(), u)).collect()),
            perms: RwLock::new(
                perms
                    .into_iter()
                    .map(|p| ((p.user.clone(), p.vhost.clone()), p))
                    .collect(),
            ),
            vhosts: RwLock::new(vhosts.into_iter().map(|v| (v.name.clone(), v)).collect()),
            loopback_users: loopback_users.to_vec(),
            store,
            generation: AtomicU64::new(0),
        };
        if a.vhosts.read().is_empty() {
            a.put_vhost(VhostMeta::named("/"));
        }
        if a.users.read().is_empty() {
            a.put_user(User {
                name: default_user.to_owned(),
                password_hash: hash_password(default_pass),
                hashing_algorithm: SHA256.into(),
                tags: vec!["administrator".into()],
            });
            a.put_permission(Permission {
                user: default_user.to_owned(),
                vhost: "/".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            });
        }
        a
    }

    fn persist(&self, f: impl FnOnce(&Store) -> Result<(), crate::store::StoreError>) {
        if let Some(s) = &self.store {
            if let Err(e) = f(s) {
                warn!("cannot store access definitions: {e}");
            }
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

    pub fn put_user(&self, u: User) {
        self.persist(|s| s.put_user(&u));
        self.users.write().insert(u.name.clone(), u);
    }

    /// Remove a user and its permissions; false if there was none.
    pub fn delete_user(&self, name: &str) -> bool {
        let gone = self.users.write().remove(name).is_some();
        if gone {
            self.persist(|s| s.delete_user(name));
            let ps: Vec<Permission> = self
                .perms
                .read()
                .values()
                .filter(|p| p.user == name)
                .cloned()
                .collect();
            for p in ps {
                self.delete_permission(&p.user, &p.vhost);
            }
        }
        gone
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

    pub fn put_permission(&self, p: Permission) {
        self.persist(|s| s.put_permission(&p));
        self.perms
            .write()
            .insert((p.user.clone(), p.vhost.clone()), p);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes with every permission change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn delete_permission(&self, user: &str, vhost: &str) -> bool {
        let gone = self
            .perms
            .write()
            .remove(&(user.to_owned(), vhost.to_owned()))
            .is_some();
        if gone {
            self.persist(|s| s.delete_permission(user, vhost));
            self.generation.fetch_add(1, Ordering::Release);
        }
        gone
    }

    pub fn vhosts(&self) -> Vec<VhostMeta> {
        self.vhosts.read().values().cloned().collect()
    }

    pub fn vhost(&self, name: &str) -> Option<VhostMeta> {
        self.vhosts.read().get(name).cloned()
    }

    pub fn put_vhost(&self, v: VhostMeta) {
        self.persist(|s| s.put_vhost(&v, None));
        self.vhosts.write().insert(v.name.clone(), v);
    }

    /// Forget a vhost's metadata and every permission on it.
    pub fn delete_vhost(&self, name: &str) {
        self.vhosts.write().remove(name);
        self.persist(|s| s.delete_vhost(name));
        let ps: Vec<Permission> = self
            .perms
            .read()
            .values()
            .filter(|p| p.vhost == name)
            .cloned()
            .collect();
        for p in ps {
            self.delete_permission(&p.user, &p.vhost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
