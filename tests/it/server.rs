//! The server's lifecycle: graceful shutdown and the command line.

use crate::harness::*;
use lapin::options::*;
use lapin::types::FieldTable;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_clients_with_320() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    declare(&ch, "before-shutdown").await;
    tokio::time::timeout(std::time::Duration::from_secs(10), b.handle.shutdown())
        .await
        .expect("shutdown completes");
    // The client saw connection.close 320.
    let e = ch
        .queue_declare(
            "after".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(
        code(&e) == Some(320) || !c.status().connected(),
        "expected CONNECTION_FORCED, got {e}"
    );
}

/// The real binary, with a data directory of its own.
fn warren() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.arg("--data-dir").arg(temp_data_dir());
    c
}

#[test]
fn bad_config_is_a_one_line_error() {
    let dir = std::env::temp_dir().join(format!("warren-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "frame_max = \"lots\"\n").unwrap();
    let out = warren().arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("bad.toml"), "names the file: {err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = warren()
        .arg("--config")
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn unbindable_port_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = warren()
        .args([
            "--amqp-listen",
            &addr.to_string(),
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen for AMQP"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn sigterm_exits_zero() {
    let mut child = warren()
        .args([
            "--amqp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    terminate(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

fn terminate(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

/// `RABBITMQ_DEFAULT_USER` / `RABBITMQ_DEFAULT_PASS` (what RabbitMQ's container image reads) set the
/// user created on first start; guest is then not created. An empty user is refused at start.
#[tokio::test]
async fn default_user_from_the_environment() {
    let dir = temp_data_dir();
    let b = crate::child::spawn_env(
        &dir,
        &[],
        &[
            ("RABBITMQ_DEFAULT_USER", "alice"),
            ("RABBITMQ_DEFAULT_PASS", "s3cret"),
        ],
    )
    .unwrap();
    let addr = b.url.split('@').nth(1).unwrap().split('/').next().unwrap();
    let props = lapin::ConnectionProperties::default;
    let alice = lapin::Connection::connect(&format!("amqp://alice:s3cret@{addr}/%2f"), props())
        .await
        .expect("alice logs in");
    alice.create_channel().await.unwrap();
    let guest =
        lapin::Connection::connect(&format!("amqp://guest:guest@{addr}/%2f"), props()).await;
    assert!(guest.is_err(), "guest was not created");
    let wrong =
        lapin::Connection::connect(&format!("amqp://alice:guest@{addr}/%2f"), props()).await;
    assert!(wrong.is_err(), "wrong password refused");

    let out = warren().env("RABBITMQ_DEFAULT_USER", "").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("default_user must not be empty"), "{err}");
}

/// Log lines about a client name its connection: a `conn` span with the connection's id, peer,
/// user and vhost wraps everything its task (and its writer) logs, so an operator can follow one
/// client through the log. Here: a channel error and a refused permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_about_a_client_carry_its_connection() {
    let log = capture_logs();
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let e = passive(&ch, &unique("missing")).await.unwrap_err();
    assert_eq!(code(&e), Some(404));
    drop(c);
    // The peer as the broker sees it: the lapin connection's local address is not exposed, so
    // find the line by its text and check the span's fields on it.
    let want = "no queue 'missing-";
    let mut line = None;
    for _ in 0..100 {
        let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
        line = text
            .lines()
            .find(|l| l.contains("channel error") && l.contains(want))
            .map(str::to_owned);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let line = line.expect("the channel error is logged");
    for field in ["conn{id=", "peer=127.0.0.1:", "user=guest", "vhost=/"] {
        assert!(line.contains(field), "{field} in: {line}");
    }
}

/// Collect the broker's log lines (for the whole test binary, once).
fn capture_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warren::amqp=info"))
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut v = self.0.lock().unwrap();
        // Bounded: the whole test binary logs here once this test has run.
        if v.len() < 8 << 20 {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
