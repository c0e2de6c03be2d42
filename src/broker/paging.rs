//! Paging: a durable queue keeps the bodies of its persistent messages on disk only, beyond a
//! RAM budget per queue (`queue_ram_budget_bytes`), and reads them back from the message log in
//! batches as they reach the head of the queue — so a long backlog costs a small index entry
//! per message, not the message.
//!
//! A paged message is a `DiskEntry` in the queue's ready list: its place (seq), where its record
//! is, its body size and expiry. The queue owns it: whatever removes it without paging it back in
//! (purge, deletion, expiry without a dead-letter exchange) releases its record explicitly.

use crate::broker::memory::MemoryMonitor;
use crate::broker::message::{Message, Properties};
use crate::broker::queue::QEntry;
use crate::store::{MessageLog, Stored};
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
}

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
pub fn revive(rec: crate::store::LoadedRecord, memory: &Arc<MemoryMonitor>) -> Option<Message> {
    let properties = Properties::parse(rec.properties).ok()?;
    Some(Message::new(
        rec.exchange,
        rec.routing_key,
        properties,
        rec.body,
        memory.clone(),
    ))
}

/// Read paged entries of queue `qid` back into memory, in order. An entry whose record cannot
/// be read (or fails its checksum) is reported, released and left out.
pub fn load(
    log: &Arc<MessageLog>,
    qid: u32,
    entries: Vec<DiskEntry>,
    memory: &Arc<MemoryMonitor>,
) -> Vec<QEntry> {
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
        for (d, r) in entries[k..end].iter().zip(log.read(seg, &offsets)) {
            let rec = match r {
                Ok(rec) => rec,
                Err(e) => {
                    error!(queue_id = qid, "{e}: message dropped, not delivered");
                    log.release(qid, d.segment, d.offset);
                    continue;
                }
            };
            let Some(msg) = revive(rec, memory) else {
                error!(
                    queue_id = qid,
                    segment = d.segment,
                    offset = d.offset,
                    "stored message has unreadable properties: dropped"
                );
                log.release(qid, d.segment, d.offset);
                continue;
            };
            let _ = msg.stored.set(Stored {
                log: log.clone(),
                segment: d.segment,
                offset: d.offset,
            });
            // The record keeps the properties as published; a returned message carries its
            // count again.
            let msg = match d.delivery_count {
                0 => msg,
                n => crate::broker::lifecycle::with_delivery_count(&msg, n).unwrap_or(msg),
            };
            out.push(QEntry {
                seq: d.seq,
                msg: Arc::new(msg),
                redelivered: d.redelivered,
                qid,
                expires: d.expires,
                delivery_count: d.delivery_count,
                enqueued: d.enqueued,
            });
        }
        k = end;
    }
    out
}

impl crate::broker::ready::ReadyItem for Slot {
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
