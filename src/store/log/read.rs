//! Reading records back from the segment files: bodies paged back in as consumers reach them.
//! A record can be read once the writer has written it (`written`), before it is synced.

use super::record::{decode_at, header_len, Format, SEGMENT_MAGIC};
use super::{seg_path, LoadedRecord, MessageLog, ReadError};
use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl MessageLog {
    /// Read back the records at `offsets` (ascending) of `segment`: one read for records close
    /// together, as a queue's consecutive messages usually are. Waits (briefly) for records the
    /// writer has not written yet.
    pub fn read(&self, segment: u32, offsets: &[u32]) -> Vec<Result<LoadedRecord, ReadError>> {
        let path = seg_path(&self.dir, segment);
        let io = |e: std::io::Error| ReadError::Io {
            path: path.clone(),
            detail: e.to_string(),
        };
        let corrupt = |offset| ReadError::Corrupt {
            path: path.clone(),
            offset,
        };
        let all = |e: ReadError| offsets.iter().map(|_| Err(clone_err(&e))).collect();
        let Some(&last) = offsets.last() else {
            return Vec::new();
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.written.load(Ordering::Acquire) <= ((segment as u64) << 32 | last as u64) {
            if Instant::now() > deadline {
                return all(io(std::io::Error::other("record not written in time")));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let (file, f) = {
            let mut r = self.readers.lock();
            match r.get(&segment) {
                Some(open) => open.clone(),
                None => {
                    let file = File::open(&path).map_err(io);
                    let head = file.and_then(|file| {
                        let head = read_at(&file, 0, SEGMENT_MAGIC.len()).map_err(io)?;
                        let f = Format::of(&head, segment).map_err(|_| corrupt(0))?;
                        Ok((Arc::new(file), f))
                    });
                    match head {
                        Ok(open) => {
                            if r.len() > 16 {
                                r.clear();
                            }
                            r.insert(segment, open.clone());
                            open
                        }
                        Err(e) => return all(e),
                    }
                }
            }
        };
        let start = offsets[0];
        let want = (last - start) as usize + 64 * 1024;
        let chunk = match read_at(&file, start as u64, want.min(4 << 20)) {
            Ok(c) => c,
            Err(e) => return all(io(e)),
        };
        offsets
            .iter()
            .map(|&off| {
                let at = (off - start) as usize;
                match header_len(&chunk, at, f) {
                    Some(len) if at + f.header() + len <= chunk.len() => {
                        decode_at(&chunk, at, f).ok_or_else(|| corrupt(off))
                    }
                    _ => {
                        // Bigger than the chunk (or cut off by it): read it alone.
                        let head = read_at(&file, off as u64, f.header()).map_err(io)?;
                        let len = header_len(&head, 0, f).ok_or_else(|| corrupt(off))?;
                        let whole = read_at(&file, off as u64, f.header() + len).map_err(io)?;
                        decode_at(&whole, 0, f).ok_or_else(|| corrupt(off))
                    }
                }
            })
            .collect()
    }

    /// Whether the record at (`segment`, `offset`) has been written to its file (so it can be
    /// read back).
    pub fn is_written(&self, segment: u32, offset: u32) -> bool {
        self.written.load(Ordering::Acquire) > ((segment as u64) << 32 | offset as u64)
    }

    /// Wait (blocking, at most `limit`) until the record at (`segment`, `offset`) is written.
    /// For the rare reads that cannot wait for the writer otherwise (dead-lettering a message
    /// paged out a moment ago); the writer normally takes a few milliseconds at most.
    pub fn wait_written(&self, segment: u32, offset: u32, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while !self.is_written(segment, offset) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }
}

fn clone_err(e: &ReadError) -> ReadError {
    match e {
        ReadError::Io { path, detail } => ReadError::Io {
            path: path.clone(),
            detail: detail.clone(),
        },
        ReadError::Corrupt { path, offset } => ReadError::Corrupt {
            path: path.clone(),
            offset: *offset,
        },
    }
}

/// Read `len` bytes at `pos` (fewer at the end of the file).
fn read_at(f: &File, pos: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(Bytes::from(buf))
}
