//! Quorum queues' groups on this node: starting and stopping them, serving their RPCs, and
//! proposing to a group's leader from any node.

use super::*;
use crate::cluster::forward::Forwarder;
use crate::cluster::quorum::{
    decode as qdecode, encode as qencode, QCmd, QueueConfig, QueueGroupId, QueueHost,
    QueueStateMachine, QuorumCall, Shared,
};
use crate::cluster::types::QUORUM;

/// This node's member of a quorum queue's group.
pub struct QueueGroup {
    pub id: QueueGroupId,
    pub raft: Raft<QueueConfig>,
    pub shared: Arc<Shared>,
    dir: PathBuf,
    watcher: tokio::task::JoinHandle<()>,
}

fn queue_raft_config(snapshot_every: u64) -> Arc<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "warren-queue".into(),
        heartbeat_interval: 100,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        // A snapshot is the queue's messages whole: taken every so many entries (batches), the
        // log before it then goes by whole segments.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every / 10,
        ..Default::default()
    };
    Arc::new(c.validate().expect("a valid Raft configuration"))
}

impl Cluster {
    /// Start this node's member of a quorum queue's group (or reopen it after a restart). The
    /// first member forms a new group. `on_leader` hears the name of each new leader.
    pub async fn start_queue_group(
        self: &Arc<Self>,
        id: QueueGroupId,
        members: &[String],
        host: Arc<dyn QueueHost>,
        on_leader: Box<dyn Fn(Option<String>) + Send + Sync>,
    ) -> Result<Arc<Shared>, String> {
        if let Some(g) = self.queue_groups.get(&id) {
            return Ok(g.shared.clone());
        }
        let dir = self.settings.dir.join("q").join(format!("{id:016x}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (sm, shared) = QueueStateMachine::open(&dir, host)?;
        let log = RaftLog::<QueueConfig>::open(
            &dir.join("log"),
            self.log_writer.clone(),
            crate::cluster::raft_log::RaftLogOptions {
                segment_size: self.settings.quorum_segment_bytes,
                ..Default::default()
            },
        )
        .map_err(|e| format!("{}: {e}", dir.display()))?;
        let network = Network {
            link: self.link.clone(),
            book: self.book.clone(),
            group: QUORUM,
            queue: Some(id),
        };
        let raft = Raft::new(
            self.me,
            queue_raft_config(self.settings.quorum_snapshot_every),
            network,
            log,
            sm,
        )
        .await
        .map_err(|e| format!("cannot start a quorum queue's group: {e}"))?;
        if members.first().map(String::as_str) == Some(self.name.as_str()) {
            let fresh = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .next()
                .is_none();
            if fresh {
                let meta = self.meta.metrics().borrow().membership_config.clone();
                let nodes: BTreeMap<NodeId, Member> = members
                    .iter()
                    .map(|n| {
                        let id = node_id(n);
                        let m = meta.membership().get_node(&id).cloned().unwrap_or(Member {
                            name: n.clone(),
                            addr: String::new(),
                        });
                        (id, m)
                    })
                    .collect();
                if let Err(e) = raft.initialize(nodes).await {
                    warn!(group = id, "cannot form a quorum queue's group: {e}");
                } else {
                    // The declaring node stands first, so it usually leads: queues declared
                    // through different nodes spread their leaders (RabbitMQ's client-local).
                    let _ = raft.trigger().elect().await;
                }
            }
        }
        let watcher = {
            let raft = raft.clone();
            let shared = shared.clone();
            let me = self.me;
            tokio::spawn(async move {
                let mut rx = raft.metrics();
                let mut last_leader = None;
                let mut was_leading = None;
                loop {
                    // Metrics change with every commit: only a change of leader is news.
                    let (leading, leader, name) = {
                        let m = rx.borrow_and_update();
                        // A new leader serves once it has applied an entry of its own term:
                        // everything its predecessors committed (deliveries, marks,
                        // settlements) is in the state its live view is filled from.
                        let leading = m.current_leader == Some(me)
                            && m.state.is_leader()
                            && m.last_applied
                                .is_some_and(|l| l.leader_id.term == m.current_term);
                        let news = m.current_leader != last_leader && m.current_leader.is_some();
                        let name = news
                            .then(|| {
                                m.current_leader.and_then(|l| {
                                    m.membership_config
                                        .membership()
                                        .get_node(&l)
                                        .map(|n| n.name.clone())
                                })
                            })
                            .flatten();
                        (leading, news.then_some(m.current_leader).flatten(), name)
                    };
                    if was_leading != Some(leading) {
                        was_leading = Some(leading);
                        shared.set_leading(leading);
                    }
                    if leader.is_some() {
                        last_leader = leader;
                        on_leader(name);
                    }
                    if rx.changed().await.is_err() {
                        shared.set_leading(false);
                        return;
                    }
                }
            })
        };
        let g = Arc::new(QueueGroup {
            id,
            raft,
            shared: shared.clone(),
            dir,
            watcher,
        });
        self.queue_groups.insert(id, g);
        Ok(shared)
    }

    /// Stop this node's member of a group; `delete` removes its files (the queue is deleted).
    pub async fn stop_queue_group(&self, id: QueueGroupId, delete: bool) {
        let Some((_, g)) = self.queue_groups.remove(&id) else {
            return;
        };
        let _ = g.raft.shutdown().await;
        g.watcher.abort();
        let tag = format!("({id:x})");
        self.forwarders.retain(|k, f| {
            let keep = !k.ends_with(&tag);
            if !keep {
                // Its task ends (a deleted queue's appender would wait forever otherwise).
                f.close();
            }
            keep
        });
        g.shared.set_leading(false);
        if delete {
            // On a blocking thread: ext4 takes tens of milliseconds per segment file here.
            let dir = g.dir.clone();
            let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            if let Ok(Err(e)) = removed {
                warn!(
                    group = id,
                    "cannot remove a deleted quorum queue's files: {e}"
                );
            }
        }
    }

    /// The queue's publishes on their way to its group: batches proposed to the leader.
    pub fn quorum_appender(self: &Arc<Self>, id: QueueGroupId, queue: &str) -> Arc<Forwarder> {
        let label = format!("quorum queue {queue} ({id:x})");
        let f = Forwarder::new(label.clone(), self.progress.clone());
        // Listed with the forwarders: its backlog pauses publishers as theirs does.
        self.forwarders.insert(label, f.clone());
        let me = Arc::downgrade(self);
        let me2 = me.clone();
        // Up to 8 batches in flight on a leader of this node's own (handed to its log in
        // order); one at a time to a leader elsewhere.
        tokio::spawn(f.clone().run_pipelined(
            8,
            move |payload| {
                let me = me.clone();
                async move {
                    let me = me.upgrade().ok_or("this node is stopping")?;
                    me.submit_queue(id, payload).await
                }
            },
            move |payload| {
                let me = me2.clone();
                async move {
                    let me = me.upgrade().ok_or("this node is stopping")?;
                    me.propose_queue(id, QCmd::Enqueue(payload)).await
                }
            },
        ));
        f
    }

    /// Hand a batch to the group's log if this node leads it (the answer comes with the
    /// commit), else propose it to the leader and wait.
    async fn submit_queue(
        &self,
        id: QueueGroupId,
        payload: Bytes,
    ) -> Result<crate::cluster::forward::Answer, String> {
        let local = self.queue_groups.get(&id).map(|g| g.raft.clone());
        if let Some(raft) = local {
            if raft.metrics().borrow().current_leader == Some(self.me) {
                let started = std::time::Instant::now();
                let rx = raft
                    .client_write_ff(QCmd::Enqueue(payload))
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(Box::pin(async move {
                    let r = tokio::time::timeout(PROPOSE_TIMEOUT, rx).await;
                    crate::observe::stages::QUORUM_COMMIT.record(started, 1);
                    match r {
                        Ok(Ok(Ok(_))) => Ok(()),
                        Ok(Ok(Err(e))) => Err(e.to_string()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("no majority of the queue's members answered".into()),
                    }
                }));
            }
        }
        let r = self.propose_queue(id, QCmd::Enqueue(payload)).await;
        Ok(Box::pin(std::future::ready(r)))
    }

    /// Propose a command to a queue's group: on this node if it leads, else on the leader.
    pub async fn propose_queue(&self, id: QueueGroupId, cmd: QCmd) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        loop {
            // A leader cut off from its majority waits for a commit forever: bounded here.
            let last = match tokio::time::timeout_at(deadline, self.propose_once(id, &cmd)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => "no majority of the queue's members answered".into(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("the queue's group did not commit in time: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Propose `cmd` as the group's leader, on this node only (an error if it does not lead):
    /// success means this leader committed it in its own term.
    pub async fn propose_as_leader(&self, id: QueueGroupId, cmd: QCmd) -> Result<(), String> {
        let g = self
            .queue_groups
            .get(&id)
            .map(|g| g.raft.clone())
            .ok_or("this node is not a member of the queue's group")?;
        if g.metrics().borrow().current_leader != Some(self.me) {
            return Err("this node does not lead the queue's group".into());
        }
        match tokio::time::timeout(PROPOSE_TIMEOUT, g.client_write(cmd)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no majority of the queue's members answered".into()),
        }
    }

    async fn propose_once(&self, id: QueueGroupId, cmd: &QCmd) -> Result<(), String> {
        let g = self
            .queue_groups
            .get(&id)
            .map(|g| g.raft.clone())
            .ok_or("this node is not a member of the queue's group")?;
        let leader = g.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == self.me => match g.client_write(cmd.clone()).await {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            Some(l) => {
                let addr = self
                    .addr_of(l)
                    .await
                    .ok_or("the leader's address is not known")?;
                let call = QuorumCall::Propose {
                    group: id,
                    cmd: cmd.clone(),
                };
                self.link
                    .call(&addr, QUORUM, qencode(&call), PROPOSE_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            None => Err("the queue's group has no leader".into()),
        }
    }

    /// A call on the `QUORUM` service.
    pub(super) async fn serve_quorum(&self, payload: &[u8]) -> Result<Bytes, String> {
        match qdecode::<QuorumCall>(payload)? {
            QuorumCall::Raft { group, rpc } => {
                let raft = self
                    .queue_groups
                    .get(&group)
                    .map(|g| g.raft.clone())
                    .ok_or_else(|| format!("no group {group} here"))?;
                Ok(match rpc {
                    super::super::network::RaftRpc::Append(r) => {
                        let (started, entries) = (std::time::Instant::now(), r.entries.len());
                        let answer = raft.append_entries(r).await;
                        if entries > 0 {
                            crate::observe::stages::RAFT_FOLLOW.record(started, entries as u64);
                        }
                        qencode(&answer)
                    }
                    super::super::network::RaftRpc::Vote(r) => qencode(&raft.vote(r).await),
                    super::super::network::RaftRpc::Snapshot(r) => {
                        qencode(&raft.install_snapshot(r).await)
                    }
                })
            }
            QuorumCall::Propose { group, cmd } => {
                let raft = self
                    .queue_groups
                    .get(&group)
                    .map(|g| g.raft.clone())
                    .ok_or_else(|| format!("no group {group} here"))?;
                raft.client_write(cmd)
                    .await
                    .map(|_| Bytes::new())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Add a node to a quorum queue's group (it first catches up as a learner), or remove one:
    /// done by the group's leader, asked from any node. `members` are the group's members as
    /// its definition names them (who to ask when this node has no member of the group).
    pub async fn queue_members(
        &self,
        group: QueueGroupId,
        members: &[String],
        add: Option<&str>,
        remove: Option<&str>,
    ) -> Result<(), String> {
        let req = Control::QueueMembers {
            group,
            add: add.map(node_id),
            remove: remove.map(node_id),
        };
        // A member that knows the group's leader passes it on; a new, empty member (just
        // added by the definition) knows nobody yet: ask the members named.
        let led = self
            .queue_groups
            .get(&group)
            .is_some_and(|g| g.raft.metrics().borrow().current_leader.is_some());
        if led {
            let Control::QueueMembers { group, add, remove } = req else {
                unreachable!()
            };
            return self.change_queue_members(group, add, remove).await;
        }
        let mut last = String::from("no member of the queue's group answered");
        for m in members {
            let Some(addr) = self.addr_of(node_id(m)).await else {
                continue;
            };
            match self.call_within(&addr, &req, MEMBERSHIP_TIMEOUT).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// `queue_members` on a node with a member of the group: on its leader, or passed on to it.
    pub(super) async fn change_queue_members(
        &self,
        group: QueueGroupId,
        add: Option<NodeId>,
        remove: Option<NodeId>,
    ) -> Result<(), String> {
        let raft = self
            .queue_groups
            .get(&group)
            .map(|g| g.raft.clone())
            .ok_or_else(|| format!("no member of group {group} here"))?;
        let deadline = tokio::time::Instant::now() + MEMBERSHIP_TIMEOUT;
        loop {
            let leader = raft.metrics().borrow().current_leader;
            match leader {
                Some(l) if l == self.me => break,
                Some(l) => {
                    let addr = self.addr_of(l).await.ok_or("the leader is not reachable")?;
                    let req = Control::QueueMembers { group, add, remove };
                    return self
                        .call_within(&addr, &req, MEMBERSHIP_TIMEOUT)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                }
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                None => return Err("the queue's group has no leader".into()),
            }
        }
        if let Some(id) = add {
            let member = {
                let m = self.meta.metrics().borrow().membership_config.clone();
                m.membership()
                    .get_node(&id)
                    .cloned()
                    .ok_or("the node is not a member of the cluster")?
            };
            raft.add_learner(id, member, true)
                .await
                .map_err(|e| e.to_string())?;
            raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Some(id) = remove {
            let voters = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect::<BTreeSet<_>>();
            if voters.contains(&id) {
                raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // A leader that removed itself steps down: the learner it leaves is harmless (its
            // node stops its member of the group).
            if let Err(e) = raft
                .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                .await
            {
                tracing::debug!(group, "a removed member stays a learner: {e}");
            }
        }
        Ok(())
    }

    /// Stop every queue group (the node stops); their files stay.
    pub(super) async fn stop_queue_groups(&self) {
        let ids: Vec<QueueGroupId> = self.queue_groups.iter().map(|g| *g.key()).collect();
        for id in ids {
            self.stop_queue_group(id, false).await;
        }
    }
}
