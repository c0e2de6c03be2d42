//! The stream's file formats: segment records and index entries. Nothing here touches a file.
//!
//! `<first offset, 20 digits>.seg`, a segment: `SEGMENT_MAGIC` (8 bytes, the last two the format
//! version), then records, each (little endian)
//! `[len u32][crc32 u32 of the len field and the len bytes after the crc][offset u64]
//! [timestamp ms u64][filter len u16, NO_FILTER = none][exchange len u8][routing key len u8]
//! [properties len u32][filter][exchange][routing key][properties][body]`:
//! a record is `RECORD_HEADER` bytes of fixed fields then its variable parts, `8 + len` bytes in
//! all. The body is what remains after the properties.
//!
//! `<first offset>.idx`, its sparse index: `INDEX_MAGIC`, then entries of 24 bytes
//! `[offset u64][max timestamp u64][position u64]`: the record at `position` of the segment has
//! `offset`, and no record of the segment up to it has a timestamp above `max timestamp`. The
//! first record of a segment always has an entry, then the first record at or past every
//! `INDEX_EVERY` bytes after the previous entry. The index is not synced: it is checked against
//! the segment at open and rebuilt from it when it does not match.

use bytes::{BufMut, Bytes};
use std::path::{Path, PathBuf};

pub const SEGMENT_MAGIC: [u8; 8] = *b"WRNSTR\x00\x01";
pub const INDEX_MAGIC: [u8; 8] = *b"WRNSIX\x00\x01";
/// Fixed bytes of a record: len, crc, offset, timestamp, the four lengths.
pub const RECORD_HEADER: usize = 4 + 4 + 8 + 8 + 2 + 1 + 1 + 4;
pub const INDEX_ENTRY: usize = 24;
/// Bytes of segment between index entries.
pub const INDEX_EVERY: u64 = 64 << 10;
const NO_FILTER: u16 = u16::MAX;

pub fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

pub fn idx_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

/// Write the record of a message into `buf` (cleared first). `properties` appends the encoded
/// properties for `offset`.
pub fn encode(buf: &mut Vec<u8>, offset: u64, e: &super::NewEntry) {
    let filter = e.filter.map(|f| &f[..f.len().min(NO_FILTER as usize - 1)]);
    let exchange = &e.exchange[..e.exchange.len().min(255)];
    let routing_key = &e.routing_key[..e.routing_key.len().min(255)];
    buf.clear();
    buf.put_u32_le(0);
    buf.put_u32_le(0);
    buf.put_u64_le(offset);
    buf.put_u64_le(e.timestamp);
    buf.put_u16_le(filter.map_or(NO_FILTER, |f| f.len() as u16));
    buf.put_u8(exchange.len() as u8);
    buf.put_u8(routing_key.len() as u8);
    buf.put_u32_le(0);
    if let Some(f) = filter {
        buf.put_slice(f);
    }
    buf.put_slice(exchange);
    buf.put_slice(routing_key);
    let p0 = buf.len();
    (e.properties)(offset, buf);
    let plen = (buf.len() - p0) as u32;
    buf[28..32].copy_from_slice(&plen.to_le_bytes());
    buf.put_slice(e.body);
    let len = (buf.len() - 8) as u32;
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc(&buf[0..4], &buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn crc(len: &[u8], rest: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(rest);
    h.finalize()
}

/// The fixed fields of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes of the whole record.
    pub total: usize,
    pub offset: u64,
    pub timestamp: u64,
}

/// What is at the start of `data`.
#[derive(Debug, PartialEq, Eq)]
pub enum At {
    /// A whole, valid record.
    Record(Header),
    /// The start of a record whose `total` bytes are not all in `data` (`None`: not even its
    /// length is).
    Short(Option<usize>),
    /// Not a valid record (checksum, lengths).
    Bad,
}

fn u64_at(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().expect("8 bytes"))
}

/// Check the record at the start of `data` (its checksum too when `verify`).
pub fn at(data: &[u8], verify: bool) -> At {
    if data.len() < 4 {
        return At::Short(None);
    }
    let len = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
    let total = 8 + len;
    if total < RECORD_HEADER {
        return At::Bad;
    }
    if data.len() < total {
        return At::Short(Some(total));
    }
    let d = &data[..total];
    let stored = u32::from_le_bytes(d[4..8].try_into().expect("4 bytes"));
    if verify && crc(&d[0..4], &d[8..]) != stored {
        return At::Bad;
    }
    let flen = u16::from_le_bytes(d[24..26].try_into().expect("2 bytes"));
    let vars = if flen == NO_FILTER { 0 } else { flen as usize }
        + d[26] as usize
        + d[27] as usize
        + u32::from_le_bytes(d[28..32].try_into().expect("4 bytes")) as usize;
    if RECORD_HEADER + vars > total {
        return At::Bad;
    }
    At::Record(Header {
        total,
        offset: u64_at(d, 8),
        timestamp: u64_at(d, 16),
    })
}

/// The message of a record `at` starts at `pos` of `buf` (as `at` found it): its fields are
/// slices of `buf`.
pub fn message(buf: &Bytes, pos: usize, h: &Header) -> super::StreamMessage {
    let d = &buf[pos..pos + h.total];
    let flen = u16::from_le_bytes(d[24..26].try_into().expect("2 bytes"));
    let elen = d[26] as usize;
    let rlen = d[27] as usize;
    let plen = u32::from_le_bytes(d[28..32].try_into().expect("4 bytes")) as usize;
    let mut at = pos + RECORD_HEADER;
    let mut take = |n: usize| {
        let s = buf.slice(at..at + n);
        at += n;
        s
    };
    let filter = (flen != NO_FILTER).then(|| take(flen as usize));
    let exchange = take(elen);
    let routing_key = take(rlen);
    let properties = take(plen);
    let body = buf.slice(at..pos + h.total);
    super::StreamMessage {
        offset: h.offset,
        timestamp: h.timestamp,
        filter,
        exchange,
        routing_key,
        properties,
        body,
    }
}

/// One entry of a segment's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub max_ts: u64,
    pub pos: u64,
}

impl IndexEntry {
    pub fn encode(&self) -> [u8; INDEX_ENTRY] {
        let mut b = [0u8; INDEX_ENTRY];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.max_ts.to_le_bytes());
        b[16..24].copy_from_slice(&self.pos.to_le_bytes());
        b
    }
}

/// The entries of an index file's bytes that are plausible for a segment starting at `base`
/// of `seg_len` bytes: the longest prefix whose offsets, timestamps and positions grow, the
/// first one being the segment's first record.
pub fn index_entries(data: &[u8], base: u64, seg_len: u64) -> Vec<IndexEntry> {
    let mut out: Vec<IndexEntry> = Vec::new();
    if data.len() < INDEX_MAGIC.len() || data[..INDEX_MAGIC.len()] != INDEX_MAGIC {
        return out;
    }
    for c in data[INDEX_MAGIC.len()..].chunks_exact(INDEX_ENTRY) {
        let e = IndexEntry {
            offset: u64_at(c, 0),
            max_ts: u64_at(c, 8),
            pos: u64_at(c, 16),
        };
        let ok = match out.last() {
            None => e.offset == base && e.pos == SEGMENT_MAGIC.len() as u64,
            Some(p) => e.offset > p.offset && e.pos > p.pos && e.max_ts >= p.max_ts,
        };
        if !ok || e.pos >= seg_len {
            break;
        }
        out.push(e);
    }
    out
}
