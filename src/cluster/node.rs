//! This node in the cluster: its link, the metadata group, forming or joining the cluster from
//! the seeds, and the operations the broker asks of it (propose a definition change, catch up
//! with the cluster before answering "not found", membership changes, status).
//!
//! Forming: a node whose metadata log is empty asks every seed who it is. When every seed has
//! answered (or answered that it is this node), the node with the lowest id initializes the group
//! with all of them and proposes the cluster's id; the others wait to be contacted. A seed that
//! already belongs to a cluster makes the new node ask to join it instead.

use super::forward::Forwarder;
use super::link::{Handler, Link, LinkConfig, LinkError, Remote};
use super::meta::{Applied, Applier, MetaOp, MetaStateMachine, Proposal, Waiters};
use super::network::{decode, encode, AddressBook, Network};
use super::raft_log::RaftLog;
use super::types::{node_id, Member, MetaConfig, NodeId, CONSUME, CONTROL, FORWARD, META};
use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::{info, warn};

mod membership;
mod queues;
pub use queues::QueueGroup;

/// How long a definition change may wait for the cluster before the client is told it failed.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A new member first catches up with the log: joining may take a while.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);
/// In the data directory: the seeds a node that joined with `join_cluster` stopped waiting for
/// (one a line), so that it still reaches the members after a restart.
pub(super) const SEEDS_GIVEN_UP: &str = "seeds-given-up";

/// What starting a cluster node needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub listen: String,
    pub seeds: Vec<String>,
    pub secret: Vec<u8>,
    /// `data_dir/cluster`.
    pub dir: PathBuf,
    /// Warren's version as this node announces it to others.
    pub version: String,
    /// Log entries between two snapshots of a quorum queue's group.
    pub quorum_snapshot_every: u64,
    /// A quorum queue's Raft log segment size.
    pub quorum_segment_bytes: u64,
}

/// A Hello request, encoded (for the address book's lookups).
pub(super) fn hello_request() -> Bytes {
    encode(&Control::Hello)
}

/// The node id a Hello reply names.
pub(super) fn hello_reply(b: &[u8]) -> Option<NodeId> {
    match decode(b) {
        Ok(ControlReply::Hello(h)) => Some(h.id),
        _ => None,
    }
}

/// The node-level requests between nodes (group `CONTROL`).
#[derive(Debug, Serialize, Deserialize)]
enum Control {
    Hello,
    /// Propose on the leader; the reply is the entry's index.
    Forward(Proposal),
    /// The leader's commit index, once it has checked it still leads.
    ReadIndex,
    Join {
        id: NodeId,
        member: Member,
    },
    Forget {
        id: NodeId,
    },
    /// Change a quorum queue's group (on its leader): add a node, remove one.
    QueueMembers {
        group: u64,
        add: Option<NodeId>,
        remove: Option<NodeId>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum ControlReply {
    Hello(HelloInfo),
    Index(u64),
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloInfo {
    pub name: String,
    pub id: NodeId,
    pub addr: String,
    pub cluster_id: Option<String>,
    pub initialized: bool,
    pub leader: Option<NodeId>,
    pub version: String,
}

/// A member as `cluster_status` and `/api/nodes` show it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
    pub running: bool,
    pub leader: bool,
    pub me: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub node_name: String,
    pub cluster_id: Option<String>,
    pub leader: Option<String>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
}

pub struct Cluster {
    pub me: NodeId,
    pub name: String,
    pub addr: String,
    settings: Settings,
    link: Link,
    book: Arc<AddressBook>,
    meta: Raft<MetaConfig>,
    waiters: Arc<Waiters>,
    cluster_id: OnceLock<String>,
    applier: Arc<dyn Applier>,
    forwarders: dashmap::DashMap<String, Arc<Forwarder>>,
    /// Bumped whenever forwarded messages are answered (see `forward.rs`).
    progress: tokio::sync::watch::Sender<u64>,
    /// The message log's writer: every Raft log writes through it.
    log_writer: Arc<crate::store::MessageLog>,
    /// This node's members of quorum queues' groups.
    queue_groups: dashmap::DashMap<u64, Arc<QueueGroup>>,
    /// Serves consumers, gets and purges for other nodes (`subscribe.rs`), once the broker set it.
    consume: OnceLock<Arc<dyn super::subscribe::ConsumeService>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.name).finish()
    }
}

/// The link's handler: serves calls once the node is up.
struct Serve(Arc<OnceLock<Arc<Cluster>>>);

impl Handler for Serve {
    fn call(
        &self,
        from: &Remote,
        service: u32,
        payload: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>> {
        let node = self.0.get().cloned();
        let from = from.name.clone();
        Box::pin(async move {
            let Some(node) = node else {
                return Err("this node is starting".into());
            };
            match service {
                CONTROL => {
                    // In a task of its own: a membership change finishes even if the caller
                    // stops waiting.
                    let req = decode(&payload)?;
                    tokio::spawn(async move { node.control(req).await })
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|r| encode(&r))
                }
                META => super::network::serve(&node.meta, &payload).await,
                super::types::QUORUM => node.serve_quorum(&payload).await,
                FORWARD => {
                    let batch = super::forward::decode_batch(&payload)?;
                    // Taken even if the caller stops waiting: it will send them again.
                    let done = node.applier.forwarded(batch);
                    tokio::spawn(done)
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|_| Bytes::new())
                }
                CONSUME => {
                    let service = node.consume.get().cloned().ok_or("this node is starting")?;
                    let req = super::subscribe::decode(&payload)?;
                    super::subscribe::encode(&service.serve(from, req).await)
                }
                other => Err(format!("no such group {other}")),
            }
        })
    }
}

fn raft_config() -> Arc<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "warren".into(),
        heartbeat_interval: 100,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        // Definitions are few and small: the log is kept whole (see meta.rs).
        snapshot_policy: openraft::SnapshotPolicy::Never,
        ..Default::default()
    };
    Arc::new(c.validate().expect("a valid Raft configuration"))
}

/// The address this node advertises: the listen address, with an unspecified host replaced by
/// the host name.
fn advertised(listen: &str, host: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "::", port)) => format!("{host}:{port}"),
        _ => listen.to_owned(),
    }
}

/// What the data directory says about this node: its name, and its cluster once it has one.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Identity {
    node_name: String,
    cluster_id: Option<String>,
}

impl Cluster {
    /// Start the link and the metadata group; forming or joining goes on in the background.
    pub async fn start(
        settings: Settings,
        applier: Arc<dyn Applier>,
        log_writer: Arc<crate::store::MessageLog>,
    ) -> Result<Arc<Cluster>, String> {
        std::fs::create_dir_all(&settings.dir)
            .map_err(|e| format!("{}: {e}", settings.dir.display()))?;
        let id_file = settings.dir.join("node.json");
        let identity: Identity = match std::fs::read(&id_file) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{}: unreadable: {e}", id_file.display()))?,
            Err(_) => Identity::default(),
        };
        if !identity.node_name.is_empty() && identity.node_name != settings.node_name {
            return Err(format!(
                "the data directory belongs to node {}, not {}: start it with that node name, \
                 or give this node an empty data directory",
                identity.node_name, settings.node_name
            ));
        }
        if identity.node_name.is_empty() {
            let b = serde_json::to_vec(&Identity {
                node_name: settings.node_name.clone(),
                cluster_id: None,
            })
            .unwrap_or_default();
            super::meta::write_durably(&id_file, &b)
                .map_err(|e| format!("{}: {e}", id_file.display()))?;
        }
        let me = node_id(&settings.node_name);
        let slot: Arc<OnceLock<Arc<Cluster>>> = Arc::default();
        let (link, bound) = Link::start(
            LinkConfig {
                node_name: settings.node_name.clone(),
                node_id: me,
                secret: settings.secret.clone(),
                cluster_id: identity.cluster_id.clone(),
                version: settings.version.clone(),
            },
            &settings.listen,
            Arc::new(Serve(slot.clone())),
        )
        .await
        .map_err(|e| format!("cluster listener {}: {e}", settings.listen))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        let addr = advertised(&bound.to_string(), &host);
        let waiters: Arc<Waiters> = Arc::default();
        let meta_dir = settings.dir.join("meta");
        std::fs::create_dir_all(&meta_dir).map_err(|e| format!("{}: {e}", meta_dir.display()))?;
        let sm = MetaStateMachine::open(me, &meta_dir, applier.clone(), waiters.clone())?;
        let log = RaftLog::<MetaConfig>::open(
            &meta_dir.join("log"),
            log_writer.clone(),
            Default::default(),
        )
        .map_err(|e| format!("{}: {e}", meta_dir.display()))?;
        let book = Arc::new(AddressBook::new(&settings.seeds));
        if let Ok(t) = std::fs::read_to_string(settings.dir.join(SEEDS_GIVEN_UP)) {
            book.gave_up(t.lines());
        }
        let network = Network {
            link: link.clone(),
            book: book.clone(),
            group: META,
            queue: None,
        };
        let meta = Raft::new(me, raft_config(), network, log, sm)
            .await
            .map_err(|e| format!("cannot start the metadata group: {e}"))?;
        let node = Arc::new(Cluster {
            me,
            name: settings.node_name.clone(),
            addr,
            settings,
            link,
            book,
            meta,
            waiters,
            cluster_id: OnceLock::new(),
            applier,
            forwarders: Default::default(),
            progress: tokio::sync::watch::channel(0).0,
            log_writer,
            queue_groups: Default::default(),
            consume: OnceLock::new(),
        });
        if let Some(id) = identity.cluster_id {
            let _ = node.cluster_id.set(id);
        }
        let _ = slot.set(node.clone());
        info!(
            node = %node.name,
            listen = %bound,
            "cluster link listening; seeds: {}",
            node.settings.seeds.join(", ")
        );
        let n = node.clone();
        tokio::spawn(async move { n.form_or_join().await });
        Ok(node)
    }

    /// The forwarder to the node named `node`, started on first use.
    pub fn forwarder(self: &Arc<Self>, node: &str) -> Arc<Forwarder> {
        if let Some(f) = self.forwarders.get(node) {
            return f.clone();
        }
        self.forwarders
            .entry(node.to_owned())
            .or_insert_with(|| {
                let f = Forwarder::new(node.to_owned(), self.progress.clone());
                let me = Arc::downgrade(self);
                let id = node_id(node);
                tokio::spawn(f.clone().run(move |payload| {
                    let me = me.clone();
                    async move {
                        let me = me.upgrade().ok_or("this node is stopping")?;
                        let addr = me
                            .addr_of(id)
                            .await
                            .ok_or("the node is no longer a member of the cluster")?;
                        me.link
                            .call(&addr, FORWARD, payload, PROPOSE_TIMEOUT)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                }));
                f
            })
            .clone()
    }

    /// The broker's side of consumers through other nodes (set once, at start).
    pub fn set_consume_service(&self, s: Arc<dyn super::subscribe::ConsumeService>) {
        let _ = self.consume.set(s);
    }

    /// Ask the node named `node` (a member) to serve a consume request (`subscribe.rs`).
    pub async fn consume_call(
        &self,
        node: &str,
        req: &super::subscribe::Request,
        timeout: Duration,
    ) -> Result<super::subscribe::Reply, String> {
        let addr = self
            .addr_of(node_id(node))
            .await
            .ok_or_else(|| format!("{node} is not a member of the cluster"))?;
        let b = self
            .link
            .call(&addr, CONSUME, super::subscribe::encode(req)?, timeout)
            .await
            .map_err(|e| e.to_string())?;
        super::subscribe::decode(&b)
    }

    /// Wakes whenever forwarded messages are answered.
    pub fn progress(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Publishers should pause: a forwarder holds more than its budget.
    pub fn forwarding_congested(&self) -> bool {
        self.forwarders.iter().any(|f| f.congested())
    }

    /// The cluster got its id (from the metadata log): remember it in the data directory.
    pub fn formed(&self, cluster_id: &str) {
        if self.cluster_id.set(cluster_id.to_owned()).is_ok() {
            info!(
                cluster = cluster_id,
                "this node belongs to cluster {cluster_id}"
            );
        }
        self.link.set_cluster_id(cluster_id.to_owned());
        let b = serde_json::to_vec(&Identity {
            node_name: self.name.clone(),
            cluster_id: Some(cluster_id.to_owned()),
        })
        .unwrap_or_default();
        if let Err(e) = super::meta::write_durably(&self.settings.dir.join("node.json"), &b) {
            warn!("cannot record the cluster id: {e}");
        }
    }

    fn hello(&self) -> HelloInfo {
        let m = self.meta.metrics().borrow().clone();
        HelloInfo {
            name: self.name.clone(),
            id: self.me,
            addr: self.addr.clone(),
            cluster_id: self.cluster_id.get().cloned(),
            initialized: m
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some(),
            leader: m.current_leader,
            version: self.settings.version.clone(),
        }
    }

    async fn call(&self, addr: &str, req: &Control) -> Result<ControlReply, LinkError> {
        self.call_within(addr, req, CALL_TIMEOUT).await
    }

    async fn call_within(
        &self,
        addr: &str,
        req: &Control,
        timeout: Duration,
    ) -> Result<ControlReply, LinkError> {
        let b = self.link.call(addr, CONTROL, encode(req), timeout).await?;
        decode(&b).map_err(LinkError::Remote)
    }

    async fn control(&self, req: Control) -> Result<ControlReply, String> {
        match req {
            Control::Hello => Ok(ControlReply::Hello(self.hello())),
            Control::Forward(p) => match self.meta.client_write(p).await {
                Ok(r) => Ok(ControlReply::Index(r.log_id.index)),
                Err(e) => Err(e.to_string()),
            },
            Control::ReadIndex => {
                let l = self
                    .meta
                    .ensure_linearizable()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(ControlReply::Index(l.map_or(0, |l| l.index)))
            }
            // Membership changes are the leader's: another node passes them on.
            Control::Join { .. } | Control::Forget { .. } if self.leader() != Some(self.me) => {
                let addr = match self.leader() {
                    Some(l) => self.addr_of(l).await,
                    None => None,
                }
                .ok_or_else(|| self.unavailable())?;
                self.call_within(&addr, &req, MEMBERSHIP_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            }
            Control::Join { id, member } => {
                // Reached through a seed if it is one, else at the address it advertises.
                self.add_member(id, member).await?;
                Ok(ControlReply::Done)
            }
            Control::Forget { id } => {
                self.remove_member(id).await?;
                Ok(ControlReply::Done)
            }
            Control::QueueMembers { group, add, remove } => {
                self.change_queue_members(group, add, remove).await?;
                Ok(ControlReply::Done)
            }
        }
    }

    /// The address to reach the current metadata leader at, if there is one.
    fn leader(&self) -> Option<NodeId> {
        self.meta.metrics().borrow().current_leader
    }

    async fn addr_of(&self, id: NodeId) -> Option<String> {
        let member = {
            let m = self.meta.metrics().borrow().membership_config.clone();
            m.membership().get_node(&id)?.clone()
        };
        self.book.addr(&self.link, id, &member).await
    }

    /// Propose a definition change and wait for this node to apply it: its result is what the
    /// client hears. Fails when no majority can be reached in time.
    pub async fn propose(&self, op: MetaOp) -> Result<Applied, String> {
        let p = Proposal {
            id: rand::random(),
            origin: self.me,
            op,
        };
        let rx = self.waiters.register(p.id);
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        let r = tokio::time::timeout_at(deadline, async {
            loop {
                match self.leader() {
                    Some(l) if l == self.me => match self.meta.client_write(p.clone()).await {
                        Ok(_) => return Ok(()),
                        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {}
                        Err(e) => return Err(e.to_string()),
                    },
                    Some(l) => {
                        if let Some(addr) = self.addr_of(l).await {
                            // The leader answers once it applied the entry, which may take
                            // a while: a short timeout would propose it again.
                            let fwd = Control::Forward(p.clone());
                            if self.call_within(&addr, &fwd, PROPOSE_TIMEOUT).await.is_ok() {
                                return Ok(());
                            }
                        }
                    }
                    None => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.waiters.forget(p.id);
                return Err(e);
            }
            Err(_) => {
                self.waiters.forget(p.id);
                return Err(self.unavailable());
            }
        }
        // Committed: this node applies it soon (a follower learns the commit with the leader's
        // next message).
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(a)) => Ok(a),
            _ => {
                self.waiters.forget(p.id);
                Err(self.unavailable())
            }
        }
    }

    fn unavailable(&self) -> String {
        format!(
            "the cluster's metadata store did not answer within {} s: no majority of nodes is \
             reachable from {}",
            PROPOSE_TIMEOUT.as_secs(),
            self.name
        )
    }

    /// Catch up with every definition change committed before this call: asked before a
    /// "not found" is answered, so a definition another node has confirmed is seen here.
    pub async fn barrier(&self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        let index = tokio::time::timeout_at(deadline, async {
            loop {
                match self.leader() {
                    Some(l) if l == self.me => {
                        if let Ok(l) = self.meta.ensure_linearizable().await {
                            return l.map_or(0, |l| l.index);
                        }
                    }
                    Some(l) => {
                        if let Some(addr) = self.addr_of(l).await {
                            if let Ok(ControlReply::Index(i)) =
                                self.call(&addr, &Control::ReadIndex).await
                            {
                                return i;
                            }
                        }
                    }
                    None => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .map_err(|_| self.unavailable())?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.meta
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "barrier")
            .await
            .map(|_| ())
            .map_err(|_| self.unavailable())
    }

    pub async fn shutdown(&self) {
        crate::broker::quorum::stopping();
        self.stop_queue_groups().await;
        let _ = self.meta.shutdown().await;
        self.link.shutdown();
    }
}
