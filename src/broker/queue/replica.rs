//! A quorum queue's live view on its group's leader (see `broker::quorum`): filled, fed and
//! emptied by the group's state machine, never by publishes.

use super::consumers::cancel_consumers;
use super::paging::Slot;
use super::{counters, QEntry, Queue};
use crate::broker::quorum::Replica;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// Keep an entry's message in the group: dropping it must not settle it.
fn disarm(s: Slot) {
    if let Slot::Mem(mut e) = s {
        e.qid = 0;
    }
}

impl Queue {
    pub fn set_replica(&self, r: Arc<Replica>) {
        let _ = self.replica.set(r);
    }

    /// In a cluster, a quorum queue's tie to its group.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.get()
    }

    pub fn vhost_handle(&self) -> Weak<crate::broker::vhost::VHost> {
        self.vhost_ref.clone()
    }

    /// This node took the lead: the group's messages, in order, are the ready list now.
    pub fn replica_fill(self: &Arc<Self>, entries: Vec<QEntry>) {
        let mut i = self.inner.lock();
        for s in i.ready.drain() {
            disarm(s);
        }
        i.ram = 0;
        let now = self.clock.now_ms();
        for mut e in entries {
            if i.deleted {
                e.qid = 0;
                continue;
            }
            i.next_seq = i.next_seq.max(e.seq + 1);
            e.expires = self.ttl_of(&e.msg).map(|t| now.saturating_add(t));
            if let Some(x) = e.expires {
                self.expires_at(x);
            }
            self.push_ready(&mut i, e);
        }
        self.dispatch_locked_at(&mut i, Some(now));
        self.ready_hint
            .store(i.ready.len() as u32, Ordering::Relaxed);
    }

    /// This node stepped down: its view goes (the group keeps the messages), and its
    /// consumers with it. Clients' consumers follow the queue to its next leader (as RabbitMQ
    /// keeps a quorum queue's consumers); other nodes' subscriptions are cancelled (their nodes
    /// subscribe again with the next leader).
    pub fn replica_clear(&self) {
        let consumers = {
            let mut i = self.inner.lock();
            for s in i.ready.drain() {
                disarm(s);
            }
            i.ram = 0;
            self.ready_hint.store(0, Ordering::Relaxed);
            self.consumers_hint.store(0, Ordering::Relaxed);
            std::mem::take(&mut i.consumers)
        };
        self.drained.notify_waiters();
        let (follow, cancel): (Vec<_>, Vec<_>) = consumers
            .into_iter()
            .partition(|c| c.follower.get().is_some());
        for c in follow {
            if let Some(p) = c.follower.get().and_then(Weak::upgrade) {
                p.stepped_down(self);
            }
        }
        cancel_consumers(cancel);
    }

    /// A message applied while this node leads: new, or returned with a new id.
    pub fn replica_push(self: &Arc<Self>, mut e: QEntry) {
        if self
            .life
            .delivery_limit
            .is_some_and(|limit| e.delivery_count as u64 > limit)
        {
            // Dropped once dead-lettered: settled in the group.
            self.dead_letter(
                vec![e],
                crate::broker::queue::dead_letter::Reason::DeliveryLimit,
            );
            return;
        }
        let mut i = self.inner.lock();
        if i.deleted {
            e.qid = 0;
            return;
        }
        let now = self.clock.now_ms();
        i.next_seq = i.next_seq.max(e.seq + 1);
        e.expires = self.ttl_of(&e.msg).map(|t| now.saturating_add(t));
        if let Some(x) = e.expires {
            self.expires_at(x);
        }
        if e.delivery_count == 0 {
            counters(&mut i).publish += 1;
        }
        self.push_ready(&mut i, e);
        self.dispatch_locked_at(&mut i, Some(now));
        let shed = self.limits.any().then(|| self.shed_over_limit(&mut i));
        self.ready_hint
            .store(i.ready.len() as u32, Ordering::Relaxed);
        drop(i);
        if let Some(shed) = shed {
            self.dead_letter_shed(shed);
        }
    }

    /// Messages settled through deliveries of an earlier leadership: out of the ready list.
    pub fn replica_remove(&self, ids: &[u64]) {
        let mut i = self.inner.lock();
        let mut ram = 0;
        i.ready.retain(
            |s| !ids.contains(&s.seq()),
            |s| {
                ram += s.ram();
                disarm(s)
            },
        );
        i.ram = i.ram.saturating_sub(ram);
        self.ready_hint
            .store(i.ready.len() as u32, Ordering::Relaxed);
    }
}
