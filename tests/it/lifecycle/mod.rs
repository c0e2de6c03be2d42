//! Message lifecycle beyond TTL and dead-lettering: delivery limits, priority queues,
//! reject-publish-dlx, consumer acknowledgement timeouts, delayed delivery and deduplication.

use crate::harness::*;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use std::time::{Duration, Instant};

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref().and_then(|h| h.inner().get(key))
}

fn str_header(props: &BasicProperties, key: &str) -> Option<String> {
    match header(props, key)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

fn int_header(props: &BasicProperties, key: &str) -> Option<i64> {
    Some(match header(props, key)? {
        AMQPValue::ShortShortInt(n) => *n as i64,
        AMQPValue::ShortInt(n) => *n as i64,
        AMQPValue::LongInt(n) => *n as i64,
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongUInt(n) => *n as i64,
        _ => return None,
    })
}

fn with_headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    BasicProperties::default().with_headers(t)
}

async fn declare_with(
    ch: &lapin::Channel,
    q: &str,
    args: &[(&str, AMQPValue)],
) -> lapin::Result<lapin::Queue> {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.clone());
    }
    ch.queue_declare(q.into(), QueueDeclareOptions::default(), t)
        .await
}

async fn publish_props(
    ch: &lapin::Channel,
    ex: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    ch.basic_publish(
        ex.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("basic.publish");
}

/// A queue bound to amq.direct with routing key `key`, for dead-lettered messages.
async fn dead_letter_queue(ch: &lapin::Channel, key: &str) -> String {
    let dlq = unique("dlq");
    declare(ch, &dlq).await;
    ch.queue_bind(
        dlq.as_str().into(),
        "amq.direct".into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    dlq
}

// ---- x-delivery-limit ---------------------------------------------------------------------

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

// ---- priority queues ----------------------------------------------------------------------

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
    tokio::time::sleep(Duration::from_millis(200)).await;
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

// ---- x-overflow reject-publish-dlx --------------------------------------------------------

/// reject-publish-dlx: what a full queue refuses is nacked to the publisher and dead-lettered
/// (reason maxlen); what it holds stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_dlx_nacks_and_dead_letters() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let dlq = dead_letter_queue(&ch, "full").await;
    let q = unique("rpdlx");
    declare_with(
        &ch,
        &q,
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-dead-letter-exchange", s("amq.direct")),
            ("x-dead-letter-routing-key", s("full")),
        ],
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut outcome = Vec::new();
    for body in [b"kept".as_slice(), b"refused"] {
        let c = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        outcome.push(c.is_ack());
    }
    assert_eq!(outcome, vec![true, false]);
    let m = get_one(&ch, &dlq)
        .await
        .expect("refused message dead-lettered");
    assert_eq!(m.delivery.data, b"refused");
    assert_eq!(
        str_header(&m.delivery.properties, "x-first-death-reason").as_deref(),
        Some("maxlen")
    );
    let m = get_one(&ch, &q).await.unwrap();
    assert_eq!(m.delivery.data, b"kept");
}

// ---- consumer acknowledgement timeout -----------------------------------------------------

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
    declare_with(&ch, &q, &[("x-consumer-timeout", AMQPValue::LongInt(300))])
        .await
        .unwrap();
    publish(&ch, "", &q, b"fast").await;
    publish(&ch, "", &q, b"slow").await;
    let late = c.create_channel().await.unwrap();
    late.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&late, &q, false).await;
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(d.data, b"fast");
    tokio::time::sleep(Duration::from_millis(150)).await;
    d.acker.ack(BasicAckOptions::default()).await.unwrap(); // in time
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(d.data, b"slow");
    let started = Instant::now();
    let e = consumer_error(&mut cons, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert_eq!(code(&e), Some(406), "{e:?}");
    assert_eq!(
        text(&e),
        format!(
            "PRECONDITION_FAILED - delivery acknowledgement on channel {} timed out. Timeout \
             value used: 300 ms. This timeout value can be configured, see consumers doc guide \
             to learn more",
            late.id()
        )
    );
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
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

// ---- delayed delivery (x-delayed-message) -------------------------------------------------

async fn declare_exchange(
    ch: &lapin::Channel,
    name: &str,
    kind: &str,
    args: &[(&str, AMQPValue)],
) -> lapin::Result<()> {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.clone());
    }
    ch.exchange_declare(
        name.into(),
        lapin::ExchangeKind::Custom(kind.into()),
        ExchangeDeclareOptions::default(),
        t,
    )
    .await
}

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

// ---- deduplication (rabbitmq-message-deduplication) ---------------------------------------

fn dedup(v: &str) -> BasicProperties {
    with_headers(&[("x-deduplication-header", s(v))])
}

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
    tokio::time::sleep(Duration::from_millis(150)).await;
    publish_props(&ch, &x, "k", b"s2", dedup("short")).await; // its own TTL ran out
    publish_props(&ch, &x, "k", b"a3", dedup("a")).await; // still within 1500 ms
    tokio::time::sleep(Duration::from_millis(1500)).await;
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

// ---- with the message log: paging, persistence -------------------------------------------

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
