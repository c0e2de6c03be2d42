//! Consumers, gets and purges through any node (issue 14, point 3): a classic queue lives on
//! the node that declared it (A); clients on another node (B) use it as if it were local,
//! served by A over the cluster link. Real processes, lapin clients.

use super::harness::Cluster;
use crate::harness::{code, text};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::time::{Duration, Instant};

async fn channel(url: &str) -> (Connection, Channel) {
    let c = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = c.create_channel().await.expect("channel.open");
    (c, ch)
}

async fn started(cluster: &Cluster) {
    if let Err(e) = cluster.wait_nodes_running(Duration::from_secs(30)).await {
        panic!("{e}\n{}", cluster.dump_logs());
    }
}

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
    let c = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack(), "confirmed");
}

async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> Consumer {
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
    .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
}

async fn next(c: &mut Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a delivery in time")
        .expect("the consumer is live")
        .expect("a delivery")
}

/// Nothing more arrives for a while.
async fn quiet(c: &mut Consumer, wait: Duration) {
    if let Ok(Some(d)) = tokio::time::timeout(wait, c.next()).await {
        panic!("unexpected delivery: {:?}", d.map(|d| d.data));
    }
}

/// basic.get on `ch` until a message comes (it may still be on its way back).
async fn get_eventually(
    ch: &Channel,
    queue: &str,
    within: Duration,
) -> lapin::message::BasicGetMessage {
    let t = Instant::now();
    loop {
        if let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
        {
            return m;
        }
        assert!(t.elapsed() < within, "nothing in {queue} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn unacked_on(cluster: &Cluster, i: usize, queue: &str) -> u64 {
    let (_, q) = cluster
        .api(i, "GET", &format!("/api/queues/%2F/{queue}"), None)
        .await
        .unwrap();
    q["messages_unacknowledged"].as_u64().unwrap_or(u64::MAX)
}

/// Consumers through another node get every message in order with acks, and never more than
/// their prefetch unacked; requeues come back redelivered (also to a consumer on the queue's
/// node); a reject without requeue dead-letters on the queue's node; basic.get + ack, purge and
/// passive declare's counts go through; a channel closed with unacked deliveries gives them
/// back; a no-ack consumer gets more than its credit window; a channel-wide prefetch holds
/// deliveries back until acks; a deleted queue cancels its consumers elsewhere; an exclusive
/// consumer is exclusive across nodes (403 and RabbitMQ's text). Before, all of these were
/// refused with 540.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_consumed_through_any_node() {
    let cluster = Cluster::start(3).await;
    started(&cluster).await;
    let (_ca, a) = channel(&cluster.url(0)).await;
    a.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    a.exchange_declare(
        "rc.dlx".into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&a, "rc.dead", FieldTable::default()).await;
    a.queue_bind(
        "rc.dead".into(),
        "rc.dlx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("rc.dlx".into()),
    );
    declare(&a, "rc.q", args).await;
    for i in 0..200u32 {
        publish(&a, "rc.q", &i.to_be_bytes()).await;
    }

    // Passive declare through B: the counts are A's.
    let (cb, b) = channel(&cluster.url(1)).await;
    let q = b
        .queue_declare(
            "rc.q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 200, "A's ready count through B");
    assert_eq!(q.consumer_count(), 0);

    // In order, with acks, never more than the prefetch unacked.
    b.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&b, "rc.q", false).await;
    let mut held = Vec::new();
    for i in 0..10u32 {
        let d = next(&mut cons).await;
        assert_eq!(d.data, i.to_be_bytes(), "in order");
        assert!(!d.redelivered);
        held.push(d);
    }
    quiet(&mut cons, Duration::from_millis(500)).await;
    let (_, qa) = channel(&cluster.url(2)).await;
    let q = qa
        .queue_declare(
            "rc.q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 190, "the others wait on A");
    assert_eq!(q.consumer_count(), 1, "B's consumer counts on A");
    for d in held.drain(..) {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    for i in 10..200u32 {
        let d = next(&mut cons).await;
        assert_eq!(d.data, i.to_be_bytes(), "in order");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let t = Instant::now();
    while unacked_on(&cluster, 0, "rc.q").await != 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "acks reach A");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A requeue comes back redelivered, to B's consumer...
    publish(&a, "rc.q", b"again").await;
    let d = next(&mut cons).await;
    assert_eq!(d.data, b"again");
    assert!(!d.redelivered);
    d.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let d = next(&mut cons).await;
    assert_eq!(d.data, b"again");
    assert!(d.redelivered, "requeued: redelivered");
    // ... and, B's consumer cancelled, to A's clients (the delivery stays B's to settle).
    b.basic_cancel(cons.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    d.reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let m = get_eventually(&a, "rc.q", Duration::from_secs(5)).await;
    assert_eq!(m.delivery.data, b"again");
    assert!(m.delivery.redelivered);
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();

    // basic.get through B, rejected without requeue: dead-lettered by A's queue.
    publish(&a, "rc.q", b"dead").await;
    let m = b
        .basic_get("rc.q".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message through B");
    assert_eq!(m.delivery.data, b"dead");
    assert_eq!(m.message_count, 0);
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let m = get_eventually(&a, "rc.dead", Duration::from_secs(5)).await;
    assert_eq!(m.delivery.data, b"dead");
    let deaths = m
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned());
    let reason = match &deaths {
        Some(AMQPValue::FieldArray(a)) => match a.as_slice().first() {
            Some(AMQPValue::FieldTable(t)) => t.inner().get("reason").cloned(),
            _ => None,
        },
        _ => None,
    };
    assert_eq!(
        reason,
        Some(AMQPValue::LongString("rejected".into())),
        "x-death says rejected: {deaths:?}"
    );
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();

    // basic.get + ack through B; get-empty through B.
    publish(&a, "rc.q", b"got").await;
    let m = b
        .basic_get("rc.q".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message through B");
    assert_eq!(m.delivery.data, b"got");
    assert_eq!(unacked_on(&cluster, 0, "rc.q").await, 1, "held on A");
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    let t = Instant::now();
    while unacked_on(&cluster, 0, "rc.q").await != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the get's ack reaches A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b
        .basic_get("rc.q".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .is_none());

    // Purge through B counts A's messages.
    for i in 0..5u8 {
        publish(&a, "rc.q", &[i]).await;
    }
    let n = b
        .queue_purge("rc.q".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 5, "purged on A");

    // B's channel closes with unacked deliveries: they go back to A's queue.
    for i in 0..5u8 {
        publish(&a, "rc.q", &[i]).await;
    }
    let b2 = cb.create_channel().await.unwrap();
    b2.basic_qos(5, BasicQosOptions::default()).await.unwrap();
    let mut c2 = consume(&b2, "rc.q", false).await;
    for i in 0..5u8 {
        assert_eq!(next(&mut c2).await.data, [i]);
    }
    b2.close(200, "bye".into()).await.unwrap();
    for i in 0..5u8 {
        let m = get_eventually(&a, "rc.q", Duration::from_secs(5)).await;
        assert_eq!(m.delivery.data, [i], "back in place");
        assert!(m.delivery.redelivered);
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }

    // Exclusive consumers, across nodes: RabbitMQ's 403 and text, either way round.
    declare(&a, "rc.x", FieldTable::default()).await;
    let bx = cb.create_channel().await.unwrap();
    let _excl = bx
        .basic_consume(
            "rc.x".into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (_cx, ax) = channel(&cluster.url(0)).await;
    let e = consume_err(&ax, "rc.x", false).await;
    assert_eq!(code(&e), Some(403));
    assert_eq!(
        text(&e),
        "ACCESS_REFUSED - queue 'rc.x' in vhost '/' in exclusive use"
    );
    declare(&a, "rc.y", FieldTable::default()).await;
    let _ay = a
        .basic_consume(
            "rc.y".into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (_cz, cz) = channel(&cluster.url(2)).await;
    let e = consume_err(&cz, "rc.y", false).await;
    assert_eq!(code(&e), Some(403));
    assert_eq!(
        text(&e),
        "ACCESS_REFUSED - queue 'rc.y' in vhost '/' in exclusive use"
    );
    // A missing queue through B: 404, as on one node.
    let (_cn, cn) = channel(&cluster.url(1)).await;
    let e = consume_err(&cn, "rc.none", false).await;
    assert_eq!(code(&e), Some(404), "{e}");

    // A no-ack consumer through another node gets more than its credit window (1000): the
    // window moves as its deliveries are handed over.
    declare(&a, "rc.many", FieldTable::default()).await;
    let mut confirms = Vec::new();
    for i in 0..1500u32 {
        confirms.push(
            a.basic_publish(
                "".into(),
                "rc.many".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    let (_cm, bm) = channel(&cluster.url(2)).await;
    let mut many = consume(&bm, "rc.many", true).await;
    for i in 0..1500u32 {
        assert_eq!(next(&mut many).await.data, i.to_be_bytes(), "in order");
    }

    // The channel-wide prefetch (global qos) holds deliveries back on the consuming node, and
    // releases them as acks come.
    for i in 0..6u8 {
        publish(&a, "rc.q", &[i]).await;
    }
    let bg = cb.create_channel().await.unwrap();
    bg.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut cg = consume(&bg, "rc.q", false).await;
    let mut first = Vec::new();
    for i in 0..3u8 {
        let d = next(&mut cg).await;
        assert_eq!(d.data, [i]);
        first.push(d);
    }
    quiet(&mut cg, Duration::from_millis(500)).await;
    for d in first {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    for i in 3..6u8 {
        let d = next(&mut cg).await;
        assert_eq!(d.data, [i]);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    bg.close(200, "bye".into()).await.unwrap();

    // Deleted on A: B's consumer is cancelled (lapin ends its stream).
    declare(&a, "rc.del", FieldTable::default()).await;
    let bd = cb.create_channel().await.unwrap();
    let mut cd = consume(&bd, "rc.del", false).await;
    a.queue_delete("rc.del".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), cd.next()).await;
    assert!(matches!(end, Ok(None)), "B's consumer cancelled: {end:?}");
}

async fn consume_err(ch: &Channel, queue: &str, no_ack: bool) -> lapin::Error {
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
    .map(|_| ())
    .expect_err("refused")
}

/// The consumer's node killed (-9) while it holds unacked deliveries: the queue's node takes
/// them back within a few seconds. The queue's node killed: consumers through other nodes are
/// cancelled (basic.cancel: lapin's stream ends), acks of what they had are accepted, a new
/// consume is RabbitMQ's 404 "home node ... is down or inaccessible"; once it is back,
/// consuming through another node works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_going_away_end_subscriptions_cleanly() {
    let mut cluster = Cluster::start(3).await;
    started(&cluster).await;
    let (_ca, a) = channel(&cluster.url(0)).await;
    a.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&a, "rk.q", FieldTable::default()).await;
    for i in 0..20u8 {
        publish(&a, "rk.q", &[i]).await;
    }
    {
        let (_cb, b) = channel(&cluster.url(1)).await;
        b.basic_qos(5, BasicQosOptions::default()).await.unwrap();
        let mut cons = consume(&b, "rk.q", false).await;
        for i in 0..5u8 {
            assert_eq!(next(&mut cons).await.data, [i]);
        }
        assert_eq!(unacked_on(&cluster, 0, "rk.q").await, 5);
        cluster.kill9(1);
        let t = Instant::now();
        while unacked_on(&cluster, 0, "rk.q").await != 0 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "A takes back what the killed node held"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("requeued {:?} after the kill", t.elapsed());
    }
    let m = get_eventually(&a, "rk.q", Duration::from_secs(1)).await;
    assert_eq!(m.delivery.data, [0u8], "back in place");
    assert!(m.delivery.redelivered);
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    cluster.restart(1).await.unwrap();

    // The queue's node goes away: the consumer through node 2 is cancelled.
    let (c2, ch2) = channel(&cluster.url(2)).await;
    let mut cons = consume(&ch2, "rk.q", false).await;
    let d = next(&mut cons).await;
    assert_eq!(d.data, [0u8]);
    cluster.kill9(0);
    let t = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(15), cons.next()).await {
            Ok(None) => break,
            Ok(Some(_)) => continue,
            Err(_) => panic!("no basic.cancel after the queue's node died"),
        }
    }
    eprintln!("cancelled {:?} after the kill", t.elapsed());
    // An ack of a delivery of the dead subscription is accepted (the channel stays open).
    d.ack(BasicAckOptions::default()).await.unwrap();
    ch2.exchange_declare(
        "amq.direct".into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the channel stays open");
    // While it is down, RabbitMQ's 404 for a queue whose node is down.
    let (_cd, down) = channel(&cluster.url(2)).await;
    let e = consume_err(&down, "rk.q", false).await;
    assert_eq!(code(&e), Some(404), "{e}");
    assert_eq!(
        text(&e),
        "NOT_FOUND - home node 'warren@n0' of durable queue 'rk.q' in vhost '/' is down or \
         inaccessible"
    );
    cluster.restart(0).await.unwrap();
    started(&cluster).await;
    let mut again = consume(&ch2, "rk.q", false).await;
    let d = next(&mut again).await;
    assert_eq!(
        d.data,
        [0u8],
        "persistent messages came back with their node"
    );
    assert!(d.redelivered);
    d.ack(BasicAckOptions::default()).await.unwrap();
    let _ = c2.close(200, "bye".into()).await;
}
