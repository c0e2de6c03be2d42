//! The message log: persistent message bodies in append-only segment files of Warren's own.
//!
//! Layout under `data_dir/messages/`: `NNNNNNNN.seg`, a segment of records (format in `record`),
//! and beside it `NNNNNNNN.ack`, what happened to that segment's records since (format in
//! `acks`); `NNNNNNNN.spare`, a file kept to be reused for a new segment (`spares`). Acks for a segment live beside it, so deleting a segment takes its acks along and
//! never resurrects anything elsewhere.
//!
//! The parts: `record` (the segment and record format: encoding, decoding, checksums), `external`
//! (files outside the log written through its writer), `spares` (segment files kept for reuse), `writer`
//! (appending to the pending batch, and the writer thread that group-commits it, retrying
//! through a full disk), `acks` (releases and the delivered / returned marks, and reading ack
//! files back), `read` (reading records back for paging), `recovery` (the scan at open). This
//! file holds the public API and the state they share.
//!
//! Invariants (each part's own are at its top):
//! - One writer thread owns the files (see `writer`).
//! - `live[segment]` counts (record, queue) pairs not yet gone. A segment whose count reaches zero
//!   and that is no longer the one being appended to is deleted with its ack file (its file
//!   kept as a spare, see `spares`).
//! - Recovery never appends to an old segment: a restart writes a fresh segment after the highest
//!   one (see `recovery` for what it does with damaged records).
//! - Once `close` has run (shutdown), releases are ignored: dropping the broker's state at exit
//!   must not be mistaken for acknowledgements.

mod acks;
mod external;
mod read;
mod record;
mod recovery;
mod spares;
mod writer;

pub use acks::MAX_QUEUE_ID;
pub use external::{ExternalFile, LazyFile};
pub use record::SEGMENT_MAGIC;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use writer::Batch;

/// See `MessageLog::congested`.
const CONGESTED: u64 = 64 << 20;

/// How the log makes records durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// A new segment is started once the current one would grow past this.
    pub segment_size: u64,
    /// None: fdatasync before a record counts as synced (confirms wait for the disk). Some(d):
    /// a record counts as synced once written to the OS, and the files are fdatasynced every d
    /// (RabbitMQ's trade-off: a power cut can lose the last d of confirmed messages).
    pub sync_interval: Option<Duration>,
    /// Bytes of ready messages a durable queue keeps in memory; beyond it, persistent messages
    /// are paged out (see `broker::paging`).
    pub queue_ram_budget: u64,
    /// A scratch log (the spill file of transient messages paged out): its files are deleted at
    /// open, never fdatasynced, and releases write no ack entries. Nothing in it survives a
    /// restart, by design.
    pub scratch: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: 32 << 20,
            sync_interval: None,
            queue_ram_budget: 8 << 20,
            scratch: false,
        }
    }
}

/// Where a stored message is: its record's segment and offset. Shared by every queue holding it.
#[derive(Debug)]
pub struct Stored {
    pub log: Arc<MessageLog>,
    pub segment: u32,
    pub offset: u32,
}

/// A message found at start, for one queue: where it is, not what it says (bodies are read
/// back when consumers get near them).
#[derive(Debug, Clone, Copy)]
pub struct RecoveredMessage {
    pub segment: u32,
    pub offset: u32,
    /// Body bytes.
    pub size: u32,
    pub published_at: u64,
    /// The message's own TTL (its expiration property), if any.
    pub ttl: Option<u64>,
    /// Its priority property (0 when absent).
    pub priority: u8,
    /// It had been delivered (and not acknowledged) before the restart.
    pub delivered: bool,
    /// Deliveries of it that came back (`x-delivery-count`), where the queue counts them.
    pub returned: u32,
}

/// A record read back from the log.
#[derive(Debug)]
pub struct LoadedRecord {
    pub published_at: u64,
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
}

/// Why a record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read message segment {path}: {detail}")]
    Io { path: PathBuf, detail: String },
    #[error("corrupt message record in {path} at offset {offset}")]
    Corrupt { path: PathBuf, offset: u32 },
}

/// What recovery found: per queue id, its messages in log order.
#[derive(Debug, Default)]
pub struct Recovered {
    pub queues: HashMap<u32, Vec<RecoveredMessage>>,
    pub segments: usize,
    pub corrupt_records: usize,
    pub torn_records: usize,
}

#[derive(Debug)]
struct LogState {
    /// Bytes appended since start: the position a confirm waits for.
    lsn: u64,
    current: u32,
    current_len: u64,
    live: HashMap<u32, u64>,
    batch: Batch,
    stop: bool,
}

#[derive(Debug)]
pub struct MessageLog {
    dir: PathBuf,
    options: LogOptions,
    state: Mutex<LogState>,
    wake: Condvar,
    synced: watch::Sender<u64>,
    closed: AtomicBool,
    /// Record bytes appended but not yet written (see `congested`).
    pending: AtomicU64,
    /// How far the writer has written: (segment << 32 | end offset). Records before it can be
    /// read back from the files.
    written: AtomicU64,
    /// Read handles of segments, with their record format, for paging bodies back in.
    readers: Mutex<HashMap<u32, (Arc<File>, record::Format)>>,
    /// The writer could not write (disk full, I/O error) and is retrying.
    failing: AtomicBool,
    /// Make every write fail, as a full disk does (for tests of that path).
    inject_failure: AtomicBool,
    /// Sync rounds completed (see `sync_rounds`).
    sync_rounds: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn io_err(path: &Path, source: std::io::Error) -> super::StoreError {
    super::StoreError::Io {
        what: "open the message log at",
        path: path.to_owned(),
        source,
    }
}

fn seg_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

fn ack_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.ack"))
}

/// A message record to append: for which queues (their log ids), and what the broker needs
/// back at recovery.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub queues: &'a [u32],
    /// Wall-clock milliseconds (survives restarts, unlike the monotonic clock): TTLs count the
    /// time the broker was down, and ages count from publication.
    pub published_at: u64,
    pub ttl: Option<u64>,
    pub priority: u8,
    pub exchange: &'a [u8],
    pub routing_key: &'a [u8],
    pub properties: &'a [u8],
    pub body: &'a [u8],
}

impl MessageLog {
    /// Open (creating) the log in `dir`, read back every live message, and start the writer.
    pub fn open(
        dir: &Path,
        options: LogOptions,
    ) -> Result<(Arc<MessageLog>, Recovered), super::StoreError> {
        if options.scratch {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(dir, e)),
                _ => {}
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut numbers: Vec<u32> = std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        numbers.sort_unstable();
        let mut rec = Recovered::default();
        let mut live = HashMap::new();
        for &n in &numbers {
            let count = recovery::recover_segment(dir, n, &mut rec)?;
            live.insert(n, count);
        }
        rec.segments = numbers.len();
        let current = numbers.last().map_or(1, |n| n + 1);
        let (synced, _) = watch::channel(0);
        let log = Arc::new(MessageLog {
            dir: dir.to_owned(),
            options,
            state: Mutex::new(LogState {
                lsn: 0,
                current,
                current_len: 0,
                live,
                batch: Batch::default(),
                stop: false,
            }),
            wake: Condvar::new(),
            synced,
            closed: AtomicBool::new(false),
            written: AtomicU64::new((current as u64) << 32),
            pending: AtomicU64::new(0),
            readers: Mutex::new(HashMap::new()),
            failing: AtomicBool::new(false),
            inject_failure: AtomicBool::new(false),
            sync_rounds: AtomicU64::new(0),
            writer: Mutex::new(None),
        });
        let w = log.clone();
        let handle = std::thread::Builder::new()
            .name("warren-log".into())
            .spawn(move || w.run_writer())
            .map_err(|e| io_err(dir, e))?;
        *log.writer.lock() = Some(handle);
        Ok((log, rec))
    }

    /// Delete segments nothing refers to any more (after recovery has released what it dropped).
    pub fn collect(&self) {
        let mut s = self.state.lock();
        let current = s.current;
        let dead: Vec<u32> = s
            .live
            .iter()
            .filter(|(&n, &c)| c == 0 && n != current)
            .map(|(&n, _)| n)
            .collect();
        for n in dead {
            s.live.remove(&n);
            s.batch.deletes.push(n);
        }
        if !s.batch.is_empty() {
            self.wake.notify_one();
        }
    }

    /// Publishers are ahead of the disk by more than `CONGESTED` bytes: they should wait for
    /// the writer (publishers without confirms would otherwise grow the batch without bound).
    pub fn congested(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > CONGESTED
    }

    /// The position up to which records are durable (see `LogOptions::sync_interval`).
    pub fn synced(&self) -> u64 {
        *self.synced.borrow()
    }

    /// Watch `synced` advance.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }

    /// Make the writer's writes fail until called again with false, as a full disk would (the
    /// disk-full path cannot be reached in tests without filling a real disk).
    pub fn inject_write_failure(&self, on: bool) {
        self.inject_failure.store(on, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether writes are failing (disk full or an I/O error); the writer keeps retrying.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// How many sync rounds the writer has completed: each one fdatasyncs every file written
    /// since the previous one, whichever appends (messages, streams, Raft logs) put them there.
    pub fn sync_rounds(&self) -> u64 {
        self.sync_rounds.load(Ordering::Relaxed)
    }

    /// Segment files currently on disk (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.state.lock().live.len()
    }

    pub fn options(&self) -> &LogOptions {
        &self.options
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write and sync everything pending, stop the writer, and ignore releases from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.state.lock().stop = true;
        self.wake.notify_one();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests;
