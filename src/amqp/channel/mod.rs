//! A channel: publish assembly, consumers, delivery tags and unacked messages, prefetch,
//! publisher confirms and transactions, and the one dispatch from method to handler.
//!
//! The `Channel` is owned by its connection's task. The part queues need when they dispatch from
//! other tasks (delivery tags, the unacked list, channel-wide prefetch, the outbox) lives in
//! `ChannelShared`, which is the `ConsumerSink` of every consumer on the channel.

mod ack_timeout;
mod consume;
mod content;
use content::check_publish;
mod delivery;
mod methods;
pub mod replicated;

use crate::amqp::codec::{self, Method};
use crate::amqp::outbox::Outbox;
use crate::auth::grants::{Perm, Resource};
use crate::broker::message::{Message, Properties};
use crate::broker::queue::{cancel_consumers, Consumer, ConsumerSink, QEntry, Queue};
use crate::broker::vhost::{generate_consumer_tag, ExchangeDeclare, QueueDeclare, VHost};
use crate::error::{code, AmqpError, AmqpResult};
use amq_protocol::protocol::{basic, channel, confirm, exchange, queue, tx, AMQPClass};
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};
use content::Publishing;
pub use delivery::ChannelShared;
use delivery::{DeliveryState, Settle, Unacked};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

/// A publisher confirm not sent yet: it waits for the message log up to `ticket`, and for the
/// nodes its message was forwarded to.
#[derive(Debug)]
struct PendingConfirm {
    seq: u64,
    ticket: u64,
    nack: bool,
    forwarded: Vec<crate::cluster::forward::Ticket>,
}

#[derive(Debug, Default)]
struct TxBuffer {
    publishes: Vec<crate::broker::vhost::Publish>,
    settles: Vec<(Vec<Unacked>, Settle)>,
}

/// What the connection must do after a method.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    /// The channel is finished (close-ok sent or received): remove it.
    Remove,
}

/// Per-connection context a channel needs.
pub struct Ctx<'a> {
    pub vhost: &'a Arc<VHost>,
    /// The authenticated user (checked against the user-id property of publishes).
    pub user: &'a str,
    /// The user's configure / write / read permissions on the vhost.
    pub grants: &'a mut crate::auth::grants::Grants,
    pub memory: &'static crate::broker::memory::MemoryMonitor,
    pub conn_id: u64,
    pub max_message_size: u64,
    pub exclusive_queues: &'a mut Vec<Weak<Queue>>,
    /// This node's cluster, if it is in one: definition changes are then deferred.
    pub cluster: Option<&'a Arc<crate::cluster::node::Cluster>>,
    /// Where a channel leaves the work the connection must finish before reading on.
    pub deferred: &'a mut Option<replicated::Deferred>,
}

impl Ctx<'_> {
    /// RabbitMQ's resource permission check: 403 ACCESS_REFUSED, closing the channel.
    pub fn allow(&mut self, perm: Perm, kind: Resource, name: &str) -> AmqpResult<()> {
        self.grants.check(perm, kind, name).map_err(|why| {
            tracing::info!("{why}");
            AmqpError::access_refused(why)
        })
    }

    /// RabbitMQ's topic permission check of a routing key published to (`Perm::Write`) or a
    /// binding key bound from (`Perm::Read`) `exchange`, if it is a topic exchange: 403
    /// ACCESS_REFUSED, closing the channel. Without topic permissions, nothing is looked up.
    /// Inline: every publish asks, and nearly always the user has no topic permission at all.
    #[inline]
    pub fn allow_topic(&mut self, perm: Perm, exchange: &[u8], key: &[u8]) -> AmqpResult<()> {
        if !self.grants.has_topic_permissions() {
            return Ok(());
        }
        self.check_topic(perm, exchange, key)
    }

    #[cold]
    fn check_topic(&mut self, perm: Perm, exchange: &[u8], key: &[u8]) -> AmqpResult<()> {
        let exchange = String::from_utf8_lossy(exchange);
        let key = String::from_utf8_lossy(key);
        let v = self.vhost;
        let is_topic = || {
            v.exchange(&exchange)
                .is_ok_and(|e| e.kind == crate::broker::exchange::ExchangeKind::Topic)
        };
        self.grants
            .check_topic(perm, &exchange, &key, is_topic)
            .map_err(|why| {
                tracing::info!("{why}");
                AmqpError::access_refused(why)
            })
    }
}

#[derive(Debug)]
pub struct Channel {
    shared: Arc<ChannelShared>,
    /// We sent channel.close and wait for close-ok; everything else is dropped meanwhile.
    closing: bool,
    publishing: Publishing,
    consumers: HashMap<String, (Arc<Consumer>, Arc<Queue>)>,
    prefetch: u32,
    confirm: bool,
    publish_seq: u64,
    confirmed_upto: u64,
    confirm_ready: u64,
    /// Confirms that wait for the message log: (publish seq, log position, nack). A stored
    /// message is confirmed once the log is synced past its position; later confirms and nacks
    /// wait behind it so that `multiple` acks stay truthful.
    pending_confirms: VecDeque<PendingConfirm>,
    /// A tx.commit whose publishes wait for the log to reach this position.
    commit_wait: Option<u64>,
    tx: Option<TxBuffer>,
    current_queue: Option<String>,
    /// Routing buffers and the default exchange's last route, reused for every publish.
    routes: crate::broker::vhost::RouteCache,
    /// A queue this channel published to that is over its flow-control mark.
    flow: Option<Arc<Queue>>,
    /// This channel's direct reply-to token, once it consumes from amq.rabbitmq.reply-to.
    reply_token: Option<String>,
    /// Its place under its user's `max-channels`, given back when the channel goes.
    user_slot: Option<crate::auth::limits::Held>,
}

fn sstr(s: &str) -> ShortString {
    ShortString::try_new(s).unwrap_or_else(|_| ShortString::from(""))
}

impl Channel {
    pub fn new(id: u16, outbox: Arc<Outbox>, frame_max: u32, cancel_notify: bool) -> Self {
        Channel {
            shared: Arc::new(ChannelShared {
                id,
                outbox,
                open: AtomicBool::new(true),
                state: Mutex::new(DeliveryState::default()),
                global_prefetch: AtomicU32::new(0),
                consumer_unacked: AtomicU32::new(0),
                frame_max,
                cancel_notify,
                reply_tag: Mutex::new(None),
                ack: Default::default(),
                obs: Arc::new(crate::observe::ChannelObs::new(id)),
            }),
            closing: false,
            publishing: Publishing::default(),
            consumers: HashMap::new(),
            prefetch: 0,
            confirm: false,
            publish_seq: 0,
            confirmed_upto: 0,
            confirm_ready: 0,
            pending_confirms: VecDeque::new(),
            commit_wait: None,
            tx: None,
            current_queue: None,
            routes: Default::default(),
            flow: None,
            reply_token: None,
            user_slot: None,
        }
    }

    /// Hold `slot` (a place under the user's `max-channels`) while the channel lives.
    pub fn hold(&mut self, slot: crate::auth::limits::Held) {
        self.user_slot = Some(slot);
    }

    pub fn id(&self) -> u16 {
        self.shared.id
    }

    /// What management sees of this channel.
    pub fn obs(&self) -> &Arc<crate::observe::ChannelObs> {
        &self.shared.obs
    }

    fn send(&self, m: AMQPClass) {
        self.shared.send(m);
    }

    /// Close the channel from our side after a channel-level error.
    pub fn close_with(&mut self, ctx: &mut Ctx, e: &crate::error::Exception) {
        self.cleanup(ctx);
        self.send(AMQPClass::Channel(channel::AMQPMethod::Close(
            channel::Close {
                reply_code: e.code,
                reply_text: sstr(&e.reply_text()),
                class_id: e.class_id,
                method_id: e.method_id,
            },
        )));
        self.closing = true;
    }

    /// A publish the broker could not take: acks before it go out first, then its nack.
    fn nack_publish(&mut self, seq: u64) {
        self.confirm_ready = seq;
        if !self.pending_confirms.is_empty() {
            self.pending_confirms.push_back(PendingConfirm {
                seq,
                ticket: 0,
                nack: true,
                forwarded: Vec::new(),
            });
            return;
        }
        self.ack_upto(seq - 1);
        self.send_nack(seq);
    }

    fn send_nack(&mut self, seq: u64) {
        self.shared
            .outbox
            .with(|b| codec::encode_confirm(b, self.shared.id, false, seq, false));
        self.confirmed_upto = seq;
        self.note_unconfirmed();
    }

    /// Tell management how many publishes await their confirm.
    fn note_unconfirmed(&self) {
        let n = self.publish_seq.saturating_sub(self.confirmed_upto);
        self.shared
            .obs
            .stats
            .unconfirmed
            .store(n.min(u32::MAX as u64) as u32, Ordering::Relaxed);
    }

    /// One basic.ack for everything up to `tag` not yet confirmed (multiple when it covers more).
    fn ack_upto(&mut self, tag: u64) {
        if tag > self.confirmed_upto {
            let multiple = tag - self.confirmed_upto > 1;
            crate::observe::bump(&self.shared.obs.stats.confirm, tag - self.confirmed_upto);
            self.shared
                .outbox
                .with(|b| codec::encode_confirm(b, self.shared.id, true, tag, multiple));
            self.confirmed_upto = tag;
            self.note_unconfirmed();
        }
    }

    /// A publish in confirm mode was handled; `ticket` is the log position its message waits
    /// for (0: none).
    fn publish_done(&mut self, ticket: u64, forwarded: Vec<crate::cluster::forward::Ticket>) {
        self.confirm_ready = self.publish_seq;
        if ticket > 0 || !forwarded.is_empty() {
            self.pending_confirms.push_back(PendingConfirm {
                seq: self.publish_seq,
                ticket,
                nack: false,
                forwarded,
            });
        }
    }

    /// Send the publisher confirms (and the tx.commit-ok) that became ready, now that the message
    /// log is durable up to `synced`.
    pub fn flush_confirms(&mut self, synced: u64) {
        while let Some(p) = self.pending_confirms.front() {
            if p.ticket > synced || !p.forwarded.iter().all(|t| t.resolved()) {
                break;
            }
            let p = self.pending_confirms.pop_front().expect("front exists");
            // Every node that was sent a copy must have taken it (all are asked: each
            // failure is told once).
            let refused = p.forwarded.iter().filter(|t| !t.took()).count();
            if p.nack || refused > 0 {
                self.ack_upto(p.seq - 1);
                self.send_nack(p.seq);
            }
        }
        let limit = self
            .pending_confirms
            .front()
            .map_or(self.confirm_ready, |p| p.seq - 1);
        self.ack_upto(limit.min(self.confirm_ready));
        if self.commit_wait.is_some_and(|t| t <= synced) {
            self.commit_wait = None;
            self.send(AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
        }
    }

    /// Whether confirms or a commit wait for the message log.
    pub fn awaits_log(&self) -> bool {
        !self.pending_confirms.is_empty() || self.commit_wait.is_some()
    }

    /// Whether confirms wait for other nodes (copies forwarded to their queues).
    pub fn awaits_nodes(&self) -> bool {
        self.pending_confirms
            .iter()
            .any(|p| !p.forwarded.is_empty())
    }

    /// Whether a tx.commit-ok waits for the log (nothing else on the connection may go first).
    pub fn committing(&self) -> bool {
        self.commit_wait.is_some()
    }

    /// Bytes of a message body received so far and not yet complete.
    /// A queue that asks this publisher to pause (flow control), if any.
    pub fn take_flow(&mut self) -> Option<Arc<Queue>> {
        self.flow.take()
    }

    pub fn on_method(
        &mut self,
        ctx: &mut Ctx,
        class_id: u16,
        method_id: u16,
        m: Method,
    ) -> AmqpResult<After> {
        if self.closing {
            return Ok(match m {
                Method::Other(c) => match *c {
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => After::Remove,
                    // Both sides closed at once: answer, and the channel is gone (a late
                    // close-ok for our close is ignored by the connection).
                    AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                        self.send(AMQPClass::Channel(channel::AMQPMethod::CloseOk(
                            channel::CloseOk {},
                        )));
                        After::Remove
                    }
                    _ => After::Continue,
                },
                _ => After::Continue,
            });
        }
        if !self.publishing.is_idle() {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!(
                    "expected content frame for basic.publish on channel {}, got a method frame",
                    self.id()
                ),
            )
            .at(class_id, method_id));
        }
        self.dispatch(ctx, m).map_err(|e| e.at(class_id, method_id))
    }

    fn dispatch(&mut self, ctx: &mut Ctx, m: Method) -> AmqpResult<After> {
        let c = match m {
            Method::Publish {
                exchange,
                routing_key,
                mandatory,
                immediate,
            } => {
                check_publish(ctx, &exchange, immediate)?;
                self.publishing.start(exchange, routing_key, mandatory);
                return Ok(After::Continue);
            }
            Method::Ack {
                delivery_tag,
                multiple,
            } => {
                self.settle(delivery_tag, multiple, Settle::Ack)?;
                return Ok(After::Continue);
            }
            Method::Other(c) => *c,
        };
        use AMQPClass as C;
        match c {
            C::Channel(channel::AMQPMethod::Close(_)) => {
                self.cleanup(ctx);
                self.send(C::Channel(channel::AMQPMethod::CloseOk(
                    channel::CloseOk {},
                )));
                return Ok(After::Remove);
            }
            C::Channel(channel::AMQPMethod::CloseOk(_)) => {}
            C::Channel(channel::AMQPMethod::Flow(f)) => {
                if !f.active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                self.send(C::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                    active: true,
                })));
            }
            C::Channel(channel::AMQPMethod::Open(_)) => {
                return Err(AmqpError::connection(
                    code::CHANNEL_ERROR,
                    "second 'channel.open' seen",
                ))
            }
            C::Access(amq_protocol::protocol::access::AMQPMethod::Request(_)) => {
                self.send(C::Access(
                    amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    ),
                ));
            }
            C::Exchange(m) => self.on_exchange(ctx, m)?,
            C::Queue(m) => self.on_queue(ctx, m)?,
            C::Basic(m) => self.on_basic(ctx, m)?,
            C::Confirm(confirm::AMQPMethod::Select(s)) => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                self.confirm = true;
                self.shared
                    .obs
                    .stats
                    .confirm_mode
                    .store(true, Ordering::Relaxed);
                if !s.nowait {
                    self.send(C::Confirm(confirm::AMQPMethod::SelectOk(
                        confirm::SelectOk {},
                    )));
                }
            }
            C::Tx(m) => self.on_tx(ctx, m)?,
            other => {
                return Err(AmqpError::connection(
                    code::COMMAND_INVALID,
                    format!(
                        "method class {} id {} is not valid from a client on channel {}",
                        other.get_amqp_class_id(),
                        other.get_amqp_method_id(),
                        self.id()
                    ),
                ))
            }
        }
        Ok(After::Continue)
    }

    /// The channel is going away: consumers detach, unacked deliveries return to their queues.
    pub fn cleanup(&mut self, ctx: &mut Ctx) {
        self.shared.open.store(false, Ordering::Relaxed);
        if let Some(token) = self.reply_token.take() {
            ctx.vhost.replies.unregister(&token);
        }
        self.publishing.reset();
        self.shared.obs.consumers_cleared();
        for (_, (c, q)) in self.consumers.drain() {
            if q.remove_consumer(&c) {
                cancel_consumers(ctx.vhost.remove_queue(&q).1);
            }
        }
        let mut back: Vec<Unacked> = self.shared.take_unacked();
        if let Some(tx) = self.tx.take() {
            for (entries, _) in tx.settles {
                back.extend(entries);
            }
        }
        self.shared.consumer_unacked.store(0, Ordering::Relaxed);
        self.apply_settle(back, Settle::Requeue);
    }
}
