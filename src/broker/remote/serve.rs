//! The queue's node (A) serving consumers, gets and purges for other nodes. A subscription is a
//! proxy consumer on the real queue (`Sub`, a `ConsumerSink` that queues deliveries for the
//! session's next pull instead of writing to a socket), so priorities, single active consumer,
//! round robin, delivery limits, TTLs and dead-lettering stay the queue's ordinary logic. What
//! is delivered and not yet settled is held here, by an id this node chose, until the other
//! node settles it or the session ends (then it goes back to its queue, redelivered).
//!
//! Lock order: a queue's lock, then a session's state (a delivery takes the session's lock
//! under the queue's); nothing here takes a queue's lock while holding a session's.

use crate::broker::queue::dead_letter::Reason;
use crate::broker::queue::{cancel_consumers, Consumer, ConsumerSink, QEntry, Queue};
use crate::broker::Broker;
use crate::cluster::meta::Refusal;
use crate::cluster::subscribe::{
    ConsumeService, Delivery, Reply, Request, BATCH_BYTES, HOLD, LEASE,
};
use crate::error::AmqpError;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// A delivery not yet settled by the other node.
struct Held {
    queue: Arc<Queue>,
    entry: QEntry,
    /// None for basic.get.
    consumer: Option<Arc<Consumer>>,
}

#[derive(Default)]
struct State {
    subs: HashMap<u64, (Arc<Sub>, Arc<Consumer>)>,
    held: HashMap<u64, Held>,
    outbox: Vec<Delivery>,
    gone: Vec<u64>,
    seq: u64,
    /// The last batch sent, until the next pull says it arrived.
    last: Option<(u64, Vec<Delivery>, Vec<u64>)>,
}

struct Session {
    id: u64,
    origin: String,
    state: Mutex<State>,
    wake: Notify,
    /// Milliseconds since the server's epoch when last heard from.
    seen: AtomicU64,
    pulling: AtomicU32,
    next_id: AtomicU64,
    ended: AtomicBool,
    epoch: Instant,
}

impl Session {
    fn touch(&self) {
        self.seen
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A subscription: the proxy consumer's sink.
pub struct Sub {
    id: u64,
    session: Arc<Session>,
    queue: Weak<Queue>,
    granted: AtomicU64,
    sent: AtomicU64,
}

impl std::fmt::Debug for Sub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSub")
            .field("node", &self.session.origin)
            .field("id", &self.id)
            .finish()
    }
}

impl ConsumerSink for Sub {
    fn ready(&self, _c: &Consumer, _q: &Arc<Queue>) -> bool {
        // Without credit the queue is dispatched again when the other node grants more.
        !self.session.ended.load(Ordering::Relaxed)
            && self.sent.load(Ordering::Relaxed) < self.granted.load(Ordering::Relaxed)
    }

    fn deliver(&self, consumer: &Arc<Consumer>, queue: &Arc<Queue>, entry: QEntry) {
        let s = &self.session;
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        self.sent.fetch_add(1, Ordering::Relaxed);
        let m = &entry.msg;
        let d = Delivery {
            sub: self.id,
            id,
            redelivered: entry.redelivered,
            exchange: m.exchange.clone(),
            routing_key: m.routing_key.bytes(),
            properties: m.properties.raw.bytes(),
            body: m.body.bytes(),
        };
        let mut st = s.state.lock();
        st.outbox.push(d);
        if !consumer.no_ack {
            st.held.insert(
                id,
                Held {
                    queue: queue.clone(),
                    entry,
                    consumer: Some(consumer.clone()),
                },
            );
        }
        drop(st);
        s.wake.notify_one();
    }

    fn cancelled(&self, consumer: &Arc<Consumer>) {
        // The queue went away: the other node cancels its consumer.
        consumer.cancelled.store(true, Ordering::Relaxed);
        let mut st = self.session.state.lock();
        st.subs.remove(&self.id);
        st.gone.push(self.id);
        drop(st);
        self.session.wake.notify_one();
    }
}

/// Every session other nodes have with this one.
pub struct Server {
    me: Weak<Server>,
    broker: Weak<Broker>,
    sessions: DashMap<u64, Arc<Session>>,
    epoch: Instant,
}

fn refused(e: AmqpError) -> Reply {
    Reply::Refused(Refusal::from(e))
}

impl Server {
    /// Serve other nodes' consumers from this broker's queues; ends sessions whose node went
    /// silent.
    pub fn start(broker: &Arc<Broker>) -> Arc<Server> {
        let s = Arc::new_cyclic(|me| Server {
            me: me.clone(),
            broker: Arc::downgrade(broker),
            sessions: DashMap::new(),
            epoch: Instant::now(),
        });
        let weak = Arc::downgrade(&s);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { return };
                s.reap();
            }
        });
        s
    }

    fn reap(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let lease = LEASE.as_millis() as u64;
        let silent: Vec<Arc<Session>> = self
            .sessions
            .iter()
            .filter(|s| {
                s.pulling.load(Ordering::Relaxed) == 0
                    && now.saturating_sub(s.seen.load(Ordering::Relaxed)) > lease
            })
            .map(|s| s.clone())
            .collect();
        for s in silent {
            info!(
                node = %s.origin,
                "the consumers of {} through this node's queues went silent for {} s: their \
                 unsettled deliveries go back to their queues",
                s.origin,
                LEASE.as_secs()
            );
            self.end(&s);
        }
    }

    fn session(&self, id: u64, origin: &str) -> Arc<Session> {
        let s = self
            .sessions
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Session {
                    id,
                    origin: origin.to_owned(),
                    state: Mutex::default(),
                    wake: Notify::new(),
                    seen: AtomicU64::new(0),
                    pulling: AtomicU32::new(0),
                    next_id: AtomicU64::new(1),
                    ended: AtomicBool::new(false),
                    epoch: self.epoch,
                })
            })
            .clone();
        s.touch();
        s
    }

    fn known(&self, id: u64) -> Option<Arc<Session>> {
        let s = self.sessions.get(&id).map(|s| s.clone())?;
        s.touch();
        Some(s)
    }

    /// End a session: its consumers detach, its unsettled deliveries go back to their queues.
    fn end(&self, s: &Arc<Session>) {
        self.sessions.remove_if(&s.id, |_, v| Arc::ptr_eq(v, s));
        s.ended.store(true, Ordering::Relaxed);
        let subs: Vec<(Arc<Sub>, Arc<Consumer>)> =
            s.state.lock().subs.drain().map(|(_, v)| v).collect();
        for (sub, c) in subs {
            self.detach(&sub, &c);
        }
        // Deliveries made while detaching were held under the lock too: taken now.
        let held: Vec<Held> = {
            let mut st = s.state.lock();
            st.outbox.clear();
            st.last = None;
            st.held.drain().map(|(_, h)| h).collect()
        };
        settle_held(Vec::new(), held, Vec::new());
        s.wake.notify_waiters();
    }

    /// Take a proxy consumer off its queue (deleting an auto-delete queue it leaves empty).
    fn detach(&self, sub: &Arc<Sub>, c: &Arc<Consumer>) {
        let Some(q) = self.queue_of(sub, c) else {
            return;
        };
        if q.remove_consumer(c) {
            if let Some(v) = self.broker.upgrade().and_then(|b| b.vhost(&q.vhost)) {
                cancel_consumers(v.remove_queue(&q).1);
            }
        }
    }

    fn queue_of(&self, sub: &Arc<Sub>, _c: &Arc<Consumer>) -> Option<Arc<Queue>> {
        sub.queue.upgrade()
    }

    fn queue(&self, vhost: &str, name: &str) -> Result<Arc<Queue>, AmqpError> {
        let b = self
            .broker
            .upgrade()
            .ok_or_else(|| AmqpError::channel(541, "the node is stopping"))?;
        let v = b.vhost(vhost).ok_or_else(|| {
            AmqpError::connection(
                crate::error::code::NOT_ALLOWED,
                format!("vhost '{vhost}' not found"),
            )
        })?;
        let q = v
            .find_queue(name)
            .ok_or_else(|| AmqpError::not_found(format!("no queue '{name}' in vhost '{vhost}'")))?;
        if q.served_elsewhere() {
            // Not (or no longer) served here: a quorum queue's leader moved, or the asker's
            // records are behind. It asks again.
            let home = v.home_of(name).unwrap_or_else(|| "another node".into());
            return Err(AmqpError::channel(
                crate::error::code::INTERNAL_ERROR,
                format!("queue '{name}' in vhost '{vhost}' is served by node {home}"),
            ));
        }
        Ok(q)
    }

    #[allow(clippy::too_many_arguments)]
    fn subscribe(
        &self,
        from: &str,
        session: u64,
        sub: u64,
        vhost: &str,
        name: &str,
        tag: String,
        no_ack: bool,
        exclusive: bool,
        priority: i64,
        arguments: amq_protocol::types::FieldTable,
        credit: u64,
    ) -> Reply {
        let q = match self.queue(vhost, name) {
            Ok(q) => q,
            Err(e) => return refused(e),
        };
        if q.is_stream() {
            return refused(AmqpError::not_implemented(format!(
                "consuming stream queue '{name}' in vhost '{vhost}' through another node is not \
                 supported: consume through the node it lives on"
            )));
        }
        let s = self.session(session, from);
        if s.state.lock().subs.contains_key(&sub) {
            warn!(node = from, "a subscription id used twice: refused");
            return refused(AmqpError::precondition("subscription id in use"));
        }
        let proxy = Arc::new(Sub {
            id: sub,
            session: s.clone(),
            queue: Arc::downgrade(&q),
            granted: AtomicU64::new(credit),
            sent: AtomicU64::new(0),
        });
        let consumer = Arc::new(Consumer {
            tag,
            no_ack,
            exclusive,
            prefetch: 0,
            priority,
            unacked: AtomicU32::new(0),
            cancelled: AtomicBool::new(false),
            sink: proxy.clone(),
            stream: None,
            arguments,
            follower: Default::default(),
        });
        if let Err(e) = q.add_consumer(consumer.clone()) {
            return refused(e);
        }
        s.state.lock().subs.insert(sub, (proxy, consumer));
        if s.ended.load(Ordering::Relaxed) {
            // Ended meanwhile by the lease: undo.
            let taken = s.state.lock().subs.remove(&sub);
            if let Some((p, c)) = taken {
                self.detach(&p, &c);
            }
            return refused(AmqpError::channel(541, "the session ended"));
        }
        q.dispatch();
        Reply::Subscribed { sub }
    }

    async fn pull(&self, session: u64, received: u64, subs: Vec<u64>) -> Reply {
        let Some(s) = self.known(session) else {
            return Reply::UnknownSession;
        };
        struct Pulling(Arc<Session>);
        impl Drop for Pulling {
            fn drop(&mut self) {
                self.0.touch();
                self.0.pulling.fetch_sub(1, Ordering::Relaxed);
            }
        }
        s.pulling.fetch_add(1, Ordering::Relaxed);
        let _pulling = Pulling(s.clone());
        let deadline = Instant::now() + HOLD;
        let mut checked = false;
        loop {
            let notified = s.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if s.ended.load(Ordering::Relaxed) {
                return Reply::UnknownSession;
            }
            {
                let mut st = s.state.lock();
                if let Some((seq, d, g)) = &st.last {
                    if *seq > received {
                        // Not received (the answer was lost): again.
                        return Reply::Batch {
                            seq: *seq,
                            deliveries: d.clone(),
                            gone: g.clone(),
                        };
                    }
                    st.last = None;
                }
                if !checked {
                    checked = true;
                    for id in &subs {
                        if !st.subs.contains_key(id) && !st.gone.contains(id) {
                            st.gone.push(*id);
                        }
                    }
                }
                if !st.outbox.is_empty() || !st.gone.is_empty() {
                    let mut bytes = 0;
                    let n = st
                        .outbox
                        .iter()
                        .take_while(|d| {
                            let first = bytes == 0;
                            bytes += d.size();
                            first || bytes <= BATCH_BYTES
                        })
                        .count();
                    let deliveries: Vec<Delivery> = st.outbox.drain(..n).collect();
                    let gone = std::mem::take(&mut st.gone);
                    st.seq += 1;
                    let seq = st.seq;
                    st.last = Some((seq, deliveries.clone(), gone.clone()));
                    return Reply::Batch {
                        seq,
                        deliveries,
                        gone,
                    };
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Reply::Batch { seq: 0, deliveries: Vec::new(), gone: Vec::new() };
                }
            }
        }
    }

    fn settle(
        &self,
        session: u64,
        acks: Vec<u64>,
        requeue: Vec<u64>,
        drop: Vec<u64>,
        grants: Vec<(u64, u64)>,
        cancel: Vec<u64>,
    ) -> Reply {
        let Some(s) = self.known(session) else {
            debug!(session, "settlements for an unknown session: ignored");
            return Reply::UnknownSession;
        };
        // Cancelled consumers detach first (what they hold stays held: the other node still
        // acks or returns it), then the settlements, then new credit.
        let cancelled: Vec<(Arc<Sub>, Arc<Consumer>)> = {
            let mut st = s.state.lock();
            cancel.iter().filter_map(|id| st.subs.remove(id)).collect()
        };
        for (sub, c) in &cancelled {
            self.detach(sub, c);
        }
        let (acked, back, dead) = {
            let mut st = s.state.lock();
            let mut take = |ids: Vec<u64>| -> Vec<Held> {
                ids.into_iter()
                    .filter_map(|id| {
                        let h = st.held.remove(&id);
                        if h.is_none() {
                            debug!(id, "a settlement for an unknown delivery: ignored");
                        }
                        h
                    })
                    .collect()
            };
            (take(acks), take(requeue), take(drop))
        };
        settle_held(acked, back, dead);
        let subs: Vec<(Arc<Sub>, Arc<Consumer>, u64)> = {
            let st = s.state.lock();
            grants
                .into_iter()
                .filter_map(|(id, total)| {
                    st.subs.get(&id).map(|(p, c)| (p.clone(), c.clone(), total))
                })
                .collect()
        };
        for (sub, c, total) in subs {
            if sub.granted.fetch_max(total, Ordering::Relaxed) < total {
                if let Some(q) = self.queue_of(&sub, &c) {
                    q.dispatch();
                }
            }
        }
        Reply::Done
    }

    fn get(&self, from: &str, session: u64, vhost: &str, name: &str, no_ack: bool) -> Reply {
        let q = match self.queue(vhost, name) {
            Ok(q) => q,
            Err(e) => return refused(e),
        };
        if q.is_stream() {
            return refused(AmqpError::not_implemented(format!(
                "basic.get not supported by stream queues queue '{name}' in vhost '{vhost}'"
            )));
        }
        let Some((entry, left)) = q.get(no_ack) else {
            return Reply::Got {
                delivery: None,
                left: 0,
            };
        };
        let s = self.session(session, from);
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let m = &entry.msg;
        let d = Delivery {
            sub: 0,
            id,
            redelivered: entry.redelivered,
            exchange: m.exchange.clone(),
            routing_key: m.routing_key.bytes(),
            properties: m.properties.raw.bytes(),
            body: m.body.bytes(),
        };
        if !no_ack {
            s.state.lock().held.insert(
                id,
                Held {
                    queue: q,
                    entry,
                    consumer: None,
                },
            );
        }
        Reply::Got {
            delivery: Some(d),
            left,
        }
    }
}

/// Settle held deliveries as a channel settles its own: per queue, acked ones dropped,
/// returned ones back (redelivered), rejected ones dead-lettered where the queue says so.
fn settle_held(acked: Vec<Held>, back: Vec<Held>, dead: Vec<Held>) {
    struct Run {
        queue: Arc<Queue>,
        done: u64,
        back: Vec<QEntry>,
        dead: Vec<QEntry>,
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut add = |h: Held, kind: u8| {
        if let Some(c) = &h.consumer {
            let _ = c
                .unacked
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        let i = match runs.iter().position(|r| Arc::ptr_eq(&r.queue, &h.queue)) {
            Some(i) => i,
            None => {
                runs.push(Run {
                    queue: h.queue.clone(),
                    done: 0,
                    back: Vec::new(),
                    dead: Vec::new(),
                });
                runs.len() - 1
            }
        };
        let r = &mut runs[i];
        match kind {
            0 => r.done += 1,
            1 => r.back.push(h.entry),
            _ => {
                r.done += 1;
                if r.queue.dead_letter.is_some() {
                    r.dead.push(h.entry);
                }
            }
        }
    };
    for h in acked {
        add(h, 0);
    }
    for h in back {
        add(h, 1);
    }
    for h in dead {
        add(h, 2);
    }
    for r in runs {
        r.queue.settle(r.done, r.back);
        if !r.dead.is_empty() {
            r.queue.dead_letter(r.dead, Reason::Rejected);
        }
    }
}

impl ConsumeService for Server {
    fn serve(&self, from: String, req: Request) -> Pin<Box<dyn Future<Output = Reply> + Send>> {
        // Everything but a pull is answered at once.
        let now = match req {
            Request::Pull {
                session,
                received,
                subs,
            } => {
                return match self.me.upgrade() {
                    Some(s) => Box::pin(async move { s.pull(session, received, subs).await }),
                    None => Box::pin(async { Reply::UnknownSession }),
                };
            }
            Request::Subscribe {
                session,
                sub,
                vhost,
                queue,
                tag,
                no_ack,
                exclusive,
                priority,
                arguments,
                credit,
            } => self.subscribe(
                &from, session, sub, &vhost, &queue, tag, no_ack, exclusive, priority, arguments,
                credit,
            ),
            Request::Settle {
                session,
                acks,
                requeue,
                drop,
                grants,
                cancel,
            } => self.settle(session, acks, requeue, drop, grants, cancel),
            Request::Get {
                session,
                vhost,
                queue,
                no_ack,
            } => self.get(&from, session, &vhost, &queue, no_ack),
            Request::Purge { vhost, queue } => match self.queue(&vhost, &queue) {
                Ok(q) if q.is_stream() => refused(AmqpError::not_implemented(format!(
                    "queue.purge not supported by stream queues queue '{queue}' in vhost \
                     '{vhost}'"
                ))),
                Ok(q) => Reply::Count {
                    messages: q.purge(),
                    consumers: 0,
                },
                Err(e) => refused(e),
            },
            Request::Counts { vhost, queue } => match self.queue(&vhost, &queue) {
                Ok(q) => {
                    let c = q.counts();
                    Reply::Count {
                        messages: c.ready,
                        consumers: c.consumers,
                    }
                }
                Err(e) => refused(e),
            },
            Request::End { session } => {
                if let Some(s) = self.sessions.get(&session).map(|s| s.clone()) {
                    self.end(&s);
                }
                Reply::Done
            }
        };
        Box::pin(async move { now })
    }
}
