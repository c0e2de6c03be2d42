//! The log under a real openraft node.

use super::*;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Config, Raft, SnapshotPolicy};
use std::collections::BTreeMap;

/// No peers: a one-node group never sends anything.
struct NoNet;
struct NoPeer;

fn unreachable<E: std::error::Error>() -> RPCError<u64, Member, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other("a single node")))
}

impl RaftNetworkFactory<Tc> for NoNet {
    type Network = NoPeer;
    async fn new_client(&mut self, _target: u64, _node: &Member) -> NoPeer {
        NoPeer
    }
}

impl RaftNetwork<Tc> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<Tc>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        Err(unreachable())
    }
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<Tc>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }
    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        Err(unreachable())
    }
}

fn config() -> Arc<Config> {
    Arc::new(
        Config {
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    )
}

async fn leader(raft: &Raft<Tc>) {
    raft.wait(Some(Duration::from_secs(10)))
        .current_leader(1, "leader")
        .await
        .unwrap();
}

/// openraft runs on the log: a one-node group commits 200 writes; restarted with an empty
/// (in-memory) state machine it re-applies them from the log up to the saved committed id
/// and carries on; a snapshot then purges the log, deleting whole segments.
#[test]
fn a_one_node_group_commits_restarts_and_purges() {
    let d = TempDir::new("raft");
    let w = writer(&d.0);
    let g = d.0.join("group");
    rt().block_on(async {
        let sm = Sm::default();
        let raft = Raft::new(1, config(), NoNet, open(&g, &w, small()), sm.clone())
            .await
            .unwrap();
        let members = BTreeMap::from([(
            1u64,
            Member {
                name: "warren@a".into(),
                addr: "127.0.0.1:1".into(),
            },
        )]);
        raft.initialize(members).await.unwrap();
        leader(&raft).await;
        for i in 0..200u32 {
            raft.client_write(Req(i.to_le_bytes().repeat(25)))
                .await
                .unwrap();
        }
        assert_eq!(sm.0.lock().data.len(), 200);
        raft.shutdown().await.unwrap();
    });
    rt().block_on(async {
        let sm = Sm::default();
        let log = open(&g, &w, small());
        let raft = Raft::new(1, config(), NoNet, log.clone(), sm.clone())
            .await
            .unwrap();
        // Re-applied at start from the committed id the log kept, before any election.
        assert_eq!(sm.0.lock().data.len(), 200);
        assert_eq!(sm.0.lock().data[199], Req(199u32.to_le_bytes().repeat(25)));
        leader(&raft).await;
        for i in 200..250u32 {
            raft.client_write(Req(i.to_le_bytes().repeat(25)))
                .await
                .unwrap();
        }
        assert_eq!(sm.0.lock().data.len(), 250);
        let segs = log.segment_count();
        raft.trigger().snapshot().await.unwrap();
        // With no log kept past a snapshot, openraft purges up to it.
        let m = raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.snapshot.is_some() && m.purged == m.snapshot, "purged")
            .await
            .unwrap();
        let applied = m.snapshot;
        assert!(applied.is_some_and(|a| a.index >= 250));
        let mut l = log.clone();
        assert_eq!(state(&mut l).await, (applied.map(|a| a.index), applied));
        assert!(
            log.segment_count() < segs && log.segment_count() <= 1,
            "{segs} -> {}",
            log.segment_count()
        );
        raft.shutdown().await.unwrap();
    });
    w.close();
}
