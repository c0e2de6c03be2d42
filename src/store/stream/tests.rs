//! Tests of a stream's files: appends committed through a real message log's writer, read back,
//! sought, retained, and recovered after damage.

use super::format::{RECORD_HEADER, SEGMENT_MAGIC};
use super::*;
use crate::store::log::LogOptions;
use std::time::{Duration, Instant};

/// A directory removed when the test ends.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("warren-stream-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }

    fn stream(&self) -> PathBuf {
        self.0.join("streams").join("00000042")
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn log(t: &Tmp) -> Arc<MessageLog> {
    MessageLog::open(&t.0.join("messages"), LogOptions::default())
        .unwrap()
        .0
}

fn opts(max_segment_bytes: u64) -> StreamOptions {
    StreamOptions {
        max_segment_bytes,
        max_bytes: None,
        max_age_ms: None,
    }
}

fn props(offset: u64, buf: &mut Vec<u8>) {
    buf.extend_from_slice(format!("p{offset}").as_bytes());
}

fn put(s: &Arc<StreamLog>, ts: u64, body: &[u8]) -> (u64, u64) {
    s.append(&NewEntry {
        timestamp: ts,
        filter: None,
        exchange: b"ex",
        routing_key: b"rk",
        properties: &props,
        body,
    })
}

/// Append `n` messages with bodies `m<i>` padded to `size` bytes, timestamps `ts0 + i`.
fn fill(s: &Arc<StreamLog>, n: u64, size: usize, ts0: u64) -> u64 {
    let mut last = 0;
    for i in 0..n {
        let mut body = format!("m{i}").into_bytes();
        body.resize(size.max(body.len()), b'.');
        last = put(s, ts0 + i, &body).0;
    }
    last
}

/// Wait until every offset before `next` is committed.
fn committed(s: &StreamLog, next: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let rx = s.subscribe();
    while *rx.borrow() < next {
        assert!(Instant::now() < deadline, "offset {next} never committed");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn read_all(s: &StreamLog, c: &mut Cursor) -> Vec<StreamMessage> {
    let mut out = Vec::new();
    loop {
        let v = s.read(c, 100, 64 << 10).unwrap();
        if v.is_empty() {
            return out;
        }
        out.extend(v);
    }
}

fn offsets(v: &[StreamMessage]) -> Vec<u64> {
    v.iter().map(|m| m.offset).collect()
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn body_of(i: u64, size: usize) -> Vec<u8> {
    let mut body = format!("m{i}").into_bytes();
    body.resize(size.max(body.len()), b'.');
    body
}

/// Every field comes back as written (properties written for the offset the message got), and
/// the fields of consecutive messages are slices of one read buffer, laid out as on disk: a
/// read copies nothing per message.
#[test]
fn appended_messages_read_back_as_slices_of_one_buffer() {
    let t = Tmp::new("roundtrip");
    let s = StreamLog::open(&t.stream(), opts(1 << 20), log(&t)).unwrap();
    assert_eq!(s.info(), StreamInfo::default());
    put(&s, 10, b"hello");
    s.append(&NewEntry {
        timestamp: 11,
        filter: Some(b"blue"),
        exchange: b"",
        routing_key: b"q",
        properties: &props,
        body: b"",
    });
    put(&s, 12, &[7u8; 3000]);
    committed(&s, 3);
    let mut c = s.seek(Start::First).unwrap();
    let m = s.read(&mut c, 10, 1 << 20).unwrap();
    assert_eq!(offsets(&m), vec![0, 1, 2]);
    assert_eq!(c.next, 3);
    assert_eq!(
        (
            &m[0].exchange[..],
            &m[0].routing_key[..],
            &m[0].properties[..]
        ),
        (&b"ex"[..], &b"rk"[..], &b"p0"[..])
    );
    assert_eq!(
        (&m[0].body[..], m[0].timestamp, &m[0].filter),
        (&b"hello"[..], 10, &None)
    );
    assert_eq!(m[1].filter.as_deref(), Some(&b"blue"[..]));
    assert_eq!((&m[1].properties[..], m[1].body.len()), (&b"p1"[..], 0));
    assert_eq!(&m[2].body[..], &[7u8; 3000][..]);
    // Zero copy: message 1's filter starts right after message 0's body and record header.
    let end0 = m[0].body.as_ptr() as usize + m[0].body.len();
    let f1 = m[1].filter.as_ref().unwrap().as_ptr() as usize;
    assert_eq!(f1, end0 + RECORD_HEADER);
    assert_eq!(
        m[2].exchange.as_ptr() as usize,
        m[1].body.as_ptr() as usize + RECORD_HEADER
    );
    assert!(s.read(&mut c, 10, 1 << 20).unwrap().is_empty());
    let i = s.info();
    assert_eq!((i.first, i.next, i.messages, i.segments), (0, 3, 3, 1));
    assert_eq!((i.first_timestamp, i.last_timestamp), (10, 12));
    assert_eq!(
        i.bytes,
        std::fs::metadata(&files(&t.stream(), "seg")[0])
            .unwrap()
            .len()
    );
}

/// Reads one message at a time go on from the chunk the cursor keeps (no re-read, the same
/// buffer), and a record bigger than a chunk (1 MiB) between small ones is read whole.
#[test]
fn small_reads_reuse_the_chunk_and_big_records_are_read_whole() {
    let t = Tmp::new("chunks");
    let s = StreamLog::open(&t.stream(), opts(64 << 20), log(&t)).unwrap();
    fill(&s, 100, 100, 0);
    let big = vec![b'B'; 3 << 20];
    put(&s, 100, &big);
    fill(&s, 100, 100, 101);
    committed(&s, 201);
    let mut c = s.seek(Start::First).unwrap();
    let a = s.read(&mut c, 1, 1 << 20).unwrap();
    let b = s.read(&mut c, 1, 1 << 20).unwrap();
    assert_eq!((a[0].offset, b[0].offset), (0, 1));
    assert_eq!(
        b[0].exchange.as_ptr() as usize,
        a[0].body.as_ptr() as usize + a[0].body.len() + RECORD_HEADER,
        "the second read is a slice of the first one's buffer"
    );
    let mut got = vec![0, 1];
    loop {
        let v = s.read(&mut c, 7, 1 << 20).unwrap();
        if v.is_empty() {
            break;
        }
        for m in &v {
            if m.offset == 100 {
                assert_eq!(m.body.len(), big.len());
            } else {
                let i = if m.offset < 100 {
                    m.offset
                } else {
                    m.offset - 101
                };
                assert_eq!(&m.body[..], &body_of(i, 100)[..], "offset {}", m.offset);
            }
        }
        got.extend(offsets(&v));
    }
    assert_eq!(got, (0..201).collect::<Vec<_>>());
}

/// A message is neither readable nor counted, and its ticket not synced, until the writer has
/// written and synced it: with writes failing (disk full), nothing moves; once they succeed,
/// the log's synced position passes the ticket and the stream's committed end moves.
#[test]
fn a_message_commits_only_after_the_writer_synced_it() {
    let t = Tmp::new("ticket");
    let log = log(&t);
    let s = StreamLog::open(&t.stream(), opts(1 << 20), log.clone()).unwrap();
    log.inject_write_failure(true);
    let (off, ticket) = put(&s, 1, b"a");
    assert_eq!(off, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(log.synced() < ticket);
    assert!(log.failing());
    assert_eq!(s.info().next, 0);
    assert_eq!(s.seek(Start::Last).unwrap().next, 0);
    let mut c = s.seek(Start::First).unwrap();
    assert!(s.read(&mut c, 10, 1 << 20).unwrap().is_empty());
    let mut rx = s.subscribe();
    log.inject_write_failure(false);
    committed(&s, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.synced() < ticket {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 1);
    assert_eq!(offsets(&s.read(&mut c, 10, 1 << 20).unwrap()), vec![0]);
}

/// Every `Start`, across segments: first, last, next, an offset (held, beyond the tail), and a
/// timestamp (between two messages, before all, after all); then again after retention
/// deleted the oldest segments.
#[test]
fn seek_finds_every_start_across_segments_and_after_retention() {
    let t = Tmp::new("seek");
    let mut o = opts(2048);
    o.max_age_ms = Some(1000);
    let s = StreamLog::open(&t.stream(), o, log(&t)).unwrap();
    for i in 0..200u64 {
        put(&s, 10_000 + i * 10, &body_of(i, 40));
    }
    committed(&s, 200);
    assert!(s.info().segments > 5);
    let at = |st| s.seek(st).unwrap().next;
    assert_eq!(at(Start::First), 0);
    // The newest chunk: where the last batch the writer committed begins.
    let last = at(Start::Last);
    assert!((0..=199).contains(&last), "{last}");
    assert_eq!(at(Start::Next), 200);
    assert_eq!(at(Start::Offset(123)), 123);
    assert_eq!(at(Start::Offset(5000)), 5000);
    assert_eq!(at(Start::Timestamp(10_000 + 1455)), 146);
    assert_eq!(at(Start::Timestamp(10_000 + 1460)), 146);
    assert_eq!(at(Start::Timestamp(0)), 0);
    assert_eq!(at(Start::Timestamp(99_999)), 200);
    let mut c = s.seek(Start::Timestamp(10_000 + 1455)).unwrap();
    let m = s.read(&mut c, 1, 1 << 20).unwrap();
    assert_eq!((m[0].offset, &m[0].body[..]), (146, &body_of(146, 40)[..]));
    let mut c = s.seek(Start::Offset(77)).unwrap();
    assert_eq!(
        offsets(&read_all(&s, &mut c)),
        (77..200).collect::<Vec<_>>()
    );
    let mut c = s.seek(Start::Last).unwrap();
    assert_eq!(
        offsets(&read_all(&s, &mut c)),
        (last..200).collect::<Vec<_>>()
    );
    // Messages older than 1 s at now = 11_000 + 1000 (offsets below ~100) go, segment-wise.
    s.apply_retention(12_000);
    let first = s.info().first;
    assert!(first > 0 && first <= 100, "first {first}");
    assert_eq!(at(Start::First), first);
    assert_eq!(at(Start::Offset(3)), first);
    assert_eq!(at(Start::Timestamp(0)), first);
    assert_eq!(at(Start::Last), last.max(first));
    let mut c = s.seek(Start::First).unwrap();
    assert_eq!(
        offsets(&read_all(&s, &mut c)),
        (first..200).collect::<Vec<_>>()
    );
    // Beyond the tail: the reader waits for that offset, skipping those before it.
    let mut c = s.seek(Start::Offset(203)).unwrap();
    assert!(s.read(&mut c, 10, 1 << 20).unwrap().is_empty());
    fill(&s, 3, 40, 20_000);
    committed(&s, 203);
    assert!(s.read(&mut c, 10, 1 << 20).unwrap().is_empty());
    fill(&s, 2, 40, 20_000);
    committed(&s, 205);
    assert_eq!(
        offsets(&s.read(&mut c, 10, 1 << 20).unwrap()),
        vec![203, 204]
    );
    // Nothing committed yet: Last is Next.
    let t2 = Tmp::new("seek-empty");
    let e = StreamLog::open(&t2.stream(), opts(2048), log(&t2)).unwrap();
    assert_eq!(e.seek(Start::Last).unwrap().next, 0);
    assert_eq!(e.seek(Start::Timestamp(5)).unwrap().next, 0);
}

/// Size retention: whole oldest segments go as segments fill, so the stream holds at most
/// `max_bytes` plus one segment on disk, and what is left reads back contiguously.
#[test]
fn size_retention_keeps_at_most_max_bytes_plus_one_segment() {
    let t = Tmp::new("bytes");
    let mut o = opts(4096);
    o.max_bytes = Some(16384);
    let s = StreamLog::open(&t.stream(), o, log(&t)).unwrap();
    for i in 0..3000u64 {
        put(&s, i, &body_of(i, 100));
        if i % 500 == 499 {
            committed(&s, i + 1);
            let on_disk: u64 = files(&t.stream(), "seg")
                .iter()
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum();
            assert!(on_disk <= 16384 + 4096, "{on_disk} bytes on disk");
        }
    }
    committed(&s, 3000);
    let i = s.info();
    assert!(i.bytes <= 16384 + 4096, "{i:?}");
    assert_eq!(i.segments as usize, files(&t.stream(), "seg").len());
    assert_eq!(i.segments as usize, files(&t.stream(), "idx").len());
    assert!(i.first > 2000, "{i:?}");
    assert_eq!(i.messages, 3000 - i.first);
    let mut c = s.seek(Start::First).unwrap();
    assert_eq!(
        offsets(&read_all(&s, &mut c)),
        (i.first..3000).collect::<Vec<_>>()
    );
}

/// Age retention deletes the segments whose newest message is older than `max_age_ms`, never
/// the newest segment, and nothing while everything is young.
#[test]
fn age_retention_deletes_old_segments_but_never_the_newest() {
    let t = Tmp::new("age");
    let mut o = opts(1024);
    o.max_age_ms = Some(500);
    let s = StreamLog::open(&t.stream(), o, log(&t)).unwrap();
    fill(&s, 50, 50, 1000);
    committed(&s, 50);
    let before = s.info();
    s.apply_retention(1400);
    assert_eq!(s.info(), before);
    fill(&s, 50, 50, 5000);
    committed(&s, 100);
    s.apply_retention(5100);
    let i = s.info();
    // The segment holding the last old messages holds new ones too: it stays.
    assert!(i.first > 0 && i.first <= 50, "{i:?}");
    assert!(i.first_timestamp > 1000, "{i:?}");
    s.apply_retention(1 << 40);
    let i = s.info();
    assert_eq!(i.segments, 1);
    assert_eq!(i.next, 100);
    assert_eq!(files(&t.stream(), "seg").len(), 1);
}

/// A reader whose next offset retention deleted jumps to the first offset held, even with its
/// file handle still open on the deleted segment.
#[test]
fn a_reader_behind_retention_jumps_to_the_first_held() {
    let t = Tmp::new("behind");
    let mut o = opts(1024);
    o.max_bytes = Some(2048);
    let s = StreamLog::open(&t.stream(), o, log(&t)).unwrap();
    fill(&s, 10, 50, 0);
    committed(&s, 10);
    let mut c = s.seek(Start::First).unwrap();
    assert_eq!(offsets(&s.read(&mut c, 2, 1 << 20).unwrap()), vec![0, 1]);
    fill(&s, 200, 50, 0);
    committed(&s, 210);
    let first = s.info().first;
    assert!(first > 10);
    let m = s.read(&mut c, 1000, 1 << 20).unwrap();
    assert_eq!(m[0].offset, first);
    assert_eq!(m.last().unwrap().offset, 209);
    assert_eq!(&m[0].body[..], &body_of(first - 10, 50)[..]);
}

/// Recovery: a clean reopen keeps everything and continues the offsets; a torn last record
/// (truncated mid-record) and then a flipped byte in the last record are cut off, the offsets
/// continue after the last good record, and a missing index is rebuilt.
#[test]
fn reopen_cuts_a_torn_or_corrupt_tail_and_offsets_continue() {
    let t = Tmp::new("recover");
    let dir = t.stream();
    let o = opts(4096);
    {
        let log = log(&t);
        let s = StreamLog::open(&dir, o, log.clone()).unwrap();
        fill(&s, 100, 60, 0);
        committed(&s, 100);
        log.close();
    }
    let segs = files(&dir, "seg");
    assert!(segs.len() > 1);
    {
        let log = log(&t);
        let s = StreamLog::open(&dir, o, log.clone()).unwrap();
        let i = s.info();
        assert_eq!((i.first, i.next, i.messages), (0, 100, 100));
        assert_eq!(i.segments as usize, segs.len());
        assert_eq!(put(&s, 100, b"after").0, 100);
        committed(&s, 101);
        let mut c = s.seek(Start::First).unwrap();
        assert_eq!(offsets(&read_all(&s, &mut c)), (0..101).collect::<Vec<_>>());
        log.close();
    }
    // A fresh segment was started at 100; tear its only record.
    let last = files(&dir, "seg").pop().unwrap();
    assert!(last.ends_with("00000000000000000100.seg"));
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    // Flip a byte in the body of the last record of the segment before.
    let prev = files(&dir, "seg").into_iter().rev().nth(1).unwrap();
    let mut data = std::fs::read(&prev).unwrap();
    let n = data.len();
    data[n - 2] ^= 0xff;
    std::fs::write(&prev, &data).unwrap();
    std::fs::remove_file(prev.with_extension("idx")).unwrap();
    {
        let log = log(&t);
        let s = StreamLog::open(&dir, o, log.clone()).unwrap();
        assert!(!last.exists(), "a segment left empty is removed");
        assert!(prev.with_extension("idx").exists(), "the index is rebuilt");
        let i = s.info();
        assert_eq!((i.first, i.next, i.messages), (0, 99, 99));
        assert_eq!(put(&s, 7, b"again").0, 99);
        committed(&s, 100);
        let mut c = s.seek(Start::Offset(90)).unwrap();
        let m = read_all(&s, &mut c);
        assert_eq!(offsets(&m), (90..100).collect::<Vec<_>>());
        assert_eq!(&m[8].body[..], &body_of(98, 60)[..]);
        assert_eq!(&m[9].body[..], b"again");
        log.close();
    }
}

/// The sparse index: in one segment of thousands of records, a seek to any offset and a read
/// land on that very record; a damaged index entry (pointing inside a record) does not make
/// a read return the wrong record.
#[test]
fn index_lookups_land_on_the_right_record() {
    let t = Tmp::new("index");
    let dir = t.stream();
    let s = StreamLog::open(&dir, opts(64 << 20), log(&t)).unwrap();
    fill(&s, 5000, 200, 0);
    committed(&s, 5000);
    let idx = &files(&dir, "idx")[0];
    let entries = (std::fs::metadata(idx).unwrap().len() as usize - 8) / 24;
    let seg_len = std::fs::metadata(&files(&dir, "seg")[0]).unwrap().len();
    assert_eq!(
        entries as u64,
        seg_len.div_ceil(INDEX_EVERY),
        "one entry per 64 KiB"
    );
    for k in [0u64, 1, 326, 327, 328, 1000, 2500, 4998, 4999] {
        let mut c = s.seek(Start::Offset(k)).unwrap();
        let m = s.read(&mut c, 1, 1).unwrap();
        assert_eq!((m[0].offset, &m[0].body[..]), (k, &body_of(k, 200)[..]));
        let mut c = s.seek(Start::Timestamp(k)).unwrap();
        assert_eq!(s.read(&mut c, 1, 1).unwrap()[0].offset, k);
    }
    // Entry 3 now points 5 bytes past its record.
    let mut data = std::fs::read(idx).unwrap();
    let at = 8 + 3 * 24 + 16;
    let pos = u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
    data[at..at + 8].copy_from_slice(&(pos + 5).to_le_bytes());
    std::fs::write(idx, &data).unwrap();
    let k = 3 * 330 + 10;
    let mut c = s.seek(Start::Offset(k)).unwrap();
    assert_eq!(s.read(&mut c, 1, 1).unwrap()[0].offset, k);
    let mut c = s.seek(Start::Timestamp(k)).unwrap();
    assert_eq!(c.next, k);
    assert_eq!(s.read(&mut c, 1, 1).unwrap()[0].offset, k);
}

/// RAM: 200,000 messages in small segments cost one summary per segment, not per message.
#[test]
fn memory_grows_with_segments_not_messages() {
    let t = Tmp::new("ram");
    let s = StreamLog::open(&t.stream(), opts(256 << 10), log(&t)).unwrap();
    fill(&s, 1000, 10, 0);
    committed(&s, 1000);
    let small = s.ram_bytes();
    fill(&s, 199_000, 10, 0);
    committed(&s, 200_000);
    let i = s.info();
    assert_eq!(i.messages, 200_000);
    assert!(i.segments > 20, "{i:?}");
    let big = s.ram_bytes();
    // 8 bytes per message would be 1.6 MB; one summary per segment is a few KiB.
    assert!(
        big < small + i.segments as usize * 4 * std::mem::size_of::<Segment>() + (64 << 10),
        "{small} -> {big} bytes of RAM for {} segments",
        i.segments
    );
    assert!(big < 256 << 10, "{big}");
}

/// Deleting a stream removes its directory; writes still pending are dropped (the writer
/// neither recreates the files nor retries forever); later appends are refused.
#[test]
fn delete_removes_the_files_and_drops_pending_writes() {
    let t = Tmp::new("delete");
    let log = log(&t);
    let s = StreamLog::open(&t.stream(), opts(4096), log.clone()).unwrap();
    fill(&s, 10, 10, 0);
    committed(&s, 10);
    log.inject_write_failure(true);
    let (_, ticket) = put(&s, 0, b"pending");
    std::thread::sleep(Duration::from_millis(150));
    s.delete();
    log.inject_write_failure(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.synced() < ticket {
        assert!(
            Instant::now() < deadline,
            "the writer is stuck on a deleted stream"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!t.stream().exists());
    assert_eq!(put(&s, 0, b"late").1, 0);
    assert!(!t.stream().exists());
    let mut c = Cursor::default();
    assert!(s.read(&mut c, 10, 1 << 20).unwrap().is_empty());
    assert_eq!(s.info().segments, 0);
}

/// The files start with the stream segment magic, and a foreign file is refused at open.
#[test]
fn a_foreign_segment_is_refused() {
    let t = Tmp::new("foreign");
    let dir = t.stream();
    {
        let s = StreamLog::open(&dir, opts(4096), log(&t)).unwrap();
        put(&s, 0, b"x");
        committed(&s, 1);
    }
    let seg = &files(&dir, "seg")[0];
    assert_eq!(std::fs::read(seg).unwrap()[..8], SEGMENT_MAGIC);
    std::fs::write(seg, b"WRNSEG\x00\x01 something else").unwrap();
    let e = StreamLog::open(&dir, opts(4096), log(&t)).unwrap_err();
    assert!(e.to_string().contains("not a stream segment"), "{e}");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Not a check: figures. Appends `WARREN_STREAM_N` (default 10,000,000) messages of 100 bytes
/// through a real message log (fdatasync per group commit), then replays them from `first`,
/// printing rates, the stream's bookkeeping RAM and the process RSS. Run with
/// `cargo test --release --lib measure_append_and_replay -- --ignored --nocapture`
/// (`WARREN_STREAM_READ`: messages per read, default 10,000).
#[test]
#[ignore]
fn measure_append_and_replay() {
    let n: u64 = std::env::var("WARREN_STREAM_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let t = Tmp::new("measure");
    let log = log(&t);
    let s = StreamLog::open(&t.stream(), opts(64 << 20), log.clone()).unwrap();
    let body = [b'x'; 100];
    let rss0 = rss_kib();
    let t0 = Instant::now();
    for i in 0..n {
        put(&s, i, &body);
        if i % 4096 == 0 {
            while log.congested() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    committed(&s, n);
    let append = t0.elapsed();
    let i = s.info();
    println!(
        "append: {n} x 100 B in {append:?}: {:.0} msg/s; {} segments, {} MB on disk; stream RAM {} B; RSS {} -> {} MB",
        n as f64 / append.as_secs_f64(),
        i.segments,
        i.bytes >> 20,
        s.ram_bytes(),
        rss0 >> 10,
        rss_kib() >> 10
    );
    // Messages per read: a consumer's credit (its prefetch) in the broker.
    let per_read: usize = std::env::var("WARREN_STREAM_READ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let t1 = Instant::now();
    let mut c = s.seek(Start::First).unwrap();
    let (mut count, mut peak) = (0u64, 0u64);
    loop {
        let v = s.read(&mut c, per_read, 1 << 20).unwrap();
        if v.is_empty() {
            break;
        }
        count += v.len() as u64;
        if count % (1 << 20) < per_read as u64 {
            peak = peak.max(rss_kib());
        }
    }
    let replay = t1.elapsed();
    assert_eq!(count, n);
    println!(
        "replay from first, {per_read} per read: {count} in {replay:?}: {:.0} msg/s, {:.0} MB/s; peak RSS {} MB",
        n as f64 / replay.as_secs_f64(),
        i.bytes as f64 / replay.as_secs_f64() / 1e6,
        peak >> 10
    );
    log.close();
}

/// `Last` starts at the newest chunk, as RabbitMQ's `last`: messages committed one at a time are
/// chunks of one; messages the writer committed together (here held back by a failing disk)
/// form a chunk, and `Last` starts at its first, not at the newest message. After a reopen it is
/// the newest message.
#[test]
fn last_starts_at_the_newest_chunk() {
    let t = Tmp::new("last-chunk");
    let l = log(&t);
    let s = StreamLog::open(&t.stream(), opts(1 << 20), l.clone()).unwrap();
    assert_eq!(s.seek(Start::Last).unwrap().next, 0, "empty: next");
    for i in 0..3u64 {
        put(&s, 1000 + i, b"one at a time");
        committed(&s, i + 1);
    }
    assert_eq!(s.seek(Start::Last).unwrap().next, 2);
    l.inject_write_failure(true);
    put(&s, 1003, b"held back");
    // Once the writer is stuck retrying the batch with message 3, the next four wait together
    // for the next batch, however late the writer's thread runs (on a busy machine it could
    // otherwise take a batch between any two of them).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !l.failing() {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never failed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 4..8u64 {
        put(&s, 1000 + i, b"held back");
    }
    l.inject_write_failure(false);
    committed(&s, 8);
    // Message 3 commits alone, then 4 to 7 as one chunk: the newest chunk starts before the
    // newest message.
    let last = s.seek(Start::Last).unwrap().next;
    assert_eq!(last, 4, "the newest chunk starts at {last}");
    drop(s);
    let s = StreamLog::open(&t.stream(), opts(1 << 20), l).unwrap();
    assert_eq!(
        s.seek(Start::Last).unwrap().next,
        7,
        "after a reopen: the newest message"
    );
}
