//! Login attempts: counted per protocol (RabbitMQ's auth attempt metrics), and slowed down per
//! source address.
//!
//! Every failed login from an address raises that address's *level* by one; every quiet
//! `QUIET` without a failure takes one off. While an address has a level, each of its login
//! attempts — failed or not — waits `base × 2^(level − 1)` (capped at `max`) before the broker
//! answers it, so that an early answer cannot tell a guesser that it guessed right. A failure
//! raises the level before its own wait, so a burst of bad passwords from one address waits
//! 100 ms, 200 ms, 400 ms … up to the cap, and parallel guesses escalate together. Other
//! addresses are not affected.
//!
//! The wait is the caller's to take (an async sleep in the connection's or the request's own
//! task): nothing here holds a lock beyond a table lookup. The table is bounded
//! (`MAX_ADDRESSES`): when full, addresses that have cooled down are dropped first, then the one
//! quiet the longest. IPv6 sources are grouped by their /64 (one host usually has a whole
//! prefix), IPv4-mapped IPv6 ones by the IPv4 address.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long an address must stay without failures for its level to drop by one.
pub const QUIET: Duration = Duration::from_secs(10);
/// Addresses tracked at most.
pub const MAX_ADDRESSES: usize = 4096;

/// Where a login came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Amqp091,
    Http,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Amqp091, Protocol::Http];

    /// The `protocol` label RabbitMQ uses.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Amqp091 => "amqp091",
            Protocol::Http => "http",
        }
    }
}

/// Attempts of one protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttemptCounts {
    pub succeeded: u64,
    pub failed: u64,
}

impl AttemptCounts {
    pub fn total(&self) -> u64 {
        self.succeeded + self.failed
    }
}

#[derive(Debug, Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    level: u32,
    last_failure: Instant,
}

impl Entry {
    /// The level once the quiet periods since the last failure are taken off.
    fn level_at(&self, now: Instant) -> u32 {
        let quiet = now.saturating_duration_since(self.last_failure).as_nanos() / QUIET.as_nanos();
        self.level
            .saturating_sub(quiet.min(u32::MAX as u128) as u32)
    }
}

/// The counters and the per-address table (one per broker).
#[derive(Debug)]
pub struct Logins {
    base: Duration,
    max: Duration,
    /// The level at which the delay reaches `max`: levels stop growing there, so that an
    /// address decays from the cap in `max_level` quiet periods.
    max_level: u32,
    counters: [Counters; 2],
    table: Mutex<HashMap<IpAddr, Entry>>,
}

impl Logins {
    /// Failures wait `base`, doubling per failure up to `max`; a zero `base` turns the delay off
    /// (attempts are still counted).
    pub fn new(base: Duration, max: Duration) -> Logins {
        let max = max.max(base);
        let mut max_level = 1;
        while !base.is_zero() && base.saturating_mul(1 << (max_level - 1)) < max && max_level < 31 {
            max_level += 1;
        }
        Logins {
            base,
            max,
            max_level,
            counters: Default::default(),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Count one login attempt of `protocol`.
    pub fn count(&self, protocol: Protocol, ok: bool) {
        let c = &self.counters[protocol as usize];
        if ok {
            c.succeeded.fetch_add(1, Ordering::Relaxed);
        } else {
            c.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn counts(&self, protocol: Protocol) -> AttemptCounts {
        let c = &self.counters[protocol as usize];
        AttemptCounts {
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// Failed logins over all protocols.
    pub fn failed_total(&self) -> u64 {
        Protocol::ALL.iter().map(|p| self.counts(*p).failed).sum()
    }

    /// A login from `ip` failed (`failed`) or passed: how long to wait before answering it.
    pub fn delay(&self, ip: IpAddr, failed: bool) -> Duration {
        self.delay_at(ip, failed, Instant::now())
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.table.lock().len()
    }

    fn delay_at(&self, ip: IpAddr, failed: bool, now: Instant) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        let key = source_key(ip);
        let mut t = self.table.lock();
        let level = if failed {
            if !t.contains_key(&key) && t.len() >= MAX_ADDRESSES {
                make_room(&mut t, now);
            }
            let e = t.entry(key).or_insert(Entry {
                level: 0,
                last_failure: now,
            });
            e.level = (e.level_at(now) + 1).min(self.max_level);
            e.last_failure = now;
            e.level
        } else {
            match t.get(&key) {
                Some(e) => e.level_at(now),
                None => 0,
            }
        };
        drop(t);
        self.wait_for(level)
    }

    fn wait_for(&self, level: u32) -> Duration {
        if level == 0 {
            return Duration::ZERO;
        }
        self.base
            .saturating_mul(1u32 << (level - 1).min(30))
            .min(self.max)
    }
}

/// Drop the addresses that have cooled down; if none has, the one quiet the longest.
fn make_room(t: &mut HashMap<IpAddr, Entry>, now: Instant) {
    t.retain(|_, e| e.level_at(now) > 0);
    if t.len() >= MAX_ADDRESSES {
        if let Some(k) = t
            .iter()
            .min_by_key(|(_, e)| e.last_failure)
            .map(|(k, _)| *k)
        {
            t.remove(&k);
        }
    }
}

/// The key an address is tracked under.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn logins() -> Logins {
        Logins::new(100 * MS, 5000 * MS)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_double_the_delay_up_to_the_cap() {
        let l = logins();
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        let waits: Vec<u64> = (0..10)
            .map(|_| l.delay_at(a, true, t0).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        // A correct password from the same address waits as long as the last failure did …
        assert_eq!(l.delay_at(a, false, t0), 5000 * MS);
        // … and does not reset the address.
        assert_eq!(l.delay_at(a, true, t0), 5000 * MS);
        // Another address is not affected.
        assert_eq!(l.delay_at(ip("10.0.0.2"), false, t0), Duration::ZERO);
    }

    #[test]
    fn quiet_periods_decay_the_level() {
        let l = logins();
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            l.delay_at(a, true, t0);
        }
        assert_eq!(l.delay_at(a, false, t0), 400 * MS);
        assert_eq!(l.delay_at(a, false, t0 + QUIET), 200 * MS);
        assert_eq!(l.delay_at(a, false, t0 + QUIET * 2), 100 * MS);
        assert_eq!(l.delay_at(a, false, t0 + QUIET * 3), Duration::ZERO);
        // From the cap, `max_level` quiet periods clear it.
        for _ in 0..20 {
            l.delay_at(a, true, t0);
        }
        assert_eq!(l.delay_at(a, false, t0 + QUIET * 7), Duration::ZERO);
        assert_eq!(l.delay_at(a, false, t0 + QUIET * 6), 100 * MS);
        // A failure after a quiet spell starts from the decayed level.
        assert_eq!(l.delay_at(a, true, t0 + QUIET * 6), 200 * MS);
    }

    #[test]
    fn the_table_is_bounded() {
        let l = logins();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.delay_at(a, true, t0 + MS * i);
        }
        assert_eq!(l.tracked(), MAX_ADDRESSES);
        // The oldest went first; the newest are kept.
        assert_eq!(
            l.delay_at(IpAddr::V4(0x0a00_0000.into()), false, t0 + QUIET / 2),
            Duration::ZERO
        );
        let newest = IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_ADDRESSES as u32 + 99,
        ));
        assert_eq!(l.delay_at(newest, false, t0 + QUIET / 2), 100 * MS);
        // Cooled-down addresses make room all at once.
        l.delay_at(ip("192.168.0.1"), true, t0 + QUIET * 2);
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn ipv6_counts_per_prefix_and_mapped_ipv4_as_ipv4() {
        let l = logins();
        let t0 = Instant::now();
        l.delay_at(ip("2001:db8:1:2::1"), true, t0);
        assert_eq!(l.delay_at(ip("2001:db8:1:2::ffff"), true, t0), 200 * MS);
        assert_eq!(l.delay_at(ip("2001:db8:1:3::1"), false, t0), Duration::ZERO);
        l.delay_at(ip("10.1.1.1"), true, t0);
        assert_eq!(l.delay_at(ip("::ffff:10.1.1.1"), false, t0), 100 * MS);
    }

    #[test]
    fn zero_base_turns_the_delay_off_but_still_counts() {
        let l = Logins::new(Duration::ZERO, 5000 * MS);
        assert_eq!(l.delay(ip("10.0.0.1"), true), Duration::ZERO);
        assert_eq!(l.tracked(), 0);
        l.count(Protocol::Http, false);
        l.count(Protocol::Http, true);
        l.count(Protocol::Amqp091, false);
        assert_eq!(
            l.counts(Protocol::Http),
            AttemptCounts {
                succeeded: 1,
                failed: 1
            }
        );
        assert_eq!(l.failed_total(), 2);
    }
}
