//! Reading streams: where a consumer starts, credit and acks, filters, and what is refused.

use super::*;
use std::time::Duration;

/// Every message is stored and delivered in order from `first`, each with its offset in a
/// signed 64-bit `x-stream-offset` header, never redelivered; transient messages too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_reads_everything_in_order_with_offsets() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-first", &[]).await.unwrap();
    // Transient, and with headers of its own that must survive next to x-stream-offset.
    let mut h = FieldTable::default();
    h.insert("app".into(), s("x"));
    let props = BasicProperties::default()
        .with_delivery_mode(1)
        .with_content_type("text/plain".into())
        .with_headers(h);
    publish_n(&ch, "s-first", 0, 100, props).await;
    let (_c2, rd) = b.channel().await;
    let mut c = stream_consumer(&rd, "s-first", 10, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    for i in 0..100 {
        let d = &take(&mut c, 1).await[0];
        assert_eq!(offset_of(d), i as i64);
        assert_eq!(d.data, format!("m{i}").as_bytes());
        assert!(!d.redelivered);
        assert_eq!(d.routing_key.as_str(), "s-first");
        assert_eq!(
            d.properties.content_type().as_ref().map(|s| s.as_str()),
            Some("text/plain")
        );
        let app = d.properties.headers().as_ref().unwrap().inner().get("app");
        assert_eq!(app, Some(&s("x")));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

/// The prefetch is the consumer's credit: it gets that many, then nothing until it acks; an ack
/// moves the credit and removes nothing (a second reader still reads everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_move_credit_and_remove_nothing() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-credit", &[]).await.unwrap();
    publish_n(&ch, "s-credit", 0, 20, BasicProperties::default()).await;
    let (_c2, rd) = b.channel().await;
    let mut c = stream_consumer(&rd, "s-credit", 5, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    let first = take(&mut c, 5).await;
    none_within(&mut c, 300).await;
    // One multiple ack returns all five credits.
    first[4]
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let next = take(&mut c, 5).await;
    assert_eq!(offset_of(&next[0]), 5);
    for d in &next {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let rest = take_acked(&mut c, 10).await;
    assert_eq!(rest.first().unwrap().0, 10);
    assert_eq!(rest.last().unwrap().0, 19);
    none_within(&mut c, 200).await;
    assert_eq!(passive(&ch, "s-credit").await.unwrap().message_count(), 20);
    let (_c3, rd2) = b.channel().await;
    let mut again = stream_consumer(&rd2, "s-credit", 100, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    assert_eq!(take_acked(&mut again, 20).await.len(), 20);
}

/// Each `x-stream-offset` form starts where RabbitMQ starts: an absolute offset, `last`,
/// `next` (the default), a timestamp, and an interval; an offset beyond the end waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_specification() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-start", &[]).await.unwrap();
    publish_n(&ch, "s-start", 0, 10, BasicProperties::default()).await;
    let (_c2, rd) = b.channel().await;
    let first_offset = |args: Vec<(&'static str, AMQPValue)>| {
        let rd = rd.clone();
        async move {
            let mut c = stream_consumer(&rd, "s-start", 100, &args).await.unwrap();
            let d = take(&mut c, 1).await.remove(0);
            d.ack(BasicAckOptions::default()).await.unwrap();
            offset_of(&d)
        }
    };
    assert_eq!(
        first_offset(vec![("x-stream-offset", AMQPValue::LongInt(5))]).await,
        5
    );
    assert_eq!(
        first_offset(vec![("x-stream-offset", AMQPValue::LongLongInt(0))]).await,
        0
    );
    // `last`: the newest chunk (see `last_starts_at_the_newest_chunk`).
    assert!(first_offset(vec![("x-stream-offset", s("last"))]).await <= 9);
    // As RabbitMQ: a negative offset reads from the first.
    assert_eq!(
        first_offset(vec![("x-stream-offset", AMQPValue::LongInt(-1))]).await,
        0
    );
    assert_eq!(first_offset(vec![("x-stream-offset", s("1h"))]).await, 0);
    assert_eq!(
        first_offset(vec![("x-stream-offset", AMQPValue::Timestamp(0))]).await,
        0
    );
    // `next` (and no argument at all, and a future timestamp, and an offset past the end)
    // deliver only what is published after the consumer attached.
    let far = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs())
        + 3600;
    let mut waiting = Vec::new();
    for args in [
        vec![("x-stream-offset", s("next"))],
        vec![],
        vec![("x-stream-offset", AMQPValue::Timestamp(far))],
        vec![("x-stream-offset", AMQPValue::LongInt(12))],
    ] {
        let mut c = stream_consumer(&rd, "s-start", 100, &args).await.unwrap();
        none_within(&mut c, 150).await;
        waiting.push(c);
    }
    publish_n(&ch, "s-start", 10, 3, BasicProperties::default()).await;
    for (i, c) in waiting.iter_mut().enumerate() {
        let got = take_acked(c, 1).await;
        // A future timestamp attaches at the end, as `next` (RabbitMQ's behaviour); an offset
        // past the end waits for exactly that offset.
        assert_eq!(got[0].0, if i == 3 { 12 } else { 10 }, "consumer {i}");
    }
    // A timestamp between two publishes starts after the first batch (seconds resolution:
    // wait past a second boundary).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    publish_n(&ch, "s-start", 13, 2, BasicProperties::default()).await;
    assert_eq!(
        first_offset(vec![("x-stream-offset", AMQPValue::Timestamp(now))]).await,
        13
    );
}

/// basic.get on a stream is refused as RabbitMQ refuses it; so are a consumer without a
/// prefetch, an auto-ack consumer and bad offsets. None of it touches the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_the_stream_alone() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-refuse", &[]).await.unwrap();
    publish_n(&ch, "s-refuse", 0, 5, BasicProperties::default()).await;
    let conn = b.connect().await;

    let rd = conn.create_channel().await.unwrap();
    let e = rd
        .basic_get("s-refuse".into(), BasicGetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(540), "{e}");
    assert!(
        text(&e).contains("basic.get not supported by stream queues"),
        "{}",
        text(&e)
    );

    let conn = b.connect().await;
    let rd = conn.create_channel().await.unwrap();
    let e = rd
        .basic_consume(
            "s-refuse".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    assert!(
        text(&e).contains("consumer prefetch count is not set"),
        "{}",
        text(&e)
    );

    let conn = b.connect().await;
    let rd = conn.create_channel().await.unwrap();
    rd.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let e = rd
        .basic_consume(
            "s-refuse".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(540), "{e}");

    // An interval without a unit, words that are not one, a bool, a float: 406 (where RabbitMQ
    // 3.10 crashes the connection on some of them, Warren refuses them all the same way).
    for bad in [
        s("5"),
        s("abc"),
        s("FIRST"),
        AMQPValue::Boolean(true),
        AMQPValue::Double(1.5),
    ] {
        let conn = b.connect().await;
        let rd = conn.create_channel().await.unwrap();
        let e = stream_consumer(&rd, "s-refuse", 10, &[("x-stream-offset", bad.clone())])
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(406), "{bad:?}: {e}");
        assert!(
            text(&e).contains("invalid arg 'x-stream-offset' for queue 's-refuse' in vhost '/'"),
            "{}",
            text(&e)
        );
    }
    let (_c3, rd) = b.channel().await;
    let mut c = stream_consumer(&rd, "s-refuse", 10, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    let all = take_acked(&mut c, 5).await;
    assert_eq!(
        all.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(passive(&ch, "s-refuse").await.unwrap().message_count(), 5);
}

/// Filtering: `x-stream-filter` selects messages by their `x-stream-filter-value`, one value or
/// several; `x-stream-match-unfiltered` adds those published without one. Exact, not
/// probabilistic: no message of another value reaches the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_by_value() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-filter", &[]).await.unwrap();
    for (i, region) in ["eu", "us", "", "eu", "ap", "", "us", "eu"]
        .iter()
        .enumerate()
    {
        let props = if region.is_empty() {
            BasicProperties::default()
        } else {
            BasicProperties::default().with_headers(table(&[("x-stream-filter-value", s(region))]))
        };
        publish_n(&ch, "s-filter", i, 1, props).await;
    }
    let (_c2, rd) = b.channel().await;
    let offsets = |args: Vec<(&'static str, AMQPValue)>, n: usize| {
        let rd = rd.clone();
        async move {
            let mut all = args;
            all.push(("x-stream-offset", s("first")));
            let mut c = stream_consumer(&rd, "s-filter", 100, &all).await.unwrap();
            let got = take_acked(&mut c, n).await;
            none_within(&mut c, 200).await;
            got.into_iter().map(|x| x.0).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        offsets(vec![("x-stream-filter", s("eu"))], 3).await,
        [0, 3, 7]
    );
    assert_eq!(
        offsets(
            vec![(
                "x-stream-filter",
                AMQPValue::FieldArray(vec![s("us"), s("ap")].into())
            )],
            3
        )
        .await,
        [1, 4, 6]
    );
    assert_eq!(
        offsets(
            vec![
                ("x-stream-filter", s("ap")),
                ("x-stream-match-unfiltered", AMQPValue::Boolean(true))
            ],
            3
        )
        .await,
        [2, 4, 5]
    );
    assert_eq!(offsets(vec![], 8).await.len(), 8);
    // As RabbitMQ 3.13: a filter that is not a string is no filter at all.
    assert_eq!(
        offsets(vec![("x-stream-filter", AMQPValue::LongInt(3))], 8)
            .await
            .len(),
        8
    );
}

/// Many readers at different places read independently; a cancelled consumer stops reading
/// and another on the same channel carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_readers_and_cancel() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-many", &[]).await.unwrap();
    publish_n(&ch, "s-many", 0, 50, BasicProperties::default()).await;
    let (_c2, rd) = b.channel().await;
    let mut a = stream_consumer(&rd, "s-many", 10, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    let mut z = stream_consumer(
        &rd,
        "s-many",
        10,
        &[("x-stream-offset", AMQPValue::LongInt(40))],
    )
    .await
    .unwrap();
    let from_z = take_acked(&mut z, 10).await;
    assert_eq!(from_z[0].0, 40);
    rd.basic_cancel(z.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    let from_a = take_acked(&mut a, 50).await;
    assert_eq!(from_a.last().unwrap().0, 49);
    publish_n(&ch, "s-many", 50, 5, BasicProperties::default()).await;
    assert_eq!(take_acked(&mut a, 5).await[4].0, 54);
}

/// As RabbitMQ: basic.nack and basic.reject of a stream delivery close the connection (540),
/// queue.purge of a stream too, and nothing is removed; delete-ok of a stream counts 0, with
/// if-empty and if-unused ignored. A stream's consume argument on a classic queue is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_purges_and_deletes_as_rabbitmq() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-nack", &[]).await.unwrap();
    publish_n(&ch, "s-nack", 0, 3, BasicProperties::default()).await;
    for requeue in [true, false] {
        let conn = b.connect().await;
        let rd = conn.create_channel().await.unwrap();
        let mut c = stream_consumer(&rd, "s-nack", 10, &[("x-stream-offset", s("first"))])
            .await
            .unwrap();
        let mut events = Box::pin(conn.events_listener());
        let d = take(&mut c, 1).await.remove(0);
        let _ = d
            .nack(BasicNackOptions {
                requeue,
                ..Default::default()
            })
            .await;
        // The broker closes the connection: 540 and RabbitMQ's text.
        let (c, t) = loop {
            use futures_util::StreamExt;
            match tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await {
                Ok(Some(lapin::Event::Error(e))) => break (code(&e), text(&e)),
                Ok(Some(_)) => continue,
                _ => panic!("nack requeue={requeue} closed nothing"),
            }
        };
        assert_eq!(c, Some(540), "{t}");
        assert!(
            t.contains("basic.nack and basic.reject not supported by stream queues"),
            "{t}"
        );
    }
    let conn = b.connect().await;
    let rd = conn.create_channel().await.unwrap();
    let e = rd
        .queue_purge("s-nack".into(), QueuePurgeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(540));
    assert!(
        text(&e).contains("queue.purge not supported by stream queues"),
        "{}",
        text(&e)
    );
    assert_eq!(passive(&ch, "s-nack").await.unwrap().message_count(), 3);

    let (_c2, rd) = b.channel().await;
    let _c = stream_consumer(&rd, "s-nack", 10, &[]).await.unwrap();
    let n = ch
        .queue_delete(
            "s-nack".into(),
            QueueDeleteOptions {
                if_unused: true,
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(code(&passive(&ch, "s-nack").await.unwrap_err()), Some(404));

    let (_c3, cl) = b.channel().await;
    declare(&cl, "classic-q").await;
    cl.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let e = cl
        .basic_consume(
            "classic-q".into(),
            "".into(),
            BasicConsumeOptions::default(),
            table(&[("x-stream-offset", s("first"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert!(
        text(&e).ends_with("of queue type rabbit_classic_queue"),
        "{}",
        text(&e)
    );
}

/// `last` starts at the newest chunk, as in RabbitMQ: after messages confirmed one at a time,
/// the newest message; after a burst the writer committed together, the first of that batch,
/// then everything after it in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_starts_at_the_newest_chunk() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-last", &[]).await.unwrap();
    for i in 0..5 {
        publish_n(&ch, "s-last", i, 1, BasicProperties::default()).await;
    }
    let (_c2, rd) = b.channel().await;
    let mut c = stream_consumer(&rd, "s-last", 100, &[("x-stream-offset", s("last"))])
        .await
        .unwrap();
    assert_eq!(take_acked(&mut c, 1).await[0].0, 4);
    none_within(&mut c, 100).await;
    rd.basic_cancel(c.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish_n(&ch, "s-last", 5, 200, BasicProperties::default()).await;
    let mut c = stream_consumer(&rd, "s-last", 100, &[("x-stream-offset", s("last"))])
        .await
        .unwrap();
    let first = take_acked(&mut c, 1).await[0].0;
    assert!((5..=204).contains(&first), "last started at {first}");
    let rest = take_acked(&mut c, (204 - first) as usize).await;
    let offsets: Vec<i64> = rest.iter().map(|x| x.0).collect();
    assert_eq!(offsets, ((first + 1)..=204).collect::<Vec<_>>());
}
