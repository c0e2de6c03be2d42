//! Length limits: `x-max-length` / `x-max-length-bytes` with `x-overflow` drop-head,
//! reject-publish or reject-publish-dlx.

use super::{Inner, Queue};
use crate::broker::queue::dead_letter::Reason;
use crate::broker::queue::entry::QEntry;
use crate::broker::queue::paging::{DiskEntry, Slot};
use amq_protocol::types::FieldTable;

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
    pub(super) fn from_args(args: &FieldTable) -> Self {
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

    /// Whether the queue has a length limit at all (most have none: nothing to check then).
    #[inline]
    pub(super) fn any(&self) -> bool {
        self.max_length.is_some() || self.max_length_bytes.is_some()
    }

    pub(super) fn over(&self, len: usize, bytes: u64) -> bool {
        self.max_length.is_some_and(|m| len as u64 > m)
            || self.max_length_bytes.is_some_and(|m| bytes > m)
    }
}

impl Queue {
    /// A message a full queue refused: with `x-overflow: reject-publish-dlx` it is dead-lettered.
    #[cold]
    pub(super) fn refused(&self, entry: QEntry) {
        if self.limits.overflow == Overflow::RejectPublishDlx {
            self.dead_letter(vec![entry], Reason::Maxlen);
        }
    }

    /// Take the oldest ready messages out while the queue is over its length limits (ready
    /// messages only count, as in RabbitMQ). The caller dead-letters them with
    /// `dead_letter_shed` once the lock is released.
    pub(super) fn shed_over_limit(&self, i: &mut Inner) -> Shed {
        let mut shed = Shed::default();
        while self.limits.over(i.ready.len(), i.ready.bytes()) {
            let Some(old) = i.ready.pop_front() else {
                break;
            };
            i.ram -= old.ram();
            match old {
                Slot::Mem(e) => shed.mem.push(e),
                Slot::Disk(d) => {
                    i.paged -= 1;
                    shed.paged.push(d);
                }
            }
        }
        shed
    }

    /// Dead-letter (or drop) what `shed_over_limit` took out (reason `maxlen`). Never called with
    /// the queue's lock held.
    pub(super) fn dead_letter_shed(&self, shed: Shed) {
        let mut dead = shed.mem;
        if !shed.paged.is_empty() {
            dead.extend(self.revive_dead(shed.paged));
            dead.sort_by_key(|e| e.seq); // in queue order (see `sweep_expired`)
        }
        if !dead.is_empty() {
            self.dead_letter(dead, Reason::Maxlen);
        }
    }
}

/// Ready messages taken out over a length limit.
#[derive(Debug, Default)]
pub(super) struct Shed {
    mem: Vec<QEntry>,
    paged: Vec<DiskEntry>,
}
