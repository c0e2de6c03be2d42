//! Quorum queues (`x-queue-type: quorum`) on one node follow RabbitMQ 3.10's client-visible
//! rules (probed on a 3-node RabbitMQ 3.10.8 cluster, notes/quorum-rabbit.md): declare and
//! redeclare checks, `x-delivery-count` on basic.get, no channel-wide prefetch, no if-empty /
//! if-unused delete, returned messages to the back, the delivery limit. Each test states the
//! bug it guards against.

use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection};
use std::time::Duration;

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn table(args: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// Quorum arguments plus `extra`.
fn qq(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = table(extra);
    t.insert("x-queue-type".into(), s("quorum"));
    t
}

async fn declare_args(ch: &Channel, name: &str, args: FieldTable) -> lapin::Result<lapin::Queue> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
}

/// A refusal that closed the channel (406) and left the connection open.
fn channel_refusal(c: &Connection, e: &lapin::Error) -> (Option<u16>, String) {
    assert!(c.status().connected(), "the connection stays open: {e}");
    (code(e), text(e))
}

/// A refusal that closed the connection: its code and text.
async fn connection_refusal(c: &Connection, e: &lapin::Error) -> (Option<u16>, String) {
    for _ in 0..100 {
        if !c.status().connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!c.status().connected(), "the connection is closed: {e}");
    (code(e), text(e))
}

fn header<'a>(p: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    p.headers().as_ref().and_then(|h| h.inner().get(key))
}

/// The `x-delivery-count` header exactly as sent: it must be a long (`l`).
fn delivery_count(p: &BasicProperties) -> Option<i64> {
    match header(p, "x-delivery-count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        other => panic!("x-delivery-count is not a long: {other:?}"),
    }
}

async fn publish_confirmed_body(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn get_body(ch: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message")
}

/// Bug: `x-dead-letter-routing-key` without `x-dead-letter-exchange` was accepted; RabbitMQ
/// refuses it (406, channel closed) for quorum and classic queues alike. And a quorum queue
/// with another type's argument and a bad `x-delivery-limit` was refused for the limit, where
/// RabbitMQ names the other type's argument (it does not check the limit at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_routing_key_needs_an_exchange() {
    let b = Broker::start().await;
    let c = b.connect().await;
    for quorum in [true, false] {
        let q = unique("dlrk");
        let args = [("x-dead-letter-routing-key", s("k"))];
        let ch = c.create_channel().await.unwrap();
        let t = if quorum { qq(&args) } else { table(&args) };
        let e = declare_args(&ch, &q, t).await.unwrap_err();
        assert_eq!(
            channel_refusal(&c, &e),
            (
                Some(406),
                format!(
                    "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue \
                     '{q}' in vhost '/': routing_key_but_no_dlx_defined"
                )
            ),
            "quorum: {quorum}"
        );
        // With an exchange it is fine.
        let ch = c.create_channel().await.unwrap();
        let args = [
            ("x-dead-letter-routing-key", s("k")),
            ("x-dead-letter-exchange", s("")),
        ];
        let t = if quorum { qq(&args) } else { table(&args) };
        declare_args(&ch, &q, t).await.unwrap();
    }
    // Another type's argument is named before a bad value of a Warren-checked one.
    let q = unique("order");
    let ch = c.create_channel().await.unwrap();
    let t = qq(&[
        ("x-delivery-limit", s("x")),
        ("x-max-priority", AMQPValue::LongInt(5)),
    ]);
    let e = declare_args(&ch, &q, t).await.unwrap_err();
    assert_eq!(
        channel_refusal(&c, &e),
        (
            Some(406),
            format!(
                "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost \
                 '/' of queue type rabbit_quorum_queue"
            )
        )
    );
    // RabbitMQ's own checks still come before the refusal by name.
    let ch = c.create_channel().await.unwrap();
    let t = qq(&[
        ("x-expires", AMQPValue::LongInt(0)),
        ("x-max-priority", AMQPValue::LongInt(5)),
    ]);
    let e = declare_args(&ch, &q, t).await.unwrap_err();
    assert_eq!(
        text(&e),
        format!("PRECONDITION_FAILED - invalid arg 'x-expires' for queue '{q}' in vhost '/': {{value_zero,0}}")
    );
    // And the bad limit alone is still refused (Warren's own check).
    let ch = c.create_channel().await.unwrap();
    let e = declare_args(&ch, &q, qq(&[("x-delivery-limit", s("x"))]))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert!(text(&e).contains("'x-delivery-limit'"), "{}", text(&e));
}

/// Bug: a quorum queue redeclared with another `x-quorum-initial-group-size` (or none), or
/// with an `x-dead-letter-strategy` it was not declared with, was accepted; the `x-queue-type`
/// texts made up a "classic" value where RabbitMQ compares the tables as declared ("none");
/// and a quorum queue redeclared as a stream was refused for the stream's arguments instead of
/// being told the types differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_compares_as_rabbitmq() {
    let b = Broker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    let q = unique("qq-re");
    let base = [
        ("x-delivery-limit", AMQPValue::LongInt(5)),
        ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
        ("x-max-length", AMQPValue::LongInt(100)),
    ];
    declare_args(&ch, &q, qq(&base)).await.unwrap();
    // Identical, and with the limit as a long: the same.
    declare_args(&ch, &q, qq(&base)).await.unwrap();
    let mut long = qq(&base);
    long.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(5));
    declare_args(&ch, &q, long).await.unwrap();

    // The base declaration with `k` set to `v`, or without `k`.
    let with = |k: &str, v: Option<AMQPValue>| {
        let mut t = FieldTable::default();
        for (key, val) in qq(&base).inner() {
            if key.as_str() != k {
                t.insert(key.clone(), val.clone());
            }
        }
        if let Some(v) = v {
            t.insert(k.into(), v);
        }
        t
    };
    let ineq = |arg: &str, detail: &str| {
        (
            Some(406),
            format!(
                "PRECONDITION_FAILED - inequivalent arg '{arg}' for queue '{q}' in vhost '/': \
                 {detail}"
            ),
        )
    };
    let cases = [
        (
            with("x-quorum-initial-group-size", Some(AMQPValue::LongInt(1))),
            ineq(
                "x-quorum-initial-group-size",
                "received '1' but current is '3'",
            ),
        ),
        (
            with("x-quorum-initial-group-size", None),
            ineq(
                "x-quorum-initial-group-size",
                "received none but current is the value '3' of type 'signedint'",
            ),
        ),
        (
            with("x-dead-letter-strategy", Some(s("at-most-once"))),
            ineq(
                "x-dead-letter-strategy",
                "received the value 'at-most-once' of type 'longstr' but current is none",
            ),
        ),
        (
            with("x-delivery-limit", Some(AMQPValue::LongInt(6))),
            ineq("x-delivery-limit", "received '6' but current is '5'"),
        ),
        (
            with("x-queue-type", None),
            ineq(
                "x-queue-type",
                "received none but current is the value 'quorum' of type 'longstr'",
            ),
        ),
        (
            with("x-queue-type", Some(s("classic"))),
            ineq("x-queue-type", "received 'classic' but current is 'quorum'"),
        ),
        (
            with("x-queue-type", Some(s("stream"))),
            ineq("x-queue-type", "received 'stream' but current is 'quorum'"),
        ),
    ];
    for (args, want) in cases {
        let ch = c.create_channel().await.unwrap();
        let e = declare_args(&ch, &q, args).await.unwrap_err();
        assert_eq!(channel_refusal(&c, &e), want);
    }
    // A non-durable redeclare: compared, not refused as a new non-durable quorum queue.
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare(q.as_str().into(), QueueDeclareOptions::default(), qq(&base))
        .await
        .unwrap_err();
    assert_eq!(
        channel_refusal(&c, &e),
        ineq("durable", "received 'false' but current is 'true'")
    );

    // A classic queue declared without a type, redeclared as quorum.
    let ch = c.create_channel().await.unwrap();
    let classic = unique("classic-re");
    declare_args(&ch, &classic, FieldTable::default())
        .await
        .unwrap();
    let e = declare_args(&ch, &classic, qq(&[])).await.unwrap_err();
    assert_eq!(
        channel_refusal(&c, &e),
        (
            Some(406),
            format!(
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{classic}' in \
                 vhost '/': received the value 'quorum' of type 'longstr' but current is none"
            )
        )
    );
    // An explicit "classic" is still what a queue without the argument is.
    let ch = c.create_channel().await.unwrap();
    declare_args(&ch, &classic, table(&[("x-queue-type", s("classic"))]))
        .await
        .unwrap();
}

/// Bug: basic.get from a quorum queue carried no `x-delivery-count` until the message had
/// been returned; RabbitMQ's quorum queues send it on every get, 0 the first time (a long),
/// while consumer deliveries have none until the first return. Classic queues send none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_carries_delivery_count() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("qq-count");
    declare_args(&ch, &q, qq(&[])).await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed_body(&ch, &q, b"0", BasicProperties::default()).await;
    // get, nack requeue, get, reject requeue, get, recover, get: 0, 1, 2, 3.
    let m = get_body(&ch, &q).await;
    assert_eq!(delivery_count(&m.delivery.properties), Some(0));
    assert!(!m.delivery.redelivered);
    m.delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let m = get_body(&ch, &q).await;
    assert_eq!(delivery_count(&m.delivery.properties), Some(1));
    assert!(m.delivery.redelivered);
    m.delivery
        .acker
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let m = get_body(&ch, &q).await;
    assert_eq!(delivery_count(&m.delivery.properties), Some(2));
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let m = get_body(&ch, &q).await;
    assert_eq!(delivery_count(&m.delivery.properties), Some(3));
    // Other headers are kept; a no-ack get counts too.
    m.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default().with_headers(table(&[("h", AMQPValue::LongInt(1))]));
    publish_confirmed_body(&ch, &q, b"1", props).await;
    let m = get_one(&ch, &q).await.unwrap();
    assert_eq!(delivery_count(&m.delivery.properties), Some(0));
    assert_eq!(
        header(&m.delivery.properties, "h"),
        Some(&AMQPValue::LongInt(1))
    );

    // A consumer: no header the first time, then 1.
    publish_confirmed_body(&ch, &q, b"2", BasicProperties::default()).await;
    let cch = c.create_channel().await.unwrap();
    let mut cons = consume(&cch, &q, false).await;
    let d = take(&mut cons, 1).await.remove(0);
    assert!(d.properties.headers().is_none(), "{:?}", d.properties);
    d.acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(delivery_count(&d.properties), Some(1));
    d.acker.ack(BasicAckOptions::default()).await.unwrap();

    // A classic queue: no header on get.
    let classic = unique("classic-count");
    declare(&ch, &classic).await;
    publish_confirmed_body(&ch, &classic, b"c", BasicProperties::default()).await;
    let m = get_one(&ch, &classic).await.unwrap();
    assert!(m.delivery.properties.headers().is_none());
}

/// Bug: basic.consume from a quorum queue on a channel with basic.qos global=true was
/// accepted; RabbitMQ closes the connection (540 NOT_IMPLEMENTED). A per-consumer prefetch is
/// fine, and a classic queue takes the channel-wide one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_qos_consume_closes_the_connection() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("qq-qos");
    declare_args(&ch, &q, qq(&[])).await.unwrap();
    let classic = unique("classic-qos");
    declare(&ch, &classic).await;
    // Per-consumer prefetch: fine.
    ch.basic_qos(10, BasicQosOptions { global: false })
        .await
        .unwrap();
    consume(&ch, &q, false).await;
    // Channel-wide: fine on a classic queue, refused on a quorum queue.
    let ch2 = c.create_channel().await.unwrap();
    ch2.basic_qos(10, BasicQosOptions { global: true })
        .await
        .unwrap();
    consume(&ch2, &classic, false).await;
    let e = ch2
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        connection_refusal(&c, &e).await,
        (
            Some(540),
            format!("NOT_IMPLEMENTED - queue '{q}' in vhost '/' does not support global qos")
        )
    );
}

/// Bug: queue.delete with if-empty or if-unused on a quorum queue was treated as on a classic
/// queue; RabbitMQ does not support these flags on quorum queues and closes the connection
/// (540), naming if-unused when both are set, whether or not the queue is empty or unused.
/// The queue stays; a plain delete works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_flags_close_the_connection() {
    let b = Broker::start().await;
    let q = unique("qq-del");
    {
        let (_c, ch) = b.channel().await;
        declare_args(&ch, &q, qq(&[])).await.unwrap();
    }
    for (if_unused, if_empty, flag) in [
        (false, true, "if-empty"),
        (true, false, "if-unused"),
        (true, true, "if-unused"),
    ] {
        let (c, ch) = b.channel().await;
        let e = ch
            .queue_delete(
                q.as_str().into(),
                QueueDeleteOptions {
                    if_unused,
                    if_empty,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            connection_refusal(&c, &e).await,
            (
                Some(540),
                format!(
                    "NOT_IMPLEMENTED - cannot delete queue '{q}' in vhost '/'. queue.delete \
                     operations with {flag} flag set are not supported by quorum queues"
                )
            )
        );
    }
    let (_c, ch) = b.channel().await;
    passive(&ch, &q).await.expect("still there");
    // Classic queues keep the flags.
    let classic = unique("classic-del");
    declare(&ch, &classic).await;
    ch.queue_delete(
        classic.as_str().into(),
        QueueDeleteOptions {
            if_empty: true,
            if_unused: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let n = ch
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 0);
    let ch = b.connect().await.create_channel().await.unwrap();
    assert_eq!(code(&passive(&ch, &q).await.unwrap_err()), Some(404));
}

/// The bodies of the messages left, in order, taken by basic.get with no-ack.
async fn drain(ch: &Channel, q: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(String::from_utf8(m.delivery.data).unwrap());
    }
    out
}

async fn publish_n(ch: &Channel, q: &str, n: u32) {
    for i in 0..n {
        publish_confirmed_body(ch, q, i.to_string().as_bytes(), BasicProperties::default()).await;
    }
}

/// Bug: a message returned to a quorum queue (nack or reject with requeue, basic.recover, its
/// consumer's channel closing) went back to its place at the head, as in a classic queue;
/// RabbitMQ 3.x puts it at the back of a quorum queue. Classic queues keep the head order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_messages_go_to_the_back() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for quorum in [true, false] {
        let q = unique("order");
        let args = if quorum {
            qq(&[])
        } else {
            FieldTable::default()
        };
        declare_args(&ch, &q, args).await.unwrap();
        let want = |quorum_order: &[&str], classic_order: &[&str]| -> Vec<String> {
            let o = if quorum { quorum_order } else { classic_order };
            o.iter().map(|s| s.to_string()).collect()
        };
        // nack requeue.
        publish_n(&ch, &q, 4).await;
        let m = get_body(&ch, &q).await;
        m.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            drain(&ch, &q).await,
            want(&["1", "2", "3", "0"], &["0", "1", "2", "3"]),
            "nack, quorum: {quorum}"
        );
        // reject requeue.
        publish_n(&ch, &q, 3).await;
        let m = get_body(&ch, &q).await;
        m.delivery
            .acker
            .reject(BasicRejectOptions { requeue: true })
            .await
            .unwrap();
        assert_eq!(
            drain(&ch, &q).await,
            want(&["1", "2", "0"], &["0", "1", "2"]),
            "reject, quorum: {quorum}"
        );
        // basic.recover, two messages out.
        publish_n(&ch, &q, 4).await;
        let rch = c.create_channel().await.unwrap();
        get_body(&rch, &q).await;
        get_body(&rch, &q).await;
        rch.basic_recover(BasicRecoverOptions { requeue: true })
            .await
            .unwrap();
        rch.close(200, "done".into()).await.unwrap();
        assert_eq!(
            drain(&ch, &q).await,
            want(&["2", "3", "0", "1"], &["0", "1", "2", "3"]),
            "recover, quorum: {quorum}"
        );
        // A consumer's channel closes with two unacked deliveries.
        publish_n(&ch, &q, 4).await;
        let cch = c.create_channel().await.unwrap();
        cch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
        let mut cons = consume(&cch, &q, false).await;
        let ds = take(&mut cons, 2).await;
        assert_eq!(ds[0].data, b"0");
        cch.close(200, "bye".into()).await.unwrap();
        assert_eq!(
            drain(&ch, &q).await,
            want(&["2", "3", "0", "1"], &["0", "1", "2", "3"]),
            "channel close, quorum: {quorum}"
        );
    }
}

/// The delivery limit of a quorum queue as RabbitMQ applies it: a message is delivered
/// limit+1 times (`x-delivery-count` 0 .. limit on basic.get), then dropped, or dead-lettered
/// with reason `delivery_limit`, RabbitMQ's `x-death` entry and `x-first-death-*` headers, the
/// original headers kept and the dead-letter queue's own count (0). `at-least-once` without
/// `reject-publish` is accepted and dead-letters as at-most-once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_drops_or_dead_letters() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let nack = |m: lapin::message::BasicGetMessage| async move {
        m.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    };
    // Limit 2, no dead-letter exchange: counts 0, 1, 2, then gone.
    let q = unique("limit2");
    declare_args(&ch, &q, qq(&[("x-delivery-limit", AMQPValue::LongInt(2))]))
        .await
        .unwrap();
    publish_confirmed_body(&ch, &q, b"m", BasicProperties::default()).await;
    for n in 0..=2 {
        let m = get_body(&ch, &q).await;
        assert_eq!(delivery_count(&m.delivery.properties), Some(n));
        nack(m).await;
    }
    assert!(ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());

    for strategy in [None, Some("at-most-once"), Some("at-least-once")] {
        let dlq = unique("dlq");
        declare_args(&ch, &dlq, qq(&[])).await.unwrap();
        let q = unique("limit1");
        let mut args = vec![
            ("x-delivery-limit", AMQPValue::LongInt(1)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ];
        if let Some(st) = strategy {
            args.push(("x-dead-letter-strategy", s(st)));
        }
        declare_args(&ch, &q, qq(&args)).await.unwrap();
        let props = BasicProperties::default().with_headers(table(&[("h", AMQPValue::LongInt(1))]));
        publish_confirmed_body(&ch, &q, b"m", props).await;
        for n in 0..=1 {
            let m = get_body(&ch, &q).await;
            assert_eq!(delivery_count(&m.delivery.properties), Some(n));
            nack(m).await;
        }
        let m = get_one(&ch, &dlq).await.expect("dead-lettered");
        let d = &m.delivery;
        assert_eq!(d.data, b"m");
        assert!(!d.redelivered);
        assert_eq!(d.exchange.as_str(), "");
        assert_eq!(d.routing_key.as_str(), dlq);
        let p = &d.properties;
        assert_eq!(header(p, "h"), Some(&AMQPValue::LongInt(1)));
        assert_eq!(
            delivery_count(p),
            Some(0),
            "the dead-letter queue's own count"
        );
        for (k, v) in [
            ("x-first-death-exchange", ""),
            ("x-first-death-queue", q.as_str()),
            ("x-first-death-reason", "delivery_limit"),
        ] {
            assert_eq!(header(p, k), Some(&s(v)), "{k}");
        }
        let Some(AMQPValue::FieldArray(deaths)) = header(p, "x-death") else {
            panic!("x-death: {:?}", header(p, "x-death"));
        };
        let [AMQPValue::FieldTable(death)] = deaths.as_slice() else {
            panic!("one x-death entry: {deaths:?}");
        };
        let death = death.inner();
        assert_eq!(death.get("count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(death.get("reason"), Some(&s("delivery_limit")));
        assert_eq!(death.get("queue"), Some(&s(&q)));
        assert_eq!(death.get("exchange"), Some(&s("")));
        assert_eq!(
            death.get("routing-keys"),
            Some(&AMQPValue::FieldArray(FieldArray::from(vec![s(&q)])))
        );
        assert!(
            matches!(death.get("time"), Some(AMQPValue::Timestamp(_))),
            "{death:?}"
        );
        assert_eq!(death.len(), 6, "{death:?}");
    }
}
