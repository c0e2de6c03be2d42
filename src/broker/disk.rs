//! The disk alarm: when free space on the data directory's filesystem falls under
//! `disk_free_limit_bytes` (50 MB by default, as RabbitMQ), or the message log cannot write,
//! publishing connections are blocked (connection.blocked "low on disk") until space returns.
//! Consumers keep draining meanwhile, which is what frees the space.

use crate::broker::memory::Alarm;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::{info, warn};

#[derive(Debug)]
pub struct DiskMonitor {
    dir: PathBuf,
    limit: AtomicU64,
    alarm: Alarm,
    free: AtomicU64,
}

impl DiskMonitor {
    pub fn new(dir: PathBuf, limit: u64) -> Self {
        DiskMonitor {
            dir,
            limit: AtomicU64::new(limit),
            alarm: Alarm::default(),
            free: AtomicU64::new(u64::MAX),
        }
    }

    /// Change the free-space limit (bytes) at run time.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The free-space limit in bytes (below it the alarm is on).
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Free bytes at the last check.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Measure free space; `log_failing` says the message log's writes are failing.
    pub fn check(&self, log_failing: bool) {
        let free = fs2::available_space(&self.dir).unwrap_or(u64::MAX);
        self.free.store(free, Ordering::Relaxed);
        let limit = self.limit.load(Ordering::Relaxed);
        let low = free < limit || log_failing;
        if low && self.alarm.set() {
            warn!(free, limit, log_failing, dir = %self.dir.display(),
                "disk alarm set: free disk space is below the limit; publishers are blocked");
        } else if !low && self.alarm.clear() {
            info!(free, "disk alarm cleared; publishers resume");
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
