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

use super::record::{self, HEADER, SEGMENT_MAGIC};
use super::{ack_path, seg_path, MessageLog, NewRecord, Stored};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info};

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
    /// The log position once this batch is written.
    lsn: u64,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.segs.is_empty() && self.acks.is_empty() && self.deletes.is_empty()
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
        record::encode(&mut w.data, &r, len);
        s.current_len += total;
        *s.live.get_mut(&segment).expect("inserted") += r.queues.len() as u64;
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

    pub(super) fn run_writer(self: Arc<Self>) {
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
                None => !self.options.scratch,
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
                    if !path.exists() && !self.options.scratch {
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
            if !self.options.scratch {
                unsynced.insert(w.segment);
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
