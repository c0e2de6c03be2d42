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
use super::types::{node_id, Member, MetaConfig, NodeId, CONTROL, FORWARD, META};
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

/// How long a definition change may wait for the cluster before the client is told it failed.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A new member first catches up with the log: joining may take a while.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);

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
        _from: &Remote,
        service: u32,
        payload: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>> {
        let node = self.0.get().cloned();
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
                FORWARD => {
                    let batch = super::forward::decode_batch(&payload)?;
                    // Taken even if the caller stops waiting: it will send them again.
                    let done = node.applier.forwarded(batch);
                    tokio::spawn(done)
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|_| Bytes::new())
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
        let log =
            RaftLog::<MetaConfig>::open(&meta_dir.join("log"), log_writer, Default::default())
                .map_err(|e| format!("{}: {e}", meta_dir.display()))?;
        let book = Arc::new(AddressBook::new(&settings.seeds));
        let network = Network {
            link: link.clone(),
            book: book.clone(),
            group: META,
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
        }
    }

    async fn add_member(&self, id: NodeId, member: Member) -> Result<(), String> {
        self.meta
            .add_learner(id, member, true)
            .await
            .map_err(|e| e.to_string())?;
        let voters: BTreeSet<NodeId> = [id].into();
        match self
            .meta
            .change_membership(ChangeMembers::AddVoterIds(voters), false)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn remove_member(&self, id: NodeId) -> Result<(), String> {
        let voters: BTreeSet<NodeId> = [id].into();
        self.meta
            .change_membership(ChangeMembers::RemoveVoters(voters), false)
            .await
            .map_err(|e| e.to_string())?;
        let nodes: BTreeSet<NodeId> = [id].into();
        self.meta
            .change_membership(ChangeMembers::RemoveNodes(nodes), false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn initialized(&self) -> bool {
        self.meta
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some()
    }

    /// Form the cluster with the seeds, or join the one they belong to.
    async fn form_or_join(self: Arc<Self>) {
        let mut logged_waiting = false;
        let mut pause = Duration::from_millis(300);
        // Seeds that turned out to be this node (asked once: the link refuses a node its own
        // name, with a warning).
        let mut ourselves: BTreeSet<String> = [self.addr.clone()].into();
        if self.initialized() {
            // Already in a cluster: say hello to the seeds once, so that a node of another
            // cluster (or one without the secret, or of another version) among them is refused
            // and logged now, on both sides, rather than never noticed.
            for seed in &self.settings.seeds {
                match self.call(seed, &Control::Hello).await {
                    Ok(ControlReply::Hello(h)) => self.book.learn(h.id, seed),
                    Err(LinkError::Refused(why)) if why.contains(&self.name) => {
                        self.book.mine(seed)
                    }
                    Err(LinkError::Refused(why)) => warn!("seed {seed} refused: {why}"),
                    _ => {}
                }
            }
            return;
        }
        loop {
            if self.initialized() {
                return;
            }
            let mut answered: BTreeMap<NodeId, Member> = BTreeMap::new();
            answered.insert(
                self.me,
                Member {
                    name: self.name.clone(),
                    addr: self.addr.clone(),
                },
            );
            let mut missing = Vec::new();
            let mut existing = None;
            for seed in &self.settings.seeds {
                if ourselves.contains(seed) {
                    continue;
                }
                match self.call(seed, &Control::Hello).await {
                    Ok(ControlReply::Hello(h)) => {
                        if h.id == self.me {
                            continue;
                        }
                        self.book.learn(h.id, seed);
                        if h.initialized {
                            existing = Some(seed.clone());
                        }
                        answered.insert(
                            h.id,
                            Member {
                                name: h.name,
                                addr: h.addr,
                            },
                        );
                    }
                    Ok(_) => missing.push(seed.clone()),
                    Err(LinkError::Refused(why)) if why.contains(&self.name) => {
                        self.book.mine(seed);
                        ourselves.insert(seed.clone());
                    }
                    Err(e) => {
                        if !logged_waiting {
                            info!("waiting for seed {seed}: {e}");
                        }
                        missing.push(seed.clone())
                    }
                }
            }
            if let Some(seed) = existing {
                let req = Control::Join {
                    id: self.me,
                    member: answered[&self.me].clone(),
                };
                match self.join_via(&seed, &req).await {
                    Ok(()) => {
                        info!("joined the cluster through {seed}");
                        return;
                    }
                    Err(e) => warn!("cannot join the cluster through {seed}: {e}"),
                }
            } else if missing.is_empty() {
                let lowest = *answered.keys().next().expect("this node is in it");
                if lowest == self.me {
                    let names: Vec<_> = answered.values().map(|m| m.name.clone()).collect();
                    match self.meta.initialize(answered).await {
                        Ok(()) => {
                            info!("formed a cluster of {}", names.join(", "));
                            let cluster_id = format!("{:032x}", rand::random::<u128>());
                            if let Err(e) = self.propose(MetaOp::Form { cluster_id }).await {
                                warn!("cannot record the new cluster's id: {e}");
                            }
                            return;
                        }
                        Err(e) => warn!("cannot form the cluster: {e}"),
                    }
                }
            }
            logged_waiting = true;
            tokio::time::sleep(pause).await;
            // Seeds that refuse (another secret, version or cluster) are asked ever less often.
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Ask the node at `seed` to add this node (it passes the request on to its leader).
    async fn join_via(&self, seed: &str, req: &Control) -> Result<(), String> {
        self.call_within(seed, req, MEMBERSHIP_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
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
                            if self.call(&addr, &Control::Forward(p.clone())).await.is_ok() {
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

    /// Join the cluster the node at `addr` belongs to (`rabbitmqctl join_cluster`): only a node
    /// that is not yet in a cluster of its own can.
    pub async fn join_cluster(&self, addr: &str) -> Result<(), String> {
        if self.initialized() {
            return Err(format!(
                "{} is already a member of a cluster: to move it to another, start it with an \
                 empty data directory and that cluster's seeds",
                self.name
            ));
        }
        let h = match self.call(addr, &Control::Hello).await {
            Ok(ControlReply::Hello(h)) => h,
            Ok(_) => return Err(format!("{addr}: unexpected answer")),
            Err(e) => return Err(format!("{addr}: {e}")),
        };
        if !h.initialized {
            return Err(format!("{} ({addr}) is not in a cluster yet", h.name));
        }
        self.book.learn(h.id, addr);
        let req = Control::Join {
            id: self.me,
            member: Member {
                name: self.name.clone(),
                addr: self.addr.clone(),
            },
        };
        self.join_via(addr, &req).await
    }

    /// Once the cluster is formed or joined, propose `ops` (this node's definitions from before
    /// it was in a cluster), once: `marker` records that it was done.
    pub async fn adopt(self: Arc<Self>, ops: Vec<MetaOp>, marker: PathBuf) {
        // Only a node new to the cluster hands over what it had: once in it, its stored
        // definitions are the cluster's own (re-proposing them could bring back what the
        // cluster deleted while this node was down).
        let fresh = self.meta.metrics().borrow().last_applied.is_none();
        if marker.exists() || !fresh || ops.is_empty() {
            if !marker.exists() {
                if let Err(e) = super::meta::write_durably(&marker, b"done\n") {
                    warn!("{}: {e}", marker.display());
                }
            }
            return;
        }
        while self.cluster_id.get().is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let n = ops.len();
        let mut refused = 0;
        for op in ops {
            match self.propose(op.clone()).await {
                Ok(a) => {
                    if let Some(r) = a.error {
                        refused += 1;
                        warn!(
                            "this node's definition was refused by the cluster: {op:?}: {}",
                            r.text
                        );
                    }
                }
                Err(e) => {
                    warn!("cannot hand this node's definitions to the cluster yet: {e}");
                    return;
                }
            }
        }
        info!("this node's {n} stored definitions are now the cluster's ({refused} refused)");
        if let Err(e) = super::meta::write_durably(&marker, b"done\n") {
            warn!("{}: {e}", marker.display());
        }
    }

    /// Remove the node named `name` from the cluster.
    pub async fn forget_node(&self, name: &str) -> Result<(), String> {
        let id = node_id(name);
        let m = self.meta.metrics().borrow().membership_config.clone();
        if m.membership().get_node(&id).is_none() {
            return Err(format!("{name} is not a member of this cluster"));
        }
        self.on_leader(Control::Forget { id }).await
    }

    async fn on_leader(&self, req: Control) -> Result<(), String> {
        match self.leader() {
            Some(l) if l == self.me => self.control(req).await.map(|_| ()),
            Some(l) => {
                let addr = self
                    .addr_of(l)
                    .await
                    .ok_or("the leader's address is unknown")?;
                self.call_within(&addr, &req, MEMBERSHIP_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            None => Err(self.unavailable()),
        }
    }

    /// Every member, with whether it answers this node now (each is asked, briefly).
    pub async fn status(&self) -> Status {
        let m = self.meta.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let leader = m.current_leader;
        let nodes: Vec<(NodeId, Member)> = membership
            .nodes()
            .map(|(id, member)| (*id, member.clone()))
            .collect();
        let pings = nodes.iter().map(|(id, member)| {
            let me = *id == self.me;
            async move {
                if me {
                    return true;
                }
                let Some(addr) = self.book.addr(&self.link, *id, member).await else {
                    return false;
                };
                matches!(
                    tokio::time::timeout(
                        Duration::from_millis(700),
                        self.call(&addr, &Control::Hello)
                    )
                    .await,
                    Ok(Ok(_))
                )
            }
        });
        let running = futures_util::future::join_all(pings).await;
        let members = nodes
            .into_iter()
            .zip(running)
            .map(|((id, member), running)| MemberStatus {
                name: member.name,
                id,
                addr: member.addr,
                voter: voters.contains(&id),
                running,
                leader: leader == Some(id),
                me: id == self.me,
            })
            .collect();
        Status {
            node_name: self.name.clone(),
            cluster_id: self.cluster_id.get().cloned(),
            leader: leader.and_then(|l| membership.get_node(&l).map(|m| m.name.clone())),
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
            members,
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.meta.shutdown().await;
        self.link.shutdown();
    }
}
