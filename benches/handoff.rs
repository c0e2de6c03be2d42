//! What it costs to hand messages from one core to another (reported figures, not a timed test).
//!
//! Issue 15 asks for the consumer's side of a hot queue (dispatch, encode, write) to run on
//! another core than its publisher's side. Every message made on one thread then dies on the
//! other: its memory goes back to the allocator from a thread that did not take it, and its
//! bytes in the memory account are counted up on one core and down on the other. This bench
//! isolates that part: Warren's own `Arc<Message>` (16-byte body, counted in a memory account,
//! as in scenario S1), made in batches of 1,600 (one socket read's worth under S1's load) and
//! dropped
//!
//! - `same`: on the thread that made them (today's pipeline: dispatch on the publisher's core);
//! - `across`: on another thread, the batches crossing over a bounded channel (the pipeline
//!   point 1 asks for; nothing else shared, no lock per message).
//!
//! It prints wall time and the process's CPU time per message. Run it as it is (the system
//! allocator: glibc's malloc on Linux), then with another allocator preloaded to compare, e.g.
//! `LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 cargo bench --bench handoff`.
//! docs/performance.md ("Sixth step") has the figures of this machine.

use bytes::Bytes;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren::broker::memory::MemoryMonitor;
use warren::broker::message::{Message, Properties, Small};

const BATCH: usize = 1_600;
const BATCHES: usize = 10_000;

/// User and system CPU time of this process so far.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn batch(account: &'static MemoryMonitor, n: usize, into: &mut Vec<Arc<Message>>) {
    for i in 0..n {
        into.push(Arc::new(Message::new(
            Bytes::new(),
            Small::copy(b"bench-queue"),
            Properties::default(),
            Small::copy(&(i as u128).to_le_bytes()),
            account,
        )));
    }
}

/// Made and dropped on one thread.
fn same(account: &'static MemoryMonitor) {
    let mut v = Vec::with_capacity(BATCH);
    for _ in 0..BATCHES {
        batch(account, BATCH, &mut v);
        v.clear();
    }
}

/// Made on this thread, dropped on another; the emptied vectors come back for reuse, so the
/// only memory that crosses for good is the messages'.
fn across(account: &'static MemoryMonitor) {
    let (full_tx, full_rx) = sync_channel::<Vec<Arc<Message>>>(4);
    let (empty_tx, empty_rx) = sync_channel::<Vec<Arc<Message>>>(8);
    for _ in 0..6 {
        empty_tx.send(Vec::with_capacity(BATCH)).expect("room");
    }
    let consumer = std::thread::spawn(move || {
        while let Ok(mut v) = full_rx.recv() {
            v.clear();
            if empty_tx.send(v).is_err() {
                break;
            }
        }
    });
    for _ in 0..BATCHES {
        let mut v = empty_rx.recv().expect("a vector comes back");
        batch(account, BATCH, &mut v);
        full_tx.send(v).expect("the consumer runs");
    }
    drop(full_tx);
    consumer.join().expect("the consumer ends");
}

fn main() {
    let account = MemoryMonitor::leak(u64::MAX);
    let n = (BATCH * BATCHES) as f64;
    println!(
        "a message: {} bytes in its Arc ({} for the Message), batches of {BATCH}",
        std::mem::size_of::<Message>() + 2 * std::mem::size_of::<usize>(),
        std::mem::size_of::<Message>(),
    );
    for (name, run) in [("same", same as fn(_)), ("across", across as fn(_))] {
        // One unmeasured round first, so the allocator's pools are warm.
        run(account);
        let (c0, t0) = (cpu(), Instant::now());
        run(account);
        let (wall, cpu) = (t0.elapsed(), cpu() - c0);
        println!(
            "{name:7} {:6.1} M msg/s  wall {:6.1} ns/msg  CPU {:6.1} ns/msg",
            n / wall.as_secs_f64() / 1e6,
            wall.as_nanos() as f64 / n,
            cpu.as_nanos() as f64 / n,
        );
        assert_eq!(account.used(), 0, "every message's bytes are given back");
    }
}
