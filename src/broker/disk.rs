//! The disk alarm: when free space on the data directory's filesystem falls under
//! `disk_free_limit_bytes` (50 MB by default, as RabbitMQ), or the message log cannot write,
//! publishing connections are blocked (connection.blocked "low on disk") until space returns.
//! Consumers keep draining meanwhile, which is what frees the space.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::Notify;
use tracing::{info, warn};

#[derive(Debug)]
pub struct DiskMonitor {
    dir: PathBuf,
    limit: AtomicU64,
    alarm: AtomicBool,
    free: AtomicU64,
    cleared: Notify,
}

impl DiskMonitor {
    pub fn new(dir: PathBuf, limit: u64) -> Self {
        DiskMonitor {
            dir,
            limit: AtomicU64::new(limit),
            alarm: AtomicBool::new(false),
            free: AtomicU64::new(u64::MAX),
            cleared: Notify::new(),
        }
    }

    /// Change the free-space limit (bytes) at run time.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
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
        if low && !self.alarm.swap(true, Ordering::SeqCst) {
            warn!(free, limit, log_failing, dir = %self.dir.display(),
                "disk alarm set: free disk space is below the limit; publishers are blocked");
        } else if !low && self.alarm.swap(false, Ordering::SeqCst) {
            info!(free, "disk alarm cleared; publishers resume");
            self.cleared.notify_waiters();
        }
    }

    pub fn alarmed(&self) -> bool {
        self.alarm.load(Ordering::SeqCst)
    }

    /// Wait until the alarm is clear.
    pub async fn wait_clear(&self) {
        loop {
            let notified = self.cleared.notified();
            if !self.alarmed() {
                return;
            }
            notified.await;
        }
    }
}
