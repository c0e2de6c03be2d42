//! Hostile and careless clients against the real binary (its RSS read from /proc): slowloris
//! handshakes, 10,000 connections opened and dropped, channel churn, frames at and over
//! frame_max, unauthenticated requests to every API path, a publisher that never reads, and a
//! well-behaved neighbour beside all of them. Each test checks that the broker keeps serving a
//! fresh client, that its memory stays bounded, and that it all takes bounded time. Figures are
//! printed (`--nocapture`).

use crate::child::{spawn_configured, Proc};
use crate::harness::raw_client::{frame_bytes, RawConn};
use crate::harness::{request, temp_data_dir, unique};
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use lapin::options::*;
use lapin::BasicProperties;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MB: f64 = 1024.0 * 1024.0;

/// The neighbour's throughput is measured with no other hostile test running (write); the
/// others may run together (read).
static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A broker child with `extra` config lines (no Prometheus listener: children run in parallel).
fn broker(extra: &str) -> (Proc, std::path::PathBuf) {
    let dir = temp_data_dir();
    let p = spawn_configured(&dir, &format!("prometheus_listen = \"\"\n{extra}"))
        .expect("broker starts");
    (p, dir)
}

fn amqp_addr(p: &Proc) -> SocketAddr {
    p.url
        .trim_start_matches("amqp://guest:guest@")
        .trim_end_matches("/%2f")
        .parse()
        .unwrap()
}

/// The whole handshake (header, start-ok, tune-ok with frame_max 4096, open) in one write.
fn pipelined_handshake() -> Vec<u8> {
    let mut out = b"AMQP\x00\x00\x09\x01".to_vec();
    for m in [
        connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from("\0guest\0guest"),
            locale: "en_US".into(),
        }),
        connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 16,
            frame_max: 4096,
            heartbeat: 0,
        }),
        connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        }),
    ] {
        out.extend(frame_bytes(&AMQPFrame::Method(0, AMQPClass::Connection(m))));
    }
    out
}

/// Open a connection with the pipelined handshake; wait for connection.open-ok (frame headers
/// read by hand: cheap enough for thousands of connections).
async fn quick_open(addr: SocketAddr, handshake: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(handshake).await.unwrap();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        // Walk the complete frames buffered so far.
        let mut at = 0;
        while buf.len() >= at + 7 {
            let size = u32::from_be_bytes(buf[at + 3..at + 7].try_into().unwrap()) as usize;
            if buf.len() < at + 8 + size {
                break;
            }
            if buf[at] == 1 && size >= 4 && buf[at + 7..at + 11] == [0, 10, 0, 41] {
                return s;
            }
            at += 8 + size;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("open-ok within 10 s")
            .unwrap();
        assert!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// CPU seconds the child has used (user + system).
fn cpu_secs(p: &Proc) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid())).unwrap();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn rss_mb(p: &Proc) -> f64 {
    p.rss() as f64 / MB
}

/// A fresh lapin client declares, publishes and gets one message, within 5 s.
async fn serves_a_fresh_client(p: &Proc) -> Duration {
    let t = Instant::now();
    let work = async {
        let (c, ch) = p.channel().await;
        let q = unique("fresh");
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let mut got = None;
        for _ in 0..100 {
            got = ch
                .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            if got.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(got.expect("the message").delivery.data, b"hello");
        let _ = c.close(200, "bye".into()).await;
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .expect("a fresh client is served within 5 s");
    t.elapsed()
}

/// Open connections, as the management API counts them.
async fn api_connections(p: &Proc) -> usize {
    let r = request(
        "GET",
        format!("http://{}/api/connections", p.http),
        Some(("guest", "guest")),
        None,
        &[],
    )
    .await;
    r.body.as_array().map_or(usize::MAX, |a| a.len())
}

/// Wait (up to 10 s) until the API shows no connection.
async fn until_no_connections(p: &Proc) {
    for _ in 0..200 {
        if api_connections(p).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("connections still open: {}", api_connections(p).await);
}

/// Wait until the socket is closed by the broker; how long that took from `t0`. While waiting,
/// `drip` sends one more byte of `bytes` every `every` (a slowloris header).
async fn closed_after(
    mut s: TcpStream,
    t0: Instant,
    bytes: &'static [u8],
    every: Duration,
) -> Option<Duration> {
    let mut sent = 0;
    let mut buf = [0u8; 4096];
    let give_up = t0 + Duration::from_secs(15);
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(t0.elapsed()),
                Ok(_) => {}
            },
            _ = tokio::time::sleep(every), if sent < bytes.len() => {
                let _ = s.write_all(&bytes[sent..sent + 1]).await;
                sent += 1;
            }
            _ = tokio::time::sleep_until(give_up.into()) => return None,
        }
    }
}

/// Slowloris: sockets that send the protocol header a byte at a time, or stall half-way through
/// start-ok, or send nothing, are all cut at the handshake timeout, and a normal client is
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_handshakes_are_cut_at_the_handshake_timeout() {
    let _shared = HEAVY.read().await;
    let (p, _dir) = broker("handshake_timeout_ms = 1000");
    let addr = amqp_addr(&p);
    let rss0 = rss_mb(&p);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                // A byte of the header every 300 ms: 2.4 s for all of it.
                0 => closed_after(s, t0, b"AMQP\x00\x00\x09\x01", Duration::from_millis(300)).await,
                // The header, then half a start-ok, then nothing.
                1 => {
                    s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
                    let start_ok = frame_bytes(&AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::StartOk(
                            connection::StartOk {
                                client_properties: FieldTable::default(),
                                mechanism: "PLAIN".into(),
                                response: LongString::from("\0guest\0guest"),
                                locale: "en_US".into(),
                            },
                        )),
                    ));
                    s.write_all(&start_ok[..start_ok.len() / 2]).await.unwrap();
                    closed_after(s, t0, b"", Duration::from_secs(1)).await
                }
                // Nothing at all.
                _ => closed_after(s, t0, b"", Duration::from_secs(1)).await,
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = serves_a_fresh_client(&p).await;
    let mut closes = Vec::new();
    for t in tasks {
        closes.push(t.await.unwrap().expect("cut within 15 s"));
    }
    closes.sort();
    let (first, last) = (closes[0], closes[closes.len() - 1]);
    until_no_connections(&p).await;
    let rss1 = rss_mb(&p);
    eprintln!(
        "slowloris: 300 sockets cut between {first:?} and {last:?} (handshake timeout 1 s); \
         a fresh client took {fresh:?} meanwhile; RSS {rss0:.1} -> {rss1:.1} MB"
    );
    assert!(first >= Duration::from_millis(900), "cut early: {first:?}");
    assert!(last < Duration::from_secs(6), "cut late: {last:?}");
    assert!(rss1 - rss0 < 16.0, "RSS {rss0:.1} -> {rss1:.1} MB");
    serves_a_fresh_client(&p).await;
}

/// 10,000 connections opened (full AMQP handshake) and dropped, in waves of 500 (under a 1024
/// file-descriptor limit on either side): every one is served, all are gone after, and RSS comes
/// back near where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_opened_and_dropped() {
    let _shared = HEAVY.read().await;
    let (p, _dir) = broker("");
    let addr = amqp_addr(&p);
    serves_a_fresh_client(&p).await;
    let rss0 = rss_mb(&p);
    let t0 = Instant::now();
    let handshake = Arc::new(pipelined_handshake());
    let mut peak = rss0;
    let (mut after_first, mut half) = (0.0, 0.0);
    for wave in 0..20 {
        let opens: Vec<_> = (0..500)
            .map(|_| {
                let h = handshake.clone();
                tokio::spawn(async move { quick_open(addr, &h).await })
            })
            .collect();
        let mut conns = Vec::new();
        for o in opens {
            conns.push(o.await.expect("handshake completes"));
        }
        peak = peak.max(rss_mb(&p));
        drop(conns);
        // Each wave gone before the next: at most 500 at a time.
        until_no_connections(&p).await;
        if wave == 0 {
            after_first = rss_mb(&p);
        }
        if wave == 9 {
            half = rss_mb(&p);
        }
    }
    let took = t0.elapsed();
    until_no_connections(&p).await;
    let rss1 = rss_mb(&p);
    let cpu = cpu_secs(&p);
    eprintln!(
        "10,000 connections in 20 waves of 500: {took:?} (broker CPU {cpu:.1} s); RSS \
         {rss0:.1} MB before, {after_first:.1} MB after the first wave, {half:.1} MB after 10, \
         peak {peak:.1} MB (500 open), {rss1:.1} MB after all"
    );
    // The allocator keeps pages of earlier waves for the next ones, fragmented: RSS creeps up
    // over the waves and levels off (run to 30,000 connections: +5 MB after the first wave,
    // +7 MB after 10,000, flat from 22,500 on at +6.8).
    // (2026-12-06: 9.0 and 9.7 MB on the code before the cluster, 8.0 to 10.5 with it, on a
    // loaded 2-core machine: the bound was too close to the measure.)
    assert!(
        rss1 - after_first < 12.0,
        "RSS {after_first:.1} -> {rss1:.1} MB after wave 1"
    );
    assert!(rss1 - rss0 < 24.0, "RSS {rss0:.1} -> {rss1:.1} MB");
    assert!(took < Duration::from_secs(60), "{took:?}");
    serves_a_fresh_client(&p).await;
}

fn channel_open(id: u16) -> Vec<u8> {
    frame_bytes(&AMQPFrame::Method(
        id,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ))
}

fn channel_close(id: u16) -> Vec<u8> {
    frame_bytes(&AMQPFrame::Method(
        id,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    ))
}

/// Channel churn: 10,000 channels opened and closed on one connection (pipelined, 2,000 at a
/// time); memory stays flat between the first and the last rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_churn_keeps_memory_flat() {
    let _shared = HEAVY.read().await;
    let (p, _dir) = broker("");
    let mut c = RawConn::open(amqp_addr(&p), 4096).await;
    let (t0, cpu0) = (Instant::now(), cpu_secs(&p));
    let mut rss = Vec::new();
    for _round in 0..5 {
        let opens: Vec<u8> = (1..=2000).flat_map(channel_open).collect();
        c.sock.write_all(&opens).await.unwrap();
        for _ in 0..2000 {
            c.expect(|m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))))
                .await;
        }
        let closes: Vec<u8> = (1..=2000).flat_map(channel_close).collect();
        c.sock.write_all(&closes).await.unwrap();
        for _ in 0..2000 {
            c.expect(|m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))))
                .await;
        }
        rss.push(rss_mb(&p));
    }
    let took = t0.elapsed();
    let cpu = cpu_secs(&p) - cpu0;
    eprintln!(
        "channel churn: 10,000 open/close in {took:?} (broker CPU {cpu:.2} s); RSS after each \
         round {rss:.1?} MB"
    );
    assert!(rss[4] - rss[0] < 4.0, "RSS grew: {rss:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    drop(c);
    serves_a_fresh_client(&p).await;
}

fn publish(channel: u16, key: &str, mandatory: bool) -> AMQPFrame {
    AMQPFrame::Method(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: key.into(),
            mandatory,
            immediate: false,
        })),
    )
}

/// One message (publish, header, one body frame of `size`) on channel 1.
fn message_bytes(key: &str, size: usize, mandatory: bool) -> Vec<u8> {
    let mut out = frame_bytes(&publish(1, key, mandatory));
    // A content header without properties: class 60, weight 0, body size, flags 0.
    let mut header = vec![2u8, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0];
    header.extend_from_slice(&(size as u64).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0xCE]);
    out.extend_from_slice(&header);
    out.push(3);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(size as u32).to_be_bytes());
    out.extend(std::iter::repeat_n(b'x', size));
    out.push(0xCE);
    out
}

async fn open_channel_1(c: &mut RawConn) {
    c.send(&AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ))
    .await;
    c.expect(|m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))))
        .await;
}

/// Frames at frame_max are accepted; one byte over is connection.close 501 FRAME_ERROR (as
/// RabbitMQ); a frame header announcing 4 GiB without the payload is refused from the header
/// alone, without allocating it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_at_and_over_frame_max() {
    let _shared = HEAVY.read().await;
    let (p, _dir) = broker("");
    let addr = amqp_addr(&p);
    let (_conn, ch) = p.channel().await;
    let q = unique("fm");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    // At: a body frame whose payload is exactly frame_max (RabbitMQ's reading of the limit).
    let mut c = RawConn::open(addr, 4096).await;
    open_channel_1(&mut c).await;
    c.sock
        .write_all(&message_bytes(&q, 4096, false))
        .await
        .unwrap();
    let mut got = None;
    for _ in 0..100 {
        got = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        got.expect("the message at frame_max").delivery.data.len(),
        4096
    );
    // Over by one byte.
    c.sock
        .write_all(&message_bytes(&q, 4097, false))
        .await
        .unwrap();
    let (code, text) = c.connection_close().await.expect("connection.close");
    assert_eq!(code, 501, "{text}");
    assert!(text.starts_with("FRAME_ERROR"), "{text}");
    // A 4 GiB frame announced, never sent: refused at once, nothing allocated for it.
    let rss0 = rss_mb(&p);
    let mut huge = Vec::new();
    for _ in 0..20 {
        let mut c = RawConn::open(addr, 4096).await;
        c.sock
            .write_all(&[3, 0, 1, 0xFF, 0xFF, 0xFF, 0xF0])
            .await
            .unwrap();
        huge.push(c);
    }
    for c in &mut huge {
        let t = Instant::now();
        let (code, _) = c.connection_close().await.expect("connection.close");
        assert_eq!(code, 501);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    let rss1 = rss_mb(&p);
    eprintln!("frames: 20 connections announcing 4 GiB frames: RSS {rss0:.1} -> {rss1:.1} MB");
    assert!(rss1 - rss0 < 16.0, "RSS {rss0:.1} -> {rss1:.1} MB");
    drop(huge);
    serves_a_fresh_client(&p).await;
}

/// Every `/api` path the router has (read from src/http/*.rs), with each placeholder filled by
/// `fill`.
fn api_paths(fill: &str) -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http");
    let mut paths = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let src = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let mut rest = src.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = rest[at + 7..].trim_start();
            let Some(lit) = rest.strip_prefix('"') else {
                continue;
            };
            let path = &lit[..lit.find('"').unwrap()];
            if path.starts_with("/api") {
                let mut filled = String::new();
                let mut in_param = false;
                for ch in path.chars() {
                    match ch {
                        '{' => in_param = true,
                        '}' => {
                            in_param = false;
                            filled.push_str(fill);
                        }
                        c if !in_param => filled.push(c),
                        _ => {}
                    }
                }
                paths.push(filled);
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// Unauthenticated requests — no credentials, a wrong password, an unknown user — to every API
/// path, with every method, naming every vhost (and one that does not exist): 401 wherever the
/// method exists (405 where it does not), never an answer, a 404 or a 5xx. RabbitMQ leaves no
/// `/api` path of these open either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_to_every_api_path_are_401() {
    let _shared = HEAVY.read().await;
    let (p, _dir) = broker("auth_failure_delay_ms = 0");
    let r = request(
        "PUT",
        format!("http://{}/api/vhosts/hostile-v", p.http),
        Some(("guest", "guest")),
        None,
        &[],
    )
    .await;
    assert!(r.status < 300, "{}", r.text);
    let mut targets = Vec::new();
    for vhost in ["%2F", "hostile-v", "no-such-vhost"] {
        targets.extend(api_paths(vhost));
    }
    targets.sort();
    targets.dedup();
    assert!(targets.len() > 100, "{} paths", targets.len());
    let t0 = Instant::now();
    let mut requests = 0;
    let creds: [Option<(&str, &str)>; 3] = [None, Some(("guest", "wrong")), Some(("eve", "x"))];
    for path in &targets {
        let mut saw_401 = false;
        for method in ["GET", "PUT", "POST", "DELETE"] {
            for auth in creds {
                let url = format!("http://{}{path}", p.http);
                let r = request(method, url, auth, Some("{}".into()), &[]).await;
                requests += 1;
                match r.status {
                    401 => saw_401 = true,
                    405 => {}
                    s => panic!("{method} {path} with {auth:?}: {s} {}", r.text),
                }
            }
        }
        assert!(saw_401, "{path}: no method answered 401");
    }
    let took = t0.elapsed();
    eprintln!(
        "unauthenticated: {requests} requests to {} paths in {took:?}",
        targets.len()
    );
    serves_a_fresh_client(&p).await;
}

/// The non-reading publisher: 20,000 mandatory, unroutable 64 KiB publishes (1.25 GiB of
/// basic.returns) on a connection whose socket is never read. The broker must stop reading from
/// it once its outbox is full (TCP back-pressure) instead of queueing every return: RSS growth
/// stays under 64 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_never_reads_stays_bounded() {
    let _shared = HEAVY.read().await;
    let (p, _dir) = broker("");
    let c = RawConn::open(amqp_addr(&p), 131_072).await;
    let mut c = c;
    open_channel_1(&mut c).await;
    let rss0 = rss_mb(&p);
    let sent = Arc::new(AtomicU64::new(0));
    let msg = message_bytes("nowhere-at-all", 64 * 1024, true);
    let (rd, mut wr) = c.sock.into_split();
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..20_000 {
            if wr.write_all(&msg).await.is_err() {
                break;
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
        wr
    });
    // Until the writer is done or makes no progress for 2 s (the broker stopped reading).
    let t0 = Instant::now();
    let mut peak = rss0;
    let (mut last, mut last_change) = (0, Instant::now());
    let full = std::env::var_os("WARREN_HOSTILE_FULL").is_some();
    while !writer.is_finished() && last_change.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_mb(&p));
        let n = sent.load(Ordering::Relaxed);
        if n != last {
            (last, last_change) = (n, Instant::now());
        }
        if !full && peak - rss0 > 64.0 {
            break; // failed already: do not grow a gigabyte to prove it
        }
        if t0.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    let n = sent.load(Ordering::Relaxed);
    eprintln!(
        "non-reading publisher: {n} of 20,000 64 KiB mandatory unroutable publishes written in \
         {:?}; RSS {rss0:.1} MB before, peak {peak:.1} MB (+{:.1})",
        t0.elapsed(),
        peak - rss0
    );
    assert!(peak - rss0 < 64.0, "RSS {rss0:.1} -> peak {peak:.1} MB");
    writer.abort();
    let _ = writer.await;
    drop(rd); // both halves gone: the socket closes
    until_no_connections(&p).await;
    serves_a_fresh_client(&p).await;
    eprintln!(
        "non-reading publisher: RSS after it left: {:.1} MB",
        rss_mb(&p)
    );
}

/// Read until `n` more frames have come (their headers walked by hand, nothing parsed).
async fn skip_frames(c: &mut RawConn, mut n: usize) {
    let mut chunk = [0u8; 8192];
    loop {
        let mut at = 0;
        while n > 0 && c.buf.len() >= at + 7 {
            let size = u32::from_be_bytes(c.buf[at + 3..at + 7].try_into().unwrap()) as usize;
            if c.buf.len() < at + 8 + size {
                break;
            }
            at += 8 + size;
            n -= 1;
        }
        c.buf.drain(..at);
        if n == 0 {
            return;
        }
        let r = tokio::time::timeout(Duration::from_secs(10), c.sock.read(&mut chunk)).await;
        let k = r.expect("frames within 10 s").unwrap();
        assert!(k > 0, "closed");
        c.buf.extend_from_slice(&chunk[..k]);
    }
}

/// Frames of `buf` that are complete: count the basic.deliver ones, drop them from `buf`.
fn count_delivers(buf: &mut Vec<u8>) -> u64 {
    let (mut at, mut n) = (0, 0);
    while buf.len() >= at + 7 {
        let size = u32::from_be_bytes(buf[at + 3..at + 7].try_into().unwrap()) as usize;
        if buf.len() < at + 8 + size {
            break;
        }
        if buf[at] == 1 && size >= 4 && buf[at + 7..at + 11] == [0, 60, 0, 60] {
            n += 1;
        }
        at += 8 + size;
    }
    buf.drain(..at);
    n
}

/// Publish and consume 1 KiB messages for `d` (raw sockets, a publisher and a no-ack consumer
/// on their own connections, at most 20,000 messages in flight): consumed messages per second.
async fn neighbour_rate(p: &Proc, d: Duration) -> f64 {
    let addr = amqp_addr(p);
    let (conn, ch) = p.channel().await;
    let q = unique("neighbour");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let handshake = pipelined_handshake();
    let mut consumer = quick_open(addr, &handshake).await;
    let mut setup = channel_open(1);
    setup.extend(frame_bytes(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.as_str().into(),
            consumer_tag: "n".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )));
    consumer.write_all(&setup).await.unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let counter = got.clone();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(1 << 16);
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match consumer.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            counter.fetch_add(count_delivers(&mut buf), Ordering::Relaxed);
        }
    });
    let mut publisher = quick_open(addr, &handshake).await;
    publisher.write_all(&channel_open(1)).await.unwrap();
    let batch: Vec<u8> = (0..100)
        .flat_map(|_| message_bytes(&q, 1024, false))
        .collect();
    // The consumer is set up once a first message comes back.
    publisher.write_all(&batch).await.unwrap();
    while got.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (start, t0) = (got.load(Ordering::Relaxed), Instant::now());
    let mut published = 100u64;
    while t0.elapsed() < d {
        if published - got.load(Ordering::Relaxed) > 20_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        tokio::time::timeout(Duration::from_secs(10), publisher.write_all(&batch))
            .await
            .expect("the broker reads the neighbour's publishes")
            .unwrap();
        published += 100;
    }
    let rate = (got.load(Ordering::Relaxed) - start) as f64 / t0.elapsed().as_secs_f64();
    reader.abort();
    drop(publisher);
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
    rate
}

/// Start the hostile clients (all of them, or the one kind named by HOSTILE_ONLY: slow, churn,
/// chan, http), counting their operations in `hostile`, until `stop`.
fn start_hostiles(
    addr: SocketAddr,
    http: String,
    stop: &Arc<AtomicBool>,
    hostile: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    // Slowloris: 200 sockets that never finish the header, replaced as they are cut.
    let only = std::env::var("HOSTILE_ONLY").unwrap_or_default();
    let on = |k: &str| only.is_empty() || only == k;
    for _ in 0..if on("slow") { 200 } else { 0 } {
        let (stop, n) = (stop.clone(), hostile.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = TcpStream::connect(addr).await {
                    let _ = s.write_all(b"AM").await;
                    let mut b = [0u8; 64];
                    let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await;
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Connection churn, channel churn, over-size frames, unauthenticated API requests.
    if on("churn") {
        let (stop, n) = (stop.clone(), hostile.clone());
        tasks.push(tokio::spawn(async move {
            let handshake = pipelined_handshake();
            while !stop.load(Ordering::Relaxed) {
                drop(quick_open(addr, &handshake).await);
                let mut c = RawConn::open(addr, 4096).await;
                c.sock
                    .write_all(&[3, 0, 1, 0xFF, 0xFF, 0xFF, 0xF0])
                    .await
                    .unwrap();
                let _ = c.connection_close().await;
                n.fetch_add(2, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    if on("chan") {
        let (stop, n) = (stop.clone(), hostile.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = RawConn::open(addr, 4096).await;
            while !stop.load(Ordering::Relaxed) {
                let opens: Vec<u8> = (1..=100).flat_map(channel_open).collect();
                c.sock.write_all(&opens).await.unwrap();
                skip_frames(&mut c, 100).await;
                let closes: Vec<u8> = (1..=100).flat_map(channel_close).collect();
                c.sock.write_all(&closes).await.unwrap();
                skip_frames(&mut c, 100).await;
                n.fetch_add(200, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    if on("http") {
        let (stop, n, http) = (stop.clone(), hostile.clone(), http.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = request(
                    "GET",
                    format!("http://{http}/api/queues"),
                    Some(("guest", "wrong")),
                    None,
                    &[],
                )
                .await;
                assert_eq!(r.status, 401);
                n.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tasks
}

/// A well-behaved neighbour keeps at least half its solo throughput while slowloris sockets,
/// connection churn, channel churn, oversized frames and unauthenticated API requests run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_keeps_half_its_throughput_beside_hostile_clients() {
    let _alone = HEAVY.write().await;
    // Failed API logins unthrottled: the flood below hits the broker at full speed (and the
    // neighbour, from the same address, is not delayed by it).
    let (p, _dir) = broker("handshake_timeout_ms = 1000\nauth_failure_delay_ms = 0");
    let addr = amqp_addr(&p);
    // Other work on the machine makes single runs noisy: the best of two runs each, alone before
    // and after, and beside the hostile clients; a second attempt if that is still short.
    let d = Duration::from_millis(1500);
    neighbour_rate(&p, Duration::from_millis(300)).await; // warm up
    let mut ratio = 0.0;
    for attempt in 1..=2 {
        let solo_before = neighbour_rate(&p, d).await;
        let stop = Arc::new(AtomicBool::new(false));
        let hostile = Arc::new(AtomicU64::new(0));
        let tasks = start_hostiles(addr, p.http.clone(), &stop, &hostile);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = hostile.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let beside = [neighbour_rate(&p, d).await, neighbour_rate(&p, d).await];
        let hostile_ops = hostile.load(Ordering::Relaxed) - before;
        let hostile_secs = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let solo_after = neighbour_rate(&p, d).await;
        let solo = solo_before.max(solo_after);
        ratio = beside[0].max(beside[1]) / solo;
        eprintln!(
            "neighbour (attempt {attempt}): {solo_before:.0} and {solo_after:.0} msg/s alone, \
             {:.0} and {:.0} msg/s beside hostile clients ({:.0} hostile operations/s): ratio \
             {ratio:.2}; broker RSS {:.1} MB",
            beside[0],
            beside[1],
            hostile_ops as f64 / hostile_secs,
            rss_mb(&p)
        );
        if ratio >= 0.5 {
            break;
        }
    }
    assert!(ratio >= 0.5, "neighbour kept {ratio:.2} of its solo rate");
    serves_a_fresh_client(&p).await;
}
