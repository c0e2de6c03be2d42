//! The publish path's shortcut: a basic.publish whose three frames (the method, the content
//! header, one body frame) all sit in the read buffer is taken in one step, as one value.
//!
//! Frame by frame, a message costs three decodes, three `Frame`s built and matched, three channel
//! lookups and the channel's assembly state moved from stage to stage. Taken whole it costs one
//! of each. The shortcut only takes what the frame-by-frame path would accept without an error
//! (`peek` returns `None` for anything else, and consumes nothing), so every error, and every
//! message split over several body frames, still goes the one careful way: the shortcut can
//! change how fast a publish is handled, never what happens to it.

use super::codec::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_METHOD, FRAME_OVERHEAD};
use crate::broker::message::{Small, SMALL_INLINE};
use bytes::{Buf, Bytes, BytesMut};

/// A publish taken whole off the read buffer: its parts are slices of that buffer, or copies
/// of the short ones.
#[derive(Debug)]
pub struct WholePublish {
    pub channel: u16,
    pub exchange: Bytes,
    pub routing_key: Small,
    pub mandatory: bool,
    pub immediate: bool,
    pub properties: Small,
    pub body: Small,
}

/// Where a whole publish lies at the front of the read buffer (offsets from its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub channel: u16,
    /// The three frames' length.
    pub len: usize,
    exchange: (usize, usize),
    routing_key: (usize, usize),
    bits: u8,
    properties: (usize, usize),
    body: (usize, usize),
}

/// One frame at `at`: its type, channel and payload's range, when it is complete, within
/// `frame_max` and ends with the end octet.
fn frame(buf: &[u8], at: usize, frame_max: u32) -> Option<(u8, u16, usize, usize)> {
    let h = buf.get(at..at + 7)?;
    let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]);
    if size > frame_max {
        return None;
    }
    let (start, end) = (at + 7, at + 7 + size as usize);
    if *buf.get(end)? != FRAME_END {
        return None;
    }
    Some((h[0], u16::from_be_bytes([h[1], h[2]]), start, end))
}

/// A whole publish at the front of `buf`, as `decode` would read it frame by frame without an
/// error: a well-formed basic.publish, a class-60 content header on the same channel announcing
/// a non-empty body, and one body frame of exactly that size. Nothing is consumed.
pub fn peek(buf: &[u8], frame_max: u32) -> Option<Layout> {
    let (kind, channel, m, m_end) = frame(buf, 0, frame_max)?;
    // Class 60, method 40, reserved-1: then exchange and routing key (short strings), one octet.
    if kind != FRAME_METHOD || buf.get(m..m + 4)? != [0, 60, 0, 40] {
        return None;
    }
    let mut at = m + 6;
    let mut shortstr = || {
        let n = *buf.get(at)? as usize;
        let range = (at + 1, at + 1 + n);
        at = range.1;
        (range.1 <= m_end).then_some(range)
    };
    let (exchange, routing_key) = (shortstr()?, shortstr()?);
    if at + 1 != m_end {
        return None;
    }
    let bits = buf[at];
    let (kind, ch, h, h_end) = frame(buf, m_end + 1, frame_max)?;
    if kind != FRAME_HEADER || ch != channel || h_end - h < 14 || buf[h..h + 2] != [0, 60] {
        return None;
    }
    let body_size = u64::from_be_bytes(buf[h + 4..h + 12].try_into().expect("8 bytes"));
    if body_size == 0 || crate::amqp::nesting::check_properties(&buf[h + 12..h_end]).is_err() {
        return None;
    }
    let (kind, ch, b, b_end) = frame(buf, h_end + 1, frame_max)?;
    if kind != FRAME_BODY || ch != channel || (b_end - b) as u64 != body_size {
        return None;
    }
    Some(Layout {
        channel,
        len: b_end + 1,
        exchange,
        routing_key,
        bits,
        properties: (h + 12, h_end),
        body: (b, b_end),
    })
}

/// Cut the publish `peek` found off the front of `buf`. Each part kept takes one reference to
/// the buffer (one atomic count; the default exchange's empty name takes none), except a short
/// routing key, property block or body, which is copied (`Small`): nothing else does.
#[inline]
pub fn take(buf: &mut BytesMut, l: Layout) -> WholePublish {
    debug_assert!(l.len >= 3 * FRAME_OVERHEAD && buf.len() >= l.len);
    // The parts come in buffer order: each is cut off the front after skipping to it (`at`:
    // where the front of `buf` is, in the layout's offsets).
    let mut at = 0;
    let exchange = cut(buf, &mut at, l.exchange);
    let routing_key = cut_small(buf, &mut at, l.routing_key);
    let properties = cut_small(buf, &mut at, l.properties);
    let body = cut_small(buf, &mut at, l.body);
    buf.advance(l.len - at);
    WholePublish {
        channel: l.channel,
        exchange,
        routing_key,
        mandatory: l.bits & 1 != 0,
        immediate: l.bits & 2 != 0,
        properties,
        body,
    }
}

/// The part `from..to` as a reference into the buffer, cut off its front.
fn cut(buf: &mut BytesMut, at: &mut usize, (from, to): (usize, usize)) -> Bytes {
    if from == to {
        return Bytes::new();
    }
    buf.advance(from - *at);
    *at = to;
    buf.split_to(to - from).freeze()
}

/// The part `from..to`, copied when short (left in the buffer, to be skipped with the rest).
fn cut_small(buf: &mut BytesMut, at: &mut usize, (from, to): (usize, usize)) -> Small {
    if to - from > SMALL_INLINE {
        return Small::Shared(cut(buf, at, (from, to)));
    }
    let rest = &buf[from - *at..];
    match rest.first_chunk::<SMALL_INLINE>() {
        Some(window) => Small::prefix(window, to - from),
        None => Small::copy(&rest[..to - from]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::codec::{decode, encode_content, Frame, Method};
    use amq_protocol::frame::{gen_frame, AMQPFrame};
    use amq_protocol::protocol::{basic, AMQPClass};

    fn publish(channel: u16, exchange: &str, key: &str, bits: (bool, bool)) -> Vec<u8> {
        let frame = AMQPFrame::Method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: key.into(),
                mandatory: bits.0,
                immediate: bits.1,
            })),
        );
        cookie_factory::gen_simple(gen_frame(&frame), Vec::new()).unwrap()
    }

    fn message(channel: u16, exchange: &str, body: &[u8], frame_max: u32) -> Vec<u8> {
        let mut v = publish(channel, exchange, "rk", (true, false));
        let mut content = BytesMut::new();
        encode_content(&mut content, channel, &[0x10, 0, 2], body, frame_max);
        v.extend_from_slice(&content);
        v
    }

    #[test]
    fn takes_what_the_frame_decoder_reads() {
        let mut wire = message(3, "amq.direct", b"hello", 4096);
        wire.extend_from_slice(&[FRAME_BODY, 0]); // the next frame's first bytes stay
        let l = peek(&wire, 4096).expect("a whole publish");
        let mut buf = BytesMut::from(&wire[..]);
        let w = take(&mut buf, l);
        assert_eq!(&buf[..], &[FRAME_BODY, 0]);
        assert_eq!(w.channel, 3);
        assert_eq!(&w.exchange[..], b"amq.direct");
        assert_eq!(&w.routing_key[..], b"rk");
        assert!(w.mandatory && !w.immediate);
        assert_eq!(&w.body[..], b"hello");
        // Frame by frame: the same properties and body.
        let mut rd = BytesMut::from(&wire[..]);
        let frames: Vec<Frame> = (0..3)
            .map(|_| decode(&mut rd, 4096).unwrap().unwrap())
            .collect();
        let Frame::Header { properties, .. } = &frames[1] else {
            panic!("{frames:?}")
        };
        assert_eq!(&properties[..], &w.properties[..]);
        assert!(matches!(
            &frames[0],
            Frame::Method {
                method: Method::Publish {
                    immediate: false,
                    ..
                },
                ..
            }
        ));
        // The default exchange: an empty name.
        let wire = message(1, "", b"x", 4096);
        let w = take(&mut BytesMut::from(&wire[..]), peek(&wire, 4096).unwrap());
        assert!(w.exchange.is_empty());
    }

    #[test]
    fn leaves_everything_else_to_the_frame_decoder() {
        let whole = message(1, "", b"hello", 4096);
        assert!(peek(&whole, 4096).is_some());
        // Incomplete: any prefix.
        for n in 0..whole.len() {
            assert_eq!(peek(&whole[..n], 4096), None, "prefix of {n}");
        }
        // A body over two frames, an empty body, a frame over frame_max.
        assert_eq!(peek(&message(1, "", &[7; 100], 60), 4096), None);
        assert_eq!(peek(&message(1, "", b"", 4096), 4096), None);
        assert_eq!(peek(&whole, 10), None);
        // Any single byte changed in the framing or the fields the decoder checks.
        let method_len = publish(1, "", "rk", (true, false)).len();
        let header_at = method_len;
        for (at, what) in [
            (0, "method frame type"),
            (2, "channel"),
            (8, "class"),
            (10, "method"),
            (method_len - 1, "method end octet"),
            (header_at + 2, "header channel"),
            (header_at + 8, "header class"),
            (whole.len() - 1, "body end octet"),
            (whole.len() - 11, "body channel"),
        ] {
            let mut bad = whole.clone();
            bad[at] ^= 0x40;
            assert_eq!(peek(&bad, 4096), None, "{what}");
        }
        // A routing key running past its frame, and an extra octet after the bits.
        let mut bad = whole.clone();
        bad[7 + 4 + 2 + 1] = 200;
        assert_eq!(peek(&bad, 4096), None);
        let mut m = publish(1, "", "rk", (false, false));
        m.insert(m.len() - 1, 0);
        m[6] += 1;
        m.extend_from_slice(&whole[method_len..]);
        assert_eq!(peek(&m, 4096), None);
    }

    /// Whatever the bytes, `peek` never panics, and what it takes the frame decoder reads as
    /// the same publish without an error: random bytes changed in valid publishes.
    #[test]
    fn takes_only_what_the_frame_decoder_accepts() {
        let mut next = crate::amqp::codec::tests::xorshift(0x2545F4914F6CDD1D);
        let mut taken = 0;
        for round in 0..50_000 {
            let mut wire = message(1 + (round % 3) as u16, ["", "x"][round % 2], b"hello", 4096);
            for _ in 0..1 + next() % 3 {
                let at = (next() % wire.len() as u64) as usize;
                wire[at] = next() as u8;
            }
            let Some(l) = peek(&wire, 4096) else {
                continue;
            };
            taken += 1;
            let w = take(&mut BytesMut::from(&wire[..]), l);
            let mut rd = BytesMut::from(&wire[..]);
            let mut frame = || decode(&mut rd, 4096).expect("no error").expect("a frame");
            match (frame(), frame(), frame()) {
                (
                    Frame::Method {
                        method:
                            Method::Publish {
                                exchange,
                                routing_key,
                                ..
                            },
                        ..
                    },
                    Frame::Header {
                        class_id: 60,
                        body_size,
                        properties,
                        ..
                    },
                    Frame::Body { payload, .. },
                ) => {
                    assert_eq!(
                        (&exchange[..], &routing_key[..]),
                        (&w.exchange[..], &w.routing_key[..])
                    );
                    assert_eq!(
                        (&properties[..], &payload[..]),
                        (&w.properties[..], &w.body[..])
                    );
                    assert_eq!(body_size, payload.len() as u64);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(
            taken > 1000,
            "only {taken} of the changed publishes were still whole"
        );
    }
}
