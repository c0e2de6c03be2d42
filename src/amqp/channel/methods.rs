//! The handlers of exchange.*, queue.*, basic.* (but publish content, `content`, and consume,
//! `consume`) and tx.* methods.

use super::*;
use crate::broker::args::{refuse_quorum_delete_flags, refuse_server_named, str_arg};
use crate::broker::reply_to::REPLY_QUEUE;
use crate::broker::vhost::{server_queue_name, Outcome};
use crate::cluster::meta::MetaOp;
use replicated::Reply;

/// An exclusive queue is this node's alone, also in a cluster.
fn is_exclusive(v: &VHost, name: &str) -> bool {
    v.find_queue(name)
        .is_some_and(|q| q.exclusive_owner.is_some())
}

pub(super) fn queue_name(current: &Option<String>, name: &ShortString) -> AmqpResult<String> {
    if name.as_str().is_empty() {
        current
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    } else {
        Ok(name.as_str().to_owned())
    }
}

impl Channel {
    pub(super) fn on_exchange(&mut self, ctx: &mut Ctx, m: exchange::AMQPMethod) -> AmqpResult<()> {
        use exchange::AMQPMethod as E;
        let v = ctx.vhost;
        let (nowait, reply) = match m {
            E::Declare(d) => {
                if !d.passive {
                    let name = d.exchange.as_str();
                    ctx.allow(Perm::Configure, Resource::Exchange, name)?;
                    // As RabbitMQ, on creation: an alternate exchange needs write on it, and
                    // read on the new exchange.
                    if let Some(ae) = str_arg(&d.arguments, "alternate-exchange") {
                        if v.exchange(name).is_err() {
                            ctx.allow(Perm::Read, Resource::Exchange, name)?;
                            ctx.allow(Perm::Write, Resource::Exchange, &ae)?;
                        }
                    }
                }
                let decl = ExchangeDeclare {
                    kind: d.kind.as_str().to_owned(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                };
                if !d.passive && ctx.cluster.is_some() {
                    let op = MetaOp::DeclareExchange {
                        vhost: v.name.clone(),
                        name: d.exchange.as_str().to_owned(),
                        kind: decl.kind,
                        durable: decl.durable,
                        auto_delete: decl.auto_delete,
                        internal: decl.internal,
                        arguments: decl.arguments,
                    };
                    let reply =
                        Reply::Fixed(AMQPClass::Exchange(E::DeclareOk(exchange::DeclareOk {})));
                    ctx.replicate(self.id(), op, reply, d.nowait);
                    return Ok(());
                }
                v.declare_exchange(d.exchange.as_str(), &decl)?;
                (d.nowait, E::DeclareOk(exchange::DeclareOk {}))
            }
            E::Delete(d) => {
                let name = d.exchange.as_str();
                // The default and amq.* exchanges are refused below whatever the permissions.
                if !name.is_empty() && !name.starts_with("amq.") {
                    ctx.allow(Perm::Configure, Resource::Exchange, name)?;
                }
                let op = MetaOp::DeleteExchange {
                    vhost: v.name.clone(),
                    name: name.to_owned(),
                    if_unused: d.if_unused,
                };
                let reply = Reply::Fixed(AMQPClass::Exchange(E::DeleteOk(exchange::DeleteOk {})));
                if ctx.replicate(self.id(), op, reply, d.nowait) {
                    return Ok(());
                }
                v.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                (d.nowait, E::DeleteOk(exchange::DeleteOk {}))
            }
            E::Bind(b) => {
                ctx.allow(Perm::Write, Resource::Exchange, b.destination.as_str())?;
                ctx.allow(Perm::Read, Resource::Exchange, b.source.as_str())?;
                ctx.allow_topic(
                    Perm::Read,
                    b.source.as_str().as_bytes(),
                    b.routing_key.as_str().as_bytes(),
                )?;
                if ctx.cluster.is_some() {
                    let op = MetaOp::Bind {
                        vhost: v.name.clone(),
                        source: b.source.as_str().to_owned(),
                        destination: b.destination.as_str().to_owned(),
                        to_queue: false,
                        routing_key: b.routing_key.as_str().to_owned(),
                        arguments: b.arguments,
                    };
                    let reply = Reply::Fixed(AMQPClass::Exchange(E::BindOk(exchange::BindOk {})));
                    ctx.replicate(self.id(), op, reply, b.nowait);
                    return Ok(());
                }
                v.bind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                (b.nowait, E::BindOk(exchange::BindOk {}))
            }
            E::Unbind(b) => {
                ctx.allow(Perm::Write, Resource::Exchange, b.destination.as_str())?;
                ctx.allow(Perm::Read, Resource::Exchange, b.source.as_str())?;
                ctx.allow_topic(
                    Perm::Read,
                    b.source.as_str().as_bytes(),
                    b.routing_key.as_str().as_bytes(),
                )?;
                if ctx.cluster.is_some() {
                    let op = MetaOp::Unbind {
                        vhost: v.name.clone(),
                        source: b.source.as_str().to_owned(),
                        destination: b.destination.as_str().to_owned(),
                        to_queue: false,
                        routing_key: b.routing_key.as_str().to_owned(),
                        arguments: b.arguments,
                    };
                    let reply =
                        Reply::Fixed(AMQPClass::Exchange(E::UnbindOk(exchange::UnbindOk {})));
                    ctx.replicate(self.id(), op, reply, b.nowait);
                    return Ok(());
                }
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

    pub(super) fn on_queue(&mut self, ctx: &mut Ctx, m: queue::AMQPMethod) -> AmqpResult<()> {
        use queue::AMQPMethod as Q;
        let v = ctx.vhost;
        let conn = ctx.conn_id;
        let mut cancelled = Vec::new();
        let (nowait, reply) = match m {
            // As RabbitMQ: any declare of the direct reply-to pseudo-queue, or of a live reply
            // address, succeeds with one consumer and no messages; other amq.rabbitmq.reply-to*
            // names are not found, passive or not.
            Q::Declare(d) if d.queue.as_str().starts_with(REPLY_QUEUE) => {
                let name = d.queue.as_str();
                if !v.replies.exists(name) {
                    return Err(AmqpError::not_found(format!(
                        "no queue '{name}' in vhost '{}'",
                        v.name
                    )));
                }
                self.current_queue = Some(name.to_owned());
                (
                    d.nowait,
                    Q::DeclareOk(queue::DeclareOk {
                        queue: d.queue,
                        message_count: 0,
                        consumer_count: 1,
                    }),
                )
            }
            Q::Declare(d) => {
                let decl = QueueDeclare {
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                };
                let (q, created) = if d.passive {
                    let (q, created) = v.declare_queue(d.queue.as_str(), &decl, conn)?;
                    if q.remote.is_some() {
                        // Its counts are the serving node's.
                        self.current_queue = Some(q.name.clone());
                        ctx.defer_remote(
                            self.id(),
                            replicated::Remote::Declare {
                                queue: q,
                                nowait: d.nowait,
                            },
                        );
                        return Ok(());
                    }
                    (q, created)
                } else {
                    if d.queue.as_str().is_empty() {
                        refuse_server_named(&decl.arguments)?;
                    }
                    // A server-named queue is checked under the name it will get, as in RabbitMQ.
                    let generated = d.queue.as_str().is_empty().then(server_queue_name);
                    let name = generated.as_deref().unwrap_or(d.queue.as_str());
                    // A client's amq.* name is refused for that reason first, as in RabbitMQ.
                    if generated.is_some() || !name.starts_with("amq.") {
                        ctx.allow(Perm::Configure, Resource::Queue, name)?;
                    }
                    if let Some(dlx) = str_arg(&decl.arguments, "x-dead-letter-exchange") {
                        if v.queue(name, conn).is_err() {
                            ctx.allow(Perm::Read, Resource::Queue, name)?;
                            ctx.allow(Perm::Write, Resource::Exchange, &dlx)?;
                        }
                    }
                    // The vhost's max-queues, for a queue that would be new (server-named and
                    // exclusive ones count too), as in RabbitMQ.
                    if v.find_queue(name).is_none() {
                        if let Some(limit) = ctx.grants.access().queue_limit(&v.name) {
                            if v.queue_count() as i64 >= limit {
                                return Err(AmqpError::precondition(
                                    crate::auth::limits::queues_refused(name, &v.name, limit),
                                ));
                            }
                        }
                    }
                    // In a cluster, a queue others can use is a definition of the cluster's;
                    // an exclusive one lives and dies with this connection, here.
                    if !decl.exclusive && ctx.cluster.is_some() {
                        let op = MetaOp::DeclareQueue {
                            vhost: v.name.clone(),
                            name: name.to_owned(),
                            node: ctx.cluster.map(|c| c.name.clone()).unwrap_or_default(),
                            durable: decl.durable,
                            auto_delete: decl.auto_delete,
                            arguments: decl.arguments,
                        };
                        let reply = Reply::QueueDeclareOk(name.to_owned());
                        ctx.replicate(self.id(), op, reply, d.nowait);
                        return Ok(());
                    }
                    match generated {
                        Some(name) => v.declare_named_queue(name, &decl, conn)?,
                        None => v.declare_queue(name, &decl, conn)?,
                    }
                };
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
                ctx.allow(Perm::Write, Resource::Queue, &name)?;
                ctx.allow(Perm::Read, Resource::Exchange, b.exchange.as_str())?;
                ctx.allow_topic(Perm::Read, b.exchange.as_str().as_bytes(), key.as_bytes())?;
                if ctx.cluster.is_some() && !is_exclusive(v, &name) {
                    let op = MetaOp::Bind {
                        vhost: v.name.clone(),
                        source: b.exchange.as_str().to_owned(),
                        destination: name,
                        to_queue: true,
                        routing_key: key,
                        arguments: b.arguments,
                    };
                    let reply = Reply::Fixed(AMQPClass::Queue(Q::BindOk(queue::BindOk {})));
                    ctx.replicate(self.id(), op, reply, b.nowait);
                    return Ok(());
                }
                v.bind_queue(&name, b.exchange.as_str(), &key, &b.arguments, conn)?;
                (b.nowait, Q::BindOk(queue::BindOk {}))
            }
            Q::Unbind(b) => {
                let name = queue_name(&self.current_queue, &b.queue)?;
                ctx.allow(Perm::Write, Resource::Queue, &name)?;
                ctx.allow(Perm::Read, Resource::Exchange, b.exchange.as_str())?;
                ctx.allow_topic(
                    Perm::Read,
                    b.exchange.as_str().as_bytes(),
                    b.routing_key.as_str().as_bytes(),
                )?;
                if ctx.cluster.is_some() && !is_exclusive(v, &name) {
                    let op = MetaOp::Unbind {
                        vhost: v.name.clone(),
                        source: b.exchange.as_str().to_owned(),
                        destination: name,
                        to_queue: true,
                        routing_key: b.routing_key.as_str().to_owned(),
                        arguments: b.arguments,
                    };
                    let reply = Reply::Fixed(AMQPClass::Queue(Q::UnbindOk(queue::UnbindOk {})));
                    ctx.replicate(self.id(), op, reply, false);
                    return Ok(());
                }
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
                ctx.allow(Perm::Read, Resource::Queue, &name)?;
                let q = v.queue(&name, conn)?;
                if q.served_elsewhere() {
                    // Served by another node: purged there.
                    ctx.defer_remote(
                        self.id(),
                        replicated::Remote::Purge {
                            queue: q,
                            nowait: p.nowait,
                        },
                    );
                    return Ok(());
                }
                if q.is_stream() {
                    return Err(AmqpError::not_implemented(format!(
                        "queue.purge not supported by stream queues queue '{}' in vhost '{}'",
                        q.name, q.vhost
                    )));
                }
                let n = q.purge();
                (p.nowait, Q::PurgeOk(queue::PurgeOk { message_count: n }))
            }
            Q::Delete(d) => {
                let name = queue_name(&self.current_queue, &d.queue)?;
                ctx.allow(Perm::Configure, Resource::Queue, &name)?;
                if let Some(q) = v.find_queue(&name).filter(|q| q.life.quorum) {
                    refuse_quorum_delete_flags(&q.name, &q.vhost, d.if_unused, d.if_empty)?;
                }
                if ctx.cluster.is_some() && !is_exclusive(v, &name) {
                    let op = MetaOp::DeleteQueue {
                        vhost: v.name.clone(),
                        name,
                        if_unused: d.if_unused,
                        if_empty: d.if_empty,
                    };
                    ctx.replicate(self.id(), op, Reply::QueueDeleteOk, d.nowait);
                    return Ok(());
                }
                let n;
                (n, cancelled) = v.delete_queue(&name, d.if_unused, d.if_empty, conn)?;
                (d.nowait, Q::DeleteOk(queue::DeleteOk { message_count: n }))
            }
            _ => return Err(server_only()),
        };
        if !nowait {
            self.send(AMQPClass::Queue(reply));
        }
        // RabbitMQ sends delete-ok before the basic.cancel of the deleted queue's consumers.
        cancel_consumers(cancelled);
        Ok(())
    }

    pub(super) fn on_basic(&mut self, ctx: &mut Ctx, m: basic::AMQPMethod) -> AmqpResult<()> {
        use basic::AMQPMethod as B;
        match m {
            B::Qos(q) => {
                if q.global {
                    self.shared
                        .global_prefetch
                        .store(q.prefetch_count as u32, Ordering::Relaxed);
                    let obs = &self.shared.obs.stats;
                    obs.global_prefetch
                        .store(q.prefetch_count as u32, Ordering::Relaxed);
                    self.redispatch_all();
                } else {
                    // As RabbitMQ: a per-consumer qos also lifts an earlier channel-wide limit.
                    self.prefetch = q.prefetch_count as u32;
                    self.shared
                        .obs
                        .stats
                        .prefetch
                        .store(self.prefetch, Ordering::Relaxed);
                    self.shared
                        .obs
                        .stats
                        .global_prefetch
                        .store(0, Ordering::Relaxed);
                    if self.shared.global_prefetch.swap(0, Ordering::Relaxed) != 0 {
                        self.redispatch_all();
                    }
                }
                self.send(AMQPClass::Basic(B::QosOk(basic::QosOk {})));
            }
            B::Consume(c) => self.on_consume(ctx, c)?,
            B::Cancel(c) => {
                let is_reply =
                    self.shared.reply_tag.lock().as_deref() == Some(c.consumer_tag.as_str());
                if is_reply {
                    *self.shared.reply_tag.lock() = None;
                    if let Some(token) = self.reply_token.take() {
                        ctx.vhost.replies.unregister(&token);
                    }
                }
                if let Some((consumer, q)) = self.consumers.remove(c.consumer_tag.as_str()) {
                    self.shared.obs.consumer_removed(&consumer.tag);
                    if q.remove_consumer(&consumer) {
                        cancel_consumers(ctx.vhost.remove_queue(&q).1);
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
                ctx.allow(Perm::Read, Resource::Queue, &name)?;
                let q = ctx.vhost.queue(&name, ctx.conn_id)?;
                if q.served_elsewhere() {
                    // Served by another node: taken there.
                    ctx.defer_remote(
                        self.id(),
                        replicated::Remote::Get {
                            queue: q,
                            no_ack: g.no_ack,
                        },
                    );
                    return Ok(());
                }
                if q.is_stream() {
                    return Err(AmqpError::not_implemented(format!(
                        "basic.get not supported by stream queues queue '{}' in vhost '{}'",
                        q.name, q.vhost
                    )));
                }
                let got = q.get(g.no_ack);
                self.answer_get(ctx, q, got, g.no_ack);
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

    /// Answer a basic.get: get-empty, or get-ok with the message (kept unacked unless no-ack).
    pub(super) fn answer_get(
        &mut self,
        ctx: &mut Ctx,
        q: Arc<Queue>,
        got: Option<(QEntry, u32)>,
        no_ack: bool,
    ) {
        use basic::AMQPMethod as B;
        match got {
            None => {
                crate::observe::bump(&self.shared.obs.stats.get_empty, 1);
                self.send(AMQPClass::Basic(B::GetEmpty(basic::GetEmpty {})))
            }
            Some((entry, left)) => {
                let sh = &self.shared;
                let st = &sh.obs.stats;
                if entry.redelivered {
                    crate::observe::bump_shared(&st.redeliver, 1);
                }
                crate::observe::bump(if no_ack { &st.get_no_ack } else { &st.get }, 1);
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
                    codec::encode_content(b, sh.id, &m.properties.raw, &m.body, sh.frame_max);
                });
                if !no_ack {
                    s.unacked.push_back(Unacked {
                        tag,
                        queue: q.clone(),
                        entry,
                        consumer: None,
                        delivered_at: q.clock.coarse_ms(),
                    });
                    sh.note_unacked(&s);
                    drop(s);
                    self.watch_acks(ctx, &q);
                }
            }
        }
    }

    pub(super) fn on_tx(&mut self, ctx: &mut Ctx, m: tx::AMQPMethod) -> AmqpResult<()> {
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
                self.shared
                    .obs
                    .stats
                    .transactional
                    .store(true, Ordering::Relaxed);
                self.send(AMQPClass::Tx(T::SelectOk(tx::SelectOk {})));
            }
            T::Commit(_) => {
                let Some(tx) = self.tx.replace(TxBuffer::default()) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                let mut wait = 0;
                for p in &tx.publishes {
                    // Copies forwarded to other nodes are not waited for by commit-ok.
                    let mut outcome = Outcome::default();
                    self.route_publish(ctx, p, &mut outcome)?;
                    wait = wait.max(outcome.ticket);
                }
                for (entries, how) in tx.settles {
                    self.apply_settle(entries, how);
                }
                if wait > 0 {
                    // commit-ok once the log is synced past the last stored publish.
                    self.commit_wait = Some(wait);
                } else {
                    self.send(AMQPClass::Tx(T::CommitOk(tx::CommitOk {})));
                }
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
                self.shared.note_unacked(&s);
                drop(s);
                self.send(AMQPClass::Tx(T::RollbackOk(tx::RollbackOk {})));
            }
            _ => return Err(server_only()),
        }
        Ok(())
    }
}

pub(super) fn server_only() -> AmqpError {
    AmqpError::connection(
        code::COMMAND_INVALID,
        "method is only valid from the server to a client",
    )
}
