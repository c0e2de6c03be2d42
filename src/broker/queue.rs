//! A queue: ready messages in order, the consumers it pushes to, and counts of what is out.
//!
//! A queue's state sits behind one `parking_lot::Mutex`, never held across an `.await`: publish,
//! dispatch, ack and requeue are short synchronous sections run by whichever connection task
//! causes them. Dispatch hands a message to a consumer's `ConsumerSink` (the channel that owns the
//! consumer), which records the delivery tag and encodes the frames into its connection's outbox.
//!
//! Lock order: queue, then the sink's channel state, then the connection outbox. Code that holds a
//! channel's state never takes a queue lock.
//!
//! Invariants: `ready` is sorted by `seq` (requeued messages go back to their original place);
//! `unacked` counts deliveries to consumers or basic.get without no-ack that are not yet settled.

use crate::broker::dead_letter::{dead_lettered, would_cycle, DeadLetter, Reason};
use crate::broker::exchange::Exchange;
use crate::broker::memory::MemoryMonitor;
use crate::broker::message::Message;
use crate::broker::paging::{DiskEntry, Slot, PAGE_IN_BATCH};
use crate::broker::ready::Ready;
use crate::broker::vhost::VHost;
use crate::error::{AmqpError, AmqpResult};
use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// Flow control: a publisher whose messages land in a queue with more than `FLOW_HIGH` ready
/// messages, while that queue's consumers are taking messages, pauses reading until the queue is
/// back under `FLOW_LOW` (or its consumers stop making progress). The publisher gets TCP
/// back-pressure and the consumers get the CPU, as RabbitMQ's credit flow does.
/// Returns of one stored message recorded in the log (8 bytes each); past this, a restart
/// resumes its `x-delivery-count` here.
const RETURNS_KEPT: u32 = 1000;

pub const FLOW_HIGH: u32 = 4096;
pub const FLOW_LOW: u32 = 1024;

/// What happens when a queue with `x-max-length` / `x-max-length-bytes` is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (later: dead-letter) the oldest ready messages.
    DropHead,
    /// Refuse the new message: confirming publishers get a nack.
    RejectPublish,
    /// Refuse it as `RejectPublish` does, and dead-letter it (reason `maxlen`).
    RejectPublishDlx,
}

/// The length limits of a queue, read from its arguments once at declare.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
}

impl Limits {
    fn from_args(args: &FieldTable) -> Self {
        let int = |k: &str| {
            args.inner()
                .get(k)
                .and_then(crate::broker::args::as_int)
                .map(|n| n.max(0) as u64)
        };
        let overflow = match args.inner().get("x-overflow") {
            Some(amq_protocol::types::AMQPValue::LongString(s))
                if s.as_bytes() == b"reject-publish-dlx" =>
            {
                Overflow::RejectPublishDlx
            }
            Some(amq_protocol::types::AMQPValue::LongString(s))
                if s.as_bytes().starts_with(b"reject-publish") =>
            {
                Overflow::RejectPublish
            }
            _ => Overflow::DropHead,
        };
        Limits {
            max_length: int("x-max-length"),
            max_length_bytes: int("x-max-length-bytes"),
            overflow,
        }
    }

    fn over(&self, len: usize, bytes: u64) -> bool {
        self.max_length.is_some_and(|m| len as u64 > m)
            || self.max_length_bytes.is_some_and(|m| bytes > m)
    }
}

/// What became of a message offered to one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Accepted,
    /// Full, with `x-overflow: reject-publish`.
    Rejected,
    /// The queue was deleted meanwhile.
    Gone,
}

/// A message in a queue, with its position.
///
/// When the message is stored in the log for this queue (`qid` is the queue's store id), the
/// entry is the queue's claim on the record: dropping the entry (ack, drop, expiry, purge,
/// deletion) releases it, so no path can forget to.
#[derive(Debug)]
pub struct QEntry {
    pub seq: u64,
    pub msg: Arc<Message>,
    pub redelivered: bool,
    /// The queue's id in the message log when the message is stored for it; 0 otherwise.
    pub qid: u32,
    /// When it expires (`now_ms()` clock), if it has a TTL. Requeueing keeps it, as in RabbitMQ.
    pub expires: Option<u64>,
    /// How many times it was delivered and returned (`x-delivery-count`, see `delivery_limit`).
    pub delivery_count: u32,
    /// When it entered the queue (`stats::coarse_now()`), for the head message age. Fits in
    /// what was padding, so entries stay the same size.
    pub enqueued: u32,
}

impl Drop for QEntry {
    fn drop(&mut self) {
        if self.qid != 0 {
            if let Some(s) = self.msg.stored.get() {
                s.log.release(self.qid, s.segment, s.offset);
            }
        }
    }
}

impl QEntry {
    /// The entry as a paged one (its body only in the log), if it is stored for its queue. The
    /// claim on the record moves to the `DiskEntry`.
    fn page_out(mut self) -> Result<DiskEntry, QEntry> {
        let Some(s) = self.msg.stored.get().filter(|_| self.qid != 0) else {
            return Err(self);
        };
        let d = DiskEntry {
            seq: self.seq,
            expires: self.expires,
            segment: s.segment,
            offset: s.offset,
            size: self.msg.body_size() as u32,
            redelivered: self.redelivered,
            priority: self.msg.properties.priority.unwrap_or(0),
            delivery_count: self.delivery_count,
            enqueued: self.enqueued,
        };
        self.qid = 0;
        Ok(d)
    }

    /// Record a first delivery to a consumer that will ack (redelivered=true after a crash).
    fn mark_delivered(&self) {
        if self.qid != 0 && !self.redelivered {
            if let Some(s) = self.msg.stored.get() {
                s.log.delivered(self.qid, s.segment, s.offset);
            }
        }
    }
}

/// Store a persistent message once for the durable queues among `queues` (before it is
/// enqueued in any of them). Returns the log position a confirm must wait for (0: none) and
/// whether it was stored, in which case enqueue it with `stored = true`.
pub fn store_message(msg: &Arc<Message>, queues: &[Arc<Queue>]) -> (u64, bool) {
    if !msg.persistent() {
        return (0, false);
    }
    let mut log = None;
    let mut ids = Vec::new();
    for q in queues {
        if let Some(l) = &q.log {
            log = Some(l);
            ids.push(q.store_id);
        }
    }
    let Some(log) = log else {
        return (0, false);
    };
    if msg.stored.get().is_some() {
        return (0, false);
    }
    let (stored, ticket) = append_message(log, &ids, msg);
    let _ = msg.stored.set(stored);
    (ticket, true)
}

/// Write `msg` to the log as one record for the log ids `ids`.
pub fn append_message(
    log: &Arc<crate::store::MessageLog>,
    ids: &[u32],
    msg: &Message,
) -> (crate::store::Stored, u64) {
    log.append(
        ids,
        msg.properties.ttl_ms().ok().flatten(),
        msg.properties.priority.unwrap_or(0),
        &msg.exchange,
        &msg.routing_key,
        &msg.properties.raw,
        &msg.body,
    )
}

/// Milliseconds on a monotonic clock private to this process (for TTLs).
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// The channel side of a consumer, implemented by the wire layer.
pub trait ConsumerSink: Send + Sync + std::fmt::Debug {
    /// Whether the consumer's channel and connection can take one more delivery now (channel
    /// open, channel-wide prefetch, socket not backed up). If the socket is backed up, the sink
    /// remembers `queue` and calls `dispatch` on it once the socket drains.
    fn ready(&self, consumer: &Consumer, queue: &Arc<Queue>) -> bool;
    /// Hand over one message; the sink assigns the delivery tag and writes the frames.
    fn deliver(&self, consumer: &Arc<Consumer>, queue: &Arc<Queue>, entry: QEntry);
    /// The queue went away under the consumer: tell the client (basic.cancel).
    fn cancelled(&self, consumer: &Arc<Consumer>);
}

/// Tell consumers whose queue went away (basic.cancel to their clients).
pub fn cancel_consumers(consumers: Vec<Arc<Consumer>>) {
    for c in consumers {
        c.sink.cancelled(&c);
    }
}

#[derive(Debug)]
pub struct Consumer {
    pub tag: String,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false); 0 = unlimited.
    pub prefetch: u32,
    /// `x-priority` of basic.consume: higher-priority consumers get messages first while they
    /// have credit; equal ones share round-robin.
    pub priority: i64,
    pub unacked: AtomicU32,
    pub cancelled: AtomicBool,
    pub sink: Arc<dyn ConsumerSink>,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.no_ack || self.prefetch == 0 || self.unacked.load(Ordering::Relaxed) < self.prefetch
    }
}

#[derive(Debug, Default)]
struct Inner {
    ready: Ready<Slot>,
    /// What the ready messages in memory count against the RAM budget (see `paging`).
    ram: u64,
    /// Ready messages paged out (0: the plain in-memory case, nothing to page in).
    paged: u32,
    next_seq: u64,
    consumers: Vec<Arc<Consumer>>,
    rr: usize,
    unacked: u64,
    deleted: bool,
    /// All consumers have the same priority (the usual case: no grouping work per message).
    uniform_priority: bool,
    /// Expired messages taken out of `ready`, waiting for the sweeper to dead-letter them.
    expired: Vec<QEntry>,
    /// `x-message-deduplication`: keys of the messages held.
    dedup: crate::broker::lifecycle::DedupSet,
    /// When the expiry sweeper last scanned `ready` (`now_ms`).
    swept_at: u64,
    /// Management counters and rates, bumped under this lock; allocated with the first
    /// message, so a queue that never had one costs a pointer.
    stats: Option<Box<crate::broker::stats::QueueStats>>,
}

/// The queue's counters, allocated on first use.
fn counters(i: &mut Inner) -> &mut crate::broker::stats::QueueCounters {
    &mut i.stats.get_or_insert_with(Default::default).counters
}

#[derive(Debug)]
pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub arguments: FieldTable,
    /// The queue's id in the message log (durable, non-exclusive queues of a broker with a store).
    pub store_id: u32,
    log: Option<Arc<crate::store::MessageLog>>,
    /// Bytes of ready messages kept in memory before persistent ones are paged out.
    ram_budget: u64,
    /// The memory account of messages paged back in.
    memory: Option<Arc<MemoryMonitor>>,
    /// The head waits for its record to be written (see `page_in`).
    page_stalled: AtomicBool,
    /// `x-single-active-consumer`: only the longest-standing consumer receives; the next one
    /// takes over when it goes.
    pub single_active: bool,
    pub limits: Limits,
    pub dead_letter: Option<DeadLetter>,
    /// `x-message-ttl` in milliseconds.
    pub message_ttl: Option<u64>,
    /// Priorities, delivery limit, consumer timeout, deduplication.
    pub life: crate::broker::lifecycle::QueueLife,
    /// Earliest expiry among ready messages (u64::MAX: none), or 0 when expired messages wait
    /// to be swept: lets the sweeper skip queues without taking their locks.
    next_expiry: AtomicU64,
    /// Registered with the vhost's expiry sweeper (on its first message with a TTL).
    swept: AtomicBool,
    /// `x-expires`: delete the queue once unused (no consumers, no declare, no get) this long.
    pub expires_after: Option<u64>,
    last_used: AtomicU64,
    vhost_ref: Weak<VHost>,
    inner: Mutex<Inner>,
    /// Lock-free copies for flow control (updated under the lock).
    ready_hint: AtomicU32,
    consumers_hint: AtomicU32,
    /// Set once deleted (as `deleted` under the lock), for holders that must not take the lock
    /// to find out (a channel's cached route).
    gone: AtomicBool,
    delivered: AtomicU64,
    drained: Notify,
    /// Bindings that point at this queue, so deleting it removes exactly those.
    pub(crate) bound_from: Mutex<Vec<(Arc<Exchange>, String, FieldTable)>>,
}

/// What the queue holds, for declare-ok and management.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    pub ready: u32,
    pub unacked: u64,
    pub consumers: u32,
    pub ready_bytes: u64,
}

impl Queue {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        vhost_ref: Weak<VHost>,
        vhost: String,
        durable: bool,
        auto_delete: bool,
        exclusive_owner: Option<u64>,
        arguments: FieldTable,
    ) -> Self {
        let life = crate::broker::lifecycle::QueueLife::from_args(&arguments);
        Queue {
            name,
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            single_active: matches!(
                arguments.inner().get("x-single-active-consumer"),
                Some(amq_protocol::types::AMQPValue::Boolean(true))
            ),
            limits: Limits::from_args(&arguments),
            dead_letter: DeadLetter::from_args(&arguments),
            message_ttl: arguments
                .inner()
                .get("x-message-ttl")
                .and_then(crate::broker::args::as_int)
                .map(|n| n.max(0) as u64),
            next_expiry: AtomicU64::new(u64::MAX),
            swept: AtomicBool::new(false),
            expires_after: arguments
                .inner()
                .get("x-expires")
                .and_then(crate::broker::args::as_int)
                .map(|n| n.max(1) as u64),
            last_used: AtomicU64::new(now_ms()),
            vhost_ref,
            arguments,
            store_id: 0,
            log: None,
            ram_budget: u64::MAX,
            memory: None,
            page_stalled: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                ready: Ready::with_max_priority(life.max_priority),
                ..Inner::default()
            }),
            life,
            ready_hint: AtomicU32::new(0),
            consumers_hint: AtomicU32::new(0),
            gone: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            drained: Notify::new(),
            bound_from: Mutex::new(Vec::new()),
        }
    }

    /// Keep this queue's persistent messages in `log` under `id`, with no more than
    /// `ram_budget` bytes of ready messages in memory (messages read back count in `memory`).
    pub fn stored_in(
        mut self,
        id: u32,
        log: Arc<crate::store::MessageLog>,
        ram_budget: u64,
        memory: Arc<MemoryMonitor>,
    ) -> Self {
        self.store_id = id;
        self.log = Some(log);
        self.ram_budget = ram_budget;
        self.memory = Some(memory);
        self
    }

    /// Put a ready message at the back: in memory, or paged out when the queue is over its RAM
    /// budget and the message is stored.
    fn push_ready(&self, i: &mut Inner, e: QEntry) {
        let slot = if i.ram > self.ram_budget {
            match e.page_out() {
                Ok(d) => Slot::Disk(d),
                Err(e) => Slot::Mem(e),
            }
        } else {
            Slot::Mem(e)
        };
        if matches!(slot, Slot::Disk(_)) {
            i.paged += 1;
        }
        i.ram += slot.ram();
        i.ready.push_back(slot);
    }

    /// Take the ready message at the head, reading it (and the paged ones after it) back from
    /// the log first if it is paged out.
    fn pop_ready(&self, i: &mut Inner) -> Option<QEntry> {
        loop {
            match i.ready.front()? {
                Slot::Mem(_) => break,
                Slot::Disk(_) => {
                    if !self.page_in(i) {
                        return None;
                    }
                }
            }
        }
        let Some(Slot::Mem(e)) = i.ready.pop_front() else {
            unreachable!("checked above")
        };
        i.ram -= e.msg.body_size() as u64 + crate::broker::paging::ENTRY_OVERHEAD;
        Some(e)
    }

    /// Read the paged entries at the head back into memory (a batch, within the budget).
    /// Entries that cannot be read are dropped (and reported). Returns false when the head's
    /// record is not written yet (the disk is full or slow): the queue waits, and the sweeper
    /// retries (`retry_stalled`).
    fn page_in(&self, i: &mut Inner) -> bool {
        let (Some(log), Some(memory)) = (&self.log, &self.memory) else {
            // Cannot happen (only queues with a log page out), but the head must always move.
            if let Some(Slot::Disk(_)) = i.ready.pop_front() {
                i.paged -= 1;
            }
            return true;
        };
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while let Some(Slot::Disk(d)) = i.ready.front() {
            if batch.len() >= PAGE_IN_BATCH || (!batch.is_empty() && bytes > self.ram_budget / 2) {
                break;
            }
            if !log.is_written(d.segment, d.offset) {
                break;
            }
            bytes += d.size as u64;
            let Some(Slot::Disk(d)) = i.ready.pop_front() else {
                unreachable!("checked above")
            };
            batch.push(d);
        }
        let n = batch.len();
        if n == 0 {
            self.page_stalled.store(true, Ordering::Relaxed);
            return false;
        }
        let loaded = crate::broker::paging::load(log, self.store_id, batch, memory);
        i.paged -= n as u32;
        for e in loaded.into_iter().rev() {
            let slot = Slot::Mem(e);
            i.ram += slot.ram();
            i.ready.push_front(slot);
        }
        true
    }

    /// Dispatch again a queue whose head waited for the message log to write it (called by the
    /// sweeper).
    pub fn retry_stalled(self: &Arc<Self>) {
        if self.page_stalled.swap(false, Ordering::Relaxed) {
            self.dispatch();
        }
    }

    /// Release paged entries removed without being read back.
    fn release_paged(&self, gone: &[DiskEntry]) {
        if let Some(log) = &self.log {
            for d in gone {
                log.release(self.store_id, d.segment, d.offset);
            }
        }
    }

    /// Paged entries that must die (expiry, overflow): read back to be dead-lettered when there
    /// is a dead-letter exchange, otherwise just released.
    fn revive_dead(&self, gone: Vec<DiskEntry>) -> Vec<QEntry> {
        if gone.is_empty() {
            return Vec::new();
        }
        match (&self.dead_letter, &self.log, &self.memory) {
            (Some(_), Some(log), Some(memory)) => {
                crate::broker::paging::load(log, self.store_id, gone, memory)
            }
            _ => {
                self.release_paged(&gone);
                Vec::new()
            }
        }
    }

    /// The message log this queue keeps its persistent messages in, if any.
    pub fn log(&self) -> Option<&Arc<crate::store::MessageLog>> {
        self.log.as_ref()
    }

    /// The TTL that applies to `msg` in this queue (the smaller of queue and message TTLs).
    fn ttl_of(&self, msg: &Message) -> Option<u64> {
        match (self.message_ttl, msg.properties.ttl_ms().ok().flatten()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Note that a message expiring at `e` is in the queue (so the sweeper looks at it).
    fn expires_at(self: &Arc<Self>, e: u64) {
        self.next_expiry.fetch_min(e, Ordering::Relaxed);
        self.join_sweeps();
    }

    /// Put this queue on its vhost's sweeper round (once).
    fn join_sweeps(self: &Arc<Self>) {
        if !self.swept.swap(true, Ordering::Relaxed) {
            if let Some(v) = self.vhost_ref.upgrade() {
                v.sweep_me(self);
            }
        }
    }

    /// Put back the messages found in the log at start, in log order, paged out: bodies are
    /// read back as consumers reach them. `published_at` (wall clock) lets TTLs count the time
    /// the broker was down.
    pub fn restore(self: &Arc<Self>, msgs: Vec<crate::store::RecoveredMessage>) {
        let now_wall = crate::store::log::wall_ms();
        // Ages count from publication, across the restart (the head's age stays truthful).
        crate::broker::stats::tick_coarse_clock();
        let mut i = self.inner.lock();
        for m in msgs {
            let seq = i.next_seq;
            i.next_seq += 1;
            let ttl = match (self.message_ttl, m.ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let expires = ttl.map(|t| {
                now_ms().saturating_add(t.saturating_sub(now_wall.saturating_sub(m.published_at)))
            });
            if let Some(e) = expires {
                self.expires_at(e);
            }
            i.paged += 1;
            i.ready.push_back(Slot::Disk(DiskEntry {
                seq,
                expires,
                segment: m.segment,
                offset: m.offset,
                size: m.size,
                redelivered: m.delivered,
                priority: m.priority,
                delivery_count: m.returned,
                enqueued: crate::broker::stats::coarse_stamp_ago(
                    now_wall.saturating_sub(m.published_at),
                ),
            }));
        }
        self.ready_hint
            .store(i.ready.len() as u32, Ordering::Relaxed);
    }

    pub fn counts(&self) -> QueueCounts {
        let i = self.inner.lock();
        QueueCounts {
            ready: i.ready.len() as u32,
            unacked: i.unacked,
            consumers: i.consumers.len() as u32,
            ready_bytes: i.ready.bytes(),
        }
    }

    /// The queue was used (declared again, read with basic.get, lost a consumer): restart its
    /// `x-expires` countdown.
    pub fn touch(&self) {
        self.last_used.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether `x-expires` says this queue should go now.
    pub fn unused_for_too_long(&self, now: u64) -> bool {
        self.expires_after.is_some_and(|after| {
            self.consumers_hint.load(Ordering::Relaxed) == 0
                && now.saturating_sub(self.last_used.load(Ordering::Relaxed)) >= after
        })
    }

    pub fn is_deleted(&self) -> bool {
        self.inner.lock().deleted
    }

    /// `is_deleted` without the lock: a queue seen deleted stays deleted.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Enqueue a routed message and push it on if a consumer can take it; then apply the length
    /// limits (ready messages only count, as in RabbitMQ).
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Enqueued {
        self.enqueue(msg, false)
    }

    /// `publish`, for a message `store_message` stored for this queue when `stored`.
    pub fn enqueue(self: &Arc<Self>, msg: Arc<Message>, stored: bool) -> Enqueued {
        let size = msg.body_size() as u64;
        // Made first, so that a refused message releases its stored record on the way out.
        let mut entry = QEntry {
            seq: 0,
            msg,
            redelivered: false,
            qid: if stored { self.store_id } else { 0 },
            expires: None,
            delivery_count: 0,
            enqueued: crate::broker::stats::coarse_now(),
        };
        let mut i = self.inner.lock();
        if i.deleted {
            return Enqueued::Gone;
        }
        if self.life.deduplicate && self.duplicate(&mut i, &mut entry) {
            return Enqueued::Accepted; // dropped, as the plugin does
        }
        if matches!(
            self.limits.overflow,
            Overflow::RejectPublish | Overflow::RejectPublishDlx
        ) && self.limits.over(i.ready.len() + 1, i.ready.bytes() + size)
        {
            drop(i);
            self.refused(entry);
            return Enqueued::Rejected;
        }
        entry.seq = i.next_seq;
        i.next_seq += 1;
        let now = now_ms();
        entry.expires = self.ttl_of(&entry.msg).map(|t| now.saturating_add(t));
        if let Some(e) = entry.expires {
            self.expires_at(e);
        }
        self.push_ready(&mut i, entry);
        counters(&mut i).publish += 1;
        self.dispatch_locked_at(&mut i, now);
        let (dropped, dropped_paged) = self.drop_head_over_limit(&mut i);
        self.ready_hint
            .store(i.ready.len() as u32, Ordering::Relaxed);
        drop(i);
        self.dead_letter_dropped(dropped, dropped_paged);
        Enqueued::Accepted
    }

    /// Remove every expired message (wherever it is in the queue, not only at the head) and
    /// dead-letter it. Cheap when nothing is due: one atomic load, no lock.
    pub fn sweep_expired(&self, now: u64) {
        if self.next_expiry.load(Ordering::Relaxed) > now {
            return;
        }
        let mut i = self.inner.lock();
        let mut dead = std::mem::take(&mut i.expired);
        let mut dead_paged = Vec::new();
        // A scan is O(ready) under the lock: in a deep queue, space scans out (one per ms per
        // 10,000 ready messages, so at most ~100 ms apart for a million) so that consumers are
        // not stalled while a mass of messages expires. Expired messages are never delivered
        // meanwhile: dispatch checks each one it takes.
        let pace = (i.ready.len() / 10_000) as u64;
        if now >= i.swept_at.saturating_add(pace) {
            i.swept_at = now;
            let mut next = u64::MAX;
            let mut ram_gone = 0;
            i.ready.retain(
                |e| match e.expires() {
                    Some(x) if x <= now => false,
                    Some(x) => {
                        next = next.min(x);
                        true
                    }
                    None => true,
                },
                |e| {
                    ram_gone += e.ram();
                    match e {
                        Slot::Mem(e) => dead.push(e),
                        Slot::Disk(d) => dead_paged.push(d),
                    }
                },
            );
            i.ram -= ram_gone;
            i.paged -= dead_paged.len() as u32;
            self.next_expiry.store(next, Ordering::Relaxed);
        }
        self.ready_hint
            .store(i.ready.len() as u32, Ordering::Relaxed);
        drop(i);
        dead.extend(self.revive_dead(dead_paged));
        if !dead.is_empty() {
            self.dead_letter(dead, Reason::Expired);
        }
    }

    /// Republish dead messages to this queue's dead-letter exchange (if it has one; otherwise
    /// they are simply dropped). Never called with this queue's lock held.
    pub fn dead_letter(&self, entries: Vec<QEntry>, reason: Reason) {
        let Some(dl) = &self.dead_letter else {
            return;
        };
        let Some(vhost) = self.vhost_ref.upgrade() else {
            return;
        };
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        for e in entries {
            let rk = match &dl.routing_key {
                Some(k) => bytes::Bytes::copy_from_slice(k.as_bytes()),
                None => e.msg.routing_key.clone(),
            };
            let Some(m) = dead_lettered(&e.msg, &self.name, reason, &dl.exchange, rk) else {
                continue;
            };
            // A missing dead-letter exchange drops the message, as in RabbitMQ.
            if vhost
                .route(&dl.exchange, &m, &mut out, &mut scratch)
                .is_err()
            {
                continue;
            }
            let m = Arc::new(m);
            // Dying again where it already died, with no rejection in between: a cycle.
            if reason != Reason::Rejected {
                out.retain(|q| !would_cycle(&m, &q.name));
            }
            let (_, stored) = store_message(&m, &out);
            for q in out.drain(..) {
                q.enqueue(m.clone(), stored);
            }
        }
    }

    /// Push ready messages to consumers with credit, round-robin.
    pub fn dispatch(self: &Arc<Self>) {
        let mut i = self.inner.lock();
        self.dispatch_locked(&mut i);
    }

    fn dispatch_locked(self: &Arc<Self>, i: &mut Inner) {
        self.dispatch_locked_at(i, now_ms())
    }

    /// `dispatch_locked`, with messages that expire at `now` still deliverable: the clock the
    /// enqueue stamped them with, so that a TTL of 0 reaches a consumer waiting at that moment
    /// even when the millisecond turns between the two.
    fn dispatch_locked_at(self: &Arc<Self>, i: &mut Inner, now: u64) {
        while !i.ready.is_empty() && !i.consumers.is_empty() {
            // With a single active consumer only the first (oldest) one is ever offered messages.
            let n = if self.single_active {
                1
            } else {
                i.consumers.len()
            };
            // Consumers are kept sorted by priority, highest first: offer each group of equal
            // priority in turn, round-robin inside it (one group when all are equal).
            let mut chosen = None;
            let mut group = 0;
            while group < n && chosen.is_none() {
                let end = if i.uniform_priority {
                    n
                } else {
                    let p = i.consumers[group].priority;
                    (group..n)
                        .find(|&k| i.consumers[k].priority != p)
                        .unwrap_or(n)
                };
                let len = end - group;
                let start = i.rr % len;
                chosen = (0..len).map(|k| group + (start + k) % len).find(|&k| {
                    let c = &i.consumers[k];
                    c.has_credit() && c.sink.ready(c, self)
                });
                group = end;
            }
            let Some(idx) = chosen else {
                break;
            };
            let Some(entry) = self.pop_ready(i) else {
                break;
            };
            // Expired strictly before now: a TTL of 0 still reaches a consumer waiting right now.
            if entry.expires.is_some_and(|e| e < now) {
                // Never delivered once expired: the sweeper dead-letters it.
                i.expired.push(entry);
                self.next_expiry.store(0, Ordering::Relaxed);
                continue;
            }
            i.rr = idx + 1;
            let c = i.consumers[idx].clone();
            if !c.no_ack {
                c.unacked.fetch_add(1, Ordering::Relaxed);
                i.unacked += 1;
                entry.mark_delivered();
            }
            let n = counters(i);
            n.redeliver += entry.redelivered as u64;
            if c.no_ack {
                n.deliver_no_ack += 1;
            } else {
                n.deliver += 1;
            }
            c.sink.deliver(&c, self, entry);
            self.delivered.fetch_add(1, Ordering::Relaxed);
            if i.ready.len() as u32 == FLOW_LOW {
                self.drained.notify_waiters();
            }
        }
        self.ready_hint
            .store(i.ready.len() as u32, Ordering::Relaxed);
        self.consumers_hint
            .store(i.consumers.len() as u32, Ordering::Relaxed);
        // A head waiting for the log's writer: let the sweeper dispatch again once it is written.
        if self.page_stalled.load(Ordering::Relaxed) {
            self.join_sweeps();
        }
    }

    /// Whether a publisher to this queue should pause (see `FLOW_HIGH`).
    pub fn overloaded(&self) -> bool {
        self.ready_hint.load(Ordering::Relaxed) > FLOW_HIGH
            && self.consumers_hint.load(Ordering::Relaxed) > 0
    }

    /// Wait until the queue is back under `FLOW_LOW`, or its consumers made no progress for
    /// 100 ms (a stalled consumer must not block publishers forever).
    pub async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.ready_hint.load(Ordering::Relaxed) <= FLOW_LOW
                || self.consumers_hint.load(Ordering::Relaxed) == 0
            {
                return;
            }
            let before = self.delivered.load(Ordering::Relaxed);
            if tokio::time::timeout(Duration::from_millis(100), notified)
                .await
                .is_err()
                && self.delivered.load(Ordering::Relaxed) == before
            {
                return;
            }
        }
    }

    /// basic.get: take the head message. Returns it with the count of messages still ready.
    pub fn get(&self, no_ack: bool) -> Option<(QEntry, u32)> {
        self.touch();
        let mut i = self.inner.lock();
        let e = loop {
            let e = self.pop_ready(&mut i)?;
            if e.expires.is_some_and(|x| x < now_ms()) {
                i.expired.push(e);
                self.next_expiry.store(0, Ordering::Relaxed);
                continue;
            }
            break e;
        };
        if !no_ack {
            i.unacked += 1;
            e.mark_delivered();
            counters(&mut i).get += 1;
        } else {
            counters(&mut i).get_no_ack += 1;
        }
        counters(&mut i).redeliver += e.redelivered as u64;
        self.ready_hint
            .store(i.ready.len() as u32, Ordering::Relaxed);
        Some((e, i.ready.len() as u32))
    }

    /// Settle deliveries of this queue in one critical section: `done` of them were acked (or
    /// dropped), the entries in `back` return to their original places marked redelivered. Then
    /// push on to consumers, whose credit the caller has already returned.
    ///
    /// Returns can push the queue over `x-max-length` / `x-max-length-bytes`: with drop-head the
    /// oldest ready messages are dropped (dead-lettered, reason `maxlen`) before dispatch, as
    /// RabbitMQ does; reject-publish queues keep them all and refuse publishes until below.
    pub fn settle(self: &Arc<Self>, done: u64, back: Vec<QEntry>) {
        let mut i = self.inner.lock();
        i.unacked = i.unacked.saturating_sub(done + back.len() as u64);
        let mut over_limit = Vec::new();
        let mut dropped = (Vec::new(), Vec::new());
        counters(&mut i).ack += done;
        if !i.deleted && !back.is_empty() {
            for mut entry in back {
                entry.redelivered = true;
                let Some(entry) = self.count_delivery(&mut i, entry, &mut over_limit) else {
                    continue;
                };
                let slot = Slot::Mem(entry);
                i.ram += slot.ram();
                i.ready.requeue(slot);
            }
            if self.limits.overflow == Overflow::DropHead {
                dropped = self.drop_head_over_limit(&mut i);
            }
        }
        self.dispatch_locked(&mut i);
        drop(i);
        if !over_limit.is_empty() {
            self.dead_letter(over_limit, Reason::DeliveryLimit);
        }
        self.dead_letter_dropped(dropped.0, dropped.1);
    }

    /// Take ready messages off the head while the queue is over its length limits.
    fn drop_head_over_limit(&self, i: &mut Inner) -> (Vec<QEntry>, Vec<DiskEntry>) {
        let mut dropped = Vec::new();
        let mut dropped_paged = Vec::new();
        while self.limits.over(i.ready.len(), i.ready.bytes()) {
            let Some(old) = i.ready.pop_front() else {
                break;
            };
            i.ram -= old.ram();
            match old {
                Slot::Mem(e) => dropped.push(e),
                Slot::Disk(d) => {
                    i.paged -= 1;
                    dropped_paged.push(d);
                }
            }
        }
        (dropped, dropped_paged)
    }

    /// Dead-letter (reason `maxlen`) what `drop_head_over_limit` took; never under the lock.
    fn dead_letter_dropped(&self, mut dropped: Vec<QEntry>, paged: Vec<DiskEntry>) {
        dropped.extend(self.revive_dead(paged));
        if !dropped.is_empty() {
            self.dead_letter(dropped, Reason::Maxlen);
        }
    }

    /// Attach a consumer (without dispatching: the caller replies consume-ok first, then calls
    /// `dispatch`).
    pub fn add_consumer(&self, c: Arc<Consumer>) -> AmqpResult<()> {
        let mut i = self.inner.lock();
        if i.deleted {
            return Err(AmqpError::not_found(format!(
                "no queue '{}' in vhost '{}'",
                self.name, self.vhost
            )));
        }
        if (c.exclusive && !i.consumers.is_empty()) || i.consumers.iter().any(|x| x.exclusive) {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        // Keep consumers sorted by priority, highest first; newcomers after their equals.
        let pos = i.consumers.partition_point(|x| x.priority >= c.priority);
        i.consumers.insert(pos, c);
        i.uniform_priority = i
            .consumers
            .windows(2)
            .all(|w| w[0].priority == w[1].priority);
        Ok(())
    }

    /// Remove a consumer. Returns true when the queue is auto-delete and has just lost its last
    /// consumer, so the caller should delete it.
    pub fn remove_consumer(&self, c: &Arc<Consumer>) -> bool {
        let mut i = self.inner.lock();
        let before = i.consumers.len();
        i.consumers.retain(|x| !Arc::ptr_eq(x, c));
        i.uniform_priority = i
            .consumers
            .windows(2)
            .all(|w| w[0].priority == w[1].priority);
        self.touch();
        self.consumers_hint
            .store(i.consumers.len() as u32, Ordering::Relaxed);
        if i.consumers.is_empty() {
            self.drained.notify_waiters();
        }
        self.auto_delete && before > 0 && i.consumers.is_empty() && !i.deleted
    }

    pub fn purge(&self) -> u32 {
        let mut i = self.inner.lock();
        let n = i.ready.len() as u32;
        self.clear_ready(&mut i);
        self.ready_hint.store(0, Ordering::Relaxed);
        self.drained.notify_waiters();
        n
    }

    /// Drop every ready message (in memory ones release their records as they drop).
    fn clear_ready(&self, i: &mut Inner) {
        let paged: Vec<DiskEntry> = i
            .ready
            .drain()
            .into_iter()
            .filter_map(|s| match s {
                Slot::Disk(d) => Some(d),
                Slot::Mem(_) => None,
            })
            .collect();
        self.release_paged(&paged);
        i.ram = 0;
        i.paged = 0;
    }

    /// Mark deleted and drop the ready messages; returns (ready count, consumers to notify).
    pub(crate) fn mark_deleted(&self) -> (u32, Vec<Arc<Consumer>>) {
        let mut i = self.inner.lock();
        i.deleted = true;
        self.gone.store(true, Ordering::Release);
        let n = i.ready.len() as u32;
        self.clear_ready(&mut i);
        self.ready_hint.store(0, Ordering::Relaxed);
        self.consumers_hint.store(0, Ordering::Relaxed);
        self.drained.notify_waiters();
        (n, std::mem::take(&mut i.consumers))
    }

    /// One consistent view for management and metrics, under one short lock.
    pub fn snapshot(&self) -> crate::broker::stats::QueueSnapshot {
        Self::snapshot_of(&self.inner.lock())
    }

    /// Take a snapshot and record it as a rate sample (`secs` since the previous sample).
    pub fn sample_rates(&self, secs: Option<f64>) -> crate::broker::stats::QueueSnapshot {
        let mut i = self.inner.lock();
        let s = Self::snapshot_of(&i);
        // A queue that never had a message has nothing to rate.
        if let Some(st) = &mut i.stats {
            st.rates.update(&s, secs);
        }
        s
    }

    /// The rates of the last sample.
    pub fn rates(&self) -> crate::broker::stats::QueueRates {
        self.inner
            .lock()
            .stats
            .as_ref()
            .map(|s| s.rates.rates())
            .unwrap_or_default()
    }

    fn snapshot_of(i: &Inner) -> crate::broker::stats::QueueSnapshot {
        crate::broker::stats::QueueSnapshot {
            ready: i.ready.len() as u64,
            unacked: i.unacked,
            consumers: i.consumers.len() as u32,
            ready_bytes: i.ready.bytes(),
            head_enqueued: i.ready.front().map(Slot::enqueued),
            overhead_bytes: (std::mem::size_of::<Queue>()
                + i.ready.len() * std::mem::size_of::<Slot>()
                + i.consumers.capacity() * std::mem::size_of::<Arc<Consumer>>())
                as u64,
            counters: i.stats.as_ref().map(|s| s.counters).unwrap_or_default(),
        }
    }

    /// The consumers attached now (for management listings).
    pub fn consumer_list(&self) -> Vec<Arc<Consumer>> {
        self.inner.lock().consumers.clone()
    }
}

/// Lifecycle hooks: deduplication, overflow with dead-lettering, delivery counting.
impl Queue {
    /// Queue-level deduplication (`x-message-deduplication`): true when a message with the
    /// same `x-deduplication-header` is still in the queue (the caller drops the entry, which
    /// releases its stored record, if any). Otherwise the entry gets a copy of its message of
    /// its own, whose lifetime marks the key as held.
    #[cold]
    fn duplicate(&self, i: &mut Inner, entry: &mut QEntry) -> bool {
        let Some(key) = crate::broker::lifecycle::dedup_key(&entry.msg) else {
            return false;
        };
        if i.dedup.contains(&key) {
            return true;
        }
        let own = crate::broker::lifecycle::own_copy(&entry.msg);
        i.dedup.insert(key, &own);
        entry.msg = own;
        false
    }

    /// A message a full queue refused: with `x-overflow: reject-publish-dlx` it is dead-lettered.
    #[cold]
    fn refused(&self, entry: QEntry) {
        if self.limits.overflow == Overflow::RejectPublishDlx {
            self.dead_letter(vec![entry], Reason::Maxlen);
        }
    }

    /// A delivery came back (nack/reject with requeue, channel closed, consumer cancelled):
    /// count it where deliveries are counted. Returns the entry to put back, or pushes it to
    /// `over` when it has used up `x-delivery-limit`.
    fn count_delivery(
        &self,
        i: &mut Inner,
        mut entry: QEntry,
        over: &mut Vec<QEntry>,
    ) -> Option<QEntry> {
        if !self.life.count_deliveries {
            return Some(entry);
        }
        entry.delivery_count = entry.delivery_count.saturating_add(1);
        if self
            .life
            .delivery_limit
            .is_some_and(|limit| entry.delivery_count as u64 > limit)
        {
            over.push(entry);
            return None;
        }
        // Kept across restarts, up to a bound: a message requeued forever (a quorum-style queue
        // without a limit) must not grow its segment's ack file forever.
        if entry.qid != 0 && entry.delivery_count <= RETURNS_KEPT {
            if let Some(s) = entry.msg.stored.get() {
                s.log.returned(entry.qid, s.segment, s.offset);
            }
        }
        if let Some(m) =
            crate::broker::lifecycle::with_delivery_count(&entry.msg, entry.delivery_count)
        {
            let m = Arc::new(m);
            if self.life.deduplicate {
                if let Some(key) = crate::broker::lifecycle::dedup_key(&m) {
                    i.dedup.insert(key, &m);
                }
            }
            entry.msg = m;
        }
        Some(entry)
    }
}
