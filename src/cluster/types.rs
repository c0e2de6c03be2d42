//! Types every part of the cluster shares: node identities and openraft's type configurations.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A node's id in every Raft group: derived from its node name, so every node computes the same
/// id for a name without asking anyone.
pub type NodeId = u64;

/// The id of the node named `name`: the first 8 bytes of SHA-256 of the name.
pub fn node_id(name: &str) -> NodeId {
    let h = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_be_bytes(b)
}

/// What a Raft membership records of a node: its name and the address it advertises for the
/// cluster link. A node that reaches a peer through a seed address it was configured with uses
/// that address instead (so links can run through proxies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

/// A Raft group's number on the link: 0 is the node's own control service (join, forwarded
/// writes, read barriers), 1 the metadata group; quorum queues take numbers of their own.
pub type GroupId = u32;
pub const CONTROL: GroupId = 0;
pub const META: GroupId = 1;
/// Messages forwarded to the node their queues live on (`forward.rs`).
pub const FORWARD: GroupId = 2;
/// Quorum queues' groups (the group's number travels in the call, `network::GroupCall`).
pub const QUORUM: GroupId = 3;
/// Consumers, gets and purges through another node (`subscribe.rs`).
pub const CONSUME: GroupId = 4;

openraft::declare_raft_types!(
    /// The metadata group: definitions replicated on every node.
    pub MetaConfig:
        D = crate::cluster::meta::Proposal,
        R = crate::cluster::meta::Applied,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<MetaConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A snapshot already encoded, as both state machines hand theirs to openraft.
pub struct Encoded<C> {
    pub meta: openraft::SnapshotMeta<NodeId, Member>,
    pub data: Vec<u8>,
    pub config: std::marker::PhantomData<C>,
}

impl<C> Encoded<C>
where
    C: openraft::RaftTypeConfig<
        NodeId = NodeId,
        Node = Member,
        SnapshotData = std::io::Cursor<Vec<u8>>,
    >,
{
    pub fn new(meta: openraft::SnapshotMeta<NodeId, Member>, data: Vec<u8>) -> Self {
        Encoded {
            meta,
            data,
            config: std::marker::PhantomData,
        }
    }

    pub fn snapshot(&self) -> openraft::Snapshot<C> {
        openraft::Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(std::io::Cursor::new(self.data.clone())),
        }
    }
}

impl<C> openraft::storage::RaftSnapshotBuilder<C> for Encoded<C>
where
    C: openraft::RaftTypeConfig<
        NodeId = NodeId,
        Node = Member,
        SnapshotData = std::io::Cursor<Vec<u8>>,
    >,
{
    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::Snapshot<C>, openraft::StorageError<NodeId>> {
        Ok(self.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("warren@a"), node_id("warren@a"));
        assert_ne!(node_id("warren@a"), node_id("warren@b"));
    }
}
