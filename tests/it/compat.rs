//! Wire behaviours where Warren differed from RabbitMQ (3.10.8, checked against a live node) and
//! clients noticed: consumer tags after a broker cancel, channel_max, the order of the socket
//! close, x-max-length on requeue, declares of amq.rabbitmq.reply-to, quorum queue refusals.
//! Each test states the bug it guards against.

use crate::harness::*;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue as Value, FieldTable as Table, LongString as LongStr};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---- a raw AMQP client ------------------------------------------------------------------------

struct Raw {
    sock: TcpStream,
    buf: Vec<u8>,
}

/// What a read brought.
#[derive(Debug)]
enum Got {
    Frame(Box<AMQPFrame>),
    /// The broker closed the socket (or reset it).
    Eof,
    /// Nothing within the time given.
    Quiet,
}

fn method(channel: u16, m: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(channel, m)
}

fn connection_close() -> AMQPFrame {
    method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
}

fn connection_close_ok() -> AMQPFrame {
    method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )
}

fn channel_open(id: u16) -> AMQPFrame {
    method(
        id,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
}

fn qos(id: u16) -> AMQPFrame {
    method(
        id,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )
}

impl Raw {
    /// An open connection (heartbeat 0, frame_max 4096) that asked for `channel_max`.
    async fn open(b: &Broker, channel_max: u16) -> Raw {
        let mut r = Raw {
            sock: TcpStream::connect(b.handle.amqp_addr).await.unwrap(),
            buf: Vec::new(),
        };
        r.sock.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        r.expect(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::Start(_))))
            .await;
        let mut caps = Table::default();
        caps.insert("consumer_cancel_notify".into(), Value::Boolean(true));
        let mut client_properties = Table::default();
        client_properties.insert("capabilities".into(), Value::FieldTable(caps));
        r.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties,
                mechanism: "PLAIN".into(),
                response: LongStr::from("\0guest\0guest"),
                locale: "en_US".into(),
            })),
        ))
        .await;
        r.expect(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::Tune(_))))
            .await;
        r.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max,
                frame_max: 4096,
                heartbeat: 0,
            })),
        ))
        .await;
        r.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ))
        .await;
        r.expect(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))))
            .await;
        r
    }

    async fn send(&mut self, f: &AMQPFrame) {
        let bytes = cookie_factory::gen_simple(gen_frame(f), Vec::new()).unwrap();
        self.sock.write_all(&bytes).await.unwrap();
    }

    async fn recv(&mut self, within: Duration) -> Got {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok((rest, f)) = parse_frame(&self.buf[..]) {
                let used = self.buf.len() - rest.len();
                self.buf.drain(..used);
                return Got::Frame(Box::new(f));
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.sock.read(&mut chunk)).await {
                Err(_) => return Got::Quiet,
                Ok(Ok(0)) | Ok(Err(_)) => return Got::Eof,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next method frame, which must satisfy `f`.
    async fn expect(&mut self, f: impl Fn(&AMQPClass) -> bool) -> (u16, AMQPClass) {
        match self.recv(Duration::from_secs(10)).await {
            Got::Frame(frame) => match *frame {
                AMQPFrame::Method(ch, m) if f(&m) => (ch, m),
                other => panic!("unexpected: {other:?}"),
            },
            other => panic!("unexpected: {other:?}"),
        }
    }

    async fn open_channel(&mut self, id: u16) {
        self.send(&channel_open(id)).await;
        let (ch, _) = self
            .expect(|m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))))
            .await;
        assert_eq!(ch, id);
    }

    /// The broker's connection.close: (code, text, class, method).
    async fn expect_close(&mut self) -> (u16, String, u16, u16) {
        match self
            .expect(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::Close(_))))
            .await
        {
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => (
                c.reply_code,
                c.reply_text.as_str().to_owned(),
                c.class_id,
                c.method_id,
            ),
            other => panic!("{other:?}"),
        }
    }

    async fn expect_close_ok(&mut self) {
        self.expect(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))))
            .await;
    }
}

/// Wait until the management API lists `n` connections.
async fn connections_listed(b: &Broker, n: usize) {
    let api = Api::of(b);
    for _ in 0..100 {
        let r = api.get("/api/connections").await;
        if r.body.as_array().map(Vec::len) == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "never {n} connections: {}",
        api.get("/api/connections").await.text
    );
}

// ---- 1. consumer tags ---------------------------------------------------------------------------

/// Bug: after the broker cancelled a consumer (its queue was deleted: basic.cancel to the client)
/// its tag stayed taken on the channel, so consuming again with the same tag — what aio-pika's
/// robust consumers do — closed the connection with 530 "attempt to reuse consumer tag".
/// RabbitMQ frees the tag. The new consumer gets the messages, and its tag is then taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_tag_is_free_once_the_broker_cancelled_it() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let other = c.create_channel().await.unwrap();
    let q = unique("robust");
    for round in 0..3 {
        declare(&ch, &q).await;
        let mut cons = ch
            .basic_consume(
                q.as_str().into(),
                "robust-tag".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: consume with the same tag: {e}"));
        publish(&other, "", &q, b"hello").await;
        let d = take(&mut cons, 1).await;
        assert_eq!(d[0].data, b"hello");
        d[0].acker.ack(BasicAckOptions::default()).await.unwrap();
        // Deleted from another channel: the broker cancels the consumer.
        other
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), cons.next()).await;
        assert!(
            matches!(end, Ok(None)),
            "consumer stream ends on basic.cancel"
        );
    }
    // Live again, the tag is taken: reusing it is still 530.
    declare(&ch, &q).await;
    let _live = ch
        .basic_consume(
            q.as_str().into(),
            "robust-tag".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let e = ch
        .basic_consume(
            q.as_str().into(),
            "robust-tag".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(530), "{e}");
    assert_eq!(
        text(&e),
        "NOT_ALLOWED - attempt to reuse consumer tag 'robust-tag'"
    );
}

// ---- 2. channel_max -----------------------------------------------------------------------------

/// Bug: a channel.open with a number above the negotiated channel_max closed the connection with
/// 504; and the number of open channels was not what was limited. RabbitMQ limits how many
/// channels are open at once (530 NOT_ALLOWED, its text, class/method 0) and accepts any channel
/// number below that. Frames on channels that are not open: 504 for a method, 505 for content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_max_limits_open_channels_not_their_numbers() {
    let b = Broker::start().await;
    let mut r = Raw::open(&b, 2).await;
    r.open_channel(7).await;
    r.open_channel(65535).await;
    r.send(&channel_open(3)).await;
    assert_eq!(
        r.expect_close().await,
        (
            530,
            "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
                .into(),
            0,
            0
        )
    );
    r.send(&connection_close_ok()).await;

    // A closed channel makes room for another.
    let mut r = Raw::open(&b, 2).await;
    r.open_channel(1).await;
    r.open_channel(2).await;
    r.send(&method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "".into(),
            class_id: 0,
            method_id: 0,
        })),
    ))
    .await;
    r.expect(|m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))))
        .await;
    r.open_channel(3).await;

    // Frames on a channel that is not open, above channel_max or not.
    for id in [2, 9] {
        let mut r = Raw::open(&b, 2).await;
        r.send(&qos(id)).await;
        assert_eq!(
            r.expect_close().await,
            (
                504,
                "CHANNEL_ERROR - expected 'channel.open'".into(),
                60,
                10
            )
        );
        let mut r = Raw::open(&b, 2).await;
        r.send(&AMQPFrame::Header(
            id,
            amq_protocol::frame::AMQPContentHeader {
                class_id: 60,
                body_size: 0,
                properties: Default::default(),
            },
        ))
        .await;
        assert_eq!(
            r.expect_close().await,
            (
                505,
                "UNEXPECTED_FRAME - expected method frame, got non method frame instead".into(),
                0,
                0
            )
        );
    }
    let (_c, ch) = b.channel().await;
    declare(&ch, &unique("alive")).await;
}

// ---- 3. the order of the close ------------------------------------------------------------------

/// Bug: after answering a client's connection.close with close-ok, Warren shut the socket at
/// once; the client's reader then saw EOF before its Close() returned, and amqp091-go reported
/// the clean close as `Exception (501) "EOF"`. RabbitMQ leaves the socket for the client to shut
/// (the spec's order): the broker must still hold it 300 ms later, and close its end (and forget
/// the connection) as soon as the client closes its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_leaves_the_socket_to_the_client() {
    let b = Broker::start().await;
    let mut r = Raw::open(&b, 0).await;
    r.open_channel(1).await;
    connections_listed(&b, 1).await;
    r.send(&connection_close()).await;
    r.expect_close_ok().await;
    match r.recv(Duration::from_millis(300)).await {
        Got::Quiet => {}
        other => panic!("the broker must leave the socket open after close-ok: {other:?}"),
    }
    // Frames after close-ok are ignored, not answered.
    r.send(&channel_open(2)).await;
    match r.recv(Duration::from_millis(200)).await {
        Got::Quiet => {}
        other => panic!("nothing is answered after close-ok: {other:?}"),
    }
    r.sock.shutdown().await.unwrap();
    let t = Instant::now();
    match r.recv(Duration::from_secs(5)).await {
        Got::Eof => {}
        other => panic!("expected the broker's end of the socket: {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "closed when the client closed, not at a timeout: {:?}",
        t.elapsed()
    );
    connections_listed(&b, 0).await;
}

/// The wait for the client after close-ok is bounded: a client that keeps its socket open is
/// dropped after a few seconds (RabbitMQ waits up to 30 s, or the heartbeat interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keeping_the_socket_after_close_ok_is_dropped() {
    let b = Broker::start().await;
    let mut r = Raw::open(&b, 0).await;
    r.send(&connection_close()).await;
    r.expect_close_ok().await;
    let t = Instant::now();
    match r.recv(Duration::from_secs(10)).await {
        Got::Eof => {}
        other => panic!("expected the broker to give up: {other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    connections_listed(&b, 0).await;
}

/// When the broker closes (a connection error) it is the one to shut the socket, once the client
/// answered close-ok — as RabbitMQ. If the client's own close crosses the broker's, it gets its
/// close-ok, and the socket stays until the client's close-ok for the broker's close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_close_ends_at_the_clients_close_ok() {
    let b = Broker::start().await;
    let mut r = Raw::open(&b, 0).await;
    r.send(&qos(5)).await;
    assert_eq!(r.expect_close().await.0, 504);
    r.send(&connection_close_ok()).await;
    let t = Instant::now();
    assert!(matches!(r.recv(Duration::from_secs(5)).await, Got::Eof));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    let mut r = Raw::open(&b, 0).await;
    r.send(&qos(5)).await;
    assert_eq!(r.expect_close().await.0, 504);
    r.send(&connection_close()).await;
    r.expect_close_ok().await;
    match r.recv(Duration::from_millis(300)).await {
        Got::Quiet => {}
        other => panic!("the broker waits for the close-ok of its close: {other:?}"),
    }
    r.send(&connection_close_ok()).await;
    let t = Instant::now();
    assert!(matches!(r.recv(Duration::from_secs(5)).await, Got::Eof));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    connections_listed(&b, 0).await;
}

/// Bug: amqp091-go (RabbitMQ's Go client) reported a plain `conn.Close()` as
/// `Exception (501) "EOF"` on NotifyClose in most tries (154 of 200; 0 of 200 on RabbitMQ), and
/// its own TestConcurrentClose failed about half the time, because Warren shut the socket right
/// after close-ok. tests/go/closeclean does 200 connect/Close() cycles and 20 rounds of 32
/// concurrent Close() calls; it is built with Debian's go and amqp091-go package (.ci/run
/// installs golang-go and golang-github-rabbitmq-amqp091-go-dev).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_client_close_is_clean() {
    let gopath = "/usr/share/gocode";
    assert!(
        std::path::Path::new(gopath)
            .join("src/github.com/rabbitmq/amqp091-go")
            .is_dir(),
        "amqp091-go missing: apt-get install golang-go golang-github-rabbitmq-amqp091-go-dev"
    );
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/go/closeclean");
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let exe = out_dir.join("closeclean");
    let t = Instant::now();
    let build = tokio::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg(".")
        .current_dir(src)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOCACHE", out_dir.join("go-cache"))
        .env("GOFLAGS", "")
        .output()
        .await
        .expect("go runs (apt-get install golang-go golang-github-rabbitmq-amqp091-go-dev)");
    assert!(
        build.status.success(),
        "go build failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    eprintln!("go build: {:?}", t.elapsed());
    let b = Broker::start().await;
    let run = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&exe)
            .arg(b.url())
            .arg("200")
            .output(),
    )
    .await
    .expect("closeclean finishes")
    .expect("closeclean runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.contains(" 0 failures"),
        "amqp091-go saw errors on a clean close:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    connections_listed(&b, 0).await;
}

// ---- 4. x-max-length on requeue -----------------------------------------------------------------

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn death_reason(d: &lapin::message::Delivery) -> String {
    let h = d.properties.headers().as_ref().expect("headers");
    match h.inner().get("x-first-death-reason") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{other:?}"),
    }
}

/// Everything ready in `q` (no-ack): (body, redelivered).
async fn drain(ch: &lapin::Channel, q: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push((
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
            m.delivery.redelivered,
        ));
    }
    out
}

/// Bug: messages returned by nack/reject with requeue or by a closed channel pushed a queue over
/// `x-max-length` / `x-max-length-bytes` and stayed there. RabbitMQ 3.10 (classic queues):
/// with drop-head the oldest are dropped from the head — the returned ones, back in their old
/// place — and dead-lettered (reason maxlen); reject-publish queues keep them all (over the
/// limit) and refuse new publishes until below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_over_max_length_drops_from_the_head() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    for (limit, overflow, by_close) in [
        (("x-max-length", 2), "drop-head", false),
        (("x-max-length", 2), "drop-head", true),
        (("x-max-length-bytes", 4), "drop-head", false),
        (("x-max-length", 2), "reject-publish", false),
        (("x-max-length-bytes", 4), "reject-publish", true),
        (("x-max-length", 2), "reject-publish-dlx", false),
    ] {
        let case = format!("{limit:?} {overflow} by_close={by_close}");
        let (q, dlq) = (unique("ml-requeue"), unique("ml-requeue-dl"));
        declare(&ch, &dlq).await;
        let mut args = FieldTable::default();
        args.insert(limit.0.into(), AMQPValue::LongInt(limit.1));
        args.insert("x-overflow".into(), s(overflow));
        args.insert("x-dead-letter-exchange".into(), s(""));
        args.insert("x-dead-letter-routing-key".into(), s(&dlq));
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
            .await
            .unwrap();
        publish(&ch, "", &q, b"m1").await;
        publish(&ch, "", &q, b"m2").await;
        // Taken unacked on a second channel, then two more published: full again.
        let taker = c.create_channel().await.unwrap();
        let _m1 = get_with(&taker, &q, false).await.expect("m1");
        let m2 = get_with(&taker, &q, false).await.expect("m2");
        publish(&ch, "", &q, b"m3").await;
        publish(&ch, "", &q, b"m4").await;
        assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 2, "{case}");
        if by_close {
            taker.close(200, "bye".into()).await.unwrap();
        } else {
            m2.delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: true,
                    requeue: true,
                })
                .await
                .unwrap();
        }
        if overflow == "drop-head" {
            // The two dropped arrive at the dead-letter queue (a timeout here: never dropped).
            let mut dl = consume(&ch, &dlq, true).await;
            let dead = take(&mut dl, 2).await;
            let dead: Vec<(Vec<u8>, String)> = dead
                .iter()
                .map(|d| (d.data.clone(), death_reason(d)))
                .collect();
            assert_eq!(
                dead,
                vec![
                    (b"m1".to_vec(), "maxlen".to_owned()),
                    (b"m2".to_vec(), "maxlen".to_owned())
                ],
                "{case}"
            );
            none_within(&mut dl, 100).await;
            assert_eq!(
                drain(&ch, &q).await,
                vec![("m3".into(), false), ("m4".into(), false)],
                "{case}"
            );
        } else {
            let mut ready = 0;
            for _ in 0..100 {
                ready = passive(&ch, &q).await.unwrap().message_count();
                if ready == 4 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(ready, 4, "{case}: reject-publish keeps what came back");
            // Over the limit: a new message is refused.
            let confirming = c.create_channel().await.unwrap();
            confirming
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let conf = confirming
                .basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    b"m5",
                    Default::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(conf.is_nack(), "{case}");
            assert_eq!(
                drain(&ch, &q).await,
                vec![
                    ("m1".into(), true),
                    ("m2".into(), true),
                    ("m3".into(), false),
                    ("m4".into(), false)
                ],
                "{case}"
            );
            if overflow == "reject-publish" {
                assert_eq!(passive(&ch, &dlq).await.unwrap().message_count(), 0);
            }
        }
    }
}

// ---- 5. amq.rabbitmq.reply-to -------------------------------------------------------------------

/// Bug: a passive queue.declare of `amq.rabbitmq.reply-to` (clients check for direct reply-to
/// support that way) was refused with 404. RabbitMQ answers declare-ok with 0 messages and 1
/// consumer — for any declare of the pseudo-queue and of a live reply address; other
/// amq.rabbitmq.reply-to* names are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_of_direct_reply_to_as_rabbitmq() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    for passive in [true, false] {
        let q = ch
            .queue_declare(
                "amq.rabbitmq.reply-to".into(),
                QueueDeclareOptions {
                    passive,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("passive={passive}: {e}"));
        assert_eq!(q.name().as_str(), "amq.rabbitmq.reply-to");
        assert_eq!((q.message_count(), q.consumer_count()), (0, 1));
    }
    // A live reply address: a requester consumes from the pseudo-queue; its request's reply_to
    // is rewritten to its address.
    let requester = c.create_channel().await.unwrap();
    let _replies = requester
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let rq = unique("rpc");
    declare(&ch, &rq).await;
    requester
        .basic_publish(
            "".into(),
            rq.as_str().into(),
            BasicPublishOptions::default(),
            b"request",
            lapin::BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await
        .unwrap();
    let req = get_one(&ch, &rq).await.expect("request");
    let address = req
        .delivery
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to")
        .as_str()
        .to_owned();
    assert!(address.starts_with("amq.rabbitmq.reply-to."), "{address}");
    let q = passive(&ch, &address).await.unwrap();
    assert_eq!((q.message_count(), q.consumer_count()), (0, 1));
    for name in [format!("{address}x"), "amq.rabbitmq.reply-to.nosuch".into()] {
        let probe = c.create_channel().await.unwrap();
        let e = passive(&probe, &name).await.unwrap_err();
        assert_eq!(code(&e), Some(404), "{e}");
        assert_eq!(
            text(&e),
            format!("NOT_FOUND - no queue '{name}' in vhost '/'")
        );
    }
    // Once the requester's channel is gone, so is its address.
    requester.close(200, "bye".into()).await.unwrap();
    let probe = c.create_channel().await.unwrap();
    let e = passive(&probe, &address).await.unwrap_err();
    assert_eq!(code(&e), Some(404), "{e}");
}

// ---- 6. quorum queue refusals -------------------------------------------------------------------

/// Bug: `x-queue-type: quorum` declares that RabbitMQ refuses were accepted. RabbitMQ 3.10's
/// 406 texts: a new quorum queue must be durable, not exclusive, not auto-delete (checked in the
/// order auto-delete, exclusive, durable), takes no classic- or stream-only argument, and cannot
/// be server-named; an existing one is compared as any queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_declares_refused_as_rabbitmq() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let quorum = |extra: &[(&str, AMQPValue)]| {
        let mut t = FieldTable::default();
        t.insert("x-queue-type".into(), s("quorum"));
        for (k, v) in extra {
            t.insert((*k).into(), v.clone());
        }
        t
    };
    let declare_q = |name: String, durable: bool, exclusive: bool, auto_delete: bool, args| {
        let c = &c;
        async move {
            let ch = c.create_channel().await.unwrap();
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable,
                    exclusive,
                    auto_delete,
                    ..Default::default()
                },
                args,
            )
            .await
        }
    };
    let refused = |e: lapin::Error| (code(&e), text(&e));
    let pf = |t: String| (Some(406), format!("PRECONDITION_FAILED - {t}"));
    for (durable, exclusive, auto_delete, property) in [
        (false, false, false, "non-durable"),
        (true, true, false, "exclusive-owner"),
        (false, true, false, "exclusive-owner"),
        (true, false, true, "auto-delete"),
        (true, true, true, "auto-delete"),
    ] {
        let q = unique("qq");
        let e = declare_q(q.clone(), durable, exclusive, auto_delete, quorum(&[]))
            .await
            .unwrap_err();
        assert_eq!(
            refused(e),
            pf(format!(
                "invalid property '{property}' for queue '{q}' in vhost '/'"
            ))
        );
    }
    for (arg, v) in [
        ("x-max-priority", AMQPValue::LongInt(5)),
        ("x-queue-mode", s("lazy")),
        ("x-queue-master-locator", s("min-masters")),
        ("x-max-age", s("1D")),
    ] {
        let q = unique("qq");
        // Refused for the argument before the properties are looked at.
        let e = declare_q(q.clone(), false, false, false, quorum(&[(arg, v)]))
            .await
            .unwrap_err();
        assert_eq!(
            refused(e),
            pf(format!(
                "invalid arg '{arg}' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"
            ))
        );
    }
    let q = unique("qq");
    let e = declare_q(
        q.clone(),
        true,
        false,
        false,
        quorum(&[("x-dead-letter-strategy", s("bogus"))]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        refused(e),
        pf(format!(
            "invalid arg 'x-dead-letter-strategy' for queue '{q}' in vhost '/': invalid_dlx_strategy"
        ))
    );
    let e = declare_q(String::new(), true, false, false, quorum(&[]))
        .await
        .unwrap_err();
    assert_eq!(
        refused(e),
        pf("Cannot declare a server-named queue for type rabbit_quorum_queue".into())
    );
    // Accepted: durable, with quorum arguments.
    let q = unique("qq");
    let args = quorum(&[
        ("x-delivery-limit", AMQPValue::LongInt(3)),
        ("x-dead-letter-strategy", s("at-least-once")),
        ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
    ]);
    declare_q(q.clone(), true, false, false, args.clone())
        .await
        .unwrap();
    // Existing: compared as any queue (RabbitMQ's text), not refused as a new one.
    let e = declare_q(q.clone(), false, false, false, args.clone())
        .await
        .unwrap_err();
    assert_eq!(
        refused(e),
        pf(format!(
            "inequivalent arg 'durable' for queue '{q}' in vhost '/': received 'false' but \
             current is 'true'"
        ))
    );
    declare_q(q.clone(), true, false, false, args)
        .await
        .unwrap();
    // Classic queues are untouched by all this.
    ch.queue_declare(
        unique("classic").as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}
