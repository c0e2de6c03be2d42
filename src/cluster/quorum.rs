//! Quorum queues' replication: one openraft group per queue, its log on `RaftLog` (the message
//! log's writer, group commit), its state machine the queue's messages.
//!
//! The state machine holds every message not yet settled, by id, in queue order: an id is the
//! message's place in the queue (a returned message gets a new, last one, as RabbitMQ's quorum
//! queues put it at the back), with its delivery count and whether it was handed to a consumer.
//! It is applied on every member; the broker's queue object on the leader is the live view that
//! consumers are served from (`QueueHost`), fed under the state's lock, so it always holds
//! exactly the messages of the state that are not out with a consumer.
//!
//! Commands: `Enqueue` (a batch of published messages, encoded as `forward.rs` encodes them),
//! `Changes` (ids delivered, settled, returned; batched), `Mark` (the leader may hand out
//! messages up to this id: every message up to it is marked delivered, so that a next leader
//! flags it redelivered). A publisher confirm is sent once its `Enqueue` is committed: a
//! majority has it fdatasync'd.
//!
//! Invariants:
//! - Applying is deterministic: ids come from `next_id` in the state.
//! - The snapshot (the state whole) is written durably before openraft purges the log it covers.
//! - `QueueHost` calls happen with the state's lock held, in apply order.

use super::types::{Member, NodeId};
use bytes::Bytes;
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

openraft::declare_raft_types!(
    /// A quorum queue's group.
    pub QueueConfig:
        D = QCmd,
        R = (),
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<QueueConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A quorum queue's group number (chosen when the queue is declared: the metadata log index of
/// its declaration, so a queue deleted and declared again gets a new group).
pub type QueueGroupId = u64;

/// What is proposed to a queue's group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QCmd {
    /// Published messages: a batch as `forward.rs` encodes it.
    Enqueue(Bytes),
    Changes(Changes),
    /// The leader hands out messages up to this id only once this is committed (new variants
    /// go last: the log's encoding numbers them).
    Mark(u64),
}

impl std::fmt::Display for QCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QCmd::Enqueue(b) => write!(f, "enqueue ({} bytes)", b.len()),
            QCmd::Changes(c) => write!(
                f,
                "changes (delivered {}, settled {}, returned {})",
                c.delivered.len(),
                c.settled.len(),
                c.returned.len()
            ),
            QCmd::Mark(id) => write!(f, "mark up to {id}"),
        }
    }
}

/// Settlements and deliveries, by message id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// Handed to a consumer that will ack: redelivered if it comes back.
    pub delivered: Vec<u64>,
    /// Gone: acked, rejected, expired, dead-lettered, purged.
    pub settled: Vec<u64>,
    /// Back to the queue (to its back), delivery count + 1.
    pub returned: Vec<u64>,
    /// From deliveries of an earlier leadership (of this node or another): the leader's live
    /// queue may hold these messages again, and must drop them.
    pub stale: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.delivered.is_empty() && self.settled.is_empty() && self.returned.is_empty()
    }
}

/// One message of the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QMsg {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
    pub delivery_count: u32,
    pub delivered: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QState {
    pub next_id: u64,
    pub msgs: BTreeMap<u64, QMsg>,
    /// Batches taken, by publishing node: one proposed again after a lost answer is skipped.
    pub seen: super::forward::Seen,
    /// Body bytes of `msgs`.
    pub bytes: u64,
    /// The highest `Mark`: every message with an id up to it is flagged delivered, also one
    /// enqueued after the mark. (Encoded after the rest, by `state_bytes`: snapshots written
    /// before marks existed still read.)
    #[serde(skip)]
    pub mark: u64,
}

/// A state's encoding: postcard, then the mark.
fn state_bytes(st: &QState) -> Vec<u8> {
    let mut b = postcard::to_stdvec(st).unwrap_or_default();
    b.extend(postcard::to_stdvec(&st.mark).unwrap_or_default());
    b
}

/// Read `state_bytes` (or a state encoded without its mark).
fn state_from(b: &[u8]) -> Result<QState, postcard::Error> {
    let (mut st, rest): (QState, &[u8]) = postcard::take_from_bytes(b)?;
    if !rest.is_empty() {
        st.mark = postcard::from_bytes(rest)?;
    }
    Ok(st)
}

impl QState {
    fn insert(&mut self, id: u64, m: QMsg) {
        self.bytes += m.body.len() as u64;
        self.msgs.insert(id, m);
    }

    fn remove(&mut self, id: &u64) -> Option<QMsg> {
        let m = self.msgs.remove(id)?;
        self.bytes -= m.body.len() as u64;
        Some(m)
    }
}

/// The broker's queue, told what its live view must hold. Called with the state's lock held.
pub trait QueueHost: Send + Sync + 'static {
    /// This node leads the group: serve these messages (in id order) from now on.
    fn lead(&self, msgs: &BTreeMap<u64, QMsg>);
    /// This node no longer leads: drop the live view without settling anything.
    fn step_down(&self);
    /// While leading: a message to serve (new, or returned with a new id).
    fn added(&self, id: u64, m: &QMsg);
    /// While leading: messages settled by deliveries of an earlier leadership.
    fn removed(&self, ids: &[u64]);
    /// On every member: messages up to `id` may be handed out (a `Mark` was applied).
    fn marked(&self, id: u64);
}

/// The state, shared by the state machine and the leadership watcher.
pub struct Shared {
    pub state: Mutex<QState>,
    pub leading: Mutex<bool>,
    pub host: Arc<dyn QueueHost>,
}

impl Shared {
    /// Leadership changed: fill or drop the live view, under the state's lock.
    pub fn set_leading(&self, on: bool) {
        let st = self.state.lock();
        let mut l = self.leading.lock();
        if *l == on {
            return;
        }
        *l = on;
        if on {
            self.host.lead(&st.msgs);
        } else {
            self.host.step_down();
        }
    }

    /// Messages held, and bytes of their bodies.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.msgs.len() as u64, st.bytes)
    }

    fn apply(&self, cmd: QCmd) {
        let mut st = self.state.lock();
        let leading = *self.leading.lock();
        match cmd {
            QCmd::Enqueue(b) => {
                let Ok(batch) = super::forward::decode_batch(&b) else {
                    tracing::warn!("a quorum queue's log holds an undecodable batch: skipped");
                    return;
                };
                if !st.seen.take(&batch) {
                    return;
                }
                for f in batch.msgs {
                    st.next_id += 1;
                    let id = st.next_id;
                    let m = QMsg {
                        exchange: f.exchange,
                        routing_key: f.routing_key,
                        properties: f.properties,
                        body: f.body,
                        delivery_count: 0,
                        // Under a mark: the leader may hand it out as soon as it is applied.
                        delivered: id <= st.mark,
                    };
                    if leading {
                        self.host.added(id, &m);
                    }
                    st.insert(id, m);
                }
            }
            QCmd::Changes(c) => {
                for id in &c.delivered {
                    if let Some(m) = st.msgs.get_mut(id) {
                        m.delivered = true;
                    }
                }
                let mut gone = Vec::new();
                for id in &c.settled {
                    if st.remove(id).is_some() && c.stale {
                        gone.push(*id);
                    }
                }
                for id in &c.returned {
                    let Some(mut m) = st.remove(id) else {
                        continue;
                    };
                    if c.stale {
                        gone.push(*id);
                    }
                    m.delivery_count = m.delivery_count.saturating_add(1);
                    m.delivered = true;
                    st.next_id += 1;
                    let new = st.next_id;
                    if leading {
                        if !gone.is_empty() {
                            self.host.removed(&gone);
                            gone.clear();
                        }
                        self.host.added(new, &m);
                    }
                    st.insert(new, m);
                }
                if leading && !gone.is_empty() {
                    self.host.removed(&gone);
                }
            }
            QCmd::Mark(upto) => {
                // Those up to the last mark are flagged already.
                if upto > st.mark {
                    let from = st.mark;
                    for (_, m) in st.msgs.range_mut(from + 1..=upto) {
                        m.delivered = true;
                    }
                    st.mark = upto;
                }
                self.host.marked(upto);
            }
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

/// The snapshot file: the state with what it covers (read; `SnapFileRef` writes it).
#[derive(Deserialize)]
struct SnapFile {
    meta: SnapshotMeta<NodeId, Member>,
    state: QState,
}

/// `SnapFile`, borrowed: how it is written.
#[derive(Serialize)]
struct SnapFileRef<'a> {
    meta: &'a SnapshotMeta<NodeId, Member>,
    state: &'a QState,
}

pub struct QueueStateMachine {
    shared: Arc<Shared>,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    snapshots: Arc<Snapshots>,
}

/// A group's snapshot file, and the snapshot it holds (what a lagging follower is sent).
struct Snapshots {
    file: PathBuf,
    /// Held while the file is written: an older snapshot never replaces a newer one.
    writing: Mutex<()>,
    current: Mutex<Option<Current>>,
}

/// A snapshot's description and its bytes (`state_bytes`).
type Current = (SnapshotMeta<NodeId, Member>, Vec<u8>);

impl Snapshots {
    /// Write `state`, as `meta` describes it, durably to the file (unless a newer snapshot is
    /// there already) and keep it as the current snapshot; its bytes. Blocking: fdatasync.
    fn save(
        &self,
        meta: &SnapshotMeta<NodeId, Member>,
        state: &QState,
    ) -> std::io::Result<Vec<u8>> {
        let _writing = self.writing.lock();
        let data = state_bytes(state);
        let newer = self
            .current
            .lock()
            .as_ref()
            .is_some_and(|(m, _)| m.last_log_id > meta.last_log_id);
        if newer {
            return Ok(data);
        }
        // The file: postcard, then the mark (as `state_bytes`).
        let mut b =
            postcard::to_stdvec(&SnapFileRef { meta, state }).map_err(std::io::Error::other)?;
        b.extend(postcard::to_stdvec(&state.mark).map_err(std::io::Error::other)?);
        super::meta::write_durably(&self.file, &b)?;
        *self.current.lock() = Some((meta.clone(), data.clone()));
        Ok(data)
    }

    /// `save`, on a blocking thread.
    async fn save_off(
        self: &Arc<Self>,
        meta: SnapshotMeta<NodeId, Member>,
        state: QState,
    ) -> Result<Vec<u8>, StorageError<NodeId>> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.save(&meta, &state))
            .await
            .map_err(io_err)?
            .map_err(|e| {
                tracing::error!("cannot write a quorum queue's snapshot: {e}");
                io_err(e)
            })
    }
}

/// A snapshot of a group's state as of `meta`: written by `build_snapshot`, which openraft runs
/// in a task of its own, so neither applying entries nor the runtime's threads wait for the
/// write and its fdatasync (tens to hundreds of milliseconds when ext4's journal is busy).
pub struct QueueSnapshotBuilder {
    meta: SnapshotMeta<NodeId, Member>,
    state: QState,
    snapshots: Arc<Snapshots>,
}

impl openraft::storage::RaftSnapshotBuilder<QueueConfig> for QueueSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<QueueConfig>, StorageError<NodeId>> {
        let state = std::mem::take(&mut self.state);
        let data = self.snapshots.save_off(self.meta.clone(), state).await?;
        Ok(super::types::Encoded::new(self.meta.clone(), data).snapshot())
    }
}

impl QueueStateMachine {
    /// Open the group's state: its snapshot, if it has one (the log after it is replayed).
    pub fn open(dir: &Path, host: Arc<dyn QueueHost>) -> Result<(Self, Arc<Shared>), String> {
        let file = dir.join("snapshot");
        let (state, applied, membership, current) = match std::fs::read(&file) {
            Ok(b) => {
                let unreadable =
                    |e: postcard::Error| format!("{}: unreadable: {e}", file.display());
                let (mut s, rest): (SnapFile, &[u8]) =
                    postcard::take_from_bytes(&b).map_err(unreadable)?;
                if !rest.is_empty() {
                    s.state.mark = postcard::from_bytes(rest).map_err(unreadable)?;
                }
                let data = state_bytes(&s.state);
                (
                    s.state,
                    s.meta.last_log_id,
                    s.meta.last_membership.clone(),
                    Some((s.meta, data)),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (QState::default(), None, StoredMembership::default(), None)
            }
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            leading: Mutex::new(false),
            host,
        });
        Ok((
            QueueStateMachine {
                shared: shared.clone(),
                applied,
                membership,
                snapshots: Arc::new(Snapshots {
                    file,
                    writing: Mutex::new(()),
                    current: Mutex::new(current),
                }),
            },
            shared,
        ))
    }
}

impl RaftStateMachine<QueueConfig> for QueueStateMachine {
    type SnapshotBuilder = QueueSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<QueueConfig>> + Send,
        I::IntoIter: Send,
    {
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        for e in entries {
            self.applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                }
                EntryPayload::Normal(cmd) => self.shared.apply(cmd),
            }
            out.push(());
        }
        crate::observe::stages::QUORUM_APPLY.record(started, out.len() as u64);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> QueueSnapshotBuilder {
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                self.applied.map_or(0, |l| l.index),
                rand::random::<u32>()
            ),
        };
        QueueSnapshotBuilder {
            meta,
            state: self.shared.state.lock().clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let state: QState = state_from(&data).map_err(io_err)?;
        self.snapshots.save_off(meta.clone(), state.clone()).await?;
        {
            let mut st = self.shared.state.lock();
            *st = state;
            if *self.shared.leading.lock() {
                self.shared.host.lead(&st.msgs);
            }
        }
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<QueueConfig>>, StorageError<NodeId>> {
        Ok(self
            .snapshots
            .current
            .lock()
            .as_ref()
            .map(|(meta, data)| super::types::Encoded::new(meta.clone(), data.clone()).snapshot()))
    }
}

/// A Raft RPC of one queue's group, or a command for its leader: what travels on the link's
/// `QUORUM` service (postcard).
pub type QuorumCall = super::network::GroupCall<QueueConfig>;

pub fn encode<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(postcard::to_stdvec(v).expect("quorum messages serialize"))
}

pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("undecodable quorum queue message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::forward::Forwarded;

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl QueueHost for Log {
        fn lead(&self, msgs: &BTreeMap<u64, QMsg>) {
            self.0
                .lock()
                .push(format!("lead {:?}", msgs.keys().collect::<Vec<_>>()));
        }
        fn step_down(&self) {
            self.0.lock().push("step down".into());
        }
        fn added(&self, id: u64, m: &QMsg) {
            self.0
                .lock()
                .push(format!("added {id} count {}", m.delivery_count));
        }
        fn removed(&self, ids: &[u64]) {
            self.0.lock().push(format!("removed {ids:?}"));
        }
        fn marked(&self, id: u64) {
            self.0.lock().push(format!("marked {id}"));
        }
    }

    /// `n` messages, the publishing forwarder's batch ending at `last`.
    fn batch(n: usize, last: u64) -> QCmd {
        let msgs: Vec<Forwarded> = (0..n)
            .map(|i| Forwarded {
                vhost: "/".into(),
                queues: vec!["q".into()],
                exchange: Bytes::new(),
                routing_key: Bytes::from_static(b"q"),
                properties: Bytes::new(),
                body: Bytes::from(format!("m{i}")),
            })
            .collect();
        let b = crate::cluster::forward::Batch {
            origin: 1,
            last,
            msgs,
        };
        QCmd::Enqueue(Bytes::from(postcard::to_stdvec(&b).unwrap()))
    }

    /// Ids follow publish order; a return takes a new last id with its count raised; the live
    /// view hears only while leading, and a stale settle removes what it holds.
    #[test]
    fn applying_keeps_order_counts_and_the_live_view() {
        let host = Arc::new(Log::default());
        let sh = Shared {
            state: Mutex::new(QState::default()),
            leading: Mutex::new(false),
            host: host.clone(),
        };
        sh.apply(batch(3, 3));
        // The same batch proposed again (its answer was lost) is not taken twice.
        sh.apply(batch(3, 3));
        assert_eq!(sh.counts().0, 3);
        sh.set_leading(true);
        sh.apply(QCmd::Changes(Changes {
            delivered: vec![1],
            returned: vec![1],
            settled: vec![2],
            stale: false,
        }));
        sh.apply(QCmd::Changes(Changes {
            settled: vec![3],
            stale: true,
            ..Default::default()
        }));
        sh.set_leading(false);
        sh.apply(batch(1, 4));
        let st = sh.state.lock();
        assert_eq!(st.msgs.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(st.msgs[&4].delivery_count, 1);
        assert!(st.msgs[&4].delivered);
        assert_eq!(
            *host.0.lock(),
            vec![
                "lead [1, 2, 3]",
                "added 4 count 1",
                "removed [3]",
                "step down"
            ]
        );
    }

    /// A mark flags every message up to it delivered (on every member: a next leader serves
    /// them redelivered), the later ones not; marks only go up.
    #[test]
    fn a_mark_flags_what_may_have_been_handed_out() {
        let host = Arc::new(Log::default());
        let sh = Shared {
            state: Mutex::new(QState::default()),
            leading: Mutex::new(false),
            host: host.clone(),
        };
        sh.apply(batch(4, 4));
        sh.apply(QCmd::Mark(2));
        sh.apply(QCmd::Mark(1));
        let flags = |sh: &Shared| -> Vec<bool> {
            sh.state.lock().msgs.values().map(|m| m.delivered).collect()
        };
        assert_eq!(flags(&sh), vec![true, true, false, false]);
        sh.apply(QCmd::Mark(3));
        assert_eq!(flags(&sh), vec![true, true, true, false]);
        // A mark ahead of the messages: those enqueued under it come flagged.
        sh.apply(QCmd::Mark(6));
        sh.apply(batch(3, 7));
        assert_eq!(flags(&sh), vec![true, true, true, true, true, true, false]);
        assert_eq!(
            *host.0.lock(),
            vec!["marked 2", "marked 1", "marked 3", "marked 6"]
        );
        let back: QCmd =
            postcard::from_bytes(&postcard::to_stdvec(&QCmd::Mark(7)).unwrap()).unwrap();
        assert_eq!(back, QCmd::Mark(7));
        // The mark travels with the state (snapshots), and a state without one still reads.
        let st = sh.state.lock().clone();
        let again = state_from(&state_bytes(&st)).unwrap();
        assert_eq!((again.mark, again.msgs.len()), (6, 7));
        let old = state_from(&postcard::to_stdvec(&st).unwrap()).unwrap();
        assert_eq!((old.mark, old.msgs.len()), (0, 7));
    }

    /// With batches in flight together, one sent again after a failure can come after a later
    /// one: it is still taken, and each only once.
    #[test]
    fn batches_are_skipped_by_their_exact_number() {
        let mut seen = crate::cluster::forward::Seen::default();
        let b = |last| crate::cluster::forward::Batch {
            origin: 9,
            last,
            msgs: Vec::new(),
        };
        assert!(seen.take(&b(2)));
        assert!(seen.take(&b(1)));
        assert!(!seen.take(&b(1)));
        assert!(!seen.take(&b(2)));
    }

    #[test]
    fn commands_round_trip_through_postcard() {
        let c = QCmd::Changes(Changes {
            delivered: vec![1, 2],
            settled: vec![3],
            returned: vec![],
            stale: true,
        });
        let back: QCmd = postcard::from_bytes(&postcard::to_stdvec(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let b = batch(2, 2);
        let back: QCmd = postcard::from_bytes(&postcard::to_stdvec(&b).unwrap()).unwrap();
        assert_eq!(back, b);
    }
}
