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
