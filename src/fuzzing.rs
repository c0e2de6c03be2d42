//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz), here so that a stable `cargo test`
//! runs them too (tests/it/fuzz_corpus.rs: the checked-in seed corpus and pseudo-random inputs).
//! Not part of the broker: each function takes arbitrary bytes, drives one piece of the wire
//! handling with them and panics when an invariant breaks.
//!
//! - `frame`: `codec::decode` (the hand-coded basic.publish / basic.ack paths and amq-protocol's
//!   parser), checked against amq-protocol's own frame parser and re-encoding.
//! - `content_header`: `Properties::parse` against amq-protocol's property parser, the header
//!   lookups the broker makes on a message (CC, x-delay, x-death), and the content encoder.
//! - `field_table`: amq-protocol's table parser behind the nesting bound, then Warren's table
//!   handling: queue argument checks, JSON conversions, headers-exchange matching.
//! - `connection`: a structure-aware client (methods and fields picked from the input, encoded
//!   with amq-protocol, plus raw bytes) run through a real connection over an in-memory pipe
//!   against an in-memory broker; the run must end in bounded time, every frame the broker sends
//!   must be well formed, and afterwards the broker must be consistent (no consumer or unacked
//!   message left behind, no connection registered, message memory back to zero once the vhost
//!   is emptied) and still serve a fresh, well-behaved connection.

use crate::amqp::codec::{self, Frame, Method};
use crate::amqp::nesting;
use crate::broker::message::{Message, Properties};
use crate::broker::Broker;
use crate::config::Config;
use crate::state::{Listeners, ServerState};
use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame};
use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, tx, AMQPClass};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString};
use arbitrary::Unstructured;
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;

fn gen_table_bytes(t: &FieldTable) -> Option<Vec<u8>> {
    cookie_factory::gen_simple(gen_field_table(t), Vec::new()).ok()
}

fn gen_frame_bytes(f: &AMQPFrame) -> Option<Vec<u8>> {
    cookie_factory::gen_simple(gen_frame(f), Vec::new()).ok()
}

fn gen_props_bytes(p: &AMQPProperties) -> Option<Vec<u8>> {
    cookie_factory::gen_simple(gen_properties(p), Vec::new()).ok()
}

// ---- frame --------------------------------------------------------------------------------

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
fn frame_bytes(buf: &[u8], frame_max: u32) -> Option<Vec<u8>> {
    let size = u32::from_be_bytes(buf.get(3..7)?.try_into().ok()?);
    if size > frame_max {
        return None;
    }
    Some(buf.get(..size as usize + 8)?.to_vec())
}

fn check_frame(f: Frame, raw: &[u8]) {
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
    let memory = Arc::new(crate::broker::memory::MemoryMonitor::new(u64::MAX));
    let msg = Message::new(
        Bytes::from_static(b"ex"),
        Bytes::from_static(b"rk"),
        p.clone(),
        Bytes::from_static(b"body"),
        memory.clone(),
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

fn table_checks(t: &FieldTable) {
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

fn has_nan(t: &FieldTable) -> bool {
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

type U<'a> = Unstructured<'a>;

const NAMES: &[&str] = &[
    "",
    "q",
    "q2",
    "dlq",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "amq.match",
    "amq.rabbitmq.reply-to",
    "amq.gen-x",
    "e",
    "e2",
    "dlx",
];
const KINDS: &[&str] = &[
    "direct",
    "fanout",
    "topic",
    "headers",
    "x-delayed-message",
    "x-message-deduplication",
    "x-random",
    "bogus",
];
const KEYS: &[&str] = &["", "q", "q2", "a.b", "#", "*.b", "a.#", "dlq", "e"];
const ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-queue-type",
    "x-single-active-consumer",
    "x-queue-mode",
    "x-delivery-limit",
    "x-consumer-timeout",
    "x-priority",
    "x-match",
    "x-delayed-type",
    "alternate-exchange",
    "x-delay",
    "x-deduplication-header",
    "x-message-deduplication",
    "x-cache-size",
    "x-cache-ttl",
    "x-stream-offset",
    "x-death",
    "CC",
    "BCC",
    "a",
    "b",
];
const WORDS: &[&str] = &[
    "all",
    "any",
    "all-with-x",
    "any-with-x",
    "drop-head",
    "reject-publish",
    "reject-publish-dlx",
    "quorum",
    "classic",
    "stream",
    "lazy",
    "direct",
    "topic",
    "fanout",
    "headers",
    "dlx",
    "dlq",
    "q",
    "e",
    "a.b",
    "",
];

fn name(u: &mut U<'_>, set: &[&str]) -> arbitrary::Result<String> {
    if u.ratio(1, 8)? {
        // anything UTF-8 up to a short string's length
        let s: String = u.arbitrary()?;
        let mut cut = s.len().min(255);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        return Ok(s[..cut].to_owned());
    }
    Ok((*u.choose(set)?).to_owned())
}

fn value(u: &mut U, depth: u8) -> arbitrary::Result<AMQPValue> {
    let small = |u: &mut U| -> arbitrary::Result<i64> {
        Ok(*u.choose(&[0i64, 1, 2, 5, 10, 100, 1000, -1, 255, 256, 65536, i64::MAX])?)
    };
    Ok(match u.int_in_range(0..=17)? {
        0 => AMQPValue::Boolean(u.arbitrary()?),
        1 => AMQPValue::ShortShortInt(small(u)? as i8),
        2 => AMQPValue::ShortShortUInt(small(u)? as u8),
        3 => AMQPValue::ShortInt(small(u)? as i16),
        4 => AMQPValue::ShortUInt(small(u)? as u16),
        5 => AMQPValue::LongInt(small(u)? as i32),
        6 => AMQPValue::LongUInt(u.arbitrary()?),
        7 => AMQPValue::LongLongInt(if u.arbitrary()? {
            small(u)?
        } else {
            u.arbitrary()?
        }),
        8 => AMQPValue::Float(u.arbitrary()?),
        9 => AMQPValue::Double(u.arbitrary()?),
        10 => AMQPValue::DecimalValue(DecimalValue {
            scale: u.arbitrary()?,
            value: u.arbitrary()?,
        }),
        11 => AMQPValue::ShortString(name(u, WORDS)?.into()),
        12 | 13 => AMQPValue::LongString(LongString::from(name(u, WORDS)?.into_bytes())),
        14 if depth < 3 => {
            let n = u.int_in_range(0..=3)?;
            let mut a = FieldArray::default();
            for _ in 0..n {
                a.push(value(u, depth + 1)?);
            }
            AMQPValue::FieldArray(a)
        }
        15 if depth < 3 => AMQPValue::FieldTable(table(u, depth + 1)?),
        16 => AMQPValue::Timestamp(u.arbitrary()?),
        17 => AMQPValue::ByteArray(u.arbitrary::<Vec<u8>>()?.into()),
        _ => AMQPValue::Void,
    })
}

fn table(u: &mut U, depth: u8) -> arbitrary::Result<FieldTable> {
    let mut t = FieldTable::default();
    for _ in 0..u.int_in_range(0..=4)? {
        let k = name(u, ARGS)?;
        t.insert(k.as_str().into(), value(u, depth)?);
    }
    Ok(t)
}

fn properties(u: &mut U) -> arbitrary::Result<AMQPProperties> {
    let mut p = AMQPProperties::default();
    if u.arbitrary()? {
        p = p.with_delivery_mode(*u.choose(&[1, 2, 0, 3])?);
    }
    if u.ratio(1, 4)? {
        p = p.with_priority(u.arbitrary()?);
    }
    if u.ratio(1, 4)? {
        p = p.with_expiration(
            u.choose(&["0", "1", "100", "60000", "-1", "x", ""])?
                .to_string()
                .into(),
        );
    }
    if u.ratio(1, 3)? {
        p = p.with_headers(table(u, 0)?);
    }
    if u.ratio(1, 6)? {
        p = p.with_reply_to(name(u, NAMES)?.into());
    }
    if u.ratio(1, 8)? {
        p = p.with_user_id(u.choose(&["guest", "other", ""])?.to_string().into());
    }
    if u.ratio(1, 8)? {
        p = p.with_content_type("text/plain".into());
    }
    if u.ratio(1, 8)? {
        p = p.with_correlation_id("c1".into());
    }
    Ok(p)
}

fn method(u: &mut U) -> arbitrary::Result<AMQPClass> {
    use AMQPClass as C;
    let n = |u: &mut U| name(u, NAMES);
    let k = |u: &mut U| name(u, KEYS);
    let tag = |u: &mut U| -> arbitrary::Result<u64> {
        Ok(if u.ratio(1, 16)? {
            u.arbitrary()?
        } else {
            u.int_in_range(0..=8)?
        })
    };
    let b = |u: &mut U| -> arbitrary::Result<bool> { u.arbitrary() };
    Ok(match u.int_in_range(0..=35)? {
        0 | 1 => C::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: n(u)?.into(),
            routing_key: k(u)?.into(),
            mandatory: b(u)?,
            immediate: u.ratio(1, 8)?,
        })),
        2 => C::Channel(channel::AMQPMethod::Open(channel::Open {})),
        3 => C::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
        4 => C::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        5 => C::Channel(channel::AMQPMethod::Flow(channel::Flow { active: b(u)? })),
        6 => C::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: n(u)?.into(),
            kind: name(u, KINDS)?.into(),
            passive: u.ratio(1, 6)?,
            durable: b(u)?,
            auto_delete: b(u)?,
            internal: u.ratio(1, 6)?,
            nowait: b(u)?,
            arguments: table(u, 0)?,
        })),
        7 => C::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: n(u)?.into(),
            if_unused: b(u)?,
            nowait: b(u)?,
        })),
        8 => C::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
            destination: n(u)?.into(),
            source: n(u)?.into(),
            routing_key: k(u)?.into(),
            nowait: b(u)?,
            arguments: table(u, 0)?,
        })),
        9 => C::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
            destination: n(u)?.into(),
            source: n(u)?.into(),
            routing_key: k(u)?.into(),
            nowait: b(u)?,
            arguments: table(u, 0)?,
        })),
        10 | 11 => C::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: n(u)?.into(),
            passive: u.ratio(1, 6)?,
            durable: b(u)?,
            exclusive: b(u)?,
            auto_delete: b(u)?,
            nowait: b(u)?,
            arguments: table(u, 0)?,
        })),
        12 | 13 => C::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: n(u)?.into(),
            exchange: n(u)?.into(),
            routing_key: k(u)?.into(),
            nowait: b(u)?,
            arguments: table(u, 0)?,
        })),
        14 => C::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: n(u)?.into(),
            nowait: b(u)?,
        })),
        15 => C::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: n(u)?.into(),
            if_unused: b(u)?,
            if_empty: b(u)?,
            nowait: b(u)?,
        })),
        16 => C::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
            queue: n(u)?.into(),
            exchange: n(u)?.into(),
            routing_key: k(u)?.into(),
            arguments: table(u, 0)?,
        })),
        17 => C::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: *u.choose(&[0, 1, 2, 10, 65535])?,
            global: b(u)?,
        })),
        18 | 19 => C::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: n(u)?.into(),
            consumer_tag: name(u, &["", "c1", "c2"])?.into(),
            no_local: u.ratio(1, 8)?,
            no_ack: b(u)?,
            exclusive: u.ratio(1, 4)?,
            nowait: b(u)?,
            arguments: table(u, 0)?,
        })),
        20 => C::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: name(u, &["", "c1", "c2"])?.into(),
            nowait: b(u)?,
        })),
        21 => C::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: n(u)?.into(),
            no_ack: b(u)?,
        })),
        22 | 23 => C::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag(u)?,
            multiple: b(u)?,
        })),
        24 => C::Basic(basic::AMQPMethod::Reject(basic::Reject {
            delivery_tag: tag(u)?,
            requeue: b(u)?,
        })),
        25 => C::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: tag(u)?,
            multiple: b(u)?,
            requeue: b(u)?,
        })),
        26 => C::Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
            requeue: b(u)?,
        })),
        27 => C::Basic(basic::AMQPMethod::Recover(basic::Recover {
            requeue: b(u)?,
        })),
        28 => C::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: b(u)?,
        })),
        29 => C::Tx(tx::AMQPMethod::Select(tx::Select {})),
        30 => C::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
        31 => C::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
        32 => C::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
        33 => C::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        34 => C::Connection(connection::AMQPMethod::UpdateSecret(
            connection::UpdateSecret {
                new_secret: "guest".into(),
                reason: "r".into(),
            },
        )),
        _ => C::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
            active: b(u)?,
        })),
    })
}

fn put_method(out: &mut Vec<u8>, channel: u16, m: AMQPClass) {
    if let Some(v) = gen_frame_bytes(&AMQPFrame::Method(channel, m)) {
        out.extend_from_slice(&v);
    }
}

fn put_frame(out: &mut Vec<u8>, kind: u8, channel: u16, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(codec::FRAME_END);
}

/// A content header and body frames: valid properties most of the time, raw bytes sometimes;
/// a declared size that matches the body most of the time.
fn put_content(u: &mut U, out: &mut Vec<u8>, channel: u16) -> arbitrary::Result<()> {
    let props = if u.ratio(1, 8)? {
        u.arbitrary::<Vec<u8>>()?
    } else {
        gen_props_bytes(&properties(u)?).unwrap_or_default()
    };
    let body_len = *u.choose(&[0usize, 1, 5, 100, 4000, 5000, 20000])?;
    let declared = if u.ratio(1, 8)? {
        u.arbitrary::<u64>()?
    } else {
        body_len as u64
    };
    let mut header = Vec::with_capacity(14 + props.len());
    header.extend_from_slice(&(if u.ratio(1, 16)? { 10u16 } else { 60u16 }).to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&declared.to_be_bytes());
    header.extend_from_slice(&props);
    put_frame(out, codec::FRAME_HEADER, channel, &header);
    let chunk = *u.choose(&[1usize, 1000, 4088, 8000])?;
    let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
    for part in body.chunks(chunk) {
        put_frame(out, codec::FRAME_BODY, channel, part);
    }
    Ok(())
}

/// What the fuzzed client does next.
enum Step {
    /// Send these bytes (one or more frames, or garbage).
    Write(Vec<u8>),
    /// Let the broker's clock move on by this many milliseconds, and sweep expired messages.
    Advance(u64),
}

/// The client's side: the handshake (mostly valid), then frames picked from the input.
fn script(u: &mut U) -> arbitrary::Result<Vec<Step>> {
    let mut writes = Vec::new();
    let mut w = codec::PROTOCOL_HEADER.to_vec();
    let (mechanism, response) = match u.int_in_range(0..=31)? {
        0 => ("PLAIN", b"\0guest\0wrong".to_vec()),
        1 => ("AMQPLAIN", {
            let mut t = FieldTable::default();
            t.insert("LOGIN".into(), AMQPValue::LongString("guest".into()));
            t.insert("PASSWORD".into(), AMQPValue::LongString("guest".into()));
            let v = gen_table_bytes(&t).unwrap_or_default();
            v[4..].to_vec()
        }),
        2 => ("EXTERNAL", Vec::new()),
        _ => ("PLAIN", b"\0guest\0guest".to_vec()),
    };
    let mut caps = FieldTable::default();
    for c in [
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        caps.insert(c.into(), AMQPValue::Boolean(u.arbitrary()?));
    }
    let mut client_properties = FieldTable::default();
    client_properties.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    put_method(
        &mut w,
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties,
            mechanism: mechanism.into(),
            response: LongString::from(response),
            locale: "en_US".into(),
        })),
    );
    // Mostly a handshake that succeeds: a connection error ends the run.
    let frame_max = if u.ratio(1, 16)? {
        *u.choose(&[100u32, 200_000])?
    } else {
        *u.choose(&[4096u32, 0, 131_072, 8192])?
    };
    put_method(
        &mut w,
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: *u.choose(&[0u16, 2, 16])?,
            frame_max,
            heartbeat: *u.choose(&[0u16, 0, 0, 60, 1])?,
        })),
    );
    put_method(
        &mut w,
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: (if u.ratio(1, 16)? { "nope" } else { "/" }).into(),
        })),
    );
    // Channel 1, open from the start (most steps use it).
    put_method(
        &mut w,
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    writes.push(Step::Write(w));
    let mut channels = vec![1u16];
    while !u.is_empty() && writes.len() < 200 {
        let mut w = Vec::new();
        let ch = if u.ratio(1, 10)? {
            *u.choose(&[0u16, 2, 3, 17, 65535])?
        } else {
            *u.choose(&channels)?
        };
        match u.int_in_range(0..=21)? {
            0 => put_frame(&mut w, codec::FRAME_HEARTBEAT, 0, &[]),
            20 | 21 => {
                // The script does not read the broker's answers: after a channel error (closed
                // by the broker), close-ok and open again so that later steps are not ignored.
                put_method(
                    &mut w,
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                put_method(
                    &mut w,
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
                );
            }
            1 => w = u.arbitrary::<Vec<u8>>()?,
            2 => {
                // a frame with a known class and method and arbitrary arguments
                let mut p = u
                    .choose(&[10u16, 20, 40, 50, 60, 85, 90])?
                    .to_be_bytes()
                    .to_vec();
                p.extend_from_slice(&(u.int_in_range(1..=12)? * 10u16).to_be_bytes());
                p.extend_from_slice(&u.arbitrary::<Vec<u8>>()?);
                put_frame(&mut w, codec::FRAME_METHOD, ch, &p);
            }
            3 => {
                // a channel opened on a new id
                let id = u.int_in_range(1..=4)?;
                if !channels.contains(&id) {
                    channels.push(id);
                }
                put_method(
                    &mut w,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
                );
            }
            4..=6 => {
                put_method(
                    &mut w,
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                        exchange: name(u, NAMES)?.into(),
                        routing_key: name(u, KEYS)?.into(),
                        mandatory: u.arbitrary()?,
                        immediate: false,
                    })),
                );
                put_content(u, &mut w, ch)?;
            }
            7 => put_content(u, &mut w, ch)?,
            8 => {
                // let the broker act on time: TTLs, expiries, delays
                writes.push(Step::Advance(*u.choose(&[10u64, 1000, 60_000])?));
                continue;
            }
            _ => {
                let m = method(u)?;
                // connection methods belong on channel 0 (elsewhere: a connection error)
                let on = if matches!(m, AMQPClass::Connection(_)) && !u.ratio(1, 8)? {
                    0
                } else {
                    ch
                };
                put_method(&mut w, on, m);
            }
        }
        writes.push(Step::Write(w));
    }
    Ok(writes)
}

/// A broker without a store, as a connection sees it.
#[doc(hidden)]
pub fn in_memory_state(config: Config) -> Arc<ServerState> {
    let users = Arc::new(
        crate::auth::Access::load(None, &config.default_user, &config.default_pass, &[])
            .expect("no store, no error"),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    Arc::new(ServerState {
        broker: Arc::new(Broker::new(u64::MAX / 2, None)),
        config: Arc::new(config),
        connections: Default::default(),
        users,
        // no growing delay before refusing a bad login: every input starts afresh anyway
        logins: Arc::new(crate::auth::throttle::Logins::new(
            Duration::ZERO,
            Duration::ZERO,
        )),
        rates: Default::default(),
        store: None,
        listeners: Listeners {
            amqp: addr,
            http: addr,
            prometheus: None,
            amqps: None,
            https: None,
        },
    })
}

/// How long (real time) one fuzzed connection may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(20);

/// A connection driven by frames picked from the input: see the module's doc.
pub fn connection(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(writes) = script(&mut u) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let config = Config {
            handshake_timeout_ms: 2_000,
            max_message_size: 16 << 10,
            ..Config::default()
        };
        let state = in_memory_state(config);
        let received = tokio::time::timeout(HANG, run_client(&state, writes))
            .await
            .expect("the connection ended in bounded time");
        check_output(&received);
        check_consistent(&state);
        tokio::time::timeout(HANG, probe(&state))
            .await
            .expect("the probe connection ended in bounded time");
        // With every queue and exchange gone, no message is accounted any more.
        for v in state.broker.vhost_list() {
            v.delete_everything();
        }
        assert_eq!(state.broker.memory.used(), 0, "message memory leaked");
    });
}

async fn run_client(state: &Arc<ServerState>, writes: Vec<Step>) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, server) = tokio::io::duplex(64 << 10);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
    let srv = tokio::spawn(crate::amqp::connection::serve(
        server,
        peer,
        state.listeners.amqp,
        state.clone(),
        shutdown_rx,
    ));
    let (mut rd, mut wr) = tokio::io::split(client);
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    });
    let clock = state.broker.clock.clone();
    let broker = state.broker.clone();
    for step in writes {
        match step {
            Step::Advance(ms) => {
                // let the broker catch up with what was sent, then move its clock
                tokio::time::sleep(Duration::from_millis(1)).await;
                clock.advance(Duration::from_millis(ms));
                broker.sweep_expired();
            }
            Step::Write(w) => {
                if wr.write_all(&w).await.is_err() {
                    break; // the broker closed the connection
                }
            }
        }
    }
    let _ = wr.shutdown().await;
    drop(wr);
    srv.await.expect("the connection task did not panic");
    drop(shutdown_tx);
    reader.await.expect("reader")
}

/// Every frame the broker sent is well formed, and its methods parse.
fn check_output(out: &[u8]) {
    let mut pos = 0;
    if out.starts_with(b"AMQP") {
        return; // the protocol header was refused (never for our header)
    }
    while pos < out.len() {
        let rest = &out[pos..];
        assert!(rest.len() >= 8, "truncated frame at the end of the output");
        let size = u32::from_be_bytes(rest[3..7].try_into().expect("4 bytes")) as usize;
        assert!(
            rest.len() >= size + 8,
            "truncated frame at the end of the output"
        );
        assert_eq!(rest[size + 7], codec::FRAME_END, "bad frame end in output");
        assert!(size <= 131_072, "frame over frame_max in output");
        if rest[0] == codec::FRAME_METHOD {
            let (left, _) = parse_frame(&rest[..size + 8])
                .unwrap_or_else(|e| panic!("broker sent an unparseable method: {e:?}"));
            assert!(left.is_empty());
        } else {
            assert!(
                [
                    codec::FRAME_HEADER,
                    codec::FRAME_BODY,
                    codec::FRAME_HEARTBEAT
                ]
                .contains(&rest[0]),
                "bad frame type in output"
            );
        }
        pos += size + 8;
    }
}

/// Once its only connection is gone, the broker holds nothing of it.
fn check_consistent(state: &Arc<ServerState>) {
    assert!(
        state.connections.list().is_empty(),
        "a closed connection is still registered"
    );
    for v in state.broker.vhost_list() {
        for q in v.queue_list() {
            let c = q.counts();
            assert_eq!(c.consumers, 0, "queue {} kept a consumer", q.name);
            assert_eq!(c.unacked, 0, "queue {} kept unacked messages", q.name);
        }
    }
}

/// A well-behaved client: declare a queue, publish to it, get the message back, close.
async fn probe(state: &Arc<ServerState>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, server) = tokio::io::duplex(64 << 10);
    let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40001));
    let srv = tokio::spawn(crate::amqp::connection::serve(
        server,
        peer,
        state.listeners.amqp,
        state.clone(),
        shutdown_rx,
    ));
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut w = codec::PROTOCOL_HEADER.to_vec();
    use connection::AMQPMethod as Conn;
    put_method(
        &mut w,
        0,
        AMQPClass::Connection(Conn::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from(&b"\0guest\0guest"[..]),
            locale: "en_US".into(),
        })),
    );
    put_method(
        &mut w,
        0,
        AMQPClass::Connection(Conn::TuneOk(connection::TuneOk {
            channel_max: 0,
            frame_max: 131_072,
            heartbeat: 0,
        })),
    );
    put_method(
        &mut w,
        0,
        AMQPClass::Connection(Conn::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    );
    put_method(
        &mut w,
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    let q = "fuzz-probe-\u{1F6A7}";
    put_method(
        &mut w,
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: q.into(),
            exclusive: true,
            auto_delete: false,
            durable: false,
            passive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    put_method(
        &mut w,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: q.into(),
            mandatory: true,
            immediate: false,
        })),
    );
    let mut header = BytesMut::new();
    header.put_u16(60);
    header.put_u16(0);
    header.put_u64(4);
    header.put_u16(0);
    put_frame(&mut w, codec::FRAME_HEADER, 1, &header);
    put_frame(&mut w, codec::FRAME_BODY, 1, b"ping");
    put_method(
        &mut w,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: q.into(),
            no_ack: true,
        })),
    );
    put_method(
        &mut w,
        0,
        AMQPClass::Connection(Conn::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    wr.write_all(&w).await.expect("probe writes");
    // Read until close-ok, then close our side as a client does.
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    'read: loop {
        let mut chunk = [0u8; 4096];
        let n = rd.read(&mut chunk).await.expect("probe reads");
        assert!(n > 0, "probe connection closed early; got {frames:?}");
        buf.extend_from_slice(&chunk[..n]);
        while let Ok((rest, f)) = parse_frame(&buf[..]) {
            let used = buf.len() - rest.len();
            buf.drain(..used);
            let done = matches!(
                f,
                AMQPFrame::Method(0, AMQPClass::Connection(Conn::CloseOk(_)))
            );
            frames.push(f);
            if done {
                break 'read;
            }
        }
    }
    drop(wr);
    drop(rd);
    srv.await.expect("probe connection task");
    let got_body = frames
        .iter()
        .any(|f| matches!(f, AMQPFrame::Body(1, b) if b == b"ping"));
    let got_ok = frames.iter().any(|f| {
        matches!(
            f,
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::GetOk(_)))
        )
    });
    assert!(
        got_ok && got_body,
        "probe did not get its message: {frames:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods(out: &[u8]) -> Vec<(u16, u16)> {
        let mut v = vec![];
        let mut rest = out;
        while let Ok((r, f)) = parse_frame(rest) {
            if let AMQPFrame::Method(_, m) = f {
                v.push((m.get_amqp_class_id(), m.get_amqp_method_id()));
            }
            rest = r;
        }
        v
    }

    /// The connection harness reaches the broker's state: a scripted session (declare, consume,
    /// publish) gets its consumer registered and a delivery, and after the run the consistency
    /// checks pass.
    #[test]
    fn scripted_session_consumes() {
        let mut w = Vec::new();
        let mut u = Unstructured::new(&[0xff; 64]);
        let Step::Write(hs) = script(&mut u).unwrap().remove(0) else {
            panic!("handshake first")
        };
        w.extend_from_slice(&hs);
        put_method(
            &mut w,
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
        put_method(
            &mut w,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "c1".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
        put_method(
            &mut w,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "q".into(),
                mandatory: false,
                immediate: false,
            })),
        );
        put_frame(
            &mut w,
            codec::FRAME_HEADER,
            1,
            &[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        );
        put_frame(&mut w, codec::FRAME_BODY, 1, b"x");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let state = in_memory_state(Config::default());
            let out = run_client(&state, vec![Step::Write(w)]).await;
            let m = methods(&out);
            assert!(m.contains(&(60, 21)), "no consume-ok in {m:?}");
            assert!(m.contains(&(60, 60)), "no deliver in {m:?}");
            check_output(&out);
            check_consistent(&state);
        });
    }
}
