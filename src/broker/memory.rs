//! The memory alarm: Warren counts the bytes of every message alive in the broker (in queues,
//! unacknowledged, or being written) and, above the high watermark, stops reading from publishing
//! connections — telling them with connection.blocked, as RabbitMQ does — until consumers and
//! deletions bring it back under the low watermark (90% of the high one).
//!
//! Counting is exact and cheap: a message adds its size when it is assembled and subtracts it
//! when the last reference to it goes (`Drop`), whatever path removed it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::Notify;
use tracing::{info, warn};

/// An on/off resource alarm that publishers can wait on (the memory and disk alarms).
#[derive(Debug, Default)]
pub struct Alarm {
    on: AtomicBool,
    cleared: Notify,
}

impl Alarm {
    /// Turn the alarm on; true if it was off.
    pub fn set(&self) -> bool {
        !self.on.swap(true, Ordering::SeqCst)
    }

    /// Turn the alarm off, waking waiters; true if it was on.
    pub fn clear(&self) -> bool {
        let was = self.on.load(Ordering::Relaxed) && self.on.swap(false, Ordering::SeqCst);
        if was {
            self.cleared.notify_waiters();
        }
        was
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// Wait until the alarm is off.
    pub async fn wait_clear(&self) {
        loop {
            let notified = self.cleared.notified();
            if !self.is_on() {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
pub struct MemoryMonitor {
    used: AtomicU64,
    high: u64,
    low: u64,
    alarm: Alarm,
}

impl MemoryMonitor {
    pub fn new(high: u64) -> Self {
        MemoryMonitor {
            used: AtomicU64::new(0),
            high,
            low: high / 10 * 9,
            alarm: Alarm::default(),
        }
    }

    /// Bytes of messages alive now.
    /// The broker's account, which every message refers to for as long as it lives: made
    /// once per broker and never freed (a message holds a plain reference, no count to keep).
    pub fn leak(high: u64) -> &'static MemoryMonitor {
        Box::leak(Box::new(MemoryMonitor::new(high)))
    }

    /// An account without a limit, shared (tests, and vhosts that are not a broker's).
    pub fn unlimited() -> &'static MemoryMonitor {
        static UNLIMITED: std::sync::OnceLock<MemoryMonitor> = std::sync::OnceLock::new();
        UNLIMITED.get_or_init(|| MemoryMonitor::new(u64::MAX))
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Once per message made (inlined: the alarm's part is out of line).
    #[inline]
    pub fn add(&self, n: u64) {
        let now = self.used.fetch_add(n, Ordering::Relaxed) + n;
        if now > self.high {
            self.over_high(now);
        }
    }

    #[cold]
    fn over_high(&self, now: u64) {
        if !self.alarm.is_on() && self.alarm.set() {
            warn!(
                used = now,
                high_watermark = self.high,
                "memory alarm set: message bytes above the high watermark; publishers are blocked"
            );
        }
    }

    /// Once per message gone (inlined, as `add`).
    #[inline]
    pub fn sub(&self, n: u64) {
        let now = self.used.fetch_sub(n, Ordering::Relaxed) - n;
        if now <= self.low && self.alarm.on.load(Ordering::Relaxed) {
            self.under_low(now);
        }
    }

    #[cold]
    fn under_low(&self, now: u64) {
        if self.alarm.clear() {
            info!(used = now, "memory alarm cleared; publishers resume");
        }
    }

    pub fn alarmed(&self) -> bool {
        self.alarm.is_on()
    }

    /// Wait until the alarm is clear.
    pub async fn wait_clear(&self) {
        self.alarm.wait_clear().await
    }
}

/// Total physical memory, from /proc/meminfo (None where it cannot be read).
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_sets_above_high_and_clears_below_low() {
        let m = MemoryMonitor::new(1000);
        m.add(900);
        assert!(!m.alarmed());
        m.add(200);
        assert!(m.alarmed());
        m.sub(150); // 950: above the low mark (900)
        assert!(m.alarmed());
        m.sub(100); // 850
        assert!(!m.alarmed());
        assert_eq!(m.used(), 850);
    }

    #[test]
    fn reads_total_memory() {
        assert!(total_memory().unwrap_or(1) > 0);
    }
}
