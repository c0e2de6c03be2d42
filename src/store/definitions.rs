//! Durable definitions: exchanges, queues and bindings, as sled trees of JSON values.

use super::{Definitions, Store, StoreError};
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

fn write_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

impl Store {
    fn put<T: Serialize>(&self, tree: &sled::Tree, key: &[u8], v: &T) -> Result<(), StoreError> {
        let json = serde_json::to_vec(v).map_err(write_err)?;
        tree.insert(key, json).map_err(write_err)?;
        self.flush()
    }

    fn remove(&self, tree: &sled::Tree, key: &[u8]) -> Result<(), StoreError> {
        if tree.remove(key).map_err(write_err)?.is_some() {
            self.flush()?;
        }
        Ok(())
    }

    pub fn put_exchange(&self, d: &ExchangeDef) -> Result<(), StoreError> {
        self.put(&self.exchanges, &name_key(&d.vhost, &d.name), d)
    }

    pub fn delete_exchange(&self, vhost: &str, name: &str) -> Result<(), StoreError> {
        self.remove(&self.exchanges, &name_key(vhost, name))
    }

    pub fn put_queue(&self, d: &QueueDef) -> Result<(), StoreError> {
        self.put(&self.queues, &name_key(&d.vhost, &d.name), d)
    }

    pub fn delete_queue(&self, vhost: &str, name: &str) -> Result<(), StoreError> {
        self.remove(&self.queues, &name_key(vhost, name))
    }

    pub fn put_binding(&self, d: &BindingDef) -> Result<(), StoreError> {
        self.put(&self.bindings, &d.key(), d)
    }

    pub fn delete_binding(&self, d: &BindingDef) -> Result<(), StoreError> {
        self.remove(&self.bindings, &d.key())
    }

    /// Read every stored definition (at start, before any client connects).
    pub fn load(&self) -> Result<Definitions, StoreError> {
        fn all<T: for<'de> Deserialize<'de>>(
            store: &Store,
            tree: &sled::Tree,
        ) -> Result<Vec<T>, StoreError> {
            tree.iter()
                .map(|r| {
                    let (k, v) = r.map_err(|e| StoreError::Corrupt {
                        path: store.path.clone(),
                        detail: e.to_string(),
                    })?;
                    serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                        path: store.path.clone(),
                        detail: format!("unreadable record {:?}: {e}", String::from_utf8_lossy(&k)),
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

    #[test]
    fn definitions_round_trip_through_reopen() {
        let d = dir("roundtrip");
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(5));
        let q = QueueDef {
            vhost: "/".into(),
            name: "q".into(),
            id: 1,
            auto_delete: false,
            arguments: args,
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
