//! exchange.*: the four kinds, exchange-to-exchange bindings, alternate exchanges, declare rules.

use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
}

async fn bind(ch: &Channel, q: &str, ex: &str, key: &str, args: FieldTable) {
    ch.queue_bind(
        q.into(),
        ex.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    )
    .await
    .expect("queue.bind");
}

async fn count(ch: &Channel, q: &str) -> u32 {
    passive(ch, q)
        .await
        .expect("passive declare")
        .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_fanout() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let (qa, qb) = (unique("da"), unique("db"));
    declare(&ch, &qa).await;
    declare(&ch, &qb).await;
    exchange(&ch, "d1", ExchangeKind::Direct).await;
    exchange(&ch, "f1", ExchangeKind::Fanout).await;
    bind(&ch, &qa, "d1", "red", FieldTable::default()).await;
    bind(&ch, &qb, "d1", "blue", FieldTable::default()).await;
    bind(&ch, &qa, "f1", "", FieldTable::default()).await;
    bind(&ch, &qb, "f1", "ignored", FieldTable::default()).await;
    publish_confirmed(&ch, "d1", "red", Default::default()).await;
    publish_confirmed(&ch, "d1", "green", Default::default()).await;
    publish_confirmed(&ch, "f1", "any", Default::default()).await;
    assert_eq!(count(&ch, &qa).await, 2);
    assert_eq!(count(&ch, &qb).await, 1);
    // Unbind stops routing.
    ch.queue_unbind(
        qa.as_str().into(),
        "d1".into(),
        "red".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_confirmed(&ch, "d1", "red", Default::default()).await;
    assert_eq!(count(&ch, &qa).await, 2);
    // amq.direct exists and routes.
    bind(&ch, &qb, "amq.direct", "k", FieldTable::default()).await;
    publish_confirmed(&ch, "amq.direct", "k", Default::default()).await;
    assert_eq!(count(&ch, &qb).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_patterns() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let qs: Vec<String> = (0..4).map(|i| unique(&format!("t{i}"))).collect();
    for q in &qs {
        declare(&ch, q).await;
    }
    bind(
        &ch,
        &qs[0],
        "amq.topic",
        "stock.*.nyse",
        FieldTable::default(),
    )
    .await;
    bind(&ch, &qs[1], "amq.topic", "stock.#", FieldTable::default()).await;
    bind(&ch, &qs[2], "amq.topic", "#", FieldTable::default()).await;
    bind(&ch, &qs[3], "amq.topic", "*.*", FieldTable::default()).await;
    for key in [
        "stock.ibm.nyse",
        "stock",
        "stock.x",
        "weather.eu.rain",
        "a.b.c.d",
    ] {
        publish_confirmed(&ch, "amq.topic", key, Default::default()).await;
    }
    assert_eq!(count(&ch, &qs[0]).await, 1);
    assert_eq!(count(&ch, &qs[1]).await, 3);
    assert_eq!(count(&ch, &qs[2]).await, 5);
    assert_eq!(count(&ch, &qs[3]).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_all_and_any() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let (qall, qany) = (unique("hall"), unique("hany"));
    declare(&ch, &qall).await;
    declare(&ch, &qany).await;
    let s = |v: &str| AMQPValue::LongString(LongString::from(v));
    let mut all = FieldTable::default();
    all.insert("x-match".into(), s("all"));
    all.insert("format".into(), s("pdf"));
    all.insert("type".into(), s("report"));
    let mut any = FieldTable::default();
    any.insert("x-match".into(), s("any"));
    any.insert("format".into(), s("pdf"));
    any.insert("type".into(), s("report"));
    bind(&ch, &qall, "amq.headers", "", all).await;
    bind(&ch, &qany, "amq.headers", "", any).await;
    let with = |pairs: &[(&str, &str)]| {
        let mut h = FieldTable::default();
        for (k, v) in pairs {
            h.insert((*k).into(), s(v));
        }
        BasicProperties::default().with_headers(h)
    };
    publish_confirmed(
        &ch,
        "amq.headers",
        "",
        with(&[("format", "pdf"), ("type", "report")]),
    )
    .await;
    publish_confirmed(&ch, "amq.headers", "", with(&[("format", "pdf")])).await;
    publish_confirmed(&ch, "amq.headers", "", with(&[("format", "zip")])).await;
    publish_confirmed(&ch, "amq.headers", "", BasicProperties::default()).await;
    assert_eq!(count(&ch, &qall).await, 1);
    assert_eq!(count(&ch, &qany).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_and_alternate() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let (q, qae) = (unique("e2e"), unique("ae"));
    declare(&ch, &q).await;
    declare(&ch, &qae).await;
    exchange(&ch, "src", ExchangeKind::Topic).await;
    exchange(&ch, "dst", ExchangeKind::Fanout).await;
    ch.exchange_bind(
        "dst".into(),
        "src".into(),
        "a.#".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // A cycle back to src must not loop.
    ch.exchange_bind(
        "src".into(),
        "dst".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    bind(&ch, &q, "dst", "", FieldTable::default()).await;
    exchange(&ch, "ae-target", ExchangeKind::Fanout).await;
    bind(&ch, &qae, "ae-target", "", FieldTable::default()).await;
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(LongString::from("ae-target")),
    );
    ch.exchange_declare(
        "with-ae".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        args,
    )
    .await
    .unwrap();
    publish_confirmed(&ch, "src", "a.b", Default::default()).await;
    publish_confirmed(&ch, "src", "b", Default::default()).await;
    publish_confirmed(&ch, "with-ae", "nowhere", Default::default()).await;
    assert_eq!(count(&ch, &q).await, 1);
    assert_eq!(count(&ch, &qae).await, 1);
    ch.exchange_unbind(
        "dst".into(),
        "src".into(),
        "a.#".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_confirmed(&ch, "src", "a.b", Default::default()).await;
    assert_eq!(count(&ch, &q).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_rules_and_errors() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    exchange(&ch, "ex-eq", ExchangeKind::Direct).await;
    exchange(&ch, "ex-eq", ExchangeKind::Direct).await; // same properties: fine
    let e = ch
        .exchange_declare(
            "ex-eq".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    assert!(text(&e).contains("inequivalent arg 'type'"), "{}", text(&e));

    let ch = c.create_channel().await.unwrap();
    let e = ch
        .exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403), "{e}");

    let ch = c.create_channel().await.unwrap();
    let e = ch
        .exchange_declare(
            "missing".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(404), "{e}");
    assert_eq!(text(&e), "NOT_FOUND - no exchange 'missing' in vhost '/'");

    // Deleting a missing exchange is fine; if-unused on a bound one is not.
    let ch = c.create_channel().await.unwrap();
    ch.exchange_delete("never-was".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let q = unique("inuse");
    declare(&ch, &q).await;
    bind(&ch, &q, "ex-eq", "k", FieldTable::default()).await;
    let e = ch
        .exchange_delete(
            "ex-eq".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");

    // Internal exchanges refuse direct publishes.
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        "internal-x".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let e = publish_refused(&ch, "internal-x", "", BasicProperties::default()).await;
    assert_eq!(code(&e), Some(403), "{e}");

    // Publishing to a missing exchange closes the channel with 404.
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let e = publish_refused(&ch, "no-such-ex", "", BasicProperties::default()).await;
    assert_eq!(code(&e), Some(404), "{e}");

    // An unknown exchange type is a connection error (503).
    let e = c
        .create_channel()
        .await
        .unwrap()
        .exchange_declare(
            "weird".into(),
            ExchangeKind::Custom("x-nonsense".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(503), "{e}");
    // The broker still serves others.
    let (_c2, ch2) = b.channel().await;
    declare(&ch2, &unique("still-fine")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_auto_delete_when_last_binding_goes() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    ch.exchange_declare(
        "ad-x".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = unique("adq");
    declare(&ch, &q).await;
    bind(&ch, &q, "ad-x", "", FieldTable::default()).await;
    ch.queue_unbind(
        q.as_str().into(),
        "ad-x".into(),
        "".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let e = ch
        .exchange_declare(
            "ad-x".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(404));
}

/// Regression (found with py-amqp, aio-pika, AMQPStorm): redeclaring an existing amq.* exchange
/// with its own properties was refused with 403; RabbitMQ accepts it. Passive "" is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_exchanges_can_be_redeclared_as_they_are() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.headers", ExchangeKind::Headers),
    ] {
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let e = ch
        .exchange_declare(
            "amq.direct".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403), "{e}");
    // amq.rabbitmq.trace exists, as in RabbitMQ.
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        "amq.rabbitmq.trace".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Regression: a redeclare with another alternate-exchange was accepted; RabbitMQ says 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_must_match_on_redeclare() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    exchange(&ch, "ae-eq", ExchangeKind::Direct).await;
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(LongString::from("foo")),
    );
    let e = ch
        .exchange_declare(
            "ae-eq".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args,
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert_eq!(
        text(&e),
        "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'ae-eq' in vhost '/': received the value 'foo' of type 'longstr' but current is none"
    );
}

/// Regression: unbinding a missing binding, queue or exchange answered 404; RabbitMQ says ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbinding_what_does_not_exist_is_fine() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("unbind-missing");
    declare(&ch, &q).await;
    ch.queue_unbind(
        q.as_str().into(),
        "amq.direct".into(),
        "never".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_unbind(
        "no-such-q".into(),
        "amq.direct".into(),
        "k".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_unbind(
        q.as_str().into(),
        "no-such-x".into(),
        "k".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_unbind(
        "no-x".into(),
        "amq.topic".into(),
        "k".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Sender-selected distribution: CC and BCC headers add routing keys; BCC is stripped before
/// delivery, CC is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_and_bcc_add_routes_and_bcc_is_hidden() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let (qa, qb, qc) = (unique("cc-a"), unique("cc-b"), unique("cc-c"));
    for q in [&qa, &qb, &qc] {
        declare(&ch, q).await;
        bind(&ch, q, "amq.direct", q, FieldTable::default()).await;
    }
    let list =
        |k: &str| AMQPValue::FieldArray(vec![AMQPValue::LongString(LongString::from(k))].into());
    let mut h = FieldTable::default();
    h.insert("CC".into(), list(&qb));
    h.insert("BCC".into(), list(&qc));
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(
        &ch,
        "amq.direct",
        &qa,
        BasicProperties::default().with_headers(h),
    )
    .await;
    for q in [&qa, &qb, &qc] {
        let m = get_one(&ch, q)
            .await
            .unwrap_or_else(|| panic!("{q} got a copy"));
        let headers = m.delivery.properties.headers().clone().unwrap();
        assert!(headers.contains_key("CC"), "CC stays visible");
        assert!(!headers.contains_key("BCC"), "BCC is stripped");
        assert_eq!(m.delivery.routing_key.as_str(), qa.as_str());
    }
}

/// Regression (found by fuzzing the topic trie): a binding of chained `#` and a publish with a
/// long routing key used to take exponential time, stalling the broker. Now both route at once
/// and other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_hash_bindings_cannot_stall_routing() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("hashes");
    declare(&ch, &q).await;
    let pattern = vec!["#"; 128].join("."); // 255 bytes, the longest routing key
    bind(&ch, &q, "amq.topic", &pattern, FieldTable::default()).await;
    bind(
        &ch,
        &q,
        "amq.topic",
        &(vec!["#"; 126].join(".") + ".z"),
        FieldTable::default(),
    )
    .await;
    let key = vec!["w"; 128].join(".");
    let started = std::time::Instant::now();
    for _ in 0..20 {
        publish(&ch, "amq.topic", &key, b"x").await;
    }
    // Another client is answered, and the messages were routed.
    let (_c2, other) = b.channel().await;
    declare(&other, &unique("still-served")).await;
    let n = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let n = count(&other, &q).await;
            if n == 20 {
                return n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("routed in time");
    assert_eq!(n, 20);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
