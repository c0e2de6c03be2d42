//! Message lifecycle figures (reported, not timed tests): a broker started in-process, driven by
//! lapin over loopback.
//!
//! Run: `cargo bench --bench lifecycle -- expiry` or `-- delayed` (or both, the default).
//!
//! - `expiry`: 1,000,000 messages with mixed per-message TTLs (0.3–2.3 s, a quarter without),
//!   then a consumer drains the queue while the TTLs run out. Reports the consumer's rate in
//!   each 250 ms window next to how many messages expired in it, and a baseline run without
//!   TTLs.
//! - `delayed`: 1,000,000 messages through an `x-delayed-message` exchange with delays spread
//!   over an hour: memory per held message (RSS and the broker's own message accounting); with
//!   them held, 20,000 probes due within 20 s measure lateness (p50/p99/max after the due
//!   time); then 1,000,000 delays spread over 60 s measure lateness at ~17k releases/s.

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren::broker::message::{Message, Properties};
use warren::config::Config;
use warren::{Server, ServerHandle};

const N: usize = 1_000_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

async fn start() -> (ServerHandle, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("warren-bench-life-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let c = Config {
        amqp_listen: "127.0.0.1:0".into(),
        http_listen: "127.0.0.1:0".into(),
        data_dir: dir.clone(),
        memory_high_watermark_bytes: 16 << 30,
        ..Config::default()
    };
    (Server::start(c).await.expect("broker starts"), dir)
}

async fn connect(h: &ServerHandle) -> Connection {
    Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", h.amqp_addr),
        ConnectionProperties::default(),
    )
    .await
    .expect("connect")
}

fn queue_counts(h: &ServerHandle, q: &str) -> (u32, u64) {
    let v = h.state.broker.vhost("/").unwrap();
    let c = v.queue(q, 0).unwrap().counts();
    (c.ready, c.unacked)
}

/// A message as the channel would build it: raw properties (optionally `expiration` and a
/// headers table with `x-delay`), a body.
fn message(
    h: &ServerHandle,
    exchange: &str,
    key: &str,
    ttl: Option<u64>,
    delay: Option<i64>,
    body: Vec<u8>,
) -> Arc<Message> {
    let mut flags = 0u16;
    let mut fields = Vec::new();
    if let Some(d) = delay {
        flags |= 1 << 13;
        let mut table = Vec::new();
        table.push(7u8);
        table.extend_from_slice(b"x-delay");
        table.push(b'l');
        table.extend_from_slice(&d.to_be_bytes());
        fields.extend_from_slice(&(table.len() as u32).to_be_bytes());
        fields.extend_from_slice(&table);
    }
    if let Some(t) = ttl {
        flags |= 1 << 8;
        let s = t.to_string();
        fields.push(s.len() as u8);
        fields.extend_from_slice(s.as_bytes());
    }
    let mut raw = flags.to_be_bytes().to_vec();
    raw.extend_from_slice(&fields);
    Arc::new(Message::new(
        Bytes::copy_from_slice(exchange.as_bytes()),
        Bytes::copy_from_slice(key.as_bytes()),
        Properties::parse(Bytes::from(raw)).expect("properties"),
        Bytes::from(body),
        h.state.broker.memory,
    ))
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn expiry_run(h: &ServerHandle, with_ttl: bool) {
    let conn = connect(h).await;
    let ch = conn.create_channel().await.unwrap();
    let q = if with_ttl { "bench-ttl" } else { "bench-plain" };
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Fill in-process (a lapin publisher manages ~25k confirmed msg/s here: the TTLs would
    // run out during the fill); the consumer is a real client.
    let queue = h.state.broker.vhost("/").unwrap().queue(q, 0).unwrap();
    let t0 = Instant::now();
    let mut rng = Rng(0x2545F4914F6CDD1D);
    for i in 0..N {
        let ttl = (with_ttl && i % 4 != 0).then(|| 300 + rng.next() % 2000);
        queue.enqueue(message(h, "", q, ttl, None, vec![b'x'; 16]), false);
    }
    let filled = t0.elapsed();
    println!(
        "  {q}: filled with {N} in {:.2} s{}",
        filled.as_secs_f64(),
        if with_ttl {
            " (75% with TTLs 0.3–2.3 s, 25% without)"
        } else {
            " (no TTLs)"
        }
    );
    let cch = conn.create_channel().await.unwrap();
    cch.basic_qos(2000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut cons = cch
        .basic_consume(
            q.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = acked.clone();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(1500), cons.next()).await
        {
            n += 1;
            if n.is_multiple_of(100) {
                d.acker
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .unwrap();
                counter.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
        n
    });
    let held = || {
        let (r, u) = queue_counts(h, q);
        r as u64 + u
    };
    let mut last_acked = 0;
    let mut last_held = held();
    let mut windows = Vec::new();
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let a = acked.load(std::sync::atomic::Ordering::Relaxed);
        let now_held = held();
        let got = a - last_acked;
        // What left the queue in the window: acked by the consumer, or expired.
        let expired = (last_held as i64 - now_held as i64 - got as i64).max(0);
        windows.push((t0.elapsed(), got, expired, now_held));
        last_acked = a;
        last_held = now_held;
        if now_held == 0 && got == 0 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let total = reader.await.unwrap();
    println!("  window end (since fill start) | acked msg/s | expired in window | left in queue");
    for (at, got, expired, left) in &windows {
        if *got == 0 && *expired == 0 {
            continue;
        }
        println!(
            "  {:>6.2} s | {:>10} | {:>9} | {:>8}",
            at.as_secs_f64(),
            got * 4,
            expired,
            left
        );
    }
    let busy: Vec<_> = windows.iter().filter(|w| w.1 > 0).collect();
    let during: Vec<_> = busy.iter().copied().filter(|w| w.2 > 1000).collect();
    let rate = |ws: &[&(Duration, u64, i64, u64)]| {
        if ws.is_empty() {
            0.0
        } else {
            ws.iter().map(|w| w.1).sum::<u64>() as f64 / (ws.len() as f64 * 0.25)
        }
    };
    println!(
        "  {q}: consumed {total}, expired {}; consumer {:.0} msg/s over all busy windows, {:.0} msg/s in the {} windows where over 1,000 expired",
        N as u64 - total,
        rate(&busy),
        rate(&during),
        during.len()
    );
    let _ = conn.close(200, "bye".into()).await;
}

/// Consume `n` messages from `q`; each body is its due time in µs since `epoch`.
async fn lateness(conn: &Connection, q: &str, n: usize, epoch: Instant) -> Vec<i64> {
    let ch = conn.create_channel().await.unwrap();
    let mut cons = ch
        .basic_consume(
            q.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut late = Vec::with_capacity(n);
    while late.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(120), cons.next())
            .await
            .expect("delayed message in time")
            .unwrap()
            .unwrap();
        let now = epoch.elapsed().as_micros() as i64;
        let due = u64::from_be_bytes(d.data[..8].try_into().unwrap()) as i64;
        late.push(now - due);
    }
    late.sort_unstable();
    late
}

fn pct(v: &[i64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

async fn delayed_run(h: &ServerHandle) {
    let conn = connect(h).await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString(LongString::from("direct")),
    );
    ch.exchange_declare(
        "bench-delayed".into(),
        lapin::ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        args,
    )
    .await
    .unwrap();
    for (q, key) in [
        ("bench-hour", "hour"),
        ("bench-probe", "probe"),
        ("bench-minute", "minute"),
    ] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            q.into(),
            "bench-delayed".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let vhost = h.state.broker.vhost("/").unwrap();
    let epoch = Instant::now();
    // Publishing goes through the same call the channel makes for a publish to the exchange
    // (in-process: a lapin publisher would take ~40 s per million here).
    let publish = |key: &str, delay_ms: u64| {
        let due = epoch.elapsed().as_micros() as u64 + delay_ms * 1000;
        let m = message(
            h,
            "bench-delayed",
            key,
            None,
            Some(delay_ms as i64),
            due.to_be_bytes().to_vec(),
        );
        assert!(vhost
            .delay_publish("bench-delayed", &m, &[])
            .unwrap()
            .is_some());
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, acct0) = (rss_kib(), h.state.broker.memory.used());
    let t = Instant::now();
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for _ in 0..N {
        publish("hour", 60_000 + rng.next() % 3_540_000);
    }
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss1, acct1) = (rss_kib(), h.state.broker.memory.used());
    println!(
        "  1,000,000 delayed over 1 h: scheduled in {:.2} s ({:.0}/s); held {}; RSS +{} MiB = {} B per message; broker-accounted message bytes {} B per message (8-byte body, x-delay header)",
        took.as_secs_f64(),
        N as f64 / took.as_secs_f64(),
        vhost.delayed.len(),
        (rss1 - rss0) / 1024,
        (rss1 - rss0) * 1024 / N as u64,
        (acct1 - acct0) / N as u64
    );
    // Probes due within 20 s while the million wait.
    let probes = 20_000;
    let consumer = {
        let conn2 = connect(h).await;
        tokio::spawn(async move {
            let l = lateness(&conn2, "bench-probe", probes, epoch).await;
            drop(conn2);
            l
        })
    };
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for _ in 0..probes {
        publish("probe", 1000 + rng.next() % 20_000);
    }
    let late = consumer.await.unwrap();
    println!(
        "  {probes} probes due within 20 s, with 1,000,000 held: lateness after due p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (min {:.2} ms)",
        pct(&late, 0.5),
        pct(&late, 0.99),
        pct(&late, 1.0),
        pct(&late, 0.0)
    );
    let hist = vhost.delayed.lateness_histogram();
    println!(
        "  broker-side lateness so far (taken out after due, ms): <1: {}, <2: {}, <5: {}, <10: {}, <20: {}, <50: {}, <100: {}, more: {}",
        hist[0], hist[1], hist[2], hist[3], hist[4], hist[5], hist[6], hist[7]
    );
    // A million due within a minute: ~17k releases per second.
    let consumer = {
        let conn2 = connect(h).await;
        tokio::spawn(async move {
            let l = lateness(&conn2, "bench-minute", N, epoch).await;
            drop(conn2);
            l
        })
    };
    let t = Instant::now();
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    for _ in 0..N {
        publish("minute", 10_000 + rng.next() % 60_000);
    }
    println!(
        "  1,000,000 more scheduled in {:.2} s, due 10–70 s later",
        t.elapsed().as_secs_f64()
    );
    let late = consumer.await.unwrap();
    println!(
        "  1,000,000 due over 60 s (~17k/s released), 1,000,000 others held: lateness p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&late, 0.5),
        pct(&late, 0.99),
        pct(&late, 1.0)
    );
    let hist = vhost.delayed.lateness_histogram();
    println!(
        "  broker-side lateness of all releases (taken out after due, ms): <1: {}, <2: {}, <5: {}, <10: {}, <20: {}, <50: {}, <100: {}, more: {}",
        hist[0], hist[1], hist[2], hist[3], hist[4], hist[5], hist[6], hist[7]
    );
    let _ = conn.close(200, "bye".into()).await;
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = which.is_empty();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (h, dir) = start().await;
        if all || which.iter().any(|w| w == "expiry") {
            println!("expiry: consumer throughput during mass expiry (baseline first)");
            expiry_run(&h, false).await;
            expiry_run(&h, true).await;
        }
        if all || which.iter().any(|w| w == "delayed") {
            println!("delayed: memory and lateness");
            delayed_run(&h).await;
        }
        h.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    });
}
