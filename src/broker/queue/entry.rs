//! A message in a queue (`QEntry`), and storing a message once for the durable queues it
//! reaches.

use super::Queue;
use crate::broker::message::Message;
use crate::broker::queue::paging::DiskEntry;
use std::sync::Arc;

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
        if self.qid & crate::broker::quorum::QUORUM_QID != 0 {
            crate::broker::quorum::released(self.qid, self.seq);
            return;
        }
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
    pub(super) fn page_out(mut self) -> Result<DiskEntry, QEntry> {
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
            spill: false,
        };
        self.qid = 0;
        Ok(d)
    }

    /// Record a first delivery to a consumer that will ack (redelivered=true after a crash).
    /// A quorum queue's dispatch records nothing (`by_mark`): the delivery mark it waited for
    /// flags the message in the group already; a basic.get does not wait for marks.
    pub(super) fn mark_delivered(&self, by_mark: bool) {
        if self.qid & crate::broker::quorum::QUORUM_QID != 0 {
            if !self.redelivered && !by_mark {
                crate::broker::quorum::delivered(self.qid, self.seq);
            }
            return;
        }
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
            log = Some((l, &q.clock));
            ids.push(q.store_id);
        }
    }
    let Some((log, clock)) = log else {
        return (0, false);
    };
    if msg.stored.get().is_some() {
        return (0, false);
    }
    let (stored, ticket) = log.append_unannounced(&record(&ids, msg, clock.wall_ms()));
    // Inside a batch (a connection's read), the writer is woken once, at its end, for all the
    // records the batch brought: one round for them, not a first round for the first alone.
    if !crate::broker::batch::Batch::defer_wake(log) {
        log.wake_writer();
    }
    let _ = msg.stored.set(stored);
    (ticket, true)
}

/// The log's writer is a thread of its own, woken by a condition variable: waking it from
/// here costs this thread a system call at most, and brings nothing onto this core.
impl crate::broker::batch::Wake for crate::store::MessageLog {
    fn wake(&self) {
        self.wake_writer();
    }
    fn own_thread(&self) -> bool {
        true
    }
}

/// Write `msg` to the log as one record for the log ids `ids`.
/// `published_at` is the broker clock's `wall_ms`.
pub fn append_message(
    log: &Arc<crate::store::MessageLog>,
    ids: &[u32],
    msg: &Message,
    published_at: u64,
) -> (crate::store::Stored, u64) {
    log.append(&record(ids, msg, published_at))
}

fn record<'a>(ids: &'a [u32], msg: &'a Message, published_at: u64) -> crate::store::NewRecord<'a> {
    crate::store::NewRecord {
        queues: ids,
        published_at,
        ttl: msg.properties.ttl_ms().ok().flatten(),
        priority: msg.properties.priority.unwrap_or(0),
        exchange: &msg.exchange,
        routing_key: &msg.routing_key,
        properties: &msg.properties.raw,
        body: &msg.body,
    }
}
