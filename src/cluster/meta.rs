//! The metadata group's state machine: definition changes (exchanges, queues, bindings, …) are
//! proposed as `MetaOp`s, committed by Raft, and applied on every node, in the same order, by the
//! broker (through `Applier`). The node that proposed an operation answers its client with its own
//! application's result, so the reply reflects this node's view, and the definition is visible
//! here before the client hears of it.
//!
//! Invariants:
//! - Application is deterministic: it depends only on the definitions, which every node builds
//!   from the same log. Node-local state (connections, exclusive queues, messages) never enters.
//! - `state.json` (last applied entry and membership) is written after the definitions it
//!   covers, so a crash re-applies at most a few entries; every operation is safe to re-apply.

use super::access::{PermissionDef, TopicPermissionDef, UserDef, VhostDef};
use super::types::{MetaConfig, NodeId};
use amq_protocol::types::FieldTable;
use dashmap::DashMap;
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;

/// One definition change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaOp {
    /// The first entry of a new cluster: its id.
    Form {
        cluster_id: String,
    },
    DeclareExchange {
        vhost: String,
        name: String,
        kind: String,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    },
    DeleteExchange {
        vhost: String,
        name: String,
        if_unused: bool,
    },
    /// A queue record; `node` is where a classic queue lives (its home).
    DeclareQueue {
        vhost: String,
        name: String,
        node: String,
        durable: bool,
        auto_delete: bool,
        arguments: FieldTable,
    },
    DeleteQueue {
        vhost: String,
        name: String,
        if_unused: bool,
        if_empty: bool,
    },
    Bind {
        vhost: String,
        source: String,
        destination: String,
        to_queue: bool,
        routing_key: String,
        arguments: FieldTable,
    },
    Unbind {
        vhost: String,
        source: String,
        destination: String,
        to_queue: bool,
        routing_key: String,
        arguments: FieldTable,
    },
    /// A quorum queue's members changed (add_member, delete_member, grow, shrink).
    SetQuorumMembers {
        vhost: String,
        name: String,
        group: u64,
        members: Vec<String>,
    },
    // Access control (issue 14, point 1). New variants go at the end: postcard encodes a
    // variant by its index.
    /// Create or update a vhost; `grant` is given to its creator if the vhost is new.
    PutVhost {
        def: VhostDef,
        /// Boxed to keep the operation small (serialised as a `PermissionDef`).
        grant: Option<Box<PermissionDef>>,
    },
    /// Delete a vhost with everything in it; its connections are closed on every node.
    DeleteVhost {
        name: String,
    },
    PutUser {
        def: UserDef,
    },
    /// Delete a user and its permissions; its connections are closed on every node.
    DeleteUser {
        name: String,
    },
    PutPermission {
        def: PermissionDef,
    },
    DeletePermission {
        user: String,
        vhost: String,
    },
    PutTopicPermission {
        def: TopicPermissionDef,
    },
    /// A user's topic permissions in a vhost (only `exchange`'s if given).
    DeleteTopicPermissions {
        user: String,
        vhost: String,
        exchange: Option<String>,
    },
    /// Set (`Some`) or clear one of a vhost's limits.
    SetVhostLimit {
        vhost: String,
        name: String,
        value: Option<i64>,
    },
    /// Set (`Some`) or clear one of a user's limits.
    SetUserLimit {
        user: String,
        name: String,
        value: Option<i64>,
    },
}

/// A proposed operation: `id` lets the proposing node (`origin`) find its own application's
/// result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: u64,
    pub origin: NodeId,
    pub op: MetaOp,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.op)
    }
}

/// An error as the client will see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub connection: bool,
    pub code: u16,
    pub text: String,
}

/// What applying an operation gave.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub error: Option<Refusal>,
    /// queue.declare-ok / delete-ok's counts, where the proposer needs them.
    pub messages: u32,
    pub consumers: u32,
}

/// The broker's side: apply operations to the model, take messages forwarded from other nodes.
/// Where an operation sits in the metadata log, for operations that need it.
pub struct ApplyContext<'a> {
    /// Its log index: unique in the cluster, the same on every node.
    pub index: u64,
    /// The cluster's members when it is applied.
    pub members: Vec<&'a super::types::Member>,
}

pub trait Applier: Send + Sync + 'static {
    fn apply(&self, op: &MetaOp, at: &ApplyContext) -> Applied;
    /// Enqueue messages another node forwarded to this node's queues; done once the
    /// persistent ones are durable.
    fn forwarded(
        &self,
        batch: super::forward::Batch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;
    /// The cluster got its id (the `Form` entry, or a snapshot holding it).
    fn formed(&self, cluster_id: &str);
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Persisted {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, super::types::Member>,
    cluster_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    cluster_id: Option<String>,
}

/// Waiters for the results of this node's proposals.
#[derive(Default)]
pub struct Waiters {
    map: DashMap<u64, oneshot::Sender<Applied>>,
}

impl Waiters {
    pub fn register(&self, id: u64) -> oneshot::Receiver<Applied> {
        let (tx, rx) = oneshot::channel();
        self.map.insert(id, tx);
        rx
    }

    pub fn forget(&self, id: u64) {
        self.map.remove(&id);
    }
}

pub struct MetaStateMachine {
    me: NodeId,
    file: PathBuf,
    state: Persisted,
    applier: Arc<dyn Applier>,
    waiters: Arc<Waiters>,
    current: Option<(SnapshotMeta<NodeId, super::types::Member>, Vec<u8>)>,
}

fn io_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

/// Write `bytes` to `path` durably: a temporary file, fdatasync, rename.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl MetaStateMachine {
    pub fn open(
        me: NodeId,
        dir: &Path,
        applier: Arc<dyn Applier>,
        waiters: Arc<Waiters>,
    ) -> Result<Self, String> {
        let file = dir.join("state.json");
        let state = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{}: unreadable: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        if let Some(id) = &state.cluster_id {
            applier.formed(id);
        }
        Ok(MetaStateMachine {
            me,
            file,
            state,
            applier,
            waiters,
            current: None,
        })
    }

    fn save(&self) -> std::io::Result<()> {
        let b = serde_json::to_vec(&self.state).map_err(std::io::Error::other)?;
        write_durably(&self.file, &b)
    }

    /// Snapshots are not built yet (the group keeps its whole log, `SnapshotPolicy::Never`):
    /// one holds only the cluster id, and installing one is refused.
    fn snapshot_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&SnapshotBody {
            cluster_id: self.state.cluster_id.clone(),
        })
        .unwrap_or_default()
    }
}

impl RaftStateMachine<MetaConfig> for MetaStateMachine {
    type SnapshotBuilder = super::types::Encoded<MetaConfig>;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, super::types::Member>,
        ),
        StorageError<NodeId>,
    > {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<MetaConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for e in entries {
            self.state.last_applied = Some(e.log_id);
            let applied = match e.payload {
                EntryPayload::Blank => Applied::default(),
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(e.log_id), m);
                    Applied::default()
                }
                EntryPayload::Normal(p) => {
                    let applied = match &p.op {
                        MetaOp::Form { cluster_id } => {
                            if self.state.cluster_id.is_none() {
                                self.state.cluster_id = Some(cluster_id.clone());
                                self.applier.formed(cluster_id);
                            }
                            Applied::default()
                        }
                        op => self.applier.apply(
                            op,
                            &ApplyContext {
                                index: e.log_id.index,
                                members: self
                                    .state
                                    .membership
                                    .membership()
                                    .nodes()
                                    .map(|(_, m)| m)
                                    .collect(),
                            },
                        ),
                    };
                    if p.origin == self.me {
                        if let Some((_, tx)) = self.waiters.map.remove(&p.id) {
                            let _ = tx.send(applied.clone());
                        }
                    }
                    applied
                }
            };
            out.push(applied);
        }
        self.save().map_err(io_err)?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> super::types::Encoded<MetaConfig> {
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                self.state.last_applied.map_or(0, |l| l.index),
                rand::random::<u32>()
            ),
        };
        let data = self.snapshot_bytes();
        self.current = Some((meta.clone(), data.clone()));
        super::types::Encoded::new(meta, data)
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<NodeId, super::types::Member>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        Err(io_err(
            "metadata snapshots are not supported yet: the metadata log is kept whole",
        ))
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<MetaConfig>>, StorageError<NodeId>> {
        Ok(self
            .current
            .as_ref()
            .map(|(meta, data)| super::types::Encoded::new(meta.clone(), data.clone()).snapshot()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldTable};

    /// The Raft log stores entries with postcard, which cannot read self-describing formats:
    /// every operation, arguments included, must come back as it went in.
    #[test]
    fn operations_round_trip_through_the_logs_encoding() {
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        let mut nested = FieldTable::default();
        nested.insert("k".into(), AMQPValue::Boolean(true));
        args.insert("x-t".into(), AMQPValue::FieldTable(nested));
        let p = Proposal {
            id: 7,
            origin: 9,
            op: MetaOp::DeclareQueue {
                vhost: "/".into(),
                name: "q".into(),
                node: "warren@a".into(),
                durable: true,
                auto_delete: false,
                arguments: args,
            },
        };
        let b = postcard::to_stdvec(&p).unwrap();
        let back: Proposal = postcard::from_bytes(&b).unwrap();
        assert_eq!(back, p);
    }
    /// Operations already in a metadata log decode as they were written (the access-control
    /// variants were appended, so the old variants keep their indexes), and every new
    /// operation comes back as it went in. The bytes were written by the code before them.
    #[test]
    fn old_encodings_still_decode_and_new_operations_round_trip() {
        let old: [(&[u8], MetaOp); 3] = [
            (
                &[7, 9, 0, 1, 99],
                MetaOp::Form {
                    cluster_id: "c".into(),
                },
            ),
            (
                &[7, 9, 4, 1, 47, 1, 113, 1, 0],
                MetaOp::DeleteQueue {
                    vhost: "/".into(),
                    name: "q".into(),
                    if_unused: true,
                    if_empty: false,
                },
            ),
            (
                &[7, 9, 6, 1, 47, 1, 120, 1, 113, 1, 1, 107, 0],
                MetaOp::Unbind {
                    vhost: "/".into(),
                    source: "x".into(),
                    destination: "q".into(),
                    to_queue: true,
                    routing_key: "k".into(),
                    arguments: FieldTable::default(),
                },
            ),
        ];
        for (bytes, op) in old {
            let p: Proposal = postcard::from_bytes(bytes).unwrap();
            assert_eq!(p.op, op);
            assert_eq!(postcard::to_stdvec(&p).unwrap(), bytes, "{op:?}");
        }
        use crate::cluster::access::*;
        let perm = PermissionDef {
            user: "u".into(),
            vhost: "v".into(),
            configure: ".*".into(),
            write: "^w".into(),
            read: "".into(),
        };
        let ops = vec![
            MetaOp::PutVhost {
                def: VhostDef {
                    name: "v".into(),
                    description: Some("d".into()),
                    tags: None,
                    default_queue_type: Some("quorum".into()),
                },
                grant: Some(Box::new(perm.clone())),
            },
            MetaOp::DeleteVhost { name: "v".into() },
            MetaOp::PutUser {
                def: UserDef {
                    name: "u".into(),
                    password: Some(PasswordHash {
                        hash: "h".into(),
                        algorithm: "a".into(),
                    }),
                    tags: Some(vec!["administrator".into()]),
                    limits: Some([("max-channels".to_owned(), 2)].into()),
                },
            },
            MetaOp::DeleteUser { name: "u".into() },
            MetaOp::PutPermission { def: perm.clone() },
            MetaOp::DeletePermission {
                user: "u".into(),
                vhost: "v".into(),
            },
            MetaOp::PutTopicPermission {
                def: TopicPermissionDef {
                    user: "u".into(),
                    vhost: "v".into(),
                    exchange: "amq.topic".into(),
                    write: "a".into(),
                    read: "b".into(),
                },
            },
            MetaOp::DeleteTopicPermissions {
                user: "u".into(),
                vhost: "v".into(),
                exchange: None,
            },
            MetaOp::SetVhostLimit {
                vhost: "v".into(),
                name: "max-queues".into(),
                value: Some(1),
            },
            MetaOp::SetUserLimit {
                user: "u".into(),
                name: "max-channels".into(),
                value: None,
            },
        ];
        for op in ops {
            let p = Proposal {
                id: 1,
                origin: 2,
                op,
            };
            let b = postcard::to_stdvec(&p).unwrap();
            let back: Proposal = postcard::from_bytes(&b).unwrap();
            assert_eq!(back, p);
        }
    }
}
