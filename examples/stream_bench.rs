//! A stream load generator for the figures in docs/performance.md (RabbitMQ's PerfTest has no
//! 0-9-1 stream mode): publish with confirms into a stream, read it at the tail and replay it from
//! `first` with several readers, against Warren or RabbitMQ alike.
//!
//! ```text
//! cargo run --release --example stream_bench -- URI publish STREAM COUNT SIZE [CONFIRM_WINDOW]
//! cargo run --release --example stream_bench -- URI tail STREAM COUNT SIZE      (publish + 1 reader at the tail)
//! cargo run --release --example stream_bench -- URI replay STREAM COUNT READERS [PREFETCH] [BROKER_PID]
//! ```
//! `publish` declares the stream (durable, `x-queue-type: stream`, plus `STREAM_ARGS`, e.g.
//! `x-max-length-bytes=268435456,x-max-age=7D`) if needed. `replay` starts
//! READERS consumers from `first`, each on its own connection, and waits until each has COUNT
//! messages; with BROKER_PID it samples the broker's RSS every 50 ms and prints the peak. Output:
//! one line per figure, msg/s.

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(n: usize) -> Option<String> {
    std::env::args().nth(n)
}

async fn connect(uri: &str) -> Connection {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("connect")
}

async fn declare(ch: &lapin::Channel, stream: &str) {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    // STREAM_ARGS="x-max-length-bytes=268435456,x-max-age=7D": extra declare arguments
    // (integers as longs, anything else as strings).
    for kv in std::env::var("STREAM_ARGS").unwrap_or_default().split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            let v = match v.parse::<i64>() {
                Ok(n) => AMQPValue::LongLongInt(n),
                Err(_) => AMQPValue::LongString(v.into()),
            };
            t.insert(k.into(), v);
        }
    }
    ch.queue_declare(
        stream.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        t,
    )
    .await
    .expect("declare the stream");
}

/// Publish `count` messages of `size` bytes with at most `window` unconfirmed; returns msg/s.
async fn publish(uri: &str, stream: &str, count: u64, size: usize, window: usize) -> f64 {
    let conn = connect(uri).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, stream).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = vec![b'x'; size];
    let start = Instant::now();
    // Up to 256 publishes handed to lapin at once (as PerfTest-like generators pipeline them),
    // and at most `window` unconfirmed.
    let mut handed = futures_util::stream::FuturesOrdered::new();
    let mut unconfirmed = std::collections::VecDeque::with_capacity(window);
    for _ in 0..count {
        while handed.len() >= 256 {
            let p: lapin::Result<_> = handed.next().await.unwrap();
            unconfirmed.push_back(p.expect("basic.publish"));
        }
        while unconfirmed.len() >= window {
            let c: lapin::Result<lapin::Confirmation> = unconfirmed.pop_front().unwrap().await;
            assert!(c.unwrap().is_ack());
        }
        handed.push_back(ch.basic_publish(
            "".into(),
            stream.into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        ));
    }
    while let Some(p) = handed.next().await {
        let p: lapin::Result<_> = p;
        unconfirmed.push_back(p.expect("basic.publish"));
    }
    for c in unconfirmed {
        assert!(c.await.unwrap().is_ack());
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// Read `count` messages from `offset` with `prefetch`, acking every 50 (multiple); returns
/// msg/s from the first delivery.
async fn read(uri: &str, stream: &str, offset: &str, count: u64, prefetch: u16) -> f64 {
    let conn = connect(uri).await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString(LongString::from(offset)),
    );
    let mut c = ch
        .basic_consume(
            stream.into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .expect("consume");
    let mut start = None;
    let mut n = 0u64;
    while n < count {
        let d = tokio::time::timeout(Duration::from_secs(60), c.next())
            .await
            .expect("a delivery within 60 s")
            .expect("consumer open")
            .expect("delivery");
        start.get_or_insert_with(Instant::now);
        n += 1;
        if n.is_multiple_of(50) || n == count {
            d.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
    }
    n as f64 / start.unwrap().elapsed().as_secs_f64()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let uri = arg(1).expect("URI");
    let mode = arg(2).expect("mode");
    let stream = arg(3).expect("STREAM");
    let count: u64 = arg(4).expect("COUNT").parse().unwrap();
    match mode.as_str() {
        "publish" => {
            let size = arg(5).map_or(1024, |s| s.parse().unwrap());
            let window = arg(6).map_or(1000, |s| s.parse().unwrap());
            let r = publish(&uri, &stream, count, size, window).await;
            println!("publish_confirmed_msgs_per_s {r:.0}");
        }
        "tail" => {
            let size = arg(5).map_or(1024, |s| s.parse().unwrap());
            {
                let conn = connect(&uri).await;
                declare(&conn.create_channel().await.unwrap(), &stream).await;
            }
            let (u, s) = (uri.clone(), stream.clone());
            let reader = tokio::spawn(async move { read(&u, &s, "next", count, 1000).await });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let p = publish(&uri, &stream, count, size, 1000).await;
            let r = reader.await.unwrap();
            println!("publish_confirmed_msgs_per_s {p:.0}");
            println!("tail_reader_msgs_per_s {r:.0}");
        }
        "replay" => {
            let readers: usize = arg(5).map_or(10, |s| s.parse().unwrap());
            let prefetch: u16 = arg(6).map_or(1000, |s| s.parse().unwrap());
            let pid: Option<u32> = arg(7).map(|s| s.parse().unwrap());
            let peak = Arc::new(AtomicU64::new(0));
            let sampler = pid.map(|pid| {
                let peak = peak.clone();
                tokio::spawn(async move {
                    loop {
                        peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            });
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..readers {
                let (u, s) = (uri.clone(), stream.clone());
                tasks.push(tokio::spawn(async move {
                    read(&u, &s, "first", count, prefetch).await
                }));
            }
            let mut rates = Vec::new();
            for t in tasks {
                rates.push(t.await.unwrap());
            }
            let wall = start.elapsed().as_secs_f64();
            rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "replay_readers {readers} per_reader_msgs_per_s min {:.0} median {:.0} max {:.0}",
                rates[0],
                rates[rates.len() / 2],
                rates[rates.len() - 1]
            );
            println!(
                "replay_total_msgs_per_s {:.0} wall_s {wall:.1}",
                (count * readers as u64) as f64 / wall
            );
            if let Some(s) = sampler {
                s.abort();
                println!(
                    "broker_peak_rss_mb {:.1}",
                    peak.load(Ordering::Relaxed) as f64 / 1024.0
                );
            }
        }
        other => panic!("unknown mode {other}"),
    }
}
