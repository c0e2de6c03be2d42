//! The Raft log's file formats. Nothing here touches a file.
//!
//! `<generation, 10 digits>-<first index, 20 digits>.seg`, a segment: `SEGMENT_MAGIC` (8 bytes,
//! the last two the format version), then records, each (little endian)
//! `[len u32][crc32 u32 of the len field and the len bytes after the crc][index u64][entry]`,
//! `entry` being the postcard encoding of the openraft `Entry` (its log id, then its payload).
//! A record is `8 + len` bytes. Every write of a segment ends with `END` (8 zero bytes), which
//! the next write overwrites: a scan at open that finds it after the last whole record has found
//! a clean end, not a torn write. That matters for a segment whose file is a purged segment's,
//! reused: the old bytes after its own records cannot be told from a torn write otherwise.
//!
//! `<generation>.meta`, the durable state that is not the log: `META_MAGIC`, then records
//! `[len u32][crc32 u32][postcard Meta]`, each holding the whole state (the last valid one wins).
//!
//! `committed`: one record `[len u32][crc32 u32][postcard Option<LogId>]`, rewritten in place and
//! never synced (a torn or lost one reads as "none", which only makes a restart re-apply less).

use openraft::{LogId, NodeId, Vote};
use serde::{Deserialize, Serialize};

pub const SEGMENT_MAGIC: [u8; 8] = *b"WRNRFT\x00\x01";
pub const META_MAGIC: [u8; 8] = *b"WRNRFM\x00\x01";
/// What follows a segment's last record: a record length of 0 (never a record's), and 0 crc.
pub const END: [u8; 8] = [0; 8];

/// `b` with `END` after it.
pub fn with_end(mut b: Vec<u8>) -> Vec<u8> {
    b.extend_from_slice(&END);
    b
}

/// Fixed bytes of a segment record: len, crc, index.
pub const HEADER: usize = 16;

pub fn seg_name(generation: u64, base: u64) -> String {
    format!("{generation:010}-{base:020}.seg")
}

/// (generation, first index) of a segment file's name.
pub fn parse_seg_name(name: &str) -> Option<(u64, u64)> {
    let (g, b) = name.strip_suffix(".seg")?.split_once('-')?;
    Some((g.parse().ok()?, b.parse().ok()?))
}

pub fn meta_name(generation: u64) -> String {
    format!("{generation:010}.meta")
}

pub fn parse_meta_name(name: &str) -> Option<u64> {
    name.strip_suffix(".meta")?.parse().ok()
}

/// What the meta file keeps: the vote and the last purged log id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Meta<NID: NodeId> {
    pub vote: Option<Vote<NID>>,
    pub purged: Option<LogId<NID>>,
}

impl<NID: NodeId> Default for Meta<NID> {
    fn default() -> Self {
        Meta {
            vote: None,
            purged: None,
        }
    }
}

fn crc(len: &[u8], rest: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(rest);
    h.finalize()
}

/// Fill in the len and crc of the record `buf[start..]` (its first 8 bytes reserved for them).
fn seal(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start - 8) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let c = crc(&buf[start..start + 4], &buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&c.to_le_bytes());
}

/// Append the segment record of `entry` (at `index`) to `buf`.
pub fn encode_entry<T: Serialize>(
    buf: Vec<u8>,
    index: u64,
    entry: &T,
) -> Result<Vec<u8>, postcard::Error> {
    let start = buf.len();
    let mut buf = buf;
    buf.extend_from_slice(&[0u8; 8]);
    buf.extend_from_slice(&index.to_le_bytes());
    let mut buf = postcard::to_extend(entry, buf)?;
    seal(&mut buf, start);
    Ok(buf)
}

/// A record holding `value` alone (meta, committed).
pub fn encode_plain<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut buf = postcard::to_extend(value, vec![0u8; 8])?;
    seal(&mut buf, 0);
    Ok(buf)
}

/// What is at the start of some bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum At {
    /// A whole record with a good checksum, of `total` bytes; its body is `[8 .. total]`.
    Record { total: usize },
    /// Not all of a record is there (a torn tail), or nothing.
    Short,
    /// Not a valid record.
    Bad,
}

/// Check the record at the start of `data`; `min` is the least body length it may have.
pub fn at(data: &[u8], min: usize) -> At {
    if data.len() < 8 {
        return At::Short;
    }
    let len = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
    if len < min {
        return At::Bad;
    }
    let total = 8 + len;
    if data.len() < total {
        return At::Short;
    }
    let stored = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
    if crc(&data[0..4], &data[8..total]) != stored {
        return At::Bad;
    }
    At::Record { total }
}

/// The index stored in a segment record that `at` accepted.
pub fn record_index(rec: &[u8]) -> u64 {
    u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes"))
}

/// The entry of a segment record that `at` accepted.
pub fn decode_entry<T: serde::de::DeserializeOwned>(rec: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(&rec[HEADER..])
}

/// Only the log id of a segment record's entry (the entry's first field).
pub fn decode_log_id<NID: NodeId>(rec: &[u8]) -> Result<LogId<NID>, postcard::Error> {
    postcard::take_from_bytes::<LogId<NID>>(&rec[HEADER..]).map(|(id, _)| id)
}

/// The value of a plain record that `at` accepted.
pub fn decode_plain<T: serde::de::DeserializeOwned>(rec: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(&rec[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_seen() {
        let buf = encode_entry(b"xx".to_vec(), 7, &(3u64, "hello")).unwrap();
        let rec = &buf[2..];
        assert_eq!(at(rec, 8), At::Record { total: rec.len() });
        assert_eq!(record_index(rec), 7);
        let v: (u64, String) = decode_entry(rec).unwrap();
        assert_eq!(v, (3, "hello".to_string()));
        assert_eq!(at(&rec[..rec.len() - 1], 8), At::Short);
        let mut bad = rec.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(at(&bad, 8), At::Bad);
        assert_eq!(parse_seg_name(&seg_name(3, 42)), Some((3, 42)));
        assert_eq!(parse_meta_name(&meta_name(9)), Some(9));
    }
}
