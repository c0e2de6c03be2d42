//! The scan at open: segments replayed in generation order (each drops what earlier ones held
//! from its first index on), a damaged or torn record cut off with everything after it, entries
//! up to the purged id dropped, and the last meta record that is whole.

use super::format::{
    self, parse_meta_name, parse_seg_name, At, Meta, HEADER, META_MAGIC, SEGMENT_MAGIC,
};
use super::io_err;
use crate::store::StoreError;
use openraft::{LogId, NodeId};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tracing::warn;

pub(super) struct RecoveredSeg {
    pub generation: u64,
    pub base: u64,
    pub positions: Vec<u32>,
    pub size: u64,
    pub file: File,
}

impl RecoveredSeg {
    fn end_index(&self) -> u64 {
        self.base + self.positions.len() as u64
    }
}

pub(super) struct Recovered<NID: NodeId> {
    pub segs: Vec<RecoveredSeg>,
    pub next_generation: u64,
    pub last: Option<LogId<NID>>,
    pub meta: Meta<NID>,
    pub meta_generation: u64,
    /// Meta files found (deleted once a newer one is synced).
    pub meta_files: Vec<PathBuf>,
    pub committed: Option<LogId<NID>>,
    /// Records cut off (torn, damaged, or after a hole).
    pub cut: usize,
}

pub(super) fn recover<NID: NodeId>(dir: &Path) -> Result<Recovered<NID>, StoreError> {
    let mut segs = Vec::new();
    let mut metas = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io_err("read the raft log directory", dir, e))? {
        let e = e.map_err(|e| io_err("read the raft log directory", dir, e))?;
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if let Some((g, b)) = parse_seg_name(&name) {
            segs.push((g, b, e.path()));
        } else if let Some(g) = parse_meta_name(&name) {
            metas.push((g, e.path()));
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    segs.sort_unstable_by_key(|s| s.0);
    metas.sort_unstable_by_key(|m| m.0);

    let mut meta = None;
    for (_, path) in metas.iter().rev() {
        let data = std::fs::read(path).map_err(|e| io_err("read", path, e))?;
        if data.len() < META_MAGIC.len() || data[..META_MAGIC.len()] != META_MAGIC {
            continue;
        }
        let mut at = META_MAGIC.len();
        let mut found = None;
        while let At::Record { total } = format::at(&data[at..], 0) {
            if let Ok(m) = format::decode_plain::<Meta<NID>>(&data[at..at + total]) {
                found = Some(m);
            }
            at += total;
        }
        if found.is_some() {
            meta = found;
            break;
        }
    }
    let meta: Meta<NID> = meta.unwrap_or_default();
    let purged_next = meta.purged.as_ref().map(|p| p.index + 1);

    let mut cut = 0usize;
    let mut live: Vec<RecoveredSeg> = Vec::new();
    let next_generation = segs.last().map_or(1, |s| s.0 + 1);
    // A segment followed (in generation order) by one whose first index is purged already holds
    // nothing but purged entries: what it held from that index on, the later one replaced (a
    // purged entry is never truncated). Such files, spares kept for reuse among them, are
    // deleted unread.
    let mut purged_only = vec![false; segs.len()];
    let mut later_base = u64::MAX;
    for (i, s) in segs.iter().enumerate().rev() {
        purged_only[i] = purged_next.is_some_and(|pn| later_base <= pn);
        later_base = later_base.min(s.1);
    }
    for ((generation, base, path), purged) in segs.into_iter().zip(purged_only) {
        if purged {
            super::remove(&path);
            continue;
        }
        let Some((s, c)) = segment(generation, base, &path)? else {
            std::fs::remove_file(&path).map_err(|e| io_err("remove", &path, e))?;
            continue;
        };
        cut += c;
        // Where the log continues: a segment starting beyond it follows a hole (records lost
        // before it were never acknowledged, so neither were its own).
        let next = live
            .last()
            .map(|l| l.end_index())
            .into_iter()
            .chain(purged_next)
            .max();
        if next.is_some_and(|n| s.base > n) {
            warn!(path = %path.display(), "raft log segment after a gap dropped");
            cut += s.positions.len();
            drop(s);
            std::fs::remove_file(&path).map_err(|e| io_err("remove", &path, e))?;
            continue;
        }
        // It replaces whatever earlier segments hold from its first index on.
        while live.last().is_some_and(|l| l.base >= s.base) {
            let l = live.pop().expect("last");
            let p = dir.join(format::seg_name(l.generation, l.base));
            std::fs::remove_file(&p).map_err(|e| io_err("remove", &p, e))?;
        }
        if let Some(l) = live.last_mut() {
            if s.base < l.end_index() {
                let k = (s.base - l.base) as usize;
                l.size = l.positions[k] as u64;
                l.positions.truncate(k);
                let p = dir.join(format::seg_name(l.generation, l.base));
                l.file.set_len(l.size).map_err(|e| io_err("cut", &p, e))?;
            }
        }
        live.push(s);
    }
    if let Some(pn) = purged_next {
        while live.first().is_some_and(|s| s.end_index() <= pn) {
            let s = live.remove(0);
            let p = dir.join(format::seg_name(s.generation, s.base));
            std::fs::remove_file(&p).map_err(|e| io_err("remove", &p, e))?;
        }
    }
    let last = match live.last() {
        Some(s) if !s.positions.is_empty() => {
            let pos = *s.positions.last().expect("some") as u64;
            let mut buf = vec![0u8; (s.size - pos) as usize];
            let p = dir.join(format::seg_name(s.generation, s.base));
            s.file
                .read_exact_at(&mut buf, pos)
                .map_err(|e| io_err("read", &p, e))?;
            let id = format::decode_log_id::<NID>(&buf).map_err(|e| StoreError::Corrupt {
                path: p.clone(),
                detail: format!("last raft log entry: {e}"),
            })?;
            Some(id)
        }
        _ => None,
    };
    let last = last.filter(|l| purged_next.is_none_or(|pn| l.index >= pn));
    let committed = std::fs::read(dir.join("committed"))
        .ok()
        .and_then(|d| match format::at(&d, 0) {
            At::Record { total } => format::decode_plain::<Option<LogId<NID>>>(&d[..total]).ok(),
            _ => None,
        })
        .flatten();
    // A committed id beyond what the log holds is not trusted (it was written unsynced).
    let known = last.as_ref().or(meta.purged.as_ref()).map(|l| l.index);
    let committed = committed.filter(|c| known.is_some_and(|k| c.index <= k));
    if cut > 0 {
        warn!(dir = %dir.display(), "raft log: {cut} damaged, torn or orphaned records cut at open");
    }
    Ok(Recovered {
        segs: live,
        next_generation,
        last,
        meta,
        meta_generation: metas.last().map_or(0, |m| m.0),
        meta_files: metas.into_iter().map(|m| m.1).collect(),
        committed,
        cut,
    })
}

/// Scan one segment: its record positions (cutting the file after the last good record), and
/// how many records were cut; None if it holds no record.
fn segment(
    generation: u64,
    base: u64,
    path: &Path,
) -> Result<Option<(RecoveredSeg, usize)>, StoreError> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err("open", path, e))?;
    let data = std::fs::read(path).map_err(|e| io_err("read", path, e))?;
    let header = SEGMENT_MAGIC.len();
    if data.len() < header || data[..header] != SEGMENT_MAGIC {
        return Ok(None);
    }
    let mut positions = Vec::new();
    let mut at = header;
    while let At::Record { total } = format::at(&data[at..], HEADER - 8) {
        if format::record_index(&data[at..]) != base + positions.len() as u64 {
            break;
        }
        positions.push(at as u32);
        at += total;
    }
    let mut cut = 0;
    let end = &data[at..(at + format::END.len()).min(data.len())];
    if at < data.len() && end.iter().any(|b| *b != 0) {
        // Not the clean end a write leaves: a torn write or damage. (A reused file's old
        // bytes follow the end that its last write left.)
        warn!(path = %path.display(), at, "raft log segment: damaged or torn tail cut off");
        cut = 1;
        file.set_len(at as u64)
            .map_err(|e| io_err("cut", path, e))?;
    }
    if positions.is_empty() {
        return Ok(None);
    }
    Ok(Some((
        RecoveredSeg {
            generation,
            base,
            positions,
            size: at as u64,
            file,
        },
        cut,
    )))
}
