//! Expiry: message TTLs (`x-message-ttl`, per-message `expiration`; expired messages leave
//! wherever they are in the queue, not only at the head) and unused queues (`x-expires`).

use super::Queue;
use crate::broker::message::Message;
use crate::broker::queue::dead_letter::Reason;
use crate::broker::queue::paging::Slot;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Queue {
    /// The TTL that applies to `msg` in this queue (the smaller of queue and message TTLs).
    pub(super) fn ttl_of(&self, msg: &Message) -> Option<u64> {
        match (self.message_ttl, msg.properties.ttl_ms().ok().flatten()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Note that a message expiring at `e` is in the queue (so the sweeper looks at it).
    pub(super) fn expires_at(self: &Arc<Self>, e: u64) {
        self.next_expiry.fetch_min(e, Ordering::Relaxed);
        self.join_sweeps();
    }

    /// Put this queue on its vhost's sweeper round (once).
    pub(super) fn join_sweeps(self: &Arc<Self>) {
        if !self.swept.swap(true, Ordering::Relaxed) {
            if let Some(v) = self.vhost_ref.upgrade() {
                v.sweep_me(self);
            }
        }
    }

    /// Whether `x-expires` says this queue should go now.
    pub fn unused_for_too_long(&self, now: u64) -> bool {
        self.expires_after.is_some_and(|after| {
            self.consumers_hint.load(Ordering::Relaxed) == 0
                && now.saturating_sub(self.last_used.load(Ordering::Relaxed)) >= after
        })
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
        if !dead_paged.is_empty() {
            dead.extend(self.revive_dead(dead_paged));
            // Paged messages may be older than ones in memory (memory frees up as messages
            // leave, and newer ones stay in it): dead-letter in queue order.
            dead.sort_by_key(|e| e.seq);
        }
        if !dead.is_empty() {
            self.dead_letter(dead, Reason::Expired);
        }
    }
}
