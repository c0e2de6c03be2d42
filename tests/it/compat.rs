//! Wire behaviours where Warren differed from RabbitMQ (3.10.8, checked against a live node) and
//! clients noticed: consumer tags after a broker cancel, channel_max, the order of the socket
//! close, x-max-length on requeue, declares of amq.rabbitmq.reply-to, quorum queue refusals.
//! Each test states the bug it guards against.

use crate::harness::*;
use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue as Value, FieldTable as Table, LongString as LongStr};
use std::time::Duration;
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
