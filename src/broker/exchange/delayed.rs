//! Delayed delivery for `x-delayed-message` exchanges: messages held until their `x-delay` has
//! passed, then routed by the exchange's `x-delayed-type`.
//!
//! One ordered map per vhost, keyed by (due time, arrival number): scheduling and releasing are
//! O(log n), the next due time is the first key, and a single timer thread per vhost (started
//! with the first delayed message) sleeps until then, woken early when a message due sooner
//! arrives. A thread rather than a tokio task: release is synchronous work, and a thread that
//! slept is woken by the OS without queueing behind busy connection tasks. Nothing runs per message while it
//! waits, so a million delayed messages cost their memory and nothing else.
//!
//! Held messages are compacted into one buffer each (routing key, properties and body copied out
//! of the publisher's read buffer, which would otherwise stay pinned for as long as the delay),
//! and the `Message` is rebuilt when it is due: about 200 bytes per held message beyond its
//! body and properties.
//!
//! Storage: a persistent message held by a durable delayed exchange is written to the message
//! log (under the vhost's reserved "delayed" id) before it is confirmed, released from the log
//! when it is routed or dropped, and scheduled again at start from its publish time and `x-delay`
//! (`VHost::recover_delayed`). Transient messages, and any held by a non-durable exchange, are
//! kept in memory only, as RabbitMQ's plugin does.
//!
//! Release goes through `VHost::publish` like any other message (origin `Delayed`).

use crate::broker::clock::Clock;
use crate::broker::exchange::Exchange;
use crate::broker::memory::MemoryMonitor;
use crate::broker::message::{Message, Properties};
use crate::broker::vhost::{Origin, Publish, RouteCache, VHost};
use crate::error::AmqpResult;
use crate::store::{Recovered, Stored};
use amq_protocol::types::AMQPValue;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tracing::{error, warn};

/// The longest delay honoured, in ms (as the plugin: 2^32 - 1, about 49 days).
pub const MAX_DELAY_MS: u64 = u32::MAX as u64;

/// A message waiting for its due time, kept compact: its routing key, raw properties and body
/// in one buffer, and nothing else of the `Message` (rebuilt on release).
#[derive(Debug)]
pub struct DelayedMessage {
    pub exchange: Weak<Exchange>,
    data: Bytes,
    key_len: u32,
    props_len: u32,
    /// The delay it was published with (reported back negated in `x-delay`, as the plugin does).
    pub delay: i64,
    /// Extra routing keys from CC/BCC.
    pub cc: Box<[Bytes]>,
    memory: &'static MemoryMonitor,
    /// Its record in the message log (a persistent message held by a durable exchange): released
    /// when the held message goes — routed when due, or dropped with its exchange.
    pub stored: Option<(Stored, u32)>,
}

impl Drop for DelayedMessage {
    fn drop(&mut self) {
        self.memory.sub(self.data.len() as u64);
        if let Some((s, id)) = &self.stored {
            s.log.release(*id, s.segment, s.offset);
        }
    }
}

impl DelayedMessage {
    /// Hold a copy of `msg` (see the module doc), counted in the broker's message memory.
    pub fn new(exchange: &Arc<Exchange>, msg: &Message, delay: i64, cc: &[Bytes]) -> Self {
        let (rk, raw, body) = (&msg.routing_key[..], &msg.properties.raw[..], &msg.body[..]);
        let mut buf = Vec::with_capacity(rk.len() + raw.len() + body.len());
        for part in [rk, raw, body] {
            buf.extend_from_slice(part);
        }
        let memory = msg.memory();
        memory.add(buf.len() as u64);
        DelayedMessage {
            exchange: Arc::downgrade(exchange),
            data: Bytes::from(buf),
            key_len: rk.len() as u32,
            props_len: raw.len() as u32,
            delay,
            cc: cc.into(),
            memory,
            stored: None,
        }
    }

    /// The message as released to `exchange_name`: `x-delay` set to minus its delay, as the
    /// plugin reports it (so a consumer can tell it was delayed, and a second delayed exchange
    /// does not hold it again).
    pub fn release(&self, exchange_name: &str) -> Option<Message> {
        let (k, p) = (self.key_len as usize, self.props_len as usize);
        let raw = self.data.slice(k..k + p);
        let props = Properties::parse(raw).ok()?.decode()?;
        let mut headers = props.headers().clone().unwrap_or_default();
        let v = match i32::try_from(-self.delay) {
            Ok(n) => AMQPValue::LongInt(n),
            Err(_) => AMQPValue::LongLongInt(-self.delay),
        };
        headers.insert("x-delay".into(), v);
        let properties = Properties::encode(&props.with_headers(headers))?;
        Some(Message::new(
            Bytes::copy_from_slice(exchange_name.as_bytes()),
            self.data.slice(..k),
            properties,
            self.data.slice(k + p..),
            self.memory,
        ))
    }
}

#[derive(Debug, Default)]
struct Held {
    by_due: BTreeMap<(u64, u64), DelayedMessage>,
    next_seq: u64,
}

#[derive(Debug)]
pub struct DelayedStore {
    held: Mutex<Held>,
    /// The broker's clock: due times are on its `now_ms`.
    clock: Arc<Clock>,
    /// Signalled when a message due sooner than all others arrives.
    wake: parking_lot::Condvar,
    timer_started: AtomicBool,
    /// How many `x-delayed-message` exchanges exist: publishes look for `x-delay` only then.
    pub exchanges: AtomicUsize,
    /// How late messages were taken out for release, by `LATENESS_BUCKETS_MS`.
    lateness: [AtomicU64; 8],
}

/// Upper bounds (exclusive, ms) of the lateness histogram's buckets; the last is open.
pub const LATENESS_BUCKETS_MS: [u64; 8] = [1, 2, 5, 10, 20, 50, 100, u64::MAX];

impl DelayedStore {
    pub fn new(clock: Arc<Clock>) -> Self {
        DelayedStore {
            held: Default::default(),
            clock,
            wake: Default::default(),
            timer_started: Default::default(),
            exchanges: Default::default(),
            lateness: Default::default(),
        }
    }

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
                Some(e) if e.key().0 <= now => {
                    let late = now - e.key().0;
                    let b = LATENESS_BUCKETS_MS.iter().position(|&ub| late < ub);
                    self.lateness[b.unwrap_or(7)].fetch_add(1, Ordering::Relaxed);
                    out.push(e.remove());
                }
                _ => break,
            }
        }
        out
    }

    /// How many messages were released how late after their due time (ms granularity), by
    /// `LATENESS_BUCKETS_MS`.
    pub fn lateness_histogram(&self) -> [u64; 8] {
        std::array::from_fn(|i| self.lateness[i].load(Ordering::Relaxed))
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

    /// Block the calling (timer) thread until the first message is due at `now_ms()` (or for
    /// at most `idle` when nothing is held), or until one due sooner is scheduled. Returns the
    /// current time when something is due, None when it woke for another reason.
    pub fn wait_due(&self, idle: std::time::Duration) -> Option<u64> {
        let mut h = self.held.lock();
        let now = self.clock.now_ms();
        let wait = match h.by_due.first_key_value() {
            Some((k, _)) if k.0 <= now => return Some(now),
            Some((k, _)) => std::time::Duration::from_millis(k.0 - now).min(idle),
            None => idle,
        };
        self.wake.wait_for(&mut h, wait);
        None
    }
}

/// The `x-delay` of a message, if it has a positive one of an integer type.
pub fn delay_of(msg: &Message) -> Option<i64> {
    match crate::broker::queue::lifecycle::header(msg, "x-delay")? {
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

/// Delayed delivery (`x-delayed-message` exchanges): the vhost side.
impl VHost {
    /// An exchange went away: forget what its plugin type held (delayed messages).
    pub(crate) fn forget_plugin_state(&self, e: &Arc<Exchange>) {
        if matches!(
            e.plugin,
            Some(crate::broker::exchange::plugins::Plugin::Delayed)
        ) {
            self.delayed.exchanges.fetch_sub(1, Ordering::Relaxed);
            self.delayed.forget_exchange(e);
        }
    }

    /// A publish to a delayed exchange with a positive `x-delay`: hold the message and return
    /// the message-log position its confirm waits for (0: none; the publish is complete, never
    /// returned). None: not delayed, route it now. Costs one atomic load while no delayed
    /// exchange exists.
    pub fn delay_publish(
        &self,
        exchange: &str,
        msg: &Message,
        cc: &[bytes::Bytes],
    ) -> AmqpResult<Option<u64>> {
        use {delay_of, DelayedMessage, MAX_DELAY_MS};
        if exchange.is_empty() || self.delayed.exchanges.load(Ordering::Relaxed) == 0 {
            return Ok(None);
        }
        let Some(e) = self.exchanges.get(exchange).map(|e| e.clone()) else {
            return Ok(None); // routing reports the missing exchange
        };
        if !matches!(
            e.plugin,
            Some(crate::broker::exchange::plugins::Plugin::Delayed)
        ) || e.internal
        {
            return Ok(None);
        }
        let Some(delay) = delay_of(msg).filter(|&d| d > 0) else {
            return Ok(None);
        };
        let due = self
            .clock
            .now_ms()
            .saturating_add((delay as u64).min(MAX_DELAY_MS));
        let mut held = DelayedMessage::new(&e, msg, delay, cc);
        let mut ticket = 0;
        if e.durable && msg.persistent() {
            if let Some((log, id)) = self.delayed_log() {
                let (stored, t) =
                    crate::broker::queue::append_message(&log, &[id], msg, self.clock.wall_ms());
                held.stored = Some((stored, id));
                ticket = t;
            }
        }
        self.hold(due, held);
        Ok(Some(ticket))
    }

    /// The message log and the id this vhost's held delayed messages are stored under.
    pub(crate) fn delayed_log(&self) -> Option<(Arc<crate::store::MessageLog>, u32)> {
        let st = self.store.as_ref()?;
        let id = match self.delayed_id.get() {
            Some(id) => *id,
            None => match st.named_id(&format!("delayed:{}", self.name)) {
                Ok(id) => *self.delayed_id.get_or_init(|| id),
                Err(e) => {
                    warn!(vhost = %self.name, "delayed messages kept in memory only: {e}");
                    return None;
                }
            },
        };
        Some((st.messages().clone(), id))
    }

    /// Hold a delayed message until `due`, starting the timer thread with the first one.
    pub(crate) fn hold(&self, due: u64, held: DelayedMessage) {
        let start = self.delayed.schedule(due, held);
        if start {
            let (store, me) = (self.delayed.clone(), self.me.clone());
            let spawned = std::thread::Builder::new()
                .name("warren-delayed".into())
                .spawn(move || delayed_timer(store, me));
            if let Err(err) = spawned {
                error!("cannot start the delayed-message timer thread: {err}");
            }
        }
    }

    /// Schedule again the delayed messages stored for durable delayed exchanges (at start), due
    /// at their publish time plus their `x-delay`: time spent down counts.
    pub(crate) fn recover_delayed(&self, messages: &mut Recovered) {
        use {delay_of, DelayedMessage, MAX_DELAY_MS};
        let Some((log, id)) = self.delayed_log() else {
            return;
        };
        let Some(found) = messages.queues.remove(&id) else {
            return;
        };
        let Some(memory) = self.memory.get().cloned() else {
            return;
        };
        let (now_wall, now) = (self.clock.wall_ms(), self.clock.now_ms());
        let mut k = 0;
        while k < found.len() {
            let seg = found[k].segment;
            let end = (k..found.len())
                .find(|&j| found[j].segment != seg)
                .unwrap_or(found.len());
            let offsets: Vec<u32> = found[k..end].iter().map(|m| m.offset).collect();
            for (m, r) in found[k..end].iter().zip(log.read(seg, &offsets)) {
                let claim = Stored {
                    log: log.clone(),
                    segment: m.segment,
                    offset: m.offset,
                };
                let rec = match r {
                    Ok(rec) => rec,
                    Err(e) => {
                        error!("{e}: delayed message dropped");
                        log.release(id, m.segment, m.offset);
                        continue;
                    }
                };
                let ex = std::str::from_utf8(&rec.exchange).unwrap_or("");
                let exchange = self.exchanges.get(ex).map(|e| e.clone()).filter(|e| {
                    matches!(
                        e.plugin,
                        Some(crate::broker::exchange::plugins::Plugin::Delayed)
                    )
                });
                let (Some(e), Some(msg)) =
                    (exchange, crate::broker::queue::paging::revive(rec, memory))
                else {
                    // Its exchange is gone: so is the message, as if it had been deleted.
                    log.release(id, m.segment, m.offset);
                    continue;
                };
                let delay = delay_of(&msg).unwrap_or(0).max(0);
                let due_wall = m
                    .published_at
                    .saturating_add((delay as u64).min(MAX_DELAY_MS));
                let mut held = DelayedMessage::new(&e, &msg, delay, &[]);
                held.stored = Some((claim, id));
                self.hold(now.saturating_add(due_wall.saturating_sub(now_wall)), held);
            }
            k = end;
        }
    }

    /// Route the delayed messages that are due, through the exchange as any publish.
    pub fn release_delayed(&self, now: u64) {
        let mut cache = RouteCache::default();
        loop {
            let due = self.delayed.take_due(now.max(self.clock.now_ms()), 1024);
            if due.is_empty() {
                return;
            }
            for d in due {
                // Dropped if its exchange was deleted (and perhaps declared anew) meanwhile.
                let Some(e) = d.exchange.upgrade() else {
                    continue;
                };
                if !self.exchange(&e.name).is_ok_and(|x| Arc::ptr_eq(&x, &e)) {
                    continue;
                }
                let Some(msg) = d.release(&e.name) else {
                    continue; // properties were checked on publish: cannot happen
                };
                let p = Publish {
                    msg: Arc::new(msg),
                    cc: d.cc.to_vec(),
                    mandatory: false,
                    origin: Origin::Delayed,
                };
                // Persistent messages released to durable queues are stored as any publish.
                if let Err(err) = self.publish(&p, &mut cache) {
                    warn!(exchange = %e.name, "delayed message dropped: {}", err.text);
                }
            }
        }
    }
}

/// The one timer of a vhost's delayed messages: sleeps until the first is due (or until one due
/// sooner arrives), releases what is due, repeats; ends with the vhost.
fn delayed_timer(store: Arc<DelayedStore>, vhost: std::sync::Weak<VHost>) {
    loop {
        if let Some(now) = store.wait_due(std::time::Duration::from_secs(1)) {
            let Some(v) = vhost.upgrade() else {
                return;
            };
            v.release_delayed(now);
        } else if vhost.strong_count() == 0 {
            return;
        }
    }
}
