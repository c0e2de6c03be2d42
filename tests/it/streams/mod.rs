//! Stream queues (`x-queue-type: stream`) over AMQP 0-9-1 with lapin: declare rules, consumers
//! reading from offsets with credit, the `x-stream-offset` header, filtering, and what survives a
//! restart. One file per area; the helpers they share are here.

mod consume;
mod declare;
mod durability;
mod super_streams;
mod tracking;
mod visibility;

use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};

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

/// Declare a durable stream with extra arguments.
async fn declare_stream(
    ch: &Channel,
    name: &str,
    extra: &[(&str, AMQPValue)],
) -> lapin::Result<lapin::Queue> {
    let mut t = table(extra);
    t.insert("x-queue-type".into(), s("stream"));
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        t,
    )
    .await
}

/// Publish `n` messages ("m0", "m1", …, numbered from `from`) with confirms, waiting for all.
async fn publish_n(ch: &Channel, stream: &str, from: usize, n: usize, props: BasicProperties) {
    let mut pending = Vec::with_capacity(n);
    for i in from..from + n {
        pending.push(
            ch.basic_publish(
                "".into(),
                stream.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                props.clone(),
            )
            .await
            .expect("basic.publish"),
        );
    }
    for p in pending {
        assert!(p.await.expect("confirm").is_ack());
    }
}

/// A confirming channel on a fresh connection.
async fn confirming(b: &Broker) -> (lapin::Connection, Channel) {
    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (c, ch)
}

/// A stream consumer with prefetch `prefetch` and consume arguments `args`.
async fn stream_consumer(
    ch: &Channel,
    stream: &str,
    prefetch: u16,
    args: &[(&str, AMQPValue)],
) -> lapin::Result<lapin::Consumer> {
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    ch.basic_consume(
        stream.into(),
        "".into(),
        BasicConsumeOptions::default(),
        table(args),
    )
    .await
}

/// The `x-stream-offset` header of a delivery (it must be a signed 64-bit integer).
fn offset_of(d: &lapin::message::Delivery) -> i64 {
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-stream-offset"))
    {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("x-stream-offset header missing or not a long: {other:?}"),
    }
}

/// Take `n` deliveries, acking each as it arrives (so that credit keeps coming); returns
/// (offset, body) pairs.
async fn take_acked(consumer: &mut lapin::Consumer, n: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = take(consumer, 1).await.remove(0);
        d.ack(BasicAckOptions::default()).await.unwrap();
        out.push((offset_of(&d), String::from_utf8_lossy(&d.data).into_owned()));
    }
    out
}
