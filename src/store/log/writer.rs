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

use super::external::{target_key, ExtUnsynced, ExtWrite, ExternalFile};
use super::record::{self, HEADER, SEGMENT_MAGIC};
use super::spares::Spares;
use super::{ack_path, seg_path, MessageLog, NewRecord, Stored};
use crate::observe::stages;
use parking_lot::MutexGuard;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info};

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
