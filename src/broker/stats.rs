//! Counters for the management API and Prometheus, kept where they are cheap to keep.
//!
//! Per-queue counters are plain integers inside the queue's state, bumped under the queue lock
//! the message path already holds; nothing here is a shared atomic on the hot path. Arrival
//! stamps come from the broker clock's coarse reading (`clock::Clock::coarse_cs`), one atomic
//! load per message.

use std::sync::atomic::{AtomicU64, Ordering};

/// An exchange's `message_stats` as RabbitMQ counts them: messages published into it
/// (`publish_in`) and deliveries routed out of it, one per queue reached (`publish_out`); the
/// rates are taken by the sampler. Two relaxed adds on a publish that already takes the exchange's
/// routing table.
#[derive(Debug, Default)]
pub struct ExchangeStats {
    publish_in: AtomicU64,
    publish_out: AtomicU64,
    pub rates: crate::observe::RatePair,
}

impl ExchangeStats {
    #[inline]
    pub fn published(&self, queues: usize) {
        self.publish_in.fetch_add(1, Ordering::Relaxed);
        if queues > 0 {
            self.publish_out.fetch_add(queues as u64, Ordering::Relaxed);
        }
    }

    /// (publish_in, publish_out) so far.
    pub fn counts(&self) -> [u64; 2] {
        [
            self.publish_in.load(Ordering::Relaxed),
            self.publish_out.load(Ordering::Relaxed),
        ]
    }

    /// Record a rate sample, `secs` after the previous one (None: the first).
    pub fn sample(&self, secs: Option<f64>) {
        self.rates.sample(self.counts(), secs);
    }
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
    /// Seconds the oldest ready message has waited (0 when the queue is empty).
    pub head_age: f64,
    /// Bytes the queue's own structures use (entries, not the shared message bodies).
    pub overhead_bytes: u64,
    pub counters: QueueCounters,
}

impl QueueSnapshot {
    /// Age of the oldest ready message in seconds (0 when the queue is empty).
    pub fn head_age_secs(&self) -> f64 {
        self.head_age
    }

    /// An estimate of the memory the queue holds: its structures plus ready message bodies.
    pub fn memory(&self) -> u64 {
        self.overhead_bytes + self.ready_bytes
    }
}

/// A queue's counters and rate state (boxed inside the queue once it has had a message).
#[derive(Debug, Default)]
pub struct QueueStats {
    pub counters: QueueCounters,
    pub rates: RateState,
}

/// Per-second rates of a queue's counters and depths.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueRates {
    /// In `QueueCounters` order: publish, deliver, deliver_no_ack, get, get_no_ack, ack,
    /// redeliver.
    pub counters: [f64; 7],
    pub messages: f64,
    pub ready: f64,
    pub unacked: f64,
}

impl QueueRates {
    pub const PUBLISH: usize = 0;
    pub const DELIVER: usize = 1;
    pub const DELIVER_NO_ACK: usize = 2;
    pub const GET: usize = 3;
    pub const GET_NO_ACK: usize = 4;
    pub const ACK: usize = 5;
    pub const REDELIVER: usize = 6;
}

/// What a queue keeps for its rates, small because brokers have many mostly idle queues: the
/// low 32 bits of its counters and depths at the last sample (differences over one sampling
/// interval fit in them), and the rates themselves only while some are not zero.
#[derive(Debug, Default)]
pub struct RateState {
    prev: [u32; 9],
    rates: Option<Box<[f32; 10]>>,
}

impl RateState {
    /// Record a sample; `secs` since the previous one (None for the broker's first sample).
    /// A queue created since the previous sample started from zero, which `prev` holds.
    pub fn update(&mut self, s: &QueueSnapshot, secs: Option<f64>) {
        let c = &s.counters;
        let cur = [
            c.publish as u32,
            c.deliver as u32,
            c.deliver_no_ack as u32,
            c.get as u32,
            c.get_no_ack as u32,
            c.ack as u32,
            c.redeliver as u32,
            s.ready as u32,
            s.unacked as u32,
        ];
        self.rates = secs.and_then(|secs| {
            let mut r = [0f32; 10];
            for (k, out) in r.iter_mut().take(7).enumerate() {
                *out = (cur[k].wrapping_sub(self.prev[k]) as f64 / secs) as f32;
            }
            r[8] = (cur[7].wrapping_sub(self.prev[7]) as i32 as f64 / secs) as f32;
            r[9] = (cur[8].wrapping_sub(self.prev[8]) as i32 as f64 / secs) as f32;
            r[7] = r[8] + r[9];
            r.iter().any(|x| *x != 0.0).then(|| Box::new(r))
        });
        self.prev = cur;
    }

    pub fn rates(&self) -> QueueRates {
        let Some(r) = self.rates.as_deref() else {
            return QueueRates::default();
        };
        let mut out = QueueRates::default();
        for (o, x) in out.counters.iter_mut().zip(r) {
            *o = *x as f64;
        }
        out.messages = r[7] as f64;
        out.ready = r[8] as f64;
        out.unacked = r[9] as f64;
        out
    }
}
