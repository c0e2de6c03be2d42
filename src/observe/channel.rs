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
    /// Publishes received while the channel was in confirm mode (RabbitMQ's
    /// `messages_received_confirm`).
    pub publish_confirm: AtomicU64,
    /// basic.get answered with basic.get-empty.
    pub get_empty: AtomicU64,
    /// Body sizes of the publishes received (RabbitMQ's `message_size_bytes` histogram).
    pub sizes: SizeHistogram,
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

impl ChannelStats {
    /// A publish was received: its body size goes into the histogram and, in confirm mode,
    /// it counts as expecting a confirm. The channel's task is the only writer.
    #[inline]
    pub fn received(&self, body_size: usize, confirm_mode: bool) {
        self.sizes.observe(body_size as u64);
        if confirm_mode {
            bump(&self.publish_confirm, 1);
        }
    }
}

/// Upper bounds (inclusive, bytes) of the message-size buckets, as rabbitmq_prometheus has
/// them; a last bucket holds everything larger.
pub const SIZE_BOUNDS: [u64; 8] = [
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
];

/// The buckets: one per bound, plus the one above the last.
pub const SIZE_BUCKETS: usize = SIZE_BOUNDS.len() + 1;

/// The bucket of a body of `size` bytes, by arithmetic: the bounds are powers of ten up to
/// 10 MB (so the number of decimal digits of `size - 1` picks one), then 50 MB and 100 MB.
#[inline]
pub fn size_bucket(size: u64) -> usize {
    if size <= 100 {
        return 0;
    }
    match (size - 1).ilog10() as usize {
        d @ 2..=6 => d - 1,
        7 => 6 + usize::from(size > 50_000_000),
        _ => SIZE_BUCKETS - 1,
    }
}

/// A histogram of message sizes with a single writer (the channel's task): per-bucket counts
/// (not cumulative; made so when read) and the sum of sizes.
#[derive(Debug, Default)]
pub struct SizeHistogram {
    pub buckets: [AtomicU64; SIZE_BUCKETS],
    pub sum: AtomicU64,
}

impl SizeHistogram {
    #[inline]
    pub fn observe(&self, size: u64) {
        bump(&self.buckets[size_bucket(size)], 1);
        bump(&self.sum, size);
    }
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
    pub publish_confirm: u64,
    pub get_empty: u64,
    /// Publishes per size bucket (`SIZE_BOUNDS`; not cumulative) and their total size.
    pub size_buckets: [u64; SIZE_BUCKETS],
    pub size_sum: u64,
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
        self.publish_confirm += l(&s.publish_confirm);
        self.get_empty += l(&s.get_empty);
        for (out, b) in self.size_buckets.iter_mut().zip(&s.sizes.buckets) {
            *out += l(b);
        }
        self.size_sum += l(&s.sizes.sum);
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
        self.publish_confirm += o.publish_confirm;
        self.get_empty += o.get_empty;
        for (out, b) in self.size_buckets.iter_mut().zip(o.size_buckets) {
            *out += b;
        }
        self.size_sum += o.size_sum;
    }

    pub fn of(s: &ChannelStats) -> Counters {
        let mut c = Counters::default();
        c.add_stats(s);
        c
    }
}

/// A consumer as management lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerObs {
    pub tag: String,
    pub queue: String,
    pub vhost: String,
    pub exclusive: bool,
    pub ack_required: bool,
    pub prefetch: u32,
    pub priority: i64,
    /// The basic.consume arguments, as the client sent them.
    pub arguments: amq_protocol::types::FieldTable,
    /// A stream's consumer (RabbitMQ shows those as not `active`).
    pub stream: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The arithmetic bucket agrees with counting the bounds below the size, at and around
    /// every bound.
    #[test]
    fn size_bucket_matches_the_bounds() {
        let reference = |s: u64| SIZE_BOUNDS.iter().filter(|&&b| s > b).count();
        let mut sizes = vec![0, 1, 2, 99, u64::MAX];
        for b in SIZE_BOUNDS {
            sizes.extend([b - 1, b, b + 1]);
        }
        for s in sizes {
            assert_eq!(size_bucket(s), reference(s), "size {s}");
        }
        assert_eq!(size_bucket(100), 0);
        assert_eq!(size_bucket(101), 1);
        assert_eq!(size_bucket(50_000_001), 7);
        assert_eq!(size_bucket(100_000_001), 8);
    }

    #[test]
    fn received_counts_sizes_and_confirm_mode() {
        let s = ChannelStats::default();
        s.received(5, false);
        s.received(150, true);
        s.received(2_000_000, true);
        let c = Counters::of(&s);
        assert_eq!(c.size_buckets, [1, 1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(c.size_sum, 2_000_155);
        assert_eq!(c.publish_confirm, 2);
        let mut twice = c;
        twice.add(&c);
        assert_eq!(twice.size_buckets[5], 2);
    }
}
