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
    // The first death's entry keeps its keys in RabbitMQ's order (see `first_death_headers`).
    let first_death = deaths.is_empty();
    let mut fresh = Vec::new();
    let entry = match existing.map(|i| deaths.remove(i)) {
        Some(AMQPValue::FieldTable(mut t)) => {
            let count = match t.inner().get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                _ => 0,
            };
            // The count comes from the publisher's headers: never overflow on it. The time
            // stays the first one's, as in RabbitMQ.
            t.insert(
                "count".into(),
                AMQPValue::LongLongInt(count.saturating_add(1)),
            );
            t
        }
        _ => {
            fresh = vec![
                ("count", AMQPValue::LongLongInt(1)),
                ("reason", text(reason.as_str())),
                ("queue", text(queue)),
                ("time", AMQPValue::Timestamp(now)),
                ("exchange", text(&exchange)),
                (
                    "routing-keys",
                    AMQPValue::FieldArray(FieldArray::from(vec![text(&rk)])),
                ),
            ];
            if let Some(exp) = props.expiration() {
                fresh.push(("original-expiration", text(exp.as_str())));
            }
            let mut t = FieldTable::default();
            for (k, v) in &fresh {
                t.insert((*k).into(), v.clone());
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
    let mut properties = Properties::encode(&without_expiration(&props, headers.clone()))?;
    if first_death && !fresh.is_empty() {
        properties = first_death_headers(&properties, &headers, &fresh)?;
    }
    Some(Message::new(
        Bytes::copy_from_slice(dlx.as_bytes()),
        routing_key,
        properties,
        msg.body.clone(),
        msg.memory(),
    ))
}

/// RabbitMQ writes the `x-death` entry of a message's first death with its keys in the order
/// it builds them (count, reason, queue, time, exchange, routing-keys, original-expiration),
/// where a `FieldTable` would sort them (as RabbitMQ sorts every later entry): the properties
/// with their headers table re-encoded so, the other headers in their (sorted) order.
fn first_death_headers(
    properties: &Properties,
    headers: &FieldTable,
    entry: &[(&str, AMQPValue)],
) -> Option<Properties> {
    use amq_protocol::types::generation::gen_value;
    let value = |v: &AMQPValue| cookie_factory::gen_simple(gen_value(v), Vec::new()).ok();
    let key = |out: &mut Vec<u8>, k: &str| {
        out.push(k.len() as u8);
        out.extend_from_slice(k.as_bytes());
    };
    let with_len = |out: &mut Vec<u8>, tag: u8, body: &[u8]| {
        out.push(tag);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    };
    let mut table = Vec::new();
    for (k, v) in entry {
        key(&mut table, k);
        table.extend(value(v)?);
    }
    let mut array = Vec::new();
    with_len(&mut array, b'F', &table);
    let mut body = Vec::new();
    for (k, v) in headers.inner() {
        key(&mut body, k.as_str());
        if k.as_str() == "x-death" {
            with_len(&mut body, b'A', &array);
        } else {
            body.extend(value(v)?);
        }
    }
    crate::broker::queue::lifecycle::replace_headers_raw(properties, &body)
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
                None => (e.msg.routing_key.bytes(), cc_keys(&e.msg.properties)),
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

    fn header_of(m: &Message, k: &str) -> Option<AMQPValue> {
        crate::broker::queue::lifecycle::header(m, k)
    }

    /// Where each key first occurs in the encoded headers (as a short string).
    fn key_at(raw: &[u8], k: &str) -> usize {
        let mut tagged = vec![k.len() as u8];
        tagged.extend_from_slice(k.as_bytes());
        raw.windows(tagged.len())
            .position(|w| w == tagged.as_slice())
            .unwrap_or_else(|| panic!("{k} not in the headers"))
    }

    /// Bug: the first `x-death` entry came with its keys sorted; RabbitMQ writes them in the
    /// order count, reason, queue, time, exchange, routing-keys, original-expiration (and
    /// sorts only entries it updates). And a second death in the same queue for the same
    /// reason moved the entry's time; RabbitMQ keeps the first one's and only counts.
    #[test]
    fn first_death_keys_in_rabbitmq_order() {
        let mut headers = FieldTable::default();
        headers.insert("h".into(), AMQPValue::LongInt(1));
        let p = BasicProperties::default()
            .with_headers(headers)
            .with_expiration("60000".into())
            .with_content_type("text/plain".into());
        let memory = MemoryMonitor::unlimited();
        let msg = Message::new(
            Bytes::from_static(b"ex"),
            Bytes::from_static(b"rk"),
            Properties::encode(&p).unwrap(),
            Bytes::from_static(b"body"),
            memory,
        );
        let once = dead_lettered(&msg, "q", Reason::Expired, "dlx", Bytes::from_static(b"k"))
            .expect("dead-lettered");
        let raw = once.properties.headers_raw().unwrap();
        let order = [
            "count",
            "reason",
            "queue",
            "time",
            "exchange",
            "routing-keys",
            "original-expiration",
        ]
        .map(|k| key_at(raw, k));
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        // Kept when a (quorum) queue adds its x-delivery-count, which sorts in among the
        // headers.
        let counted = crate::broker::queue::lifecycle::with_delivery_count(&once, 0).unwrap();
        let raw2 = counted.properties.headers_raw().unwrap();
        let order2 = [
            "count",
            "reason",
            "queue",
            "time",
            "exchange",
            "routing-keys",
        ]
        .map(|k| key_at(raw2, k));
        assert!(order2.windows(2).all(|w| w[0] < w[1]), "{order2:?}");
        let keys = ["h", "x-death", "x-delivery-count", "x-first-death-exchange"];
        let at = keys.map(|k| key_at(raw2, k));
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
        assert_eq!(
            header_of(&counted, "x-delivery-count"),
            Some(AMQPValue::LongLongInt(0))
        );
        let recounted = crate::broker::queue::lifecycle::with_delivery_count(&counted, 3).unwrap();
        assert_eq!(
            header_of(&recounted, "x-delivery-count"),
            Some(AMQPValue::LongLongInt(3))
        );
        assert_eq!(
            recounted.properties.headers_raw().unwrap().len(),
            raw2.len(),
            "replaced, not added"
        );
        // The same values as a sorted table would carry; the other properties kept.
        let decoded = once.properties.decode().unwrap();
        assert_eq!(
            decoded.content_type().as_ref().unwrap().as_str(),
            "text/plain"
        );
        assert!(decoded.expiration().is_none());
        let h = decoded.headers().clone().unwrap();
        assert_eq!(h.inner().get("h"), Some(&AMQPValue::LongInt(1)));
        let Some(AMQPValue::FieldArray(a)) = h.inner().get("x-death") else {
            panic!("{h:?}")
        };
        let Some(AMQPValue::FieldTable(t)) = a.as_slice().first() else {
            panic!("{a:?}")
        };
        let t = t.inner();
        assert_eq!(t.len(), 7);
        assert_eq!(t.get("count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(t.get("queue"), Some(&AMQPValue::LongString("q".into())));
        assert_eq!(
            t.get("original-expiration"),
            Some(&AMQPValue::LongString("60000".into()))
        );
        let time = t.get("time").cloned();
        assert!(matches!(time, Some(AMQPValue::Timestamp(_))));
        // Dies again there for the same reason: counted, time kept, keys sorted.
        let mut t0 = BasicProperties::default();
        t0 = t0.with_headers({
            let mut hh = h.clone();
            let mut old = FieldTable::default();
            for (k, v) in t {
                old.insert(k.clone(), v.clone());
            }
            old.insert("time".into(), AMQPValue::Timestamp(1));
            hh.insert(
                "x-death".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(old)])),
            );
            hh
        });
        let again = Message::new(
            Bytes::from_static(b"ex"),
            Bytes::from_static(b"rk"),
            Properties::encode(&t0).unwrap(),
            Bytes::new(),
            MemoryMonitor::unlimited(),
        );
        let twice = dead_lettered(
            &again,
            "q",
            Reason::Expired,
            "dlx",
            Bytes::from_static(b"k"),
        )
        .unwrap();
        let raw = twice.properties.headers_raw().unwrap();
        assert!(key_at(raw, "count") < key_at(raw, "exchange"));
        assert!(key_at(raw, "exchange") < key_at(raw, "queue"));
        let h = twice
            .properties
            .decode()
            .unwrap()
            .headers()
            .clone()
            .unwrap();
        let Some(AMQPValue::FieldArray(a)) = h.inner().get("x-death") else {
            panic!("{h:?}")
        };
        let Some(AMQPValue::FieldTable(t)) = a.as_slice().first() else {
            panic!("{a:?}")
        };
        assert_eq!(t.inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(t.inner().get("time"), Some(&AMQPValue::Timestamp(1)));
    }

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
        let memory = MemoryMonitor::unlimited();
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
