//! Users, permissions and virtual hosts, as sled trees of JSON values (keys: user name,
//! `user \0 vhost`, vhost name).

use super::{Store, StoreError};
use crate::auth::{Permission, User, VhostMeta};
use serde::{Deserialize, Serialize};

fn write_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

fn perm_key(user: &str, vhost: &str) -> Vec<u8> {
    let mut k = user.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(vhost.as_bytes());
    k
}

/// Everything access control keeps: users, permissions, vhosts.
pub type AccessDefs = (Vec<User>, Vec<Permission>, Vec<VhostMeta>);

impl Store {
    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(write_err)
    }

    fn put_json<T: Serialize>(&self, tree: &str, key: &[u8], v: &T) -> Result<(), StoreError> {
        let json = serde_json::to_vec(v).map_err(write_err)?;
        self.tree(tree)?.insert(key, json).map_err(write_err)?;
        self.flush()
    }

    fn remove_key(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        if self.tree(tree)?.remove(key).map_err(write_err)?.is_some() {
            self.flush()?;
        }
        Ok(())
    }

    pub fn put_user(&self, u: &User) -> Result<(), StoreError> {
        self.put_json("users", u.name.as_bytes(), u)
    }

    pub fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        self.remove_key("users", name.as_bytes())
    }

    pub fn put_permission(&self, p: &Permission) -> Result<(), StoreError> {
        self.put_json("permissions", &perm_key(&p.user, &p.vhost), p)
    }

    pub fn delete_permission(&self, user: &str, vhost: &str) -> Result<(), StoreError> {
        self.remove_key("permissions", &perm_key(user, vhost))
    }

    pub fn put_vhost(&self, v: &VhostMeta) -> Result<(), StoreError> {
        self.put_json("vhosts", v.name.as_bytes(), v)
    }

    pub fn delete_vhost(&self, name: &str) -> Result<(), StoreError> {
        self.remove_key("vhosts", name.as_bytes())
    }

    pub fn load_access(&self) -> Result<AccessDefs, StoreError> {
        fn all<T: for<'de> Deserialize<'de>>(
            store: &Store,
            tree: &str,
        ) -> Result<Vec<T>, StoreError> {
            store
                .tree(tree)?
                .iter()
                .map(|r| {
                    let (_, v) = r.map_err(|e| StoreError::Corrupt {
                        path: store.path.clone(),
                        detail: e.to_string(),
                    })?;
                    serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                        path: store.path.clone(),
                        detail: format!("unreadable {tree} record: {e}"),
                    })
                })
                .collect()
        }
        Ok((
            all(self, "users")?,
            all(self, "permissions")?,
            all(self, "vhosts")?,
        ))
    }
}
