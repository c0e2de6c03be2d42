//! Delayed delivery: the x-delayed-message exchange type.

use super::{declare_exchange, int_header, publish_props, s, with_headers};
use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::time::{Duration, Instant};

/// Declaring x-delayed-message needs x-delayed-type naming a real type (the plugin's 406s);
/// redeclaring with another type is inequivalent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_exchange_declaration() {
    let b = Broker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    let e = declare_exchange(&ch, &unique("dx"), "x-delayed-message", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert_eq!(
        text(&e),
        "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type"
    );
    let ch = c.create_channel().await.unwrap();
    let e = declare_exchange(
        &ch,
        &unique("dx"),
        "x-delayed-message",
        &[("x-delayed-type", s("x-delayed-message"))],
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert!(text(&e).contains("can't be used for 'x-delayed-type'"));
    let ch = c.create_channel().await.unwrap();
    let x = unique("dx");
    declare_exchange(
        &ch,
        &x,
        "x-delayed-message",
        &[("x-delayed-type", s("topic"))],
    )
    .await
    .unwrap();
    declare_exchange(
        &ch,
        &x,
        "x-delayed-message",
        &[("x-delayed-type", s("topic"))],
    )
    .await
    .unwrap();
    let e = declare_exchange(&ch, &x, "topic", &[]).await.unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert!(
        text(&e).contains("received 'topic' but current is 'x-delayed-message'"),
        "{}",
        text(&e)
    );
    // An unknown delayed type is an unknown exchange type: 503, which closes the connection.
    let ch = c.create_channel().await.unwrap();
    let e = declare_exchange(
        &ch,
        &unique("dx"),
        "x-delayed-message",
        &[("x-delayed-type", s("bogus"))],
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), Some(503));
}

/// Messages with x-delay wait that long, then route by the delayed type (here topic), in due
/// order; delivered with x-delay negated as the plugin does. No or a negative x-delay: at once.
/// Publisher confirms come at once; a mandatory delayed publish is not returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_arrive_when_due() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let x = unique("delayed");
    declare_exchange(
        &ch,
        &x,
        "x-delayed-message",
        &[("x-delayed-type", s("topic"))],
    )
    .await
    .unwrap();
    let q = unique("delayed-q");
    declare(&ch, &q).await;
    ch.queue_bind(
        q.as_str().into(),
        x.as_str().into(),
        "job.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let t0 = Instant::now();
    for (body, delay) in [(b"late".as_slice(), 600i64), (b"soon", 200), (b"mid", 400)] {
        let c = ch
            .basic_publish(
                x.as_str().into(),
                "job.run".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                with_headers(&[("x-delay", AMQPValue::LongInt(delay as i32))]),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack());
        assert!(c.take_message().is_none(), "not returned");
    }
    publish_props(&ch, &x, "job.now", b"now", BasicProperties::default()).await;
    publish_props(
        &ch,
        &x,
        "job.neg",
        b"negative",
        with_headers(&[("x-delay", AMQPValue::LongInt(-5000))]),
    )
    .await;
    publish_props(
        &ch,
        &x,
        "other",
        b"unbound",
        with_headers(&[("x-delay", AMQPValue::LongInt(50))]),
    )
    .await;
    let mut cons = consume(&ch, &q, true).await;
    let first = take(&mut cons, 2).await;
    assert_eq!(
        first.iter().map(|d| d.data.clone()).collect::<Vec<_>>(),
        vec![b"now".to_vec(), b"negative".to_vec()]
    );
    let mut arrivals = Vec::new();
    for d in take(&mut cons, 3).await {
        arrivals.push((
            d.data.clone(),
            t0.elapsed(),
            int_header(&d.properties, "x-delay"),
        ));
    }
    let order: Vec<&[u8]> = arrivals.iter().map(|a| a.0.as_slice()).collect();
    assert_eq!(order, vec![b"soon".as_slice(), b"mid", b"late"]);
    for ((_, at, xd), (due, _)) in arrivals.iter().zip([(200u64, 0), (400, 0), (600, 0)]) {
        assert!(*at >= Duration::from_millis(due), "{at:?} before {due} ms");
        assert!(
            *at < Duration::from_millis(due + 1500),
            "{at:?} long after {due} ms"
        );
        assert_eq!(*xd, Some(-(due as i64)));
    }
    none_within(&mut cons, 100).await;
}

/// Deleting a delayed exchange drops what it holds; a new exchange of the same name does not
/// receive the old messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_delayed_exchange_drops_its_messages() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let x = unique("delayed-del");
    let args = [("x-delayed-type", s("fanout"))];
    declare_exchange(&ch, &x, "x-delayed-message", &args)
        .await
        .unwrap();
    let q = unique("delayed-del-q");
    declare(&ch, &q).await;
    ch.queue_bind(
        q.as_str().into(),
        x.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_props(
        &ch,
        &x,
        "",
        b"gone",
        with_headers(&[("x-delay", AMQPValue::LongInt(200))]),
    )
    .await;
    ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    declare_exchange(&ch, &x, "x-delayed-message", &args)
        .await
        .unwrap();
    ch.queue_bind(
        q.as_str().into(),
        x.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_props(
        &ch,
        &x,
        "",
        b"new",
        with_headers(&[("x-delay", AMQPValue::LongInt(300))]),
    )
    .await;
    let mut cons = consume(&ch, &q, true).await;
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(d.data, b"new");
    none_within(&mut cons, 200).await;
}
