//! Paging: beyond a RAM budget per queue (`queue_ram_budget_bytes`), a queue keeps the bodies
//! of its ready messages on disk only, and reads them back in batches as they reach the head of
//! the queue — so a long backlog costs a small index entry per message, not the message.
//!
//! - A persistent message stored for a durable queue is already in the message log: paging it
//!   out just drops the body from memory.
//! - Any other message (transient, or in a queue that does not store it) is written to the
//!   spill log when paged out: a scratch log of the same format, never fdatasynced and emptied
//!   at every start (`store::Store::spill`). Its record is released as soon as it is read back.
//!
//! A paged message is a `DiskEntry` in the queue's ready list: its place (seq), which log and
//! where its record is, its body size and expiry. The queue owns it: whatever removes it without
//! paging it back in (purge, deletion, expiry without a dead-letter exchange) releases its record
//! explicitly.

use super::{Inner, Queue};
use crate::broker::memory::MemoryMonitor;
use crate::broker::message::{Message, Properties};
use crate::broker::queue::QEntry;
use crate::store::{MessageLog, Stored};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::error;

/// What a ready message in memory is counted for against the budget besides its body: an
/// estimate of the message struct, its properties and its queue entry.
pub const ENTRY_OVERHEAD: u64 = 256;

/// Most records read back in one go.
pub const PAGE_IN_BATCH: usize = 256;

/// A ready message whose body is only in the message log.
#[derive(Debug)]
pub struct DiskEntry {
    pub seq: u64,
    pub expires: Option<u64>,
    pub segment: u32,
    pub offset: u32,
    /// Body bytes.
    pub size: u32,
    pub redelivered: bool,
    /// The message's priority (its level in a priority queue).
    pub priority: u8,
    /// Returns counted so far (`x-delivery-limit`).
    pub delivery_count: u32,
    /// When it entered the queue (`stats::coarse_now()`), for the head message age.
    pub enqueued: u32,
    /// Its record is in the spill log, not the message log.
    pub spill: bool,
}

/// The id spilled records carry in the spill log (it writes no ack entries, so any id will do).
const SPILL_ID: u32 = 1;

/// A ready message: in memory, or paged out.
#[derive(Debug)]
pub enum Slot {
    Mem(QEntry),
    Disk(DiskEntry),
}

impl Slot {
    /// When it entered the queue (`stats::coarse_now()`).
    pub fn enqueued(&self) -> u32 {
        match self {
            Slot::Mem(e) => e.enqueued,
            Slot::Disk(d) => d.enqueued,
        }
    }

    pub fn seq(&self) -> u64 {
        match self {
            Slot::Mem(e) => e.seq,
            Slot::Disk(d) => d.seq,
        }
    }

    /// Body bytes.
    pub fn size(&self) -> u64 {
        match self {
            Slot::Mem(e) => e.msg.body_size() as u64,
            Slot::Disk(d) => d.size as u64,
        }
    }

    pub fn expires(&self) -> Option<u64> {
        match self {
            Slot::Mem(e) => e.expires,
            Slot::Disk(d) => d.expires,
        }
    }

    /// What it counts against the RAM budget.
    pub fn ram(&self) -> u64 {
        match self {
            Slot::Mem(e) => e.msg.body_size() as u64 + ENTRY_OVERHEAD,
            Slot::Disk(_) => 0,
        }
    }
}

/// A message again from its record (None if its properties no longer parse).
pub fn revive(rec: crate::store::LoadedRecord, memory: &'static MemoryMonitor) -> Option<Message> {
    let properties = Properties::parse(rec.properties).ok()?;
    Some(Message::new(
        rec.exchange,
        rec.routing_key,
        properties,
        rec.body,
        memory,
    ))
}

/// Read paged entries of queue `qid` back into memory, in order. An entry whose record cannot
/// be read (or fails its checksum) is reported, released and left out. With `spill`, `log` is
/// the spill log: records are released once read, and the entries carry no claim on them.
pub fn load(
    log: &Arc<MessageLog>,
    qid: u32,
    entries: Vec<DiskEntry>,
    memory: &'static MemoryMonitor,
    spill: bool,
) -> Vec<QEntry> {
    let claim = if spill { 0 } else { qid };
    let mut out = Vec::with_capacity(entries.len());
    let mut k = 0;
    while k < entries.len() {
        // A run of entries in the same segment, in offset order: one read.
        let seg = entries[k].segment;
        let mut end = k + 1;
        while end < entries.len()
            && entries[end].segment == seg
            && entries[end].offset > entries[end - 1].offset
        {
            end += 1;
        }
        let offsets: Vec<u32> = entries[k..end].iter().map(|d| d.offset).collect();
        // Paging in waits for the writer before it reads; dead-lettering reads at once, and may
        // find a record paged out a moment ago not written yet.
        let last = *offsets.last().expect("a run is not empty");
        if !log.wait_written(seg, last, std::time::Duration::from_secs(2)) {
            error!(
                queue_id = qid,
                segment = seg,
                "message log writes lag behind"
            );
        }
        for (d, r) in entries[k..end].iter().zip(log.read(seg, &offsets)) {
            let rec = match r {
                Ok(rec) => rec,
                Err(e) => {
                    error!(queue_id = qid, spill, "{e}: message dropped, not delivered");
                    log.release(qid, d.segment, d.offset);
                    continue;
                }
            };
            if spill {
                log.release(SPILL_ID, d.segment, d.offset);
            }
            let Some(msg) = revive(rec, memory) else {
                error!(
                    queue_id = qid,
                    segment = d.segment,
                    offset = d.offset,
                    "stored message has unreadable properties: dropped"
                );
                if !spill {
                    log.release(qid, d.segment, d.offset);
                }
                continue;
            };
            if !spill {
                let _ = msg.stored.set(Stored {
                    log: log.clone(),
                    segment: d.segment,
                    offset: d.offset,
                });
            }
            // The record keeps the properties as published; a returned message carries its
            // count again.
            let msg = match d.delivery_count {
                0 => msg,
                n => crate::broker::queue::lifecycle::with_delivery_count(&msg, n).unwrap_or(msg),
            };
            out.push(QEntry {
                seq: d.seq,
                msg: Arc::new(msg),
                redelivered: d.redelivered,
                qid: claim,
                expires: d.expires,
                delivery_count: d.delivery_count,
                enqueued: d.enqueued,
            });
        }
        k = end;
    }
    out
}

impl crate::broker::queue::ready::ReadyItem for Slot {
    fn seq(&self) -> u64 {
        Slot::seq(self)
    }
    fn size(&self) -> u64 {
        Slot::size(self)
    }
    fn priority(&self) -> u8 {
        match self {
            Slot::Mem(e) => e.msg.properties.priority.unwrap_or(0),
            Slot::Disk(d) => d.priority,
        }
    }
}

impl Queue {
    /// Put a ready message at the back: in memory, or paged out when the queue is over its RAM
    /// budget and the message is stored.
    #[inline]
    pub(super) fn push_ready(&self, i: &mut Inner, e: QEntry) {
        let slot = if i.ram > self.ram_budget {
            match e.page_out() {
                Ok(d) => Slot::Disk(d),
                Err(e) => match self.spill_out(e) {
                    Ok(d) => Slot::Disk(d),
                    Err(e) => Slot::Mem(e),
                },
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

    /// Write a message not stored for this queue to the spill log, as a paged entry (the
    /// record is written by the log's writer thread; `page_in` waits for it if need be).
    fn spill_out(&self, e: QEntry) -> Result<DiskEntry, QEntry> {
        let Some(spill) = &self.spill else {
            return Err(e);
        };
        let (at, _) = crate::broker::queue::entry::append_message(
            spill,
            &[SPILL_ID],
            &e.msg,
            self.clock.wall_ms(),
        );
        Ok(DiskEntry {
            seq: e.seq,
            expires: e.expires,
            segment: at.segment,
            offset: at.offset,
            size: e.msg.body_size() as u32,
            redelivered: e.redelivered,
            priority: e.msg.properties.priority.unwrap_or(0),
            delivery_count: e.delivery_count,
            enqueued: e.enqueued,
            spill: true,
        })
    }

    /// The log a paged entry's record is in.
    fn log_of(&self, d: &DiskEntry) -> Option<&Arc<MessageLog>> {
        if d.spill {
            self.spill.as_ref()
        } else {
            self.log.as_ref()
        }
    }

    /// Read paged entries back (runs of the same log at a time), in order.
    fn load_paged(&self, entries: Vec<DiskEntry>, memory: &'static MemoryMonitor) -> Vec<QEntry> {
        let mut out = Vec::with_capacity(entries.len());
        let mut rest = entries.into_iter().peekable();
        while let Some(first) = rest.next() {
            let spill = first.spill;
            let mut run = vec![first];
            while let Some(d) = rest.next_if(|d| d.spill == spill) {
                run.push(d);
            }
            match self.log_of(&run[0]) {
                Some(log) => out.extend(load(log, self.store_id, run, memory, spill)),
                None => error!(queue = %self.name, "paged messages without their log: dropped"),
            }
        }
        out
    }

    /// Take the ready message at the head, reading it (and the paged ones after it) back from
    /// the log first if it is paged out.
    #[inline]
    pub(super) fn pop_ready(&self, i: &mut Inner) -> Option<QEntry> {
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
        i.ram -= e.msg.body_size() as u64 + crate::broker::queue::paging::ENTRY_OVERHEAD;
        Some(e)
    }

    /// Read the paged entries at the head back into memory (a batch, within the budget).
    /// Entries that cannot be read are dropped (and reported). Returns false when the head's
    /// record is not written yet (the disk is full or slow): the queue waits, and the sweeper
    /// retries (`retry_stalled`).
    pub(super) fn page_in(&self, i: &mut Inner) -> bool {
        let Some(memory) = &self.memory else {
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
            if !self
                .log_of(d)
                .is_none_or(|log| log.is_written(d.segment, d.offset))
            {
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
        let loaded = self.load_paged(batch, memory);
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
    pub(super) fn release_paged(&self, gone: &[DiskEntry]) {
        for d in gone {
            if let Some(log) = self.log_of(d) {
                log.release(self.store_id, d.segment, d.offset);
            }
        }
    }

    /// Paged entries that must die (expiry, overflow): read back to be dead-lettered when there
    /// is a dead-letter exchange, otherwise just released.
    pub(super) fn revive_dead(&self, gone: Vec<DiskEntry>) -> Vec<QEntry> {
        if gone.is_empty() {
            return Vec::new();
        }
        match (&self.dead_letter, &self.memory) {
            (Some(_), Some(memory)) => self.load_paged(gone, memory),
            _ => {
                self.release_paged(&gone);
                Vec::new()
            }
        }
    }

    /// Put back the messages found in the log at start, in log order, paged out: bodies are
    /// read back as consumers reach them. `published_at` (wall clock) lets TTLs count the time
    /// the broker was down.
    pub fn restore(self: &Arc<Self>, msgs: Vec<crate::store::RecoveredMessage>) {
        let (now_wall, now) = (self.clock.wall_ms(), self.clock.now_ms());
        // Ages count from publication, across the restart (the head's age stays truthful).
        self.clock.tick();
        let mut i = self.inner.lock();
        for m in msgs {
            let seq = i.next_seq;
            i.next_seq += 1;
            let ttl = match (self.message_ttl, m.ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let expires = ttl.map(|t| {
                now.saturating_add(t.saturating_sub(now_wall.saturating_sub(m.published_at)))
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
                enqueued: self
                    .clock
                    .stamp_ago(now_wall.saturating_sub(m.published_at)),
                spill: false,
            }));
        }
        self.ready_hint
            .store(i.ready.len() as u32, Ordering::Relaxed);
    }
}
