//! queue.*: declare (server-named, passive, equivalence, reserved names), purge, delete, bind.

use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_ok_counts_and_server_names() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let name = q.name().as_str().to_owned();
    assert!(name.starts_with("amq.gen-") && name.len() > 20, "{name}");
    for _ in 0..3 {
        publish(&ch, "", &name, b"x").await;
    }
    // Wait for the publishes to land, then redeclare: the counts are reported.
    get_one(&ch, &name).await.unwrap();
    // A non-passive redeclare of an amq.* name is refused, as in RabbitMQ; passive reports counts.
    let again = passive(&ch, &name).await.unwrap();
    assert_eq!(again.message_count(), 2);
    assert_eq!(again.consumer_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivalence_and_reserved_names() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("equiv");
    declare(&ch, &q).await;
    let e = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    assert!(
        text(&e).starts_with("PRECONDITION_FAILED - inequivalent arg 'durable'"),
        "{}",
        text(&e)
    );

    let ch = c.create_channel().await.unwrap();
    let q2 = unique("ttl");
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    ch.queue_declare(
        q2.as_str().into(),
        QueueDeclareOptions::default(),
        args.clone(),
    )
    .await
    .unwrap();
    // Same value in another integer width is equivalent.
    let mut same = FieldTable::default();
    same.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1000));
    ch.queue_declare(q2.as_str().into(), QueueDeclareOptions::default(), same)
        .await
        .unwrap();
    let e = ch
        .queue_declare(
            q2.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");

    // x-queue-type "classic" is what a queue without the argument is.
    let ch = c.create_channel().await.unwrap();
    let q3 = unique("classic");
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    declare(&ch, &q3).await;
    ch.queue_declare(q3.as_str().into(), QueueDeclareOptions::default(), classic)
        .await
        .unwrap();

    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            "amq.reserved".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403), "{e}");

    let ch = c.create_channel().await.unwrap();
    let e = passive(&ch, "nope").await.unwrap_err();
    assert_eq!(code(&e), Some(404));
    assert_eq!(text(&e), "NOT_FOUND - no queue 'nope' in vhost '/'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_delete_report_counts() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("purge");
    declare(&ch, &q).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..5 {
        publish_confirmed(&ch, "", &q, Default::default()).await;
    }
    let n = ch
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 5);
    for _ in 0..2 {
        publish_confirmed(&ch, "", &q, Default::default()).await;
    }
    let e = ch
        .queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    let ch = c.create_channel().await.unwrap();
    let _cons = consume(&ch, &q, false).await;
    let ch2 = c.create_channel().await.unwrap();
    let e = ch2
        .queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    let ch3 = c.create_channel().await.unwrap();
    // Both messages are now unacked with the consumer; delete-ok counts the ready ones (0).
    let n = ch3
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert!(n <= 2);
    // Deleting a missing queue is fine.
    assert_eq!(
        ch3.queue_delete("gone-already".into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_errors() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let e = ch
        .queue_bind(
            "no-q".into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(404));
    let ch = c.create_channel().await.unwrap();
    let q = unique("bq");
    declare(&ch, &q).await;
    let e = ch
        .queue_bind(
            q.as_str().into(),
            "no-x".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(404));
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_bind(
            q.as_str().into(),
            "".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        Some(403),
        "binding to the default exchange is refused"
    );
}

/// Bad queue arguments are refused with RabbitMQ's 406 texts, not accepted silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_are_refused() {
    let b = Broker::start().await;
    let (c, _ch) = b.channel().await;
    let cases: Vec<(&str, AMQPValue, &str)> = vec![
        (
            "x-expires",
            AMQPValue::LongString("abc".into()),
            "\"expected integer, got longstr\"",
        ),
        (
            "x-max-length",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        (
            "x-queue-type",
            AMQPValue::LongString("nosuch".into()),
            "\"unsupported queue type 'nosuch'\"",
        ),
        (
            "x-overflow",
            AMQPValue::LongString("bogus".into()),
            "invalid_overflow",
        ),
        (
            "x-single-active-consumer",
            AMQPValue::LongString("yes".into()),
            "{unacceptable_type,longstr}",
        ),
    ];
    for (arg, value, reason) in cases {
        let ch = c.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert(arg.into(), value);
        let e = ch
            .queue_declare("bad-args".into(), QueueDeclareOptions::default(), args)
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(406), "{arg}: {e}");
        assert_eq!(
            text(&e),
            format!("PRECONDITION_FAILED - invalid arg '{arg}' for queue 'bad-args' in vhost '/': {reason}")
        );
    }
    // Nothing was created by the refused declarations.
    let ch = c.create_channel().await.unwrap();
    assert_eq!(
        code(&passive(&ch, "bad-args").await.unwrap_err()),
        Some(404)
    );
}

/// x-max-length with the default overflow drops the oldest ready messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_drop_head_keeps_the_newest() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("maxlen");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(2));
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..5u8 {
        let c = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &[i],
                Default::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack(), "drop-head never refuses a publish");
    }
    let mut cons = consume(&ch, &q, true).await;
    let got: Vec<u8> = take(&mut cons, 2).await.iter().map(|d| d.data[0]).collect();
    assert_eq!(got, vec![3, 4]);
}

/// x-overflow reject-publish: a full queue refuses new messages and confirming publishers get a
/// basic.nack for exactly those ("nack when a message can't be taken").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_nacks_what_does_not_fit() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("reject-pub");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(2));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..4u8 {
        confirms.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &[i],
                Default::default(),
            )
            .await
            .unwrap(),
        );
    }
    let mut outcome = Vec::new();
    for c in confirms {
        outcome.push(c.await.unwrap().is_ack());
    }
    assert_eq!(outcome, vec![true, true, false, false]);
    // Room again after a consumer takes one: the next publish is accepted.
    get_one(&ch, &q).await.unwrap();
    let c = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            &[9],
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack());
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 2);
}

/// Dead-lettering on reject (requeue=false) and on overflow, with RabbitMQ's x-death headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_on_reject_and_overflow() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let (src, dlq) = (unique("dl-src"), unique("dl-target"));
    declare(&ch, &dlq).await;
    ch.queue_bind(
        dlq.as_str().into(),
        "amq.direct".into(),
        "dead".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("amq.direct".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("dead".into()),
    );
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    ch.queue_declare(src.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    publish(&ch, "", &src, b"first").await; // dropped by the next one (maxlen)
    publish(&ch, "", &src, b"second").await;
    let m = ch
        .basic_get(src.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("second is ready");
    assert_eq!(m.delivery.data, b"second");
    m.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let mut cons = consume(&ch, &dlq, true).await;
    let ds = take(&mut cons, 2).await;
    let reasons: Vec<(Vec<u8>, String)> = ds
        .iter()
        .map(|d| {
            let h = d.properties.headers().as_ref().expect("headers");
            let reason = match h.inner().get("x-first-death-reason") {
                Some(AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                other => panic!("{other:?}"),
            };
            let Some(AMQPValue::FieldArray(deaths)) = h.inner().get("x-death") else {
                panic!("x-death missing")
            };
            let AMQPValue::FieldTable(death) = &deaths.as_slice()[0] else {
                panic!("x-death entry")
            };
            assert_eq!(
                death.inner().get("queue"),
                Some(&AMQPValue::LongString(src.as_str().into()))
            );
            assert_eq!(death.inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
            assert_eq!(d.routing_key.as_str(), "dead");
            assert_eq!(d.exchange.as_str(), "amq.direct");
            (d.data.clone(), reason)
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            (b"first".to_vec(), "maxlen".into()),
            (b"second".to_vec(), "rejected".into())
        ]
    );
}

async fn publish_ttl(ch: &lapin::Channel, q: &str, body: &[u8], ttl: &str) {
    ch.basic_publish(
        "".into(),
        q.into(),
        BasicPublishOptions::default(),
        body,
        lapin::BasicProperties::default().with_expiration(ttl.into()),
    )
    .await
    .unwrap();
}

/// Per-message TTL: expired messages are never delivered, and go even when not at the head and
/// with no consumer attached (RabbitMQ only expires at the head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ttl_expires_anywhere_in_the_queue() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("ttl");
    declare(&ch, &q).await;
    publish_ttl(&ch, &q, b"long", "600000").await;
    publish_ttl(&ch, &q, b"short", "30000").await;
    publish(&ch, "", &q, b"forever").await;
    publish_ttl(&ch, &q, b"zero", "0").await; // no consumer: expires at once
                                              // A round trip on the same channel: the publishes are in the queue before time moves.
    passive(&ch, &q).await.unwrap();
    b.advance(std::time::Duration::from_secs(31)).await;
    assert_eq!(
        passive(&ch, &q).await.unwrap().message_count(),
        2,
        "short and zero are gone, long is not"
    );
    let mut cons = consume(&ch, &q, true).await;
    let got: Vec<Vec<u8>> = take(&mut cons, 2)
        .await
        .into_iter()
        .map(|d| d.data)
        .collect();
    assert_eq!(got, vec![b"long".to_vec(), b"forever".to_vec()]);
    // TTL 0 with a consumer waiting: delivered at once.
    publish_ttl(&ch, &q, b"now", "0").await;
    assert_eq!(take(&mut cons, 1).await[0].data, b"now");
}

/// x-message-ttl with a dead-letter exchange: expired messages are dead-lettered promptly with
/// reason "expired"; an invalid expiration is refused with 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_ttl_dead_letters_and_bad_expiration_is_406() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let (src, dlq) = (unique("ttl-src"), unique("ttl-dlq"));
    declare(&ch, &dlq).await;
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(50));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dlq.as_str().into()),
    );
    ch.queue_declare(src.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    publish_ttl(&ch, &src, b"m", "10000").await; // the queue's 50 ms is smaller and wins
    let mut cons = consume(&ch, &dlq, true).await;
    let d = take(&mut cons, 1).await.remove(0);
    assert_eq!(d.data, b"m");
    let h = d.properties.headers().as_ref().unwrap();
    assert_eq!(
        h.inner().get("x-first-death-reason"),
        Some(&AMQPValue::LongString("expired".into()))
    );
    assert!(
        d.properties.expiration().is_none(),
        "expiration is removed when dead-lettered"
    );
    assert_eq!(passive(&ch, &src).await.unwrap().message_count(), 0);

    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let e = publish_refused(
        &ch,
        "",
        &src,
        lapin::BasicProperties::default().with_expiration("soon".into()),
    )
    .await;
    assert_eq!(code(&e), Some(406));
    assert_eq!(
        text(&e),
        "PRECONDITION_FAILED - invalid expiration 'soon': no_integer"
    );
}

/// x-expires: a queue unused (no consumers, no declare, no get) for the period is deleted; a
/// consumer keeps it alive, and the countdown restarts when the consumer leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_queue_expires() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("expiring");
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let cons = consume(&ch, &q, true).await;
    b.advance(std::time::Duration::from_secs(120)).await;
    assert!(passive(&ch, &q).await.is_ok(), "a consumer keeps the queue");
    ch.basic_cancel(cons.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    b.advance(std::time::Duration::from_secs(50)).await;
    assert!(
        passive(&ch, &q).await.is_ok(),
        "the countdown restarts when it leaves"
    );
    b.advance(std::time::Duration::from_secs(11)).await;
    let ch = c.create_channel().await.unwrap();
    assert_eq!(code(&passive(&ch, &q).await.unwrap_err()), Some(404));
}

/// A dead-letter exchange that does not exist: the dead message is dropped (as in RabbitMQ),
/// the reject succeeds and nothing else is disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettering_to_a_missing_exchange_drops_quietly() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("dlx-missing");
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("no-such-dlx".into()),
    );
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    publish(&ch, "", &q, b"doomed").await;
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    m.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 0);
    declare(&ch, &unique("still-fine")).await;
}

/// A channel remembers where the default exchange last sent its routing key; a queue deleted
/// and declared again under the same name must get the next messages, and a deleted one none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_exchange_follows_a_queue_deleted_and_declared_again() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    let q = unique("again");
    declare(&ch, &q).await;
    for _ in 0..3 {
        publish_confirmed(&ch, "", &q, BasicProperties::default()).await;
    }
    let (_c2, admin) = b.channel().await;
    admin
        .queue_delete(q.as_str().into(), Default::default())
        .await
        .unwrap();
    // Deleted: the next publish goes nowhere (and is not counted into the old queue).
    publish_confirmed(&ch, "", &q, BasicProperties::default()).await;
    declare(&admin, &q).await;
    assert_eq!(passive(&admin, &q).await.unwrap().message_count(), 0);
    publish_confirmed(&ch, "", &q, BasicProperties::default()).await;
    publish_confirmed(&ch, "", &q, BasicProperties::default()).await;
    assert_eq!(passive(&admin, &q).await.unwrap().message_count(), 2);
}

/// Regression (CI under load): a TTL-0 message was expired instead of delivered to a waiting
/// consumer when the millisecond turned between its enqueue and its dispatch. Many in a row make
/// that boundary likely; every one must arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_zero_reaches_a_waiting_consumer_every_time() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("ttl0");
    declare(&ch, &q).await;
    let (_c2, cch) = b.channel().await;
    let mut cons = consume(&cch, &q, true).await;
    for _ in 0..3000 {
        publish_ttl(&ch, &q, b"now", "0").await;
    }
    assert_eq!(take(&mut cons, 3000).await.len(), 3000);
}
