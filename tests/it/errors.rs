//! Errors a well-formed client can provoke, seen through lapin: each closes only what RabbitMQ
//! closes, with its reply code.

use crate::harness::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_get_403() {
    let b = Broker::start().await;
    let url = format!("amqp://guest:wrong@{}/%2f", b.handle.amqp_addr);
    let e = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect_err("refused");
    assert_eq!(code(&e), Some(403), "{e:?}");
    let url = format!("amqp://nobody:guest@{}/%2f", b.handle.amqp_addr);
    assert!(Connection::connect(&url, ConnectionProperties::default())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_gets_530() {
    let b = Broker::start().await;
    let url = format!("amqp://guest:guest@{}/nope", b.handle.amqp_addr);
    let e = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect_err("refused");
    assert_eq!(code(&e), Some(530), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_error_leaves_other_channels_alone() {
    let b = Broker::start().await;
    let (c, ch1) = b.channel().await;
    let ch2 = c.create_channel().await.unwrap();
    let q = unique("iso");
    declare(&ch2, &q).await;
    let mut cons = consume(&ch2, &q, true).await;
    let e = passive(&ch1, "nope").await.unwrap_err();
    assert_eq!(code(&e), Some(404));
    publish(&ch2, "", &q, b"still here").await;
    assert_eq!(take(&mut cons, 1).await[0].data, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consumer_conflicts_are_403() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    let q = unique("excl");
    declare(&ch, &q).await;
    let _first = ch
        .basic_consume(
            q.as_str().into(),
            "first".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch2 = c.create_channel().await.unwrap();
    let e = ch2
        .basic_consume(
            q.as_str().into(),
            "second".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403), "{e}");
    assert!(text(&e).contains("in exclusive use"), "{}", text(&e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_consumer_tag_is_530() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("tag");
    declare(&ch, &q).await;
    let _first = ch
        .basic_consume(
            q.as_str().into(),
            "t".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let e = ch
        .basic_consume(
            q.as_str().into(),
            "t".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(530), "{e}");
}
