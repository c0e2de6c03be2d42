//! Seeking and reading: the stream's lock is held only to find the segment and how much of it
//! is committed; the files are read (`pread`) without it, in chunks, so a reader replaying old
//! data never holds up appends or other readers.

use super::format::{self, At, Header, IndexEntry, SEGMENT_MAGIC};
use super::{
    corrupt, idx_path, io_err, seg_path, Cursor, ReadPos, Start, StreamLog, StreamMessage,
};
use crate::store::StoreError;
use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Most bytes read at once (a bigger record is read whole).
const CHUNK: usize = 1 << 20;
/// Fewest bytes read at once.
const MIN_CHUNK: usize = 64 << 10;

/// Why `scan` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// At `end`.
    End,
    /// The callback asked to stop (at the record it was given).
    Asked,
    /// At a record that is not valid or does not fit before `end` (a torn tail).
    Bad,
}

fn read_bytes(file: &File, pos: u64, n: usize) -> std::io::Result<Bytes> {
    let mut v = vec![0u8; n];
    file.read_exact_at(&mut v, pos)?;
    Ok(Bytes::from(v))
}

/// Walk the valid records of `file` from `pos` to `end`, checksums checked, calling `f` with
/// each one's position and header until it returns false. Returns where it stopped (the
/// position after the last record walked, or of the one `f` stopped at) and why.
pub(super) fn scan(
    file: &File,
    mut pos: u64,
    end: u64,
    mut f: impl FnMut(u64, &Header) -> bool,
) -> std::io::Result<(u64, Stop)> {
    let mut buf = Vec::new();
    let mut need = CHUNK;
    while pos < end {
        let n = ((end - pos) as usize).min(need);
        buf.resize(n, 0);
        file.read_exact_at(&mut buf, pos)?;
        let mut at = 0usize;
        loop {
            match format::at(&buf[at..], true) {
                At::Record(h) => {
                    if !f(pos + at as u64, &h) {
                        return Ok((pos + at as u64, Stop::Asked));
                    }
                    at += h.total;
                }
                At::Short(total) => {
                    if at == 0 {
                        match total {
                            Some(t) if pos + t as u64 <= end => need = t,
                            _ => return Ok((pos, Stop::Bad)),
                        }
                    }
                    break;
                }
                At::Bad => return Ok((pos + at as u64, Stop::Bad)),
            }
        }
        if at > 0 {
            need = CHUNK;
        }
        pos += at as u64;
    }
    Ok((pos, Stop::End))
}

/// The index entries of segment `base` that lie within its first `limit` bytes (none when the
/// index cannot be read: the caller scans from the segment's start).
fn index(dir: &Path, base: u64, limit: u64) -> Vec<IndexEntry> {
    match std::fs::read(idx_path(dir, base)) {
        Ok(data) => format::index_entries(&data, base, limit),
        Err(_) => Vec::new(),
    }
}

impl StreamLog {
    /// The first offset a reader starting at `start` reads.
    pub fn seek(&self, start: Start) -> Result<Cursor, StoreError> {
        let at = |next| Cursor { next, at: None };
        let st = self.state.lock();
        let first = st.first();
        let tail = st.committed.next;
        Ok(match start {
            Start::First => at(first),
            Start::Next => at(tail),
            // The newest chunk (what the writer committed last, together); after a restart,
            // the newest message.
            Start::Last => at(match st.last_chunk {
                Some(c) if c < tail => c.max(first),
                _ if tail > first => tail - 1,
                _ => tail,
            }),
            Start::Offset(n) => at(n.max(first)),
            Start::Timestamp(ms) => {
                drop(st);
                return self.seek_time(ms);
            }
        })
    }

    /// The first committed message with a timestamp at or after `ms`.
    fn seek_time(&self, ms: u64) -> Result<Cursor, StoreError> {
        for _ in 0..3 {
            let (base, limit, tail) = {
                let st = self.state.lock();
                let tail = st.committed.next;
                // Every message of the segments before it is older (timestamps need not grow).
                match st.segs.iter().find(|s| s.max_ts >= ms && s.base < tail) {
                    Some(s) => (s.base, st.limit(s), tail),
                    None => {
                        return Ok(Cursor {
                            next: tail,
                            at: None,
                        })
                    }
                }
            };
            let path = seg_path(&self.dir, base);
            let file = match File::open(&path) {
                Ok(f) => Arc::new(f),
                // Retention deleted it meanwhile: look again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open the stream segment", &path, e)),
            };
            let entries = index(&self.dir, base, limit);
            // Entries carry the running maximum: every record before the last one below `ms`
            // is older than `ms`.
            let i = entries.partition_point(|e| e.max_ts < ms);
            let header = SEGMENT_MAGIC.len() as u64;
            let mut from = match i {
                0 => None,
                _ => Some(entries[i - 1]),
            };
            let found = loop {
                let mut found = None;
                let mut first = true;
                let start = from.map_or(header, |e| e.pos);
                let (stop_pos, stop) = scan(&file, start, limit, |pos, h| {
                    // A damaged index entry: not the record it names.
                    if std::mem::take(&mut first) && from.is_some_and(|e| e.offset != h.offset) {
                        return false;
                    }
                    if h.timestamp >= ms && h.offset < tail {
                        found = Some((pos, h.offset));
                        return false;
                    }
                    true
                })
                .map_err(|e| io_err("read the stream segment", &path, e))?;
                let damaged = found.is_none() && (stop == Stop::Asked || stop == Stop::Bad);
                if damaged && from.is_some() {
                    from = None;
                    continue;
                }
                if stop == Stop::Bad {
                    return Err(corrupt(&path, format!("bad record at byte {stop_pos}")));
                }
                break found;
            };
            return Ok(match found {
                Some((pos, offset)) => Cursor {
                    next: offset,
                    at: Some(ReadPos {
                        seg: base,
                        pos,
                        offset,
                        file,
                        buf: Bytes::new(),
                        buf_pos: 0,
                    }),
                },
                None => Cursor {
                    next: tail,
                    at: None,
                },
            });
        }
        let tail = self.state.lock().committed.next;
        Ok(Cursor {
            next: tail,
            at: None,
        })
    }

    /// Read committed messages from `cursor` on: at most `max_count` messages, and stopping
    /// after the one that reaches `max_bytes` (at least one is returned if any is committed).
    /// A cursor behind the first offset held (retention deleted it) jumps to it. Returns an
    /// empty list at the committed end.
    pub fn read(
        &self,
        cursor: &mut Cursor,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StreamMessage>, StoreError> {
        let mut out = Vec::new();
        if max_count == 0 {
            return Ok(out);
        }
        let chunk = max_bytes.clamp(MIN_CHUNK, CHUNK);
        let mut bytes = 0usize;
        // A record bigger than a chunk: read it whole.
        let mut need = 0usize;
        let mut reopened = 0;
        // The position came from the index (not from reading): a record that does not match
        // means a damaged index, and the segment is scanned from its start instead.
        let mut from_index = false;
        loop {
            let (base, limit) = {
                let st = self.state.lock();
                if st.deleted {
                    return Ok(out);
                }
                let first = st.first();
                if cursor.next < first {
                    cursor.next = first;
                    cursor.at = None;
                }
                if cursor.next >= st.committed.next {
                    return Ok(out);
                }
                let still = cursor
                    .at
                    .as_ref()
                    .filter(|h| h.offset <= cursor.next)
                    .and_then(|h| st.find(h.seg))
                    .filter(|&i| cursor.next < st.segs[i].next);
                let i = match still {
                    Some(i) => i,
                    None => {
                        cursor.at = None;
                        let i = st.segs.partition_point(|s| s.base <= cursor.next);
                        if i > 0 && cursor.next < st.segs[i - 1].next {
                            i - 1
                        } else if i < st.segs.len() {
                            // In a gap (records cut off at recovery): the next one held.
                            cursor.next = st.segs[i].base;
                            if cursor.next >= st.committed.next {
                                return Ok(out);
                            }
                            i
                        } else {
                            return Ok(out);
                        }
                    }
                };
                (st.segs[i].base, st.limit(&st.segs[i]))
            };
            let path = seg_path(&self.dir, base);
            if cursor.at.is_none() {
                let file = match File::open(&path) {
                    Ok(f) => Arc::new(f),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && reopened < 3 => {
                        // Deleted by retention since: the next round jumps ahead.
                        reopened += 1;
                        continue;
                    }
                    Err(e) => return Err(io_err("open the stream segment", &path, e)),
                };
                let entries = index(&self.dir, base, limit);
                let i = entries.partition_point(|e| e.offset <= cursor.next);
                let (pos, offset) = match i {
                    0 => (SEGMENT_MAGIC.len() as u64, base),
                    _ => (entries[i - 1].pos, entries[i - 1].offset),
                };
                from_index = i > 0;
                cursor.at = Some(ReadPos {
                    seg: base,
                    pos,
                    offset,
                    file,
                    buf: Bytes::new(),
                    buf_pos: 0,
                });
            }
            let h = cursor.at.as_mut().expect("set");
            if h.pos >= limit {
                return Ok(out);
            }
            let cached = need == 0 && h.pos >= h.buf_pos && h.pos < h.buf_pos + h.buf.len() as u64;
            let (buf, start) = if cached {
                (h.buf.clone(), (h.pos - h.buf_pos) as usize)
            } else {
                let n = ((limit - h.pos) as usize).min(chunk.max(need));
                let buf = read_bytes(&h.file, h.pos, n)
                    .map_err(|e| io_err("read the stream segment", &path, e))?;
                h.buf = buf.clone();
                h.buf_pos = h.pos;
                (buf, 0)
            };
            let mut at = start;
            loop {
                match format::at(&buf[at..], true) {
                    At::Record(r) if !from_index || r.offset == h.offset => {
                        from_index = false;
                        need = 0;
                        if r.offset >= cursor.next {
                            out.push(format::message(&buf, at, &r));
                            bytes += r.total;
                            cursor.next = r.offset + 1;
                        }
                        at += r.total;
                        h.pos += r.total as u64;
                        h.offset = r.offset + 1;
                        if at == buf.len() {
                            // All used: keep no memory for an idle reader.
                            h.buf = Bytes::new();
                        }
                        if out.len() >= max_count || bytes >= max_bytes {
                            return Ok(out);
                        }
                    }
                    At::Short(_) if at > start || cached => {
                        // The rest of the record is past what was read: read from it.
                        h.buf = Bytes::new();
                        break;
                    }
                    At::Short(Some(total)) if h.pos + total as u64 <= limit => {
                        // Bigger than a chunk: read it whole.
                        need = total;
                        break;
                    }
                    _ if from_index => {
                        // The index pointed at something else: scan from the start.
                        from_index = false;
                        h.pos = SEGMENT_MAGIC.len() as u64;
                        h.offset = base;
                        h.buf = Bytes::new();
                        break;
                    }
                    _ => {
                        return Err(corrupt(
                            &path,
                            format!("bad stream record at byte {}", h.pos),
                        ))
                    }
                }
            }
        }
    }
}
