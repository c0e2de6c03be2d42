//! x-delivery-limit: deliveries that came back are counted (x-delivery-count), and a message
//! past its limit is dead-lettered or dropped.

use super::{dead_letter_queue, declare_with, int_header, s, str_header};
use crate::harness::*;
use lapin::options::*;
use lapin::types::AMQPValue;

/// Deliveries carry x-delivery-count once returned (absent the first time); nack with requeue
/// and a closed channel both count; past the limit the message is dead-lettered with reason
/// delivery_limit (without the count header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_counts_returns_and_dead_letters() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let dlq = dead_letter_queue(&ch, "poison").await;
    let q = unique("limited");
    declare_with(
        &ch,
        &q,
        &[
            ("x-delivery-limit", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", s("amq.direct")),
            ("x-dead-letter-routing-key", s("poison")),
        ],
    )
    .await
    .unwrap();
    publish(&ch, "", &q, b"bad").await;
    // First delivery: no count. Return it by nack.
    let ch2 = c.create_channel().await.unwrap();
    let mut cons = consume(&ch2, &q, false).await;
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(int_header(&d.properties, "x-delivery-count"), None);
    assert!(!d.redelivered);
    d.acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(int_header(&d.properties, "x-delivery-count"), Some(1));
    assert!(d.redelivered);
    // Second return: the channel goes away with the delivery unacked.
    ch2.close(200, "bye".into()).await.unwrap();
    let ch3 = c.create_channel().await.unwrap();
    let mut cons = consume(&ch3, &q, false).await;
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(int_header(&d.properties, "x-delivery-count"), Some(2));
    assert_eq!(d.data, b"bad");
    // Third return: over the limit of 2, dead-lettered instead of redelivered.
    d.acker
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    none_within(&mut cons, 200).await;
    let m = get_one(&ch, &dlq).await.expect("dead-lettered");
    let p = &m.delivery.properties;
    assert_eq!(m.delivery.data, b"bad");
    assert_eq!(
        str_header(p, "x-first-death-reason").as_deref(),
        Some("delivery_limit")
    );
    assert_eq!(int_header(p, "x-delivery-count"), None);
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 0);
}

/// Without a dead-letter exchange a message over its delivery limit is dropped; limit 0 means
/// one delivery only. Acked messages are not counted; invalid limits are 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_zero_drops_and_invalid_limits_are_refused() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("limit0");
    declare_with(&ch, &q, &[("x-delivery-limit", AMQPValue::LongInt(0))])
        .await
        .unwrap();
    publish(&ch, "", &q, b"once").await;
    publish(&ch, "", &q, b"fine").await;
    let mut cons = consume(&ch, &q, false).await;
    let ds = take(&mut cons, 2).await;
    ds[0]
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    ds[1].acker.ack(BasicAckOptions::default()).await.unwrap();
    none_within(&mut cons, 200).await;
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 0);

    for (v, text) in [
        (AMQPValue::LongInt(-1), "{value_negative,-1}"),
        (s("ten"), "\"expected integer, got longstr\""),
    ] {
        let ch = c.create_channel().await.unwrap();
        let e = declare_with(&ch, &unique("bad-limit"), &[("x-delivery-limit", v)])
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(406));
        assert!(
            text_of(&e).contains("invalid arg 'x-delivery-limit'"),
            "{}",
            text_of(&e)
        );
        assert!(text_of(&e).ends_with(text), "{}", text_of(&e));
    }
}

fn text_of(e: &lapin::Error) -> String {
    text(e)
}
