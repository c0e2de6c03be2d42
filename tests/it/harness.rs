//! Start a broker on port 0, connect lapin to it, and read AMQP reply codes out of errors.

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::Duration;
use warren::config::Config;
use warren::{Server, ServerHandle};

mod http;
pub use http::*;
pub mod raw_client;

pub struct Broker {
    pub handle: ServerHandle,
    _data_dir: DirGuard,
}

/// Removes a test's data directory when the test is done with it.
struct DirGuard(std::path::PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty data directory for one broker.
pub fn temp_data_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("warren-it-{}-{}", std::process::id(), unique("d")));
    let _ = std::fs::remove_dir_all(&d);
    d
}

impl Broker {
    pub async fn start() -> Broker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Broker {
        let mut c = Config {
            amqp_listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            prometheus_listen: "127.0.0.1:0".into(),
            data_dir: temp_data_dir(),
            ..Config::default()
        };
        f(&mut c);
        let guard = DirGuard(c.data_dir.clone());
        let handle = Server::start(c).await.expect("broker starts");
        Broker {
            handle,
            _data_dir: guard,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.handle.amqp_addr)
    }

    pub async fn connect(&self) -> Connection {
        tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&self.url(), ConnectionProperties::default()),
        )
        .await
        .expect("connect in time")
        .expect("connect")
    }

    /// Move the broker's clock forward (TTLs, x-expires, delays, consumer timeouts, ages) and
    /// give its sweeper (every 20 ms) time to act on it.
    pub async fn advance(&self, d: Duration) {
        self.handle.state.broker.clock.advance(d);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }

    /// Shut the broker down and start it again on the same data directory (new ports).
    pub async fn restart(self) -> Broker {
        let config = (*self.handle.state.config).clone();
        let Broker { handle, _data_dir } = self;
        handle.shutdown().await;
        // The previous instance's tasks may hold the store for a moment.
        for _ in 0..100 {
            if let Ok(handle) = Server::start(config.clone()).await {
                return Broker { handle, _data_dir };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("broker did not restart");
    }

    pub async fn channel(&self) -> (Connection, Channel) {
        let c = self.connect().await;
        let ch = c.create_channel().await.expect("channel.open");
        (c, ch)
    }
}

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub fn code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

pub fn text(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => p.get_message().to_string(),
        other => format!("{other:?}"),
    }
}

pub async fn declare(ch: &Channel, name: &str) -> lapin::Queue {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare")
}

/// Bind `queue` to `exchange` with `key` and no arguments.
pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
}

pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("basic.publish");
}

/// Pull `n` deliveries from a consumer, failing after a timeout.
pub async fn take(consumer: &mut lapin::Consumer, n: usize) -> Vec<lapin::message::Delivery> {
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {n} deliveries", out.len()))
            .expect("consumer stream open")
            .expect("delivery");
        out.push(d);
    }
    out
}

/// Assert that no delivery arrives within `ms`.
pub async fn none_within(consumer: &mut lapin::Consumer, ms: u64) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(ms), consumer.next()).await {
        panic!("unexpected delivery: {:?}", d.map(|d| d.data));
    }
}

pub async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

/// Poll basic.get until a message arrives or time runs out.
pub async fn get_one(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    get_with(ch, queue, true).await
}

/// `get_one`, choosing no-ack (false: the message can then be acked or nacked).
pub async fn get_with(
    ch: &Channel,
    queue: &str,
    no_ack: bool,
) -> Option<lapin::message::BasicGetMessage> {
    for _ in 0..100 {
        if let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack })
            .await
            .expect("basic.get")
        {
            return Some(m);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// queue.declare with passive=true: the queue's counts, or the broker's refusal.
pub async fn passive(ch: &Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Publish on a channel in confirm mode, expecting the broker to refuse (close the channel):
/// the error, whether lapin reports it at the publish or at its confirm.
pub async fn publish_refused(
    ch: &Channel,
    exchange: &str,
    key: &str,
    props: BasicProperties,
) -> lapin::Error {
    let r = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            b"x",
            props,
        )
        .await;
    match r {
        Err(e) => e,
        Ok(confirm) => confirm.await.expect_err("publish refused"),
    }
}

/// Publish on a channel in confirm mode and wait for the broker's confirm, so counts are settled.
pub async fn publish_confirmed(ch: &Channel, ex: &str, key: &str, props: BasicProperties) {
    ch.basic_publish(
        ex.into(),
        key.into(),
        BasicPublishOptions::default(),
        b"m",
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Declare a durable queue (with arguments), expecting success.
pub async fn declare_durable(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("durable queue.declare");
}

/// Run the built warrenctl against the API at `url` (off the async runtime, which serves the
/// broker): (exit code, stdout, stderr).
pub async fn warrenctl(url: &str, args: &[&str]) -> (i32, String, String) {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warrenctl"))
            .env("WARREN_URL", url)
            .env_remove("WARREN_USERNAME")
            .env_remove("WARREN_PASSWORD")
            .args(&args)
            .output()
            .expect("warrenctl runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// A loopback port bound now and free for a process the test starts to listen on, from below
/// the kernel's ephemeral range: a port the OS hands out (`bind` to port 0, or the local end of
/// any outgoing connection) can be taken by another test's socket between its release here and
/// the child's bind ("Address already in use"); one below that range only by an explicit bind,
/// and the ports here are handed out in turn from a random start, each once per run.
pub fn reserve_port() -> std::net::TcpListener {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&h| h > LOW + 1_000)
        .unwrap_or(32_768);
    let span = high - LOW;
    let _ = NEXT.compare_exchange(
        0,
        1 + rand::random::<u32>() % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return l;
        }
    }
    panic!("no free loopback port below {high}");
}
