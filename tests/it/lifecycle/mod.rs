//! Message lifecycle beyond TTL and dead-lettering: delivery limits, priority queues,
//! reject-publish-dlx, consumer acknowledgement timeouts, delayed delivery and deduplication.
//!
//! One file per feature: `delivery_limit`, `priority`, `overflow` (reject-publish-dlx),
//! `consumer_timeout`, `delayed`, `dedup`, and `durable` (these on durable queues with
//! persistent messages). The helpers they share are here.

mod consumer_timeout;
mod dedup;
mod delayed;
mod delivery_limit;
mod durable;
mod overflow;
mod priority;

use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref().and_then(|h| h.inner().get(key))
}

fn str_header(props: &BasicProperties, key: &str) -> Option<String> {
    match header(props, key)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

fn int_header(props: &BasicProperties, key: &str) -> Option<i64> {
    Some(match header(props, key)? {
        AMQPValue::ShortShortInt(n) => *n as i64,
        AMQPValue::ShortInt(n) => *n as i64,
        AMQPValue::LongInt(n) => *n as i64,
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongUInt(n) => *n as i64,
        _ => return None,
    })
}

fn with_headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    BasicProperties::default().with_headers(t)
}

async fn declare_with(
    ch: &lapin::Channel,
    q: &str,
    args: &[(&str, AMQPValue)],
) -> lapin::Result<lapin::Queue> {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.clone());
    }
    ch.queue_declare(q.into(), QueueDeclareOptions::default(), t)
        .await
}

async fn publish_props(
    ch: &lapin::Channel,
    ex: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    ch.basic_publish(
        ex.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("basic.publish");
}

/// A queue bound to amq.direct with routing key `key`, for dead-lettered messages.
async fn dead_letter_queue(ch: &lapin::Channel, key: &str) -> String {
    let dlq = unique("dlq");
    declare(ch, &dlq).await;
    ch.queue_bind(
        dlq.as_str().into(),
        "amq.direct".into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    dlq
}

/// Declare an exchange of a plugin's type (x-delayed-message, x-message-deduplication).
async fn declare_exchange(
    ch: &lapin::Channel,
    name: &str,
    kind: &str,
    args: &[(&str, AMQPValue)],
) -> lapin::Result<()> {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.clone());
    }
    ch.exchange_declare(
        name.into(),
        lapin::ExchangeKind::Custom(kind.into()),
        ExchangeDeclareOptions::default(),
        t,
    )
    .await
}

/// Properties with the x-deduplication-header `v`.
fn dedup(v: &str) -> BasicProperties {
    with_headers(&[("x-deduplication-header", s(v))])
}
