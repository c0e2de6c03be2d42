//! The connection target's client: methods, fields and steps picked from the input.

use super::*;

pub(super) type U<'a> = Unstructured<'a>;

pub(super) const NAMES: &[&str] = &[
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
pub(super) const KINDS: &[&str] = &[
    "direct",
    "fanout",
    "topic",
    "headers",
    "x-delayed-message",
    "x-message-deduplication",
    "x-random",
    "bogus",
];
pub(super) const KEYS: &[&str] = &["", "q", "q2", "a.b", "#", "*.b", "a.#", "dlq", "e"];
pub(super) const ARGS: &[&str] = &[
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
pub(super) const WORDS: &[&str] = &[
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

pub(super) fn name(u: &mut U<'_>, set: &[&str]) -> arbitrary::Result<String> {
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

pub(super) fn value(u: &mut U, depth: u8) -> arbitrary::Result<AMQPValue> {
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

pub(super) fn table(u: &mut U, depth: u8) -> arbitrary::Result<FieldTable> {
    let mut t = FieldTable::default();
    for _ in 0..u.int_in_range(0..=4)? {
        let k = name(u, ARGS)?;
        t.insert(k.as_str().into(), value(u, depth)?);
    }
    Ok(t)
}

pub(super) fn properties(u: &mut U) -> arbitrary::Result<AMQPProperties> {
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

pub(super) fn method(u: &mut U) -> arbitrary::Result<AMQPClass> {
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

pub(super) fn put_method(out: &mut Vec<u8>, channel: u16, m: AMQPClass) {
    if let Some(v) = gen_frame_bytes(&AMQPFrame::Method(channel, m)) {
        out.extend_from_slice(&v);
    }
}

pub(super) fn put_frame(out: &mut Vec<u8>, kind: u8, channel: u16, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(codec::FRAME_END);
}

/// A content header and body frames: valid properties most of the time, raw bytes sometimes;
/// a declared size that matches the body most of the time.
pub(super) fn put_content(u: &mut U, out: &mut Vec<u8>, channel: u16) -> arbitrary::Result<()> {
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
pub(super) enum Step {
    /// Send these bytes (one or more frames, or garbage).
    Write(Vec<u8>),
    /// Let the broker's clock move on by this many milliseconds, and sweep expired messages.
    Advance(u64),
}

/// The client's side: the handshake (mostly valid), then frames picked from the input.
pub(super) fn script(u: &mut U) -> arbitrary::Result<Vec<Step>> {
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
