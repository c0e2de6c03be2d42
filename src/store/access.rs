//! Users, permissions and virtual hosts, as sled trees of JSON values (keys: user name,
//! `user \0 vhost`, vhost name). A user or vhost leaves the store together with its permissions,
//! in one transaction.

use super::{Change, Store, StoreError};
use crate::auth::{Permission, TopicPermission, User, VhostMeta};
use serde::Deserialize;

fn perm_key(user: &str, vhost: &str) -> Vec<u8> {
    let mut k = user.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(vhost.as_bytes());
    k
}

fn topic_key(user: &str, vhost: &str, exchange: &str) -> Vec<u8> {
    let mut k = perm_key(user, vhost);
    k.push(0);
    k.extend_from_slice(exchange.as_bytes());
    k
}

fn permission_name(user: &str, vhost: &str) -> String {
    format!("permission of user '{user}' on vhost '{vhost}'")
}

/// Everything access control keeps: users, permissions, vhosts.
pub type AccessDefs = (Vec<User>, Vec<Permission>, Vec<VhostMeta>);

impl Store {
    /// Remove `key` from `tree` and every stored permission and topic permission whose (user,
    /// vhost) `also` selects, at once.
    fn remove_with_permissions(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        also: impl Fn(&str, &str) -> bool,
        what: impl Fn() -> String,
    ) -> Result<(), StoreError> {
        let mut changes = vec![Change {
            tree,
            key: key.to_vec(),
            value: None,
        }];
        for p in all::<Permission>(self, &self.permissions, "permission")? {
            if also(&p.user, &p.vhost) {
                changes.push(Change {
                    tree: &self.permissions,
                    key: perm_key(&p.user, &p.vhost),
                    value: None,
                });
            }
        }
        for p in all::<TopicPermission>(self, &self.topic_permissions, "topic permission")? {
            if also(&p.user, &p.vhost) {
                changes.push(Change {
                    tree: &self.topic_permissions,
                    key: topic_key(&p.user, &p.vhost, &p.exchange),
                    value: None,
                });
            }
        }
        self.commit(|| format!("delete {}", what()), changes)
    }

    pub fn put_topic_permission(&self, p: &TopicPermission) -> Result<(), StoreError> {
        self.put(
            &self.topic_permissions,
            topic_key(&p.user, &p.vhost, &p.exchange),
            p,
            || {
                format!(
                    "topic permission of user '{}' on exchange '{}' in vhost '{}'",
                    p.user, p.exchange, p.vhost
                )
            },
        )
    }

    /// Remove a user's topic permissions in a vhost: the one for `exchange`, or all.
    pub fn delete_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<(), StoreError> {
        let changes = all::<TopicPermission>(self, &self.topic_permissions, "topic permission")?
            .into_iter()
            .filter(|p| {
                p.user == user && p.vhost == vhost && exchange.is_none_or(|e| e == p.exchange)
            })
            .map(|p| Change {
                tree: &self.topic_permissions,
                key: topic_key(&p.user, &p.vhost, &p.exchange),
                value: None,
            })
            .collect();
        self.commit(
            || format!("delete topic permissions of user '{user}' in vhost '{vhost}'"),
            changes,
        )
    }

    pub fn load_topic_permissions(&self) -> Result<Vec<TopicPermission>, StoreError> {
        all(self, &self.topic_permissions, "topic permission")
    }

    pub fn put_user(&self, u: &User) -> Result<(), StoreError> {
        self.put(&self.users, u.name.as_bytes().to_vec(), u, || {
            format!("user '{}'", u.name)
        })
    }

    /// Remove a user and its permissions.
    pub fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        self.remove_with_permissions(
            &self.users,
            name.as_bytes(),
            |user, _| user == name,
            || format!("user '{name}'"),
        )
    }

    pub fn put_permission(&self, p: &Permission) -> Result<(), StoreError> {
        self.put(&self.permissions, perm_key(&p.user, &p.vhost), p, || {
            permission_name(&p.user, &p.vhost)
        })
    }

    pub fn delete_permission(&self, user: &str, vhost: &str) -> Result<(), StoreError> {
        self.commit(
            || format!("delete {}", permission_name(user, vhost)),
            vec![Change {
                tree: &self.permissions,
                key: perm_key(user, vhost),
                value: None,
            }],
        )
    }

    /// Store a vhost's metadata, and with it (at once) a permission on it if `grant` is given.
    /// Failure changes nothing.
    pub fn put_vhost(&self, v: &VhostMeta, grant: Option<&Permission>) -> Result<(), StoreError> {
        let what = || format!("vhost '{}'", v.name);
        let encode = |source| StoreError::Encode {
            what: what(),
            source,
        };
        let mut changes = vec![Change {
            tree: &self.vhosts,
            key: v.name.as_bytes().to_vec(),
            value: Some(serde_json::to_vec(v).map_err(encode)?),
        }];
        if let Some(p) = grant {
            changes.push(Change {
                tree: &self.permissions,
                key: perm_key(&p.user, &p.vhost),
                value: Some(serde_json::to_vec(p).map_err(encode)?),
            });
        }
        self.commit(|| format!("store {}", what()), changes)
    }

    /// Remove a vhost's metadata and every permission on it.
    pub fn delete_vhost(&self, name: &str) -> Result<(), StoreError> {
        self.remove_with_permissions(
            &self.vhosts,
            name.as_bytes(),
            |_, vhost| vhost == name,
            || format!("vhost '{name}'"),
        )
    }

    pub fn load_access(&self) -> Result<AccessDefs, StoreError> {
        Ok((
            all(self, &self.users, "user")?,
            all(self, &self.permissions, "permission")?,
            all(self, &self.vhosts, "vhost")?,
        ))
    }
}

/// Every record of `tree`, each a `kind`.
fn all<T: for<'de> Deserialize<'de>>(
    store: &Store,
    tree: &sled::Tree,
    kind: &str,
) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|r| {
            let (k, v) = r.map_err(|source| StoreError::Read {
                what: format!("{kind}s"),
                path: store.path.clone(),
                source,
            })?;
            serde_json::from_slice(&v).map_err(|source| StoreError::Decode {
                what: format!("{kind} record {:?}", String::from_utf8_lossy(&k)),
                path: store.path.clone(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("warren-access-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            password_hash: String::new(),
            hashing_algorithm: crate::auth::SHA256.into(),
            tags: Vec::new(),
            limits: Default::default(),
        }
    }

    fn perm(user: &str, vhost: &str) -> Permission {
        Permission {
            user: user.into(),
            vhost: vhost.into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }
    }

    /// A refused write is a `Write` naming what it wrote, whose source is sled's error.
    fn refused(r: Result<(), StoreError>, names: &str) {
        let e = r.expect_err("the write fails");
        assert!(matches!(e, StoreError::Write { .. }), "{e:?}");
        assert!(e.to_string().contains(names), "{e}");
        assert!(e.to_string().contains("injected"), "says why: {e}");
        let source = e.source().expect("the cause is kept");
        assert!(source.downcast_ref::<sled::Error>().is_some(), "{source:?}");
    }

    /// Each write of users, permissions and vhosts reports a failed flush with its cause and
    /// keeps nothing of the change, in this process or after a reopen (the bug: errors were
    /// flattened to strings, and callers went on as if the write had happened).
    #[test]
    fn failed_writes_keep_their_cause_and_nothing_of_the_change() {
        let d = dir("refused");
        {
            let s = Store::open(&d).unwrap();
            s.put_vhost(&VhostMeta::named("/"), None).unwrap();
            s.put_vhost(&VhostMeta::named("v"), None).unwrap();
            s.put_user(&user("kept")).unwrap();
            s.put_permission(&perm("kept", "/")).unwrap();
            s.put_permission(&perm("kept", "v")).unwrap();
            let before = s.load_access().unwrap();

            s.inject_definition_write_failure(true);
            refused(s.put_user(&user("new")), "store user 'new'");
            refused(s.put_user(&user("kept")), "store user 'kept'");
            refused(s.delete_user("kept"), "delete user 'kept'");
            refused(
                s.put_permission(&perm("kept", "v")),
                "store permission of user 'kept' on vhost 'v'",
            );
            refused(
                s.delete_permission("kept", "/"),
                "delete permission of user 'kept' on vhost '/'",
            );
            refused(
                s.put_vhost(&VhostMeta::named("w"), Some(&perm("kept", "w"))),
                "store vhost 'w'",
            );
            refused(s.delete_vhost("v"), "delete vhost 'v'");
            assert_eq!(s.load_access().unwrap(), before, "nothing changed");

            // Removing what is not there writes nothing, so it cannot fail.
            s.delete_user("nobody").unwrap();
            s.delete_permission("nobody", "/").unwrap();
            s.delete_vhost("none").unwrap();
            s.inject_definition_write_failure(false);
        }
        let s = Store::open(&d).unwrap();
        let (users, perms, vhosts) = s.load_access().unwrap();
        assert_eq!(users, vec![user("kept")]);
        assert_eq!(perms, vec![perm("kept", "/"), perm("kept", "v")]);
        assert_eq!(vhosts.len(), 2);
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A user or vhost leaves the store with its permissions, and a vhost can come with one.
    #[test]
    fn deletes_take_their_permissions_along() {
        let d = dir("cascade");
        let s = Store::open(&d).unwrap();
        s.put_vhost(&VhostMeta::named("/"), None).unwrap();
        s.put_vhost(&VhostMeta::named("v"), Some(&perm("a", "v")))
            .unwrap();
        for p in [perm("a", "/"), perm("b", "/"), perm("b", "v")] {
            s.put_permission(&p).unwrap();
        }
        s.put_user(&user("a")).unwrap();
        s.delete_user("a").unwrap();
        assert_eq!(
            s.load_access().unwrap().1,
            vec![perm("b", "/"), perm("b", "v")]
        );
        s.delete_vhost("v").unwrap();
        let (_, perms, vhosts) = s.load_access().unwrap();
        assert_eq!(perms, vec![perm("b", "/")]);
        assert_eq!(vhosts, vec![VhostMeta::named("/")]);
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An unreadable record is a `Decode` error whose source is serde_json's.
    #[test]
    fn an_unreadable_record_keeps_its_parse_error() {
        let d = dir("decode");
        let s = Store::open(&d).unwrap();
        s.users.insert("bad", "{not json").unwrap();
        let e = s.load_access().unwrap_err();
        assert!(matches!(e, StoreError::Decode { .. }), "{e:?}");
        assert!(e.to_string().contains("user record \"bad\""), "{e}");
        let source = e.source().expect("the cause is kept");
        assert!(source.downcast_ref::<serde_json::Error>().is_some());
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }
}
