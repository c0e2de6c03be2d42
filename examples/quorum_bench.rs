//! A load generator for replicated (quorum) queues on a cluster, Warren's or RabbitMQ's alike
//! (issue 14's side-by-side figures): publishers with confirms and a window of unconfirmed
//! messages, each message's confirm latency measured, consumers acking, clients spread over the
//! cluster's nodes.
//!
//! ```text
//! cargo run --release --example quorum_bench -- \
//!     --urls amqp://guest:guest@127.0.0.1:5791/%2f,amqp://guest:guest@127.0.0.1:5792/%2f,amqp://guest:guest@127.0.0.1:5793/%2f \
//!     --queues 4 --producers 4 --consumers 4 --size 1024 --duration 20 --window 100
//! ```
//!
//! Placement: queue `i` (named `PREFIX-i`) is declared through node `i % N` (RabbitMQ's default
//! leader locator, client-local, puts its leader there); producer `p` publishes to queue
//! `p % queues` through node `(p + pub_offset) % N`; consumer `c` consumes queue `c % queues`
//! through node `(c + con_offset) % N` (defaults 0 and 1: a producer on the node where the queue was
//! declared, its consumer on the next node). Queues are deleted and declared afresh (durable,
//! `x-queue-type` = `--queue-type`, plus `--args k=v,...`) before the run and deleted after it unless
//! `--keep`.
//!
//! Measured: every producer keeps up to `--window` messages unconfirmed; a message's confirm
//! latency runs from the moment its basic.publish is handed to the client library to its
//! basic.ack. Only messages published after `--warmup` seconds count, until `--duration` more
//! seconds have passed. Consumers (prefetch `--prefetch`) ack with `multiple` every `--ack-every`
//! deliveries. With `--broker-pids`, the brokers' CPU time over the window is reported too (cores,
//! and µs per confirmed message), and always the generator's own. Output: one JSON line on stdout,
//! a summary on stderr.

use clap::Parser;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// AMQP URLs, one per node, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    urls: Vec<String>,
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Publishers (default: one per queue).
    #[arg(long)]
    producers: Option<usize>,
    /// Consumers (default: one per queue; 0 for none).
    #[arg(long)]
    consumers: Option<usize>,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Unconfirmed messages in flight per publisher.
    #[arg(long, default_value_t = 100)]
    window: usize,
    #[arg(long, default_value_t = 200)]
    prefetch: u16,
    #[arg(long, default_value_t = 50)]
    ack_every: u64,
    /// `x-queue-type` of the declared queues (quorum, classic, stream).
    #[arg(long, default_value = "quorum")]
    queue_type: String,
    /// Extra declare arguments, k=v,... (integers as longs, anything else as strings).
    #[arg(long, default_value = "")]
    args: String,
    #[arg(long, default_value = "qbench")]
    prefix: String,
    #[arg(long, default_value_t = 0)]
    pub_offset: usize,
    #[arg(long, default_value_t = 1)]
    con_offset: usize,
    /// Transient messages (delivery mode 1) instead of persistent.
    #[arg(long)]
    transient: bool,
    /// Leave the queues in place after the run.
    #[arg(long)]
    keep: bool,
    /// The brokers' process ids (comma-separated): their CPU time over the measured window is
    /// reported (from /proc), as figures per message survive a machine shared with other work.
    #[arg(long, value_delimiter = ',')]
    broker_pids: Vec<u32>,
}

async fn connect(uri: &str, name: &str) -> Connection {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(Duration::from_secs(10), Connection::connect(uri, props)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("connect {uri}: {e}"),
        Err(_) => panic!("connect {uri}: timeout"),
    }
}

fn queue_args(a: &Args) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(a.queue_type.as_str().into()),
    );
    for kv in a.args.split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            let v = match v.parse::<i64>() {
                Ok(n) => AMQPValue::LongLongInt(n),
                Err(_) => AMQPValue::LongString(v.into()),
            };
            t.insert(k.into(), v);
        }
    }
    t
}

fn qname(a: &Args, i: usize) -> String {
    format!("{}-{i}", a.prefix)
}

/// Deletes and declares the queues, queue `i` through node `i % N`.
async fn setup(a: &Args) {
    for i in 0..a.queues {
        let conn = connect(&a.urls[i % a.urls.len()], "quorum_bench-setup").await;
        let ch = conn.create_channel().await.unwrap();
        ch.queue_delete(qname(a, i).as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete the old queue");
        ch.queue_declare(
            qname(a, i).as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_args(a),
        )
        .await
        .expect("declare");
        let _ = conn.close(200, "setup done".into()).await;
    }
}

async fn teardown(a: &Args) {
    let conn = connect(&a.urls[0], "quorum_bench-teardown").await;
    let ch = conn.create_channel().await.unwrap();
    for i in 0..a.queues {
        let _ = ch
            .queue_delete(qname(a, i).as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

#[derive(Default)]
struct PubResult {
    latencies_us: Vec<u32>,
    acked: u64,
    nacked: u64,
}

/// One publisher: keeps `window` messages unconfirmed until the measured window ends, then waits
/// for the rest. Counts confirms of messages published inside the window.
async fn producer(ch: Channel, queue: String, a: Arc<Args>, w: Arc<Window>) -> PubResult {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body: Arc<[u8]> = vec![b'x'; a.size].into();
    let props = BasicProperties::default().with_delivery_mode(if a.transient { 1 } else { 2 });
    let mut inflight = FuturesUnordered::new();
    let mut r = PubResult::default();
    let record = |(t0, latency, ok): (Instant, Duration, bool), r: &mut PubResult| {
        if w.contains(t0) {
            if ok {
                r.acked += 1;
                r.latencies_us
                    .push(latency.as_micros().min(u32::MAX as u128) as u32);
            } else {
                r.nacked += 1;
            }
        }
    };
    while Instant::now() < w.end {
        while inflight.len() >= a.window {
            let done = inflight.next().await.unwrap();
            record(done, &mut r);
        }
        let (ch, body, props, queue) = (ch.clone(), body.clone(), props.clone(), queue.clone());
        // The body runs at its first poll, in push order (the client assigns the delivery tag
        // then), so the clock starts when the publish is handed to the client.
        inflight.push(async move {
            let t0 = Instant::now();
            let confirm = ch
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .expect("basic.publish");
            let c = confirm.await.expect("confirm");
            (t0, t0.elapsed(), c.is_ack())
        });
    }
    let drain_until = Instant::now() + Duration::from_secs(60);
    while let Ok(Some(done)) = tokio::time::timeout_at(drain_until.into(), inflight.next()).await {
        record(done, &mut r);
    }
    r
}

/// One consumer: counts deliveries inside the measured window; acks every `ack_every`.
async fn consumer(
    ch: Channel,
    queue: String,
    a: Arc<Args>,
    w: Arc<Window>,
    counted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> u64 {
    ch.basic_qos(a.prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut c = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut n = 0u64;
    let mut total = 0u64;
    loop {
        let d = match tokio::time::timeout(Duration::from_millis(200), c.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(_) => break,
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(_) => continue,
        };
        total += 1;
        if w.contains(Instant::now()) {
            n += 1;
            counted.fetch_add(1, Ordering::Relaxed);
        }
        if total.is_multiple_of(a.ack_every) {
            d.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
    }
    n
}

/// User + system CPU seconds of a process, from /proc/PID/stat (0 if unreadable).
fn cpu_s(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; 100 ticks/s.
    (ticks(11) + ticks(12)) / 100.0
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let a = Arc::new(Args::parse());
    let nodes = a.urls.len();
    let producers = a.producers.unwrap_or(a.queues);
    let consumers = a.consumers.unwrap_or(a.queues);
    setup(&a).await;

    // Connect everyone first, then start the clock.
    let mut pub_chans = Vec::new();
    let mut conns = Vec::new();
    for p in 0..producers {
        let c = connect(
            &a.urls[(p + a.pub_offset) % nodes],
            &format!("quorum_bench-producer-{p}"),
        )
        .await;
        pub_chans.push((c.create_channel().await.unwrap(), qname(&a, p % a.queues)));
        conns.push(c);
    }
    let mut con_chans = Vec::new();
    for j in 0..consumers {
        let c = connect(
            &a.urls[(j + a.con_offset) % nodes],
            &format!("quorum_bench-consumer-{j}"),
        )
        .await;
        con_chans.push((c.create_channel().await.unwrap(), qname(&a, j % a.queues)));
        conns.push(c);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let w = Arc::new(Window {
        start: start + Duration::from_secs_f64(a.warmup),
        end: start + Duration::from_secs_f64(a.warmup + a.duration),
    });
    let counted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut con_tasks = Vec::new();
    for (ch, q) in con_chans {
        con_tasks.push(tokio::spawn(consumer(
            ch,
            q,
            a.clone(),
            w.clone(),
            counted.clone(),
            stop.clone(),
        )));
    }
    let cpu = {
        let (w, pids) = (w.clone(), a.broker_pids.clone());
        tokio::spawn(async move {
            let read = |pids: &[u32]| -> (f64, f64) {
                let b = pids.iter().map(|p| cpu_s(&p.to_string())).sum();
                (b, cpu_s("self"))
            };
            tokio::time::sleep_until(w.start.into()).await;
            let (b0, g0) = read(&pids);
            tokio::time::sleep_until(w.end.into()).await;
            let (b1, g1) = read(&pids);
            (b1 - b0, g1 - g0)
        })
    };
    tokio::time::sleep_until(start.into()).await;
    let mut pub_tasks = Vec::new();
    for (ch, q) in pub_chans {
        pub_tasks.push(tokio::spawn(producer(ch, q, a.clone(), w.clone())));
    }
    let mut lat = Vec::new();
    let (mut acked, mut nacked) = (0u64, 0u64);
    for t in pub_tasks {
        let r = t.await.unwrap();
        lat.extend(r.latencies_us);
        acked += r.acked;
        nacked += r.nacked;
    }
    // Consumers have had the window; let them drain what is left, briefly, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut consumed = 0u64;
    for t in con_tasks {
        consumed += t.await.unwrap();
    }
    for c in conns {
        let _ = c.close(200, "bye".into()).await;
    }
    if !a.keep {
        teardown(&a).await;
    }
    let (broker_cpu, gen_cpu) = cpu.await.unwrap();
    lat.sort_unstable();
    let secs = a.duration;
    let json = serde_json::json!({
        "queue_type": a.queue_type,
        "nodes": nodes,
        "queues": a.queues,
        "producers": producers,
        "consumers": consumers,
        "size": a.size,
        "window": a.window,
        "persistent": !a.transient,
        "duration_s": secs,
        "confirmed_msgs_per_s": (acked as f64 / secs).round(),
        "consumed_msgs_per_s": (consumed as f64 / secs).round(),
        "nacked": nacked,
        "broker_cpu_cores": (broker_cpu / secs * 100.0).round() / 100.0,
        "broker_cpu_us_per_msg": if acked > 0 { (broker_cpu * 1e6 / acked as f64).round() } else { 0.0 },
        "generator_cpu_cores": (gen_cpu / secs * 100.0).round() / 100.0,
        "confirm_latency_us": {
            "p50": pct(&lat, 0.50),
            "p90": pct(&lat, 0.90),
            "p99": pct(&lat, 0.99),
            "p999": pct(&lat, 0.999),
            "max": lat.last().copied().unwrap_or(0),
        },
    });
    println!("{json}");
    eprintln!(
        "{} {}q {}p {}c {} B window {}: confirmed {:.0} msg/s, consumed {:.0} msg/s, confirm latency p50 {} us p99 {} us, nacked {}",
        a.queue_type,
        a.queues,
        producers,
        consumers,
        a.size,
        a.window,
        acked as f64 / secs,
        consumed as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        nacked
    );
}
