//! Consumers and dispatch: which consumer gets the next ready message (priorities, round-robin,
//! single active consumer, prefetch credit), basic.get, and settling deliveries (ack, requeue).

use super::{counters, Inner, Queue, FLOW_LOW};
use crate::broker::queue::dead_letter::Reason;
use crate::broker::queue::entry::QEntry;
use crate::broker::queue::limits::Overflow;
use crate::broker::queue::paging::Slot;
use crate::error::{AmqpError, AmqpResult};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// The channel side of a consumer, implemented by the wire layer.
pub trait ConsumerSink: Send + Sync + std::fmt::Debug {
    /// Whether the consumer's channel and connection can take one more delivery now (channel
    /// open, channel-wide prefetch, socket not backed up). If the socket is backed up, the sink
    /// remembers `queue` and calls `dispatch` on it once the socket drains.
    fn ready(&self, consumer: &Consumer, queue: &Arc<Queue>) -> bool;
    /// Hand over one message; the sink assigns the delivery tag and writes the frames.
    fn deliver(&self, consumer: &Arc<Consumer>, queue: &Arc<Queue>, entry: QEntry);
    /// How many deliveries in a row the sink takes now for `consumer`, once `ready` said yes
    /// (its channel-wide credit). Dispatch hands a lone consumer up to that many at once
    /// (`deliver_many`); a sink that says 1 (the default) is handed one at a time.
    fn credit(&self, _consumer: &Consumer) -> u32 {
        1
    }
    /// Hand over several messages, in order, as `deliver` would one by one (`entries` is left
    /// empty). A sink overrides it to take its locks and write its frames once for them all.
    fn deliver_many(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        entries: &mut Vec<QEntry>,
    ) {
        for e in entries.drain(..) {
            self.deliver(consumer, queue, e);
        }
    }
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
    /// A stream queue's consumer: its reader's position and arguments.
    pub stream: Option<Arc<crate::broker::stream::StreamConsumer>>,
    /// The basic.consume arguments, as the client sent them (management shows them).
    pub arguments: amq_protocol::types::FieldTable,
    /// A quorum queue's consumer in a cluster: what moves it to the queue's next leader when
    /// this node stops leading it (`broker::remote`).
    pub follower: std::sync::OnceLock<std::sync::Weak<crate::broker::remote::Proxy>>,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.no_ack || self.prefetch == 0 || self.unacked.load(Ordering::Relaxed) < self.prefetch
    }

    /// How many more deliveries its own prefetch allows (`u32::MAX`: no limit).
    fn credit(&self) -> u32 {
        if self.no_ack || self.prefetch == 0 {
            return u32::MAX;
        }
        self.prefetch
            .saturating_sub(self.unacked.load(Ordering::Relaxed))
    }
}

/// The most messages one consumer is handed in one go (`ConsumerSink::deliver_many`), and the
/// body bytes after which the run stops (so that a run never puts much more than one message's
/// worth past the outbox's high-water mark).
const RUN_MAX: u32 = 256;
const RUN_BYTES: usize = 64 << 10;

impl Queue {
    /// Push ready messages to consumers with credit, round-robin.
    pub fn dispatch(self: &Arc<Self>) {
        if let Some(s) = &self.stream {
            // Stream consumers read on their own: start new readers, wake the others.
            for c in self.inner.lock().consumers.clone() {
                crate::broker::stream::reader::start(self, &c);
            }
            s.wake();
            return;
        }
        if let Some(p) = &self.proxy {
            p.pump(self);
            return;
        }
        let mut i = self.inner.lock();
        self.dispatch_locked(&mut i);
    }

    pub(super) fn dispatch_locked(self: &Arc<Self>, i: &mut Inner) {
        self.dispatch_locked_at(i, None)
    }

    /// `dispatch_locked`, with messages that expire at `now` still deliverable: the clock the
    /// enqueue stamped them with, so that a TTL of 0 reaches a consumer waiting at that moment
    /// even when the millisecond turns between the two. Without `now`, the clock is read when
    /// the first message with a TTL comes up (never, for queues without TTLs: no system call
    /// per message).
    pub(super) fn dispatch_locked_at(self: &Arc<Self>, i: &mut Inner, mut now: Option<u64>) {
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
                chosen = (0..len)
                    .map(|k| group + (start + k) % len)
                    .find(|&k| {
                        let c = &i.consumers[k];
                        c.has_credit() && c.sink.ready(c, self)
                    })
                    .map(|k| (k, len == 1));
                group = end;
            }
            let Some((idx, alone)) = chosen else {
                break;
            };
            let replica = self.replica.get();
            if let (Some(r), Some(head)) = (replica, i.ready.front()) {
                // A quorum queue's leader hands out a message once its mark is committed.
                if !r.may_deliver(head.seq()) {
                    break;
                }
            }
            i.rr = idx + 1;
            let c = i.consumers[idx].clone();
            // A consumer alone in its priority group gets a run of messages at once, as many as
            // its credit allows: round-robin between several goes one message at a time, and a
            // quorum queue's leader checks each message's commit.
            let run = if alone && replica.is_none() {
                c.credit().min(c.sink.credit(&c)).clamp(1, RUN_MAX)
            } else {
                1
            };
            let before = i.ready.len();
            if run == 1 {
                let Some(entry) = self.pop_deliverable(i, &mut now) else {
                    break;
                };
                self.count_delivered(i, &c, std::slice::from_ref(&entry));
                c.sink.deliver(&c, self, entry);
            } else {
                let mut entries = Vec::with_capacity((run as usize).min(before));
                let mut bytes = 0;
                while entries.len() < run as usize && bytes < RUN_BYTES {
                    let Some(entry) = self.pop_deliverable(i, &mut now) else {
                        break;
                    };
                    bytes += entry.msg.body_size();
                    entries.push(entry);
                }
                if entries.is_empty() {
                    break;
                }
                self.count_delivered(i, &c, &entries);
                c.sink.deliver_many(&c, self, &mut entries);
            }
            if before > FLOW_LOW as usize && i.ready.len() <= FLOW_LOW as usize {
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

    /// The head message, if one can go out now: expired ones on the way are set aside for
    /// the sweeper (never delivered once expired; strictly before `now`, so that a TTL of 0
    /// still reaches a consumer waiting right now). None: nothing ready, or the head is on disk
    /// and not readable yet.
    #[inline]
    fn pop_deliverable(&self, i: &mut Inner, now: &mut Option<u64>) -> Option<QEntry> {
        loop {
            let entry = self.pop_ready(i)?;
            if entry
                .expires
                .is_some_and(|e| e < *now.get_or_insert_with(|| self.clock.now_ms()))
            {
                i.expired.push(entry);
                self.next_expiry.store(0, Ordering::Relaxed);
                continue;
            }
            return Some(entry);
        }
    }

    /// The queue's and the consumer's accounts of deliveries about to go to `c`.
    fn count_delivered(&self, i: &mut Inner, c: &Consumer, entries: &[QEntry]) {
        let k = entries.len() as u64;
        if !c.no_ack {
            c.unacked.fetch_add(k as u32, Ordering::Relaxed);
            i.unacked += k;
            for e in entries.iter() {
                e.mark_delivered(true);
            }
        }
        let n = counters(i);
        n.redeliver += entries.iter().filter(|e| e.redelivered).count() as u64;
        if c.no_ack {
            n.deliver_no_ack += k;
        } else {
            n.deliver += k;
        }
        self.delivered.fetch_add(k, Ordering::Relaxed);
    }

    /// basic.get: take the head message. Returns it with the count of messages still ready.
    pub fn get(&self, no_ack: bool) -> Option<(QEntry, u32)> {
        self.touch();
        let mut i = self.inner.lock();
        let mut e = loop {
            let e = self.pop_ready(&mut i)?;
            if e.expires.is_some_and(|x| x < self.clock.now_ms()) {
                i.expired.push(e);
                self.next_expiry.store(0, Ordering::Relaxed);
                continue;
            }
            break e;
        };
        if self.life.quorum && e.delivery_count == 0 {
            // A quorum queue's basic.get always says how often it was delivered before.
            self.first_delivery_count(&mut i, &mut e);
        }
        if !no_ack {
            i.unacked += 1;
            e.mark_delivered(false);
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
    /// dropped), the entries in `back` return marked redelivered, to their original places (to
    /// the back of a quorum queue, as RabbitMQ's). Then
    /// push on to consumers, whose credit the caller has already returned.
    ///
    /// Returns can push the queue over `x-max-length` / `x-max-length-bytes`: with drop-head the
    /// oldest ready messages are dropped (dead-lettered, reason `maxlen`) before dispatch, as
    /// RabbitMQ does; reject-publish queues keep them all and refuse publishes until below.
    pub fn settle(self: &Arc<Self>, done: u64, back: Vec<QEntry>) {
        let mut i = self.inner.lock();
        if let Some(s) = &self.stream {
            // Nothing leaves a stream or goes back to it: settling only returns credit.
            counters(&mut i).ack += done;
            drop(i);
            drop(back);
            s.wake();
            return;
        }
        i.unacked = i.unacked.saturating_sub(done + back.len() as u64);
        let back = match self.replica.get() {
            // A quorum queue in a cluster: its group puts them back (and counts the delivery).
            Some(r) if !back.is_empty() => {
                r.returned(back);
                Vec::new()
            }
            _ => back,
        };
        let mut over_limit = Vec::new();
        let mut shed = None;
        counters(&mut i).ack += done;
        if !i.deleted && !back.is_empty() {
            for mut entry in back {
                entry.redelivered = true;
                let Some(mut entry) = self.count_delivery(&mut i, entry, &mut over_limit) else {
                    continue;
                };
                if self.life.quorum {
                    // A quorum queue returns it to the back, as RabbitMQ 3.x does: a new
                    // last place (O(1), the ready list stays sorted by seq).
                    entry.seq = i.next_seq;
                    i.next_seq += 1;
                    self.push_ready(&mut i, entry);
                    continue;
                }
                let slot = Slot::Mem(entry);
                i.ram += slot.ram();
                i.ready.requeue(slot);
            }
            if self.limits.any() && self.limits.overflow == Overflow::DropHead {
                shed = Some(self.shed_over_limit(&mut i));
            }
        }
        self.dispatch_locked(&mut i);
        drop(i);
        if !over_limit.is_empty() {
            self.dead_letter(over_limit, Reason::DeliveryLimit);
        }
        if let Some(shed) = shed {
            self.dead_letter_shed(shed);
        }
    }

    /// Settle deliveries of a proxy queue (served by another node, see `broker::remote`): sent
    /// there by id. Elsewhere the same as `settle` and, for `dead`, `dead_letter`.
    pub fn settle_remote(
        self: &Arc<Self>,
        acked: Vec<QEntry>,
        back: Vec<QEntry>,
        dead: Vec<QEntry>,
    ) {
        match &self.proxy {
            Some(p) => p.settle(acked, back, dead),
            None => {
                self.settle((acked.len() + dead.len()) as u64, back);
                if !dead.is_empty() && self.dead_letter.is_some() {
                    self.dead_letter(dead, Reason::Rejected);
                }
            }
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
        // (As RabbitMQ: an exclusive consume of a stream is accepted and not enforced.)
        if self.stream.is_none()
            && ((c.exclusive && !i.consumers.is_empty()) || i.consumers.iter().any(|x| x.exclusive))
        {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        // Keep consumers sorted by priority, highest first; newcomers after their equals.
        let pos = i.consumers.partition_point(|x| x.priority >= c.priority);
        i.consumers.insert(pos, c.clone());
        i.uniform_priority = i
            .consumers
            .windows(2)
            .all(|w| w[0].priority == w[1].priority);
        drop(i);
        if let Some(p) = &self.proxy {
            // A quorum queue's consumer this node leads attaches to the queue itself too.
            if let Err(e) = p.attached(&c) {
                self.inner.lock().consumers.retain(|x| !Arc::ptr_eq(x, &c));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Remove a consumer. Returns true when the queue is auto-delete and has just lost its last
    /// consumer, so the caller should delete it.
    pub fn remove_consumer(&self, c: &Arc<Consumer>) -> bool {
        if let Some(p) = &self.proxy {
            p.cancel();
        }
        let mut i = self.inner.lock();
        let before = i.consumers.len();
        i.consumers.retain(|x| !Arc::ptr_eq(x, c));
        if let (Some(s), Some(sc)) = (&self.stream, &c.stream) {
            sc.stopped.store(true, Ordering::Release);
            s.wake();
        }
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

    /// The consumers attached now (for management listings).
    pub fn consumer_list(&self) -> Vec<Arc<Consumer>> {
        self.inner.lock().consumers.clone()
    }
}
