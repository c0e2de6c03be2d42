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
//! Invariants: `ready` is sorted by `seq` (requeued messages go back to their original place in
//! a classic queue; a quorum queue gives them a new, last seq: they go to the back);
//! `unacked` counts deliveries to consumers or basic.get without no-ack that are not yet settled.
//!
//! The parts: `entry` (a message in a queue, and storing it once for all durable queues),
//! `ready` (the ready list, FIFO or by priority), `consumers` (dispatch, get, settling),
//! `limits` (length limits and overflow), `expiry` (TTLs, `x-expires`), `paging` (bodies on disk
//! beyond the RAM budget), `dead_letter` (republishing dead messages through the vhost's
//! `publish`), `lifecycle` (priorities, delivery limit, consumer timeout, deduplication).

pub mod consumers;
pub mod dead_letter;
pub mod entry;
pub mod expiry;
pub mod lifecycle;
pub mod limits;
pub mod paging;
pub mod ready;
pub mod replica;

pub use consumers::{cancel_consumers, Consumer, ConsumerSink};
pub use entry::{append_message, store_message, QEntry};
pub use limits::{Limits, Overflow};

use crate::broker::clock::Clock;
use crate::broker::exchange::Exchange;
use crate::broker::memory::MemoryMonitor;
use crate::broker::message::Message;
use crate::broker::vhost::VHost;
use amq_protocol::types::FieldTable;
use dead_letter::DeadLetter;
use paging::{DiskEntry, Slot};
use parking_lot::Mutex;
use ready::Ready;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;

pub const FLOW_HIGH: u32 = 4096;

pub const FLOW_LOW: u32 = 1024;

/// What became of a message offered to one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Accepted,
    /// Full, with `x-overflow: reject-publish`.
    Rejected,
    /// The queue was deleted meanwhile.
    Gone,
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
    dedup: crate::broker::queue::lifecycle::DedupSet,
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
    /// The scratch log where other messages (transient ones, or persistent ones not stored for
    /// this queue) are paged out.
    spill: Option<Arc<crate::store::MessageLog>>,
    /// Bytes of ready messages kept in memory before the others are paged out.
    ram_budget: u64,
    /// A stream queue's log (`x-queue-type: stream`): messages go there instead of `ready`.
    stream: Option<Arc<crate::broker::stream::Stream>>,
    /// In a cluster: the node this queue lives on, when not this one. Such a queue is a record
    /// here (bindings, lookups, listings); its messages are on its node.
    pub remote: Option<String>,
    /// A proxy queue (never registered): one consumer or get on this node served by the
    /// queue's node (see `broker::remote`).
    pub proxy: Option<Arc<crate::broker::remote::Proxy>>,
    /// The memory account of messages paged back in.
    memory: Option<&'static MemoryMonitor>,
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
    pub life: crate::broker::queue::lifecycle::QueueLife,
    /// Earliest expiry among ready messages (u64::MAX: none), or 0 when expired messages wait
    /// to be swept: lets the sweeper skip queues without taking their locks.
    next_expiry: AtomicU64,
    /// Registered with the vhost's expiry sweeper (on its first message with a TTL).
    swept: AtomicBool,
    /// `x-expires`: delete the queue once unused (no consumers, no declare, no get) this long.
    pub expires_after: Option<u64>,
    last_used: AtomicU64,
    /// The broker's clock.
    pub clock: Arc<Clock>,
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
    /// In a cluster, a quorum queue's tie to its Raft group (`broker::quorum`).
    replica: std::sync::OnceLock<Arc<crate::broker::quorum::Replica>>,
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
    /// In a cluster: the node this queue was declared on (None: this node, or no cluster).
    pub fn home(&self) -> Option<String> {
        self.vhost_ref.upgrade()?.home_of(&self.name)
    }

    /// In a cluster: this node does not serve the queue's messages (a record of a classic
    /// queue living on another node, or a quorum queue led by another node). Consumers, gets
    /// and purges then go to the node that does (`home_of`, see `broker::remote`).
    pub fn served_elsewhere(&self) -> bool {
        self.remote.is_some() || self.replica().is_some_and(|r| !r.is_live())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        vhost_ref: Weak<VHost>,
        clock: Arc<Clock>,
        vhost: String,
        durable: bool,
        auto_delete: bool,
        exclusive_owner: Option<u64>,
        arguments: FieldTable,
    ) -> Self {
        let life = crate::broker::queue::lifecycle::QueueLife::from_args(&arguments);
        if life.quorum {
            crate::broker::args::log_dead_letter_strategy(&name, &vhost, &arguments);
        }
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
            last_used: AtomicU64::new(clock.now_ms()),
            clock,
            vhost_ref,
            arguments,
            store_id: 0,
            log: None,
            spill: None,
            ram_budget: u64::MAX,
            stream: None,
            remote: None,
            proxy: None,
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
            replica: std::sync::OnceLock::new(),
        }
    }

    /// Keep this queue's persistent messages in `log` under `id`, with no more than
    /// `ram_budget` bytes of ready messages in memory (messages read back count in `memory`).
    pub fn stored_in(
        mut self,
        id: u32,
        log: Arc<crate::store::MessageLog>,
        ram_budget: u64,
        memory: &'static MemoryMonitor,
    ) -> Self {
        self.store_id = id;
        self.log = Some(log);
        self.ram_budget = ram_budget;
        self.memory = Some(memory);
        self
    }

    /// Page out messages not stored for this queue to the scratch log `spill`, beyond
    /// `ram_budget` bytes of ready messages in memory (messages read back count in `memory`).
    pub fn spilling_to(
        mut self,
        spill: Arc<crate::store::MessageLog>,
        ram_budget: u64,
        memory: &'static MemoryMonitor,
    ) -> Self {
        self.spill = Some(spill);
        self.ram_budget = ram_budget;
        self.memory = Some(memory);
        self
    }

    /// Make this a stream queue, its messages kept in `stream`.
    pub fn with_stream(mut self, stream: crate::broker::stream::Stream) -> Self {
        self.stream = Some(Arc::new(stream));
        self
    }

    /// A stream queue's log.
    pub fn stream(&self) -> Option<&Arc<crate::broker::stream::Stream>> {
        self.stream.as_ref()
    }

    pub fn is_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// A message was appended to this stream (counted as a queue's publish).
    pub fn stream_published(&self) {
        counters(&mut self.inner.lock()).publish += 1;
    }

    /// A stream reader handed `n` messages to its consumer (counted as a queue's deliveries).
    pub fn stream_delivered(&self, n: u64) {
        if n == 0 {
            return;
        }
        // Not counted as unacknowledged: a stream holds them all the same (RabbitMQ shows 0).
        let mut i = self.inner.lock();
        counters(&mut i).deliver += n;
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// The message log this queue keeps its persistent messages in, if any.
    pub fn log(&self) -> Option<&Arc<crate::store::MessageLog>> {
        self.log.as_ref()
    }

    pub fn counts(&self) -> QueueCounts {
        let i = self.inner.lock();
        if let Some(r) = self.replica.get().filter(|r| !r.is_live()) {
            // A quorum queue led elsewhere: its group knows the count.
            let (n, bytes) = r.counts();
            return QueueCounts {
                ready: n.min(u32::MAX as u64) as u32,
                unacked: 0,
                consumers: i.consumers.len() as u32,
                ready_bytes: bytes,
            };
        }
        let (ready, ready_bytes) = match &self.stream {
            Some(s) => {
                let info = s.log.info();
                (info.messages.min(u32::MAX as u64) as u32, info.bytes)
            }
            None => (i.ready.len() as u32, i.ready.bytes()),
        };
        QueueCounts {
            ready,
            unacked: i.unacked,
            consumers: i.consumers.len() as u32,
            ready_bytes,
        }
    }

    /// The queue was used (declared again, read with basic.get, lost a consumer): restart its
    /// `x-expires` countdown.
    pub fn touch(&self) {
        self.last_used.store(self.clock.now_ms(), Ordering::Relaxed);
    }

    pub fn is_deleted(&self) -> bool {
        self.inner.lock().deleted
    }

    /// `is_deleted` without the lock: a queue seen deleted stays deleted.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Enqueue a routed message (stored for this queue by `store_message` when `stored`) and push
    /// it on if a consumer can take it; then apply the length limits (ready messages only count,
    /// as in RabbitMQ). `VHost::publish` is the one caller in the broker (benches fill queues
    /// with it directly).
    pub fn enqueue(self: &Arc<Self>, mut msg: Arc<Message>, stored: bool) -> Enqueued {
        let size = msg.body_size() as u64;
        let (qid, enqueued) = (
            if stored { self.store_id } else { 0 },
            self.clock.coarse_cs(),
        );
        // The entry is put together only once all its fields are known, right where it goes
        // (an entry made first and filled in later was read back in wide loads that waited on
        // its narrow stores: a stall per message). Every way out makes one, so that a refused
        // message releases its stored record as it goes.
        let entry = move |msg, seq, expires| QEntry {
            seq,
            msg,
            redelivered: false,
            qid,
            expires,
            delivery_count: 0,
            enqueued,
        };
        let mut i = self.inner.lock();
        if i.deleted {
            drop(i);
            drop(entry(msg, 0, None));
            return Enqueued::Gone;
        }
        if self.life.deduplicate && self.duplicate(&mut i, &mut msg) {
            drop(i);
            drop(entry(msg, 0, None));
            return Enqueued::Accepted; // dropped, as the plugin does
        }
        if matches!(
            self.limits.overflow,
            Overflow::RejectPublish | Overflow::RejectPublishDlx
        ) && self.limits.over(i.ready.len() + 1, i.ready.bytes() + size)
        {
            drop(i);
            self.refused(entry(msg, 0, None));
            return Enqueued::Rejected;
        }
        let seq = i.next_seq;
        i.next_seq += 1;
        // The clock is read only for a message with a TTL (a system call per message else).
        let (now, expires) = match self.ttl_of(&msg) {
            None => (None, None),
            Some(ttl) => {
                let now = self.clock.now_ms();
                let e = now.saturating_add(ttl);
                self.expires_at(e);
                (Some(now), Some(e))
            }
        };
        self.push_ready(&mut i, entry(msg, seq, expires));
        counters(&mut i).publish += 1;
        if !i.consumers.is_empty() && !self.defers_dispatch(now) {
            self.dispatch_locked_at(&mut i, now);
        }
        let shed = self.limits.any().then(|| self.shed_over_limit(&mut i));
        self.ready_hint
            .store(i.ready.len() as u32, Ordering::Relaxed);
        drop(i);
        if let Some(shed) = shed {
            self.dead_letter_shed(shed);
        }
        Enqueued::Accepted
    }

    /// Inside a batch (`broker::batch`), a plain queue's dispatch waits for the batch's end:
    /// one pass for all the messages the batch brought. Not when the order of dispatch and
    /// something else matters: a message with a TTL (a TTL of 0 reaches only a consumer waiting
    /// right now), length limits (applied to what dispatch leaves), streams and proxies.
    fn defers_dispatch(self: &Arc<Self>, now: Option<u64>) -> bool {
        now.is_none()
            && !self.limits.any()
            && self.stream.is_none()
            && self.proxy.is_none()
            && crate::broker::batch::Batch::defer_dispatch(self)
    }

    /// `dispatch`, returning how many messages it handed out (for the batch's stage counter).
    pub(crate) fn dispatch_counted(self: &Arc<Self>) -> u64 {
        let before = self.delivered.load(Ordering::Relaxed);
        self.dispatch();
        self.delivered
            .load(Ordering::Relaxed)
            .saturating_sub(before)
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
        let consumers = std::mem::take(&mut i.consumers);
        drop(i);
        if let Some(s) = &self.stream {
            for c in &consumers {
                if let Some(sc) = &c.stream {
                    sc.stopped.store(true, Ordering::Release);
                }
            }
            s.wake();
            s.log.delete();
            // As RabbitMQ: delete-ok of a stream counts 0 messages.
            return (0, consumers);
        }
        (n, consumers)
    }

    /// One consistent view for management and metrics, under one short lock.
    pub fn snapshot(&self) -> crate::broker::stats::QueueSnapshot {
        self.snapshot_of(&self.inner.lock())
    }

    /// Take a snapshot and record it as a rate sample (`secs` since the previous sample).
    pub fn sample_rates(&self, secs: Option<f64>) -> crate::broker::stats::QueueSnapshot {
        let mut i = self.inner.lock();
        let s = self.snapshot_of(&i);
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

    fn snapshot_of(&self, i: &Inner) -> crate::broker::stats::QueueSnapshot {
        let stream = self.stream.as_ref().map(|s| s.log.info()).or_else(|| {
            // A quorum queue led elsewhere: its group knows the count.
            let r = self.replica.get().filter(|r| !r.is_live())?;
            let (messages, bytes) = r.counts();
            Some(crate::store::stream::StreamInfo {
                messages,
                bytes,
                ..Default::default()
            })
        });
        crate::broker::stats::QueueSnapshot {
            ready: stream.map_or(i.ready.len() as u64, |s| s.messages),
            unacked: i.unacked,
            consumers: i.consumers.len() as u32,
            ready_bytes: stream.map_or(i.ready.bytes(), |s| s.bytes),
            head_age: i
                .ready
                .front()
                .map_or(0.0, |s| self.clock.age_secs(s.enqueued())),
            overhead_bytes: (std::mem::size_of::<Queue>()
                + i.ready.len() * std::mem::size_of::<Slot>()
                + i.consumers.capacity() * std::mem::size_of::<Arc<Consumer>>())
                as u64,
            counters: i.stats.as_ref().map(|s| s.counters).unwrap_or_default(),
        }
    }
}
