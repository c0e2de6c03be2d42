//! Counters for the management API and Prometheus, kept where they are cheap to keep.
//!
//! Per-queue counters are plain integers inside the queue's state, bumped under the queue lock
//! the message path already holds; nothing here is a shared atomic on the hot path. The coarse
//! clock is one atomic that a background ticker writes every few milliseconds and enqueues only
//! read, so stamping a message with its arrival time costs no system call.

use std::sync::atomic::{AtomicU32, Ordering};

/// Units of the coarse clock: centiseconds (10 ms).
pub const COARSE_UNITS_PER_SEC: u32 = 100;

static COARSE_NOW: AtomicU32 = AtomicU32::new(0);

/// The coarse clock, in centiseconds since the process started. It wraps after 497 days; ages
/// are computed with `wrapping_sub`, so they stay right for anything younger than that.
#[inline]
pub fn coarse_now() -> u32 {
    COARSE_NOW.load(Ordering::Relaxed)
}

/// Advance the coarse clock (the stats ticker calls this).
pub fn tick_coarse_clock() {
    let cs = (crate::broker::queue::now_ms() / 10) as u32;
    COARSE_NOW.store(cs, Ordering::Relaxed);
}

/// Seconds elapsed since a coarse-clock stamp.
pub fn age_secs(stamp: u32) -> f64 {
    coarse_now().wrapping_sub(stamp) as f64 / COARSE_UNITS_PER_SEC as f64
}

/// What happened in one queue since it was declared (RabbitMQ's queue `message_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Messages enqueued (published or dead-lettered into it).
    pub publish: u64,
    /// Delivered to consumers that must ack.
    pub deliver: u64,
    /// Delivered to no-ack consumers.
    pub deliver_no_ack: u64,
    /// Fetched by basic.get that must be acked.
    pub get: u64,
    /// Fetched by basic.get with no-ack.
    pub get_no_ack: u64,
    /// Deliveries settled (acked, or rejected without requeue).
    pub ack: u64,
    /// Deliveries of messages that had been delivered before.
    pub redeliver: u64,
}

impl QueueCounters {
    pub fn add(&mut self, o: &QueueCounters) {
        self.publish += o.publish;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.ack += o.ack;
        self.redeliver += o.redeliver;
    }
}

/// A consistent view of one queue, taken under its lock once.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueSnapshot {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u32,
    pub ready_bytes: u64,
    /// Coarse-clock stamp of the oldest ready message, if any.
    pub head_enqueued: Option<u32>,
    /// Bytes the queue's own structures use (entries, not the shared message bodies).
    pub overhead_bytes: u64,
    pub counters: QueueCounters,
}

impl QueueSnapshot {
    /// Age of the oldest ready message in seconds (0 when the queue is empty).
    pub fn head_age_secs(&self) -> f64 {
        self.head_enqueued.map_or(0.0, age_secs)
    }

    /// An estimate of the memory the queue holds: its structures plus ready message bodies.
    pub fn memory(&self) -> u64 {
        self.overhead_bytes + self.ready_bytes
    }
}
