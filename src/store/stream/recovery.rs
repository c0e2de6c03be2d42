//! The scan at open: each segment's summary from its index (checked against the segment, and
//! rebuilt when it does not match) and a scan of what follows the last index entry, which cuts
//! off a torn or corrupt tail. A segment left without records is removed.

use super::format::{self, IndexEntry, INDEX_EVERY, INDEX_MAGIC, SEGMENT_MAGIC};
use super::read::{scan, Stop};
use super::{corrupt, idx_path, io_err, seg_path, Segment};
use crate::store::StoreError;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use tracing::warn;

/// The segments of the stream in `dir`, and the offset the next append gets.
pub(super) fn recover(dir: &Path) -> Result<(VecDeque<Segment>, u64), StoreError> {
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io_err("read the stream directory", dir, e))? {
        let e = e.map_err(|e| io_err("read the stream directory", dir, e))?;
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok())
        {
            bases.push(n);
        } else if let Some(n) = name
            .strip_suffix(".idx")
            .and_then(|n| n.parse::<u64>().ok())
        {
            indexes.push(n);
        }
    }
    bases.sort_unstable();
    for n in indexes {
        if bases.binary_search(&n).is_err() {
            let _ = std::fs::remove_file(idx_path(dir, n));
        }
    }
    let mut segs: VecDeque<Segment> = VecDeque::new();
    let mut next = 0u64;
    for base in bases {
        let path = seg_path(dir, base);
        if base < next {
            return Err(corrupt(
                &path,
                format!("stream segment overlaps the one before it (which ends at offset {next})"),
            ));
        }
        match segment(dir, base)? {
            Some(s) => {
                next = s.next;
                segs.push_back(s);
            }
            None => {
                // Nothing in it was ever committed: its offsets are free again, after the last
                // good record. With no segment left before it (retention deleted them), its
                // first offset stays the next one: offsets are never reused.
                if segs.is_empty() {
                    next = next.max(base);
                }
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(idx_path(dir, base));
            }
        }
    }
    Ok((segs, next))
}

/// Recover one segment: None if it holds no record.
fn segment(dir: &Path, base: u64) -> Result<Option<Segment>, StoreError> {
    let path = seg_path(dir, base);
    let ioe = |e| io_err("recover the stream segment", &path, e);
    let file = File::options()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(ioe)?;
    let len = file.metadata().map_err(ioe)?.len();
    let header = SEGMENT_MAGIC.len() as u64;
    if len < header {
        // Created, then the broker stopped before its first write was complete.
        return Ok(None);
    }
    let mut magic = [0u8; 8];
    file.read_exact_at(&mut magic, 0).map_err(ioe)?;
    if magic != SEGMENT_MAGIC {
        return Err(corrupt(
            &path,
            "not a stream segment of this Warren (foreign file or newer format)".into(),
        ));
    }
    let ipath = idx_path(dir, base);
    let idx_data = std::fs::read(&ipath).unwrap_or_default();
    let mut entries = format::index_entries(&idx_data, base, len);
    let mut changed = idx_data.len() != INDEX_MAGIC.len() + entries.len() * format::INDEX_ENTRY;
    // The last entry must name the record at its position (an unsynced index may run ahead of
    // what the segment kept, or have been damaged).
    while let Some(e) = entries.last().copied() {
        let mut first = None;
        scan(&file, e.pos, len, |_, h| {
            first = Some(*h);
            false
        })
        .map_err(ioe)?;
        if first.is_some_and(|h| h.offset == e.offset) {
            break;
        }
        entries.pop();
        changed = true;
    }
    let (from, mut expected, mut max_ts) = match entries.last() {
        Some(e) => (e.pos, e.offset, e.max_ts),
        None => (header, base, 0),
    };
    let mut first_ts = entries.first().map(|e| e.max_ts);
    let (end, stop) = scan(&file, from, len, |pos, h| {
        if h.offset != expected {
            return false;
        }
        expected += 1;
        max_ts = max_ts.max(h.timestamp);
        first_ts.get_or_insert(h.timestamp);
        if entries.last().is_none_or(|l| pos >= l.pos + INDEX_EVERY) {
            entries.push(IndexEntry {
                offset: h.offset,
                max_ts,
                pos,
            });
            changed = true;
        }
        true
    })
    .map_err(ioe)?;
    if stop != Stop::End || end < len {
        warn!(path = %path.display(), at = end, bytes = len - end,
            "cutting off a torn or corrupt stream segment tail");
        file.set_len(end).map_err(ioe)?;
        file.sync_all().map_err(ioe)?;
    }
    if expected == base {
        return Ok(None);
    }
    if changed {
        let mut data = Vec::with_capacity(INDEX_MAGIC.len() + entries.len() * 24);
        data.extend_from_slice(&INDEX_MAGIC);
        for e in &entries {
            data.extend_from_slice(&e.encode());
        }
        if let Err(e) = std::fs::write(&ipath, &data) {
            // Reads scan instead; the next open tries again.
            warn!(path = %ipath.display(), "cannot rebuild a stream index: {e}");
        }
    }
    Ok(Some(Segment {
        base,
        next: expected,
        size: end,
        first_ts: first_ts.unwrap_or(0),
        max_ts,
    }))
}
