//! What a stream keeps across a restart, and what deleting it removes.

use super::*;

/// Confirmed messages survive a restart (transient ones too: a stream stores everything);
/// offsets continue after it, and a consumer from `first` reads both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_a_restart() {
    let b = Broker::start().await;
    {
        let (_c, ch) = confirming(&b).await;
        declare_stream(&ch, "s-keep", &[]).await.unwrap();
        publish_n(
            &ch,
            "s-keep",
            0,
            30,
            BasicProperties::default().with_delivery_mode(1),
        )
        .await;
    }
    let b = b.restart().await;
    let (_c, ch) = confirming(&b).await;
    assert_eq!(passive(&ch, "s-keep").await.unwrap().message_count(), 30);
    publish_n(&ch, "s-keep", 30, 5, BasicProperties::default()).await;
    let (_c2, rd) = b.channel().await;
    let mut c = stream_consumer(&rd, "s-keep", 100, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    let all = take_acked(&mut c, 35).await;
    for (i, (offset, body)) in all.iter().enumerate() {
        assert_eq!(*offset, i as i64);
        assert_eq!(body, &format!("m{i}"));
    }
}

/// queue.delete of a stream removes its files and tells its consumers (basic.cancel); a stream
/// declared again under the same name starts empty, from offset 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_stream() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-del", &[]).await.unwrap();
    publish_n(&ch, "s-del", 0, 10, BasicProperties::default()).await;
    let streams = b.handle.state.config.data_dir.join("streams");
    let dirs = || std::fs::read_dir(&streams).map(|d| d.count()).unwrap_or(0);
    assert_eq!(dirs(), 1);
    let deleted = ch
        .queue_delete("s-del".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(deleted, 0, "delete-ok of a stream counts 0, as in RabbitMQ");
    assert_eq!(dirs(), 0);
    declare_stream(&ch, "s-del", &[]).await.unwrap();
    publish_n(&ch, "s-del", 0, 1, BasicProperties::default()).await;
    let (_c2, rd) = b.channel().await;
    let mut c = stream_consumer(&rd, "s-del", 10, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    assert_eq!(take_acked(&mut c, 1).await[0].0, 0);
}

/// Size retention deletes whole old segments: a stream limited to 64 KiB with 16 KiB segments
/// holds at most the limit plus one segment after ten times that was published, and a consumer
/// from `first` starts at the oldest message still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_retention_keeps_the_limit_plus_one_segment() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    let (limit, segment) = (64 * 1024, 16 * 1024);
    declare_stream(
        &ch,
        "s-ret",
        &[
            ("x-max-length-bytes", AMQPValue::LongInt(limit)),
            (
                "x-stream-max-segment-size-bytes",
                AMQPValue::LongInt(segment),
            ),
        ],
    )
    .await
    .unwrap();
    let body = vec![b'x'; 1000];
    let mut pending = Vec::new();
    for _ in 0..650 {
        pending.push(
            ch.basic_publish(
                "".into(),
                "s-ret".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(p.await.unwrap().is_ack());
    }
    let dir = std::fs::read_dir(b.handle.state.config.data_dir.join("streams"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let on_disk: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        on_disk <= (limit + segment) as u64 + 4096,
        "{on_disk} bytes of segments for a {limit}-byte limit"
    );
    assert!(on_disk >= limit as u64 / 2, "{on_disk}: too much deleted");
    let held = passive(&ch, "s-ret").await.unwrap().message_count();
    assert!((32..650).contains(&held), "{held} messages held");
    let (_c2, rd) = b.channel().await;
    let mut c = stream_consumer(&rd, "s-ret", 10, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    let first = take_acked(&mut c, 1).await[0].0;
    assert_eq!(first, 650 - held as i64, "first is the oldest held");
}

/// Age retention: segments whose newest message is older than `x-max-age` go (checked as
/// messages arrive); the newest segment always stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_retention_deletes_old_segments() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(
        &ch,
        "s-age",
        &[
            ("x-max-age", s("1h")),
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(4096)),
        ],
    )
    .await
    .unwrap();
    let props = BasicProperties::default();
    let body = vec![b'x'; 1000];
    for _ in 0..20 {
        ch.basic_publish(
            "".into(),
            "s-age".into(),
            BasicPublishOptions::default(),
            &body,
            props.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    assert_eq!(passive(&ch, "s-age").await.unwrap().message_count(), 20);
    b.advance(std::time::Duration::from_secs(2 * 3600)).await;
    publish_n(&ch, "s-age", 20, 1, props).await;
    let held = passive(&ch, "s-age").await.unwrap().message_count();
    assert!(held < 5, "{held} messages held after their age passed");
    let (_c2, rd) = b.channel().await;
    let mut c = stream_consumer(&rd, "s-age", 10, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    assert_eq!(
        take_acked(&mut c, held as usize).await.last().unwrap().0,
        20
    );
}
