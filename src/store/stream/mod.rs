//! Stream storage: one stream's append-only log of messages, in segment files of its own (beside
//! the message log), addressed by offset (0, 1, 2, … per stream, never reused), with a sparse
//! offset/timestamp index, and retention that deletes whole segments.
//!
//! Durability goes through the message log's writer thread (`MessageLog::append_external`): a
//! stream's appends join the same group commit as queue messages, so a publisher confirm waits
//! for one position (the ticket) whichever kind of queue the message reached. A record becomes
//! readable (committed) once the writer has synced it; readers never see an offset that a crash
//! could take back.
//!
//! RAM is bounded whatever the stream's length: a few dozen bytes per segment in memory; the
//! per-segment index lives in its own file and is read when a reader seeks.
//!
//! The parts: `format` (the record and index formats), `read` (seeking and reading),
//! `recovery` (the scan at open). This file holds the state and appending.
//!
//! Invariants:
//! - In memory, per segment, one `Segment` summary (first and next offset, size, timestamps),
//!   plus, per record run the writer has not yet synced, one `Pending` entry: nothing per
//!   message.
//! - Appends go only to the newest segment, created by the first append after open (a restart
//!   never appends to an old segment). The writer thread creates its file; the stream writes its
//!   index file directly (not synced: recovery checks it against the segment).
//! - `committed` moves only in `on_committed`, called by the writer after the sync, in append
//!   order. Segments before `committed.seg` are entirely committed; in it, bytes before
//!   `committed.pos`; after it, nothing.
//! - Retention deletes only whole, entirely committed segments, and never the newest one.
//! - Lock order: the stream's `state`, then the message log's; the writer calls `on_committed`
//!   holding no lock of the log. Readers hold `state` only to plan a read, never during I/O.

mod format;
mod read;
mod recovery;

use crate::store::log::{ExternalFile, LazyFile};
use crate::store::{MessageLog, StoreError};
use bytes::Bytes;
use format::{idx_path, seg_path, IndexEntry, INDEX_EVERY, INDEX_MAGIC, SEGMENT_MAGIC};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::watch;
use tracing::warn;

/// Retention and segment size of a stream (its declare arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// `x-stream-max-segment-size-bytes`: a new segment is started once the current one would
    /// grow past this (RabbitMQ's default: 500,000,000).
    pub max_segment_bytes: u64,
    /// `x-max-length-bytes`: whole old segments are deleted while the stream is larger.
    pub max_bytes: Option<u64>,
    /// `x-max-age` in milliseconds: whole segments whose newest message is older are deleted.
    pub max_age_ms: Option<u64>,
}

/// A message to append. `properties` writes the message's encoded basic properties for the
/// offset the message gets (the broker adds the `x-stream-offset` header there, so that a
/// delivery sends the stored bytes as they are).
pub struct NewEntry<'a> {
    /// Wall-clock milliseconds at publication.
    pub timestamp: u64,
    /// `x-stream-filter-value` of the message, if any.
    pub filter: Option<&'a [u8]>,
    pub exchange: &'a [u8],
    pub routing_key: &'a [u8],
    pub properties: &'a dyn Fn(u64, &mut Vec<u8>),
    pub body: &'a [u8],
}

/// A message read back. The byte fields are slices of one read buffer (no copies).
#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub offset: u64,
    pub timestamp: u64,
    pub filter: Option<Bytes>,
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
}

/// Where a reader starts (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest message still held.
    First,
    /// The newest chunk: the first message of the batch the writer committed last (several
    /// when they were synced together, as RabbitMQ's `last` starts at its newest chunk), then
    /// everything after; the newest message after a restart; `Next` when empty.
    Last,
    /// Only messages committed from now on.
    Next,
    /// This offset; the first held one if it was deleted. Beyond the tail, the reader waits
    /// for it: the messages before it are skipped (as RabbitMQ's 0-9-1 stream consumers do).
    Offset(u64),
    /// The first message published at or after this wall-clock time (ms); `Next` if none.
    Timestamp(u64),
}

/// A reader's position: the next offset to read, and where it is in the files (so consecutive
/// reads neither search the index nor reopen files).
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    pub next: u64,
    /// Where `next` is in the files, with an open handle (`None`: found at the next read). A
    /// position that no longer fits `next` is dropped and found again.
    pub at: Option<ReadPos>,
}

/// A position in a segment file, with the file open for reading, and the rest of the last
/// chunk read (committed bytes never change: the next read starts there without a syscall).
#[derive(Clone)]
pub struct ReadPos {
    /// The segment's first offset.
    seg: u64,
    /// Byte position of the record with offset `offset` (or of the segment's end).
    pos: u64,
    offset: u64,
    file: Arc<File>,
    /// Bytes of the segment from `buf_pos` on (empty: none kept).
    buf: Bytes,
    buf_pos: u64,
}

impl std::fmt::Debug for ReadPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPos")
            .field("seg", &self.seg)
            .field("pos", &self.pos)
            .field("offset", &self.offset)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

/// What a stream holds, for management and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamInfo {
    /// The first offset held (== `next` when empty).
    pub first: u64,
    /// The offset the next committed message will get (one past the last committed one).
    pub next: u64,
    pub messages: u64,
    pub segments: u32,
    /// Bytes of segment files on disk.
    pub bytes: u64,
    /// Publication time of the first and last messages held (0 when empty).
    pub first_timestamp: u64,
    pub last_timestamp: u64,
}

/// In memory per segment: all the stream keeps about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// First offset (the file's name).
    base: u64,
    /// One past the last offset appended to it (== `base`: empty).
    next: u64,
    /// Bytes of the file (appended, written or not).
    size: u64,
    first_ts: u64,
    max_ts: u64,
}

/// A run of appended bytes the writer has not yet reported synced: once the segment `seg` is
/// durable up to `end`, every offset before `next` is committed.
#[derive(Debug, Clone, Copy)]
struct Pending {
    seg: u64,
    end: u64,
    next: u64,
    ts: u64,
}

/// How far the stream is committed (see the invariants at the top).
#[derive(Debug, Clone, Copy, Default)]
struct Committed {
    next: u64,
    seg: u64,
    pos: u64,
    /// Timestamp of the last committed message.
    ts: u64,
}

/// The segment being appended to.
#[derive(Debug)]
struct Current {
    target: Arc<dyn ExternalFile>,
    idx: Option<File>,
    idx_entries: u64,
    last_idx_pos: u64,
}

#[derive(Debug)]
struct State {
    segs: VecDeque<Segment>,
    /// The offset the next append gets.
    next: u64,
    current: Option<Current>,
    committed: Committed,
    pending: VecDeque<Pending>,
    /// Bytes of all segment files.
    bytes: u64,
    /// The record being appended (reused: no allocation per message).
    scratch: Vec<u8>,
    deleted: bool,
    /// The first offset of the newest batch the writer committed together (a *chunk*, in
    /// RabbitMQ's terms: where `Start::Last` begins); None before the first commit since open.
    last_chunk: Option<u64>,
}

impl State {
    /// The first offset held.
    fn first(&self) -> u64 {
        self.segs
            .front()
            .map_or(self.committed.next, |s| s.base.min(self.committed.next))
    }

    /// The index in `segs` of the segment starting at `base`.
    fn find(&self, base: u64) -> Option<usize> {
        let i = self.segs.partition_point(|s| s.base < base);
        (self.segs.get(i)?.base == base).then_some(i)
    }

    /// Bytes of `s` that are committed.
    fn limit(&self, s: &Segment) -> u64 {
        let c = &self.committed;
        match s.base.cmp(&c.seg) {
            std::cmp::Ordering::Less => s.size,
            std::cmp::Ordering::Equal => c.pos.min(s.size),
            std::cmp::Ordering::Greater => 0,
        }
    }
}

/// A segment file written through the message log's writer.
#[derive(Debug)]
struct SegFile {
    at: LazyFile,
    base: u64,
    deleted: Arc<AtomicBool>,
    stream: Weak<StreamLog>,
}

impl ExternalFile for SegFile {
    fn file(&self) -> std::io::Result<&File> {
        self.at.open()
    }

    fn take_new_dir(&self) -> Option<PathBuf> {
        self.at.take_new_dir()
    }

    fn gone(&self) -> bool {
        self.deleted.load(Ordering::Relaxed)
    }

    fn committed(&self, end: u64) {
        if let Some(s) = self.stream.upgrade() {
            s.on_committed(self.base, end);
        }
    }
}

/// One stream's files.
pub struct StreamLog {
    dir: PathBuf,
    options: StreamOptions,
    log: Arc<MessageLog>,
    state: Mutex<State>,
    /// The committed end (`StreamInfo::next`).
    committed_tx: watch::Sender<u64>,
    deleted: Arc<AtomicBool>,
    me: Weak<StreamLog>,
}

impl std::fmt::Debug for StreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLog")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn io_err(what: &'static str, path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, detail: String) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    }
}

impl StreamLog {
    /// Open (creating) the stream in `dir`, recovering what its files hold (a torn tail is cut
    /// off), with `log` as its writer.
    pub fn open(
        dir: &Path,
        options: StreamOptions,
        log: Arc<MessageLog>,
    ) -> Result<Arc<StreamLog>, StoreError> {
        // The directories this creates: each one's entry in its parent is synced, so that a
        // stream whose appends were confirmed does not vanish with its directory.
        let created: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        std::fs::create_dir_all(dir).map_err(|e| io_err("create the stream directory", dir, e))?;
        for d in created {
            if let Some(parent) = d.parent() {
                File::open(parent)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io_err("sync the directory", parent, e))?;
            }
        }
        let (segs, next) = recovery::recover(dir)?;
        let committed = Committed {
            next,
            seg: segs.back().map_or(0, |s| s.base),
            pos: segs.back().map_or(0, |s| s.size),
            ts: segs.back().map_or(0, |s| s.max_ts),
        };
        let bytes = segs.iter().map(|s| s.size).sum();
        let (committed_tx, _) = watch::channel(next);
        Ok(Arc::new_cyclic(|me| StreamLog {
            dir: dir.to_owned(),
            options,
            log,
            state: Mutex::new(State {
                segs,
                next,
                current: None,
                committed,
                pending: VecDeque::new(),
                bytes,
                scratch: Vec::new(),
                deleted: false,
                last_chunk: None,
            }),
            committed_tx,
            deleted: Arc::new(AtomicBool::new(false)),
            me: me.clone(),
        }))
    }

    /// Append one message; returns its offset and the message-log position its confirm waits
    /// for. Applies the size retention when a segment fills. After `delete`, nothing is stored
    /// and the position returned is 0 (already reached).
    pub fn append(self: &Arc<Self>, e: &NewEntry) -> (u64, u64) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if st.deleted {
            return (st.next, 0);
        }
        let offset = st.next;
        let mut buf = std::mem::take(&mut st.scratch);
        format::encode(&mut buf, offset, e);
        let total = buf.len() as u64;
        let header = SEGMENT_MAGIC.len() as u64;
        let roll = match (st.segs.back(), &st.current) {
            (Some(last), Some(_)) => {
                last.size > header && last.size + total > self.options.max_segment_bytes
            }
            _ => true,
        };
        if roll {
            self.roll(st, offset);
        }
        let cur = st.current.as_mut().expect("rolled");
        let seg = st.segs.back_mut().expect("rolled");
        let pos = seg.size;
        let (ticket, joined) = self.log.append_external(&cur.target, pos, &buf);
        if seg.next == seg.base {
            seg.first_ts = e.timestamp;
        }
        seg.size += total;
        seg.next = offset + 1;
        seg.max_ts = seg.max_ts.max(e.timestamp);
        if pos == header || pos >= cur.last_idx_pos + INDEX_EVERY {
            cur.last_idx_pos = pos;
            if let Some(f) = &cur.idx {
                let entry = IndexEntry {
                    offset,
                    max_ts: seg.max_ts,
                    pos,
                };
                let at = INDEX_MAGIC.len() as u64 + cur.idx_entries * format::INDEX_ENTRY as u64;
                if let Err(err) = f.write_all_at(&entry.encode(), at) {
                    // Reads fall back to scanning; the next open rebuilds the index.
                    warn!(dir = %self.dir.display(), "cannot write a stream index entry: {err}");
                    cur.idx = None;
                }
                cur.idx_entries += 1;
            }
        }
        let base = seg.base;
        match st.pending.back_mut() {
            Some(p) if joined && p.seg == base => {
                p.end = pos + total;
                p.next = offset + 1;
                p.ts = e.timestamp;
            }
            _ => st.pending.push_back(Pending {
                seg: base,
                end: pos + total,
                next: offset + 1,
                ts: e.timestamp,
            }),
        }
        st.next = offset + 1;
        st.bytes += total;
        if buf.capacity() <= 1 << 20 {
            // Kept for the next append; a huge message's buffer is not kept.
            st.scratch = buf;
        }
        (offset, ticket)
    }

    /// Start a new segment at `base` (its file is created by the writer), then apply the size
    /// retention.
    fn roll(&self, st: &mut State, base: u64) {
        let target: Arc<dyn ExternalFile> = Arc::new(SegFile {
            at: LazyFile::new(seg_path(&self.dir, base), self.dir.clone()),
            base,
            deleted: self.deleted.clone(),
            stream: self.me.clone(),
        });
        let ipath = idx_path(&self.dir, base);
        let idx = File::options()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&ipath)
            .and_then(|f| f.write_all_at(&INDEX_MAGIC, 0).map(|_| f));
        let idx = match idx {
            Ok(f) => Some(f),
            Err(err) => {
                warn!(path = %ipath.display(), "cannot create a stream index: {err}");
                None
            }
        };
        let header = SEGMENT_MAGIC.len() as u64;
        self.log.append_external(&target, 0, &SEGMENT_MAGIC);
        st.segs.push_back(Segment {
            base,
            next: base,
            size: header,
            first_ts: 0,
            max_ts: 0,
        });
        st.bytes += header;
        st.current = Some(Current {
            target,
            idx,
            idx_entries: 0,
            last_idx_pos: 0,
        });
        self.retain_bytes(st);
    }

    /// Delete the oldest segments while the stream is larger than `max_bytes`.
    fn retain_bytes(&self, st: &mut State) {
        let Some(max) = self.options.max_bytes else {
            return;
        };
        while st.bytes > max && self.can_delete_front(st) {
            self.delete_front(st);
        }
    }

    /// The oldest segment is not the newest one and is entirely committed.
    fn can_delete_front(&self, st: &State) -> bool {
        st.segs.len() > 1 && st.segs.front().is_some_and(|s| s.next <= st.committed.next)
    }

    fn delete_front(&self, st: &mut State) {
        let Some(s) = st.segs.pop_front() else {
            return;
        };
        st.bytes -= s.size;
        for p in [seg_path(&self.dir, s.base), idx_path(&self.dir, s.base)] {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(path = %p.display(), "cannot delete a stream segment: {e}");
                }
            }
        }
    }

    /// The writer made segment `seg` durable up to `end`.
    fn on_committed(&self, seg: u64, end: u64) {
        let mut st = self.state.lock();
        let mut last = None;
        while let Some(p) = st.pending.front() {
            if p.seg != seg || p.end > end {
                break;
            }
            last = st.pending.pop_front();
        }
        let Some(p) = last else {
            return;
        };
        let before = st.committed.next;
        if p.next > before {
            st.last_chunk = Some(before);
        }
        st.committed = Committed {
            next: p.next,
            seg: p.seg,
            pos: p.end,
            ts: p.ts,
        };
        if self.options.max_bytes.is_some_and(|m| st.bytes > m) {
            // A segment that filled before it was committed could not be deleted then.
            self.retain_bytes(&mut st);
        }
        drop(st);
        self.committed_tx.send_if_modified(|v| {
            let moved = p.next > *v;
            if moved {
                *v = p.next;
            }
            moved
        });
    }

    /// Watch the committed end (`StreamInfo::next`) move.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed_tx.subscribe()
    }

    /// Delete segments beyond `max_age_ms` (called periodically; the size limit is applied as
    /// segments fill, and here again).
    pub fn apply_retention(&self, now_ms: u64) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        if let Some(age) = self.options.max_age_ms {
            while self.can_delete_front(&st)
                && st
                    .segs
                    .front()
                    .is_some_and(|s| s.max_ts.saturating_add(age) < now_ms)
            {
                self.delete_front(&mut st);
            }
        }
        self.retain_bytes(&mut st);
    }

    pub fn info(&self) -> StreamInfo {
        let st = self.state.lock();
        let c = st.committed.next;
        let messages = st
            .segs
            .iter()
            .map(|s| s.next.min(c).saturating_sub(s.base))
            .sum();
        StreamInfo {
            first: st.first(),
            next: c,
            messages,
            segments: st.segs.len() as u32,
            bytes: st.bytes,
            first_timestamp: st.segs.front().map_or(0, |s| s.first_ts),
            last_timestamp: if messages > 0 { st.committed.ts } else { 0 },
        }
    }

    /// Bytes of RAM the stream's bookkeeping takes (summaries, pending runs, the append
    /// buffer): it grows with the number of segments, not of messages.
    pub fn ram_bytes(&self) -> usize {
        let st = self.state.lock();
        std::mem::size_of::<Self>()
            + st.segs.capacity() * std::mem::size_of::<Segment>()
            + st.pending.capacity() * std::mem::size_of::<Pending>()
            + st.scratch.capacity()
    }

    /// Delete every file of the stream (the queue was deleted); appends are refused after.
    /// Writes still pending in the message log's writer are dropped.
    pub fn delete(&self) {
        self.deleted.store(true, Ordering::Relaxed);
        {
            let mut st = self.state.lock();
            st.deleted = true;
            st.segs.clear();
            st.current = None;
            st.pending.clear();
            st.bytes = 0;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(dir = %self.dir.display(), "cannot delete a stream's files: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
