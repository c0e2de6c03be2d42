//! A channel: publish assembly, consumers, delivery tags and unacked messages, prefetch,
//! publisher confirms and transactions, and the one dispatch from method to handler.
//!
//! The `Channel` is owned by its connection's task. The part queues need when they dispatch from
//! other tasks (delivery tags, the unacked list, channel-wide prefetch, the outbox) lives in
//! `ChannelShared`, which is the `ConsumerSink` of every consumer on the channel.

use crate::amqp::codec::{self, Method};
use crate::amqp::outbox::Outbox;
use crate::broker::exchange::Dest;
use crate::broker::message::{Message, Properties};
use crate::broker::queue::{Consumer, ConsumerSink, QEntry, Queue};
use crate::broker::vhost::{generate_consumer_tag, ExchangeDeclare, QueueDeclare, VHost};
use crate::error::{code, AmqpError, AmqpResult};
use amq_protocol::protocol::{basic, channel, confirm, exchange, queue, tx, AMQPClass};
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

/// One delivery awaiting ack. `consumer` is None for basic.get.
#[derive(Debug)]
struct Unacked {
    tag: u64,
    queue: Arc<Queue>,
    entry: QEntry,
    consumer: Option<Arc<Consumer>>,
}

#[derive(Debug, Default)]
struct DeliveryState {
    next_tag: u64,
    /// Sorted by tag (tags are assigned in order under this lock).
    unacked: VecDeque<Unacked>,
}

#[derive(Debug)]
pub struct ChannelShared {
    pub id: u16,
    outbox: Arc<Outbox>,
    open: AtomicBool,
    state: Mutex<DeliveryState>,
    /// basic.qos global=true: limit on unacked consumer deliveries across the channel; 0 = none.
    global_prefetch: AtomicU32,
    consumer_unacked: AtomicU32,
    frame_max: u32,
    cancel_notify: bool,
}

impl ConsumerSink for ChannelShared {
    fn ready(&self, consumer: &Consumer, queue: &Arc<Queue>) -> bool {
        if !self.open.load(Ordering::Relaxed) {
            return false;
        }
        let g = self.global_prefetch.load(Ordering::Relaxed);
        if !consumer.no_ack && g > 0 && self.consumer_unacked.load(Ordering::Relaxed) >= g {
            return false;
        }
        self.outbox.has_room(queue)
    }

    fn deliver(&self, consumer: &Arc<Consumer>, queue: &Arc<Queue>, entry: QEntry) {
        let mut s = self.state.lock();
        s.next_tag += 1;
        let tag = s.next_tag;
        let m = &entry.msg;
        self.outbox.with(|b| {
            codec::encode_deliver(
                b,
                self.id,
                &consumer.tag,
                tag,
                entry.redelivered,
                &m.exchange,
                &m.routing_key,
            );
            codec::encode_content(b, self.id, &m.properties.raw, &m.body, self.frame_max);
        });
        if !consumer.no_ack {
            self.consumer_unacked.fetch_add(1, Ordering::Relaxed);
            s.unacked.push_back(Unacked {
                tag,
                queue: queue.clone(),
                entry,
                consumer: Some(consumer.clone()),
            });
        }
    }

    fn cancelled(&self, consumer: &Arc<Consumer>) {
        consumer.cancelled.store(true, Ordering::Relaxed);
        if self.cancel_notify && self.open.load(Ordering::Relaxed) {
            self.send(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: ShortString::from(consumer.tag.clone()),
                nowait: true,
            })));
        }
    }
}

impl ChannelShared {
    fn send(&self, m: AMQPClass) {
        self.outbox.with(|b| codec::encode_method(b, self.id, m));
    }
}

#[derive(Debug)]
enum Publishing {
    Idle,
    AwaitingHeader {
        exchange: Bytes,
        routing_key: Bytes,
        mandatory: bool,
    },
    AwaitingBody {
        exchange: Bytes,
        routing_key: Bytes,
        mandatory: bool,
        properties: Properties,
        size: u64,
        body: Body,
        received: u64,
    },
}

/// A body being assembled: one frame's payload is kept as it is (zero-copy); only a body split
/// over several frames is copied into one buffer.
#[derive(Debug)]
enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    fn push(&mut self, part: Bytes) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(part),
            Body::One(first) => {
                let mut b = BytesMut::with_capacity(first.len() + part.len());
                b.extend_from_slice(&first);
                b.extend_from_slice(&part);
                Body::Many(b)
            }
            Body::Many(mut b) => {
                b.extend_from_slice(&part);
                Body::Many(b)
            }
        }
    }

    fn finish(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(b) => b.freeze(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Drop,
    Requeue,
}

#[derive(Debug, Default)]
struct TxBuffer {
    publishes: Vec<(Bytes, Arc<Message>, bool)>,
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
    pub memory: &'a Arc<crate::broker::memory::MemoryMonitor>,
    pub conn_id: u64,
    pub max_message_size: u64,
    pub exclusive_queues: &'a mut Vec<Weak<Queue>>,
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
    tx: Option<TxBuffer>,
    current_queue: Option<String>,
    route_out: Vec<Arc<Queue>>,
    scratch: Vec<Dest>,
    /// A queue this channel published to that is over its flow-control mark.
    flow: Option<Arc<Queue>>,
}

fn queue_name(current: &Option<String>, name: &ShortString) -> AmqpResult<String> {
    if name.as_str().is_empty() {
        current
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    } else {
        Ok(name.as_str().to_owned())
    }
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
            }),
            closing: false,
            publishing: Publishing::Idle,
            consumers: HashMap::new(),
            prefetch: 0,
            confirm: false,
            publish_seq: 0,
            confirmed_upto: 0,
            confirm_ready: 0,
            tx: None,
            current_queue: None,
            route_out: Vec::new(),
            scratch: Vec::new(),
            flow: None,
        }
    }

    pub fn id(&self) -> u16 {
        self.shared.id
    }

    fn send(&self, m: AMQPClass) {
        self.shared.send(m);
    }

    /// Close the channel from our side after a channel-level error.
    pub fn close_with(&mut self, ctx: &mut Ctx, e: &AmqpError) {
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

    /// Send any publisher confirms that became ready (one basic.ack, multiple when it covers more).
    pub fn flush_confirms(&mut self) {
        if self.confirm_ready > self.confirmed_upto {
            let multiple = self.confirm_ready - self.confirmed_upto > 1;
            let tag = self.confirm_ready;
            self.shared
                .outbox
                .with(|b| codec::encode_confirm(b, self.shared.id, true, tag, multiple));
            self.confirmed_upto = tag;
        }
    }

    /// Bytes of a message body received so far and not yet complete.
    pub fn partial_content(&self) -> u64 {
        match &self.publishing {
            Publishing::AwaitingBody { received, .. } => *received,
            _ => 0,
        }
    }

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
        if !matches!(self.publishing, Publishing::Idle) {
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
                if immediate {
                    return Err(AmqpError::not_implemented("immediate=true"));
                }
                self.publishing = Publishing::AwaitingHeader {
                    exchange,
                    routing_key,
                    mandatory,
                };
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
                    format!("second 'channel.open' seen on channel {}", self.id()),
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

    fn on_exchange(&mut self, ctx: &mut Ctx, m: exchange::AMQPMethod) -> AmqpResult<()> {
        use exchange::AMQPMethod as E;
        let v = ctx.vhost;
        let (nowait, reply) = match m {
            E::Declare(d) => {
                v.declare_exchange(
                    d.exchange.as_str(),
                    &ExchangeDeclare {
                        kind: d.kind.as_str().to_owned(),
                        passive: d.passive,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments: d.arguments,
                    },
                )?;
                (d.nowait, E::DeclareOk(exchange::DeclareOk {}))
            }
            E::Delete(d) => {
                v.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                (d.nowait, E::DeleteOk(exchange::DeleteOk {}))
            }
            E::Bind(b) => {
                v.bind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                (b.nowait, E::BindOk(exchange::BindOk {}))
            }
            E::Unbind(b) => {
                v.unbind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                (b.nowait, E::UnbindOk(exchange::UnbindOk {}))
            }
            _ => return Err(server_only()),
        };
        if !nowait {
            self.send(AMQPClass::Exchange(reply));
        }
        Ok(())
    }

    fn on_queue(&mut self, ctx: &mut Ctx, m: queue::AMQPMethod) -> AmqpResult<()> {
        use queue::AMQPMethod as Q;
        let v = ctx.vhost;
        let conn = ctx.conn_id;
        let (nowait, reply) = match m {
            Q::Declare(d) => {
                let (q, created) = v.declare_queue(
                    d.queue.as_str(),
                    &QueueDeclare {
                        passive: d.passive,
                        durable: d.durable,
                        exclusive: d.exclusive,
                        auto_delete: d.auto_delete,
                        arguments: d.arguments,
                    },
                    conn,
                )?;
                if created && q.exclusive_owner.is_some() {
                    ctx.exclusive_queues.push(Arc::downgrade(&q));
                }
                self.current_queue = Some(q.name.clone());
                let c = q.counts();
                (
                    d.nowait,
                    Q::DeclareOk(queue::DeclareOk {
                        queue: sstr(&q.name),
                        message_count: c.ready,
                        consumer_count: c.consumers,
                    }),
                )
            }
            Q::Bind(b) => {
                let name = queue_name(&self.current_queue, &b.queue)?;
                let key = if b.routing_key.as_str().is_empty() && b.queue.as_str().is_empty() {
                    name.clone()
                } else {
                    b.routing_key.as_str().to_owned()
                };
                v.bind_queue(&name, b.exchange.as_str(), &key, &b.arguments, conn)?;
                (b.nowait, Q::BindOk(queue::BindOk {}))
            }
            Q::Unbind(b) => {
                let name = queue_name(&self.current_queue, &b.queue)?;
                v.unbind_queue(
                    &name,
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                    &b.arguments,
                    conn,
                )?;
                (false, Q::UnbindOk(queue::UnbindOk {}))
            }
            Q::Purge(p) => {
                let name = queue_name(&self.current_queue, &p.queue)?;
                let n = v.queue(&name, conn)?.purge();
                (p.nowait, Q::PurgeOk(queue::PurgeOk { message_count: n }))
            }
            Q::Delete(d) => {
                let name = queue_name(&self.current_queue, &d.queue)?;
                let n = v.delete_queue(&name, d.if_unused, d.if_empty, conn)?;
                (d.nowait, Q::DeleteOk(queue::DeleteOk { message_count: n }))
            }
            _ => return Err(server_only()),
        };
        if !nowait {
            self.send(AMQPClass::Queue(reply));
        }
        Ok(())
    }

    fn on_basic(&mut self, ctx: &mut Ctx, m: basic::AMQPMethod) -> AmqpResult<()> {
        use basic::AMQPMethod as B;
        match m {
            B::Qos(q) => {
                if q.global {
                    self.shared
                        .global_prefetch
                        .store(q.prefetch_count as u32, Ordering::Relaxed);
                    self.redispatch_all();
                } else {
                    self.prefetch = q.prefetch_count as u32;
                }
                self.send(AMQPClass::Basic(B::QosOk(basic::QosOk {})));
            }
            B::Consume(c) => self.on_consume(ctx, c)?,
            B::Cancel(c) => {
                if let Some((consumer, q)) = self.consumers.remove(c.consumer_tag.as_str()) {
                    if q.remove_consumer(&consumer) {
                        ctx.vhost.remove_queue(&q);
                    }
                }
                if !c.nowait {
                    self.send(AMQPClass::Basic(B::CancelOk(basic::CancelOk {
                        consumer_tag: c.consumer_tag,
                    })));
                }
            }
            B::CancelOk(_) => {} // reply to a server-sent cancel
            B::Get(g) => {
                let name = queue_name(&self.current_queue, &g.queue)?;
                let q = ctx.vhost.queue(&name, ctx.conn_id)?;
                match q.get(g.no_ack) {
                    None => self.send(AMQPClass::Basic(B::GetEmpty(basic::GetEmpty {}))),
                    Some((entry, left)) => {
                        let sh = &self.shared;
                        let mut s = sh.state.lock();
                        s.next_tag += 1;
                        let tag = s.next_tag;
                        let m = &entry.msg;
                        sh.outbox.with(|b| {
                            codec::encode_get_ok(
                                b,
                                sh.id,
                                tag,
                                entry.redelivered,
                                &m.exchange,
                                &m.routing_key,
                                left,
                            );
                            codec::encode_content(
                                b,
                                sh.id,
                                &m.properties.raw,
                                &m.body,
                                sh.frame_max,
                            );
                        });
                        if !g.no_ack {
                            s.unacked.push_back(Unacked {
                                tag,
                                queue: q.clone(),
                                entry,
                                consumer: None,
                            });
                        }
                    }
                }
            }
            B::Reject(r) => self.settle(
                r.delivery_tag,
                false,
                if r.requeue {
                    Settle::Requeue
                } else {
                    Settle::Drop
                },
            )?,
            B::Nack(n) => self.settle(
                n.delivery_tag,
                n.multiple,
                if n.requeue {
                    Settle::Requeue
                } else {
                    Settle::Drop
                },
            )?,
            B::Ack(a) => self.settle(a.delivery_tag, a.multiple, Settle::Ack)?,
            B::Recover(r) => {
                if !r.requeue {
                    return Err(AmqpError::not_implemented("requeue=false"));
                }
                // recover-ok goes first: clients expect the redeliveries after it.
                self.send(AMQPClass::Basic(B::RecoverOk(basic::RecoverOk {})));
                self.recover(r.requeue)?;
            }
            B::RecoverAsync(r) => self.recover(r.requeue)?,
            B::Publish(_) => unreachable!("decoded by the codec's fast path"),
            _ => return Err(server_only()),
        }
        Ok(())
    }

    fn on_consume(&mut self, ctx: &mut Ctx, c: basic::Consume) -> AmqpResult<()> {
        let name = queue_name(&self.current_queue, &c.queue)?;
        let q = ctx.vhost.queue(&name, ctx.conn_id)?;
        let tag = if c.consumer_tag.as_str().is_empty() {
            generate_consumer_tag()
        } else {
            c.consumer_tag.as_str().to_owned()
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: self.prefetch,
            unacked: AtomicU32::new(0),
            cancelled: AtomicBool::new(false),
            sink: self.shared.clone(),
        });
        // consume-ok must reach the client before the first delivery: attach, reply, dispatch.
        q.add_consumer(consumer.clone())?;
        if !c.nowait {
            self.send(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(
                basic::ConsumeOk {
                    consumer_tag: sstr(&tag),
                },
            )));
        }
        q.dispatch();
        self.consumers.insert(tag, (consumer, q));
        Ok(())
    }

    fn on_tx(&mut self, ctx: &mut Ctx, m: tx::AMQPMethod) -> AmqpResult<()> {
        use tx::AMQPMethod as T;
        match m {
            T::Select(_) => {
                if self.confirm {
                    return Err(AmqpError::precondition(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if self.tx.is_none() {
                    self.tx = Some(TxBuffer::default());
                }
                self.send(AMQPClass::Tx(T::SelectOk(tx::SelectOk {})));
            }
            T::Commit(_) => {
                let Some(tx) = self.tx.replace(TxBuffer::default()) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                for (exchange, msg, mandatory) in tx.publishes {
                    self.route_publish(ctx, &exchange, msg, mandatory)?;
                }
                for (entries, how) in tx.settles {
                    self.apply_settle(entries, how);
                }
                self.send(AMQPClass::Tx(T::CommitOk(tx::CommitOk {})));
            }
            T::Rollback(_) => {
                let Some(tx) = self.tx.replace(TxBuffer::default()) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                // Acks inside a rolled-back transaction are undone: the deliveries stay unacked.
                let mut s = self.shared.state.lock();
                for (entries, _) in tx.settles {
                    for u in entries {
                        let pos = s.unacked.partition_point(|x| x.tag < u.tag);
                        if u.consumer.is_some() {
                            self.shared.consumer_unacked.fetch_add(1, Ordering::Relaxed);
                        }
                        s.unacked.insert(pos, u);
                    }
                }
                drop(s);
                self.send(AMQPClass::Tx(T::RollbackOk(tx::RollbackOk {})));
            }
            _ => return Err(server_only()),
        }
        Ok(())
    }

    // ---- content ----------------------------------------------------------------------------

    pub fn on_header(
        &mut self,
        ctx: &mut Ctx,
        class_id: u16,
        body_size: u64,
        properties: Bytes,
    ) -> AmqpResult<()> {
        if self.closing {
            return Ok(());
        }
        let Publishing::AwaitingHeader {
            exchange,
            routing_key,
            mandatory,
        } = std::mem::replace(&mut self.publishing, Publishing::Idle)
        else {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("unexpected content header frame on channel {}", self.id()),
            ));
        };
        if class_id != 60 {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("content header for class {class_id}, expected 60 (basic)"),
            ));
        }
        if body_size > ctx.max_message_size {
            return Err(AmqpError::precondition(format!(
                "message size {body_size} is larger than configured max size {}",
                ctx.max_message_size
            ))
            .at(60, 40));
        }
        let properties = Properties::parse(properties).map_err(|e| {
            AmqpError::connection(code::SYNTAX_ERROR, format!("invalid content header: {e}"))
        })?;
        if body_size == 0 {
            return self.finish_publish(
                ctx,
                exchange,
                routing_key,
                mandatory,
                properties,
                Bytes::new(),
            );
        }
        self.publishing = Publishing::AwaitingBody {
            exchange,
            routing_key,
            mandatory,
            properties,
            size: body_size,
            body: Body::Empty,
            received: 0,
        };
        Ok(())
    }

    pub fn on_body(&mut self, ctx: &mut Ctx, payload: Bytes) -> AmqpResult<()> {
        if self.closing {
            return Ok(());
        }
        let Publishing::AwaitingBody {
            size,
            body,
            received,
            ..
        } = &mut self.publishing
        else {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("unexpected content body frame on channel {}", self.id()),
            ));
        };
        *received += payload.len() as u64;
        if *received > *size {
            return Err(AmqpError::connection(
                code::FRAME_ERROR,
                format!(
                    "content body of {} bytes exceeds the {} announced in its header",
                    received, size
                ),
            ));
        }
        body.push(payload);
        if *received < *size {
            return Ok(());
        }
        let Publishing::AwaitingBody {
            exchange,
            routing_key,
            mandatory,
            properties,
            body,
            ..
        } = std::mem::replace(&mut self.publishing, Publishing::Idle)
        else {
            unreachable!()
        };
        let body = body.finish();
        self.finish_publish(ctx, exchange, routing_key, mandatory, properties, body)
    }

    fn finish_publish(
        &mut self,
        ctx: &mut Ctx,
        exchange: Bytes,
        routing_key: Bytes,
        mandatory: bool,
        properties: Properties,
        body: Bytes,
    ) -> AmqpResult<()> {
        let msg = Arc::new(Message::new(
            exchange.clone(),
            routing_key,
            properties,
            body,
            ctx.memory.clone(),
        ));
        if self.confirm {
            self.publish_seq += 1;
        }
        if let Some(tx) = &mut self.tx {
            // Check the exchange now, as RabbitMQ does, so the error comes with the publish.
            let name = std::str::from_utf8(&exchange).unwrap_or("\u{fffd}");
            if !name.is_empty() {
                ctx.vhost.exchange(name).map_err(|e| e.at(60, 40))?;
            }
            tx.publishes.push((exchange, msg, mandatory));
            return Ok(());
        }
        self.route_publish(ctx, &exchange, msg, mandatory)
            .map_err(|e| e.at(60, 40))?;
        if self.confirm {
            self.confirm_ready = self.publish_seq;
        }
        Ok(())
    }

    fn route_publish(
        &mut self,
        ctx: &mut Ctx,
        exchange: &Bytes,
        msg: Arc<Message>,
        mandatory: bool,
    ) -> AmqpResult<()> {
        let name = std::str::from_utf8(exchange).map_err(|_| {
            AmqpError::not_found(format!(
                "no exchange '{}' in vhost '{}'",
                String::from_utf8_lossy(exchange),
                ctx.vhost.name
            ))
        })?;
        let mut out = std::mem::take(&mut self.route_out);
        let routed = ctx.vhost.route(name, &msg, &mut out, &mut self.scratch);
        if let Err(e) = routed {
            self.route_out = out;
            return Err(e);
        }
        let mut delivered = false;
        for q in out.drain(..) {
            delivered |= q.publish(msg.clone());
            if q.overloaded() && self.flow.is_none() {
                self.flow = Some(q);
            }
        }
        self.route_out = out;
        if !delivered && mandatory {
            let sh = &self.shared;
            sh.outbox.with(|b| {
                codec::encode_method(
                    b,
                    sh.id,
                    AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                        reply_code: code::NO_ROUTE,
                        reply_text: "NO_ROUTE".into(),
                        exchange: sstr(name),
                        routing_key: sstr(&String::from_utf8_lossy(&msg.routing_key)),
                    })),
                );
                codec::encode_content(b, sh.id, &msg.properties.raw, &msg.body, sh.frame_max);
            });
        }
        Ok(())
    }

    // ---- acknowledgements -------------------------------------------------------------------

    fn settle(&mut self, tag: u64, multiple: bool, how: Settle) -> AmqpResult<()> {
        let taken: Vec<Unacked> = {
            let mut s = self.shared.state.lock();
            if multiple {
                if tag == 0 {
                    s.unacked.drain(..).collect()
                } else {
                    let n = s.unacked.partition_point(|u| u.tag <= tag);
                    if n == 0 {
                        return Err(unknown_tag(tag));
                    }
                    s.unacked.drain(..n).collect()
                }
            } else {
                let i = s.unacked.partition_point(|u| u.tag < tag);
                match s.unacked.get(i) {
                    Some(u) if u.tag == tag => vec![s.unacked.remove(i).expect("present")],
                    _ => return Err(unknown_tag(tag)),
                }
            }
        };
        let from_consumers = taken.iter().filter(|u| u.consumer.is_some()).count() as u32;
        self.shared
            .consumer_unacked
            .fetch_sub(from_consumers, Ordering::Relaxed);
        if let Some(tx) = &mut self.tx {
            tx.settles.push((taken, how));
        } else {
            self.apply_settle(taken, how);
        }
        Ok(())
    }

    fn apply_settle(&mut self, entries: Vec<Unacked>, how: Settle) {
        // Entries come in tag order, usually all from one queue: settle each run of the same
        // queue under one lock.
        let mut run: Option<(Arc<Queue>, u64, Vec<QEntry>)> = None;
        for u in entries {
            if let Some(c) = &u.consumer {
                c.unacked.fetch_sub(1, Ordering::Relaxed);
            }
            match &mut run {
                Some((q, _, _)) if Arc::ptr_eq(q, &u.queue) => {}
                _ => {
                    if let Some((q, done, back)) = run.take() {
                        q.settle(done, back);
                    }
                    run = Some((u.queue.clone(), 0, Vec::new()));
                }
            }
            let (_, done, back) = run.as_mut().expect("set above");
            match how {
                Settle::Ack | Settle::Drop => *done += 1,
                Settle::Requeue => back.push(u.entry),
            }
        }
        if let Some((q, done, back)) = run {
            q.settle(done, back);
        }
        if self.shared.global_prefetch.load(Ordering::Relaxed) > 0 {
            self.redispatch_all();
        }
    }

    fn recover(&mut self, requeue: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let all: Vec<Unacked> = self.shared.state.lock().unacked.drain(..).collect();
        let from_consumers = all.iter().filter(|u| u.consumer.is_some()).count() as u32;
        self.shared
            .consumer_unacked
            .fetch_sub(from_consumers, Ordering::Relaxed);
        self.apply_settle(all, Settle::Requeue);
        Ok(())
    }

    fn redispatch_all(&self) {
        let mut seen: Vec<&Arc<Queue>> = Vec::new();
        for (_, q) in self.consumers.values() {
            if !seen.iter().any(|x| Arc::ptr_eq(x, q)) {
                seen.push(q);
                q.dispatch();
            }
        }
    }

    /// The channel is going away: consumers detach, unacked deliveries return to their queues.
    pub fn cleanup(&mut self, ctx: &mut Ctx) {
        self.shared.open.store(false, Ordering::Relaxed);
        self.publishing = Publishing::Idle;
        for (_, (c, q)) in self.consumers.drain() {
            if q.remove_consumer(&c) {
                ctx.vhost.remove_queue(&q);
            }
        }
        let mut back: Vec<Unacked> = self.shared.state.lock().unacked.drain(..).collect();
        if let Some(tx) = self.tx.take() {
            for (entries, _) in tx.settles {
                back.extend(entries);
            }
        }
        self.shared.consumer_unacked.store(0, Ordering::Relaxed);
        self.apply_settle(back, Settle::Requeue);
    }
}

fn unknown_tag(tag: u64) -> AmqpError {
    AmqpError::precondition(format!("unknown delivery tag {tag}"))
}

fn server_only() -> AmqpError {
    AmqpError::connection(
        code::COMMAND_INVALID,
        "method is only valid from the server to a client",
    )
}
