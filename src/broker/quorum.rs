//! The model's side of a quorum queue in a cluster: the queue object of every member node is
//! tied to the queue's Raft group (`cluster::quorum`) by a `Replica`.
//!
//! - Publishes go to the group (`Replica::appender`, a `Forwarder` whose batches are proposed to
//!   the group's leader); the publisher's confirm waits for the commit.
//! - On the leader, the queue object is the live view: the group's state machine fills it when
//!   this node takes the lead, adds each new or returned message as it is applied, and empties
//!   it (settling nothing) when this node steps down. Consumers are served from it as from any
//!   queue.
//! - What happens to a message in the live view is proposed back to the group, in batches: its
//!   first delivery to a consumer that acks (`delivered`), its end (`settled`: acked, rejected,
//!   expired, dead-lettered, purged, delivered without ack) and its return (`returned`). An
//!   entry of the live view carries `QUORUM_QID | slot` as its `qid` and the message id as its
//!   `seq`; dropping such an entry settles it (see `QEntry`'s `Drop`), unless it was disarmed
//!   (`qid = 0`) because the message stays in the group (a return, a step-down).
//! - The leader hands out a message only under a mark (`may_deliver`): a `Mark` at or above
//!   its id that this leader committed less than [`LEASE_MS`] ago. Every message up to a mark
//!   is flagged delivered in the group, so a next leader serves what this one may have handed
//!   out as redelivered, even when this one died before recording the delivery. And no other
//!   leader can exist during the lease: the members that took the mark refuse to vote for
//!   another until openraft's leader lease (the election timeout) has passed, so a leader that
//!   was paused and deposed hands out nothing once it runs again. Marks are asked
//!   [`MARK_AHEAD`] ids ahead, and renewed halfway through (ids and time), so a steady consumer
//!   does not wait for them; after a leader change, up to that many messages never handed out
//!   may come flagged redelivered.
//!
//! Memory: every member keeps the messages' bodies in memory (`Bytes`, shared with the live
//! view's entries).

use crate::broker::message::{Message, Properties};
use crate::broker::queue::{QEntry, Queue};
use crate::cluster::forward::Forwarder;
use crate::cluster::node::Cluster;
use crate::cluster::quorum::{Changes, QMsg, QueueHost, Shared};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use tokio::sync::Notify;

/// The `qid` bit that marks an entry of a quorum queue's live view (message-log ids stay below).
pub const QUORUM_QID: u32 = 1 << 31;

/// How far ahead of the message handed out a mark is asked.
pub const MARK_AHEAD: u64 = 512;
/// How long a mark lets this leader hand out messages, from the moment it proposed it: half of
/// the groups' smallest election timeout (600 ms).
pub const LEASE_MS: u64 = 300;

/// Monotonic milliseconds (a paused process's clock runs on).
fn mono_ms() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

pub use crate::store::QuorumDef;

/// Live replicas by slot, for the entries' hooks.
static SLOTS: RwLock<Vec<Weak<Replica>>> = RwLock::new(Vec::new());
/// Set when the node stops: entries dropped then settle nothing.
static STOPPING: AtomicBool = AtomicBool::new(false);

pub fn stopping() {
    STOPPING.store(true, Ordering::Release);
}

fn replica_at(qid: u32) -> Option<Arc<Replica>> {
    if STOPPING.load(Ordering::Acquire) {
        return None;
    }
    let slot = (qid & !QUORUM_QID) as usize;
    SLOTS.read().get(slot).and_then(|w| w.upgrade())
}

/// An entry of a live view was dropped: its message is settled.
pub fn released(qid: u32, id: u64) {
    if let Some(r) = replica_at(qid) {
        r.note(|c| c.settled.push(id));
    }
}

/// An entry of a live view went to a consumer that will ack it.
pub fn delivered(qid: u32, id: u64) {
    if let Some(r) = replica_at(qid) {
        r.note(|c| c.delivered.push(id));
    }
}

pub struct Replica {
    pub def: QuorumDef,
    slot: u32,
    queue: Weak<Queue>,
    /// Publishes on their way to the group.
    pub appender: Arc<Forwarder>,
    /// Changes to propose: this leadership's, and earlier ones'.
    pending: Mutex<(Changes, Changes)>,
    wake: Notify,
    /// This node leads the group and the queue object holds its messages.
    live: AtomicBool,
    /// False once the queue is deleted here: nothing more is proposed.
    active: AtomicBool,
    /// Messages up to this id may be handed out (the last mark applied here)...
    mark: AtomicU64,
    /// ... until then (`mono_ms`; 0: no lease of this leadership yet).
    lease_until: AtomicU64,
    /// The highest mark asked for.
    asked: AtomicU64,
    /// A mark (new or renewed) is asked for.
    want_mark: AtomicBool,
    /// A mark is being proposed.
    marking: AtomicBool,
    shared: OnceLock<Arc<Shared>>,
    memory: &'static crate::broker::memory::MemoryMonitor,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("def", &self.def).finish()
    }
}

impl Replica {
    /// Tie `queue` to its group at once (publishes go to the group from now on); `run` starts
    /// this node's member of the group.
    pub fn new(
        cluster: &Arc<Cluster>,
        queue: &Arc<Queue>,
        def: QuorumDef,
        memory: &'static crate::broker::memory::MemoryMonitor,
    ) -> Arc<Replica> {
        let appender = cluster.quorum_appender(def.group, &queue.name);
        let r = {
            let mut slots = SLOTS.write();
            let r = Arc::new(Replica {
                def,
                slot: slots.len() as u32,
                queue: Arc::downgrade(queue),
                appender,
                pending: Mutex::default(),
                wake: Notify::new(),
                live: AtomicBool::new(false),
                active: AtomicBool::new(true),
                mark: AtomicU64::new(0),
                lease_until: AtomicU64::new(0),
                asked: AtomicU64::new(0),
                want_mark: AtomicBool::new(false),
                marking: AtomicBool::new(false),
                shared: OnceLock::new(),
                memory,
            });
            slots.push(Arc::downgrade(&r));
            r
        };
        queue.set_replica(r.clone());
        r
    }

    /// Start this node's member of the group, and the task that proposes what happens to the
    /// live view's messages.
    pub async fn run(self: Arc<Self>, cluster: Arc<Cluster>) {
        let Some(queue) = self.queue.upgrade() else {
            return;
        };
        let vhost = queue.vhost_handle();
        let name = queue.name.clone();
        drop(queue);
        let started = cluster
            .start_queue_group(
                self.def.group,
                &self.def.members,
                self.clone(),
                Box::new(move |leader: Option<String>| {
                    if let (Some(v), Some(l)) = (vhost.upgrade(), leader) {
                        v.set_home(&name, &l);
                    }
                }),
            )
            .await;
        match started {
            Ok(shared) => {
                let _ = self.shared.set(shared);
                tokio::spawn(self.clone().flush(Arc::downgrade(&cluster)));
            }
            Err(e) => tracing::error!(
                group = self.def.group,
                "cannot start this node's member of a quorum queue's group: {e}"
            ),
        }
    }

    /// The members of a new quorum queue's group: `size` nodes of `nodes` (sorted), the declaring
    /// node first, then the ones after it in order (so leaders spread with the declarations).
    pub fn choose_members(nodes: &[String], declaring: &str, size: usize) -> Vec<String> {
        let mut sorted: Vec<&String> = nodes.iter().collect();
        sorted.sort();
        let start = sorted.iter().position(|n| *n == declaring).unwrap_or(0);
        let n = sorted.len();
        (0..size.clamp(1, n.max(1)))
            .filter_map(|k| sorted.get((start + k) % n.max(1)).map(|s| (*s).clone()))
            .collect()
    }

    /// Whether this node serves the queue's consumers now.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The group's messages and their bytes, as every member knows them.
    pub fn counts(&self) -> (u64, u64) {
        self.shared.get().map_or((0, 0), |s| s.counts())
    }

    /// Whether the live view may hand out message `id` now: a mark at or above it, this
    /// leader's, within its lease. Asks for the next mark when `id` comes within half of
    /// [`MARK_AHEAD`] of it or half the lease is gone (the queue's dispatch, which stops here,
    /// runs again once that mark is committed).
    pub fn may_deliver(&self, id: u64) -> bool {
        let mark = self.mark.load(Ordering::Acquire);
        let until = self.lease_until.load(Ordering::Acquire);
        let now = mono_ms();
        if (id + MARK_AHEAD / 2 > mark || now + LEASE_MS / 2 >= until)
            && !self.marking.load(Ordering::Acquire)
        {
            self.asked
                .fetch_max((id + MARK_AHEAD).max(mark), Ordering::AcqRel);
            if !self.want_mark.swap(true, Ordering::AcqRel) {
                self.wake.notify_one();
            }
        }
        id <= mark && now < until
    }

    /// Propose the mark asked for, as this group's leader; on success this leadership may
    /// hand out messages up to it for [`LEASE_MS`] from now.
    async fn propose_mark(&self, c: &Cluster) {
        self.marking.store(true, Ordering::Release);
        let w = self
            .asked
            .load(Ordering::Acquire)
            .max(self.mark.load(Ordering::Acquire));
        let at = mono_ms();
        let r = c
            .propose_as_leader(self.def.group, crate::cluster::quorum::QCmd::Mark(w))
            .await;
        match r {
            Ok(()) => {
                self.lease_until.fetch_max(at + LEASE_MS, Ordering::AcqRel);
            }
            Err(e) => {
                tracing::debug!(group = self.def.group, "a delivery mark not taken: {e}");
                if self.is_live() {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    self.want_mark.store(true, Ordering::Release);
                }
            }
        }
        self.marking.store(false, Ordering::Release);
        if self.is_live() {
            if let Some(q) = self.queue.upgrade() {
                q.dispatch();
            }
        }
    }

    /// The queue is deleted: propose nothing more.
    pub fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
    }

    fn note(&self, f: impl FnOnce(&mut Changes)) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        {
            let mut p = self.pending.lock();
            if self.is_live() {
                f(&mut p.0)
            } else {
                p.1.stale = true;
                f(&mut p.1)
            }
        }
        self.wake.notify_one();
    }

    /// Entries returned to the queue: the group gives them a new place and counts the delivery.
    /// They are disarmed: the group keeps their messages.
    pub fn returned(&self, entries: Vec<QEntry>) {
        let ids: Vec<u64> = entries
            .into_iter()
            .map(|mut e| {
                e.qid = 0;
                e.seq
            })
            .collect();
        self.note(|c| c.returned.extend(ids));
    }

    /// Propose what was noted, batch after batch, and the marks asked for.
    async fn flush(self: Arc<Self>, cluster: Weak<Cluster>) {
        loop {
            self.wake.notified().await;
            loop {
                let mark = self.is_live() && self.want_mark.swap(false, Ordering::AcqRel);
                let (fresh, stale) = std::mem::take(&mut *self.pending.lock());
                if !mark && fresh.is_empty() && stale.is_empty() {
                    break;
                }
                let Some(c) = cluster.upgrade() else {
                    return;
                };
                if mark {
                    self.propose_mark(&c).await;
                }
                for ch in [stale, fresh] {
                    if ch.is_empty() {
                        continue;
                    }
                    if let Err(e) = c
                        .propose_queue(self.def.group, crate::cluster::quorum::QCmd::Changes(ch))
                        .await
                    {
                        // Messages not settled in the group are delivered again: at least
                        // once, never lost.
                        tracing::warn!(
                            group = self.def.group,
                            "cannot record settlements of a quorum queue: {e}"
                        );
                    }
                }
            }
            if !self.active.load(Ordering::Acquire) {
                return;
            }
        }
    }

    fn entry(&self, id: u64, m: &QMsg) -> Option<QEntry> {
        let q = self.queue.upgrade()?;
        let props = Properties::parse(m.properties.clone()).ok()?;
        let mut msg = Message::new(
            m.exchange.clone(),
            m.routing_key.clone(),
            props,
            m.body.clone(),
            self.memory,
        );
        if m.delivery_count > 0 {
            if let Some(c) =
                crate::broker::queue::lifecycle::with_delivery_count(&msg, m.delivery_count)
            {
                msg = c;
            }
        }
        Some(QEntry {
            seq: id,
            msg: Arc::new(msg),
            redelivered: m.delivered || m.delivery_count > 0,
            qid: QUORUM_QID | self.slot,
            expires: None,
            delivery_count: m.delivery_count,
            enqueued: q.clock.coarse_cs(),
        })
    }
}

impl QueueHost for Replica {
    fn lead(&self, msgs: &BTreeMap<u64, QMsg>) {
        // This leadership hands out nothing before a mark of its own.
        self.lease_until.store(0, Ordering::Release);
        self.want_mark.store(false, Ordering::Release);
        self.live.store(true, Ordering::Release);
        let Some(q) = self.queue.upgrade() else {
            return;
        };
        let entries: Vec<QEntry> = msgs
            .iter()
            .filter_map(|(id, m)| self.entry(*id, m))
            .collect();
        q.replica_fill(entries);
    }

    fn step_down(&self) {
        self.live.store(false, Ordering::Release);
        self.lease_until.store(0, Ordering::Release);
        if let Some(q) = self.queue.upgrade() {
            q.replica_clear();
        }
    }

    fn added(&self, id: u64, m: &QMsg) {
        let Some(q) = self.queue.upgrade() else {
            return;
        };
        if let Some(mut e) = self.entry(id, m) {
            // New to this leadership: flagged by a mark ahead of it, never handed out yet
            // (a returned one has its delivery counted).
            e.redelivered = m.delivery_count > 0;
            q.replica_push(e);
        }
    }

    fn removed(&self, ids: &[u64]) {
        if let Some(q) = self.queue.upgrade() {
            q.replica_remove(ids);
        }
    }

    fn marked(&self, id: u64) {
        // (This leader's own marks dispatch once their lease starts: `propose_mark`.)
        self.mark.fetch_max(id, Ordering::AcqRel);
    }
}

/// Why a change of a quorum queue's members was refused (RabbitMQ's `rabbitmq-queues` errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberError {
    /// No such vhost or queue.
    NotFound,
    /// The queue is not a quorum queue of the cluster.
    Classic(&'static str),
    /// The node is not a running member of the cluster.
    NodeNotRunning,
    /// The node is the queue's last member.
    LastNode,
    /// The cluster could not do it.
    Failed(String),
}

impl std::fmt::Display for MemberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberError::NotFound => write!(f, "not_found"),
            MemberError::Classic(what) => write!(f, "Cannot {what} a classic queue"),
            MemberError::NodeNotRunning => write!(f, "node_not_running"),
            MemberError::LastNode => write!(f, "last_node"),
            MemberError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// One queue a `grow` or `shrink` changed: its new size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Changed {
    pub vhost: String,
    pub name: String,
    pub size: usize,
    pub result: String,
}

fn group_of(
    broker: &crate::broker::Broker,
    vhost: &str,
    queue: &str,
    what: &'static str,
) -> Result<(Arc<Cluster>, Arc<crate::broker::vhost::VHost>, QuorumDef), MemberError> {
    let v = broker.vhost(vhost).ok_or(MemberError::NotFound)?;
    let q = v.find_queue(queue).ok_or(MemberError::NotFound)?;
    let c = broker
        .cluster()
        .cloned()
        .ok_or(MemberError::Classic(what))?;
    let def = v.quorum_of(&q.name).ok_or(MemberError::Classic(what))?;
    Ok((c, v, def))
}

/// `rabbitmq-queues add_member`: a replica of the queue on `node`, which catches up from the
/// others before it votes. Already a member: nothing to do.
pub async fn add_member(
    broker: &crate::broker::Broker,
    vhost: &str,
    queue: &str,
    node: &str,
) -> Result<(), MemberError> {
    let (c, _, def) = group_of(broker, vhost, queue, "add members to")?;
    let running = c
        .status()
        .await
        .members
        .iter()
        .any(|m| m.name == node && m.running);
    if !running {
        return Err(MemberError::NodeNotRunning);
    }
    if def.members.iter().any(|m| m == node) {
        return Ok(());
    }
    let mut members = def.members.clone();
    members.push(node.to_owned());
    // The node starts its (empty) member of the group first, then the leader adds it.
    propose_members(&c, vhost, queue, def.group, members).await?;
    c.queue_members(def.group, &def.members, Some(node), None)
        .await
        .map_err(MemberError::Failed)
}

/// `rabbitmq-queues delete_member`: the queue's replica on `node` goes (also when the node is
/// down). Not a member: nothing to do.
pub async fn delete_member(
    broker: &crate::broker::Broker,
    vhost: &str,
    queue: &str,
    node: &str,
) -> Result<(), MemberError> {
    let (c, _, def) = group_of(broker, vhost, queue, "delete members from")?;
    if !def.members.iter().any(|m| m == node) {
        return Ok(());
    }
    if def.members.len() == 1 {
        return Err(MemberError::LastNode);
    }
    let members: Vec<String> = def.members.iter().filter(|m| *m != node).cloned().collect();
    // The group lets it go first (a majority of the rest decides from then on), then its node
    // drops its replica.
    c.queue_members(def.group, &members, None, Some(node))
        .await
        .map_err(MemberError::Failed)?;
    propose_members(&c, vhost, queue, def.group, members).await
}

async fn propose_members(
    c: &Arc<Cluster>,
    vhost: &str,
    queue: &str,
    group: u64,
    members: Vec<String>,
) -> Result<(), MemberError> {
    let op = crate::cluster::meta::MetaOp::SetQuorumMembers {
        vhost: vhost.to_owned(),
        name: queue.to_owned(),
        group,
        members,
    };
    match c.propose(op).await {
        Ok(a) => match a.error {
            None => Ok(()),
            Some(r) => Err(MemberError::Failed(r.text)),
        },
        Err(e) => Err(MemberError::Failed(e)),
    }
}

/// `rabbitmq-queues grow NODE all|even`: a replica on `node` for every quorum queue that has
/// none (`even`: only those with an even number of members).
pub async fn grow(broker: &crate::broker::Broker, node: &str, even_only: bool) -> Vec<Changed> {
    let mut out = Vec::new();
    for v in broker.vhost_list() {
        for (name, def) in v.quorum_queues() {
            if def.members.iter().any(|m| m == node) || (even_only && def.members.len() % 2 != 0) {
                continue;
            }
            let r = add_member(broker, &v.name, &name, node).await;
            if r == Err(MemberError::NodeNotRunning) {
                return out;
            }
            out.push(Changed {
                vhost: v.name.clone(),
                name,
                size: def.members.len() + r.is_ok() as usize,
                result: r.map_or_else(|e| e.to_string(), |_| "ok".into()),
            });
        }
    }
    out
}

/// `rabbitmq-queues shrink NODE`: every quorum queue's replica on `node` goes, but a queue's
/// last one.
pub async fn shrink(broker: &crate::broker::Broker, node: &str) -> Vec<Changed> {
    let mut out = Vec::new();
    for v in broker.vhost_list() {
        for (name, def) in v.quorum_queues() {
            if !def.members.iter().any(|m| m == node) {
                continue;
            }
            let r = delete_member(broker, &v.name, &name, node).await;
            out.push(Changed {
                vhost: v.name.clone(),
                name,
                size: def.members.len() - r.is_ok() as usize,
                result: r.map_or_else(|e| e.to_string(), |_| "ok".into()),
            });
        }
    }
    out
}
