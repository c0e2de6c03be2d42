//! Bad input on a raw socket: each kind gets the right close (or the protocol header back), is
//! never a panic, and leaves the broker serving new connections.

use crate::harness::*;
use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Raw {
    sock: TcpStream,
    buf: Vec<u8>,
}

fn bytes(f: &AMQPFrame) -> Vec<u8> {
    cookie_factory::gen_simple(gen_frame(f), Vec::new()).unwrap()
}

impl Raw {
    async fn connect(b: &Broker) -> Raw {
        Raw {
            sock: TcpStream::connect(b.handle.amqp_addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Protocol header, start-ok, tune-ok, open: an open connection with frame_max 4096.
    async fn open(b: &Broker) -> Raw {
        Self::open_with(b, 0).await
    }

    async fn open_with(b: &Broker, heartbeat: u16) -> Raw {
        let mut r = Raw::connect(b).await;
        r.sock.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        assert!(matches!(
            r.recv().await,
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Start(_))
            ))
        ));
        // The capabilities a typical client announces.
        let mut caps = FieldTable::default();
        caps.insert("connection.blocked".into(), AMQPValue::Boolean(true));
        caps.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
        let mut client_properties = FieldTable::default();
        client_properties.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        r.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties,
                mechanism: "PLAIN".into(),
                response: LongString::from("\0guest\0guest"),
                locale: "en_US".into(),
            })),
        ))
        .await;
        assert!(matches!(
            r.recv().await,
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Tune(_))
            ))
        ));
        r.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max: 4096,
                heartbeat,
            })),
        ))
        .await;
        r.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ))
        .await;
        assert!(matches!(
            r.recv().await,
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
            ))
        ));
        r
    }

    async fn open_channel(&mut self, id: u16) {
        self.send(&AMQPFrame::Method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ))
        .await;
        loop {
            match self.recv().await {
                Some(AMQPFrame::Heartbeat) => continue,
                Some(AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))) => {
                    break
                }
                other => panic!("expected channel.open-ok, got {other:?}"),
            }
        }
    }

    async fn send(&mut self, f: &AMQPFrame) {
        self.sock.write_all(&bytes(f)).await.unwrap();
    }

    async fn send_raw(&mut self, b: &[u8]) {
        let _ = self.sock.write_all(b).await;
    }

    /// Next frame, or None when the socket closes (or nothing comes within 15 s).
    async fn recv(&mut self) -> Option<AMQPFrame> {
        loop {
            if let Ok((rest, f)) = parse_frame(&self.buf[..]) {
                let used = self.buf.len() - rest.len();
                self.buf.drain(..used);
                return Some(f);
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(Duration::from_secs(15), self.sock.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Read until a connection.close arrives; answer close-ok; return its reply code.
    async fn expect_connection_close(&mut self) -> u16 {
        while let Some(f) = self.recv().await {
            if let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) = f
            {
                self.send(&AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                ))
                .await;
                return c.reply_code;
            }
        }
        panic!("socket closed without connection.close");
    }
}

/// basic.publish to the default exchange (its content frames follow separately).
fn publish_frame(channel: u16, routing_key: &str) -> AMQPFrame {
    AMQPFrame::Method(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    )
}

/// After abuse, a fresh lapin client still works.
async fn still_serving(b: &Broker) {
    let (_c, ch) = b.channel().await;
    declare(&ch, &unique("alive")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_header_gets_ours_back() {
    let b = Broker::start().await;
    for hdr in [
        &b"AMQP\x00\x00\x09\x00"[..],
        b"AMQP\x01\x01\x00\x0a",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut r = Raw::connect(&b).await;
        r.send_raw(hdr).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), r.sock.read_to_end(&mut got)).await;
        assert_eq!(got, b"AMQP\x00\x00\x09\x01");
    }
    still_serving(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped() {
    let b = Broker::start_with(|c| c.handshake_timeout_ms = 300).await;
    let mut r = Raw::connect(&b).await;
    let mut got = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(5), r.sock.read_to_end(&mut got)).await;
    assert!(res.is_ok(), "socket closed by the broker");
    // Also silent after the protocol header (no start-ok).
    let mut r = Raw::connect(&b).await;
    r.send_raw(b"AMQP\x00\x00\x09\x01").await;
    assert!(r.recv().await.is_some(), "connection.start");
    assert!(
        r.recv().await.is_none(),
        "closed after the handshake timeout"
    );
    still_serving(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_is_501_from_the_header_alone() {
    let b = Broker::start().await;
    let mut r = Raw::open(&b).await;
    // Announce a 1 GiB frame and send only its header: the broker must not wait for the payload.
    r.send_raw(&[1, 0, 1, 0x40, 0, 0, 0]).await;
    assert_eq!(r.expect_connection_close().await, 501);
    still_serving(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_end_and_unknown_type_are_501() {
    let b = Broker::start().await;
    let mut r = Raw::open(&b).await;
    r.send_raw(&[8, 0, 0, 0, 0, 0, 0, 0x00]).await;
    assert_eq!(r.expect_connection_close().await, 501);
    let mut r = Raw::open(&b).await;
    r.send_raw(&[42, 0, 0, 0, 0, 0, 0, 0xCE]).await;
    assert_eq!(r.expect_connection_close().await, 501);
    still_serving(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_is_540_and_garbage_args_502() {
    let b = Broker::start().await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send_raw(&[1, 0, 1, 0, 0, 0, 4, 0, 77, 0, 7, 0xCE]).await;
    assert_eq!(r.expect_connection_close().await, 540);
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    // queue.declare whose queue-name length runs past the payload
    r.send_raw(&[1, 0, 1, 0, 0, 0, 7, 0, 50, 0, 10, 0, 0, 200, 0xCE])
        .await;
    assert_eq!(r.expect_connection_close().await, 502);
    still_serving(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_on_unopened_channel_is_504() {
    let b = Broker::start().await;
    let mut r = Raw::open(&b).await;
    r.send(&AMQPFrame::Method(
        3,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    ))
    .await;
    assert_eq!(r.expect_connection_close().await, 504);
    still_serving(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_without_publish_is_505_and_overlong_body_501() {
    let b = Broker::start().await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    // A content header with no basic.publish before it.
    r.send_raw(&[
        2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0xCE,
    ])
    .await;
    assert_eq!(r.expect_connection_close().await, 505);

    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&publish_frame(1, "q")).await;
    // Header says 2 bytes; the body frame carries 5.
    r.send_raw(&[
        2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0xCE,
    ])
    .await;
    r.send_raw(&[3, 0, 1, 0, 0, 0, 5, 1, 2, 3, 4, 5, 0xCE])
        .await;
    assert_eq!(r.expect_connection_close().await, 501);

    // A method where a body frame was due.
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&publish_frame(1, "q")).await;
    r.send(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    ))
    .await;
    assert_eq!(r.expect_connection_close().await, 505);
    still_serving(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_is_406_on_the_channel() {
    let b = Broker::start_with(|c| c.max_message_size = 1000).await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&publish_frame(1, "q")).await;
    // Announce 1 MB against a 1000-byte limit.
    let size = 1_000_000u64.to_be_bytes();
    let mut hdr = vec![2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0];
    hdr.extend_from_slice(&size);
    hdr.extend_from_slice(&[0, 0, 0xCE]);
    r.send_raw(&hdr).await;
    match r.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Close(c)))) => {
            assert_eq!(c.reply_code, 406);
            assert!(
                c.reply_text
                    .as_str()
                    .contains("larger than configured max size"),
                "{}",
                c.reply_text
            );
        }
        other => panic!("expected channel.close, got {other:?}"),
    }
    still_serving(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_every_state_never_hurts_the_broker() {
    let b = Broker::start().await;
    // A simple deterministic generator: random bytes after the header, after open, after a channel.
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..30 {
        let mut r = if round % 3 == 0 {
            let mut r = Raw::connect(&b).await;
            r.send_raw(b"AMQP\x00\x00\x09\x01").await;
            r
        } else {
            let mut r = Raw::open(&b).await;
            if round % 3 == 2 {
                r.open_channel(1).await;
            }
            r
        };
        let n = (next() % 300) as usize + 1;
        let mut junk: Vec<u8> = (0..n).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            // Make it look like a method frame on channel 1 so the parsers go deeper.
            junk[0] = 1;
            if junk.len() > 7 {
                junk[1] = 0;
                junk[2] = 1;
                let len = (junk.len() - 8) as u32;
                junk[3..7].copy_from_slice(&len.to_be_bytes());
                let last = junk.len() - 1;
                junk[last] = 0xCE;
            }
        }
        r.send_raw(&junk).await;
        // Whatever happens, the broker ends up closing or waiting; it must not crash.
        let _ = tokio::time::timeout(Duration::from_millis(300), r.recv()).await;
    }
    still_serving(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_sent_and_silence_is_punished() {
    let b = Broker::start().await;
    let mut r = Raw::open_with(&b, 1).await;
    let start = std::time::Instant::now();
    // The broker sends heartbeats while idle...
    let f = r.recv().await;
    assert_eq!(f, Some(AMQPFrame::Heartbeat), "heartbeat frame");
    assert!(start.elapsed() < Duration::from_millis(2500));
    // ...and, as we send nothing, drops us after two intervals.
    let mut frames = 0;
    while let Some(f) = r.recv().await {
        assert_eq!(f, AMQPFrame::Heartbeat);
        frames += 1;
        assert!(frames < 10, "still open after {frames} heartbeats");
    }
    let gone = start.elapsed();
    assert!(
        gone >= Duration::from_millis(1800) && gone < Duration::from_secs(6),
        "closed after {gone:?}"
    );

    // A client that keeps sending heartbeats stays connected.
    let mut r = Raw::open_with(&b, 1).await;
    for _ in 0..6 {
        r.send(&AMQPFrame::Heartbeat).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    r.open_channel(1).await;
    still_serving(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_gets_back_pressure() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("slow-reader");
    declare(&ch, &q).await;
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = vec![1u8; 4000];
    let n = 20_000u32; // 80 MB
    let mut last = None;
    for _ in 0..n {
        last = Some(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                Default::default(),
                &body,
                Default::default(),
            )
            .await
            .unwrap(),
        );
    }
    last.unwrap().await.unwrap();
    // A raw consumer with no-ack that never reads its socket.
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.as_str().into(),
            consumer_tag: "sleepy".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let vhost = b.handle.state.broker.vhost("/").unwrap();
    let ready = vhost.queue(&q, 0).unwrap().counts().ready;
    // Socket buffers plus the 1 MiB outbox hold a few thousand messages at most; the rest wait
    // in the queue instead of piling up in the broker's write buffer.
    assert!(ready > n - 5_000, "only {ready} of {n} still queued");
    // Reading again drains everything.
    let mut got = 0u32;
    while got < n {
        match r.recv().await {
            Some(AMQPFrame::Body(..)) => got += 1,
            Some(_) => {}
            None => panic!("closed after {got} bodies"),
        }
    }
    assert_eq!(vhost.queue(&q, 0).unwrap().counts().ready, 0);
}

/// A publisher that never reads made the broker queue every basic.return of its mandatory,
/// unroutable publishes in the connection's outbox: 20,000 of 64 KiB grew RSS by 1.2 GB. Now the
/// broker stops reading from a client whose outbox is full, until it reads: the publisher gets
/// TCP back-pressure, and every return still arrives once it does read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_never_reads_its_returns_is_paused_not_buffered() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let b = Broker::start().await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    let body = vec![7u8; 64 << 10];
    let mut publish = Vec::new();
    publish.extend(bytes(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "no-such-queue".into(),
            mandatory: true,
            immediate: false,
        })),
    )));
    publish.extend(bytes(&AMQPFrame::Header(
        1,
        amq_protocol::frame::AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: Default::default(),
        },
    )));
    for part in body.chunks(4088) {
        publish.extend(bytes(&AMQPFrame::Body(1, part.to_vec())));
    }
    let n = 2_000usize; // 128 MiB of returns if all were buffered
    let (mut rd, mut wr) = r.sock.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..n {
            wr.write_all(&publish).await.unwrap();
            counter.fetch_add(publish.len(), Ordering::Relaxed);
        }
        wr
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled_at = sent.load(Ordering::Relaxed);
    assert!(!writer.is_finished(), "the broker read all {n} publishes");
    // What got through: the outbox's 4 MiB, a few parsed frames and the socket buffers.
    assert!(
        stalled_at < 48 << 20,
        "{} MiB accepted from a client that reads nothing",
        stalled_at >> 20
    );
    // Meanwhile, the broker serves others.
    still_serving(&b).await;
    // Reading again: every return arrives, and the writer finishes.
    let mut buf = r.buf;
    let mut returns = 0;
    while returns < n {
        if let Ok((rest, f)) = parse_frame(&buf[..]) {
            let used = buf.len() - rest.len();
            if let AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Return(ret))) = f {
                assert_eq!(ret.reply_code, 312);
                returns += 1;
            }
            buf.drain(..used);
            continue;
        }
        let mut chunk = vec![0u8; 256 << 10];
        let got = tokio::time::timeout(Duration::from_secs(15), rd.read(&mut chunk))
            .await
            .expect("returns keep coming")
            .unwrap();
        assert!(got > 0, "closed after {returns} returns");
        buf.extend_from_slice(&chunk[..got]);
    }
    tokio::time::timeout(Duration::from_secs(15), writer)
        .await
        .expect("the writer finishes once the client reads")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplain_login_and_unknown_mechanism() {
    use amq_protocol::types::generation::gen_field_table;
    let b = Broker::start().await;
    for (mechanism, user, pass, ok, close_capable) in [
        ("AMQPLAIN", "guest", "guest", true, true),
        ("AMQPLAIN", "guest", "nope", false, true),
        ("CRAM-MD5", "guest", "guest", false, true),
        // Without authentication_failure_close, RabbitMQ just drops the socket: so do we.
        ("AMQPLAIN", "guest", "nope", false, false),
    ] {
        let mut r = Raw::connect(&b).await;
        r.send_raw(b"AMQP\x00\x00\x09\x01").await;
        assert!(r.recv().await.is_some());
        let mut t = FieldTable::default();
        t.insert(
            "LOGIN".into(),
            AMQPValue::LongString(LongString::from(user)),
        );
        t.insert(
            "PASSWORD".into(),
            AMQPValue::LongString(LongString::from(pass)),
        );
        let encoded = cookie_factory::gen_simple(gen_field_table(&t), Vec::new()).unwrap();
        let mut caps = FieldTable::default();
        caps.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(close_capable),
        );
        let mut client_properties = FieldTable::default();
        client_properties.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        r.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties,
                mechanism: mechanism.into(),
                response: LongString::from(&encoded[4..]),
                locale: "en_US".into(),
            })),
        ))
        .await;
        match r.recv().await {
            Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))) => {
                assert!(ok, "{mechanism} {user}/{pass} accepted")
            }
            Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
                assert!(
                    !ok && close_capable,
                    "{mechanism} {user}/{pass} refused: {}",
                    c.reply_text
                );
                assert_eq!(c.reply_code, 403);
                assert_eq!((c.class_id, c.method_id), (0, 0));
            }
            None => assert!(!ok && !close_capable, "socket closed"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Read frames until channel.close arrives on `channel`; return (code, text).
async fn expect_channel_close(r: &mut Raw, channel_id: u16) -> (u16, String) {
    while let Some(f) = r.recv().await {
        if let AMQPFrame::Method(id, AMQPClass::Channel(channel::AMQPMethod::Close(c))) = f {
            assert_eq!(id, channel_id);
            return (c.reply_code, c.reply_text.to_string());
        }
    }
    panic!("socket closed without channel.close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_double_acks_close_the_channel_with_406() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("double-ack");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"x").await;
    get_one(&ch, &q).await; // make sure it landed (and consume it)...
    publish(&ch, "", &q, b"y").await;
    let ack = |tag: u64| {
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple: false,
            })),
        )
    };
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.open_channel(2).await;
    r.send(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: q.as_str().into(),
            no_ack: false,
        })),
    ))
    .await;
    loop {
        match r.recv().await {
            Some(AMQPFrame::Body(1, body)) => {
                assert_eq!(body, b"y");
                break;
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    r.send(&ack(1)).await;
    r.send(&ack(1)).await;
    let (code, text) = expect_channel_close(&mut r, 1).await;
    assert_eq!(code, 406);
    assert_eq!(text, "PRECONDITION_FAILED - unknown delivery tag 1");
    // Channel 2 is untouched: an unknown tag there closes it the same way.
    r.send(&AMQPFrame::Method(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 99,
            multiple: true,
        })),
    ))
    .await;
    let (code, text) = expect_channel_close(&mut r, 2).await;
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - unknown delivery tag 99")
    );
    // The connection still works: a new channel opens.
    r.open_channel(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_blocks_publishers_until_memory_is_freed() {
    let b = Broker::start_with(|c| c.memory_high_watermark_bytes = 200_000).await;
    let (_c, ch) = b.channel().await;
    let q = unique("alarm");
    declare(&ch, &q).await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    let body = vec![0u8; 1000];
    let mut content = vec![2u8, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0];
    content.extend_from_slice(&(body.len() as u64).to_be_bytes());
    content.extend_from_slice(&[0, 0, 0xCE, 3, 0, 1]);
    content.extend_from_slice(&(body.len() as u32).to_be_bytes());
    content.extend_from_slice(&body);
    content.push(0xCE);
    // 300 KB of messages against a 200 KB watermark.
    for _ in 0..300 {
        r.send(&publish_frame(1, &q)).await;
        r.send_raw(&content).await;
    }
    match r.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(bl)))) => {
            assert_eq!(bl.reason.as_str(), "low on memory")
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    let memory = b.handle.state.broker.memory;
    assert!(memory.alarmed());
    let held = passive(&ch, &q).await.unwrap().message_count();
    assert!(
        (200..300).contains(&held),
        "publisher stopped near the watermark: {held} queued"
    );
    // Consumers and other connections carry on; freeing memory unblocks the publisher.
    ch.queue_purge(
        q.as_str().into(),
        lapin::options::QueuePurgeOptions::default(),
    )
    .await
    .unwrap();
    match r.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)))) => {
        }
        other => panic!("expected connection.unblocked, got {other:?}"),
    }
    // The rest of its publishes are read and routed now.
    for _ in 0..100 {
        if passive(&ch, &q).await.unwrap().message_count() == 300 - held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 300 - held);
    assert!(!memory.alarmed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_alarm_blocks_publishers_while_consumers_drain_and_lifts_when_space_returns() {
    let b = Broker::start_with(|c| c.disk_free_limit_bytes = 0).await;
    let broker = b.handle.state.broker.clone();
    let q = unique("disk");
    {
        let (_c, ch) = b.channel().await;
        declare(&ch, &q).await;
        for _ in 0..5 {
            publish(&ch, "", &q, b"before").await;
        }
        passive(&ch, &q).await.unwrap();
    }
    // A free-space limit no disk meets.
    broker.disk.set_limit(u64::MAX);
    broker.check_disk();
    assert!(broker.disk.alarmed());
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    let mut content = vec![2u8, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0];
    content.extend_from_slice(&1u64.to_be_bytes());
    content.extend_from_slice(&[0, 0, 0xCE, 3, 0, 1, 0, 0, 0, 1, b'd', 0xCE]);
    r.send(&publish_frame(1, &q)).await;
    r.send_raw(&content).await;
    match r.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(bl)))) => {
            assert_eq!(bl.reason.as_str(), "low on disk")
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    for _ in 0..20 {
        r.send(&publish_frame(1, &q)).await;
        r.send_raw(&content).await;
    }
    // Consumers keep draining meanwhile; the blocked publisher's messages wait.
    let (_c, ch) = b.channel().await;
    let mut consumer = consume(&ch, &q, true).await;
    for d in take(&mut consumer, 5).await {
        assert_eq!(d.data, b"before");
    }
    none_within(&mut consumer, 400).await;
    // Space comes back (here: the limit drops): unblocked, and the held publishes go through.
    broker.disk.set_limit(0);
    match r.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)))) => {
        }
        other => panic!("expected connection.unblocked, got {other:?}"),
    }
    assert_eq!(take(&mut consumer, 21).await.len(), 21);
    assert!(!broker.disk.alarmed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_bodies_across_channels_are_bounded() {
    let b = Broker::start_with(|c| c.max_message_size = 1000).await;
    let mut r = Raw::open(&b).await;
    let header = |ch: u8| {
        let mut h = vec![2u8, 0, ch, 0, 0, 0, 14, 0, 60, 0, 0];
        h.extend_from_slice(&1000u64.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0xCE]);
        h
    };
    let part = |ch: u8| {
        let mut f = vec![3u8, 0, ch];
        f.extend_from_slice(&800u32.to_be_bytes());
        f.extend_from_slice(&[9u8; 800]);
        f.push(0xCE);
        f
    };
    // Two channels may each hold 800 of their announced 1000 bytes (1600 <= 2 x 1000)...
    for ch in 1..=3u8 {
        r.open_channel(ch as u16).await;
    }
    for ch in 1..=2u8 {
        r.send(&publish_frame(ch as u16, "q")).await;
        r.send_raw(&header(ch)).await;
        r.send_raw(&part(ch)).await;
    }
    // ...a third pushes the connection over its limit: 506 RESOURCE_ERROR.
    r.send(&publish_frame(3, "q")).await;
    r.send_raw(&header(3)).await;
    r.send_raw(&part(3)).await;
    assert_eq!(r.expect_connection_close().await, 506);

    // Completing messages releases their share: many sequential messages are fine.
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    for _ in 0..10 {
        r.send(&publish_frame(1, "q")).await;
        r.send_raw(&header(1)).await;
        r.send_raw(&part(1)).await;
        let mut rest = vec![3u8, 0, 1, 0, 0, 0, 200];
        rest.extend_from_slice(&[9u8; 200]);
        rest.push(0xCE);
        r.send_raw(&rest).await;
    }
    r.open_channel(2).await; // still open and answering
    still_serving(&b).await;
}

/// Regression: when the client closed a channel at the same moment the broker did (after a
/// channel error), the channel stayed half-closed and could never be opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_channel_closes_leave_the_channel_reusable() {
    let b = Broker::start().await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    // An unknown delivery tag: the broker will close channel 1 with 406...
    r.send(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 5,
            multiple: false,
        })),
    ))
    .await;
    // ...while the client closes it too, before reading anything.
    r.send(&AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    ))
    .await;
    let (code, _) = expect_channel_close(&mut r, 1).await;
    assert_eq!(code, 406);
    match r.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)))) => {}
        other => panic!("expected close-ok for our close, got {other:?}"),
    }
    // Our close-ok for the broker's close arrives after it already forgot the channel.
    r.send(&AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    ))
    .await;
    r.open_channel(1).await;
}

/// Regression (found with py-amqp): deleting a queue on the channel that consumes from it sent
/// basic.cancel before queue.delete-ok; RabbitMQ sends delete-ok first, and clients rely on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ok_comes_before_the_consumer_cancel() {
    let b = Broker::start().await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    let q = unique("del-order");
    r.send(&AMQPFrame::Method(
        1,
        AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(
            amq_protocol::protocol::queue::Declare {
                queue: q.as_str().into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            },
        )),
    ))
    .await;
    r.recv().await.unwrap();
    r.send(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.as_str().into(),
            consumer_tag: "c1".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ))
    .await;
    r.recv().await.unwrap();
    r.send(&AMQPFrame::Method(
        1,
        AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Delete(
            amq_protocol::protocol::queue::Delete {
                queue: q.as_str().into(),
                if_unused: false,
                if_empty: false,
                nowait: false,
            },
        )),
    ))
    .await;
    assert!(matches!(
        r.recv().await,
        Some(AMQPFrame::Method(
            1,
            AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::DeleteOk(_))
        ))
    ));
    match r.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Cancel(c)))) => {
            assert_eq!(c.consumer_tag.as_str(), "c1")
        }
        other => panic!("expected basic.cancel after delete-ok, got {other:?}"),
    }
}

/// A field table holding "x" = `depth - 1` nested arrays (built by hand: a generator would recurse).
fn nested_table(depth: usize) -> Vec<u8> {
    let mut v = b"V".to_vec();
    for _ in 1..depth {
        let mut a = vec![b'A'];
        a.extend_from_slice(&(v.len() as u32).to_be_bytes());
        a.extend_from_slice(&v);
        v = a;
    }
    let mut entry = vec![1, b'x'];
    entry.extend_from_slice(&v);
    let mut t = (entry.len() as u32).to_be_bytes().to_vec();
    t.extend_from_slice(&entry);
    t
}

fn method_frame(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![1];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

/// Regression (found by a probe beside the fuzzers): amq-protocol parses nested tables
/// recursively, and a 7.5 KB connection.start-ok nesting arrays 1,500 deep overflowed the
/// stack and aborted the broker before any login. Nesting past 64 levels is now refused with
/// 502 wherever a client can send a table, and everyone else is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_tables_are_refused_not_a_crash() {
    let b = Broker::start().await;
    // Before login: client-properties of connection.start-ok.
    let mut r = Raw::connect(&b).await;
    r.sock.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    r.recv().await.expect("connection.start");
    let mut p = vec![0, 10, 0, 11];
    p.extend_from_slice(&nested_table(1500));
    p.extend_from_slice(b"\x05PLAIN\x00\x00\x00\x0c\x00guest\x00guest\x05en_US");
    r.send_raw(&method_frame(0, &p)).await;
    assert_eq!(r.expect_connection_close().await, 502);
    still_serving(&b).await;

    // After login: queue.declare arguments, 65 levels (64 are fine).
    for (depth, refused) in [(64, false), (65, true)] {
        let mut r = Raw::open(&b).await;
        r.open_channel(1).await;
        let mut p = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        p.extend_from_slice(&nested_table(depth));
        r.send_raw(&method_frame(1, &p)).await;
        if refused {
            assert_eq!(r.expect_connection_close().await, 502);
        } else {
            match r.recv().await {
                // The nested argument is not one Warren checks: the queue is declared.
                Some(AMQPFrame::Method(1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))) => {}
                other => panic!("expected declare-ok, got {other:?}"),
            }
        }
    }

    // A content header whose headers property nests too deep.
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&publish_frame(1, "q")).await;
    let mut h = vec![0, 60, 0, 0];
    h.extend_from_slice(&1u64.to_be_bytes());
    h.extend_from_slice(&[0b0010_0000, 0]); // property flags: headers only
    h.extend_from_slice(&nested_table(100));
    let mut f = vec![2, 0, 1];
    f.extend_from_slice(&(h.len() as u32).to_be_bytes());
    f.extend_from_slice(&h);
    f.push(0xCE);
    r.send_raw(&f).await;
    assert_eq!(r.expect_connection_close().await, 502);
    still_serving(&b).await;
}

mod whole;
