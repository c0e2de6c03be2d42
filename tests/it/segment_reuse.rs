//! Message-log segment files reused (`store::log::spares`): a reused file still holds the
//! records of its earlier life past what is written again. Through the real binary and
//! `kill -9`: what was confirmed since comes back, in order, and nothing of the files' earlier
//! lives (acknowledged long ago) does.

use crate::child::spawn_configured;
use crate::harness::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use std::path::Path;
use std::time::Duration;

const QUEUE: &str = "reuse";

/// The inode numbers of the message log's files with extension `ext` (a file renamed keeps
/// its inode: a segment made from a spare has the spare's).
fn inodes(dir: &Path, ext: &str) -> std::collections::HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir.join("messages"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == ext))
        .map(|e| e.metadata().unwrap().ino())
        .collect()
}

/// Publish `bodies` persistent, waiting for every confirm.
async fn publish(ch: &Channel, bodies: impl Iterator<Item = Vec<u8>>) {
    let mut confirms = Vec::new();
    for b in bodies {
        confirms.push(
            ch.basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                &b,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
}

/// Body `i` of a generation: 4 KiB, its text first.
fn body(generation: &str, i: usize) -> Vec<u8> {
    let mut b = format!("{generation}-{i:04}").into_bytes();
    b.resize(4096, b'.');
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_segment_files_keep_the_confirmed_and_bring_back_nothing_acked() {
    let dir = temp_data_dir();
    let cfg = "segment_size_bytes = 1048576\n";
    let p = spawn_configured(&dir, cfg).unwrap();
    {
        let (_c, ch) = p.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare_durable(&ch, QUEUE, FieldTable::default()).await;
        // 4 MiB over five segments, all acknowledged: their files become spares.
        publish(&ch, (0..1024).map(|i| body("old", i))).await;
        for _ in 0..1024 {
            let m = ch
                .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .expect("a message");
            assert!(m.delivery.data.starts_with(b"old-"));
        }
        // The last segments emptied are kept for reuse (the newest replacing older ones),
        // once all but the current segment are gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while inodes(&dir, "spare").is_empty() || inodes(&dir, "seg").len() > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "emptied segments not deleted or kept for reuse"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let kept = inodes(&dir, "spare");
        // At once (spares are kept for half a second): new segments in the old files.
        publish(&ch, (0..400).map(|i| body("new", i))).await;
        assert!(
            !inodes(&dir, "seg").is_disjoint(&kept),
            "a spare was reused as a new segment"
        );
    }
    p.kill9();
    let p = spawn_configured(&dir, cfg).unwrap();
    let (_c, ch) = p.channel().await;
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        got.push(m.delivery.data);
    }
    assert_eq!(got.len(), 400, "the confirmed messages, and nothing old");
    for (i, b) in got.iter().enumerate() {
        assert_eq!(b, &body("new", i), "message {i} intact, in order");
    }
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}
