//! Random but well-formed method sequences from several raw clients at once: whatever order a
//! client sends valid methods in, the broker answers or closes as the protocol says, never panics,
//! and keeps serving everyone else.

use crate::harness::*;
use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, tx, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

fn frame(f: &AMQPFrame) -> Vec<u8> {
    cookie_factory::gen_simple(gen_frame(f), Vec::new()).unwrap()
}

fn method(ch: u16, m: AMQPClass) -> Vec<u8> {
    frame(&AMQPFrame::Method(ch, m))
}

/// One random method (with content frames after a publish) on a random channel 1..=3.
fn random_step(r: &mut Rng) -> Vec<u8> {
    const QUEUES: &[&str] = &["cq1", "cq2", "cq3", "amq.gen-x", ""];
    const EXCHANGES: &[&str] = &["cx1", "cx2", "amq.direct", "amq.topic", "", "missing-x"];
    const KINDS: &[&str] = &["direct", "fanout", "topic", "headers"];
    const KEYS: &[&str] = &["", "a", "a.b", "#", "*.b", "cq1"];
    let ch = 1 + r.below(3) as u16;
    let b = |r: &mut Rng| r.below(2) == 0;
    match r.below(22) {
        // Close and reopen (the broker forgets a channel as soon as the client closes it).
        0 | 1 => {
            let mut out = method(
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: 200,
                    reply_text: "".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            );
            out.extend(method(
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            ));
            out
        }
        2 => method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        ),
        3 => method(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: r.pick(QUEUES).into(),
                passive: r.below(4) == 0,
                durable: r.below(4) == 0,
                exclusive: r.below(3) == 0,
                auto_delete: r.below(3) == 0,
                nowait: r.below(5) == 0,
                arguments: {
                    let mut t = FieldTable::default();
                    if b(r) {
                        t.insert(
                            "x-max-length".into(),
                            AMQPValue::LongInt(r.below(5) as i32 - 1),
                        );
                    }
                    if b(r) {
                        t.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
                    }
                    t
                },
            })),
        ),
        4 => method(
            ch,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: r.pick(EXCHANGES).into(),
                kind: if r.below(10) == 0 {
                    "bogus"
                } else {
                    r.pick(KINDS)
                }
                .into(),
                passive: r.below(4) == 0,
                durable: b(r),
                auto_delete: b(r),
                internal: r.below(4) == 0,
                nowait: r.below(5) == 0,
                arguments: FieldTable::default(),
            })),
        ),
        5 => method(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: r.pick(QUEUES).into(),
                exchange: r.pick(EXCHANGES).into(),
                routing_key: r.pick(KEYS).into(),
                nowait: b(r),
                arguments: {
                    let mut t = FieldTable::default();
                    if b(r) {
                        t.insert(
                            "x-match".into(),
                            AMQPValue::LongString(LongString::from(
                                r.pick(&["any", "all", "nope"]),
                            )),
                        );
                    }
                    t
                },
            })),
        ),
        6 => method(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: r.pick(QUEUES).into(),
                exchange: r.pick(EXCHANGES).into(),
                routing_key: r.pick(KEYS).into(),
                arguments: FieldTable::default(),
            })),
        ),
        7 => method(
            ch,
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: r.pick(EXCHANGES).into(),
                source: r.pick(EXCHANGES).into(),
                routing_key: r.pick(KEYS).into(),
                nowait: b(r),
                arguments: FieldTable::default(),
            })),
        ),
        8..=10 => {
            let mut out = method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: r.pick(EXCHANGES).into(),
                    routing_key: r.pick(KEYS).into(),
                    mandatory: b(r),
                    immediate: r.below(100) == 0,
                })),
            );
            let size = r.below(3000);
            out.extend(frame(&AMQPFrame::Header(
                ch,
                amq_protocol::frame::AMQPContentHeader {
                    class_id: 60,
                    body_size: size,
                    properties: basic::AMQPProperties::default()
                        .with_delivery_mode(1 + r.below(2) as u8),
                },
            )));
            let mut left = size as usize;
            while left > 0 {
                let n = left.min(1 + r.below(2000) as usize);
                out.extend(frame(&AMQPFrame::Body(ch, vec![7; n])));
                left -= n;
            }
            out
        }
        11 => method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: r.pick(QUEUES).into(),
                consumer_tag: r.pick(&["", "t1", "t2"]).into(),
                no_local: false,
                no_ack: b(r),
                exclusive: r.below(4) == 0,
                nowait: r.below(5) == 0,
                arguments: FieldTable::default(),
            })),
        ),
        12 => method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: r.pick(&["t1", "t2", "none"]).into(),
                nowait: b(r),
            })),
        ),
        13 => method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: r.below(6),
                multiple: b(r),
            })),
        ),
        14 => method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: r.below(6),
                multiple: b(r),
                requeue: b(r),
            })),
        ),
        15 => method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: r.pick(QUEUES).into(),
                no_ack: b(r),
            })),
        ),
        16 => method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: r.below(4) as u16,
                global: b(r),
            })),
        ),
        17 => method(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: r.pick(QUEUES).into(),
                if_unused: b(r),
                if_empty: b(r),
                nowait: b(r),
            })),
        ),
        18 => method(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: r.pick(QUEUES).into(),
                nowait: b(r),
            })),
        ),
        19 => method(
            ch,
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: r.pick(EXCHANGES).into(),
                if_unused: b(r),
                nowait: b(r),
            })),
        ),
        20 => method(
            ch,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: b(r),
            })),
        ),
        _ => method(
            ch,
            match r.below(3) {
                0 => AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})),
                1 => AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
                _ => AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
            },
        ),
    }
}

/// Open a connection by hand (frame_max 4096) and return the socket.
async fn open(b: &Broker) -> TcpStream {
    let mut s = TcpStream::connect(b.handle.amqp_addr).await.unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let mut caps = FieldTable::default();
    caps.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    let mut hs = method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: LongString::from("\0guest\0guest"),
            locale: "en_US".into(),
        })),
    );
    hs.extend(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 8,
            frame_max: 4096,
            heartbeat: 0,
        })),
    ));
    hs.extend(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    ));
    s.write_all(&hs).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_method_sequences_never_panic() {
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let b = Arc::new(Broker::start().await);
    static REPLIES: AtomicUsize = AtomicUsize::new(0);
    // WARREN_CHAOS_ROUNDS=500 for a long local run; CI runs the default.
    let rounds: u32 = std::env::var("WARREN_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut clients = Vec::new();
    for seed in 1..=6u64 {
        let b = b.clone();
        clients.push(tokio::spawn(async move {
            let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed * 0x1234_5678_9ABC));
            for _round in 0..rounds {
                let mut s = open(&b).await;
                // Mostly open channels first, then a random stream of methods.
                let mut bytes = Vec::new();
                for ch in 1..=3 {
                    bytes.extend(method(
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
                    ));
                }
                for _ in 0..60 {
                    bytes.extend(random_step(&mut r));
                }
                let _ = s.write_all(&bytes).await;
                // Drain replies (answering closes) for a short while, then drop the socket.
                let mut buf = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
                loop {
                    let mut chunk = [0u8; 16384];
                    match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                        Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Ok((rest, f)) = parse_frame(&buf[..]) {
                        let used = buf.len() - rest.len();
                        REPLIES.fetch_add(1, Ordering::Relaxed);
                        if let AMQPFrame::Method(
                            ch,
                            AMQPClass::Channel(channel::AMQPMethod::Close(_)),
                        ) = f
                        {
                            let _ = s
                                .write_all(&method(
                                    ch,
                                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(
                                        channel::CloseOk {},
                                    )),
                                ))
                                .await;
                        }
                        buf.drain(..used);
                    }
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    // Everyone else is still served, and nothing panicked anywhere in the broker.
    let (_c, ch) = b.channel().await;
    declare(&ch, &unique("after-chaos")).await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a broker task panicked");
    // The sequences went deep enough to matter (not one error and out).
    let replies = REPLIES.load(Ordering::Relaxed);
    assert!(replies > 1000, "only {replies} frames came back");
}
