//! Delayed delivery for `x-delayed-message` exchanges: messages held until their `x-delay` has
//! passed, then routed by the exchange's `x-delayed-type`.
//!
//! One ordered map per vhost, keyed by (due time, arrival number): scheduling and releasing are
//! O(log n), the next due time is the first key, and a single timer task per vhost sleeps until
//! then (woken early when a message due sooner arrives). Nothing runs per message while it
//! waits, so a million delayed messages cost their memory and nothing else.
//!
//! Held messages are compacted into one buffer each (body, properties and names copied out of
//! the publisher's read buffer, which would otherwise stay pinned for as long as the delay).
//!
//! Storage: in memory only for now — delayed messages do not survive a restart, even on a
//! durable exchange. `DelayedStore` is the whole interface (`schedule`, `take_due`,
//! `forget_exchange`); persisting it means writing each scheduled entry to the store and
//! deleting it when released, and reloading the map at recovery.

use crate::broker::exchange::Exchange;
use crate::broker::message::{Message, Properties};
use amq_protocol::types::AMQPValue;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

/// The longest delay honoured, in ms (as the plugin: 2^32 - 1, about 49 days).
pub const MAX_DELAY_MS: u64 = u32::MAX as u64;

/// A message waiting for its due time.
#[derive(Debug)]
pub struct DelayedMessage {
    pub exchange: Weak<Exchange>,
    pub msg: Arc<Message>,
    /// Extra routing keys from CC/BCC.
    pub cc: Box<[Bytes]>,
    /// The delay it was published with (reported back negated in `x-delay`, as the plugin does).
    pub delay: i64,
}

#[derive(Debug, Default)]
struct Held {
    by_due: BTreeMap<(u64, u64), DelayedMessage>,
    next_seq: u64,
}

#[derive(Debug, Default)]
pub struct DelayedStore {
    held: Mutex<Held>,
    wake: Notify,
    timer_started: AtomicBool,
    /// How many `x-delayed-message` exchanges exist: publishes look for `x-delay` only then.
    pub exchanges: AtomicUsize,
}

impl DelayedStore {
    /// Hold `m` until `due` (`now_ms` clock). Returns true when the timer task must be started.
    pub fn schedule(&self, due: u64, m: DelayedMessage) -> bool {
        let earliest = {
            let mut h = self.held.lock();
            let seq = h.next_seq;
            h.next_seq += 1;
            let earliest = h.by_due.first_key_value().is_none_or(|(k, _)| due < k.0);
            h.by_due.insert((due, seq), m);
            earliest
        };
        if earliest {
            self.wake.notify_one();
        }
        !self.timer_started.swap(true, Ordering::Relaxed)
    }

    /// The due time of the first held message.
    pub fn next_due(&self) -> Option<u64> {
        self.held.lock().by_due.first_key_value().map(|(k, _)| k.0)
    }

    /// Take up to `max` messages due at `now` or earlier, in due order.
    pub fn take_due(&self, now: u64, max: usize) -> Vec<DelayedMessage> {
        let mut h = self.held.lock();
        let mut out = Vec::new();
        while out.len() < max {
            match h.by_due.first_entry() {
                Some(e) if e.key().0 <= now => out.push(e.remove()),
                _ => break,
            }
        }
        out
    }

    /// Drop the messages held for a deleted exchange.
    pub fn forget_exchange(&self, e: &Arc<Exchange>) {
        let gone = Arc::downgrade(e);
        self.held
            .lock()
            .by_due
            .retain(|_, m| !Weak::ptr_eq(&m.exchange, &gone));
    }

    pub fn len(&self) -> usize {
        self.held.lock().by_due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until a message due sooner than the current first one is scheduled.
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

/// The `x-delay` of a message, if it has a positive one of an integer type.
pub fn delay_of(msg: &Message) -> Option<i64> {
    match crate::broker::lifecycle::header(msg, "x-delay")? {
        v @ (AMQPValue::ShortShortInt(_)
        | AMQPValue::ShortShortUInt(_)
        | AMQPValue::ShortInt(_)
        | AMQPValue::ShortUInt(_)
        | AMQPValue::LongInt(_)
        | AMQPValue::LongUInt(_)
        | AMQPValue::LongLongInt(_)) => crate::broker::args::as_int(&v),
        _ => None,
    }
}

/// A copy of `msg` in one allocation of its own (see the module doc).
pub fn compact(msg: &Message) -> Option<Message> {
    let (ex, rk, raw, body) = (
        &msg.exchange,
        &msg.routing_key,
        &msg.properties.raw,
        &msg.body,
    );
    let mut buf = Vec::with_capacity(ex.len() + rk.len() + raw.len() + body.len());
    for part in [ex, rk, raw, body] {
        buf.extend_from_slice(part);
    }
    let all = Bytes::from(buf);
    let (a, b, c) = (
        ex.len(),
        ex.len() + rk.len(),
        ex.len() + rk.len() + raw.len(),
    );
    let properties = Properties::parse(all.slice(b..c)).ok()?;
    Some(Message::new(
        all.slice(..a),
        all.slice(a..b),
        properties,
        all.slice(c..),
        msg.memory().clone(),
    ))
}

/// The message as released: `x-delay` set to minus its delay, as the plugin reports it, so a
/// consumer can tell it was delayed and a second delayed exchange does not hold it again.
pub fn released(msg: &Message, delay: i64) -> Option<Message> {
    let props = msg.properties.decode()?;
    let mut headers = props.headers().clone().unwrap_or_default();
    let v = match i32::try_from(-delay) {
        Ok(n) => AMQPValue::LongInt(n),
        Err(_) => AMQPValue::LongLongInt(-delay),
    };
    headers.insert("x-delay".into(), v);
    let properties = Properties::encode(&props.with_headers(headers))?;
    Some(Message::new(
        msg.exchange.clone(),
        msg.routing_key.clone(),
        properties,
        msg.body.clone(),
        msg.memory().clone(),
    ))
}
