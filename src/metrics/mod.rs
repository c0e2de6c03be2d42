//! Message rates and Prometheus metrics.
//!
//! `Rates` samples every counter every `SAMPLE_INTERVAL` (RabbitMQ's
//! `collect_statistics_interval` is 5 s too): the global ones here, each queue's in the queue
//! itself (`Queue::sample_rates`, a few bytes per queue), so reading a rate is a lookup, never a
//! walk of the message path. Prometheus output (`scrape`) uses rabbitmq_prometheus's metric
//! names, written in the text format by `text`; `process` reads the OS's view of the process.

use crate::broker::queue::Queue;
use crate::broker::Broker;
use crate::observe::{Counters, Registry};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod process;
mod scrape;
mod text;

pub use process::{max_fds, open_fds, resident_memory};
pub use scrape::Scrape;

pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

pub use crate::broker::stats::QueueRates;

pub fn global_array(c: &Counters) -> [u64; 11] {
    [
        c.publish,
        c.routed,
        c.confirm,
        c.return_unroutable,
        c.drop_unroutable,
        c.deliver,
        c.deliver_no_ack,
        c.get,
        c.get_no_ack,
        c.ack,
        c.redeliver,
    ]
}

/// Per-second rates of the global counters (same order as `global_array`) and queue totals.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalRates {
    pub counters: [f64; 11],
    pub messages: f64,
    pub ready: f64,
    pub unacked: f64,
}

#[derive(Debug, Default)]
struct Inner {
    at: Option<Instant>,
    global: [u64; 11],
    depth: [u64; 2],
    global_rates: GlobalRates,
}

/// The global rates; each queue keeps its own (`Queue::sample_rates`).
#[derive(Debug)]
pub struct Rates {
    inner: Mutex<Inner>,
    /// When the broker started (made with it).
    started: Instant,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            inner: Default::default(),
            started: Instant::now(),
        }
    }
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs
}

fn delta(now: u64, before: u64, secs: f64) -> f64 {
    (now as f64 - before as f64) / secs
}

impl Rates {
    /// Take a sample of every counter and update the rates.
    pub fn sample(&self, broker: &Broker, registry: &Registry) {
        let now = Instant::now();
        let global = global_array(&registry.totals());
        let at = self.inner.lock().at;
        let secs = at.map(|t| now.duration_since(t).as_secs_f64().max(1e-3));
        for c in registry.list() {
            c.sample_rates(secs);
        }
        let mut depth = [0u64; 2];
        for v in broker.vhost_list() {
            for q in v.queue_list() {
                let s = q.sample_rates(secs);
                depth[0] += s.ready;
                depth[1] += s.unacked;
            }
            for e in v.exchange_list() {
                e.stats.sample(secs);
            }
        }
        let mut i = self.inner.lock();
        let mut g = GlobalRates::default();
        if let Some(secs) = secs {
            for (out, (now, before)) in g.counters.iter_mut().zip(global.iter().zip(i.global)) {
                *out = rate(*now, before, secs);
            }
            g.ready = delta(depth[0], i.depth[0], secs);
            g.unacked = delta(depth[1], i.depth[1], secs);
            g.messages = g.ready + g.unacked;
        }
        i.at = Some(now);
        i.global = global;
        i.depth = depth;
        i.global_rates = g;
    }

    /// Time since the broker started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn global(&self) -> GlobalRates {
        self.inner.lock().global_rates
    }

    /// Rates of each of `queues` as of the last sample.
    pub fn queues(&self, queues: &[Arc<Queue>]) -> Vec<QueueRates> {
        queues.iter().map(|q| q.rates()).collect()
    }
}

/// The memory a queue holds: a stream's messages are on disk, not in its memory.
pub fn queue_memory(q: &Queue, s: &crate::broker::stats::QueueSnapshot) -> u64 {
    if q.is_stream() {
        s.overhead_bytes
    } else {
        s.memory()
    }
}

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
