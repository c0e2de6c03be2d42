//! The per-queue lifecycle settings that are not TTL, length limits or dead-lettering, read once
//! from the queue's arguments at declare: priority levels (`x-max-priority`), the delivery limit
//! (`x-delivery-limit`, with the `x-delivery-count` header), the consumer acknowledgement timeout
//! (`x-consumer-timeout`, `x-consumer-timeout-action`) and queue-level deduplication
//! (`x-message-deduplication`, keyed by each message's `x-deduplication-header`).

use super::{Inner, QEntry, Queue};
use crate::broker::args::{as_int, str_bytes};
use crate::broker::message::{Message, Properties};
use amq_protocol::types::{AMQPValue, FieldTable};
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// What happens to a consumer whose oldest unacknowledged delivery is older than the consumer
/// timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutAction {
    /// RabbitMQ's behaviour: the channel is closed with 406 PRECONDITION_FAILED (its unacked
    /// deliveries return to their queues).
    CloseChannel,
    /// Warren's gentler mode: only that consumer is cancelled (basic.cancel to the client, which
    /// must support `consumer_cancel_notify`; otherwise the channel is closed) and its unacked
    /// deliveries are requeued. The channel and its other consumers carry on.
    CancelConsumer,
}

impl TimeoutAction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "close_channel" => Some(TimeoutAction::CloseChannel),
            "cancel_consumer" => Some(TimeoutAction::CancelConsumer),
            _ => None,
        }
    }
}

/// Settings a queue reads from its arguments at declare.
#[derive(Debug, Default)]
pub struct QueueLife {
    /// `x-max-priority`: 0 means a plain FIFO queue.
    pub max_priority: u8,
    /// `x-delivery-limit`: a message returned more often than this is dead-lettered (reason
    /// `delivery_limit`) or dropped.
    pub delivery_limit: Option<u64>,
    /// Deliveries carry `x-delivery-count` once returned at least once (queues with a delivery
    /// limit, and quorum-type queues, as RabbitMQ's quorum queues do).
    pub count_deliveries: bool,
    /// `x-consumer-timeout` in milliseconds (None: the broker's `consumer_timeout_ms`).
    pub consumer_timeout: Option<u64>,
    /// `x-consumer-timeout-action` (None: the broker's `consumer_timeout_action`).
    pub timeout_action: Option<TimeoutAction>,
    /// `x-message-deduplication: true`.
    pub deduplicate: bool,
    /// `x-queue-type: quorum`: RabbitMQ's quorum-queue rules apply (a returned message goes to
    /// the back of the queue; basic.get always carries `x-delivery-count`).
    pub quorum: bool,
}

impl QueueLife {
    pub fn from_args(args: &FieldTable) -> Self {
        let t = args.inner();
        let int = |k: &str| t.get(k).and_then(as_int);
        let delivery_limit = int("x-delivery-limit").map(|n| n.max(0) as u64);
        let quorum = t.get("x-queue-type").and_then(str_bytes) == Some(b"quorum");
        QueueLife {
            max_priority: int("x-max-priority").map_or(0, |n| n.clamp(0, 255) as u8),
            delivery_limit,
            count_deliveries: delivery_limit.is_some() || quorum,
            consumer_timeout: int("x-consumer-timeout").map(|n| n.max(0) as u64),
            timeout_action: t
                .get("x-consumer-timeout-action")
                .and_then(str_bytes)
                .and_then(|b| TimeoutAction::parse(std::str::from_utf8(b).ok()?)),
            deduplicate: matches!(
                t.get("x-message-deduplication"),
                Some(AMQPValue::Boolean(true))
            ),
            quorum,
        }
    }
}

/// The message with its `x-delivery-count` header set to `count` (other headers and properties
/// unchanged), as a consumer sees it on redelivery.
pub fn with_delivery_count(msg: &Message, count: u32) -> Option<Message> {
    let value = AMQPValue::LongLongInt(count as i64);
    let properties = match msg
        .properties
        .headers_raw()
        .and_then(|t| set_raw_header(&msg.properties, t, "x-delivery-count", &value))
    {
        Some(p) => p,
        None => {
            let props = msg.properties.decode()?;
            let mut headers = props.headers().clone().unwrap_or_default();
            headers.insert("x-delivery-count".into(), value);
            Properties::encode(&props.with_headers(headers))?
        }
    };
    let m = Message::new(
        msg.exchange.clone(),
        msg.routing_key.clone(),
        properties,
        msg.body.clone(),
        msg.memory(),
    );
    carry_stored(msg, &m);
    Some(m)
}

/// Set one header in encoded properties whose headers table is `table` (as
/// `Properties::headers_raw` gives it): the other entries keep their bytes, so the key order
/// inside nested tables (an `x-death` entry's) is kept, and the table's own keys end up sorted,
/// as RabbitMQ sets a header. None if the table cannot be walked.
fn set_raw_header(p: &Properties, table: &[u8], key: &str, v: &AMQPValue) -> Option<Properties> {
    use amq_protocol::types::generation::gen_value;
    use amq_protocol::types::parsing::{parse_short_string, parse_value};
    let mut rest = table.get(4..)?;
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    while !rest.is_empty() {
        let (after_key, k) = parse_short_string(rest).ok()?;
        let (after, _) = parse_value(after_key).ok()?;
        let len = rest.len() - after.len();
        if k.as_str() != key {
            entries.push((k.as_str().as_bytes().to_vec(), rest[..len].to_vec()));
        }
        rest = after;
    }
    let mut entry = vec![key.len() as u8];
    entry.extend_from_slice(key.as_bytes());
    entry.extend(cookie_factory::gen_simple(gen_value(v), Vec::new()).ok()?);
    entries.push((key.as_bytes().to_vec(), entry));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let body: Vec<u8> = entries.into_iter().flat_map(|(_, e)| e).collect();
    replace_headers_raw(p, &body)
}

/// The properties `p` (which have a headers table) with that table's entries replaced by the
/// encoded `entries`.
pub fn replace_headers_raw(p: &Properties, entries: &[u8]) -> Option<Properties> {
    let raw = &p.raw;
    let old = p.headers_raw()?;
    let start = old.as_ptr() as usize - raw.as_ptr() as usize;
    let end = start + old.len();
    let mut out = Vec::with_capacity(raw.len() - old.len() + entries.len() + 4);
    out.extend_from_slice(&raw[..start]);
    out.extend_from_slice(&u32::try_from(entries.len()).ok()?.to_be_bytes());
    out.extend_from_slice(entries);
    out.extend_from_slice(&raw[end..]);
    Properties::parse(bytes::Bytes::from(out)).ok()
}

/// A copy of a message points at the same record in the message log (the queue entry's claim
/// on it is released through whichever copy the entry holds). The record keeps the properties
/// as published; the count is kept in the log's ack file and put back when the message is read
/// back (`paging::load`).
fn carry_stored(from: &Message, to: &Message) {
    if let Some(s) = from.stored.get() {
        let _ = to.stored.set(crate::store::Stored {
            log: s.log.clone(),
            segment: s.segment,
            offset: s.offset,
        });
    }
}

/// The value of a header of a message, if it has that header (parses the table only when the
/// encoded key occurs in it, so messages without it cost a byte scan).
pub fn header(msg: &Message, key: &str) -> Option<AMQPValue> {
    let raw = msg.properties.headers_raw()?;
    let k = key.as_bytes();
    let mut tagged = Vec::with_capacity(k.len() + 1);
    tagged.push(k.len() as u8);
    tagged.extend_from_slice(k);
    if !raw.windows(tagged.len()).any(|w| w == tagged.as_slice()) {
        return None;
    }
    let (_, t) = amq_protocol::types::parsing::parse_field_table(raw).ok()?;
    t.inner().get(key).cloned()
}

/// A deduplication key: the `x-deduplication-header` value, encoded with its type so that, say,
/// the string "1" and the integer 1 stay distinct.
pub fn dedup_key(msg: &Message) -> Option<Box<[u8]>> {
    let v = header(msg, "x-deduplication-header")?;
    let mut out = Vec::new();
    match &v {
        AMQPValue::LongString(s) => {
            out.push(b'S');
            out.extend_from_slice(s.as_bytes());
        }
        AMQPValue::ShortString(s) => {
            out.push(b'S');
            out.extend_from_slice(s.as_str().as_bytes());
        }
        other => match as_int(other) {
            Some(n) => {
                out.push(b'I');
                out.extend_from_slice(&n.to_be_bytes());
            }
            None => {
                out.push(b'?');
                out.extend_from_slice(format!("{other:?}").as_bytes());
            }
        },
    }
    Some(out.into_boxed_slice())
}

/// Queue-level deduplication: the keys of the messages this queue holds (ready or delivered and
/// not yet settled). Each key points at the queue's own copy of its message (`Arc`), so the key
/// frees itself when the message leaves the queue by any path (ack, expiry, drop, dead-letter,
/// purge); dead keys are pruned in bulk, keeping the map at most about twice the number of
/// messages the queue holds.
#[derive(Debug, Default)]
pub struct DedupSet {
    held: HashMap<Box<[u8]>, Weak<Message>>,
    prune_at: usize,
}

impl DedupSet {
    /// Whether a message with this key is still in the queue.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.held.get(key).is_some_and(|w| w.strong_count() > 0)
    }

    /// Remember the queue's copy of a message with this key.
    pub fn insert(&mut self, key: Box<[u8]>, msg: &Arc<Message>) {
        if self.held.len() >= self.prune_at {
            self.held.retain(|_, w| w.strong_count() > 0);
            self.prune_at = (self.held.len() * 2).max(64);
        }
        self.held.insert(key, Arc::downgrade(msg));
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// A copy of `msg` owned by one queue alone (same body and properties, shared bytes), so that
/// its lifetime tracks that queue's holding of it.
pub fn own_copy(msg: &Message) -> Arc<Message> {
    let m = Message::new(
        msg.exchange.clone(),
        msg.routing_key.clone(),
        msg.properties.clone(),
        msg.body.clone(),
        msg.memory(),
    );
    carry_stored(msg, &m);
    Arc::new(m)
}

/// Flow control: a publisher whose messages land in a queue with more than `FLOW_HIGH` ready
/// messages, while that queue's consumers are taking messages, pauses reading until the queue is
/// back under `FLOW_LOW` (or its consumers stop making progress). The publisher gets TCP
/// back-pressure and the consumers get the CPU, as RabbitMQ's credit flow does.
/// Returns of one stored message recorded in the log (8 bytes each); past this, a restart
/// resumes its `x-delivery-count` here.
const RETURNS_KEPT: u32 = 1000;

/// Lifecycle hooks: deduplication, delivery counting.
impl Queue {
    /// Queue-level deduplication (`x-message-deduplication`): true when a message with the
    /// same `x-deduplication-header` is still in the queue (the caller drops the entry, which
    /// releases its stored record, if any). Otherwise the entry gets a copy of its message of
    /// its own, whose lifetime marks the key as held.
    #[cold]
    pub(super) fn duplicate(&self, i: &mut Inner, msg: &mut Arc<Message>) -> bool {
        let Some(key) = crate::broker::queue::lifecycle::dedup_key(msg) else {
            return false;
        };
        if i.dedup.contains(&key) {
            return true;
        }
        let own = crate::broker::queue::lifecycle::own_copy(msg);
        i.dedup.insert(key, &own);
        *msg = own;
        false
    }

    /// basic.get of a message never returned from a quorum queue: it carries
    /// `x-delivery-count: 0`, as RabbitMQ's quorum queues give it (consumers get no header until
    /// the first return).
    pub(super) fn first_delivery_count(&self, i: &mut Inner, entry: &mut QEntry) {
        if let Some(m) = crate::broker::queue::lifecycle::with_delivery_count(&entry.msg, 0) {
            let m = Arc::new(m);
            if self.life.deduplicate {
                if let Some(key) = crate::broker::queue::lifecycle::dedup_key(&m) {
                    i.dedup.insert(key, &m);
                }
            }
            entry.msg = m;
        }
    }

    /// A delivery came back (nack/reject with requeue, channel closed, consumer cancelled):
    /// count it where deliveries are counted. Returns the entry to put back, or pushes it to
    /// `over` when it has used up `x-delivery-limit`.
    pub(super) fn count_delivery(
        &self,
        i: &mut Inner,
        mut entry: QEntry,
        over: &mut Vec<QEntry>,
    ) -> Option<QEntry> {
        if !self.life.count_deliveries {
            return Some(entry);
        }
        entry.delivery_count = entry.delivery_count.saturating_add(1);
        if self
            .life
            .delivery_limit
            .is_some_and(|limit| entry.delivery_count as u64 > limit)
        {
            over.push(entry);
            return None;
        }
        // Kept across restarts, up to a bound: a message requeued forever (a quorum-style queue
        // without a limit) must not grow its segment's ack file forever.
        if entry.qid != 0 && entry.delivery_count <= RETURNS_KEPT {
            if let Some(s) = entry.msg.stored.get() {
                s.log.returned(entry.qid, s.segment, s.offset);
            }
        }
        if let Some(m) =
            crate::broker::queue::lifecycle::with_delivery_count(&entry.msg, entry.delivery_count)
        {
            let m = Arc::new(m);
            if self.life.deduplicate {
                if let Some(key) = crate::broker::queue::lifecycle::dedup_key(&m) {
                    i.dedup.insert(key, &m);
                }
            }
            entry.msg = m;
        }
        Some(entry)
    }
}
