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

// The log's files (reopen, torn tails, reuse), and the log under a real openraft node.
mod files;
mod single_node;

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
