//! The log's files: what a reopen finds after appends, truncations, purges, torn writes and
//! damage, and purged segment files reused.

use super::*;

/// Damage a file: xor `mask` into the byte `offset` after the first `needle` in it.
fn flip(path: &Path, needle: &[u8], offset: usize, mask: u8) {
    let mut data = std::fs::read(path).unwrap();
    let at = data
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    data[at + offset] ^= mask;
    std::fs::write(path, &data).unwrap();
}
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
    flip(&seg, b"entry 5 of term 1", 3, 0x20);
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
    flip(&last, b"entry 60 of term 1", 0, 0xff);
    let ((st, _), cut) = reopened(&g);
    assert_eq!(st, (Some(30), Some(id(1, 59))));
    assert_eq!(cut, 1);
    w.close();
}
