//! Per-stage counters: for each named stage of a message's way (a commit round's parts, a
//! sync), how often it ran, how many items it carried and how long it took. One record per
//! batch, never per message: a few relaxed atomic adds. Read by `/api/warren/stages`, so the
//! next bottleneck shows without a profiler (two reads a few seconds apart give the rates).

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub struct Stage {
    pub name: &'static str,
    pub what: &'static str,
    runs: AtomicU64,
    items: AtomicU64,
    nanos: AtomicU64,
    max_nanos: AtomicU64,
}

impl Stage {
    pub const fn new(name: &'static str, what: &'static str) -> Stage {
        Stage {
            name,
            what,
            runs: AtomicU64::new(0),
            items: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            max_nanos: AtomicU64::new(0),
        }
    }

    /// One run that began at `started` and carried `items`.
    pub fn record(&self, started: Instant, items: u64) {
        let ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(items, Ordering::Relaxed);
        self.nanos.fetch_add(ns, Ordering::Relaxed);
        self.max_nanos.fetch_max(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StageSnapshot {
        let runs = self.runs.load(Ordering::Relaxed);
        let items = self.items.load(Ordering::Relaxed);
        let nanos = self.nanos.load(Ordering::Relaxed);
        StageSnapshot {
            stage: self.name,
            what: self.what,
            runs,
            items,
            total_us: nanos / 1000,
            avg_us: nanos.checked_div(runs).unwrap_or(0) as f64 / 1000.0,
            avg_items: if runs == 0 {
                0.0
            } else {
                items as f64 / runs as f64
            },
            max_us: self.max_nanos.load(Ordering::Relaxed) / 1000,
        }
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct StageSnapshot {
    pub stage: &'static str,
    pub what: &'static str,
    pub runs: u64,
    pub items: u64,
    pub total_us: u64,
    pub avg_us: f64,
    pub avg_items: f64,
    pub max_us: u64,
}

pub static AMQP_READ: Stage = Stage::new(
    "amqp.read",
    "a connection handling what one socket read brought: parse, route, enqueue (items: frames)",
);
pub static FLOW: Stage = Stage::new(
    "amqp.flow",
    "a publishing connection not read from, paused by flow control until its queue's consumers \
     drained it (or made no progress for 100 ms)",
);
pub static ROUTE: Stage = Stage::new(
    "route",
    "one publish routed, stored and enqueued (the model's publish), sampled: one in 64 is timed; \
     a run is a sample, items the publishes it stands for, avg_us the time of one publish",
);
pub static DISPATCH: Stage = Stage::new(
    "dispatch",
    "a queue handing the messages one batch brought to its consumers, deliveries encoded \
     (items: deliveries)",
);
pub static AMQP_WRITE: Stage = Stage::new(
    "amqp.write",
    "a connection's writer sending one batch of frames to its socket (items: bytes)",
);
pub static LOG_WRITE: Stage = Stage::new(
    "log.write",
    "the message log's writer: one batch written (items: records and external writes)",
);
pub static LOG_SYNC: Stage = Stage::new(
    "log.sync",
    "the message log's writer: one fdatasync round over every file the batch touched",
);
pub static RAFT_APPEND: Stage = Stage::new(
    "raft.append",
    "a Raft log append handed to the writer until synced (items: entries)",
);
pub static RAFT_REPLICATE: Stage = Stage::new(
    "raft.replicate",
    "a leader's AppendEntries call to one follower, answer included (items: entries)",
);
pub static RAFT_BEAT: Stage = Stage::new(
    "raft.beat",
    "a leader's empty AppendEntries (heartbeat, or the commit index passed on) to one follower",
);
pub static RAFT_FOLLOW: Stage = Stage::new(
    "raft.follow",
    "a follower's handling of one AppendEntries, from its arrival to its answer (items: entries)",
);
pub static QUORUM_APPLY: Stage = Stage::new(
    "quorum.apply",
    "a quorum queue's state machine applying committed entries (items: entries)",
);
pub static QUORUM_COMMIT: Stage = Stage::new(
    "quorum.commit",
    "a batch of publishes handed to its queue's leader until committed and applied",
);

/// Every stage, in the order of a message's way.
pub fn all() -> [&'static Stage; 13] {
    [
        &AMQP_READ,
        &FLOW,
        &ROUTE,
        &QUORUM_COMMIT,
        &RAFT_APPEND,
        &RAFT_REPLICATE,
        &RAFT_BEAT,
        &RAFT_FOLLOW,
        &QUORUM_APPLY,
        &LOG_WRITE,
        &LOG_SYNC,
        &DISPATCH,
        &AMQP_WRITE,
    ]
}

pub fn snapshot() -> Vec<StageSnapshot> {
    all().iter().map(|s| s.snapshot()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_stage_sums_runs_items_and_time() {
        let s = Stage::new("t", "test");
        let t = Instant::now() - Duration::from_millis(3);
        s.record(t, 10);
        s.record(Instant::now(), 30);
        let v = s.snapshot();
        assert_eq!((v.runs, v.items), (2, 40));
        assert_eq!(v.avg_items, 20.0);
        assert!(v.max_us >= 3000, "{v:?}");
        assert!(v.total_us >= 3000 && v.avg_us >= 1500.0, "{v:?}");
    }
}
