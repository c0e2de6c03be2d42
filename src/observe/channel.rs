//! One channel as management sees it: message counters (RabbitMQ's channel `message_stats`),
//! settings, the deliveries it holds and its consumers. The wire layer writes it; the management
//! API and metrics read it without taking any lock the message path takes.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// One channel's message counters (RabbitMQ's channel `message_stats`) and settings.
///
/// Each counter has one writer at a time: the channel's own task (publish, routed, returns,
/// confirm, get, ack) or whoever holds the channel's delivery lock (deliver, deliver_no_ack).
/// So `bump` is a plain load and store, with no locked instruction on the message path;
/// `redeliver`, written from both sides, uses `bump_shared`.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ChannelStats {
    pub publish: AtomicU64,
    pub routed: AtomicU64,
    pub confirm: AtomicU64,
    pub return_unroutable: AtomicU64,
    pub drop_unroutable: AtomicU64,
    pub deliver: AtomicU64,
    pub deliver_no_ack: AtomicU64,
    pub get: AtomicU64,
    pub get_no_ack: AtomicU64,
    pub ack: AtomicU64,
    pub redeliver: AtomicU64,
    /// basic.qos global=false prefetch (the channel's per-consumer default).
    pub prefetch: AtomicU32,
    /// basic.qos global=true prefetch (0: none).
    pub global_prefetch: AtomicU32,
    /// Deliveries awaiting acknowledgement (stored under the channel's delivery lock).
    pub unacked: AtomicU32,
    /// Publishes in confirm mode not yet confirmed (the channel's task).
    pub unconfirmed: AtomicU32,
    pub confirm_mode: AtomicBool,
    pub transactional: AtomicBool,
}

/// Add to a counter that has a single writer at a time (see `ChannelStats`).
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Add to a counter written from more than one place.
#[inline]
pub fn bump_shared(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Plain sums of `ChannelStats` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub publish: u64,
    pub routed: u64,
    pub confirm: u64,
    pub return_unroutable: u64,
    pub drop_unroutable: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub ack: u64,
    pub redeliver: u64,
}

impl Counters {
    pub fn add_stats(&mut self, s: &ChannelStats) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.publish += l(&s.publish);
        self.routed += l(&s.routed);
        self.confirm += l(&s.confirm);
        self.return_unroutable += l(&s.return_unroutable);
        self.drop_unroutable += l(&s.drop_unroutable);
        self.deliver += l(&s.deliver);
        self.deliver_no_ack += l(&s.deliver_no_ack);
        self.get += l(&s.get);
        self.get_no_ack += l(&s.get_no_ack);
        self.ack += l(&s.ack);
        self.redeliver += l(&s.redeliver);
    }

    pub fn add(&mut self, o: &Counters) {
        self.publish += o.publish;
        self.routed += o.routed;
        self.confirm += o.confirm;
        self.return_unroutable += o.return_unroutable;
        self.drop_unroutable += o.drop_unroutable;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.ack += o.ack;
        self.redeliver += o.redeliver;
    }

    pub fn of(s: &ChannelStats) -> Counters {
        let mut c = Counters::default();
        c.add_stats(s);
        c
    }
}

/// A consumer as management lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerObs {
    pub tag: String,
    pub queue: String,
    pub vhost: String,
    pub exclusive: bool,
    pub ack_required: bool,
    pub prefetch: u32,
    pub priority: i64,
}

/// One open channel: its number, counters and consumers.
#[derive(Debug, Default)]
pub struct ChannelObs {
    pub number: u16,
    pub stats: ChannelStats,
    /// Written when consumers come and go (never per message).
    consumers: Mutex<Vec<ConsumerObs>>,
}

impl ChannelObs {
    pub fn new(number: u16) -> Self {
        ChannelObs {
            number,
            ..Default::default()
        }
    }

    pub fn consumer_added(&self, c: ConsumerObs) {
        self.consumers.lock().push(c);
    }

    pub fn consumer_removed(&self, tag: &str) {
        self.consumers.lock().retain(|c| c.tag != tag);
    }

    pub fn consumers_cleared(&self) {
        self.consumers.lock().clear();
    }

    pub fn consumers(&self) -> Vec<ConsumerObs> {
        self.consumers.lock().clone()
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.lock().len()
    }

    /// Deliveries awaiting acknowledgement.
    pub fn unacked(&self) -> u32 {
        self.stats.unacked.load(Ordering::Relaxed)
    }
}
