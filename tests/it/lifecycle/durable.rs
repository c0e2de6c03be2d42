//! These features on durable queues with persistent messages (the message log): paging and
//! restarts.

use super::dedup;
use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// A durable priority queue over its RAM budget pages persistent messages out within their
/// priority levels and reads them back in priority order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_priority_queue_keeps_priority_order() {
    let b = Broker::start_with(|c| c.queue_ram_budget_bytes = 32 << 10).await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = unique("paged-prio");
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::LongInt(3));
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    let n = 200u32;
    let mut confirms = Vec::new();
    for i in 0..n {
        let mut body = i.to_be_bytes().to_vec();
        body.resize(1024, 0);
        confirms.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_priority((i % 4) as u8),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    let mut cons = consume(&ch, &q, true).await;
    let got: Vec<u32> = take(&mut cons, n as usize)
        .await
        .iter()
        .map(|d| u32::from_be_bytes(d.data[..4].try_into().unwrap()))
        .collect();
    let mut want: Vec<u32> = (0..n).collect();
    want.sort_by_key(|i| (std::cmp::Reverse(i % 4), *i));
    assert_eq!(got, want);
}

/// Deduplication and delivery limits on a durable queue with persistent messages: duplicates
/// are dropped, a message over its limit is dead-lettered, and what is left survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_features_on_a_durable_queue() {
    async fn start_in(dir: &std::path::Path) -> (warren::ServerHandle, lapin::Connection) {
        let c = warren::config::Config {
            amqp_listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            data_dir: dir.to_owned(),
            ..Default::default()
        };
        let h = warren::Server::start(c).await.expect("broker starts");
        let conn = lapin::Connection::connect(
            &format!("amqp://guest:guest@{}/%2f", h.amqp_addr),
            lapin::ConnectionProperties::default(),
        )
        .await
        .expect("connect");
        (h, conn)
    }
    let dir = temp_data_dir();
    let q = unique("durable-life");
    {
        let (h, c) = start_in(&dir).await;
        let ch = c.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut args = FieldTable::default();
        args.insert("x-message-deduplication".into(), AMQPValue::Boolean(true));
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(0));
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
        for (body, key) in [(b"a1", "a"), (b"a2", "a"), (b"b1", "b"), (b"c1", "c")] {
            let c = ch
                .basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    dedup(key).with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(c.is_ack());
        }
        assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 3);
        // "a1" returned once: over the limit of 0, dropped (no dead-letter exchange).
        let m = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.delivery.data, b"a1");
        m.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 2);
        drop(c);
        h.shutdown().await;
    }
    let (h, c) = start_in(&dir).await;
    let ch = c.create_channel().await.unwrap();
    let mut cons = consume(&ch, &q, true).await;
    let got: Vec<Vec<u8>> = take(&mut cons, 2)
        .await
        .into_iter()
        .map(|d| d.data)
        .collect();
    assert_eq!(got, vec![b"b1".to_vec(), b"c1".to_vec()]);
    none_within(&mut cons, 200).await;
    drop(c);
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
