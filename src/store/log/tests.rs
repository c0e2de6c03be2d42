//! Tests of the log as a whole: records written, released, marked, damaged and read back across
//! a reopen.

use super::record::HEADER;
use super::*;
use std::time::Duration;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("warren-log-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        ..LogOptions::default()
    }
}

/// Append and wait until synced.
fn put(log: &Arc<MessageLog>, queues: &[u32], body: &[u8]) -> Stored {
    let (s, ticket) = log.append(&NewRecord {
        queues,
        published_at: 1,
        ttl: Some(5),
        priority: 3,
        exchange: b"ex",
        routing_key: b"rk",
        properties: b"\x00\x00",
        body,
    });
    let mut rx = log.subscribe();
    while *rx.borrow_and_update() < ticket {
        std::thread::sleep(Duration::from_millis(1));
    }
    s
}

fn bodies_in(log: &MessageLog, rec: &Recovered, q: u32) -> Vec<Vec<u8>> {
    let Some(v) = rec.queues.get(&q) else {
        return Vec::new();
    };
    v.iter()
        .map(|m| {
            let r = log.read(m.segment, &[m.offset]).pop().unwrap().unwrap();
            assert_eq!(r.body.len(), m.size as usize);
            assert_eq!((m.ttl, m.priority), (Some(5), 3));
            r.body.to_vec()
        })
        .collect()
}

#[test]
fn records_come_back_per_queue_minus_acks_with_delivered_flags() {
    let d = dir("roundtrip");
    {
        let (log, rec) = MessageLog::open(&d, opts()).unwrap();
        assert!(rec.queues.is_empty());
        let a = put(&log, &[1, 2], b"both");
        let b = put(&log, &[1], b"one");
        let _c = put(&log, &[2], b"two");
        log.release(1, a.segment, a.offset);
        log.delivered(1, b.segment, b.offset);
        log.returned(1, b.segment, b.offset);
        log.returned(1, b.segment, b.offset);
        log.close();
    }
    let (log, rec) = MessageLog::open(&d, opts()).unwrap();
    assert_eq!(bodies_in(&log, &rec, 1), vec![b"one".to_vec()]);
    assert!(rec.queues[&1][0].delivered);
    assert_eq!(rec.queues[&1][0].returned, 2);
    assert_eq!(rec.queues[&2][0].returned, 0);
    assert_eq!(
        bodies_in(&log, &rec, 2),
        vec![b"both".to_vec(), b"two".to_vec()]
    );
    assert!(!rec.queues[&2][0].delivered);
    let m = rec.queues[&2][0];
    let r = log.read(m.segment, &[m.offset]).pop().unwrap().unwrap();
    assert_eq!(
        (&r.exchange[..], &r.routing_key[..]),
        (&b"ex"[..], &b"rk"[..])
    );
    log.close();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_segment_goes_when_its_last_message_is_released() {
    let d = dir("reclaim");
    let (log, _) = MessageLog::open(&d, opts()).unwrap();
    let body = vec![0u8; 3000];
    let first = put(&log, &[1], &body);
    let _second = put(&log, &[1], &body); // rolls to a new segment
    assert_eq!(log.segment_count(), 2);
    assert!(seg_path(&d, first.segment).exists());
    log.release(1, first.segment, first.offset);
    for _ in 0..200 {
        if !seg_path(&d, first.segment).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!seg_path(&d, first.segment).exists(), "deleted once empty");
    assert_eq!(log.segment_count(), 1);
    log.close();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_torn_tail_is_dropped_and_a_flipped_byte_is_reported_not_delivered() {
    let d = dir("damage");
    let (a, b);
    {
        let (log, _) = MessageLog::open(&d, LogOptions::default()).unwrap();
        a = put(&log, &[1], b"first message");
        b = put(&log, &[1], b"second message");
        put(&log, &[1], b"third message");
        log.close();
    }
    let path = seg_path(&d, a.segment);
    let mut data = std::fs::read(&path).unwrap();
    // Flip a body byte of the second record.
    let at = b.offset as usize + HEADER + 20;
    data[at] ^= 0x40;
    // And a record cut short at the end, as if the broker died mid-write: written where the
    // last write's end mark was.
    assert_eq!(data[data.len() - 4..], super::record::END_MARK);
    data.truncate(data.len() - 4);
    let mut torn = data[a.offset as usize..b.offset as usize].to_vec();
    torn.truncate(torn.len() - 3);
    data.extend_from_slice(&torn);
    std::fs::write(&path, &data).unwrap();
    let (log, rec) = MessageLog::open(&d, LogOptions::default()).unwrap();
    assert_eq!(
        bodies_in(&log, &rec, 1),
        vec![b"first message".to_vec(), b"third message".to_vec()]
    );
    assert_eq!(rec.corrupt_records, 1);
    assert_eq!(rec.torn_records, 1);
    log.close();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_foreign_or_newer_segment_is_refused_naming_the_file() {
    let d = dir("foreign");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(seg_path(&d, 1), b"NOTWARRENxxxxxxxx").unwrap();
    let e = MessageLog::open(&d, opts()).unwrap_err();
    assert!(e.to_string().contains("00000001.seg"), "{e}");
    std::fs::write(seg_path(&d, 1), b"WRNSEG\x00\x09").unwrap();
    let e = MessageLog::open(&d, opts()).unwrap_err();
    assert!(matches!(e, crate::store::StoreError::Version { .. }), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn releases_after_close_are_not_acknowledgements() {
    let d = dir("closed");
    {
        let (log, _) = MessageLog::open(&d, opts()).unwrap();
        let a = put(&log, &[1], b"keep me");
        log.close();
        log.release(1, a.segment, a.offset);
    }
    let (log, rec) = MessageLog::open(&d, opts()).unwrap();
    assert_eq!(bodies_in(&log, &rec, 1), vec![b"keep me".to_vec()]);
    log.close();
    let _ = std::fs::remove_dir_all(&d);
}

/// The spill log (scratch): records are readable once written, releases write no ack file, and
/// a reopen starts empty, whatever was left in it.
#[test]
fn a_scratch_log_reads_back_writes_no_acks_and_starts_empty() {
    let d = dir("scratch");
    let scratch = LogOptions {
        scratch: true,
        ..opts()
    };
    {
        let (log, rec) = MessageLog::open(&d, scratch).unwrap();
        assert!(rec.queues.is_empty());
        let (a, _) = log.append(&NewRecord {
            queues: &[1],
            published_at: 1,
            ttl: None,
            priority: 0,
            exchange: b"",
            routing_key: b"q",
            properties: b"\x00\x00",
            body: b"kept a moment",
        });
        let (b, _) = log.append(&NewRecord {
            queues: &[1],
            published_at: 1,
            ttl: None,
            priority: 0,
            exchange: b"",
            routing_key: b"q",
            properties: b"\x00\x00",
            body: b"left behind",
        });
        assert!(log.wait_written(b.segment, b.offset, Duration::from_secs(5)));
        let r = log.read(a.segment, &[a.offset]).pop().unwrap().unwrap();
        assert_eq!(&r.body[..], b"kept a moment");
        log.release(1, a.segment, a.offset);
        log.close();
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().any(|n| n.ends_with(".seg")), "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with(".ack")), "{names:?}");
    }
    let (log, rec) = MessageLog::open(&d, scratch).unwrap();
    assert!(rec.queues.is_empty());
    assert_eq!(rec.segments, 0);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    log.close();
    let _ = std::fs::remove_dir_all(&d);
}

fn spare_count(d: &Path) -> usize {
    std::fs::read_dir(d)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .ends_with(".spare")
        })
        .count()
}

/// Emptied segments' files are reused for new segments, old bytes and all: a reopen reads back
/// exactly the live messages (none of the files' earlier records, no record counted torn or
/// corrupt), and reads while running see the new records only. So does a reopen after a stop
/// between a spare's rename and the write of its new segment's header.
#[test]
fn reused_segment_files_read_back_only_their_own_records() {
    let d = dir("reuse");
    let body = |i: usize| vec![b'a' + (i % 26) as u8; 1500];
    let live;
    {
        let (log, _) = MessageLog::open(&d, opts()).unwrap();
        // Two messages per 4 KiB segment; every one released: the files become spares.
        let old: Vec<Stored> = (0..8).map(|i| put(&log, &[1], &body(i))).collect();
        for s in &old {
            log.release(1, s.segment, s.offset);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while spare_count(&d) < 2 {
            assert!(std::time::Instant::now() < deadline, "no spare kept");
            std::thread::sleep(Duration::from_millis(5));
        }
        // One short record in each new segment: the rest of each reused file is old records.
        let a = put(&log, &[1], b"new one");
        let roll = put(&log, &[2], &vec![b'z'; 3000]);
        assert_ne!(a.segment, roll.segment);
        let r = log.read(a.segment, &[a.offset]).pop().unwrap().unwrap();
        assert_eq!(&r.body[..], b"new one");
        live = (a.segment, roll.segment);
        assert!(spare_count(&d) < 2, "no spare was reused");
        log.close();
    }
    let (log, rec) = MessageLog::open(&d, opts()).unwrap();
    assert_eq!(bodies_in(&log, &rec, 1), vec![b"new one".to_vec()]);
    assert_eq!(bodies_in(&log, &rec, 2), vec![vec![b'z'; 3000]]);
    assert_eq!((rec.corrupt_records, rec.torn_records), (0, 0));
    assert!(std::fs::metadata(seg_path(&d, live.0)).unwrap().len() > 3000);
    log.close();
    // Stopped right after a spare became a new segment: the file holds another segment's
    // records under a header of the current format. They are not this segment's.
    let spare = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "spare"));
    if let Some(spare) = spare {
        std::fs::rename(spare, seg_path(&d, 500)).unwrap();
    } else {
        std::fs::copy(seg_path(&d, live.0), seg_path(&d, 500)).unwrap();
    }
    let (log, rec) = MessageLog::open(&d, opts()).unwrap();
    assert_eq!(bodies_in(&log, &rec, 1), vec![b"new one".to_vec()]);
    assert_eq!((rec.corrupt_records, rec.torn_records), (0, 0));
    log.close();
    let _ = std::fs::remove_dir_all(&d);
}

/// Ack entries are written soon, without a record to go with: a delivered mark followed by a
/// release (neither announced by the other) both reach the ack file while the log stays open.
#[test]
fn ack_entries_are_written_without_a_record_to_ride_with() {
    let d = dir("marks");
    let (log, _) = MessageLog::open(&d, opts()).unwrap();
    let a = put(&log, &[1], b"a");
    let b = put(&log, &[1], b"b");
    log.delivered(1, a.segment, a.offset);
    log.release(1, b.segment, b.offset);
    let ack = ack_path(&d, a.segment);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(&ack).map_or(0, |m| m.len()) < 16 {
        assert!(
            std::time::Instant::now() < deadline,
            "ack entries not written"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    log.close();
    let _ = std::fs::remove_dir_all(&d);
}

/// Damage in the middle of a segment is skipped past whatever follows it (another segment's
/// whole record, as in a reused file, or four zero bytes that look like the end mark): the
/// segment's own records after it still come back.
#[test]
fn damage_is_skipped_past_old_records_and_zeroed_magic() {
    use super::record::{encode, fit};
    let rec_of = |seg: u32, body: &[u8]| {
        let r = NewRecord {
            queues: &[1],
            published_at: 1,
            ttl: Some(5),
            priority: 3,
            exchange: b"ex",
            routing_key: b"rk",
            properties: b"\x00\x00",
            body,
        };
        let (r, len) = fit(&r);
        let mut v = Vec::new();
        encode(&mut v, &r, len, seg);
        v
    };
    for zeroed in [false, true] {
        let d = dir(if zeroed { "zeroed" } else { "stale-mid" });
        std::fs::create_dir_all(&d).unwrap();
        let mut data = super::SEGMENT_MAGIC.to_vec();
        data.extend(rec_of(7, b"first"));
        let b_at = data.len();
        data.extend(rec_of(7, b"damaged"));
        if zeroed {
            data[b_at..b_at + 4].copy_from_slice(&super::record::END_MARK);
        } else {
            let last = data.len() - 1;
            data[last] ^= 1;
            data.extend(rec_of(3, b"an old record of segment 3"));
        }
        data.extend(rec_of(7, b"last"));
        data.extend_from_slice(&super::record::END_MARK);
        data.extend(rec_of(3, b"old bytes past the end"));
        std::fs::write(seg_path(&d, 7), &data).unwrap();
        let (log, rec) = MessageLog::open(&d, opts()).unwrap();
        assert_eq!(
            bodies_in(&log, &rec, 1),
            vec![b"first".to_vec(), b"last".to_vec()],
            "zeroed: {zeroed}"
        );
        assert_eq!((rec.corrupt_records, rec.torn_records), (1, 0));
        log.close();
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// Regression: the idle writer let go of the log's lock to expire spare files and then waited
/// without looking at the batch again, so an append made in that moment (its wake-up sent while
/// nobody waited) sat unwritten until the next one. Appends one at a time, each waited for:
/// every one is synced promptly.
#[test]
fn an_append_while_the_writer_goes_idle_is_not_left_waiting() {
    let d = dir("idle-wake");
    let (log, _) = MessageLog::open(&d, opts()).unwrap();
    let mut rx = log.subscribe();
    for i in 0..3000u32 {
        let (_, ticket) = log.append(&NewRecord {
            queues: &[1],
            published_at: 1,
            ttl: None,
            priority: 0,
            exchange: b"",
            routing_key: b"q",
            properties: b"\x00\x00",
            body: &i.to_le_bytes(),
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while *rx.borrow_and_update() < ticket {
            assert!(
                std::time::Instant::now() < deadline,
                "append {i} not synced within 2 s"
            );
            std::thread::yield_now();
        }
    }
    log.close();
    let _ = std::fs::remove_dir_all(&d);
}
