//! Declaring streams: the properties and arguments RabbitMQ refuses, and what a declare reports.

use super::*;

/// A stream must be durable, and neither exclusive nor auto-delete, nor server-named; each
/// refusal is RabbitMQ's 406, and the channel closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_properties_are_checked() {
    let b = Broker::start().await;
    let conn = b.connect().await;
    let mut t = FieldTable::default();
    t.insert("x-queue-type".into(), s("stream"));
    for (opts, property) in [
        (QueueDeclareOptions::default(), "non-durable"),
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            "exclusive-owner",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            "auto-delete",
        ),
    ] {
        let ch = conn.create_channel().await.unwrap();
        let e = ch
            .queue_declare("s-props".into(), opts, t.clone())
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(406), "{property}: {e}");
        assert!(
            text(&e).contains(&format!(
                "invalid property '{property}' for queue 's-props'"
            )),
            "{property}: {}",
            text(&e)
        );
    }
    let ch = conn.create_channel().await.unwrap();
    let e = declare_stream(&ch, "", &[]).await.unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert!(text(&e).contains("server-named queue for type rabbit_stream_queue"));
    // None of them exists.
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(code(&passive(&ch, "s-props").await.unwrap_err()), Some(404));
}

/// Bad retention arguments are refused with RabbitMQ's texts; good ones are taken, and a
/// redeclare with the same arguments is fine while a different one is inequivalent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_arguments_are_checked() {
    let b = Broker::start().await;
    let conn = b.connect().await;
    for (arg, value, expect) in [
        ("x-max-age", s("abc"), "invalid arg 'x-max-age'"),
        ("x-max-age", s("0D"), "invalid arg 'x-max-age'"),
        ("x-max-age", s("10d"), "invalid arg 'x-max-age'"),
        (
            "x-max-age",
            AMQPValue::LongInt(10),
            "invalid arg 'x-max-age'",
        ),
        (
            "x-max-length-bytes",
            AMQPValue::LongInt(-1),
            "invalid arg 'x-max-length-bytes'",
        ),
        (
            "x-max-length-bytes",
            s("big"),
            "invalid arg 'x-max-length-bytes'",
        ),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongInt(-5),
            "invalid arg 'x-stream-max-segment-size-bytes'",
        ),
    ] {
        let ch = conn.create_channel().await.unwrap();
        let e = declare_stream(&ch, "s-args", &[(arg, value.clone())])
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(406), "{arg}={value:?}: {e}");
        assert!(text(&e).contains(expect), "{arg}={value:?}: {}", text(&e));
    }
    let ch = conn.create_channel().await.unwrap();
    for age in ["7D", "12h", "30m", "10s", "1Y", "2M"] {
        let name = format!("s-age-{age}");
        declare_stream(&ch, &name, &[("x-max-age", s(age))])
            .await
            .unwrap_or_else(|e| panic!("x-max-age {age}: {e}"));
    }
    let args = [
        ("x-max-length-bytes", AMQPValue::LongLongInt(1 << 30)),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongInt(1 << 20),
        ),
    ];
    let ok = declare_stream(&ch, "s-good", &args).await.unwrap();
    assert_eq!((ok.message_count(), ok.consumer_count()), (0, 0));
    declare_stream(&ch, "s-good", &args).await.unwrap();
    let e = declare_stream(
        &ch,
        "s-good",
        &[("x-max-length-bytes", AMQPValue::LongInt(5))],
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert!(
        text(&e).ends_with(
            "inequivalent arg 'x-max-length-bytes' for queue 's-good' in vhost '/': received '5' \
             but current is '1073741824'"
        ),
        "{}",
        text(&e)
    );
    // A classic redeclare of a stream is inequivalent too.
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            "s-good".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(
        text(&e).ends_with(
            "inequivalent arg 'x-queue-type' for queue 's-good' in vhost '/': received none but \
             current is the value 'stream' of type 'longstr'"
        ),
        "{}",
        text(&e)
    );
}

/// declare-ok (and a passive declare) report the messages the stream holds, not what is left
/// to read: reading a stream removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_ok_counts_what_the_stream_holds() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-count", &[]).await.unwrap();
    publish_n(&ch, "s-count", 0, 25, BasicProperties::default()).await;
    let (_c2, rd) = b.channel().await;
    let mut c = stream_consumer(&rd, "s-count", 50, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    take_acked(&mut c, 25).await;
    assert_eq!(passive(&ch, "s-count").await.unwrap().message_count(), 25);
    let again = declare_stream(&ch, "s-count", &[]).await.unwrap();
    assert_eq!(again.message_count(), 25);
    assert_eq!(again.consumer_count(), 1);
}
