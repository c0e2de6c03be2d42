//! Files outside the log written through its writer (a stream's segments, a Raft group's
//! log): what the writer needs of them (`ExternalFile`), the lazily created file most of them
//! are (`LazyFile`), and the fdatasync of many at once (`ExtUnsynced`). Appending to one is
//! `MessageLog::append_external` (in `writer`): the bytes join the log's batch, its write
//! retries and its group commit.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

/// Threads that fdatasync external files at once, when a round has more than two.
const SYNC_THREADS: usize = 16;

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
pub(super) struct ExtWrite {
    pub(super) target: Arc<dyn ExternalFile>,
    pub(super) pos: u64,
    pub(super) data: Vec<u8>,
}

pub(super) fn target_key(t: &Arc<dyn ExternalFile>) -> usize {
    Arc::as_ptr(t) as *const () as usize
}

/// External files written but not yet fdatasynced, and directories in which one was created.
#[derive(Debug, Default)]
pub(super) struct ExtUnsynced {
    pub(super) files: HashMap<usize, Arc<dyn ExternalFile>>,
    pub(super) dirs: HashSet<PathBuf>,
}

impl ExtUnsynced {
    pub(super) fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }

    pub(super) fn sync(&mut self) -> std::io::Result<()> {
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
    use crate::store::log::{LogOptions, MessageLog};
    use parking_lot::Mutex;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

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
