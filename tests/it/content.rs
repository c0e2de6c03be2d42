//! Message content: bodies and property blocks of every size and kind arrive byte for byte,
//! and the publish-time checks of properties (user-id).

use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// Bodies, routing keys and properties short enough to be kept inside the message and those
/// just past it arrive byte for byte, whether one queue or several (a fanout) take them, and
/// read back from the queue with basic.get as well as pushed to a consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_and_long_parts_arrive_intact() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let short = unique("in");
    // A routing key past the 22 bytes kept inline.
    let long = unique("a-routing-key-longer-than-what-fits-inline");
    assert!(short.len() <= 22 && long.len() > 22, "{short} {long}");
    for q in [&short, &long] {
        declare(&ch, q).await;
        bind(&ch, q, "amq.fanout", "").await;
    }
    let body = |n: usize| (0..n).map(|i| (i * 7 + n) as u8).collect::<Vec<u8>>();
    let id = |n: usize| format!("{n:0>w$}", w = n.min(200));
    let sizes: Vec<usize> = (1..=40).chain([100, 5000]).collect();
    for &n in &sizes {
        // Through the default exchange to each queue, then the fanout to both; a message id
        // makes the property block short or long with the body.
        let props = BasicProperties::default().with_message_id(id(n).into());
        for (exchange, key) in [
            ("", short.as_str()),
            ("", long.as_str()),
            ("amq.fanout", ""),
        ] {
            ch.basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                &body(n),
                props.clone(),
            )
            .await
            .unwrap();
        }
    }
    let mut cons = consume(&ch, &short, true).await;
    let got = take(&mut cons, 2 * sizes.len()).await;
    for (k, d) in got.iter().enumerate() {
        let n = sizes[k / 2];
        assert_eq!(d.data, body(n), "{n} bytes");
        let got_id = d.properties.message_id().as_ref().map(|s| s.to_string());
        assert_eq!(got_id, Some(id(n)), "{n} bytes");
    }
    for &n in &sizes {
        for _ in 0..2 {
            let d = ch
                .basic_get(long.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .expect("a message");
            assert_eq!(d.delivery.data, body(n), "{n} bytes");
            assert_eq!(
                d.delivery.routing_key.as_str(),
                if d.delivery.exchange.as_str().is_empty() {
                    long.as_str()
                } else {
                    ""
                }
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_split_and_rejoin() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("large");
    declare(&ch, &q).await;
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", &q, &body).await;
    publish(&ch, "", &q, b"").await;
    let mut cons = consume(&ch, &q, true).await;
    let ds = take(&mut cons, 2).await;
    assert_eq!(ds[0].data.len(), body.len());
    assert!(ds[0].data == body);
    assert!(ds[1].data.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_properties_round_trip() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("props");
    declare(&ch, &q).await;
    let mut nested = FieldTable::default();
    nested.insert("deep".into(), AMQPValue::LongLongInt(-5));
    let mut arr = FieldArray::default();
    arr.push(AMQPValue::LongString(LongString::from("a")));
    arr.push(AMQPValue::Boolean(true));
    arr.push(AMQPValue::Double(1.5));
    let mut headers = FieldTable::default();
    headers.insert("table".into(), AMQPValue::FieldTable(nested));
    headers.insert("array".into(), AMQPValue::FieldArray(arr));
    headers.insert("i8".into(), AMQPValue::ShortShortInt(-3));
    headers.insert("u8".into(), AMQPValue::ShortShortUInt(3));
    headers.insert("i16".into(), AMQPValue::ShortInt(-300));
    headers.insert("i32".into(), AMQPValue::LongInt(-70000));
    headers.insert("i64".into(), AMQPValue::LongLongInt(1 << 40));
    headers.insert("f32".into(), AMQPValue::Float(2.5));
    headers.insert("ts".into(), AMQPValue::Timestamp(1_700_000_000));
    headers.insert("void".into(), AMQPValue::Void);
    headers.insert(
        "bytes".into(),
        AMQPValue::ByteArray(vec![0u8, 1, 255].into()),
    );
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding("gzip".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("corr".into())
        .with_reply_to("reply".into())
        .with_expiration("60000".into())
        .with_message_id("mid".into())
        .with_timestamp(1_600_000_000)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("app".into())
        .with_cluster_id("cl".into());
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        b"p",
        props.clone(),
    )
    .await
    .unwrap();
    let mut cons = consume(&ch, &q, true).await;
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(d.properties, props);
}

/// A user-id property other than the authenticated user closes the channel with 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_must_be_the_authenticated_user() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("uid");
    declare(&ch, &q).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let ok = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_user_id("guest".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ok.is_ack());
    let e = publish_refused(
        &ch,
        "",
        &q,
        BasicProperties::default().with_user_id("bob".into()),
    )
    .await;
    assert_eq!(code(&e), Some(406), "{e}");
    assert_eq!(
        text(&e),
        "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'"
    );
    let ch = c.create_channel().await.unwrap();
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 1);
}
