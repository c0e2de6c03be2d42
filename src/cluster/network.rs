//! openraft's network over the cluster link: every group's RPCs travel as calls to the group's
//! number on the peer's link, JSON-encoded (the metadata group's entries are small).

use super::link::{Link, LinkError};
use super::types::{GroupId, Member, NodeId};
use bytes::Bytes;
use dashmap::DashMap;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Raft, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Where each node is reached: the seed address this node was configured with when a seed
/// turned out to be that node (so links can run through proxies, and a node is reached the way
/// its operator wrote), else the address the node advertises in the membership (a node added
/// later, not among the seeds).
#[derive(Debug, Default)]
pub struct AddressBook {
    known: DashMap<NodeId, String>,
    /// Seeds not yet known to be a node (or this one), with when each was last asked.
    unmapped: parking_lot::Mutex<Vec<(String, Option<std::time::Instant>)>>,
}

impl AddressBook {
    pub fn new(seeds: &[String]) -> Self {
        AddressBook {
            known: DashMap::new(),
            unmapped: parking_lot::Mutex::new(seeds.iter().map(|s| (s.clone(), None)).collect()),
        }
    }

    pub fn learn(&self, id: NodeId, addr: &str) {
        self.known.insert(id, addr.to_owned());
        self.unmapped.lock().retain(|(s, _)| s != addr);
    }

    /// A seed that is this node itself.
    pub fn mine(&self, seed: &str) {
        self.unmapped.lock().retain(|(s, _)| s != seed);
    }

    /// The seeds not yet known are no longer waited for: this node joined a cluster it was
    /// pointed at (`join_cluster`), so its other members are reached at their advertised
    /// addresses even if a seed never answers. Returns the seeds given up.
    pub fn give_up_seeds(&self) -> Vec<String> {
        std::mem::take(&mut *self.unmapped.lock())
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    /// `give_up_seeds` again at a restart, for the seeds it gave up.
    pub fn gave_up<'a>(&self, seeds: impl IntoIterator<Item = &'a str>) {
        let gone: Vec<&str> = seeds.into_iter().collect();
        self.unmapped
            .lock()
            .retain(|(s, _)| !gone.contains(&s.as_str()));
    }

    pub fn get(&self, id: NodeId) -> Option<String> {
        self.known.get(&id).map(|a| a.clone())
    }

    /// The address to reach node `id` at. A node not known yet is looked for among the seeds
    /// not known yet (each asked at most once a second); it is reached at its advertised address
    /// only once every seed is known to be another node (it is not one of them). None: not
    /// reachable yet (a seed that may be it has not answered).
    pub async fn addr(&self, link: &Link, id: NodeId, member: &Member) -> Option<String> {
        if let Some(a) = self.get(id) {
            return Some(a);
        }
        let due: Vec<String> = {
            let mut u = self.unmapped.lock();
            let now = std::time::Instant::now();
            u.iter_mut()
                .filter(|(_, at)| at.is_none_or(|t| now.duration_since(t) > Duration::from_secs(1)))
                .map(|(s, at)| {
                    *at = Some(now);
                    s.clone()
                })
                .collect()
        };
        for seed in due {
            match link
                .call(
                    &seed,
                    super::types::CONTROL,
                    super::node::hello_request(),
                    Duration::from_secs(1),
                )
                .await
            {
                Ok(b) => {
                    if let Some(h) = super::node::hello_reply(&b) {
                        self.learn(h, &seed);
                    }
                }
                Err(LinkError::Refused(why)) if why.contains("this node's own name") => {
                    self.mine(&seed)
                }
                Err(_) => {}
            }
        }
        self.get(id)
            .or_else(|| self.unmapped.lock().is_empty().then(|| member.addr.clone()))
    }
}

/// One Raft RPC on the wire.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftRpc<C: RaftTypeConfig> {
    Append(AppendEntriesRequest<C>),
    Vote(VoteRequest<C::NodeId>),
    Snapshot(InstallSnapshotRequest<C>),
}

pub fn encode<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("cluster messages serialize"))
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    serde_json::from_slice(b).map_err(|e| format!("undecodable cluster message: {e}"))
}

/// Serve one RPC for the local Raft of a group: the peer gets the Raft's own result back.
pub async fn serve<C>(raft: &Raft<C>, payload: &[u8]) -> Result<Bytes, String>
where
    C: RaftTypeConfig,
{
    Ok(match decode::<RaftRpc<C>>(payload)? {
        RaftRpc::Append(r) => encode(&raft.append_entries(r).await),
        RaftRpc::Vote(r) => encode(&raft.vote(r).await),
        RaftRpc::Snapshot(r) => encode(&raft.install_snapshot(r).await),
    })
}

/// A call to one of the many groups behind one link service (quorum queues' groups), postcard
/// encoded: a Raft RPC, or a command for the group's leader.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub enum GroupCall<C: RaftTypeConfig> {
    Raft { group: u64, rpc: RaftRpc<C> },
    Propose { group: u64, cmd: C::D },
}

/// Opens a `Peer` per target node for one group.
#[derive(Clone)]
pub struct Network {
    pub link: Link,
    pub book: Arc<AddressBook>,
    /// The link service.
    pub group: GroupId,
    /// A quorum queue's group behind the service (postcard on the wire), or None for the
    /// metadata group (JSON).
    pub queue: Option<u64>,
}

pub struct Peer {
    link: Link,
    book: Arc<AddressBook>,
    group: GroupId,
    queue: Option<u64>,
    target: NodeId,
    member: Member,
}

impl<C> RaftNetworkFactory<C> for Network
where
    C: RaftTypeConfig<NodeId = NodeId, Node = Member>,
{
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            link: self.link.clone(),
            book: self.book.clone(),
            group: self.group,
            queue: self.queue,
            target,
            member: node.clone(),
        }
    }
}

impl Peer {
    async fn call<C, Resp, E>(
        &self,
        rpc: RaftRpc<C>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        C: RaftTypeConfig<NodeId = NodeId, Node = Member>,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let addr = self
            .book
            .addr(&self.link, self.target, &self.member)
            .await
            .ok_or_else(|| {
                RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                    "{} has not answered at any seed address yet",
                    self.member.name
                ))))
            })?;
        let timeout = option.hard_ttl().max(Duration::from_millis(50));
        let payload = match self.queue {
            Some(group) => Bytes::from(
                postcard::to_stdvec(&GroupCall::<C>::Raft { group, rpc })
                    .map_err(|e| RPCError::Network(NetworkError::new(&e)))?,
            ),
            None => encode(&rpc),
        };
        let reply = self
            .link
            .call(&addr, self.group, payload, timeout)
            .await
            .map_err(rpc_error)?;
        let r: Result<Resp, RaftError<NodeId, E>> = match self.queue {
            Some(_) => postcard::from_bytes(&reply).map_err(|e| e.to_string()),
            None => decode(&reply),
        }
        .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// What openraft hears of a failed call. Only a peer that cannot be reached at all (no
/// connection, refused, link closed) is `Unreachable`, after which openraft waits 500 ms before
/// it tries that peer again. A call that timed out, or that the peer answered with an error, is
/// tried again with the next entries or heartbeat: a follower whose fdatasync took longer than
/// the 100 ms an AppendEntries may take (ext4's journal stalls for 50–220 ms now and then)
/// would otherwise stop a busy queue's commits for half a second when both followers are slow.
fn rpc_error<E: std::error::Error>(e: LinkError) -> RPCError<NodeId, Member, E> {
    match e {
        LinkError::Remote(_) | LinkError::Timeout => RPCError::Network(NetworkError::new(&e)),
        LinkError::Unreachable(_) | LinkError::Refused(_) | LinkError::Closed => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
    }
}

impl<C> RaftNetwork<C> for Peer
where
    C: RaftTypeConfig<NodeId = NodeId, Node = Member>,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let (started, entries) = (std::time::Instant::now(), rpc.entries.len() as u64);
        let r = self.call(RaftRpc::Append(rpc), &option).await;
        let stage = match entries {
            0 => &crate::observe::stages::RAFT_BEAT,
            _ => &crate::observe::stages::RAFT_REPLICATE,
        };
        stage.record(started, entries);
        r
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RaftRpc::Snapshot(rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(RaftRpc::<C>::Vote(rpc), &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_peer_out_of_reach_is_backed_off_from() {
        type E = RPCError<NodeId, Member, RaftError<NodeId>>;
        let backed_off = |e: LinkError| matches!(rpc_error(e) as E, RPCError::Unreachable(_));
        assert!(
            !backed_off(LinkError::Timeout),
            "a slow peer is asked again at once"
        );
        assert!(!backed_off(LinkError::Remote("bad".into())));
        assert!(backed_off(LinkError::Unreachable(
            "connection refused".into()
        )));
        assert!(backed_off(LinkError::Refused("wrong secret".into())));
        assert!(backed_off(LinkError::Closed));
    }
}
