//! The one clock of a broker. Everything that measures time in the model reads it: message TTLs
//! and `x-expires`, delayed delivery, consumer acknowledgement timeouts, message ages, the
//! deduplication caches, and the publish times written to the message log.
//!
//! Three readings:
//! - `now_ms`: milliseconds on a monotonic clock since the broker started (TTLs, delays);
//! - `coarse_ms` / `coarse_cs`: `now_ms` as of the last `tick` (the sweeper ticks every 20 ms),
//!   one atomic load and no system call, for stamps taken per message (arrival for ages,
//!   delivery for ack deadlines);
//! - `wall_ms`: milliseconds since the Unix epoch (publish times kept across restarts).
//!
//! Tests drive it: `advance` moves all three forward at once, so a test can expire a message
//! with a one-minute TTL without waiting a minute, and without touching other brokers in the
//! same process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Units of the coarse stamps: centiseconds (10 ms).
pub const COARSE_UNITS_PER_SEC: u32 = 100;

#[derive(Debug)]
pub struct Clock {
    start: Instant,
    /// Time added by `advance`, in ms.
    skew_ms: AtomicU64,
    /// `now_ms` at the last `tick` (0: never ticked).
    coarse_ms: AtomicU64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            start: Instant::now(),
            skew_ms: AtomicU64::new(0),
            coarse_ms: AtomicU64::new(0),
        }
    }
}

impl Clock {
    /// Milliseconds since the broker started (monotonic, plus what `advance` added).
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + self.skew_ms.load(Ordering::Relaxed)
    }

    /// Milliseconds since the Unix epoch (plus what `advance` added).
    pub fn wall_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        wall + self.skew_ms.load(Ordering::Relaxed)
    }

    /// Read the clock into the coarse reading (which never goes back). Returns `now_ms`.
    pub fn tick(&self) -> u64 {
        let now = self.now_ms().max(1);
        self.coarse_ms.fetch_max(now, Ordering::Relaxed).max(now)
    }

    /// `now_ms` as of the last `tick` (at most a few tens of ms behind).
    #[inline]
    pub fn coarse_ms(&self) -> u64 {
        match self.coarse_ms.load(Ordering::Relaxed) {
            0 => self.tick(),
            n => n,
        }
    }

    /// The coarse reading in centiseconds, as a `u32` stamp (fits what would be padding in a
    /// queue entry). Stamps wrap after 497 days; ages are differences (`wrapping_sub`), so they
    /// stay right for anything younger than that.
    #[inline]
    pub fn coarse_cs(&self) -> u32 {
        (self.coarse_ms() / 10) as u32
    }

    /// The stamp of a moment `ms` milliseconds ago (which may be before the broker started).
    /// Ages beyond 248 days are kept at that.
    pub fn stamp_ago(&self, ms: u64) -> u32 {
        let cs = (ms / (1000 / COARSE_UNITS_PER_SEC as u64)).min(u32::MAX as u64 / 2) as u32;
        self.coarse_cs().wrapping_sub(cs)
    }

    /// Seconds since a stamp.
    pub fn age_secs(&self, stamp: u32) -> f64 {
        self.coarse_cs().wrapping_sub(stamp) as f64 / COARSE_UNITS_PER_SEC as f64
    }

    /// Move time forward by `d` (for tests: the sweeper sees it at its next tick).
    pub fn advance(&self, d: Duration) {
        self.skew_ms
            .fetch_add(d.as_millis() as u64, Ordering::Relaxed);
        self.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_every_reading_and_coarse_never_goes_back() {
        let c = Clock::default();
        let (now, wall, coarse) = (c.now_ms(), c.wall_ms(), c.coarse_ms());
        c.advance(Duration::from_secs(3600));
        assert!(c.now_ms() >= now + 3_600_000);
        assert!(c.wall_ms() >= wall + 3_600_000);
        assert!(c.coarse_ms() >= coarse.max(now + 1) + 3_599_999);
        let stamp = c.stamp_ago(90_000);
        assert!((c.age_secs(stamp) - 90.0).abs() < 0.02);
        let before = c.coarse_ms();
        c.tick();
        assert!(c.coarse_ms() >= before);
    }
}
