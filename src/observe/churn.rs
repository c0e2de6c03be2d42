//! Objects created and deleted since the broker started (RabbitMQ's churn counters:
//! `rabbitmq_queues_declared_total` and friends). Written by the model where the events happen.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Churn {
    /// queue.declare (and the API's declares) that succeeded, new queue or not.
    pub queues_declared: AtomicU64,
    pub queues_created: AtomicU64,
    pub queues_deleted: AtomicU64,
}

impl Churn {
    pub fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
