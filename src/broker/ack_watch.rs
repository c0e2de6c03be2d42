//! Consumer acknowledgement timeouts, checked without a timer per message.
//!
//! Each delivery awaiting an ack records when it went out, read from the broker clock's coarse
//! reading (`Clock::coarse_ms`: one load per delivery, no system call). A
//! channel that has taken manual-ack deliveries registers once with its vhost's `AckWatch`; every
//! `CHECK_EVERY_MS` the watch asks each registered channel to look at its oldest unacked
//! deliveries (the unacked list is in delivery order, so only its head can have timed out).
//! Delivery stays O(1) and the check costs O(channels), not O(messages).

use crate::broker::queue::lifecycle::TimeoutAction;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;

/// How often registered channels are checked.
pub const CHECK_EVERY_MS: u64 = 100;

/// RabbitMQ's default `consumer_timeout`: 30 minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// The broker-wide defaults, from `consumer_timeout_ms` and `consumer_timeout_action`.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutDefaults {
    pub timeout_ms: u64,
    pub action: TimeoutAction,
}

impl Default for TimeoutDefaults {
    fn default() -> Self {
        TimeoutDefaults {
            timeout_ms: DEFAULT_TIMEOUT_MS,
            action: TimeoutAction::CloseChannel,
        }
    }
}

/// A channel with deliveries that may time out (implemented by the wire layer).
pub trait AckDeadlines: Send + Sync + std::fmt::Debug {
    /// Look at the oldest unacked deliveries and act on one that is overdue. Returns false once
    /// the channel is closed, so the watch forgets it.
    fn check_ack_deadlines(&self, now: u64, defaults: &TimeoutDefaults) -> bool;
}

#[derive(Debug, Default)]
pub struct AckWatch {
    channels: Mutex<Vec<Weak<dyn AckDeadlines>>>,
    defaults: Mutex<TimeoutDefaults>,
    last_check: AtomicU64,
}

impl AckWatch {
    pub fn configure(&self, defaults: TimeoutDefaults) {
        *self.defaults.lock() = defaults;
    }

    pub fn defaults(&self) -> TimeoutDefaults {
        *self.defaults.lock()
    }

    /// Watch a channel (once per channel: the caller remembers that it registered).
    pub fn watch(&self, ch: Weak<dyn AckDeadlines>) {
        self.channels.lock().push(ch);
    }

    /// Called on every sweeper tick with the broker clock's `now_ms`: every `CHECK_EVERY_MS`,
    /// checks the watched channels.
    pub fn tick(&self, now: u64) {
        let last = self.last_check.load(Ordering::Relaxed);
        if now.saturating_sub(last) < CHECK_EVERY_MS {
            return;
        }
        self.last_check.store(now, Ordering::Relaxed);
        let defaults = self.defaults();
        // Take the list out so no lock is held while channels are checked; channels that
        // register meanwhile land in the fresh list and are kept.
        let channels = std::mem::take(&mut *self.channels.lock());
        let keep: Vec<_> = channels
            .into_iter()
            .filter(|w| {
                w.upgrade()
                    .is_some_and(|ch| ch.check_ack_deadlines(now, &defaults))
            })
            .collect();
        self.channels.lock().extend(keep);
    }
}
