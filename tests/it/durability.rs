//! Durable definitions across restarts of the real binary, killed with SIGKILL.

use crate::harness::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `warren` child process on ephemeral ports; its AMQP address read from its log.
struct Proc {
    child: Child,
    url: String,
}

fn spawn(dir: &Path) -> Result<Proc, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "--amqp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Read the log on a thread: the address line, or everything until exit (an error), or give
    // up after 20 s so a broker that never starts cannot hang the test run.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(at) = line.find("amqp_addr=") {
                let addr = line[at + 10..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let _ = tx.send(Ok(addr));
                for _ in lines {} // keep draining so the child never blocks on a full pipe
                return;
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(addr)) => Ok(Proc {
            child,
            url: format!("amqp://guest:guest@{addr}/%2f"),
        }),
        Ok(Err(log)) => {
            let _ = child.wait();
            Err(log)
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err("no start-up line within 20 s".into())
        }
    }
}

impl Proc {
    async fn channel(&self) -> (Connection, Channel) {
        let c = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = c.create_channel().await.unwrap();
        (c, ch)
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

async fn durable_queue(ch: &Channel, name: &str, exclusive: bool) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            exclusive,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn durable_exchange(ch: &Channel, name: &str, kind: ExchangeKind, durable: bool) {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn bind(ch: &Channel, q: &str, ex: &str, key: &str) {
    ch.queue_bind(
        q.into(),
        ex.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Publish with confirm and mandatory; true if it was routed (not returned).
async fn routed(ch: &Channel, ex: &str, key: &str) -> bool {
    let c = ch
        .basic_publish(
            ex.into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"m",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    c.take_message().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_definitions_survive_kill_9_and_transient_ones_do_not() {
    let dir = temp_data_dir();
    let p = spawn(&dir).unwrap();
    {
        let (_c, ch) = p.channel().await;
        durable_exchange(&ch, "dx", ExchangeKind::Topic, true).await;
        durable_exchange(&ch, "tx", ExchangeKind::Fanout, false).await;
        durable_exchange(&ch, "gone-x", ExchangeKind::Direct, true).await;
        durable_exchange(&ch, "e2e-dst", ExchangeKind::Fanout, true).await;
        durable_queue(&ch, "dq", false).await;
        durable_queue(&ch, "dq2", false).await;
        durable_queue(&ch, "dq-deleted", false).await;
        durable_queue(&ch, "dq-exclusive", true).await;
        declare(&ch, "transient-q").await;
        bind(&ch, "dq", "dx", "a.#").await;
        bind(&ch, "dq2", "dx", "b.#").await;
        bind(&ch, "dq2", "e2e-dst", "").await;
        bind(&ch, "transient-q", "dx", "t.#").await;
        ch.exchange_bind(
            "e2e-dst".into(),
            "dx".into(),
            "e.#".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_unbind(
            "dq2".into(),
            "dx".into(),
            "b.#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_delete("gone-x".into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
        ch.queue_delete("dq-deleted".into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        // The last change was acknowledged: kill without any chance to clean up.
    }
    p.kill9();

    let p = spawn(&dir).unwrap();
    {
        let (c, ch) = p.channel().await;
        for q in ["dq", "dq2"] {
            assert!(passive(&ch, q).await.is_ok(), "durable queue {q} survived");
        }
        for q in ["dq-deleted", "dq-exclusive", "transient-q"] {
            let ch = c.create_channel().await.unwrap();
            let e = passive(&ch, q).await.unwrap_err();
            assert_eq!(code(&e), Some(404), "{q} must not survive");
        }
        for (x, survives) in [
            ("dx", true),
            ("e2e-dst", true),
            ("tx", false),
            ("gone-x", false),
        ] {
            let ch = c.create_channel().await.unwrap();
            let r = ch
                .exchange_declare(
                    x.into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            assert_eq!(r.is_ok(), survives, "exchange {x}");
        }
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        assert!(
            routed(&ch, "dx", "a.x").await,
            "binding dq <- dx a.# survived"
        );
        assert!(
            routed(&ch, "dx", "e.x").await,
            "dx -> e2e-dst -> dq2 survived"
        );
        assert!(
            !routed(&ch, "dx", "b.x").await,
            "the unbound binding stayed gone"
        );
        assert!(
            !routed(&ch, "dx", "t.x").await,
            "binding to a transient queue did not survive"
        );
        assert_eq!(passive(&ch, "dq").await.unwrap().message_count(), 1);
        assert_eq!(passive(&ch, "dq2").await.unwrap().message_count(), 1);

        // A second broker on the same data directory refuses to start, naming it.
        let err = match spawn(&dir) {
            Ok(mut other) => {
                let _ = other.child.kill();
                panic!("a second broker started on a locked data directory");
            }
            Err(log) => log,
        };
        assert!(err.contains("in use by another running broker"), "{err}");
    }
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_is_clean_after_graceful_shutdown_too() {
    let dir = temp_data_dir();
    let p = spawn(&dir).unwrap();
    {
        let (_c, ch) = p.channel().await;
        durable_queue(&ch, "kept", false).await;
    }
    let mut child = p.child;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let p = spawn(&dir).unwrap();
    let (_c, ch) = p.channel().await;
    assert!(passive(&ch, "kept").await.is_ok());
    drop(ch);
    tokio::time::sleep(Duration::from_millis(10)).await;
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}
