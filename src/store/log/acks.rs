//! Ack files: what happened to a segment's records after they were written, appended by the
//! writer with each batch (written, not fdatasynced of their own), and read back at recovery.
//!
//! `NNNNNNNN.ack`, beside its segment: 8-byte entries `[record offset u32][queue id u32]`; the top
//! bit of the queue id set means "delivered" (recovered unacked with redelivered=true), the next
//! bit "returned once more" (a delivery that came back, counted towards `x-delivery-limit`; one
//! entry per return), neither means "gone from that queue" (acked, dropped, expired, purged or
//! the queue deleted). A release that empties a segment other than the current one deletes it
//! (with its ack file) instead of writing an entry.
//!
//! Entries and deletions do not need a round of their own: they go with the next round of
//! records, or after `writer::MARK_DELAY` when no record comes.

use super::{ack_path, io_err, MessageLog};
use crate::store::StoreError;
use bytes::BufMut;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use tracing::warn;

const DELIVERED: u32 = 1 << 31;
const RETURNED: u32 = 1 << 30;
/// Largest queue id: the top two bits of an ack entry's queue id are its flags.
pub const MAX_QUEUE_ID: u32 = RETURNED - 1;

impl MessageLog {
    /// The message at (`segment`, `offset`) is gone from queue `queue`.
    pub fn release(&self, queue: u32, segment: u32, offset: u32) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut s = self.state.lock();
        let idle = s.batch.is_empty();
        let Some(count) = s.live.get_mut(&segment) else {
            warn!(
                segment,
                offset, queue, "release of a message in an unknown segment"
            );
            return;
        };
        *count = count.saturating_sub(1);
        let dead = *count == 0 && segment != s.current;
        if dead {
            s.live.remove(&segment);
            s.batch.deletes.push(segment);
        } else if !self.options.scratch {
            let b = s.batch.ack_buf(segment);
            b.put_u32_le(offset);
            b.put_u32_le(queue);
        }
        drop(s);
        // Only the first entry of a batch wakes the writer (an entry left unannounced could
        // wait for the next record however long that takes): the writer then waits
        // `MARK_DELAY` for a round of records to ride with (see `run_writer`).
        if idle {
            self.wake.notify_one();
        }
    }

    /// The message at (`segment`, `offset`) was delivered from queue `queue` (so a restart
    /// before its ack brings it back with redelivered=true).
    pub fn delivered(&self, queue: u32, segment: u32, offset: u32) {
        self.mark(segment, offset, queue | DELIVERED);
    }

    /// A delivery of the message at (`segment`, `offset`) from queue `queue` came back: one more
    /// towards its `x-delivery-count`, which a restart keeps.
    pub fn returned(&self, queue: u32, segment: u32, offset: u32) {
        self.mark(segment, offset, queue | RETURNED);
    }

    /// An ack-file entry that does not release the record (a flagged queue id).
    fn mark(&self, segment: u32, offset: u32, flagged_queue: u32) {
        if self.closed.load(Ordering::Relaxed) || self.options.scratch {
            return;
        }
        let mut s = self.state.lock();
        let idle = s.batch.is_empty();
        let b = s.batch.ack_buf(segment);
        b.put_u32_le(offset);
        b.put_u32_le(flagged_queue);
        drop(s);
        // As `release`: the first entry wakes the writer, which gives it `MARK_DELAY`.
        if idle {
            self.wake.notify_one();
        }
    }
}

/// A segment's ack file read back, keyed by (record offset, queue id).
#[derive(Debug, Default)]
pub(super) struct Acks {
    /// Gone from that queue.
    pub(super) acked: HashSet<(u32, u32)>,
    /// Delivered and not acknowledged.
    pub(super) delivered: HashSet<(u32, u32)>,
    /// How many deliveries came back.
    pub(super) returned: HashMap<(u32, u32), u32>,
}

/// Read the ack file of segment `n` (none: nothing happened to its records).
pub(super) fn read_acks(dir: &Path, n: u32) -> Result<Acks, StoreError> {
    let mut acks = Acks::default();
    let apath = ack_path(dir, n);
    match std::fs::read(&apath) {
        Ok(a) => {
            for e in a.chunks_exact(8) {
                let off = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
                let q = u32::from_le_bytes(e[4..].try_into().expect("4 bytes"));
                if q & DELIVERED != 0 {
                    acks.delivered.insert((off, q & !DELIVERED));
                } else if q & RETURNED != 0 {
                    *acks.returned.entry((off, q & !RETURNED)).or_default() += 1;
                } else {
                    acks.acked.insert((off, q));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&apath, e)),
    }
    Ok(acks)
}
