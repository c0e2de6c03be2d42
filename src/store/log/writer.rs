//! Appending and the writer thread: group commit, and what it does when the disk is full.
//!
//! Invariants:
//! - One writer thread owns the files. Appenders copy records into the pending batch under a
//!   mutex; the writer takes the whole batch, writes it with `pwrite` at known offsets (a retry
//!   after an I/O error rewrites the same bytes at the same place), fdatasyncs the segment files,
//!   and only then publishes the new `synced` position: a confirm waits for its record's position
//!   to be synced (group commit: every record in the batch shares one fdatasync).
//! - A batch that cannot be written (disk full, I/O error) is retried every 100 ms with
//!   `failing` set, and confirms wait meanwhile; segments that consumers emptied meanwhile are
//!   deleted at once, since that is what gives the space back. A batch written but not synced is
//!   synced again, not rewritten. At shutdown the writer gives up after 20 attempts.
//! - `written` moves only once a batch is in its files: records before it can be read back.
//! - External writes (`append_external`: bytes of a file that is not one of the log's segments,
//!   e.g. a stream's segment) join the same batch, share its write retries and its fdatasync, and
//!   count in `lsn` and `pending` like records. Consecutive ones to the same file coalesce into
//!   one write. Their targets are told (`ExternalFile::committed`) just before `synced` passes the
//!   batch, in batch order, with no lock of the log held. A target that is `gone` (its stream was
//!   deleted) is neither written nor synced: its pending bytes are dropped.

use super::record::{self, HEADER, SEGMENT_MAGIC};
use super::spares::Spares;
use super::{ack_path, seg_path, MessageLog, NewRecord, Stored};
use crate::observe::stages;
use parking_lot::MutexGuard;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info};

/// Threads that fdatasync external files at once, when a round has more than two.
const SYNC_THREADS: usize = 16;

/// How long ack entries and segment deletions wait for a round of records to go with, before
/// the writer makes a round of them alone.
pub(super) const MARK_DELAY: Duration = Duration::from_millis(2);

/// Marks the log directory itself as needing a sync (a segment file was created).
const DIRECTORY: u32 = u32::MAX;

/// Records to write at an offset of a segment.
#[derive(Debug)]
struct SegWrite {
    segment: u32,
    offset: u64,
    data: Vec<u8>,
}

/// An external file opened (created) on the writer's first write, which then reports its
/// directory once so the new entry is synced: the part every `ExternalFile` shares.
#[derive(Debug)]
pub struct LazyFile {
    pub path: PathBuf,
    /// The directory holding `path`.
    pub dir: PathBuf,
    /// Open once written to (or opened for reading by its owner).
    pub file: std::sync::OnceLock<File>,
    new_dir: std::sync::atomic::AtomicBool,
    /// A file no longer needed, renamed to `path` at the first open instead of creating one:
    /// its blocks are allocated already, so syncing writes into it changes no file size.
    reuse: parking_lot::Mutex<Option<PathBuf>>,
}

impl LazyFile {
    pub fn new(path: PathBuf, dir: PathBuf) -> Self {
        LazyFile {
            path,
            dir,
            file: std::sync::OnceLock::new(),
            new_dir: std::sync::atomic::AtomicBool::new(false),
            reuse: parking_lot::Mutex::new(None),
        }
    }

    /// A file at `path` made, on its first open, by renaming `old` (whose bytes it keeps until
    /// overwritten: its reader must tell them from its own).
    pub fn reusing(path: PathBuf, dir: PathBuf, old: PathBuf) -> Self {
        let f = LazyFile::new(path, dir);
        *f.reuse.lock() = Some(old);
        f
    }

    /// `ExternalFile::file`: open or create it, read-write.
    pub fn open(&self) -> std::io::Result<&File> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        if let Some(old) = self.reuse.lock().take() {
            if let Err(e) = std::fs::rename(&old, &self.path) {
                tracing::warn!(path = %old.display(), "cannot reuse a file, creating one: {e}");
            }
        }
        let f = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.path)?;
        self.new_dir
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(self.file.get_or_init(|| f))
    }

    /// `ExternalFile::take_new_dir`.
    pub fn take_new_dir(&self) -> Option<PathBuf> {
        self.new_dir
            .swap(false, std::sync::atomic::Ordering::Relaxed)
            .then(|| self.dir.clone())
    }
}

/// A file outside the log whose appends go through the log's writer (a stream's segment file),
/// so that they share its group commit.
pub trait ExternalFile: Send + Sync + std::fmt::Debug {
    /// The file to write into. Called by the writer thread only; it may open (create) the file
    /// on the first call, and an error is retried as any write error.
    fn file(&self) -> std::io::Result<&File>;
    /// Once, after `file` created the file: the directory whose entry must be synced with it.
    fn take_new_dir(&self) -> Option<PathBuf>;
    /// The file's owner is gone (deleted): its pending writes are dropped, not retried.
    fn gone(&self) -> bool;
    /// The bytes before `end` are durable (or written, with `LogOptions::sync_interval`);
    /// `synced` passes their ticket right after. Called by the writer thread in append order,
    /// with no lock of the log held.
    fn committed(&self, end: u64);
}

/// Bytes to write at a position of an external file.
#[derive(Debug)]
struct ExtWrite {
    target: Arc<dyn ExternalFile>,
    pos: u64,
    data: Vec<u8>,
}

fn target_key(t: &Arc<dyn ExternalFile>) -> usize {
    Arc::as_ptr(t) as *const () as usize
}

/// What the writer takes in one go: records, ack entries and segments to delete.
#[derive(Debug, Default)]
pub(super) struct Batch {
    segs: Vec<SegWrite>,
    acks: Vec<(u32, Vec<u8>)>,
    pub(super) deletes: Vec<u32>,
    /// External writes, in append order.
    ext: Vec<ExtWrite>,
    /// Per external target, the index in `ext` of its latest write (to coalesce into).
    ext_last: HashMap<usize, usize>,
    /// The log position once this batch is written.
    lsn: u64,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.segs.is_empty()
            && self.acks.is_empty()
            && self.deletes.is_empty()
            && self.ext.is_empty()
    }

    /// Whether it holds bytes for a file: records or external writes (confirms wait for them).
    pub(super) fn has_writes(&self) -> bool {
        !self.segs.is_empty() || !self.ext.is_empty()
    }

    pub(super) fn ack_buf(&mut self, segment: u32) -> &mut Vec<u8> {
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

impl MessageLog {
    /// Append a message stored for `queues`; returns where it is and the position to wait for
    /// before confirming it.
    pub fn append(self: &Arc<Self>, r: &NewRecord) -> (Stored, u64) {
        let appended = self.append_unannounced(r);
        self.wake_writer();
        appended
    }

    /// `append` without waking the writer: the caller must call `wake_writer` once it has
    /// appended what it had (a batch of records then starts one round, not a round for the
    /// first alone and another for the rest).
    pub fn append_unannounced(self: &Arc<Self>, r: &NewRecord) -> (Stored, u64) {
        let (r, len) = record::fit(r);
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
        record::encode(&mut w.data, &r, len, segment);
        s.current_len += total;
        *s.live.get_mut(&segment).expect("inserted") += r.queues.len() as u64;
        s.lsn += total;
        self.pending.fetch_add(total, Ordering::Relaxed);
        s.batch.lsn = s.lsn;
        let ticket = s.lsn;
        drop(s);
        (
            Stored {
                log: self.clone(),
                segment,
                offset: offset as u32,
            },
            ticket,
        )
    }

    /// Wake the writer for what was appended (`append_unannounced`).
    pub fn wake_writer(&self) {
        self.wake.notify_one();
    }

    /// Append `data` at `pos` of an external file, durably with the log's next group commit.
    /// Returns the position to wait for (as `append`'s), and whether the bytes joined the
    /// previous pending write to that file (they follow it directly, and the writer has not
    /// taken it yet): the target's `committed` is then called once for both. Not for a scratch
    /// log (it never syncs).
    pub fn append_external(
        &self,
        target: &Arc<dyn ExternalFile>,
        pos: u64,
        data: &[u8],
    ) -> (u64, bool) {
        debug_assert!(
            !self.options.scratch,
            "external writes need a log that syncs"
        );
        let key = target_key(target);
        let mut s = self.state.lock();
        let b = &mut s.batch;
        let joined = match b.ext_last.get(&key) {
            Some(&i) if b.ext[i].pos + b.ext[i].data.len() as u64 == pos => {
                b.ext[i].data.extend_from_slice(data);
                true
            }
            _ => {
                let mut buf = Vec::with_capacity(data.len().max(64 << 10));
                buf.extend_from_slice(data);
                b.ext_last.insert(key, b.ext.len());
                b.ext.push(ExtWrite {
                    target: target.clone(),
                    pos,
                    data: buf,
                });
                false
            }
        };
        s.lsn += data.len() as u64;
        self.pending.fetch_add(data.len() as u64, Ordering::Relaxed);
        s.batch.lsn = s.lsn;
        let ticket = s.lsn;
        drop(s);
        self.wake.notify_one();
        (ticket, joined)
    }

    pub(super) fn run_writer(self: Arc<Self>) {
        let mut files: HashMap<u32, File> = HashMap::new();
        let mut acks: HashMap<u32, File> = HashMap::new();
        let mut last_sync = Instant::now();
        let mut unsynced: HashSet<u32> = HashSet::new();
        let mut ext = ExtUnsynced::default();
        let mut spares = Spares::open(&self.dir);
        loop {
            let mut batch = {
                let mut s = self.state.lock();
                let mut marks_since: Option<Instant> = None;
                loop {
                    if s.batch.has_writes() || (!s.batch.is_empty() && s.stop) {
                        break;
                    }
                    if !s.batch.is_empty() {
                        // Only ack entries and deletions: wait a little for records to take
                        // them along (a round of their own per consumer ack would take the
                        // writer away from the records confirms wait for).
                        let since = *marks_since.get_or_insert_with(Instant::now);
                        match MARK_DELAY.checked_sub(since.elapsed()) {
                            Some(left) if !left.is_zero() => {
                                let _ = self.wake.wait_for(&mut s, left);
                                continue;
                            }
                            _ => break,
                        }
                    }
                    if s.stop {
                        drop(s);
                        self.sync_all(&files, &mut unsynced, &mut ext);
                        return;
                    }
                    match self.options.sync_interval {
                        Some(d) if !unsynced.is_empty() || !ext.is_empty() => {
                            let _ = self.wake.wait_for(&mut s, d);
                            if s.batch.is_empty() && last_sync.elapsed() >= d {
                                break;
                            }
                        }
                        _ => {
                            let due = MutexGuard::unlocked(&mut s, || spares.expire());
                            // The lock was let go: whatever came meanwhile (its wake-up sent
                            // while nobody waited) is looked at again, never waited past.
                            if !s.batch.is_empty() || s.stop {
                                continue;
                            }
                            match due {
                                // Spares are kept a while: wake to delete them if nothing
                                // comes.
                                Some(left) => {
                                    let _ = self.wake.wait_for(&mut s, left);
                                }
                                None => self.wake.wait(&mut s),
                            }
                        }
                    }
                }
                std::mem::take(&mut s.batch)
            };
            let mut attempt = 0u32;
            let write_started = Instant::now();
            loop {
                match self.write_batch(
                    &batch,
                    &mut files,
                    &mut acks,
                    &mut unsynced,
                    &mut ext,
                    &mut spares,
                ) {
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
                        spares.clear();
                        attempt += 1;
                        // Consumers draining is what gives the space back: delete the segments
                        // they emptied meanwhile now, not after this batch (which waits for that
                        // very space).
                        let emptied = std::mem::take(&mut self.state.lock().batch.deletes);
                        for n in emptied {
                            self.delete_segment(
                                n,
                                &mut files,
                                &mut acks,
                                &mut unsynced,
                                &mut spares,
                            );
                            batch.deletes.push(n);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            stages::LOG_WRITE.record(
                write_started,
                (batch.segs.len() + batch.ext.len() + batch.acks.len()) as u64,
            );
            let written: u64 = batch.segs.iter().map(|w| w.data.len() as u64).sum::<u64>()
                + batch.ext.iter().map(|w| w.data.len() as u64).sum::<u64>();
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
                None => !self.options.scratch,
                Some(d) => last_sync.elapsed() >= d,
            };
            if sync_now {
                let sync_started = Instant::now();
                let synced_files = (unsynced.len() + ext.files.len()) as u64;
                if let Err(e) = self.try_sync(&files, &mut unsynced, &mut ext) {
                    error!(dir = %self.dir.display(), "cannot sync the message log: {e}");
                    self.failing.store(true, Ordering::Relaxed);
                    // The batch is written but not durable: rewrite nothing, sync again soon.
                    while self.try_sync(&files, &mut unsynced, &mut ext).is_err() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    self.failing.store(false, Ordering::Relaxed);
                }
                stages::LOG_SYNC.record(sync_started, synced_files);
                last_sync = Instant::now();
            }
            if batch.lsn > 0 && (sync_now || self.options.sync_interval.is_some()) {
                // Targets first: once a confirm goes out (on `synced`), what it confirms is
                // readable and counted.
                for w in &batch.ext {
                    if !w.target.gone() {
                        w.target.committed(w.pos + w.data.len() as u64);
                    }
                }
                self.synced.send_if_modified(|v| {
                    let moved = batch.lsn > *v;
                    if moved {
                        *v = batch.lsn;
                    }
                    moved
                });
            }
            for n in &batch.deletes {
                self.delete_segment(*n, &mut files, &mut acks, &mut unsynced, &mut spares);
            }
            if acks.len() > 64 {
                acks.clear();
            }
            let current = self.state.lock().current;
            files.retain(|n, _| *n == current || unsynced.contains(n));
            spares.expire();
        }
    }

    /// Remove a segment and its acks (every message in it is gone from every queue): its file
    /// is kept as a spare (`spares`) unless the disk is full, and goes before its ack file does.
    fn delete_segment(
        &self,
        n: u32,
        files: &mut HashMap<u32, File>,
        acks: &mut HashMap<u32, File>,
        unsynced: &mut HashSet<u32>,
        spares: &mut Spares,
    ) {
        files.remove(&n);
        acks.remove(&n);
        unsynced.remove(&n);
        self.readers.lock().remove(&n);
        let keep = !self.failing.load(Ordering::Relaxed);
        spares.retire(n, &seg_path(&self.dir, n), keep);
        let _ = std::fs::remove_file(ack_path(&self.dir, n));
    }

    fn write_batch(
        &self,
        batch: &Batch,
        files: &mut HashMap<u32, File>,
        acks: &mut HashMap<u32, File>,
        unsynced: &mut HashSet<u32>,
        ext: &mut ExtUnsynced,
        spares: &mut Spares,
    ) -> std::io::Result<()> {
        if self.inject_failure.load(Ordering::Relaxed)
            && !(batch.segs.is_empty() && batch.ext.is_empty())
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "injected: no space left on device",
            ));
        }
        for (i, w) in batch.segs.iter().enumerate() {
            if batch.deletes.contains(&w.segment) {
                // Every message in it is gone already: nothing of it needs writing.
                continue;
            }
            let f = match files.entry(w.segment) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let path = seg_path(&self.dir, w.segment);
                    if !path.exists() {
                        // A new segment, in a spare's file if there is one. Either way its
                        // directory entry must be synced too.
                        spares.reuse_as(&path);
                        if !self.options.scratch {
                            unsynced.insert(DIRECTORY);
                        }
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
            if !self.options.scratch {
                unsynced.insert(w.segment);
                if batch
                    .segs
                    .get(i + 1)
                    .is_none_or(|next| next.segment != w.segment)
                {
                    // The segment's last write in this batch: mark the end (the next write
                    // goes over the mark).
                    f.write_all_at(&record::END_MARK, w.offset + w.data.len() as u64)?;
                }
            }
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
        for w in &batch.ext {
            if w.target.gone() {
                continue;
            }
            let f = w.target.file()?;
            if let Some(d) = w.target.take_new_dir() {
                ext.dirs.insert(d);
            }
            f.write_all_at(&w.data, w.pos)?;
            if !self.options.scratch {
                ext.files.insert(target_key(&w.target), w.target.clone());
            }
        }
        Ok(())
    }

    fn try_sync(
        &self,
        files: &HashMap<u32, File>,
        unsynced: &mut HashSet<u32>,
        ext: &mut ExtUnsynced,
    ) -> std::io::Result<()> {
        ext.sync()?;
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
        self.sync_rounds.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn sync_all(
        &self,
        files: &HashMap<u32, File>,
        unsynced: &mut HashSet<u32>,
        ext: &mut ExtUnsynced,
    ) {
        if let Err(e) = self.try_sync(files, unsynced, ext) {
            error!(dir = %self.dir.display(), "cannot sync the message log at shutdown: {e}");
        }
    }
}

/// External files written but not yet fdatasynced, and directories in which one was created.
#[derive(Debug, Default)]
struct ExtUnsynced {
    files: HashMap<usize, Arc<dyn ExternalFile>>,
    dirs: HashSet<PathBuf>,
}

impl ExtUnsynced {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let live: Vec<&Arc<dyn ExternalFile>> = self.files.values().filter(|t| !t.gone()).collect();
        if live.len() <= 2 {
            for t in live {
                t.file()?.sync_data()?;
            }
        } else {
            // Many files (one per stream or Raft group): fdatasyncs issued together share the
            // file system's journal commit, where one after another each waits for its own.
            let per = live.len().div_ceil(SYNC_THREADS);
            std::thread::scope(|s| {
                let handles: Vec<_> = live
                    .chunks(per)
                    .map(|chunk| {
                        s.spawn(move || -> std::io::Result<()> {
                            for t in chunk {
                                t.file()?.sync_data()?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                handles.into_iter().try_for_each(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("sync thread panicked")))
                })
            })?;
        }
        self.files.clear();
        let mut done = Vec::new();
        for d in &self.dirs {
            match File::open(d).and_then(|f| f.sync_all()) {
                // Deleted meanwhile (the stream was deleted): nothing left to make durable.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r?,
            }
            done.push(d.clone());
        }
        for d in done {
            self.dirs.remove(&d);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log::LogOptions;
    use parking_lot::Mutex;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;
    use std::sync::OnceLock;

    /// A file written through the log, recording each `committed` call with the log's synced
    /// position at that moment.
    #[derive(Debug)]
    struct Target {
        path: PathBuf,
        file: OnceLock<File>,
        created: AtomicBool,
        calls: Mutex<Vec<(u64, u64)>>,
        synced: tokio::sync::watch::Receiver<u64>,
    }

    impl ExternalFile for Target {
        fn file(&self) -> std::io::Result<&File> {
            if self.file.get().is_none() {
                let f = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&self.path)?;
                self.created.store(true, Ordering::Relaxed);
                let _ = self.file.set(f);
            }
            Ok(self.file.get().expect("set"))
        }
        fn take_new_dir(&self) -> Option<PathBuf> {
            self.created
                .swap(false, Ordering::Relaxed)
                .then(|| self.path.parent().expect("in a dir").to_owned())
        }
        fn gone(&self) -> bool {
            false
        }
        fn committed(&self, end: u64) {
            let synced = *self.synced.borrow();
            self.calls.lock().push((end, synced));
        }
    }

    fn target(log: &MessageLog, path: &Path) -> Arc<Target> {
        Arc::new(Target {
            path: path.to_owned(),
            file: OnceLock::new(),
            created: AtomicBool::new(false),
            calls: Mutex::new(Vec::new()),
            synced: log.subscribe(),
        })
    }

    /// External writes: consecutive appends to one file coalesce into one write (one
    /// `committed` call) even with another file's appends between them, a gap starts a new
    /// write, tickets are log positions shared with the log's own records, nothing is reported
    /// while writes fail, and each target hears `committed` once its batch is synced but just
    /// before `synced` passes it (so what a confirm confirms is already readable).
    #[test]
    fn external_writes_coalesce_and_commit_after_the_sync() {
        let d = std::env::temp_dir().join(format!("warren-log-ext-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let (log, _) = MessageLog::open(&d.join("log"), LogOptions::default()).unwrap();
        let a = target(&log, &d.join("a.dat"));
        let b = target(&log, &d.join("b.dat"));
        let (ta, tb): (Arc<dyn ExternalFile>, Arc<dyn ExternalFile>) = (a.clone(), b.clone());
        log.inject_write_failure(true);
        let (t1, j1) = log.append_external(&ta, 0, b"aaaa");
        while !log.failing() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The writer holds the first batch (failing): these all go to the next one.
        let (t2, j2) = log.append_external(&ta, 4, b"bbbb");
        let (t3, j3) = log.append_external(&ta, 8, b"cccc");
        let (_, j4) = log.append_external(&tb, 0, b"B");
        let (t5, j5) = log.append_external(&ta, 12, b"ee");
        let (_, rec) = log.append(&crate::store::NewRecord {
            queues: &[1],
            published_at: 0,
            ttl: None,
            priority: 0,
            exchange: b"",
            routing_key: b"",
            properties: b"",
            body: b"x",
        });
        let (t6, j6) = log.append_external(&ta, 30, b"zz");
        assert_eq!(
            (j1, j2, j3, j4, j5, j6),
            (false, false, true, false, true, false)
        );
        assert_eq!((t1, t2, t3, t5), (4, 8, 12, 15));
        assert!(rec > t5 && t6 == rec + 2);
        std::thread::sleep(Duration::from_millis(250));
        assert!(a.calls.lock().is_empty());
        assert!(!d.join("a.dat").exists());
        log.inject_write_failure(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.calls.lock().len() < 3 {
            assert!(Instant::now() < deadline, "{:?}", a.calls.lock());
            std::thread::sleep(Duration::from_millis(1));
        }
        let calls = a.calls.lock().clone();
        assert_eq!(
            calls.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![4, 14, 32]
        );
        assert!(
            calls[0].1 < t1 && calls[1].1 < t6 && calls[2].1 < t6,
            "{calls:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.synced() < t6 {
            assert!(Instant::now() < deadline, "synced never passed {t6}");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            b.calls.lock().iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![1]
        );
        let mut want = b"aaaabbbbccccee".to_vec();
        want.resize(30, 0);
        want.extend_from_slice(b"zz");
        assert_eq!(std::fs::read(d.join("a.dat")).unwrap(), want);
        assert_eq!(std::fs::read(d.join("b.dat")).unwrap(), b"B");
        assert!(
            !a.created.load(Ordering::Relaxed),
            "its directory was synced"
        );
        log.close();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// With `sync_interval`, an external write counts as synced once written (as the log's own
    /// records do): its target hears `committed` without waiting for the interval's fdatasync,
    /// and `synced` passes the ticket right after.
    #[test]
    fn external_writes_with_a_sync_interval_commit_once_written() {
        let d = std::env::temp_dir().join(format!("warren-log-ext-int-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let options = LogOptions {
            sync_interval: Some(Duration::from_secs(3600)),
            ..LogOptions::default()
        };
        let (log, _) = MessageLog::open(&d.join("log"), options).unwrap();
        let a = target(&log, &d.join("a.dat"));
        let ta: Arc<dyn ExternalFile> = a.clone();
        let (ticket, _) = log.append_external(&ta, 0, b"hello");
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.calls.lock().is_empty() {
            assert!(Instant::now() < deadline, "never committed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(a.calls.lock()[0].0, 5);
        while log.synced() < ticket {
            assert!(Instant::now() < deadline, "synced never passed {ticket}");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(std::fs::read(d.join("a.dat")).unwrap(), b"hello");
        log.close();
        let _ = std::fs::remove_dir_all(&d);
    }
}
