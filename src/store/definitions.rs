//! Durable definitions: exchanges, queues and bindings, as sled trees of JSON values.

use super::{Change, Definitions, Store, StoreError};
use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    /// Names the queue's messages in the message log (0: not assigned yet, a store written
    /// before messages were stored).
    #[serde(default)]
    pub id: u32,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// In a cluster: the node the queue lives on, when not this one (this node keeps only the
    /// record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// In a cluster: a quorum queue's Raft group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<QuorumDef>,
}

/// A quorum queue's Raft group, as its definition records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumDef {
    /// The group's number (`cluster::quorum::QueueGroupId`).
    pub group: u64,
    /// Node names; the first is the one that forms the group.
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestKind {
    Queue,
    Exchange,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub destination_kind: DestKind,
    pub routing_key: String,
    pub arguments: FieldTable,
}

fn name_key(vhost: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(vhost.len() + name.len() + 1);
    k.extend_from_slice(vhost.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

impl BindingDef {
    fn key(&self) -> Vec<u8> {
        let mut k = name_key(&self.vhost, &self.source);
        k.push(0);
        k.push(match self.destination_kind {
            DestKind::Queue => b'q',
            DestKind::Exchange => b'e',
        });
        k.push(0);
        k.extend_from_slice(self.destination.as_bytes());
        k.push(0);
        k.extend_from_slice(self.routing_key.as_bytes());
        k.push(0);
        k.extend_from_slice(&serde_json::to_vec(&self.arguments).unwrap_or_default());
        k
    }
}

/// A definition's name for errors: "queue 'q' in vhost '/'".
fn named(kind: &str, vhost: &str, name: &str) -> String {
    format!("{kind} '{name}' in vhost '{vhost}'")
}

impl BindingDef {
    fn describe(&self) -> String {
        format!(
            "binding of {} '{}' to exchange '{}' (routing key '{}') in vhost '{}'",
            match self.destination_kind {
                DestKind::Queue => "queue",
                DestKind::Exchange => "exchange",
            },
            self.destination,
            self.source,
            self.routing_key,
            self.vhost
        )
    }
}

impl Store {
    /// Store `v` as JSON under `key` (one committed change; `what` names it in errors).
    pub(super) fn put<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: Vec<u8>,
        v: &T,
        what: impl Fn() -> String,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_vec(v).map_err(|source| StoreError::Encode {
            what: what(),
            source,
        })?;
        self.commit(
            || format!("store {}", what()),
            vec![Change {
                tree,
                key,
                value: Some(json),
            }],
        )
    }

    fn remove(
        &self,
        tree: &sled::Tree,
        key: Vec<u8>,
        what: impl Fn() -> String,
    ) -> Result<(), StoreError> {
        self.commit(
            || format!("delete {}", what()),
            vec![Change {
                tree,
                key,
                value: None,
            }],
        )
    }

    pub fn put_exchange(&self, d: &ExchangeDef) -> Result<(), StoreError> {
        self.put(&self.exchanges, name_key(&d.vhost, &d.name), d, || {
            named("exchange", &d.vhost, &d.name)
        })
    }

    pub fn delete_exchange(&self, vhost: &str, name: &str) -> Result<(), StoreError> {
        self.remove(&self.exchanges, name_key(vhost, name), || {
            named("exchange", vhost, name)
        })
    }

    pub fn put_queue(&self, d: &QueueDef) -> Result<(), StoreError> {
        self.put(&self.queues, name_key(&d.vhost, &d.name), d, || {
            named("queue", &d.vhost, &d.name)
        })
    }

    pub fn delete_queue(&self, vhost: &str, name: &str) -> Result<(), StoreError> {
        self.remove(&self.queues, name_key(vhost, name), || {
            named("queue", vhost, name)
        })
    }

    pub fn put_binding(&self, d: &BindingDef) -> Result<(), StoreError> {
        self.put(&self.bindings, d.key(), d, || d.describe())
    }

    pub fn delete_binding(&self, d: &BindingDef) -> Result<(), StoreError> {
        self.remove(&self.bindings, d.key(), || d.describe())
    }

    /// Read every stored definition (at start, before any client connects).
    pub fn load(&self) -> Result<Definitions, StoreError> {
        fn all<T: for<'de> Deserialize<'de>>(
            store: &Store,
            tree: &sled::Tree,
        ) -> Result<Vec<T>, StoreError> {
            tree.iter()
                .map(|r| {
                    let (k, v) = r.map_err(|source| StoreError::Read {
                        what: format!("the {} tree", String::from_utf8_lossy(&tree.name())),
                        path: store.path.clone(),
                        source,
                    })?;
                    serde_json::from_slice(&v).map_err(|source| StoreError::Decode {
                        what: format!("record {:?}", String::from_utf8_lossy(&k)),
                        path: store.path.clone(),
                        source,
                    })
                })
                .collect()
        }
        Ok(Definitions {
            exchanges: all(self, &self.exchanges)?,
            queues: all(self, &self.queues)?,
            bindings: all(self, &self.bindings)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("warren-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A queue `q` (with `args`), a topic exchange `e`, and a binding from `e` to `q`.
    fn sample(args: FieldTable) -> (QueueDef, ExchangeDef, BindingDef) {
        let q = QueueDef {
            vhost: "/".into(),
            name: "q".into(),
            id: 1,
            auto_delete: false,
            arguments: args,
            node: None,
            quorum: None,
        };
        let e = ExchangeDef {
            vhost: "/".into(),
            name: "e".into(),
            kind: "topic".into(),
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        };
        let b = BindingDef {
            vhost: "/".into(),
            source: "e".into(),
            destination: "q".into(),
            destination_kind: DestKind::Queue,
            routing_key: "a.#".into(),
            arguments: FieldTable::default(),
        };
        (q, e, b)
    }

    #[test]
    fn definitions_round_trip_through_reopen() {
        let d = dir("roundtrip");
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(5));
        let (q, e, b) = sample(args);
        {
            let s = Store::open(&d).unwrap();
            s.put_queue(&q).unwrap();
            s.put_exchange(&e).unwrap();
            s.put_binding(&b).unwrap();
            s.put_binding(&b).unwrap(); // idempotent
        }
        let s = Store::open(&d).unwrap();
        let defs = s.load().unwrap();
        assert_eq!(defs.queues, vec![q]);
        assert_eq!(defs.exchanges, vec![e]);
        assert_eq!(defs.bindings, vec![b.clone()]);
        s.delete_binding(&b).unwrap();
        s.delete_queue("/", "q").unwrap();
        let defs = s.load().unwrap();
        assert!(defs.bindings.is_empty() && defs.queues.is_empty());
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Each definition write reports a failed flush as a `Write` naming the definition, with
    /// sled's error as its source, and keeps nothing of the change, also after a reopen.
    #[test]
    fn failed_definition_writes_keep_their_cause_and_nothing_of_the_change() {
        use std::error::Error as _;
        let d = dir("refused");
        let (q, e, b) = sample(FieldTable::default());
        let refused = |r: Result<(), StoreError>, names: &str| {
            let e = r.expect_err("the write fails");
            assert!(matches!(e, StoreError::Write { .. }), "{e:?}");
            assert!(e.to_string().contains(names), "{e}");
            let source = e.source().expect("the cause is kept");
            assert!(source.downcast_ref::<sled::Error>().is_some(), "{source:?}");
        };
        {
            let s = Store::open(&d).unwrap();
            s.put_queue(&q).unwrap();
            s.put_exchange(&e).unwrap();
            s.put_binding(&b).unwrap();
            s.inject_definition_write_failure(true);
            let other = QueueDef {
                name: "other".into(),
                ..q.clone()
            };
            refused(s.put_queue(&other), "store queue 'other' in vhost '/'");
            refused(s.delete_queue("/", "q"), "delete queue 'q' in vhost '/'");
            let other = ExchangeDef {
                name: "other".into(),
                ..e.clone()
            };
            refused(
                s.put_exchange(&other),
                "store exchange 'other' in vhost '/'",
            );
            refused(
                s.delete_exchange("/", "e"),
                "delete exchange 'e' in vhost '/'",
            );
            let other = BindingDef {
                routing_key: "b".into(),
                ..b.clone()
            };
            refused(
                s.put_binding(&other),
                "store binding of queue 'q' to exchange 'e' (routing key 'b')",
            );
            refused(
                s.delete_binding(&b),
                "delete binding of queue 'q' to exchange 'e' (routing key 'a.#')",
            );
            refused(
                s.named_id("delayed:/").map(|_| ()),
                "store the log id of delayed:/",
            );
            s.inject_definition_write_failure(false);
            let defs = s.load().unwrap();
            assert_eq!(
                (defs.queues, defs.exchanges, defs.bindings),
                (vec![q.clone()], vec![e.clone()], vec![b.clone()])
            );
        }
        let s = Store::open(&d).unwrap();
        let defs = s.load().unwrap();
        assert_eq!(
            (defs.queues, defs.exchanges, defs.bindings),
            (vec![q], vec![e], vec![b])
        );
        // The refused id reservation was not kept either: it is made afresh, and kept.
        let id = s.named_id("delayed:/").unwrap();
        assert_eq!(s.named_id("delayed:/").unwrap(), id);
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An unreadable definition is a `Decode` error with serde_json's error as its source.
    #[test]
    fn an_unreadable_definition_keeps_its_parse_error() {
        use std::error::Error as _;
        let d = dir("decode");
        let s = Store::open(&d).unwrap();
        s.queues.insert(name_key("/", "q"), "[1,").unwrap();
        let e = s.load().unwrap_err();
        assert!(matches!(e, StoreError::Decode { .. }), "{e:?}");
        let source = e.source().expect("the cause is kept");
        assert!(source.downcast_ref::<serde_json::Error>().is_some());
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Opening fails with the I/O error that stopped it as the source, naming the path.
    #[test]
    fn open_errors_keep_their_cause() {
        use std::error::Error as _;
        let io_source = |e: &StoreError| {
            e.source()
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some()
        };
        // The data directory cannot be created: a file is in the way.
        let d = dir("open-file");
        std::fs::write(&d, b"").unwrap();
        let e = Store::open(&d.join("sub")).unwrap_err();
        assert!(
            matches!(e, StoreError::CreateDir { .. }) && io_source(&e),
            "{e:?}"
        );
        let _ = std::fs::remove_file(&d);
        // The lock file cannot be opened: a directory is in the way.
        let d = dir("open-lock");
        std::fs::create_dir_all(d.join("LOCK")).unwrap();
        let e = Store::open(&d).unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }) && io_source(&e), "{e:?}");
        assert!(e.to_string().contains("LOCK"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
        // The message log's directory cannot be created: a file is in the way.
        let d = dir("open-log");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("messages"), b"").unwrap();
        let e = Store::open(&d).unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }) && io_source(&e), "{e:?}");
        assert!(e.to_string().contains("messages"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_opener_is_refused() {
        let d = dir("lock");
        let _s = Store::open(&d).unwrap();
        assert!(matches!(Store::open(&d), Err(StoreError::Locked { .. })));
    }

    #[test]
    fn a_lost_or_damaged_database_is_refused_not_started_empty() {
        let d = dir("lost");
        {
            let s = Store::open(&d).unwrap();
            s.put_queue(&QueueDef {
                vhost: "/".into(),
                name: "q".into(),
                id: 1,
                auto_delete: false,
                arguments: FieldTable::default(),
                node: None,
                quorum: None,
            })
            .unwrap();
        }
        std::fs::remove_dir_all(d.join("definitions")).unwrap();
        let e = Store::open(&d).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("definitions"), "names the path: {e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_newer_format_is_refused() {
        let d = dir("version");
        {
            let s = Store::open(&d).unwrap();
            s.db.open_tree("meta")
                .unwrap()
                .insert("format", "99")
                .unwrap();
            s.db.flush().unwrap();
        }
        assert!(matches!(Store::open(&d), Err(StoreError::Version { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }
}
