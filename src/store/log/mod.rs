//! The message log: persistent message bodies in append-only segment files of Warren's own.
//!
//! Layout under `data_dir/messages/`:
//! - `NNNNNNNN.seg`: a segment. An 8-byte header (`SEGMENT_MAGIC`, which carries the format
//!   version), then records, each
//!   `[magic u32][len u32][crc32 u32 of len+payload][payload: len bytes]` (little endian), with
//!   payload `[published_at ms u64][message TTL ms u64, MAX = none][priority u8][queue count
//!   u16][queue ids u32…][exchange u8-len][routing key u8-len][properties u32-len][body…]`. A message routed to several durable queues is one record
//!   naming all of them.
//! - `NNNNNNNN.ack`: what happened to that segment's records since, as 8-byte entries
//!   `[record offset u32][queue id u32]`; the top bit of the queue id set means "delivered"
//!   (recovered unacked with redelivered=true), the next bit "returned once more" (a delivery that
//!   came back, counted towards `x-delivery-limit`; one entry per return), neither means "gone
//!   from that queue" (acked, dropped, expired, purged or the queue deleted). Acks for a segment live beside it, so deleting a
//!   segment takes its acks along and never resurrects anything elsewhere.
//!
//! Invariants:
//! - One writer thread owns the files. Appenders copy records into the pending batch under a
//!   mutex; the writer takes the whole batch, writes it with `pwrite` at known offsets (a retry
//!   after an I/O error rewrites the same bytes at the same place), fdatasyncs the segment files,
//!   and only then publishes the new `synced` position: a confirm waits for its record's position
//!   to be synced (group commit: every record in the batch shares one fdatasync).
//! - `live[segment]` counts (record, queue) pairs not yet gone. A segment whose count reaches zero
//!   and that is no longer the one being appended to is deleted with its ack file.
//! - Recovery never appends to an old segment: a restart writes a fresh segment after the highest
//!   one. A record that does not fit in what remains of its file (a crash mid-write) is dropped; a
//!   record whose checksum does not match is reported and skipped, never delivered; scanning
//!   resynchronises on the next valid record.
//! - Once `close` has run (shutdown), releases are ignored: dropping the broker's state at exit
//!   must not be mistaken for acknowledgements.

use bytes::{BufMut, Bytes};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// First bytes of every segment file; the last two are the format version.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WRNSEG\x00\x01";
const RECORD_MAGIC: u32 = 0x5752_4543;
const HEADER: usize = 12;
const DELIVERED: u32 = 1 << 31;
const RETURNED: u32 = 1 << 30;
/// See `MessageLog::congested`.
const CONGESTED: u64 = 64 << 20;
/// Marks the log directory itself as needing a sync (a segment file was created).
const DIRECTORY: u32 = u32::MAX;
/// Largest queue id: the top two bits of an ack entry's queue id are its flags.
pub const MAX_QUEUE_ID: u32 = RETURNED - 1;

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
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: 32 << 20,
            sync_interval: None,
            queue_ram_budget: 8 << 20,
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
struct SegWrite {
    segment: u32,
    offset: u64,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Batch {
    segs: Vec<SegWrite>,
    acks: Vec<(u32, Vec<u8>)>,
    deletes: Vec<u32>,
    /// The log position once this batch is written.
    lsn: u64,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.segs.is_empty() && self.acks.is_empty() && self.deletes.is_empty()
    }

    fn ack_buf(&mut self, segment: u32) -> &mut Vec<u8> {
        let i = match self.acks.iter().position(|(s, _)| *s == segment) {
            Some(i) => i,
            None => {
                self.acks.push((segment, Vec::new()));
                self.acks.len() - 1
            }
        };
        &mut self.acks[i].1
    }
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
    /// Read handles of segments, for paging bodies back in.
    readers: Mutex<HashMap<u32, Arc<File>>>,
    /// The writer could not write (disk full, I/O error) and is retrying.
    failing: AtomicBool,
    /// Make every write fail, as a full disk does (for tests of that path).
    inject_failure: AtomicBool,
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
            let count = recover_segment(dir, n, &mut rec)?;
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

    /// Append a message stored for `queues`; returns where it is and the position to wait for
    /// before confirming it.
    pub fn append(self: &Arc<Self>, r: &NewRecord) -> (Stored, u64) {
        let NewRecord {
            queues,
            published_at,
            ttl,
            priority,
            exchange,
            routing_key,
            properties,
            body,
        } = *r;
        let exchange = &exchange[..exchange.len().min(255)];
        let routing_key = &routing_key[..routing_key.len().min(255)];
        let nq = queues.len().min(u16::MAX as usize);
        let len = 8
            + 8
            + 1
            + 2
            + 4 * nq
            + 1
            + exchange.len()
            + 1
            + routing_key.len()
            + 4
            + properties.len()
            + body.len();
        let total = (HEADER + len) as u64;
        let mut s = self.state.lock();
        if s.current_len > 0 && s.current_len + total > self.options.segment_size {
            let old = s.current;
            s.current += 1;
            s.current_len = 0;
            if s.live.get(&old) == Some(&0) {
                s.live.remove(&old);
                s.batch.deletes.push(old);
            }
        }
        let segment = s.current;
        if s.current_len == 0 {
            s.live.insert(segment, 0);
            s.batch.segs.push(SegWrite {
                segment,
                offset: 0,
                data: Vec::with_capacity(64 << 10),
            });
            s.batch
                .segs
                .last_mut()
                .expect("pushed")
                .data
                .extend_from_slice(&SEGMENT_MAGIC);
            s.current_len = SEGMENT_MAGIC.len() as u64;
        }
        let offset = s.current_len;
        if s.batch.segs.last().is_none_or(|w| w.segment != segment) {
            s.batch.segs.push(SegWrite {
                segment,
                offset,
                data: Vec::with_capacity(64 << 10),
            });
        }
        let w = s.batch.segs.last_mut().expect("present");
        let buf = &mut w.data;
        buf.reserve(HEADER + len);
        let start = buf.len();
        buf.put_u32_le(RECORD_MAGIC);
        buf.put_u32_le(len as u32);
        buf.put_u32_le(0);
        buf.put_u64_le(published_at);
        buf.put_u64_le(ttl.unwrap_or(u64::MAX));
        buf.put_u8(priority);
        buf.put_u16_le(nq as u16);
        for q in &queues[..nq] {
            buf.put_u32_le(*q);
        }
        buf.put_u8(exchange.len() as u8);
        buf.put_slice(exchange);
        buf.put_u8(routing_key.len() as u8);
        buf.put_slice(routing_key);
        buf.put_u32_le(properties.len() as u32);
        buf.put_slice(properties);
        buf.put_slice(body);
        let crc = record_crc(&buf[start + 4..start + 8], &buf[start + HEADER..]);
        buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
        s.current_len += total;
        *s.live.get_mut(&segment).expect("inserted") += nq as u64;
        s.lsn += total;
        self.pending.fetch_add(total, Ordering::Relaxed);
        s.batch.lsn = s.lsn;
        let ticket = s.lsn;
        drop(s);
        self.wake.notify_one();
        (
            Stored {
                log: self.clone(),
                segment,
                offset: offset as u32,
            },
            ticket,
        )
    }

    /// The message at (`segment`, `offset`) is gone from queue `queue`.
    pub fn release(&self, queue: u32, segment: u32, offset: u32) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut s = self.state.lock();
        let Some(count) = s.live.get_mut(&segment) else {
            warn!(
                segment,
                offset, queue, "release of a message in an unknown segment"
            );
            return;
        };
        *count = count.saturating_sub(1);
        let dead = *count == 0 && segment != s.current;
        if dead {
            s.live.remove(&segment);
            s.batch.deletes.push(segment);
        } else {
            let b = s.batch.ack_buf(segment);
            b.put_u32_le(offset);
            b.put_u32_le(queue);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// The message at (`segment`, `offset`) was delivered from queue `queue` (so a restart
    /// before its ack brings it back with redelivered=true).
    pub fn delivered(&self, queue: u32, segment: u32, offset: u32) {
        self.mark(segment, offset, queue | DELIVERED);
    }

    /// A delivery of the message at (`segment`, `offset`) from queue `queue` came back: one more
    /// towards its `x-delivery-count`, which a restart keeps.
    pub fn returned(&self, queue: u32, segment: u32, offset: u32) {
        self.mark(segment, offset, queue | RETURNED);
    }

    /// An ack-file entry that does not release the record (a flagged queue id).
    fn mark(&self, segment: u32, offset: u32, flagged_queue: u32) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut s = self.state.lock();
        let b = s.batch.ack_buf(segment);
        b.put_u32_le(offset);
        b.put_u32_le(flagged_queue);
    }

    /// Read back the records at `offsets` (ascending) of `segment`: one read for records close
    /// together, as a queue's consecutive messages usually are. Waits (briefly) for records the
    /// writer has not written yet.
    pub fn read(&self, segment: u32, offsets: &[u32]) -> Vec<Result<LoadedRecord, ReadError>> {
        let path = seg_path(&self.dir, segment);
        let io = |e: std::io::Error| ReadError::Io {
            path: path.clone(),
            detail: e.to_string(),
        };
        let all = |e: ReadError| offsets.iter().map(|_| Err(clone_err(&e))).collect();
        let Some(&last) = offsets.last() else {
            return Vec::new();
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.written.load(Ordering::Acquire) <= ((segment as u64) << 32 | last as u64) {
            if Instant::now() > deadline {
                return all(io(std::io::Error::other("record not written in time")));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let file = {
            let mut r = self.readers.lock();
            match r.get(&segment) {
                Some(f) => f.clone(),
                None => match File::open(&path) {
                    Ok(f) => {
                        let f = Arc::new(f);
                        if r.len() > 16 {
                            r.clear();
                        }
                        r.insert(segment, f.clone());
                        f
                    }
                    Err(e) => return all(io(e)),
                },
            }
        };
        let start = offsets[0];
        let want = (last - start) as usize + 64 * 1024;
        let chunk = match read_at(&file, start as u64, want.min(4 << 20)) {
            Ok(c) => c,
            Err(e) => return all(io(e)),
        };
        let corrupt = |offset| ReadError::Corrupt {
            path: path.clone(),
            offset,
        };
        offsets
            .iter()
            .map(|&off| {
                let at = (off - start) as usize;
                match header_len(&chunk, at) {
                    Some(len) if at + HEADER + len <= chunk.len() => {
                        decode_at(&chunk, at).ok_or_else(|| corrupt(off))
                    }
                    _ => {
                        // Bigger than the chunk (or cut off by it): read it alone.
                        let head = read_at(&file, off as u64, HEADER).map_err(io)?;
                        let len = header_len(&head, 0).ok_or_else(|| corrupt(off))?;
                        let whole = read_at(&file, off as u64, HEADER + len).map_err(io)?;
                        decode_at(&whole, 0).ok_or_else(|| corrupt(off))
                    }
                }
            })
            .collect()
    }

    /// The position up to which records are durable (see `LogOptions::sync_interval`).
    /// Publishers are ahead of the disk by more than `CONGESTED` bytes: they should wait for
    /// the writer (publishers without confirms would otherwise grow the batch without bound).
    pub fn congested(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > CONGESTED
    }

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

    fn run_writer(self: Arc<Self>) {
        let mut files: HashMap<u32, File> = HashMap::new();
        let mut acks: HashMap<u32, File> = HashMap::new();
        let mut last_sync = Instant::now();
        let mut unsynced: HashSet<u32> = HashSet::new();
        loop {
            let mut batch = {
                let mut s = self.state.lock();
                loop {
                    if !s.batch.is_empty() {
                        break;
                    }
                    if s.stop {
                        drop(s);
                        self.sync_all(&files, &mut unsynced);
                        return;
                    }
                    match self.options.sync_interval {
                        Some(d) if !unsynced.is_empty() => {
                            let _ = self.wake.wait_for(&mut s, d);
                            if s.batch.is_empty() && last_sync.elapsed() >= d {
                                break;
                            }
                        }
                        _ => self.wake.wait(&mut s),
                    }
                }
                std::mem::take(&mut s.batch)
            };
            let mut attempt = 0u32;
            loop {
                match self.write_batch(&batch, &mut files, &mut acks, &mut unsynced) {
                    Ok(()) => break,
                    Err(e) => {
                        if self.state.lock().stop && attempt >= 20 {
                            error!(dir = %self.dir.display(),
                                "giving up writing the message log at shutdown: {e}");
                            return;
                        }
                        if attempt.is_multiple_of(50) {
                            error!(dir = %self.dir.display(),
                                "cannot write the message log: {e}; retrying (confirms wait)");
                        }
                        self.failing.store(true, Ordering::Relaxed);
                        attempt += 1;
                        // Consumers draining is what gives the space back: delete the segments
                        // they emptied meanwhile now, not after this batch (which waits for that
                        // very space).
                        let emptied = std::mem::take(&mut self.state.lock().batch.deletes);
                        for n in emptied {
                            self.delete_segment(n, &mut files, &mut acks, &mut unsynced);
                            batch.deletes.push(n);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            let written: u64 = batch.segs.iter().map(|w| w.data.len() as u64).sum();
            self.pending.fetch_sub(
                written.min(self.pending.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if let Some(w) = batch.segs.last() {
                let end = w.offset + w.data.len() as u64;
                self.written
                    .store((w.segment as u64) << 32 | end, Ordering::Release);
            }
            if self.failing.swap(false, Ordering::Relaxed) {
                info!(dir = %self.dir.display(), "message log writes succeed again");
            }
            let sync_now = match self.options.sync_interval {
                None => true,
                Some(d) => last_sync.elapsed() >= d,
            };
            if sync_now {
                if let Err(e) = self.try_sync(&files, &mut unsynced) {
                    error!(dir = %self.dir.display(), "cannot sync the message log: {e}");
                    self.failing.store(true, Ordering::Relaxed);
                    // The batch is written but not durable: rewrite nothing, sync again soon.
                    while self.try_sync(&files, &mut unsynced).is_err() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    self.failing.store(false, Ordering::Relaxed);
                }
                last_sync = Instant::now();
            }
            if batch.lsn > 0 && (sync_now || self.options.sync_interval.is_some()) {
                self.synced.send_if_modified(|v| {
                    let moved = batch.lsn > *v;
                    if moved {
                        *v = batch.lsn;
                    }
                    moved
                });
            }
            for n in &batch.deletes {
                self.delete_segment(*n, &mut files, &mut acks, &mut unsynced);
            }
            if acks.len() > 64 {
                acks.clear();
            }
            let current = self.state.lock().current;
            files.retain(|n, _| *n == current || unsynced.contains(n));
        }
    }

    /// Remove a segment and its acks (every message in it is gone from every queue).
    fn delete_segment(
        &self,
        n: u32,
        files: &mut HashMap<u32, File>,
        acks: &mut HashMap<u32, File>,
        unsynced: &mut HashSet<u32>,
    ) {
        files.remove(&n);
        acks.remove(&n);
        unsynced.remove(&n);
        self.readers.lock().remove(&n);
        let _ = std::fs::remove_file(seg_path(&self.dir, n));
        let _ = std::fs::remove_file(ack_path(&self.dir, n));
    }

    /// Whether the record at (`segment`, `offset`) has been written to its file (so it can be
    /// read back).
    pub fn is_written(&self, segment: u32, offset: u32) -> bool {
        self.written.load(Ordering::Acquire) > ((segment as u64) << 32 | offset as u64)
    }

    fn write_batch(
        &self,
        batch: &Batch,
        files: &mut HashMap<u32, File>,
        acks: &mut HashMap<u32, File>,
        unsynced: &mut HashSet<u32>,
    ) -> std::io::Result<()> {
        if self.inject_failure.load(Ordering::Relaxed) && !batch.segs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "injected: no space left on device",
            ));
        }
        for w in &batch.segs {
            if batch.deletes.contains(&w.segment) {
                // Every message in it is gone already: nothing of it needs writing.
                continue;
            }
            let f = match files.entry(w.segment) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let path = seg_path(&self.dir, w.segment);
                    if !path.exists() {
                        // A new file: its directory entry must be synced too.
                        unsynced.insert(DIRECTORY);
                    }
                    v.insert(
                        File::options()
                            .create(true)
                            .truncate(false)
                            .write(true)
                            .read(true)
                            .open(path)?,
                    )
                }
            };
            f.write_all_at(&w.data, w.offset)?;
            unsynced.insert(w.segment);
        }
        for (n, data) in &batch.acks {
            if batch.deletes.contains(n) {
                continue;
            }
            let f = match acks.entry(*n) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(
                    File::options()
                        .create(true)
                        .append(true)
                        .open(ack_path(&self.dir, *n))?,
                ),
            };
            std::io::Write::write_all(f, data)?;
        }
        Ok(())
    }

    fn try_sync(
        &self,
        files: &HashMap<u32, File>,
        unsynced: &mut HashSet<u32>,
    ) -> std::io::Result<()> {
        let mut done = Vec::new();
        for n in unsynced.iter() {
            if let Some(f) = files.get(n) {
                f.sync_data()?;
            }
            done.push(*n);
        }
        if unsynced.contains(&DIRECTORY) {
            File::open(&self.dir)?.sync_all()?;
        }
        for n in done {
            unsynced.remove(&n);
        }
        Ok(())
    }

    fn sync_all(&self, files: &HashMap<u32, File>, unsynced: &mut HashSet<u32>) {
        if let Err(e) = self.try_sync(files, unsynced) {
            error!(dir = %self.dir.display(), "cannot sync the message log at shutdown: {e}");
        }
    }
}

/// Read one segment and its acks into `rec`; returns how many (record, queue) pairs are live.
fn recover_segment(dir: &Path, n: u32, rec: &mut Recovered) -> Result<u64, super::StoreError> {
    let path = seg_path(dir, n);
    let data = Bytes::from(std::fs::read(&path).map_err(|e| io_err(&path, e))?);
    if data.len() < SEGMENT_MAGIC.len() {
        // Created but never written (a crash right after creating it).
        return Ok(0);
    }
    if data[..6] != SEGMENT_MAGIC[..6] {
        return Err(super::StoreError::Corrupt {
            path,
            detail: "not a Warren message segment (bad magic)".into(),
        });
    }
    if data[6..8] != SEGMENT_MAGIC[6..8] {
        return Err(super::StoreError::Version {
            path,
            found: format!("segment format {}", u16::from_be_bytes([data[6], data[7]])),
        });
    }
    let mut acked: HashSet<(u32, u32)> = HashSet::new();
    let mut delivered: HashSet<(u32, u32)> = HashSet::new();
    let mut returned: HashMap<(u32, u32), u32> = HashMap::new();
    let apath = ack_path(dir, n);
    match std::fs::read(&apath) {
        Ok(a) => {
            for e in a.chunks_exact(8) {
                let off = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
                let q = u32::from_le_bytes(e[4..].try_into().expect("4 bytes"));
                if q & DELIVERED != 0 {
                    delivered.insert((off, q & !DELIVERED));
                } else if q & RETURNED != 0 {
                    *returned.entry((off, q & !RETURNED)).or_default() += 1;
                } else {
                    acked.insert((off, q));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&apath, e)),
    }
    let mut live = 0u64;
    let mut pos = SEGMENT_MAGIC.len();
    while pos < data.len() {
        let Some(len) = record_at(&data, pos) else {
            // Not a valid record here: either the end of what was written before a crash (no
            // valid record follows), or damage in the middle (one does).
            match (pos + 1..data.len()).find(|&p| record_at(&data, p).is_some()) {
                Some(next) => {
                    rec.corrupt_records += 1;
                    error!(path = %path.display(), offset = pos,
                        "corrupt message record (checksum mismatch): skipped, not delivered");
                    pos = next;
                    continue;
                }
                None => {
                    rec.torn_records += 1;
                    warn!(path = %path.display(), offset = pos,
                        "dropping an incomplete record at the end of a segment (written when the broker stopped)");
                    break;
                }
            }
        };
        let payload = data.slice(pos + HEADER..pos + HEADER + len);
        let offset = pos as u32;
        pos += HEADER + len;
        let Some((published_at, (ttl, priority), queues, _, _, _, body)) = parse_payload(&payload)
        else {
            rec.corrupt_records += 1;
            error!(path = %path.display(), offset, "malformed message record: skipped");
            continue;
        };
        for q in queues {
            if acked.contains(&(offset, q)) {
                continue;
            }
            live += 1;
            rec.queues.entry(q).or_default().push(RecoveredMessage {
                segment: n,
                offset,
                size: body.len() as u32,
                published_at,
                ttl,
                priority,
                delivered: delivered.contains(&(offset, q)),
                returned: returned.get(&(offset, q)).copied().unwrap_or(0),
            });
        }
    }
    Ok(live)
}

fn record_crc(len: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
}

/// The payload length of a valid record starting at `pos`, if there is one.
fn record_at(data: &[u8], pos: usize) -> Option<usize> {
    let rest = data.get(pos..)?;
    if rest.len() < HEADER || rest[..4] != RECORD_MAGIC.to_le_bytes() {
        return None;
    }
    let len = u32::from_le_bytes(rest[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(rest[8..12].try_into().ok()?);
    let payload = rest.get(HEADER..HEADER.checked_add(len)?)?;
    (record_crc(&rest[4..8], payload) == crc).then_some(len)
}

fn clone_err(e: &ReadError) -> ReadError {
    match e {
        ReadError::Io { path, detail } => ReadError::Io {
            path: path.clone(),
            detail: detail.clone(),
        },
        ReadError::Corrupt { path, offset } => ReadError::Corrupt {
            path: path.clone(),
            offset: *offset,
        },
    }
}

/// Read `len` bytes at `pos` (fewer at the end of the file).
fn read_at(f: &File, pos: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(Bytes::from(buf))
}

/// The payload length a record header at `pos` announces (magic checked, checksum not).
fn header_len(data: &[u8], pos: usize) -> Option<usize> {
    let h = data.get(pos..pos.checked_add(HEADER)?)?;
    (h[..4] == RECORD_MAGIC.to_le_bytes())
        .then(|| u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize)
}

/// The checked, parsed record at `pos` of `data`.
fn decode_at(data: &Bytes, pos: usize) -> Option<LoadedRecord> {
    let len = record_at(data, pos)?;
    let (published_at, _, _, exchange, routing_key, properties, body) =
        parse_payload(&data.slice(pos + HEADER..pos + HEADER + len))?;
    Some(LoadedRecord {
        published_at,
        exchange,
        routing_key,
        properties,
        body,
    })
}

type Parsed = (u64, (Option<u64>, u8), Vec<u32>, Bytes, Bytes, Bytes, Bytes);

fn parse_payload(p: &Bytes) -> Option<Parsed> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<std::ops::Range<usize>> {
        let end = at.checked_add(n)?;
        (end <= p.len()).then(|| {
            let r = *at..end;
            *at = end;
            r
        })
    };
    let published_at = u64::from_le_bytes(p[take(&mut at, 8)?].try_into().ok()?);
    let ttl = u64::from_le_bytes(p[take(&mut at, 8)?].try_into().ok()?);
    let ttl = (ttl != u64::MAX).then_some(ttl);
    let priority = p[take(&mut at, 1)?][0];
    let nq = u16::from_le_bytes(p[take(&mut at, 2)?].try_into().ok()?) as usize;
    let mut queues = Vec::with_capacity(nq);
    for _ in 0..nq {
        queues.push(u32::from_le_bytes(p[take(&mut at, 4)?].try_into().ok()?));
    }
    let el = p[take(&mut at, 1)?][0] as usize;
    let exchange = p.slice(take(&mut at, el)?);
    let rl = p[take(&mut at, 1)?][0] as usize;
    let routing_key = p.slice(take(&mut at, rl)?);
    let pl = u32::from_le_bytes(p[take(&mut at, 4)?].try_into().ok()?) as usize;
    let properties = p.slice(take(&mut at, pl)?);
    let body = p.slice(at..);
    Some((
        published_at,
        (ttl, priority),
        queues,
        exchange,
        routing_key,
        properties,
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("warren-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn opts() -> LogOptions {
        LogOptions {
            segment_size: 4096,
            ..LogOptions::default()
        }
    }

    /// Append and wait until synced.
    fn put(log: &Arc<MessageLog>, queues: &[u32], body: &[u8]) -> Stored {
        let (s, ticket) = log.append(&NewRecord {
            queues,
            published_at: 1,
            ttl: Some(5),
            priority: 3,
            exchange: b"ex",
            routing_key: b"rk",
            properties: b"\x00\x00",
            body,
        });
        let mut rx = log.subscribe();
        while *rx.borrow_and_update() < ticket {
            std::thread::sleep(Duration::from_millis(1));
        }
        s
    }

    fn bodies_in(log: &MessageLog, rec: &Recovered, q: u32) -> Vec<Vec<u8>> {
        let Some(v) = rec.queues.get(&q) else {
            return Vec::new();
        };
        v.iter()
            .map(|m| {
                let r = log.read(m.segment, &[m.offset]).pop().unwrap().unwrap();
                assert_eq!(r.body.len(), m.size as usize);
                assert_eq!((m.ttl, m.priority), (Some(5), 3));
                r.body.to_vec()
            })
            .collect()
    }

    #[test]
    fn records_come_back_per_queue_minus_acks_with_delivered_flags() {
        let d = dir("roundtrip");
        {
            let (log, rec) = MessageLog::open(&d, opts()).unwrap();
            assert!(rec.queues.is_empty());
            let a = put(&log, &[1, 2], b"both");
            let b = put(&log, &[1], b"one");
            let _c = put(&log, &[2], b"two");
            log.release(1, a.segment, a.offset);
            log.delivered(1, b.segment, b.offset);
            log.returned(1, b.segment, b.offset);
            log.returned(1, b.segment, b.offset);
            log.close();
        }
        let (log, rec) = MessageLog::open(&d, opts()).unwrap();
        assert_eq!(bodies_in(&log, &rec, 1), vec![b"one".to_vec()]);
        assert!(rec.queues[&1][0].delivered);
        assert_eq!(rec.queues[&1][0].returned, 2);
        assert_eq!(rec.queues[&2][0].returned, 0);
        assert_eq!(
            bodies_in(&log, &rec, 2),
            vec![b"both".to_vec(), b"two".to_vec()]
        );
        assert!(!rec.queues[&2][0].delivered);
        let m = rec.queues[&2][0];
        let r = log.read(m.segment, &[m.offset]).pop().unwrap().unwrap();
        assert_eq!(
            (&r.exchange[..], &r.routing_key[..]),
            (&b"ex"[..], &b"rk"[..])
        );
        log.close();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_segment_goes_when_its_last_message_is_released() {
        let d = dir("reclaim");
        let (log, _) = MessageLog::open(&d, opts()).unwrap();
        let body = vec![0u8; 3000];
        let first = put(&log, &[1], &body);
        let _second = put(&log, &[1], &body); // rolls to a new segment
        assert_eq!(log.segment_count(), 2);
        assert!(seg_path(&d, first.segment).exists());
        log.release(1, first.segment, first.offset);
        for _ in 0..200 {
            if !seg_path(&d, first.segment).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!seg_path(&d, first.segment).exists(), "deleted once empty");
        assert_eq!(log.segment_count(), 1);
        log.close();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_a_flipped_byte_is_reported_not_delivered() {
        let d = dir("damage");
        let (a, b);
        {
            let (log, _) = MessageLog::open(&d, LogOptions::default()).unwrap();
            a = put(&log, &[1], b"first message");
            b = put(&log, &[1], b"second message");
            put(&log, &[1], b"third message");
            log.close();
        }
        let path = seg_path(&d, a.segment);
        let mut data = std::fs::read(&path).unwrap();
        // Flip a body byte of the second record.
        let at = b.offset as usize + HEADER + 20;
        data[at] ^= 0x40;
        // And a record cut short at the end, as if the broker died mid-write.
        let mut torn = data[a.offset as usize..b.offset as usize].to_vec();
        torn.truncate(torn.len() - 3);
        data.extend_from_slice(&torn);
        std::fs::write(&path, &data).unwrap();
        let (log, rec) = MessageLog::open(&d, LogOptions::default()).unwrap();
        assert_eq!(
            bodies_in(&log, &rec, 1),
            vec![b"first message".to_vec(), b"third message".to_vec()]
        );
        assert_eq!(rec.corrupt_records, 1);
        assert_eq!(rec.torn_records, 1);
        log.close();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_foreign_or_newer_segment_is_refused_naming_the_file() {
        let d = dir("foreign");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(seg_path(&d, 1), b"NOTWARRENxxxxxxxx").unwrap();
        let e = MessageLog::open(&d, opts()).unwrap_err();
        assert!(e.to_string().contains("00000001.seg"), "{e}");
        std::fs::write(seg_path(&d, 1), b"WRNSEG\x00\x09").unwrap();
        let e = MessageLog::open(&d, opts()).unwrap_err();
        assert!(matches!(e, super::super::StoreError::Version { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn releases_after_close_are_not_acknowledgements() {
        let d = dir("closed");
        {
            let (log, _) = MessageLog::open(&d, opts()).unwrap();
            let a = put(&log, &[1], b"keep me");
            log.close();
            log.release(1, a.segment, a.offset);
        }
        let (log, rec) = MessageLog::open(&d, opts()).unwrap();
        assert_eq!(bodies_in(&log, &rec, 1), vec![b"keep me".to_vec()]);
        log.close();
        let _ = std::fs::remove_dir_all(&d);
    }
}
