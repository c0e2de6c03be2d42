//! Deduplication as the rabbitmq-message-deduplication plugin does it: per queue and as an
//! exchange type.

use super::{declare_exchange, declare_with, dedup, publish_props, s, with_headers};
use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::time::Duration;

/// x-message-deduplication on a queue: a message whose x-deduplication-header matches one still
/// in the queue (ready or unacked) is dropped; once that one is gone the value is free again.
/// Messages without the header are never deduplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_deduplication() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("dedup-q");
    declare_with(
        &ch,
        &q,
        &[("x-message-deduplication", AMQPValue::Boolean(true))],
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for (body, key) in [
        (b"a1", Some("a")),
        (b"a2", Some("a")),
        (b"b1", Some("b")),
        (b"n1", None),
        (b"n2", None),
    ] {
        let props = key.map_or_else(BasicProperties::default, dedup);
        let c = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack(), "duplicates are confirmed, then dropped");
    }
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 4);
    // "a" delivered but unacked: still held, so still a duplicate.
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"a1");
    publish_confirmed(&ch, "", &q, dedup("a")).await;
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 3);
    // Requeued: still held. Acked: free.
    m.delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    publish_confirmed(&ch, "", &q, dedup("a")).await;
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 4);
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"a1");
    m.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    publish_props(&ch, "", &q, b"a3", dedup("a")).await;
    ch.wait_for_confirms().await.unwrap();
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 4);
    let bad = b.connect().await.create_channel().await.unwrap();
    let e = declare_with(
        &bad,
        &unique("dedup-bad"),
        &[("x-message-deduplication", s("yes"))],
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), Some(406));
}

/// The x-message-deduplication exchange: fanout that drops a value seen within x-cache-ttl (or
/// the message's own x-cache-ttl header), keeping at most x-cache-size values; its declaration
/// errors are the plugin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_deduplication() {
    let b = Broker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    let e = declare_exchange(&ch, &unique("dedup-x"), "x-message-deduplication", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert_eq!(
        text(&e),
        "PRECONDITION_FAILED - Missing or invalid argument, 'x-cache-size' must be an integer greater than 0"
    );
    let ch = c.create_channel().await.unwrap();
    let e = declare_exchange(
        &ch,
        &unique("dedup-x"),
        "x-message-deduplication",
        &[
            ("x-cache-size", AMQPValue::LongInt(5)),
            ("x-cache-ttl", AMQPValue::LongInt(-1)),
        ],
    )
    .await
    .unwrap_err();
    assert!(text(&e).ends_with("'x-cache-ttl' must be an integer greater than 0"));

    let ch = c.create_channel().await.unwrap();
    let x = unique("dedup-x");
    declare_exchange(
        &ch,
        &x,
        "x-message-deduplication",
        &[
            ("x-cache-size", AMQPValue::LongInt(2)),
            ("x-cache-ttl", AMQPValue::LongInt(1500)),
        ],
    )
    .await
    .unwrap();
    let q = unique("dedup-x-q");
    declare(&ch, &q).await;
    ch.queue_bind(
        q.as_str().into(),
        x.as_str().into(),
        "ignored".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_props(&ch, &x, "any-key", b"a1", dedup("a")).await;
    publish_props(&ch, &x, "any-key", b"a2", dedup("a")).await; // duplicate
    publish_props(&ch, &x, "k", b"n1", BasicProperties::default()).await;
    publish_props(&ch, &x, "k", b"n2", BasicProperties::default()).await;
    publish_props(
        &ch,
        &x,
        "k",
        b"s1",
        with_headers(&[
            ("x-deduplication-header", s("short")),
            ("x-cache-ttl", AMQPValue::LongInt(50)),
        ]),
    )
    .await;
    // The broker's clock moves, not the test's: a round trip first, so the publishes are in.
    passive(&ch, &q).await.unwrap();
    b.advance(Duration::from_millis(150)).await;
    publish_props(&ch, &x, "k", b"s2", dedup("short")).await; // its own TTL ran out
    publish_props(&ch, &x, "k", b"a3", dedup("a")).await; // still within 1500 ms
    passive(&ch, &q).await.unwrap();
    b.advance(Duration::from_millis(1500)).await;
    publish_props(&ch, &x, "k", b"a4", dedup("a")).await; // exchange TTL ran out
                                                          // Size 2: a third value evicts the oldest.
    publish_props(&ch, &x, "k", b"c1", dedup("c")).await;
    publish_props(&ch, &x, "k", b"d1", dedup("d")).await;
    publish_props(&ch, &x, "k", b"c2", dedup("c")).await; // still cached: dropped
    publish_props(&ch, &x, "k", b"a5", dedup("a")).await; // evicted: routed
    let mut cons = consume(&ch, &q, true).await;
    let got: Vec<Vec<u8>> = take(&mut cons, 8)
        .await
        .into_iter()
        .map(|d| d.data)
        .collect();
    let want: Vec<&[u8]> = vec![b"a1", b"n1", b"n2", b"s1", b"s2", b"a4", b"c1", b"d1"];
    assert_eq!(got, want);
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(d.data, b"a5");
    none_within(&mut cons, 100).await;
}
