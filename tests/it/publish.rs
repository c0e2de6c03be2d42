//! The one publish path (`VHost::publish`): every way a message comes in — AMQP basic.publish,
//! the HTTP API's publish, dead-lettering, a delayed exchange's release — routes, stores and
//! enqueues the same way.

use crate::child::spawn;
use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use serde_json::{json, Value};
use std::time::Duration;

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

async fn exchange(ch: &Channel, name: &str, kind: &str, args: FieldTable) {
    ch.exchange_declare(
        name.into(),
        lapin::ExchangeKind::Custom(kind.into()),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("exchange.declare");
}

/// Publish with confirms, expecting an ack.
async fn confirmed(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    let c = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("basic.publish")
        .await
        .expect("confirm");
    assert!(c.is_ack(), "acked");
}

/// The API's publish (`amq.default` is the default exchange), returning its JSON answer.
async fn http_publish(api: &Api, exchange: &str, key: &str, body: &str, props: Value) -> Resp {
    api.post(
        &format!("/api/exchanges/%2F/{exchange}/publish"),
        json!({"routing_key": key, "payload": body, "payload_encoding": "string",
               "properties": props}),
    )
    .await
}

/// Ready messages in `queue`, waiting up to 5 s for at least `n`.
async fn wait_ready(ch: &Channel, queue: &str, n: u32) -> u32 {
    let mut got = 0;
    for _ in 0..250 {
        got = passive(ch, queue)
            .await
            .expect("queue exists")
            .message_count();
        if got >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got
}

/// Every message in `queue` (basic.get, acked): bodies and headers.
async fn take_all(ch: &Channel, queue: &str) -> Vec<(String, FieldTable)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let d = m.delivery;
        let h = d.properties.headers().clone().unwrap_or_default();
        out.push((String::from_utf8_lossy(&d.data).into_owned(), h));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn bodies(v: &[(String, FieldTable)]) -> Vec<&str> {
    v.iter().map(|(b, _)| b.as_str()).collect()
}

/// Regression: a persistent message published through `POST /api/exchanges/{vhost}/{x}/publish`
/// into a durable queue was gone after a restart (the API's copy of the publish sequence never
/// stored it). Now every entry point stores persistent messages for durable queues the same way:
/// AMQP, the API, dead-lettering and a delayed exchange's release all survive `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_point_keeps_persistent_messages_across_kill_9() {
    let dir = temp_data_dir();
    let p = spawn(&dir).unwrap();
    let api = Api {
        base: format!("http://{}", p.http),
    };
    let (_c, ch) = p.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for q in ["via-amqp", "via-http", "dead", "released"] {
        declare_durable(&ch, q, FieldTable::default()).await;
    }
    let dying = table(&[
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("dead")),
    ]);
    declare_durable(&ch, "dying", dying).await;
    exchange(
        &ch,
        "later",
        "x-delayed-message",
        table(&[("x-delayed-type", s("direct"))]),
    )
    .await;
    bind(&ch, "released", "later", "k").await;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let delayed = persistent
        .clone()
        .with_headers(table(&[("x-delay", AMQPValue::LongInt(150))]));

    // AMQP.
    confirmed(&ch, "", "via-amqp", b"amqp", persistent.clone()).await;
    // The API: answered once stored, as RabbitMQ (which publishes with confirms) does.
    let r = http_publish(
        &api,
        "amq.default",
        "via-http",
        "http",
        json!({"delivery_mode": 2}),
    )
    .await;
    assert_eq!(
        (r.status, &r.body),
        (200, &json!({"routed": true})),
        "{}",
        r.text
    );
    // Dead-lettering: a rejected persistent message moves to its durable dead-letter queue.
    confirmed(&ch, "", "dying", b"dead", persistent.clone()).await;
    let m = get_with(&ch, "dying", false)
        .await
        .expect("the dying message");
    m.delivery
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .unwrap();
    // Delayed release, published both ways.
    confirmed(&ch, "later", "k", b"delayed-amqp", delayed.clone()).await;
    let r = http_publish(
        &api,
        "later",
        "k",
        "delayed-http",
        json!({"delivery_mode": 2, "headers": {"x-delay": 150}}),
    )
    .await;
    // Held, not yet routed: what RabbitMQ answers for the delayed plugin.
    assert_eq!(
        (r.status, &r.body),
        (200, &json!({"routed": false})),
        "{}",
        r.text
    );
    assert_eq!(wait_ready(&ch, "dead", 1).await, 1);
    assert_eq!(wait_ready(&ch, "released", 2).await, 2);
    // A confirmed publish after them: the log is written in order, so once it is synced the
    // dead-lettered and released records before it are too.
    confirmed(&ch, "", "via-amqp", b"barrier", persistent.clone()).await;
    p.kill9();

    let p = spawn(&dir).unwrap();
    let (_c, ch) = p.channel().await;
    assert_eq!(
        bodies(&take_all(&ch, "via-amqp").await),
        ["amqp", "barrier"]
    );
    assert_eq!(bodies(&take_all(&ch, "via-http").await), ["http"]);
    let dead = take_all(&ch, "dead").await;
    assert_eq!(bodies(&dead), ["dead"]);
    assert!(
        dead[0].1.inner().contains_key("x-death"),
        "dead-lettered with its history: {:?}",
        dead[0].1
    );
    let released = take_all(&ch, "released").await;
    assert_eq!(bodies(&released), ["delayed-amqp", "delayed-http"]);
    for (_, h) in &released {
        // As the plugin reports it on release: minus the delay.
        assert_eq!(h.inner().get("x-delay"), Some(&AMQPValue::LongInt(-150)));
    }
    assert_eq!(passive(&ch, "dying").await.unwrap().message_count(), 0);
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

fn array(keys: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        keys.iter().map(|k| s(k)).collect::<Vec<_>>(),
    ))
}

/// Sender-selected distribution and delayed delivery used to be AMQP-only: the API's publish
/// ignored `CC`/`BCC` and `x-delay`. They now behave the same whichever way the message came in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_bcc_and_x_delay_are_the_same_through_amqp_and_http() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let x = unique("ccx");
    exchange(&ch, &x, "direct", FieldTable::default()).await;
    let [qa, qb, qc] = [unique("a"), unique("b"), unique("c")];
    for (q, key) in [(&qa, "a"), (&qb, "b"), (&qc, "c")] {
        declare(&ch, q).await;
        bind(&ch, q, &x, key).await;
    }
    let headers = table(&[("CC", array(&["b"])), ("BCC", array(&["c"]))]);
    confirmed(
        &ch,
        &x,
        "a",
        b"amqp",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    let r = http_publish(
        &api,
        &x,
        "a",
        "http",
        json!({"headers": {"CC": ["b"], "BCC": ["c"]}}),
    )
    .await;
    assert_eq!(r.body, json!({"routed": true}), "{}", r.text);
    for q in [&qa, &qb, &qc] {
        let got = take_all(&ch, q).await;
        assert_eq!(bodies(&got), ["amqp", "http"], "queue {q}");
        for (body, h) in &got {
            assert!(!h.inner().contains_key("BCC"), "{body}: BCC is removed");
            assert_eq!(
                h.inner().get("CC"),
                Some(&array(&["b"])),
                "{body}: CC stays"
            );
        }
    }
    // The default exchange takes CC keys as queue names too.
    let cc_b = table(&[("CC", array(&[qb.as_str()]))]);
    confirmed(
        &ch,
        "",
        &qa,
        b"amqp",
        BasicProperties::default().with_headers(cc_b),
    )
    .await;
    let r = http_publish(
        &api,
        "amq.default",
        &qa,
        "http",
        json!({"headers": {"CC": [qb]}}),
    )
    .await;
    assert_eq!(r.body, json!({"routed": true}), "{}", r.text);
    for q in [&qa, &qb] {
        assert_eq!(bodies(&take_all(&ch, q).await), ["amqp", "http"], "{q}");
    }

    // x-delay: held by the delayed exchange, then routed by its x-delayed-type.
    let dx = unique("dx");
    exchange(
        &ch,
        &dx,
        "x-delayed-message",
        table(&[("x-delayed-type", s("direct"))]),
    )
    .await;
    let qd = unique("d");
    declare(&ch, &qd).await;
    bind(&ch, &qd, &dx, "d").await;
    let delay = table(&[("x-delay", AMQPValue::LongInt(400))]);
    confirmed(
        &ch,
        &dx,
        "d",
        b"amqp",
        BasicProperties::default().with_headers(delay),
    )
    .await;
    let r = http_publish(&api, &dx, "d", "http", json!({"headers": {"x-delay": 400}})).await;
    assert_eq!(r.body, json!({"routed": false}), "{}", r.text);
    assert_eq!(
        passive(&ch, &qd).await.unwrap().message_count(),
        0,
        "both held"
    );
    assert_eq!(wait_ready(&ch, &qd, 2).await, 2);
    let got = take_all(&ch, &qd).await;
    assert_eq!(bodies(&got), ["amqp", "http"]);
    for (_, h) in &got {
        assert_eq!(h.inner().get("x-delay"), Some(&AMQPValue::LongInt(-400)));
    }
}

/// The API's publish answers as RabbitMQ's (which publishes mandatory, with confirms): a full
/// `reject-publish` queue's refusal is a 400, unroutable is `routed: false`, an internal exchange
/// is refused — while dead-lettering may target an internal exchange, as in RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publish_refusals_and_dead_lettering_to_an_internal_exchange() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let (_c, ch) = b.channel().await;
    let full = unique("full");
    ch.queue_declare(
        full.as_str().into(),
        QueueDeclareOptions::default(),
        table(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await
    .unwrap();
    let r = http_publish(&api, "amq.default", &full, "1", json!({})).await;
    assert_eq!(r.body, json!({"routed": true}), "{}", r.text);
    let r = http_publish(&api, "amq.default", &full, "2", json!({})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.text
            .contains("Unable to publish message. Check queue limits."),
        "{}",
        r.text
    );
    let r = http_publish(&api, "amq.default", &unique("nowhere"), "x", json!({})).await;
    assert_eq!(r.body, json!({"routed": false}), "{}", r.text);

    let internal = unique("internal");
    ch.exchange_declare(
        internal.as_str().into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let r = http_publish(&api, &internal, "k", "x", json!({})).await;
    assert_ne!(
        r.status, 200,
        "publishing to an internal exchange: {}",
        r.text
    );
    let dlq = unique("dlq");
    declare(&ch, &dlq).await;
    bind(&ch, &dlq, &internal, "k").await;
    let src = unique("src");
    ch.queue_declare(
        src.as_str().into(),
        QueueDeclareOptions::default(),
        table(&[
            ("x-dead-letter-exchange", s(&internal)),
            ("x-dead-letter-routing-key", s("k")),
        ]),
    )
    .await
    .unwrap();
    publish(&ch, "", &src, b"to-internal").await;
    let m = get_with(&ch, &src, false).await.expect("message");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let got = get_one(&ch, &dlq)
        .await
        .expect("dead-lettered through the internal exchange");
    assert_eq!(got.delivery.data, b"to-internal");
}

/// Without `x-dead-letter-routing-key` a dead message is routed by all its routing keys, its
/// own and its `CC` header's, as RabbitMQ does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettering_routes_by_the_message_keys_cc_included() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let dlx = unique("dlx");
    exchange(&ch, &dlx, "direct", FieldTable::default()).await;
    let [q1, q2] = [unique("k1"), unique("k2")];
    declare(&ch, &q1).await;
    declare(&ch, &q2).await;
    bind(&ch, &q1, &dlx, "k1").await;
    bind(&ch, &q2, &dlx, "k2").await;
    let src = unique("src");
    ch.queue_declare(
        src.as_str().into(),
        QueueDeclareOptions::default(),
        table(&[("x-dead-letter-exchange", s(&dlx))]),
    )
    .await
    .unwrap();
    let x = unique("in");
    exchange(&ch, &x, "fanout", FieldTable::default()).await;
    bind(&ch, &src, &x, "").await;
    ch.basic_publish(
        x.as_str().into(),
        "k1".into(),
        BasicPublishOptions::default(),
        b"m",
        BasicProperties::default().with_headers(table(&[("CC", array(&["k2"]))])),
    )
    .await
    .unwrap();
    let m = get_with(&ch, &src, false).await.expect("message");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    for q in [&q1, &q2] {
        assert!(get_one(&ch, q).await.is_some(), "dead-lettered to {q}");
    }
}
