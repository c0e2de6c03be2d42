//! basic.*: consume, deliver, ack/nack/reject, get, qos, recover, consumers and flow control.

use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_ack_in_order() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("order");
    declare(&ch, &q).await;
    for i in 0..100u32 {
        publish(&ch, "", &q, &i.to_be_bytes()).await;
    }
    let mut cons = consume(&ch, &q, false).await;
    let ds = take(&mut cons, 100).await;
    for (i, d) in ds.iter().enumerate() {
        assert_eq!(d.data, (i as u32).to_be_bytes());
        assert!(!d.redelivered);
        assert_eq!(d.routing_key.as_str(), q);
        assert_eq!(d.exchange.as_str(), "");
    }
    ds.last()
        .unwrap()
        .acker
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let ok = passive(&ch, &q).await.unwrap();
    assert_eq!(ok.message_count(), 0);
    assert_eq!(ok.consumer_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_across_consumers() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("rr");
    declare(&ch, &q).await;
    let (_c2, ch2) = b.channel().await;
    let mut a = consume(&ch, &q, true).await;
    let mut bb = consume(&ch2, &q, true).await;
    for i in 0..10u8 {
        publish(&ch, "", &q, &[i]).await;
    }
    let da = take(&mut a, 5).await;
    let db = take(&mut bb, 5).await;
    let mut all: Vec<u8> = da.iter().chain(db.iter()).map(|d| d.data[0]).collect();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    // Each consumer sees its share in queue order.
    assert!(da.windows(2).all(|w| w[0].data[0] < w[1].data[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_limits_unacked_per_consumer() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("prefetch");
    declare(&ch, &q).await;
    for i in 0..10u8 {
        publish(&ch, "", &q, &[i]).await;
    }
    ch.basic_qos(3, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&ch, &q, false).await;
    let first = take(&mut cons, 3).await;
    none_within(&mut cons, 300).await;
    first[0]
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let next = take(&mut cons, 1).await;
    assert_eq!(next[0].data, vec![3]);
    none_within(&mut cons, 200).await;
}

/// A lone consumer is handed a backlog in runs (one lock and one write for many messages):
/// every message still comes once, in order, with consecutive tags, and the redelivered flag on
/// exactly the requeued ones, across more than one run and a requeue in the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_out_in_order_with_consecutive_tags() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("runs");
    declare(&ch, &q).await;
    for i in 0..600u16 {
        publish(&ch, "", &q, &i.to_be_bytes()).await;
    }
    let mut cons = consume(&ch, &q, false).await;
    let first = take(&mut cons, 600).await;
    for (i, d) in first.iter().enumerate() {
        assert_eq!(d.data, (i as u16).to_be_bytes(), "message {i}");
        assert_eq!(d.delivery_tag, i as u64 + 1);
        assert!(!d.redelivered);
    }
    // The last 300 go back and come again, after the first 300 are acked.
    first[299]
        .acker
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    first[599]
        .acker
        .nack(BasicNackOptions {
            multiple: true,
            requeue: true,
        })
        .await
        .unwrap();
    let again = take(&mut cons, 300).await;
    for (k, d) in again.iter().enumerate() {
        assert_eq!(d.data, (300 + k as u16).to_be_bytes(), "again {k}");
        assert_eq!(d.delivery_tag, 601 + k as u64);
        assert!(d.redelivered);
    }
    none_within(&mut cons, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_qos_limits_the_channel() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q1 = unique("gq1");
    let q2 = unique("gq2");
    declare(&ch, &q1).await;
    declare(&ch, &q2).await;
    for i in 0..5u8 {
        publish(&ch, "", &q1, &[i]).await;
        publish(&ch, "", &q2, &[i]).await;
    }
    ch.basic_qos(4, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut c1 = consume(&ch, &q1, false).await;
    let mut c2 = consume(&ch, &q2, false).await;
    let got1 = take(&mut c1, 4).await;
    none_within(&mut c2, 300).await;
    got1[3]
        .acker
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    // Four credits came back: q1's last message and three of q2's fill them.
    assert_eq!(take(&mut c1, 1).await[0].data, vec![4]);
    take(&mut c2, 3).await;
    none_within(&mut c2, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_requeue_returns_to_original_position_redelivered() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("requeue");
    declare(&ch, &q).await;
    for i in 0..3u8 {
        publish(&ch, "", &q, &[i]).await;
    }
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&ch, &q, false).await;
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(d.data, vec![0]);
    d.acker
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let again = take(&mut cons, 1).await.remove(0);
    assert_eq!(
        again.data,
        vec![0],
        "requeued message goes back to the head"
    );
    assert!(again.redelivered);
    again
        .acker
        .nack(BasicNackOptions {
            multiple: false,
            requeue: false,
        })
        .await
        .unwrap();
    let next = take(&mut cons, 1).await.remove(0);
    assert_eq!(next.data, vec![1], "nack without requeue drops the message");
    assert!(!next.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_channel_requeues_unacked() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("close-requeue");
    declare(&ch, &q).await;
    for i in 0..4u8 {
        publish(&ch, "", &q, &[i]).await;
    }
    let ch2 = _c.create_channel().await.unwrap();
    let mut cons = consume(&ch2, &q, false).await;
    take(&mut cons, 4).await;
    ch2.close(200, "bye".into()).await.unwrap();
    let mut cons = consume(&ch, &q, false).await;
    let ds = take(&mut cons, 4).await;
    assert_eq!(
        ds.iter().map(|d| d.data[0]).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert!(ds.iter().all(|d| d.redelivered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_and_get_empty() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("get");
    declare(&ch, &q).await;
    assert!(ch
        .basic_get(q.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    publish(&ch, "", &q, b"one").await;
    publish(&ch, "", &q, b"two").await;
    let m = get_one(&ch, &q).await.expect("a message");
    assert_eq!(m.delivery.data, b"one");
    assert_eq!(m.message_count, 1);
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"two");
    m.delivery
        .acker
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let m = get_one(&ch, &q).await.unwrap();
    assert!(m.delivery.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_requeues_unacked() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("recover");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"x").await;
    let mut cons = consume(&ch, &q, false).await;
    take(&mut cons, 1).await;
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let d = take(&mut cons, 1).await.remove(0);
    assert!(d.redelivered);
    assert_eq!(d.delivery_tag, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_deliveries_and_auto_delete_queue_goes() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("autodel");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let cons = consume(&ch, &q, true).await;
    ch.basic_cancel(cons.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    let e = passive(&ch, &q).await.unwrap_err();
    assert_eq!(code(&e), Some(404), "auto-delete queue is gone: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_goes_with_its_connection() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen-"));
    let (_c2, ch2) = b.channel().await;
    let e = ch2
        .basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(405), "{e}");
    c.close(200, "bye".into()).await.unwrap();
    let ch3 = _c2.create_channel().await.unwrap();
    let e = passive(&ch3, q.name().as_str()).await.unwrap_err();
    assert_eq!(code(&e), Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("cancel-notify");
    declare(&ch, &q).await;
    let mut cons = consume(&ch, &q, true).await;
    let (_c2, ch2) = b.channel().await;
    ch2.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // lapin ends the consumer stream when the server cancels it.
    use futures_util::StreamExt;
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), cons.next())
        .await
        .expect("consumer notified");
    assert!(end.is_none(), "stream ends after basic.cancel");
    // The channel is still usable.
    declare(&ch, &unique("after-cancel")).await;
}

/// Flow control: a publisher that outruns a live consumer is paused, so the backlog stays near
/// the flow mark instead of growing with the publisher's speed; the pauses show in the
/// `amqp.flow` stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_bounds_backlog_behind_a_slow_consumer() {
    use warren::broker::queue::FLOW_HIGH;
    use warren::observe::stages::FLOW;
    let paused_before = FLOW.snapshot();
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("flow");
    declare(&ch, &q).await;
    let (_c2, cch) = b.channel().await;
    cch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&cch, &q, false).await;
    let total = 40_000u32;
    let consumer = tokio::spawn(async move {
        let mut n = 0u32;
        while n < total {
            let ds = take(&mut cons, 10).await;
            n += 10;
            // A slow consumer: ~10k msg/s at most.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            ds[9]
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
    });
    let vhost = b.handle.state.broker.vhost("/").unwrap();
    let queue = vhost.queue(&q, 0).unwrap();
    let watcher = tokio::spawn(async move {
        let mut max = 0;
        for _ in 0..2000 {
            max = max.max(queue.counts().ready);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        max
    });
    let body = [7u8; 64];
    for _ in 0..total {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            Default::default(),
        )
        .await
        .unwrap();
    }
    consumer.await.unwrap();
    let max = watcher.await.unwrap();
    assert!(
        max < 3 * FLOW_HIGH,
        "backlog peaked at {max}, flow mark {FLOW_HIGH}"
    );
    let paused = FLOW.snapshot();
    assert!(
        paused.runs > paused_before.runs && paused.total_us > paused_before.total_us,
        "pauses counted: {paused_before:?} then {paused:?}"
    );
}

/// Flow control never blocks a publisher for good: with a consumer that holds its prefetch and
/// never acks, publishing still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_does_not_block_behind_a_stalled_consumer() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("stalled");
    declare(&ch, &q).await;
    let (_c2, cch) = b.channel().await;
    cch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&cch, &q, false).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut last = None;
    for _ in 0..20_000 {
        last = Some(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                Default::default(),
            )
            .await
            .unwrap(),
        );
    }
    tokio::time::timeout(std::time::Duration::from_secs(20), last.unwrap())
        .await
        .expect("publisher not blocked")
        .unwrap();
    take(&mut cons, 1).await;
}

/// Regression (found with py-amqp): a later per-consumer basic.qos did not lift an earlier
/// channel-wide (global) one; RabbitMQ lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_consumer_qos_lifts_an_earlier_global_one() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("qos-lift");
    declare(&ch, &q).await;
    for i in 0..10u8 {
        publish(&ch, "", &q, &[i]).await;
    }
    ch.basic_qos(1, BasicQosOptions { global: true })
        .await
        .unwrap();
    ch.basic_qos(0, BasicQosOptions { global: false })
        .await
        .unwrap();
    let mut cons = consume(&ch, &q, false).await;
    take(&mut cons, 10).await;
}

/// x-single-active-consumer: one consumer gets everything; the next takes over when it cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_and_fail_over() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("sac");
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let mut a = consume(&ch, &q, true).await;
    let mut bb = consume(&ch, &q, true).await;
    for i in 0..4u8 {
        publish(&ch, "", &q, &[i]).await;
    }
    let got: Vec<u8> = take(&mut a, 4).await.iter().map(|d| d.data[0]).collect();
    assert_eq!(got, vec![0, 1, 2, 3]);
    none_within(&mut bb, 200).await;
    ch.basic_cancel(a.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish(&ch, "", &q, &[4]).await;
    assert_eq!(take(&mut bb, 1).await[0].data, vec![4]);
}

/// Consumer priorities (x-priority): the higher-priority consumer gets messages while it has
/// credit; lower ones get what it cannot take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_priorities() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("cprio");
    declare(&ch, &q).await;
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let prio = |p: i32| {
        let mut t = FieldTable::default();
        t.insert("x-priority".into(), AMQPValue::LongInt(p));
        t
    };
    let mut low = ch
        .basic_consume(
            q.as_str().into(),
            "low".into(),
            BasicConsumeOptions::default(),
            prio(0),
        )
        .await
        .unwrap();
    let mut high = ch
        .basic_consume(
            q.as_str().into(),
            "high".into(),
            BasicConsumeOptions::default(),
            prio(10),
        )
        .await
        .unwrap();
    for i in 0..3u8 {
        publish(&ch, "", &q, &[i]).await;
    }
    let h: Vec<u8> = take(&mut high, 2).await.iter().map(|d| d.data[0]).collect();
    assert_eq!(h, vec![0, 1], "the high-priority consumer is served first");
    assert_eq!(
        take(&mut low, 1).await[0].data,
        vec![2],
        "overflow goes to the low one"
    );
}

/// Direct reply-to: an RPC round trip through amq.rabbitmq.reply-to, with no reply queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_round_trip() {
    let b = Broker::start().await;
    let (_c, client) = b.channel().await;
    let (_s, server) = b.channel().await;
    let rpc = unique("rpc");
    declare(&server, &rpc).await;
    let mut requests = consume(&server, &rpc, true).await;
    let mut replies = client
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    client
        .basic_publish(
            "".into(),
            rpc.as_str().into(),
            BasicPublishOptions::default(),
            b"ping",
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await
        .unwrap();
    let req = take(&mut requests, 1).await.remove(0);
    let reply_to = req.properties.reply_to().clone().unwrap();
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "{reply_to}"
    );
    server
        .basic_publish(
            "".into(),
            reply_to.clone(),
            BasicPublishOptions::default(),
            b"pong",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let rep = take(&mut replies, 1).await.remove(0);
    assert_eq!(rep.data, b"pong");
    assert_eq!(rep.routing_key.as_str(), reply_to.as_str());

    // Without a reply consumer on the channel, such a request is refused with 406.
    let (_c2, lonely) = b.channel().await;
    lonely
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let e = publish_refused(
        &lonely,
        "",
        &rpc,
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
    )
    .await;
    assert_eq!(code(&e), Some(406), "{e}");
}
