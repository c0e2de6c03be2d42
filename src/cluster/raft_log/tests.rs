use super::*;
use crate::cluster::types::Member;
use crate::store::log::LogOptions;
use openraft::storage::{RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, SnapshotMeta, StoredMembership};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Req(Vec<u8>);

openraft::declare_raft_types!(
    pub Tc:
        D = Req,
        R = (),
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<Tc>,
        SnapshotData = Cursor<Vec<u8>>,
);

static DIRS: AtomicU64 = AtomicU64::new(0);

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "warren-raftlog-{what}-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn writer(dir: &Path) -> Arc<MessageLog> {
    MessageLog::open(&dir.join("messages"), LogOptions::default())
        .unwrap()
        .0
}

fn small() -> RaftLogOptions {
    RaftLogOptions {
        segment_size: 256,
        cache_bytes: 256,
        meta_size: 256,
    }
}

fn open(dir: &Path, w: &Arc<MessageLog>, o: RaftLogOptions) -> RaftLog<Tc> {
    RaftLog::open(dir, w.clone(), o).unwrap()
}

fn id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn ent(term: u64, index: u64) -> Entry<Tc> {
    Entry {
        log_id: id(term, index),
        payload: EntryPayload::Normal(Req(format!("entry {index} of term {term}").into_bytes())),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn all(log: &mut RaftLog<Tc>) -> Vec<Entry<Tc>> {
    log.try_get_log_entries(..).await.unwrap()
}

async fn state(log: &mut RaftLog<Tc>) -> (Option<u64>, Option<LogId<u64>>) {
    let s = log.get_log_state().await.unwrap();
    (s.last_purged_log_id.map(|p| p.index), s.last_log_id)
}

/// The inode numbers of a directory's files of a kind.
fn inodes(dir: &Path, ext: &str) -> std::collections::HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    files(dir, ext)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().ino())
        .collect()
}

/// Wait (up to 5 s) until `done`: files the log no longer needs are deleted on a thread of
/// their own.
fn reaped(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Files of a kind in a directory.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// A purged segment's file is reused for a new segment (renamed, not deleted and created): the
/// new segment's records overwrite the old ones, and at open the old bytes left after them are
/// not taken for a torn write (each write ends with `END`). A damaged record in a reused file is
/// still cut, and counted.
#[test]
fn purged_segment_files_are_reused() {
    let d = TempDir::new("reuse");
    let w = writer(&d.0);
    let g = d.0.join("group");
    let big = |i: u64| Entry {
        log_id: id(1, i),
        // Longer than a segment: one a file, whose old bytes outlast the short records after.
        payload: EntryPayload::Normal(Req(vec![b'x'; 300])),
    };
    let new_segments = rt().block_on(async {
        let mut log = open(&g, &w, small());
        log.blocking_append((1..=40).map(big)).await.unwrap();
        let before = inodes(&g, "seg");
        log.purge(id(1, 30)).await.unwrap();
        // One record per segment: 30 purged, 16 kept.
        assert_eq!(log.spare_files(), 16);
        // Short records (several a segment): a reused file holds old records after the new ones.
        let segs = log.segment_count();
        log.blocking_append((41..=60).map(|i| ent(1, i)))
            .await
            .unwrap();
        let new = log.segment_count() - segs;
        assert!(new >= 2, "{new} new segments");
        assert_eq!(log.spare_files(), 16 - new);
        reaped(|| files(&g, "seg").len() == log.segment_count() + log.spare_files());
        let after = inodes(&g, "seg");
        assert!(after.is_subset(&before), "no file created");
        new
    });
    let reopened = |g: &Path| {
        let mut log = open(g, &w, small());
        let r = rt().block_on(async { (state(&mut log).await, all(&mut log).await) });
        (r, log.cut_at_open())
    };
    let expect: Vec<Entry<Tc>> = (31..=40)
        .map(big)
        .chain((41..=60).map(|i| ent(1, i)))
        .collect();
    // The spares left over hold purged entries only: deleted at open without being read (one
    // is damaged here, which a read would count).
    let spares: Vec<PathBuf> = files(&g, "seg")
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            format::parse_seg_name(name).unwrap().1 <= 30
        })
        .collect();
    assert_eq!(spares.len(), 16 - new_segments);
    let mut damaged = std::fs::read(&spares[0]).unwrap();
    damaged.truncate(damaged.len() - 8);
    damaged.extend_from_slice(b"torn tail");
    std::fs::write(&spares[0], &damaged).unwrap();
    let ((st, entries), cut) = reopened(&g);
    assert_eq!(st, (Some(30), Some(id(1, 60))));
    assert_eq!(entries, expect);
    assert_eq!(
        cut, 0,
        "neither old bytes of reused files nor unread spares count as damage"
    );
    reaped(|| spares.iter().all(|p| !p.exists()));
    assert!(spares.iter().all(|p| !p.exists()), "spares deleted at open");
    // A damaged last record in a reused file: cut, and counted.
    let last = files(&g, "seg").pop().unwrap();
    let mut data = std::fs::read(&last).unwrap();
    let needle = b"entry 60 of term 1";
    let at = data
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    data[at] ^= 0xff;
    std::fs::write(&last, &data).unwrap();
    let ((st, _), cut) = reopened(&g);
    assert_eq!(st, (Some(30), Some(id(1, 59))));
    assert_eq!(cut, 1);
    w.close();
}

// ---- openraft's own storage suite ----

/// A state machine in memory, for the suite only.
#[derive(Clone, Default)]
struct Sm(Arc<Mutex<SmState>>);

#[derive(Default, Clone, Serialize, Deserialize)]
struct SmState {
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, Member>,
    data: Vec<Req>,
    #[serde(skip)]
    current: Option<(SnapshotMeta<u64, Member>, Vec<u8>)>,
}

impl RaftSnapshotBuilder<Tc> for Sm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Tc>, StorageError<u64>> {
        let mut s = self.0.lock();
        let data = postcard::to_stdvec(&*s).unwrap();
        let meta = SnapshotMeta {
            last_log_id: s.applied,
            last_membership: s.membership.clone(),
            snapshot_id: format!("{:?}", s.applied),
        };
        s.current = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<Tc> for Sm {
    type SnapshotBuilder = Sm;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, Member>), StorageError<u64>> {
        let s = self.0.lock();
        Ok((s.applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<Tc>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut s = self.0.lock();
        let mut out = Vec::new();
        for e in entries {
            s.applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(r) => s.data.push(r),
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembership::new(Some(e.log_id), m)
                }
            }
            out.push(());
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let mut new: SmState = postcard::from_bytes(&data).unwrap();
        new.current = Some((meta.clone(), data));
        *self.0.lock() = new;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Tc>>, StorageError<u64>> {
        Ok(self.0.lock().current.clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

struct Builder {
    root: PathBuf,
    writer: Arc<MessageLog>,
    options: RaftLogOptions,
}

impl StoreBuilder<Tc, RaftLog<Tc>, Sm, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, RaftLog<Tc>, Sm), StorageError<u64>> {
        let d = TempDir(
            self.root
                .join(format!("g{}", DIRS.fetch_add(1, Ordering::Relaxed))),
        );
        let log = RaftLog::open(&d.0, self.writer.clone(), self.options).unwrap();
        Ok((d, log, Sm::default()))
    }
}

/// openraft's storage test suite passes against the log (one segment per entry run, and one
/// record per segment, so that every read and cut crosses segment boundaries).
#[test]
fn openraft_storage_suite() {
    for options in [
        RaftLogOptions::default(),
        RaftLogOptions {
            segment_size: 1,
            cache_bytes: 0,
            meta_size: 1,
        },
    ] {
        let root = TempDir::new("suite");
        let writer = writer(&root.0);
        Suite::test_all(Builder {
            root: root.0.clone(),
            writer: writer.clone(),
            options,
        })
        .unwrap();
        writer.close();
    }
}

// ---- our own ----

/// A reopened log has what was appended, truncated, purged, voted and committed: the last log
/// id, the purged id, the entries between, the vote and the committed id; purging deleted the
/// whole segments before the purged id; appends after a truncation and a reopen follow on.
#[test]
fn reopen_recovers_appends_truncation_purge_vote_and_committed() {
    let d = TempDir::new("reopen");
    let w = writer(&d.0);
    let g = d.0.join("group");
    rt().block_on(async {
        let mut log = open(&g, &w, small());
        log.blocking_append((1..=40).map(|i| ent(1, i)))
            .await
            .unwrap();
        let segs = log.segment_count();
        assert!(segs > 4, "{segs} segments");
        assert_eq!(log.open_segment_files(), 1, "full segments are closed");
        // Enough votes to start several meta files (256 bytes each).
        for term in 3..=30 {
            log.save_vote(&Vote::new(term, 7)).await.unwrap();
        }
        reaped(|| files(&g, "meta").len() <= 2);
        assert!(files(&g, "meta").len() <= 2, "{:?}", files(&g, "meta"));
        log.save_committed(Some(id(1, 12))).await.unwrap();
        log.purge(id(1, 20)).await.unwrap();
        assert!(log.segment_count() < segs, "whole segments deleted");
        // Their files are kept to be reused, or go on the reaper's thread.
        let kept = || log.segment_count() + log.spare_files();
        reaped(|| files(&g, "seg").len() == kept());
        assert_eq!(files(&g, "seg").len(), kept());
        log.truncate(id(1, 31)).await.unwrap();
        assert_eq!(state(&mut log).await, (Some(20), Some(id(1, 30))));
        assert_eq!(
            all(&mut log).await,
            (21..=30).map(|i| ent(1, i)).collect::<Vec<_>>()
        );
    });
    let (before, r) = {
        let mut log = open(&g, &w, small());
        rt().block_on(async {
            assert_eq!(state(&mut log).await, (Some(20), Some(id(1, 30))));
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(30, 7)));
            assert_eq!(log.read_committed().await.unwrap(), Some(id(1, 12)));
            let entries = all(&mut log).await;
            assert_eq!(entries, (21..=30).map(|i| ent(1, i)).collect::<Vec<_>>());
            // Reads of a purged index or beyond the end find nothing.
            assert!(log.try_get_log_entries(5..10).await.unwrap().is_empty());
            assert!(log.try_get_log_entries(31..).await.unwrap().is_empty());
            // A conflicting tail from another term, after the reopen.
            log.truncate(id(1, 26)).await.unwrap();
            log.blocking_append((26..=33).map(|i| ent(2, i)))
                .await
                .unwrap();
            (entries.len(), all(&mut log).await)
        })
    };
    assert_eq!(before, 10);
    let mut log = open(&g, &w, small());
    assert_eq!(log.cut_at_open(), 0);
    rt().block_on(async {
        assert_eq!(state(&mut log).await, (Some(20), Some(id(2, 33))));
        let again = all(&mut log).await;
        assert_eq!(again, r);
        let want: Vec<_> = (21..=25)
            .map(|i| ent(1, i))
            .chain((26..=33).map(|i| ent(2, i)))
            .collect();
        assert_eq!(again, want);
        // Purge beyond the last entry (a snapshot installed): the log is empty, the next
        // append starts after the purged id, and that survives a reopen.
        log.purge(id(3, 50)).await.unwrap();
        assert_eq!(state(&mut log).await, (Some(50), Some(id(3, 50))));
        assert!(all(&mut log).await.is_empty());
        assert_eq!(log.segment_count(), 0);
        log.blocking_append([ent(3, 51)]).await.unwrap();
    });
    drop(log);
    let mut log = open(&g, &w, small());
    rt().block_on(async {
        assert_eq!(state(&mut log).await, (Some(50), Some(id(3, 51))));
        assert_eq!(all(&mut log).await, vec![ent(3, 51)]);
        // An entry at or before the purged id is purged at once.
        log.blocking_append([ent(3, 50)]).await.unwrap();
        assert_eq!(state(&mut log).await, (Some(50), Some(id(3, 51))));
    });
    reaped(|| files(&g, "meta").len() <= 2);
    assert!(files(&g, "meta").len() <= 2, "{:?}", files(&g, "meta"));
    w.close();
}

/// A truncation that left only stale bytes behind (its segment file is cut, the truncated
/// segments deleted) does not come back at a reopen, even when the later segment holding the
/// replacement entries is itself truncated away.
#[test]
fn truncated_entries_never_come_back() {
    let d = TempDir::new("trunc");
    let w = writer(&d.0);
    let g = d.0.join("group");
    rt().block_on(async {
        let mut log = open(&g, &w, RaftLogOptions::default());
        log.blocking_append((1..=10).map(|i| ent(1, i)))
            .await
            .unwrap();
        log.truncate(id(1, 6)).await.unwrap();
        log.blocking_append((6..=8).map(|i| ent(2, i)))
            .await
            .unwrap();
        log.truncate(id(2, 6)).await.unwrap();
        log.blocking_append([ent(3, 6)]).await.unwrap();
    });
    let mut log = open(&g, &w, RaftLogOptions::default());
    rt().block_on(async {
        let want: Vec<_> = (1..=5).map(|i| ent(1, i)).chain([ent(3, 6)]).collect();
        assert_eq!(all(&mut log).await, want);
        log.truncate(id(3, 6)).await.unwrap();
        assert_eq!(state(&mut log).await, (None, Some(id(1, 5))));
    });
    drop(log);
    let mut log = open(&g, &w, RaftLogOptions::default());
    rt().block_on(async {
        assert_eq!(state(&mut log).await, (None, Some(id(1, 5))));
        assert_eq!(all(&mut log).await.len(), 5);
    });
    w.close();
}

/// A torn write (the file ends mid-record) and a damaged record (a flipped byte) are cut at
/// open, with everything after them, and the log carries on from there.
#[test]
fn torn_and_damaged_tails_are_cut_at_open() {
    let d = TempDir::new("torn");
    let w = writer(&d.0);
    let g = d.0.join("group");
    rt().block_on(async {
        let mut log = open(&g, &w, RaftLogOptions::default());
        log.blocking_append((1..=10).map(|i| ent(1, i)))
            .await
            .unwrap();
    });
    let seg = files(&g, "seg").pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    // The file ends with the last record, then `END`: cut into the record.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 8 - 3)
        .unwrap();
    let mut log = open(&g, &w, RaftLogOptions::default());
    assert_eq!(log.cut_at_open(), 1);
    rt().block_on(async {
        assert_eq!(state(&mut log).await, (None, Some(id(1, 9))));
        assert_eq!(all(&mut log).await.len(), 9);
    });
    drop(log);
    // Flip a byte in the body of entry 5.
    let mut data = std::fs::read(&seg).unwrap();
    let needle = b"entry 5 of term 1";
    let at = data
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    data[at + 3] ^= 0x20;
    std::fs::write(&seg, &data).unwrap();
    let mut log = open(&g, &w, RaftLogOptions::default());
    assert_eq!(log.cut_at_open(), 1);
    rt().block_on(async {
        assert_eq!(state(&mut log).await, (None, Some(id(1, 4))));
        assert_eq!(
            all(&mut log).await,
            (1..=4).map(|i| ent(1, i)).collect::<Vec<_>>()
        );
        log.blocking_append((5..=6).map(|i| ent(2, i)))
            .await
            .unwrap();
    });
    drop(log);
    let mut log = open(&g, &w, RaftLogOptions::default());
    assert_eq!(log.cut_at_open(), 0);
    rt().block_on(async {
        assert_eq!(state(&mut log).await, (None, Some(id(2, 6))));
    });
    w.close();
}

/// The append callback waits for the writer's sync: while the writer cannot write (disk
/// full, injected) nothing is reported durable and nothing is in the file, though the entries
/// read back at once; once writes succeed again the callback reports success and the records
/// are in the file.
#[test]
fn callback_fires_only_after_the_sync() {
    let d = TempDir::new("sync");
    let w = writer(&d.0);
    let g = d.0.join("group");
    let log = open(&g, &w, RaftLogOptions::default());
    let rt = rt();
    rt.block_on(async {
        w.inject_write_failure(true);
        let mut l2 = log.clone();
        let task =
            tokio::spawn(async move { l2.blocking_append((1..=3).map(|i| ent(1, i))).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !w.failing() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!task.is_finished(), "reported durable while writes fail");
        assert!(files(&g, "seg")
            .iter()
            .all(|p| std::fs::metadata(p).unwrap().len() == 0));
        let mut l3 = log.clone();
        assert_eq!(all(&mut l3).await.len(), 3, "readable before it is synced");
        w.inject_write_failure(false);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("callback after the writes succeed")
            .unwrap()
            .unwrap();
        let seg = files(&g, "seg").pop().unwrap();
        let data = std::fs::read(seg).unwrap();
        assert!(data.windows(17).any(|w| w == b"entry 3 of term 1"));

        // An append (even of nothing) after a truncation waits for the writes still pending
        // for the truncated segment: callbacks complete in order.
        w.inject_write_failure(true);
        let mut l2 = log.clone();
        let first =
            tokio::spawn(async move { l2.blocking_append((4..=6).map(|i| ent(1, i))).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut l3 = log.clone();
        l3.truncate(id(1, 1)).await.unwrap();
        assert_eq!(state(&mut l3).await, (None, None));
        let mut l4 = log.clone();
        let second = tokio::spawn(async move { l4.blocking_append([]).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!first.is_finished() && !second.is_finished());
        w.inject_write_failure(false);
        for t in [first, second] {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    });
    w.close();
}

/// Deleting a group removes its directory and drops its writes still pending in the writer:
/// they neither bring a file back nor hold up the writer (creating a segment file in the
/// deleted directory would fail, and the writer retries a failing batch forever, stalling
/// every group); the pending append hears that the log is gone; other groups carry on.
#[test]
fn delete_drops_pending_writes() {
    let d = TempDir::new("delete");
    let w = writer(&d.0);
    let g = d.0.join("group");
    let other = open(&d.0.join("other"), &w, RaftLogOptions::default());
    let log = open(&g, &w, RaftLogOptions::default());
    rt().block_on(async {
        w.inject_write_failure(true);
        let mut l2 = log.clone();
        let task =
            tokio::spawn(async move { l2.blocking_append((1..=5).map(|i| ent(1, i))).await });
        while !w.failing() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        log.delete();
        assert!(!g.exists());
        w.inject_write_failure(false);
        let r = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(r.is_err(), "{r:?}");
        tokio::time::timeout(
            Duration::from_secs(10),
            other.clone().blocking_append([ent(1, 1)]),
        )
        .await
        .expect("the writer is not stuck")
        .unwrap();
        assert!(
            !g.exists(),
            "a pending write recreated the deleted group's files"
        );
    });
    w.close();
}

/// Many groups share the writer's sync rounds: appends to 50 groups made while the writer is
/// busy are all made durable by one round (as RabbitMQ's Ra shares its WAL's fsync).
#[test]
fn many_groups_share_one_sync_round() {
    let d = TempDir::new("groups");
    let w = writer(&d.0);
    let logs: Vec<RaftLog<Tc>> = (0..50)
        .map(|i| open(&d.0.join(format!("g{i}")), &w, RaftLogOptions::default()))
        .collect();
    rt().block_on(async {
        w.inject_write_failure(true);
        let mut first = logs[0].clone();
        let t0 = tokio::spawn(async move { first.blocking_append([ent(1, 1)]).await });
        while !w.failing() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The writer holds the first group's batch: every other group's append joins the next.
        let before = w.sync_rounds();
        let mut tasks = vec![t0];
        for l in &logs[1..] {
            let mut l = l.clone();
            tasks.push(tokio::spawn(
                async move { l.blocking_append([ent(1, 1)]).await },
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        w.inject_write_failure(false);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        let rounds = w.sync_rounds() - before;
        assert!(
            (1..=2).contains(&rounds),
            "{rounds} sync rounds for 50 groups"
        );
    });
    w.close();
}

/// Appends/s of 1 KiB entries, each append waiting for its callback (as openraft 0.9 does),
/// with 1 and 100 groups on one writer. `cargo test --lib raft_log_throughput -- --ignored
/// --nocapture` (add `--release` for release figures).
#[test]
#[ignore]
fn raft_log_throughput() {
    for groups in [1usize, 100] {
        for batch in [1u64, 16] {
            let d = TempDir::new("bench");
            let w = writer(&d.0);
            let logs: Vec<RaftLog<Tc>> = (0..groups)
                .map(|i| open(&d.0.join(format!("g{i}")), &w, RaftLogOptions::default()))
                .collect();
            let secs = 3.0;
            let done = rt().block_on(async {
                let start = Instant::now();
                let mut tasks = Vec::new();
                for l in &logs {
                    let mut l = l.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut i = 1u64;
                        while start.elapsed().as_secs_f64() < secs {
                            let es = (i..i + batch).map(|j| Entry {
                                log_id: id(1, j),
                                payload: EntryPayload::Normal(Req(vec![7u8; 1024])),
                            });
                            l.blocking_append(es).await.unwrap();
                            i += batch;
                        }
                        i - 1
                    }));
                }
                let mut n = 0;
                for t in tasks {
                    n += t.await.unwrap();
                }
                n
            });
            let rounds = w.sync_rounds();
            println!(
                "{groups} group(s), {batch} entr(y/ies) per append: {:.0} entries/s, {:.0} appends/s, {rounds} sync rounds",
                done as f64 / secs,
                done as f64 / batch as f64 / secs
            );
            w.close();
        }
    }
}

// ---- under a real openraft node ----

mod single_node {
    use super::*;
    use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::{Config, Raft, SnapshotPolicy};
    use std::collections::BTreeMap;

    /// No peers: a one-node group never sends anything.
    struct NoNet;
    struct NoPeer;

    fn unreachable<E: std::error::Error>() -> RPCError<u64, Member, E> {
        RPCError::Unreachable(Unreachable::new(&std::io::Error::other("a single node")))
    }

    impl RaftNetworkFactory<Tc> for NoNet {
        type Network = NoPeer;
        async fn new_client(&mut self, _target: u64, _node: &Member) -> NoPeer {
            NoPeer
        }
    }

    impl RaftNetwork<Tc> for NoPeer {
        async fn append_entries(
            &mut self,
            _rpc: AppendEntriesRequest<Tc>,
            _option: RPCOption,
        ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
            Err(unreachable())
        }
        async fn install_snapshot(
            &mut self,
            _rpc: InstallSnapshotRequest<Tc>,
            _option: RPCOption,
        ) -> Result<
            InstallSnapshotResponse<u64>,
            RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
        > {
            Err(unreachable())
        }
        async fn vote(
            &mut self,
            _rpc: VoteRequest<u64>,
            _option: RPCOption,
        ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
            Err(unreachable())
        }
    }

    fn config() -> Arc<Config> {
        Arc::new(
            Config {
                snapshot_policy: SnapshotPolicy::Never,
                max_in_snapshot_log_to_keep: 0,
                purge_batch_size: 1,
                ..Default::default()
            }
            .validate()
            .unwrap(),
        )
    }

    async fn leader(raft: &Raft<Tc>) {
        raft.wait(Some(Duration::from_secs(10)))
            .current_leader(1, "leader")
            .await
            .unwrap();
    }

    /// openraft runs on the log: a one-node group commits 200 writes; restarted with an empty
    /// (in-memory) state machine it re-applies them from the log up to the saved committed id
    /// and carries on; a snapshot then purges the log, deleting whole segments.
    #[test]
    fn a_one_node_group_commits_restarts_and_purges() {
        let d = TempDir::new("raft");
        let w = writer(&d.0);
        let g = d.0.join("group");
        rt().block_on(async {
            let sm = Sm::default();
            let raft = Raft::new(1, config(), NoNet, open(&g, &w, small()), sm.clone())
                .await
                .unwrap();
            let members = BTreeMap::from([(
                1u64,
                Member {
                    name: "warren@a".into(),
                    addr: "127.0.0.1:1".into(),
                },
            )]);
            raft.initialize(members).await.unwrap();
            leader(&raft).await;
            for i in 0..200u32 {
                raft.client_write(Req(i.to_le_bytes().repeat(25)))
                    .await
                    .unwrap();
            }
            assert_eq!(sm.0.lock().data.len(), 200);
            raft.shutdown().await.unwrap();
        });
        rt().block_on(async {
            let sm = Sm::default();
            let log = open(&g, &w, small());
            let raft = Raft::new(1, config(), NoNet, log.clone(), sm.clone())
                .await
                .unwrap();
            // Re-applied at start from the committed id the log kept, before any election.
            assert_eq!(sm.0.lock().data.len(), 200);
            assert_eq!(sm.0.lock().data[199], Req(199u32.to_le_bytes().repeat(25)));
            leader(&raft).await;
            for i in 200..250u32 {
                raft.client_write(Req(i.to_le_bytes().repeat(25)))
                    .await
                    .unwrap();
            }
            assert_eq!(sm.0.lock().data.len(), 250);
            let segs = log.segment_count();
            raft.trigger().snapshot().await.unwrap();
            // With no log kept past a snapshot, openraft purges up to it.
            let m = raft
                .wait(Some(Duration::from_secs(10)))
                .metrics(|m| m.snapshot.is_some() && m.purged == m.snapshot, "purged")
                .await
                .unwrap();
            let applied = m.snapshot;
            assert!(applied.is_some_and(|a| a.index >= 250));
            let mut l = log.clone();
            assert_eq!(state(&mut l).await, (applied.map(|a| a.index), applied));
            assert!(
                log.segment_count() < segs && log.segment_count() <= 1,
                "{segs} -> {}",
                log.segment_count()
            );
            raft.shutdown().await.unwrap();
        });
        w.close();
    }
}

/// For comparison with `raft_log_throughput`: 1 KiB records appended to the message log's own
/// (shared) segment, each waiting for its sync, from 1 and 100 tasks: what one shared file per
/// sync round gives. `cargo test --lib shared_file_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn shared_file_throughput() {
    for tasks in [1usize, 100] {
        let d = TempDir::new("bench-shared");
        let w = writer(&d.0);
        let secs = 3.0;
        let done = rt().block_on(async {
            let start = Instant::now();
            let mut hs = Vec::new();
            for _ in 0..tasks {
                let w = w.clone();
                hs.push(tokio::spawn(async move {
                    let body = vec![7u8; 1024];
                    let mut synced = w.subscribe();
                    let mut n = 0u64;
                    while start.elapsed().as_secs_f64() < secs {
                        let (stored, ticket) = w.append(&crate::store::NewRecord {
                            queues: &[1],
                            published_at: 0,
                            ttl: None,
                            priority: 0,
                            exchange: b"",
                            routing_key: b"",
                            properties: b"",
                            body: &body,
                        });
                        synced.wait_for(|s| *s >= ticket).await.unwrap();
                        drop(stored);
                        n += 1;
                    }
                    n
                }));
            }
            let mut n = 0;
            for h in hs {
                n += h.await.unwrap();
            }
            n
        });
        println!(
            "shared file, {tasks} task(s): {:.0} records/s, {} sync rounds",
            done as f64 / secs,
            w.sync_rounds()
        );
        w.close();
    }
}
