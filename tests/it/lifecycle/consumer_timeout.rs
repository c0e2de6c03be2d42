//! Consumer acknowledgement timeouts: closing the channel, or cancelling only the consumer.

use super::{declare_with, s};
use crate::harness::*;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::AMQPValue;
use std::time::{Duration, Instant};

/// The next item of a consumer stream, which must be an error (the channel was closed).
async fn consumer_error(cons: &mut lapin::Consumer, within: Duration) -> lapin::Error {
    loop {
        match tokio::time::timeout(within, cons.next()).await {
            Err(_) => panic!("consumer not closed in time"),
            Ok(None) => panic!("consumer ended without an error"),
            Ok(Some(Err(e))) => return e,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// A delivery not acked within x-consumer-timeout closes the channel with RabbitMQ's 406 and
/// text; its message returns to the queue. Acking in time keeps the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_closes_the_channel() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("timeout");
    declare_with(
        &ch,
        &q,
        &[("x-consumer-timeout", AMQPValue::LongInt(60_000))],
    )
    .await
    .unwrap();
    publish(&ch, "", &q, b"fast").await;
    publish(&ch, "", &q, b"slow").await;
    let late = c.create_channel().await.unwrap();
    late.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&late, &q, false).await;
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(d.data, b"fast");
    // The broker's clock is driven: half the timeout passes, the ack is in time.
    b.advance(Duration::from_secs(30)).await;
    d.acker.ack(BasicAckOptions::default()).await.unwrap();
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(d.data, b"slow");
    b.advance(Duration::from_secs(61)).await;
    let e = consumer_error(&mut cons, Duration::from_secs(5)).await;
    assert_eq!(code(&e), Some(406), "{e:?}");
    assert_eq!(
        text(&e),
        format!(
            "PRECONDITION_FAILED - delivery acknowledgement on channel {} timed out. Timeout \
             value used: 60000 ms. This timeout value can be configured, see consumers doc guide \
             to learn more",
            late.id()
        )
    );
    // The late message is back, marked redelivered; other channels were not touched.
    let m = get_one(&ch, &q).await.expect("requeued");
    assert_eq!(m.delivery.data, b"slow");
    assert!(m.delivery.redelivered);
}

/// The broker-wide consumer_timeout_ms applies to basic.get deliveries too, and autoack
/// consumers are never timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_from_config_covers_basic_get() {
    let b = Broker::start_with(|c| c.consumer_timeout_ms = 250).await;
    let (c, ch) = b.channel().await;
    let q = unique("timeout-get");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"x").await;
    let auto = c.create_channel().await.unwrap();
    let noack_q = unique("timeout-autoack");
    declare(&auto, &noack_q).await;
    let mut autocons = consume(&auto, &noack_q, true).await;
    publish(&auto, "", &noack_q, b"y").await;
    take(&mut autocons, 1).await;

    let getter = c.create_channel().await.unwrap();
    let m = getter
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("message");
    // The broker closes the channel (250 ms, checked every 100 ms); the message is back.
    let t = Instant::now();
    while getter.status().connected() && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!getter.status().connected(), "{:?}", getter.status());
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "closed too early"
    );
    drop(m);
    assert!(get_one(&ch, &q).await.is_some());
    // The autoack channel is still fine.
    assert!(auto.status().connected());
    declare(&auto, &unique("still-open")).await;
}

/// x-consumer-timeout-action cancel_consumer: only the late consumer is cancelled (basic.cancel)
/// and its unacked messages requeued; the channel and its other consumers carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_can_cancel_only_the_consumer() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let (slow_q, other_q) = (unique("cancel-slow"), unique("cancel-other"));
    declare_with(
        &ch,
        &slow_q,
        &[
            ("x-consumer-timeout", AMQPValue::LongInt(300)),
            ("x-consumer-timeout-action", s("cancel_consumer")),
        ],
    )
    .await
    .unwrap();
    declare(&ch, &other_q).await;
    publish(&ch, "", &slow_q, b"a").await;
    publish(&ch, "", &slow_q, b"b").await;
    let mut slow = consume(&ch, &slow_q, false).await;
    let mut other = consume(&ch, &other_q, false).await;
    let _held = take(&mut slow, 2).await;
    // The server cancels the consumer: lapin ends its stream.
    let end = tokio::time::timeout(Duration::from_secs(5), slow.next())
        .await
        .expect("cancelled in time");
    assert!(end.is_none(), "stream ends after basic.cancel: {end:?}");
    // The channel is still open and its other consumer still works.
    assert!(ch.status().connected());
    publish(&ch, "", &other_q, b"c").await;
    let d = take(&mut other, 1).await.remove(0);
    d.acker.ack(BasicAckOptions::default()).await.unwrap();
    // Both unacked messages are back in order, redelivered.
    let q = passive(&ch, &slow_q).await.unwrap();
    assert_eq!((q.message_count(), q.consumer_count()), (2, 0));
    let mut again = consume(&ch, &slow_q, true).await;
    let ds = take(&mut again, 2).await;
    assert_eq!(
        ds.iter()
            .map(|d| (d.data.clone(), d.redelivered))
            .collect::<Vec<_>>(),
        vec![(b"a".to_vec(), true), (b"b".to_vec(), true)]
    );
}

/// Bad consumer timeout arguments are 406 at declare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_arguments_are_validated() {
    let b = Broker::start().await;
    let c = b.connect().await;
    for (k, v, text_end) in [
        (
            "x-consumer-timeout",
            AMQPValue::LongInt(-5),
            "{value_negative,-5}",
        ),
        (
            "x-consumer-timeout",
            s("soon"),
            "\"expected integer, got longstr\"",
        ),
        (
            "x-consumer-timeout-action",
            s("explode"),
            "\"unknown value 'explode', expected one of: close_channel, cancel_consumer\"",
        ),
        (
            "x-consumer-timeout-action",
            AMQPValue::LongInt(1),
            "{unacceptable_type,signedint}",
        ),
    ] {
        let ch = c.create_channel().await.unwrap();
        let e = declare_with(&ch, &unique("bad-timeout"), &[(k, v)])
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(406));
        assert!(text(&e).ends_with(text_end), "{}", text(&e));
    }
}
