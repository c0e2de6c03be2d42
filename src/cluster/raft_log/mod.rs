//! A Raft log (openraft's `RaftLogStorage`) kept in segment files of its own, written through
//! Warren's message-log writer: appends of every group (and queue messages, and streams) share
//! its group commit.
//!
//! One directory per Raft group holds:
//! - `<generation>-<first index>.seg`: segments of entry records (format in `format`). Appends
//!   go to the newest segment only; a segment holds a contiguous run of indexes.
//! - `<generation>.meta`: the vote and the last purged log id, appended as whole-state records.
//! - `committed`: the last committed log id, rewritten in place, never synced (optional in
//!   openraft; a stale or lost one only makes a restart re-apply less).
//!
//! Why its own segments and not the stream store's: a stream's record carries AMQP fields, its
//! readers see only what is synced (Raft must read back an append at once) and it has no way to
//! cut its tail. What is reused is the writer (`MessageLog::append_external`: the group commit,
//! write retries through a full disk, one sync round for all groups) and the stream's ideas
//! (segments named by first index, CRC records, whole-segment deletion, a torn tail cut at open).
//!
//! Invariants:
//! - An append's callback is called only once the writer has synced every byte of it (the
//!   writer's `committed` call for its segment covers the append's end). Writes to one segment
//!   reach `committed` in append order, and a segment's writes all precede the next segment's.
//! - A segment is never written twice at the same place. A truncation closes the newest segment
//!   and appends go to a new one with a higher generation; at open, segments are replayed in
//!   generation order and each one drops what earlier ones held from its first index on. So a
//!   truncation is undone by a crash only while nothing was appended after it, and stale bytes
//!   still waiting in the writer are harmless.
//! - Files of truncated or purged segments are deleted (and cut segments shortened) only once
//!   the writer has nothing pending for them. A truncated segment's file is deleted at once; a
//!   purged one's is kept for a new segment (`SPARE_SEGMENTS`) or deleted on another thread.
//! - A purge writes the purged log id durably (meta) before it deletes anything; entries up to it
//!   are dropped at open even if their segment survived.
//! - `save_vote` returns once its meta record is synced (through the same writer).
//! - Memory: per segment, the position of each record (4 bytes per entry; a log is purged after
//!   each snapshot); the entries not yet synced, and up to `cache_bytes` of the newest synced ones,
//!   decoded (reads of the tail clone them: message bodies are `Bytes`, not copied). Older entries
//!   are read back from the files.
//! - Lock order: the group's `state`, then the writer's. The writer calls `committed` holding no
//!   lock of its own; callbacks are called with no lock held.

// openraft's `StorageError` is what its traits return; the helpers return it too.
#![allow(clippy::result_large_err)]

mod format;
mod recovery;
mod storage;
#[cfg(test)]
mod tests;

use crate::store::log::{ExternalFile, LazyFile};
use crate::store::{MessageLog, StoreError};
use format::{meta_name, seg_name, Meta, META_MAGIC, SEGMENT_MAGIC};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, RaftTypeConfig,
    StorageError, StorageIOError, Vote,
};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::oneshot;
use tracing::warn;

/// Sizes of a group's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftLogOptions {
    /// A new segment is started once the current one would grow past this.
    pub segment_size: u64,
    /// Bytes (encoded) of synced entries kept decoded in memory for reads of the tail.
    pub cache_bytes: usize,
    /// A new meta file is started once the current one would grow past this.
    pub meta_size: u64,
}

impl Default for RaftLogOptions {
    fn default() -> Self {
        RaftLogOptions {
            segment_size: 16 << 20,
            cache_bytes: 1 << 20,
            meta_size: 64 << 10,
        }
    }
}

type Nid<C> = <C as RaftTypeConfig>::NodeId;

/// Which file of a group a writer target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Seg(u64),
    Meta(u64),
}

/// A file of the group written through the message log's writer.
struct Target<C: RaftTypeConfig> {
    kind: Kind,
    at: LazyFile,
    shared: Weak<Shared<C>>,
}

impl<C: RaftTypeConfig> Debug for Target<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLogFile")
            .field("path", &self.at.path)
            .finish()
    }
}

impl<C> ExternalFile for Target<C>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
    C::D: Clone,
{
    fn file(&self) -> std::io::Result<&File> {
        self.at.open()
    }

    fn take_new_dir(&self) -> Option<PathBuf> {
        self.at.take_new_dir()
    }

    fn gone(&self) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|s| s.deleted.load(Ordering::Relaxed))
    }

    fn committed(&self, end: u64) {
        if let Some(s) = self.shared.upgrade() {
            s.on_committed(self.kind, end);
        }
    }
}

/// An append whose callback waits for its segment to be synced up to `end`.
struct Waiter<C: RaftTypeConfig> {
    end: u64,
    /// Every index before it is durable once this is.
    next: u64,
    callback: LogFlushed<C>,
    /// When the append was handed over, and its entries (`stages::RAFT_APPEND`).
    started: std::time::Instant,
    entries: u64,
}

/// A segment: where its records are, and how far the writer has gone.
struct Seg<C: RaftTypeConfig> {
    generation: u64,
    base: u64,
    /// File position of each record (entry `base + i` at `positions[i]`).
    positions: Vec<u32>,
    /// End of the records kept.
    size: u64,
    /// Bytes handed to the writer (or found at open); more than `size` after a cut.
    appended: u64,
    /// Bytes the writer has synced.
    durable: u64,
    /// Appends may go here (only the newest segment, until a truncation).
    open: bool,
    /// Purged: every record in it is at or before the purged id (a dead segment that may be
    /// reused for a new one, whose records all come after).
    purged: bool,
    target: Arc<Target<C>>,
    ext: Arc<dyn ExternalFile>,
    waiting: VecDeque<Waiter<C>>,
}

impl<C: RaftTypeConfig> Seg<C> {
    fn end_index(&self) -> u64 {
        self.base + self.positions.len() as u64
    }

    fn pos_of(&self, index: u64) -> u64 {
        let k = (index - self.base) as usize;
        self.positions.get(k).map_or(self.size, |p| *p as u64)
    }

    fn idle(&self) -> bool {
        self.durable >= self.appended
    }
}

/// A target, and the same as the writer takes it.
type TargetPair<C> = (Arc<Target<C>>, Arc<dyn ExternalFile>);

/// The meta file being appended to.
struct MetaFile<C: RaftTypeConfig> {
    generation: u64,
    target: Option<TargetPair<C>>,
    size: u64,
    /// Older meta files, deleted once the current one's first record is synced (at `first_end`).
    old: Vec<PathBuf>,
    first_end: u64,
    waiting: VecDeque<(u64, u64, oneshot::Sender<()>)>,
}

struct State<C: RaftTypeConfig> {
    segs: VecDeque<Seg<C>>,
    /// Truncated or purged segments whose writes are still pending; deleted once idle.
    dead: Vec<Seg<C>>,
    /// Files of purged segments kept for new segments (`SPARE_SEGMENTS` at most).
    spare: Vec<PathBuf>,
    next_generation: u64,
    /// The last entry present.
    last: Option<LogId<Nid<C>>>,
    purged: Option<LogId<Nid<C>>>,
    vote: Option<Vote<Nid<C>>>,
    committed: Option<LogId<Nid<C>>>,
    /// The newest entries (contiguous, ending at `last`) with their encoded sizes.
    cache: VecDeque<(Entry<C>, usize)>,
    cache_bytes: usize,
    /// Every entry before this index is synced.
    durable_next: u64,
    meta: MetaFile<C>,
    committed_file: Option<File>,
    /// The segment last handed a write (live or dead): an append's callback waits for it.
    last_write: Option<u64>,
}

impl<C: RaftTypeConfig> State<C> {
    fn cache_first(&self) -> u64 {
        self.cache.front().map_or(u64::MAX, |(e, _)| e.log_id.index)
    }

    /// The first index present (meaningful when `last` is some).
    fn first_index(&self) -> u64 {
        let purged_next = self.purged.as_ref().map_or(0, |p| p.index + 1);
        let seg_first = self.segs.front().map_or(u64::MAX, |s| s.base);
        purged_next.max(seg_first.min(self.cache_first()))
    }

    fn seg_of(&self, index: u64) -> Option<&Seg<C>> {
        let i = self.segs.partition_point(|s| s.base <= index);
        let s = self.segs.get(i.checked_sub(1)?)?;
        (index < s.end_index()).then_some(s)
    }

    fn find_seg(&mut self, generation: u64) -> Option<&mut Seg<C>> {
        if let Some(i) = self.segs.iter().position(|s| s.generation == generation) {
            return self.segs.get_mut(i);
        }
        self.dead.iter_mut().find(|s| s.generation == generation)
    }
}

struct Shared<C: RaftTypeConfig> {
    dir: PathBuf,
    writer: Arc<MessageLog>,
    options: RaftLogOptions,
    state: Mutex<State<C>>,
    /// Records cut off at open (torn, damaged, or after a gap).
    cut_at_open: usize,
    /// `delete` ran: pending writes are dropped.
    deleted: AtomicBool,
    me: Weak<Shared<C>>,
}

impl<C: RaftTypeConfig> Drop for Shared<C> {
    fn drop(&mut self) {
        // Its spare files stay on disk until the group's next open deletes them.
        SPARES.fetch_sub(self.state.get_mut().spare.len(), Ordering::Relaxed);
    }
}

/// One Raft group's log. Clones share it (the log reader is a clone).
pub struct RaftLog<C: RaftTypeConfig> {
    shared: Arc<Shared<C>>,
}

impl<C: RaftTypeConfig> Clone for RaftLog<C> {
    fn clone(&self) -> Self {
        RaftLog {
            shared: self.shared.clone(),
        }
    }
}

impl<C: RaftTypeConfig> Debug for RaftLog<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog")
            .field("dir", &self.shared.dir)
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

fn write_err<NID: openraft::NodeId>(e: impl std::error::Error + 'static) -> StorageError<NID> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn read_err<NID: openraft::NodeId>(e: impl std::error::Error + 'static) -> StorageError<NID> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

/// Purged segment files a group keeps to reuse for new segments rather than delete and create
/// files (PostgreSQL recycles its WAL segments so). On ext4, fdatasync of appends into a new
/// file costs a journal commit for its growing size and blocks; into a reused file it writes
/// the data alone. And deleting a 16 MiB file takes 30–60 ms of journal work that slows every
/// sync on the disk meanwhile. A snapshot purges about as many segments as the log then fills
/// before the next one, so the spares bound the log's disk use at what it reached anyway.
const SPARE_SEGMENTS: usize = 16;
/// Spare files of all groups of this process together (1 GiB of default segments): a node with
/// many busy quorum queues keeps no more.
const NODE_SPARES: usize = 64;
static SPARES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Delete a file that may already be gone.
fn remove_now(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %path.display(), "cannot delete a raft log file: {e}");
        }
    }
}

/// Delete a file no longer needed (a purged segment, a replaced meta file) on a thread of its
/// own, in the order asked. Unlinking a 16 MiB segment costs ext4 30–60 ms while other
/// processes' fdatasyncs keep its journal busy, and a snapshot frees several segments at once:
/// done in place, under the log's lock, it held up openraft's core and the writer for hundreds
/// of milliseconds. A file left behind by a crash before its turn is deleted at the next open
/// (everything before the purged id is).
fn remove(path: &Path) {
    static REAPER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<PathBuf>>> =
        std::sync::OnceLock::new();
    let reaper = REAPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
        std::thread::Builder::new()
            .name("raft-log-reaper".into())
            .spawn(move || rx.into_iter().for_each(|p| remove_now(&p)))
            .map(|_| tx)
            .map_err(|e| warn!("no thread to delete raft log files, deleting in place: {e}"))
            .ok()
    });
    match reaper {
        Some(tx) => {
            if let Err(e) = tx.send(path.to_owned()) {
                remove_now(&e.0);
            }
        }
        None => remove_now(path),
    }
}

impl<C> RaftLog<C>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
    C::D: Clone,
{
    /// Open (creating) the group's log in `dir`, recovering what its files hold (a torn tail is
    /// cut off); `writer` writes and syncs its files, shared with every other group.
    pub fn open(
        dir: &Path,
        writer: Arc<MessageLog>,
        options: RaftLogOptions,
    ) -> Result<RaftLog<C>, StoreError> {
        let created: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        std::fs::create_dir_all(dir)
            .map_err(|e| io_err("create the raft log directory", dir, e))?;
        for d in created {
            if let Some(parent) = d.parent() {
                File::open(parent)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io_err("sync the directory", parent, e))?;
            }
        }
        let rec = recovery::recover::<Nid<C>>(dir)?;
        let cpath = dir.join("committed");
        let committed_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&cpath)
            .map_err(|e| io_err("open", &cpath, e))?;
        let durable_next = rec
            .last
            .as_ref()
            .or(rec.meta.purged.as_ref())
            .map_or(0, |l| l.index + 1);
        let shared = Arc::new_cyclic(|me: &Weak<Shared<C>>| {
            let segs = rec
                .segs
                .into_iter()
                .map(|s| {
                    let target = Arc::new(Target {
                        kind: Kind::Seg(s.generation),
                        // Not kept open: never written again, and read back rarely.
                        at: LazyFile::new(dir.join(seg_name(s.generation, s.base)), dir.to_owned()),
                        shared: me.clone(),
                    });
                    Seg {
                        generation: s.generation,
                        base: s.base,
                        positions: s.positions,
                        size: s.size,
                        appended: s.size,
                        durable: s.size,
                        open: false,
                        purged: false,
                        ext: target.clone(),
                        target,
                        waiting: VecDeque::new(),
                    }
                })
                .collect();
            Shared {
                dir: dir.to_owned(),
                writer,
                options,
                state: Mutex::new(State {
                    segs,
                    dead: Vec::new(),
                    spare: Vec::new(),
                    next_generation: rec.next_generation,
                    last: rec.last,
                    purged: rec.meta.purged,
                    vote: rec.meta.vote,
                    committed: rec.committed,
                    cache: VecDeque::new(),
                    cache_bytes: 0,
                    durable_next,
                    meta: MetaFile {
                        generation: rec.meta_generation,
                        target: None,
                        size: 0,
                        old: rec.meta_files,
                        first_end: 0,
                        waiting: VecDeque::new(),
                    },
                    committed_file: Some(committed_file),
                    last_write: None,
                }),
                cut_at_open: rec.cut,
                deleted: AtomicBool::new(false),
                me: me.clone(),
            }
        });
        Ok(RaftLog { shared })
    }

    /// Segment files the log holds (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.shared.state.lock().segs.len()
    }

    /// Delete the group's files (its queue was deleted). Writes still pending in the writer
    /// are dropped, and their callbacks with them (openraft sees the log closed). Nothing may
    /// be appended after.
    pub fn delete(&self) {
        self.shared.deleted.store(true, Ordering::Relaxed);
        {
            let mut st = self.shared.state.lock();
            st.segs.clear();
            st.dead.clear();
            SPARES.fetch_sub(std::mem::take(&mut st.spare).len(), Ordering::Relaxed);
            st.cache.clear();
            st.cache_bytes = 0;
            st.last = None;
            st.meta.target = None;
            st.meta.waiting.clear();
            st.committed_file = None;
            st.last_write = None;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.shared.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(dir = %self.shared.dir.display(), "cannot delete a raft log: {e}");
            }
        }
    }

    /// Purged segments' files kept to be reused (for tests).
    pub fn spare_files(&self) -> usize {
        self.shared.state.lock().spare.len()
    }

    /// Segment files kept open (the one appended to; others are opened for a read).
    pub fn open_segment_files(&self) -> usize {
        let st = self.shared.state.lock();
        st.segs
            .iter()
            .chain(st.dead.iter())
            .filter(|s| s.target.at.file.get().is_some())
            .count()
    }

    /// Records the open cut off (torn, damaged, or after a gap).
    pub fn cut_at_open(&self) -> usize {
        self.shared.cut_at_open
    }

    /// Bytes of entries kept decoded in memory.
    pub fn cached_bytes(&self) -> usize {
        self.shared.state.lock().cache_bytes
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

impl<C> Shared<C>
where
    C: RaftTypeConfig<Entry = Entry<C>>,
    C::D: Clone,
{
    /// Start a new segment at `base` (the writer creates its file).
    fn roll(&self, st: &mut State<C>, base: u64) {
        let generation = st.next_generation;
        st.next_generation += 1;
        let path = self.dir.join(seg_name(generation, base));
        let at = match st.spare.pop() {
            Some(old) => {
                SPARES.fetch_sub(1, Ordering::Relaxed);
                LazyFile::reusing(path, self.dir.clone(), old)
            }
            None => LazyFile::new(path, self.dir.clone()),
        };
        let target = Arc::new(Target {
            kind: Kind::Seg(generation),
            at,
            shared: self.me.clone(),
        });
        let ext: Arc<dyn ExternalFile> = target.clone();
        self.writer
            .append_external(&ext, 0, &format::with_end(SEGMENT_MAGIC.to_vec()));
        st.last_write = Some(generation);
        if let Some(b) = st.segs.back_mut() {
            b.open = false;
        }
        let header = SEGMENT_MAGIC.len() as u64;
        st.segs.push_back(Seg {
            generation,
            base,
            positions: Vec::new(),
            size: header,
            appended: header,
            durable: 0,
            open: true,
            purged: false,
            target,
            ext,
            waiting: VecDeque::new(),
        });
    }

    /// Append a meta record of the current vote and purged id; the receiver hears once it is
    /// synced.
    fn write_meta(&self, st: &mut State<C>) -> Result<oneshot::Receiver<()>, postcard::Error> {
        let rec = format::encode_plain(&Meta {
            vote: st.vote.clone(),
            purged: st.purged.clone(),
        })?;
        let m = &mut st.meta;
        if m.target.is_none() || m.size + rec.len() as u64 > self.options.meta_size {
            if let Some((t, _)) = m.target.take() {
                m.old.push(t.at.path.clone());
            }
            m.generation += 1;
            let target = Arc::new(Target {
                kind: Kind::Meta(m.generation),
                at: LazyFile::new(self.dir.join(meta_name(m.generation)), self.dir.clone()),
                shared: self.me.clone(),
            });
            let ext: Arc<dyn ExternalFile> = target.clone();
            self.writer.append_external(&ext, 0, &META_MAGIC);
            m.size = META_MAGIC.len() as u64;
            m.first_end = m.size + rec.len() as u64;
            m.target = Some((target, ext));
        }
        let (_, ext) = m.target.as_ref().expect("started");
        self.writer.append_external(ext, m.size, &rec);
        m.size += rec.len() as u64;
        let (tx, rx) = oneshot::channel();
        m.waiting.push_back((m.generation, m.size, tx));
        Ok(rx)
    }

    /// The writer synced the file `kind` up to `end`.
    fn on_committed(&self, kind: Kind, end: u64) {
        let mut fire = Vec::new();
        let mut st = self.state.lock();
        match kind {
            Kind::Seg(generation) => {
                let mut next = None;
                if let Some(s) = st.find_seg(generation) {
                    s.durable = s.durable.max(end);
                    while s.waiting.front().is_some_and(|w| w.end <= end) {
                        let w = s.waiting.pop_front().expect("front");
                        next = Some(w.next);
                        crate::observe::stages::RAFT_APPEND.record(w.started, w.entries);
                        fire.push(w.callback);
                    }
                }
                if let Some(n) = next {
                    st.durable_next = st.durable_next.max(n);
                }
                self.tidy(&mut st);
            }
            Kind::Meta(generation) => {
                let m = &mut st.meta;
                while m
                    .waiting
                    .front()
                    .is_some_and(|(g, e, _)| *g < generation || (*g == generation && *e <= end))
                {
                    let (_, _, tx) = m.waiting.pop_front().expect("front");
                    let _ = tx.send(());
                }
                if generation == m.generation && end >= m.first_end {
                    for p in m.old.drain(..) {
                        remove(&p);
                    }
                }
            }
        }
        drop(st);
        for cb in fire {
            cb.log_io_completed(Ok(()));
        }
    }

    /// Delete dead segments and shorten cut ones once the writer has nothing pending for them;
    /// drop synced entries from the cache beyond its budget.
    fn tidy(&self, st: &mut State<C>) {
        let State { dead, spare, .. } = st;
        dead.retain(|s| {
            if !s.idle() || !s.waiting.is_empty() {
                return true;
            }
            if !s.purged {
                // Truncated: deleted at once, lest a restart bring its entries back.
                remove_now(&s.target.at.path);
            } else if s.size >= self.options.segment_size / 2
                && spare.len() < SPARE_SEGMENTS
                && SPARES
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < NODE_SPARES).then_some(n + 1)
                    })
                    .is_ok()
            {
                // Kept, under its old name, for a new segment (a restart deletes it as a
                // purged segment).
                spare.push(s.target.at.path.clone());
            } else {
                remove(&s.target.at.path);
            }
            false
        });
        for s in st.segs.iter_mut() {
            if s.size < s.appended && s.idle() {
                let cut = match s.target.at.file.get() {
                    Some(f) => f.set_len(s.size),
                    None => File::options()
                        .write(true)
                        .open(&s.target.at.path)
                        .and_then(|f| f.set_len(s.size)),
                };
                if let Err(e) = cut {
                    warn!(path = %s.target.at.path.display(), "cannot cut a raft log segment: {e}");
                    continue;
                }
                s.appended = s.size;
                s.durable = s.size;
            }
            if !s.open && s.idle() && s.target.at.file.get().is_some() {
                // A full or cut segment is written no more: close its file (a process holds
                // thousands of groups), and open it again for the rare read.
                let target = Arc::new(Target {
                    kind: s.target.kind,
                    at: LazyFile::new(s.target.at.path.clone(), s.target.at.dir.clone()),
                    shared: s.target.shared.clone(),
                });
                s.ext = target.clone();
                s.target = target;
            }
        }
        while st.cache_bytes > self.options.cache_bytes {
            match st.cache.front() {
                Some((e, n)) if e.log_id.index < st.durable_next => {
                    st.cache_bytes -= n;
                    st.cache.pop_front();
                }
                _ => break,
            }
        }
    }
}
