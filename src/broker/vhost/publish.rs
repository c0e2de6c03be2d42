//! Publishing: the one place that routes, stores and enqueues a message, whichever way it came
//! in — AMQP basic.publish, the HTTP API's publish, dead-lettering, a delayed exchange releasing
//! what it held. Each entry point builds a `Publish` and reads the `Outcome`.
//!
//! The steps, in order:
//! 1. a delayed exchange with a positive `x-delay` holds the message (storing it when persistent
//!    and the exchange durable) and routes it when due, through this same function;
//! 2. a reply to a direct reply-to address goes straight to the requesting channel;
//! 3. routing (`exchange::route`): bindings, exchange-to-exchange, alternate exchange, CC/BCC,
//!    one copy per queue; the default exchange by queue name, remembered per publisher;
//! 4. a persistent message reaching durable queues is appended to the message log once for all
//!    of them (its confirm waits for the log's fdatasync past `Outcome::ticket`);
//! 5. each queue takes the same `Arc<Message>`; a stream queue appends it to its own log
//!    (`broker::stream`), stored whatever its delivery mode.

use super::VHost;
use crate::broker::args::str_bytes;
use crate::broker::exchange::{route, Dest};
use crate::broker::memory::MemoryMonitor;
use crate::broker::message::{Message, Properties};
use crate::broker::queue::dead_letter::{would_cycle, Reason};
use crate::broker::queue::{store_message, Enqueued, Queue};
use crate::broker::reply_to::REPLY_PREFIX;
use crate::error::{code, AmqpError, AmqpResult};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;
use std::sync::Arc;

/// One publish in this many is timed (`VHost::publish`).
const ROUTE_SAMPLE: u32 = 64;

/// Where a message comes from: what the publish path checks depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client (AMQP or the HTTP API): internal exchanges are refused.
    Client,
    /// Dead-lettered for `Reason`: the queues where it already died for a reason other than a
    /// rejection are left out (RabbitMQ's cycle rule).
    DeadLetter(Reason),
    /// Released by a delayed exchange when due.
    Delayed,
}

/// A message arriving at an exchange (named by `msg.exchange`).
#[derive(Debug)]
pub struct Publish {
    pub msg: Arc<Message>,
    /// Extra routing keys from the `CC` and `BCC` headers (`BCC` is already gone from `msg`).
    pub cc: Vec<Bytes>,
    pub mandatory: bool,
    pub origin: Origin,
}

/// What became of a publish.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Queues that took the message.
    pub queues: usize,
    /// A delayed exchange holds it, to be routed when due.
    pub held: bool,
    /// A full queue (`x-overflow: reject-publish`) refused it: a confirming publisher gets a nack.
    pub rejected: bool,
    /// The message-log position its publisher confirm waits for (0: none).
    pub ticket: u64,
    /// A queue it reached is over its flow-control mark: the publisher should pause until it
    /// drains (`Queue::wait_drained`).
    pub flow: Option<Arc<Queue>>,
    /// In a cluster: copies sent to queues on other nodes; the confirm waits for their answers.
    pub forwarded: Vec<crate::cluster::forward::Ticket>,
}

impl Outcome {
    /// Whether it went anywhere: a queue took or refused it, or a delayed exchange holds it.
    pub fn routed(&self) -> bool {
        self.queues > 0 || self.held || self.rejected
    }
}

/// A publisher's reusable routing state: buffers, so routing allocates nothing in the steady
/// state, and the queue the default exchange last routed its routing key to (publishers usually
/// send to one queue; this spares a hashed lookup per message). An AMQP channel keeps one; other
/// entry points use a fresh one.
#[derive(Debug, Default)]
pub struct RouteCache {
    out: Vec<Arc<Queue>>,
    scratch: Vec<Dest>,
    default_route: Option<(Bytes, Arc<Queue>)>,
}

impl Publish {
    /// A client's message: the extra routing keys of sender-selected distribution are read from
    /// its `CC` and `BCC` headers, and `BCC` is removed from what consumers will see.
    #[inline(always)]
    pub fn new(
        exchange: Bytes,
        routing_key: impl Into<crate::broker::message::Small>,
        mut properties: Properties,
        body: impl Into<crate::broker::message::Small>,
        memory: &'static MemoryMonitor,
        mandatory: bool,
    ) -> AmqpResult<Publish> {
        let cc = sender_selected(&mut properties)?;
        Ok(Publish {
            msg: Arc::new(Message::new(
                exchange,
                routing_key,
                properties,
                body,
                memory,
            )),
            cc,
            mandatory,
            origin: Origin::Client,
        })
    }

    /// The exchange's name, or 404 as RabbitMQ answers a name that is not UTF-8.
    pub fn exchange_name<'a>(&'a self, vhost: &VHost) -> AmqpResult<&'a str> {
        std::str::from_utf8(&self.msg.exchange).map_err(|_| {
            AmqpError::not_found(format!(
                "no exchange '{}' in vhost '{}'",
                String::from_utf8_lossy(&self.msg.exchange),
                vhost.name
            ))
        })
    }
}

impl VHost {
    /// Route, store and enqueue one message (see the module doc). Errors: the exchange does not
    /// exist (404) or is internal (403, for clients); nothing was enqueued then.
    pub fn publish(&self, p: &Publish, cache: &mut RouteCache) -> AmqpResult<Outcome> {
        let mut outcome = Outcome::default();
        self.publish_into(p, cache, &mut outcome)?;
        Ok(outcome)
    }

    /// `publish`, what became of the message written to `outcome` (which must be fresh: as
    /// `Outcome::default()` leaves it). The AMQP path's form: a caller that keeps its
    /// `Outcome` reads back what it needs in place, with no result moved through returns.
    ///
    /// One publish in `ROUTE_SAMPLE` per thread is timed into the `route` stage counter (a clock
    /// read per message would cost more than some of the steps it measures).
    pub fn publish_into(
        &self,
        p: &Publish,
        cache: &mut RouteCache,
        outcome: &mut Outcome,
    ) -> AmqpResult<()> {
        thread_local! {
            static COUNT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        }
        let timed = COUNT.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n % ROUTE_SAMPLE == 0
        });
        if !timed {
            return self.publish_untimed(p, cache, outcome);
        }
        let started = std::time::Instant::now();
        let r = self.publish_untimed(p, cache, outcome);
        crate::observe::stages::ROUTE.record(started, ROUTE_SAMPLE as u64);
        r
    }

    fn publish_untimed(
        &self,
        p: &Publish,
        cache: &mut RouteCache,
        outcome: &mut Outcome,
    ) -> AmqpResult<()> {
        let msg = &p.msg;
        if msg.exchange.is_empty() && p.cc.is_empty() && !matches!(p.origin, Origin::DeadLetter(_))
        {
            // The usual publish: to the queue this publisher's last one went to (the default
            // exchange holds nothing back, so no delay to look for). No list of queues and no
            // reference to the queue taken for it.
            if let Some((k, q)) = &cache.default_route {
                if k[..] == msg.routing_key[..] && !q.is_gone() && q.remote.is_none() {
                    self.default_exchange.stats.published(1);
                    let (ticket, stored) = store_message(msg, std::slice::from_ref(q));
                    outcome.ticket = ticket;
                    self.hand_to(q, msg, stored, outcome);
                    return Ok(());
                }
            }
        }
        let name = p.exchange_name(self)?;
        if p.origin != Origin::Delayed {
            if let Some(ticket) = self.delay_publish(name, msg, &p.cc)? {
                outcome.held = true;
                outcome.ticket = ticket;
                return Ok(());
            }
        }
        let mut out = std::mem::take(&mut cache.out);
        out.clear();
        if name.is_empty() {
            if msg.routing_key.starts_with(REPLY_PREFIX.as_bytes()) {
                let delivered = self.replies.deliver(&msg.routing_key, msg);
                cache.out = out;
                outcome.queues = delivered as usize;
                return Ok(());
            }
            self.route_default(p, cache, &mut out);
        } else {
            let e = match self.exchange(name) {
                Ok(e) => e,
                Err(err) => {
                    cache.out = out;
                    return Err(err);
                }
            };
            if e.internal && p.origin == Origin::Client {
                cache.out = out;
                return Err(AmqpError::access_refused(format!(
                    "cannot publish to internal exchange '{name}' in vhost '{}'",
                    self.name
                )));
            }
            route::route(
                &self.exchanges,
                &e,
                msg,
                &p.cc,
                &mut out,
                &mut cache.scratch,
            );
            e.stats.published(out.len());
        }
        if let Origin::DeadLetter(reason) = p.origin {
            // Dying again where it already died, with no rejection in between: a cycle.
            if reason != Reason::Rejected {
                out.retain(|q| !would_cycle(msg, &q.name));
            }
        }
        let (ticket, stored) = store_message(msg, &out);
        outcome.ticket = ticket;
        let mut remote: Vec<(&str, Vec<String>)> = Vec::new();
        for q in out.iter() {
            if let Some(home) = &q.remote {
                match remote.iter_mut().find(|(n, _)| *n == home.as_str()) {
                    Some((_, names)) => names.push(q.name.clone()),
                    None => remote.push((home.as_str(), vec![q.name.clone()])),
                }
            }
        }
        if !remote.is_empty() {
            self.forward(msg, remote, outcome);
        }
        for q in out.drain(..) {
            if q.remote.is_none() {
                self.hand_to(&q, msg, stored, outcome);
            }
        }
        cache.out = out;
        Ok(())
    }

    /// Give `msg` to `q`, a queue of this node the publish reached (`stored`: its record is in
    /// the message log), and note what became of it in `outcome`.
    fn hand_to(&self, q: &Arc<Queue>, msg: &Arc<Message>, stored: bool, outcome: &mut Outcome) {
        if let Some(r) = q.replica() {
            // A quorum queue in a cluster: its group takes it; the confirm waits for the
            // commit.
            outcome.queues += 1;
            outcome
                .forwarded
                .push(r.appender.send(self.forwarded(msg, &q.name)));
            return;
        }
        if let Some(s) = q.stream() {
            // A stream stores every message it takes, whatever its delivery mode; the confirm
            // waits for the later of the two positions (one log, one sequence).
            if !q.is_gone() {
                outcome.ticket = outcome.ticket.max(s.append(msg, self.clock.wall_ms()));
                outcome.queues += 1;
                q.stream_published();
            }
            return;
        }
        match q.enqueue(msg.clone(), stored) {
            Enqueued::Accepted => outcome.queues += 1,
            Enqueued::Rejected => outcome.rejected = true,
            Enqueued::Gone => {}
        }
        if outcome.flow.is_none() && q.overloaded() {
            outcome.flow = Some(q.clone());
        }
    }

    /// Send the copies for queues on other nodes to those nodes (a queue whose node is not known
    /// any more does not take its copy).
    #[cold]
    fn forward(&self, msg: &Arc<Message>, remote: Vec<(&str, Vec<String>)>, outcome: &mut Outcome) {
        let Some(c) = self.cluster.get() else {
            return;
        };
        for (node, queues) in remote {
            outcome.queues += queues.len();
            let f = c.forwarder(node);
            let mut m = self.forwarded(msg, "");
            m.queues = queues;
            outcome.forwarded.push(f.send(m));
        }
    }

    /// A message as it travels to another node or a queue's group.
    fn forwarded(&self, msg: &Message, queue: &str) -> crate::cluster::forward::Forwarded {
        crate::cluster::forward::Forwarded {
            vhost: self.name.clone(),
            queues: if queue.is_empty() {
                Vec::new()
            } else {
                vec![queue.to_owned()]
            },
            exchange: msg.exchange.clone(),
            routing_key: msg.routing_key.bytes(),
            properties: msg.properties.raw.bytes(),
            body: msg.body.bytes(),
        }
    }

    /// The default exchange: every queue is bound by its own name (and each CC key's).
    fn route_default(&self, p: &Publish, cache: &mut RouteCache, out: &mut Vec<Arc<Queue>>) {
        let key = &p.msg.routing_key;
        if p.cc.is_empty() {
            if let Some((k, q)) = &cache.default_route {
                if k[..] == key[..] && !q.is_gone() {
                    out.push(q.clone());
                    self.default_exchange.stats.published(1);
                    return;
                }
            }
        }
        for k in std::iter::once(&key[..]).chain(p.cc.iter().map(|k| &k[..])) {
            let name = std::str::from_utf8(k).unwrap_or("");
            if let Some(q) = self.queues.get(name) {
                out.push(q.clone());
            }
        }
        route::dedup(out);
        if p.cc.is_empty() && out.len() == 1 {
            // A copy: the key itself may be a slice of a socket's read buffer, which must not be
            // held on to.
            cache.default_route = Some((Bytes::copy_from_slice(key), out[0].clone()));
        }
        self.default_exchange.stats.published(out.len());
    }
}

fn bad_header() -> AmqpError {
    AmqpError::connection(code::SYNTAX_ERROR, "invalid content header")
}

/// The routing keys a message's `CC` header adds (a dead-lettered message without
/// `x-dead-letter-routing-key` is routed by all of its keys, as in RabbitMQ; `BCC` is gone by then).
pub fn cc_keys(properties: &Properties) -> Vec<Bytes> {
    if !has_header_key(properties, b"\x02CC") {
        return Vec::new();
    }
    let mut keys = Vec::new();
    if let Some(Some(headers)) = properties.decode().map(|p| p.headers().clone()) {
        add_keys(&headers, "CC", &mut keys);
    }
    keys
}

/// Cheap pre-check on the encoded header table: whether a key (length-prefixed) occurs in it.
fn has_header_key(properties: &Properties, tagged: &[u8]) -> bool {
    properties
        .headers_raw()
        .is_some_and(|raw| raw.windows(tagged.len()).any(|w| w == tagged))
}

/// Append the routing keys of header `name` (an array of strings) to `keys`.
fn add_keys(headers: &FieldTable, name: &str, keys: &mut Vec<Bytes>) {
    if let Some(AMQPValue::FieldArray(a)) = headers.inner().get(name) {
        keys.extend(
            a.as_slice()
                .iter()
                .filter_map(str_bytes)
                .map(Bytes::copy_from_slice),
        );
    }
}

/// Sender-selected distribution: routing keys from the `CC` and `BCC` headers (arrays of
/// strings), with `BCC` removed from the properties consumers will see.
/// The usual message has no header table at all: that check is inlined, the rest is not.
#[inline(always)]
fn sender_selected(properties: &mut Properties) -> AmqpResult<Vec<Bytes>> {
    if properties.headers_raw().is_none() {
        return Ok(Vec::new());
    }
    sender_selected_headers(properties)
}

#[inline(never)]
fn sender_selected_headers(properties: &mut Properties) -> AmqpResult<Vec<Bytes>> {
    if !has_header_key(properties, b"\x02CC") && !has_header_key(properties, b"\x03BCC") {
        return Ok(Vec::new());
    }
    let props = properties.decode().ok_or_else(bad_header)?;
    let Some(mut headers) = props.headers().clone() else {
        return Ok(Vec::new());
    };
    let mut keys = Vec::new();
    add_keys(&headers, "CC", &mut keys);
    add_keys(&headers, "BCC", &mut keys);
    if !headers.contains_key("BCC") {
        return Ok(keys);
    }
    let mut inner = headers.inner().clone();
    inner.remove("BCC");
    headers = inner.into();
    let props = props.with_headers(headers);
    *properties = Properties::encode(&props).ok_or_else(bad_header)?;
    Ok(keys)
}
