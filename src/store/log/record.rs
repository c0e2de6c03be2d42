//! The segment and record format: encoding, decoding and checksums. Nothing here touches a
//! file.
//!
//! `NNNNNNNN.seg`, a segment: an 8-byte header (`SEGMENT_MAGIC`, which carries the format
//! version), then records, each
//! `[magic u32][len u32][segment u32][crc32 u32 of len+segment+payload][payload: len bytes]`
//! (little endian), with payload `[published_at ms u64][message TTL ms u64, MAX = none][priority
//! u8][queue count u16][queue ids u32…][exchange u8-len][routing key u8-len][properties
//! u32-len][body…]`. A message routed to several durable queues is one record naming all of
//! them.
//!
//! Each record names its segment because a segment file is reused once everything in it is gone
//! (see `writer`): past the last record written, the file still holds records of its previous
//! life, which are whole and check out, but name another segment. Reading stops there
//! (`Check::Stale`), deterministically, not by chance of a checksum.
//!
//! Format 1 (segments written before files were reused) had no segment number:
//! `[magic][len][crc32 of len+payload][payload]`. It is read, never written.

use super::{LoadedRecord, NewRecord};
use bytes::{BufMut, Bytes};

/// First bytes of every segment file written; the last two are the format version.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WRNSEG\x00\x02";
const RECORD_MAGIC: u32 = 0x5752_4543;
/// Bytes of a record before its payload: magic, length, segment, checksum.
pub(super) const HEADER: usize = 16;
/// The same in format 1: magic, length, checksum.
const HEADER_V1: usize = 12;

/// Written right after the last record of each write: where a record's magic would be, four
/// zero bytes. Recovery stops there without calling it a torn write, though a reused file's old
/// bytes follow (the next write goes over it).
pub(super) const END_MARK: [u8; 4] = [0; 4];

/// How the records of one segment are laid out: its format, and its number (which format 2
/// records carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Format {
    v1: bool,
    segment: u32,
}

impl Format {
    /// The format written, for segment `segment`.
    pub(super) fn current(segment: u32) -> Format {
        Format { v1: false, segment }
    }

    /// The format a segment file's first 8 bytes announce: `Err(None)` if they are not a Warren
    /// segment's, `Err(Some(version))` for a format this build does not read.
    pub(super) fn of(head: &[u8], segment: u32) -> Result<Format, Option<u16>> {
        if head.len() < SEGMENT_MAGIC.len() || head[..6] != SEGMENT_MAGIC[..6] {
            return Err(None);
        }
        match u16::from_be_bytes([head[6], head[7]]) {
            1 => Ok(Format { v1: true, segment }),
            2 => Ok(Format::current(segment)),
            v => Err(Some(v)),
        }
    }

    /// Bytes of a record before its payload.
    pub(super) fn header(self) -> usize {
        if self.v1 {
            HEADER_V1
        } else {
            HEADER
        }
    }
}

/// What lies at a position of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// A record of this segment, with this payload length.
    Record(usize),
    /// A whole record of another segment: old bytes of a reused file, past this segment's end.
    Stale,
    /// Nothing valid: the end of what was written, a torn write, or damage.
    Invalid,
}

/// `r` as its record holds it (exchange and routing key cut to 255 bytes, at most `u16::MAX`
/// queues), and the length of that record's payload.
pub(super) fn fit<'a>(r: &NewRecord<'a>) -> (NewRecord<'a>, usize) {
    let exchange = &r.exchange[..r.exchange.len().min(255)];
    let routing_key = &r.routing_key[..r.routing_key.len().min(255)];
    let nq = r.queues.len().min(u16::MAX as usize);
    let len = 8
        + 8
        + 1
        + 2
        + 4 * nq
        + 1
        + exchange.len()
        + 1
        + routing_key.len()
        + 4
        + r.properties.len()
        + r.body.len();
    let fitted = NewRecord {
        queues: &r.queues[..nq],
        exchange,
        routing_key,
        ..*r
    };
    (fitted, len)
}

/// Append the record of `r` (as `fit` returned it, with its payload length `len`) for segment
/// `segment` to `buf`, checksum included.
pub(super) fn encode(buf: &mut Vec<u8>, r: &NewRecord, len: usize, segment: u32) {
    let NewRecord {
        queues,
        published_at,
        ttl,
        priority,
        exchange,
        routing_key,
        properties,
        body,
    } = *r;
    buf.reserve(HEADER + len);
    let start = buf.len();
    buf.put_u32_le(RECORD_MAGIC);
    buf.put_u32_le(len as u32);
    buf.put_u32_le(segment);
    buf.put_u32_le(0);
    buf.put_u64_le(published_at);
    buf.put_u64_le(ttl.unwrap_or(u64::MAX));
    buf.put_u8(priority);
    buf.put_u16_le(queues.len() as u16);
    for q in queues {
        buf.put_u32_le(*q);
    }
    buf.put_u8(exchange.len() as u8);
    buf.put_slice(exchange);
    buf.put_u8(routing_key.len() as u8);
    buf.put_slice(routing_key);
    buf.put_u32_le(properties.len() as u32);
    buf.put_slice(properties);
    buf.put_slice(body);
    let crc = record_crc(&buf[start + 4..start + 12], &buf[start + HEADER..]);
    buf[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
}

/// The checksum of a record: over its length (and segment, in format 2) and its payload.
fn record_crc(fields: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(fields);
    h.update(payload);
    h.finalize()
}

/// What lies at `pos` of a segment in format `f`.
pub(super) fn check_at(data: &[u8], pos: usize, f: Format) -> Check {
    let Some(rest) = data.get(pos..) else {
        return Check::Invalid;
    };
    let header = f.header();
    if rest.len() < header || rest[..4] != RECORD_MAGIC.to_le_bytes() {
        return Check::Invalid;
    }
    let word = |at: usize| u32::from_le_bytes(rest[at..at + 4].try_into().expect("4 bytes"));
    let len = word(4) as usize;
    let Some(payload) = header
        .checked_add(len)
        .and_then(|end| rest.get(header..end))
    else {
        return Check::Invalid;
    };
    if record_crc(&rest[4..header - 4], payload) != word(header - 4) {
        return Check::Invalid;
    }
    if !f.v1 && word(8) != f.segment {
        return Check::Stale;
    }
    Check::Record(len)
}

/// The payload length of a valid record of this segment starting at `pos`, if there is one.
pub(super) fn record_at(data: &[u8], pos: usize, f: Format) -> Option<usize> {
    match check_at(data, pos, f) {
        Check::Record(len) => Some(len),
        _ => None,
    }
}

/// The payload length a record header at `pos` announces (magic checked, checksum not).
pub(super) fn header_len(data: &[u8], pos: usize, f: Format) -> Option<usize> {
    let h = data.get(pos..pos.checked_add(f.header())?)?;
    (h[..4] == RECORD_MAGIC.to_le_bytes())
        .then(|| u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize)
}

/// The checked, parsed record at `pos` of `data`.
pub(super) fn decode_at(data: &Bytes, pos: usize, f: Format) -> Option<LoadedRecord> {
    let len = record_at(data, pos, f)?;
    let at = pos + f.header();
    let (published_at, _, _, exchange, routing_key, properties, body) =
        parse_payload(&data.slice(at..at + len))?;
    Some(LoadedRecord {
        published_at,
        exchange,
        routing_key,
        properties,
        body,
    })
}

pub(super) type Parsed = (u64, (Option<u64>, u8), Vec<u32>, Bytes, Bytes, Bytes, Bytes);

pub(super) fn parse_payload(p: &Bytes) -> Option<Parsed> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<std::ops::Range<usize>> {
        let end = at.checked_add(n)?;
        (end <= p.len()).then(|| {
            let r = *at..end;
            *at = end;
            r
        })
    };
    let published_at = u64::from_le_bytes(p[take(&mut at, 8)?].try_into().ok()?);
    let ttl = u64::from_le_bytes(p[take(&mut at, 8)?].try_into().ok()?);
    let ttl = (ttl != u64::MAX).then_some(ttl);
    let priority = p[take(&mut at, 1)?][0];
    let nq = u16::from_le_bytes(p[take(&mut at, 2)?].try_into().ok()?) as usize;
    let mut queues = Vec::with_capacity(nq);
    for _ in 0..nq {
        queues.push(u32::from_le_bytes(p[take(&mut at, 4)?].try_into().ok()?));
    }
    let el = p[take(&mut at, 1)?][0] as usize;
    let exchange = p.slice(take(&mut at, el)?);
    let rl = p[take(&mut at, 1)?][0] as usize;
    let routing_key = p.slice(take(&mut at, rl)?);
    let pl = u32::from_le_bytes(p[take(&mut at, 4)?].try_into().ok()?) as usize;
    let properties = p.slice(take(&mut at, pl)?);
    let body = p.slice(at..);
    Some((
        published_at,
        (ttl, priority),
        queues,
        exchange,
        routing_key,
        properties,
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fit` and `encode` moved out of `MessageLog::append`: a record they write must read back
    /// field for field, with a long exchange and routing key cut to 255 bytes as before, and a
    /// flipped payload byte must fail the checksum.
    #[test]
    fn an_encoded_record_decodes_and_a_flipped_byte_fails_its_checksum() {
        let long = vec![b'x'; 300];
        let r = NewRecord {
            queues: &[7, 9],
            published_at: 42,
            ttl: None,
            priority: 4,
            exchange: &long,
            routing_key: b"rk",
            properties: b"\x10\x00",
            body: b"hello",
        };
        let (fitted, len) = fit(&r);
        assert_eq!(fitted.exchange.len(), 255);
        let mut buf = SEGMENT_MAGIC.to_vec();
        encode(&mut buf, &fitted, len, 7);
        assert_eq!(buf.len(), SEGMENT_MAGIC.len() + HEADER + len);
        let f = Format::of(&buf, 7).unwrap();
        let data = Bytes::from(buf.clone());
        assert_eq!(record_at(&data, SEGMENT_MAGIC.len(), f), Some(len));
        let (published_at, (ttl, priority), queues, ..) =
            parse_payload(&data.slice(SEGMENT_MAGIC.len() + HEADER..)).unwrap();
        assert_eq!((published_at, ttl, priority), (42, None, 4));
        assert_eq!(queues, vec![7, 9]);
        let back = decode_at(&data, SEGMENT_MAGIC.len(), f).unwrap();
        assert_eq!(&back.exchange[..], &long[..255]);
        assert_eq!(&back.routing_key[..], b"rk");
        assert_eq!(&back.properties[..], b"\x10\x00");
        assert_eq!(&back.body[..], b"hello");
        // Read as another segment's (a reused file's old record): whole, but stale.
        let other = Format::of(&buf, 8).unwrap();
        assert_eq!(check_at(&data, SEGMENT_MAGIC.len(), other), Check::Stale);
        assert!(decode_at(&data, SEGMENT_MAGIC.len(), other).is_none());
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert_eq!(check_at(&buf, SEGMENT_MAGIC.len(), f), Check::Invalid);
        assert_eq!(check_at(&buf, SEGMENT_MAGIC.len(), other), Check::Invalid);
        assert_eq!(header_len(&buf, SEGMENT_MAGIC.len(), f), Some(len));
        // The segment number is under the checksum too.
        buf[last] ^= 1;
        buf[SEGMENT_MAGIC.len() + 8] ^= 1;
        assert_eq!(check_at(&buf, SEGMENT_MAGIC.len(), f), Check::Invalid);
    }

    /// Segments of format 1 (no segment number in records) still read back; unknown formats and
    /// foreign files are told apart.
    #[test]
    fn a_format_1_segment_reads_back() {
        let mut buf = b"WRNSEG\x00\x01".to_vec();
        let payload = {
            // A format-2 record's payload, the same in format 1.
            let mut v = Vec::new();
            let r = NewRecord {
                queues: &[3],
                published_at: 5,
                ttl: Some(9),
                priority: 0,
                exchange: b"x",
                routing_key: b"k",
                properties: b"",
                body: b"old",
            };
            let (r, len) = fit(&r);
            encode(&mut v, &r, len, 1);
            v[HEADER..].to_vec()
        };
        let len = (payload.len() as u32).to_le_bytes();
        buf.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&record_crc(&len, &payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        let f = Format::of(&buf, 1).unwrap();
        assert_eq!(f.header(), 12);
        let back = decode_at(&Bytes::from(buf.clone()), SEGMENT_MAGIC.len(), f).unwrap();
        assert_eq!(&back.body[..], b"old");
        // Whatever number the segment has: format 1 records carry none.
        let f9 = Format::of(&buf, 9).unwrap();
        assert_eq!(
            check_at(&buf, SEGMENT_MAGIC.len(), f9),
            Check::Record(payload.len())
        );
        assert_eq!(Format::of(b"WRNSEG\x00\x09", 1), Err(Some(9)));
        assert_eq!(Format::of(b"NOTWARRN", 1), Err(None));
        assert_eq!(Format::of(b"WRN", 1), Err(None));
    }
}
