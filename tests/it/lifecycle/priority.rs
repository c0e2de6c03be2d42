//! Priority queues (x-max-priority): order, requeue, expiry, limits and purge across levels.

use super::{declare_with, publish_props};
use crate::harness::*;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use std::time::Duration;

async fn publish_priority(ch: &lapin::Channel, q: &str, body: u8, priority: Option<u8>) {
    let mut p = BasicProperties::default();
    if let Some(n) = priority {
        p = p.with_priority(n);
    }
    publish_props(ch, "", q, &[body], p).await;
}

/// x-max-priority: highest priority first, FIFO within a priority, a priority above the maximum
/// counts as the maximum, no priority counts as 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_orders_by_priority_then_fifo() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("prio");
    declare_with(&ch, &q, &[("x-max-priority", AMQPValue::ShortShortUInt(5))])
        .await
        .unwrap();
    let sent = [
        (0, None),
        (1, Some(3)),
        (2, Some(200)), // above max: 5
        (3, Some(5)),
        (4, Some(3)),
        (5, Some(0)),
        (6, Some(1)),
    ];
    for (body, p) in sent {
        publish_priority(&ch, &q, body, p).await;
    }
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 7);
    let mut cons = consume(&ch, &q, true).await;
    let got: Vec<u8> = take(&mut cons, 7).await.iter().map(|d| d.data[0]).collect();
    assert_eq!(got, vec![2, 3, 1, 4, 6, 0, 5]);
}

/// Priority with requeue: returned messages go back to their place within their priority, ahead
/// of later messages of the same priority and behind higher ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_with_requeue() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("prio-requeue");
    declare_with(&ch, &q, &[("x-max-priority", AMQPValue::LongInt(10))])
        .await
        .unwrap();
    for (body, p) in [(0, 2), (1, 2), (2, 7), (3, 7)] {
        publish_priority(&ch, &q, body, Some(p)).await;
    }
    // Take the two highest (2 and 3) and the first low one (0) without acking.
    let mut held = Vec::new();
    for want in [2u8, 3, 0] {
        let m = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("message");
        assert_eq!(m.delivery.data, [want]);
        held.push(m);
    }
    // Meanwhile more arrive in both priorities.
    publish_priority(&ch, &q, 4, Some(7)).await;
    publish_priority(&ch, &q, 5, Some(2)).await;
    // Return 3 and 0 (not 2): each goes back to its own place.
    for m in [&held[1], &held[2]] {
        m.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    held[0]
        .delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let mut cons = consume(&ch, &q, true).await;
    let ds = take(&mut cons, 5).await;
    let got: Vec<(u8, bool)> = ds.iter().map(|d| (d.data[0], d.redelivered)).collect();
    assert_eq!(
        got,
        vec![(3, true), (4, false), (0, true), (1, false), (5, false)]
    );
}

/// Purge, TTL expiry and max-length work across priority levels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_expiry_limits_and_purge() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("prio-ttl");
    declare_with(
        &ch,
        &q,
        &[
            ("x-max-priority", AMQPValue::LongInt(3)),
            ("x-max-length", AMQPValue::LongInt(3)),
        ],
    )
    .await
    .unwrap();
    // Priority 3 with a short TTL, in the middle of longer-lived ones.
    publish_priority(&ch, &q, 0, Some(1)).await;
    publish_props(
        &ch,
        "",
        &q,
        &[1],
        BasicProperties::default()
            .with_priority(3)
            .with_expiration("50".into()),
    )
    .await;
    publish_priority(&ch, &q, 2, Some(2)).await;
    passive(&ch, &q).await.unwrap();
    b.advance(Duration::from_millis(200)).await;
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 2);
    // max-length 3 with drop-head drops from the head (the highest priority first).
    for (body, p) in [(3, 3), (4, 0)] {
        publish_priority(&ch, &q, body, Some(p)).await;
    }
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 3);
    let m = get_one(&ch, &q).await.unwrap();
    assert_eq!(m.delivery.data, [2]);
    let n = ch
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 0);
}
