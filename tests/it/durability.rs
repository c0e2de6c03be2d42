//! Durable definitions across restarts of the real binary, killed with SIGKILL.

use crate::child::spawn;
use crate::harness::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::time::Duration;

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
            Ok(other) => {
                other.kill9();
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
    p.term();
    let p = spawn(&dir).unwrap();
    let (_c, ch) = p.channel().await;
    assert!(passive(&ch, "kept").await.is_ok());
    drop(ch);
    tokio::time::sleep(Duration::from_millis(10)).await;
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}
