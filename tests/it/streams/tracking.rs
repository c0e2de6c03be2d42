//! Warren's extensions over RabbitMQ's 0-9-1 streams: offsets the broker keeps for named
//! consumers, and a single active consumer by name.

use super::*;
use std::time::Duration;

fn named(name: &str) -> Vec<(&'static str, AMQPValue)> {
    vec![
        ("x-stream-consumer-name", s(name)),
        ("x-stream-offset", s("first")),
    ]
}

/// A named consumer that acked resumes after its last ack on its next consume (its
/// `x-stream-offset` only counts the first time), also after a restart; another name starts
/// where it asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_consumers_resume_after_their_last_ack() {
    let b = Broker::start().await;
    {
        let (_c, ch) = confirming(&b).await;
        declare_stream(&ch, "s-track", &[]).await.unwrap();
        publish_n(&ch, "s-track", 0, 30, BasicProperties::default()).await;
        let (_c2, rd) = b.channel().await;
        let mut c = stream_consumer(&rd, "s-track", 10, &named("app"))
            .await
            .unwrap();
        let got = take(&mut c, 10).await;
        // Ack up to offset 6 only (multiple): 7, 8 and 9 were delivered but not acked.
        got[6]
            .ack(BasicAckOptions { multiple: true })
            .await
            .unwrap();
        rd.basic_cancel(c.tag(), BasicCancelOptions::default())
            .await
            .unwrap();
        let mut again = stream_consumer(&rd, "s-track", 10, &named("app"))
            .await
            .unwrap();
        assert_eq!(take_acked(&mut again, 1).await[0].0, 7);
        // Another name is independent.
        let mut other = stream_consumer(&rd, "s-track", 10, &named("other"))
            .await
            .unwrap();
        assert_eq!(take_acked(&mut other, 1).await[0].0, 0);
        // Written within about a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let b = b.restart().await;
    let (_c, rd) = b.channel().await;
    let mut c = stream_consumer(&rd, "s-track", 10, &named("app"))
        .await
        .unwrap();
    assert_eq!(take_acked(&mut c, 1).await[0].0, 8);
    let mut o = stream_consumer(&rd, "s-track", 10, &named("other"))
        .await
        .unwrap();
    assert_eq!(take_acked(&mut o, 1).await[0].0, 1);
}

/// Single active consumer by name: of several consumers with the same name, one reads; when it
/// goes, the next takes over right after the last offset the group acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_fails_over() {
    let b = Broker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-sac", &[]).await.unwrap();
    publish_n(&ch, "s-sac", 0, 20, BasicProperties::default()).await;
    let mut args = named("group");
    args.push(("x-single-active-consumer", AMQPValue::Boolean(true)));
    let conn_a = b.connect().await;
    let ra = conn_a.create_channel().await.unwrap();
    let mut a = stream_consumer(&ra, "s-sac", 5, &args).await.unwrap();
    let (_cb, rb) = b.channel().await;
    let mut standby = stream_consumer(&rb, "s-sac", 5, &args).await.unwrap();
    let got = take_acked(&mut a, 5).await;
    assert_eq!(got[4].0, 4);
    none_within(&mut standby, 300).await;
    // The active one goes away (its connection closes): the standby takes over at 5.
    conn_a.close(200, "bye".into()).await.unwrap();
    let took_over = take_acked(&mut standby, 15).await;
    assert_eq!(took_over[0].0, 5);
    assert_eq!(took_over[14].0, 19);
    // Without a name, single active is refused.
    let conn = b.connect().await;
    let rd = conn.create_channel().await.unwrap();
    let e = stream_consumer(
        &rd,
        "s-sac",
        5,
        &[("x-single-active-consumer", AMQPValue::Boolean(true))],
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), Some(406));
}
