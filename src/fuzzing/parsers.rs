//! The parser targets: frames, content headers, field tables.

use super::*;

/// Cut frames off the input as a connection does (the first byte picks frame_max), and check
/// each against amq-protocol's parser.
pub fn frame(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let frame_max = if sel & 1 == 0 { 4096 } else { 131_072 };
    let mut buf = BytesMut::from(rest);
    loop {
        let raw = frame_bytes(&buf, frame_max);
        match codec::decode(&mut buf, frame_max) {
            Ok(Some(f)) => check_frame(f, &raw.expect("a decoded frame was complete")),
            Ok(None) => {
                assert!(raw.is_none(), "a complete frame was not decoded");
                break;
            }
            Err(e) => {
                assert!(
                    [501, 502, 503, 505, 540].contains(&e.code),
                    "unexpected error code {} ({})",
                    e.code,
                    e.text
                );
                break;
            }
        }
    }
}

/// The bytes of the first frame in `buf`, if it is complete and within frame_max.
pub(super) fn frame_bytes(buf: &[u8], frame_max: u32) -> Option<Vec<u8>> {
    let size = u32::from_be_bytes(buf.get(3..7)?.try_into().ok()?);
    if size > frame_max {
        return None;
    }
    Some(buf.get(..size as usize + 8)?.to_vec())
}

pub(super) fn check_frame(f: Frame, raw: &[u8]) {
    let theirs = parse_frame(raw)
        .ok()
        .and_then(|(rest, f)| if rest.is_empty() { Some(f) } else { None });
    match f {
        Frame::Method {
            channel,
            class_id,
            method_id,
            method,
        } => {
            assert_eq!(
                (class_id, method_id),
                (
                    u16::from_be_bytes([raw[7], raw[8]]),
                    u16::from_be_bytes([raw[9], raw[10]])
                )
            );
            match method {
                Method::Publish {
                    exchange,
                    routing_key,
                    mandatory,
                    immediate,
                } => match theirs {
                    Some(AMQPFrame::Method(
                        ch,
                        AMQPClass::Basic(basic::AMQPMethod::Publish(p)),
                    )) => {
                        assert_eq!(ch, channel);
                        assert_eq!(p.exchange.as_str().as_bytes(), &exchange[..]);
                        assert_eq!(p.routing_key.as_str().as_bytes(), &routing_key[..]);
                        assert_eq!((p.mandatory, p.immediate), (mandatory, immediate));
                    }
                    // amq-protocol wants UTF-8 short strings; RabbitMQ (and Warren) take bytes.
                    _ => assert!(
                        std::str::from_utf8(&exchange).is_err()
                            || std::str::from_utf8(&routing_key).is_err(),
                        "fast path took a publish amq-protocol refuses"
                    ),
                },
                Method::Ack {
                    delivery_tag,
                    multiple,
                } => match theirs {
                    Some(AMQPFrame::Method(ch, AMQPClass::Basic(basic::AMQPMethod::Ack(a)))) => {
                        assert_eq!(ch, channel);
                        assert_eq!((a.delivery_tag, a.multiple), (delivery_tag, multiple));
                    }
                    other => panic!("fast path took an ack amq-protocol reads as {other:?}"),
                },
                Method::Other(m) => {
                    let ours = AMQPFrame::Method(channel, *m);
                    // Our parse and theirs agree (compared encoded: NaN != NaN in tables)...
                    let enc = gen_frame_bytes(&ours);
                    if let Some(t) = theirs {
                        assert_eq!(enc, gen_frame_bytes(&t), "decode differs from amq-protocol");
                    }
                    // ... and what we parsed re-encodes to something that parses the same.
                    if let Some(enc) = enc {
                        let (rest, again) = parse_frame(&enc[..]).expect("re-encoded frame parses");
                        assert!(rest.is_empty());
                        assert_eq!(gen_frame_bytes(&again).as_ref(), Some(&enc));
                    }
                }
            }
        }
        Frame::Header {
            channel,
            class_id,
            body_size,
            properties,
        } => {
            assert_eq!(channel, u16::from_be_bytes([raw[1], raw[2]]));
            assert_eq!(class_id, u16::from_be_bytes([raw[7], raw[8]]));
            assert_eq!(body_size.to_be_bytes(), raw[11..19]);
            assert_eq!(&properties[..], &raw[19..raw.len() - 1]);
            content_header(&properties);
        }
        Frame::Body { channel, payload } => {
            assert_eq!(channel, u16::from_be_bytes([raw[1], raw[2]]));
            assert_eq!(&payload[..], &raw[7..raw.len() - 1]);
        }
        Frame::Heartbeat => assert_eq!(&raw[..3], &[8, 0, 0]),
    }
}

// ---- content header -----------------------------------------------------------------------

/// A content header's property list (flags first), as a publisher sends it.
pub fn content_header(data: &[u8]) {
    let raw = Bytes::copy_from_slice(data);
    let nesting_ok = nesting::check_properties(data).is_ok();
    let ours = Properties::parse(raw.clone());
    // amq-protocol recurses into nested tables: only past the broker's own depth check.
    let theirs = nesting_ok
        .then(|| parse_properties(data).ok())
        .flatten()
        .and_then(|(rest, p)| rest.is_empty().then_some(p));
    let flags = data
        .get(..2)
        .map_or(0, |f| u16::from_be_bytes([f[0], f[1]]));
    match (&ours, &theirs) {
        (Ok(p), Some(t)) => {
            assert_eq!(p.delivery_mode, t.delivery_mode().as_ref().copied());
            assert_eq!(p.priority, t.priority().as_ref().copied());
            let s = |v: &Option<amq_protocol::types::ShortString>| {
                v.as_ref().map(|s| s.as_str().as_bytes().to_vec())
            };
            assert_eq!(p.expiration().map(<[u8]>::to_vec), s(t.expiration()));
            assert_eq!(p.reply_to().map(<[u8]>::to_vec), s(t.reply_to()));
            assert_eq!(p.user_id().map(<[u8]>::to_vec), s(t.user_id()));
            let h = p.headers_raw().map(|h| {
                let (rest, table) = parse_field_table(h).expect("headers parsed as a whole");
                assert!(rest.is_empty());
                gen_table_bytes(&table)
            });
            assert_eq!(h, t.headers().as_ref().map(gen_table_bytes));
        }
        (Err(e), Some(_)) => {
            // Warren refuses continuation flags (basic has 14 properties); anything else
            // amq-protocol reads as a whole, so must we.
            assert!(flags & 1 != 0, "refused ({e:?}) what amq-protocol parses");
        }
        _ => {}
    }
    let Ok(p) = ours else {
        return;
    };
    let _ = p.ttl_ms();
    if let Some(decoded) = p.decode() {
        // What the broker decodes it re-encodes (dead-lettering, direct reply-to, BCC).
        let again = Properties::encode(&decoded).expect("decoded properties re-encode");
        let d2 = again.decode().expect("re-encoded properties decode");
        assert_eq!(gen_props_bytes(&decoded), gen_props_bytes(&d2));
    }
    if !nesting_ok {
        return; // a connection refuses the frame before anything reads the headers
    }
    // The lookups the broker makes on a message's headers.
    // An account of this thread's own (the shared unlimited one also counts other tests'
    // messages), made once per thread.
    thread_local! {
        static MEMORY: &'static crate::broker::memory::MemoryMonitor =
            crate::broker::memory::MemoryMonitor::leak(u64::MAX);
    }
    let memory = MEMORY.with(|m| *m);
    let msg = Message::new(
        Bytes::from_static(b"ex"),
        Bytes::from_static(b"rk"),
        p.clone(),
        Bytes::from_static(b"body"),
        memory,
    );
    let _ = crate::broker::vhost::cc_keys(&msg.properties);
    let _ = crate::broker::exchange::delayed::delay_of(&msg);
    let _ = crate::broker::queue::dead_letter::would_cycle(&msg, "q");
    let _ = crate::broker::queue::lifecycle::header(&msg, "x-deduplication-header");
    drop(msg);
    assert_eq!(memory.used(), 0, "message memory not returned");
    // The content encoder carries the properties through unchanged, whatever the body split.
    let body: Vec<u8> = (0..(data.len() * 37 % 9000)).map(|i| i as u8).collect();
    let mut out = BytesMut::new();
    codec::encode_content(&mut out, 5, &p.raw, &body, 4096);
    let mut got = Vec::new();
    let mut header = None;
    while let Some(f) = codec::decode(&mut out, 131_072).expect("our own frames decode") {
        match f {
            Frame::Header { properties, .. } => header = Some(properties),
            Frame::Body { payload, .. } => got.extend_from_slice(&payload),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(out.is_empty());
    assert_eq!(header.as_deref(), Some(&p.raw[..]));
    assert_eq!(got, body);
}

// ---- field tables -------------------------------------------------------------------------

/// An encoded field table (length first), as found in a method's arguments or the headers.
pub fn field_table(data: &[u8]) {
    if !nesting::depth_within(data, nesting::MAX_DEPTH) {
        return; // refused with 502 before amq-protocol sees it
    }
    let Ok((_, t)) = parse_field_table(data) else {
        return;
    };
    // Re-encoding what was parsed gives bytes that parse to the same table.
    let enc = gen_table_bytes(&t).expect("a parsed table re-encodes");
    let (rest, t2) = parse_field_table(&enc[..]).expect("re-encoded table parses");
    assert!(rest.is_empty());
    assert_eq!(gen_table_bytes(&t2).as_ref(), Some(&enc));
    table_checks(&t);
}

pub(super) fn table_checks(t: &FieldTable) {
    use crate::broker::{args, json};
    let _ = args::validate_queue_args("q", "/", t);
    let _ = args::refuse_server_named(t);
    let _ = args::validate_new_queue("q", "/", true, false, false, t);
    for (k, v) in t.inner() {
        let _ = args::type_name(v);
        let _ = args::as_int(v);
        let _ = args::as_str(v);
        let _ = args::str_arg(t, k.as_str());
    }
    // JSON, as the management API shows it and takes it back.
    let j = json::table_to_json(t);
    let text = serde_json::to_string(&j).expect("JSON serializes");
    let back: serde_json::Value = serde_json::from_str(&text).expect("own JSON parses");
    if let Ok(t2) = json::json_to_table(Some(&back)) {
        // JSON -> table -> JSON is stable after the first trip.
        let j2 = json::table_to_json(&t2);
        let t3 = json::json_to_table(Some(&j2)).expect("converted JSON converts again");
        assert_eq!(json::table_to_json(&t3), j2);
    }
    // Headers exchange: a binding compiled from the table, matched against it.
    use crate::broker::exchange::headers::HeadersMatch;
    if let Ok(m) = HeadersMatch::compile(t) {
        let _ = m.matches(None);
        let _ = m.matches(Some(t));
    }
    let mut all = t.clone();
    all.insert("x-match".into(), AMQPValue::LongString("all".into()));
    let m = HeadersMatch::compile(&all).expect("x-match all compiles");
    if !has_nan(t) {
        assert!(
            m.matches(Some(t)),
            "an all-binding does not match its own table"
        );
    }
}

pub(super) fn has_nan(t: &FieldTable) -> bool {
    fn value(v: &AMQPValue) -> bool {
        match v {
            AMQPValue::Float(f) => f.is_nan(),
            AMQPValue::Double(d) => d.is_nan(),
            AMQPValue::FieldTable(t) => has_nan(t),
            AMQPValue::FieldArray(a) => a.as_slice().iter().any(value),
            _ => false,
        }
    }
    t.inner().values().any(value)
}

// ---- connection ---------------------------------------------------------------------------
