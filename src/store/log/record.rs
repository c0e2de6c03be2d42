//! The segment and record format: encoding, decoding and checksums. Nothing here touches a
//! file.
//!
//! `NNNNNNNN.seg`, a segment: an 8-byte header (`SEGMENT_MAGIC`, which carries the format
//! version), then records, each
//! `[magic u32][len u32][crc32 u32 of len+payload][payload: len bytes]` (little endian), with
//! payload `[published_at ms u64][message TTL ms u64, MAX = none][priority u8][queue count
//! u16][queue ids u32…][exchange u8-len][routing key u8-len][properties u32-len][body…]`. A
//! message routed to several durable queues is one record naming all of them.

use super::{LoadedRecord, NewRecord};
use bytes::{BufMut, Bytes};

/// First bytes of every segment file; the last two are the format version.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WRNSEG\x00\x01";
const RECORD_MAGIC: u32 = 0x5752_4543;
/// Bytes of a record before its payload: magic, length, checksum.
pub(super) const HEADER: usize = 12;

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

/// Append the record of `r` (as `fit` returned it, with its payload length `len`) to `buf`,
/// checksum included.
pub(super) fn encode(buf: &mut Vec<u8>, r: &NewRecord, len: usize) {
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
    let crc = record_crc(&buf[start + 4..start + 8], &buf[start + HEADER..]);
    buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

fn record_crc(len: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
}

/// The payload length of a valid record starting at `pos`, if there is one.
pub(super) fn record_at(data: &[u8], pos: usize) -> Option<usize> {
    let rest = data.get(pos..)?;
    if rest.len() < HEADER || rest[..4] != RECORD_MAGIC.to_le_bytes() {
        return None;
    }
    let len = u32::from_le_bytes(rest[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(rest[8..12].try_into().ok()?);
    let payload = rest.get(HEADER..HEADER.checked_add(len)?)?;
    (record_crc(&rest[4..8], payload) == crc).then_some(len)
}

/// The payload length a record header at `pos` announces (magic checked, checksum not).
pub(super) fn header_len(data: &[u8], pos: usize) -> Option<usize> {
    let h = data.get(pos..pos.checked_add(HEADER)?)?;
    (h[..4] == RECORD_MAGIC.to_le_bytes())
        .then(|| u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize)
}

/// The checked, parsed record at `pos` of `data`.
pub(super) fn decode_at(data: &Bytes, pos: usize) -> Option<LoadedRecord> {
    let len = record_at(data, pos)?;
    let (published_at, _, _, exchange, routing_key, properties, body) =
        parse_payload(&data.slice(pos + HEADER..pos + HEADER + len))?;
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
        encode(&mut buf, &fitted, len);
        assert_eq!(buf.len(), SEGMENT_MAGIC.len() + HEADER + len);
        let data = Bytes::from(buf.clone());
        assert_eq!(record_at(&data, SEGMENT_MAGIC.len()), Some(len));
        let (published_at, (ttl, priority), queues, ..) =
            parse_payload(&data.slice(SEGMENT_MAGIC.len() + HEADER..)).unwrap();
        assert_eq!((published_at, ttl, priority), (42, None, 4));
        assert_eq!(queues, vec![7, 9]);
        let back = decode_at(&data, SEGMENT_MAGIC.len()).unwrap();
        assert_eq!(&back.exchange[..], &long[..255]);
        assert_eq!(&back.routing_key[..], b"rk");
        assert_eq!(&back.properties[..], b"\x10\x00");
        assert_eq!(&back.body[..], b"hello");
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert_eq!(record_at(&buf, SEGMENT_MAGIC.len()), None);
        assert_eq!(header_len(&buf, SEGMENT_MAGIC.len()), Some(len));
    }
}
