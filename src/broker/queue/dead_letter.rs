//! Dead-lettering: a message rejected without requeue, dropped by a length limit or expired is
//! republished to its queue's `x-dead-letter-exchange`, with RabbitMQ's `x-death` history in its
//! headers, its `expiration` removed, and its routing key replaced by `x-dead-letter-routing-key`
//! when that is set.

use crate::broker::args::{str_arg, str_bytes};
use crate::broker::message::{Message, Properties};
use crate::broker::queue::{QEntry, Queue};
use crate::broker::vhost::{cc_keys, Origin, Publish, RouteCache};
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use bytes::Bytes;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    Maxlen,
    /// Returned more often than the queue's `x-delivery-limit` allows.
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Where a queue's dead messages go.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub exchange: String,
    pub routing_key: Option<String>,
}

impl DeadLetter {
    pub fn from_args(args: &FieldTable) -> Option<Self> {
        Some(DeadLetter {
            exchange: str_arg(args, "x-dead-letter-exchange")?,
            routing_key: str_arg(args, "x-dead-letter-routing-key"),
        })
    }
}

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes()))
}

fn get_str<'a>(t: &'a FieldTable, k: &str) -> Option<&'a [u8]> {
    t.inner().get(k).and_then(str_bytes)
}

/// Whether the message already died in `queue` for a reason other than rejection: republishing
/// it there would be a cycle without a consumer's decision, which RabbitMQ breaks by dropping.
pub fn would_cycle(msg: &Message, queue: &str) -> bool {
    let Some(raw) = msg.properties.headers_raw() else {
        return false;
    };
    let Ok((_, headers)) = amq_protocol::types::parsing::parse_field_table(raw) else {
        return false;
    };
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return false;
    };
    let mut seen_here = false;
    for d in deaths.as_slice() {
        if let AMQPValue::FieldTable(t) = d {
            if get_str(t, "reason") == Some(b"rejected") {
                return false;
            }
            seen_here |= get_str(t, "queue") == Some(queue.as_bytes());
        }
    }
    seen_here
}

/// Copy every property but `expiration`, with new `headers`.
fn without_expiration(p: &AMQPProperties, headers: FieldTable) -> AMQPProperties {
    let mut n = AMQPProperties::default().with_headers(headers);
    if let Some(v) = p.content_type() {
        n = n.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        n = n.with_content_encoding(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        n = n.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        n = n.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        n = n.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        n = n.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        n = n.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        n = n.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        n = n.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        n = n.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        n = n.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        n = n.with_cluster_id(v.clone());
    }
    n
}

/// The message as republished to the dead-letter exchange `dlx` after dying in `queue`.
pub fn dead_lettered(
    msg: &Message,
    queue: &str,
    reason: Reason,
    dlx: &str,
    routing_key: Bytes,
) -> Option<Message> {
    let props = msg.properties.decode()?;
    let mut headers = props.headers().clone().unwrap_or_default();
    // The delivery count belonged to the queue it died in.
    if headers.contains_key("x-delivery-count") {
        let mut inner = headers.inner().clone();
        inner.remove("x-delivery-count");
        headers = inner.into();
    }
    let exchange = String::from_utf8_lossy(&msg.exchange).into_owned();
    let rk = String::from_utf8_lossy(&msg.routing_key).into_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // x-death: one entry per (queue, reason), newest first, with a count.
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let existing = deaths.iter().position(|d| {
        matches!(d, AMQPValue::FieldTable(t)
            if get_str(t, "queue") == Some(queue.as_bytes())
                && get_str(t, "reason") == Some(reason.as_str().as_bytes()))
    });
    let entry = match existing.map(|i| deaths.remove(i)) {
        Some(AMQPValue::FieldTable(mut t)) => {
            let count = match t.inner().get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                _ => 0,
            };
            // The count comes from the publisher's headers: never overflow on it.
            t.insert(
                "count".into(),
                AMQPValue::LongLongInt(count.saturating_add(1)),
            );
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t
        }
        _ => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), text(reason.as_str()));
            t.insert("queue".into(), text(queue));
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t.insert("exchange".into(), text(&exchange));
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![text(&rk)])),
            );
            if let Some(exp) = props.expiration() {
                t.insert("original-expiration".into(), text(exp.as_str()));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    for (k, v) in [
        ("x-first-death-reason", reason.as_str()),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", exchange.as_str()),
    ] {
        if !headers.contains_key(k) {
            headers.insert(ShortString::from(k), text(v));
        }
    }
    let properties = Properties::encode(&without_expiration(&props, headers))?;
    Some(Message::new(
        Bytes::copy_from_slice(dlx.as_bytes()),
        routing_key,
        properties,
        msg.body.clone(),
        msg.memory().clone(),
    ))
}

impl Queue {
    /// Republish dead messages to this queue's dead-letter exchange, through the vhost's
    /// `publish` as any message (if the queue has one; otherwise they are simply dropped, and so
    /// are they when the exchange does not exist, as in RabbitMQ). Never called with this
    /// queue's lock held.
    pub fn dead_letter(&self, entries: Vec<QEntry>, reason: Reason) {
        let Some(dl) = &self.dead_letter else {
            return;
        };
        let Some(vhost) = self.vhost_ref.upgrade() else {
            return;
        };
        let mut cache = RouteCache::default();
        for e in entries {
            // Without a dead-letter routing key, all of the message's keys: its own and CC's.
            let (rk, cc) = match &dl.routing_key {
                Some(k) => (Bytes::copy_from_slice(k.as_bytes()), Vec::new()),
                None => (e.msg.routing_key.clone(), cc_keys(&e.msg.properties)),
            };
            let Some(m) = dead_lettered(&e.msg, &self.name, reason, &dl.exchange, rk) else {
                continue;
            };
            let p = Publish {
                msg: Arc::new(m),
                cc,
                mandatory: false,
                origin: Origin::DeadLetter(reason),
            };
            let _ = vhost.publish(&p, &mut cache);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryMonitor;
    use crate::broker::message::Properties;
    use amq_protocol::protocol::BasicProperties;
    use amq_protocol::types::{FieldArray, FieldTable};
    use std::sync::Arc;

    /// Regression (found by fuzzing): an `x-death` count from the publisher at i64::MAX
    /// overflowed when the message died again.
    #[test]
    fn a_published_x_death_count_cannot_overflow() {
        let mut death = FieldTable::default();
        death.insert("queue".into(), AMQPValue::LongString("q".into()));
        death.insert("reason".into(), AMQPValue::LongString("rejected".into()));
        death.insert("count".into(), AMQPValue::LongLongInt(i64::MAX));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        let props = Properties::encode(&BasicProperties::default().with_headers(headers)).unwrap();
        let memory = Arc::new(MemoryMonitor::new(u64::MAX));
        let msg = Message::new(
            Bytes::new(),
            Bytes::from_static(b"q"),
            props,
            Bytes::new(),
            memory,
        );
        let out = dead_lettered(&msg, "q", Reason::Rejected, "dlx", Bytes::from_static(b"q"))
            .expect("dead-lettered");
        let h = out.properties.decode().unwrap().headers().clone().unwrap();
        let Some(AMQPValue::FieldArray(a)) = h.inner().get("x-death") else {
            panic!("x-death: {h:?}")
        };
        let Some(AMQPValue::FieldTable(t)) = a.as_slice().first() else {
            panic!("{a:?}")
        };
        assert_eq!(
            t.inner().get("count"),
            Some(&AMQPValue::LongLongInt(i64::MAX))
        );
    }
}
