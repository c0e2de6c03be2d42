//! A remote consumer's (or a basic.get's) end on this node: the proxy behind a proxy queue.
//! It is bound to a subscription on the node that serves the queue, or, for a quorum queue
//! this node leads, to the queue itself; a quorum queue's consumer follows the queue's leader
//! from bind to bind (`follow`).

use super::*;

/// A delivery id as the channel sees it: the serving node's id, under the bind's generation,
/// so that a settlement goes back to the subscription that delivered it.
const GEN_SHIFT: u32 = 48;
const ID_MASK: u64 = (1 << GEN_SHIFT) - 1;

/// What serves a proxy: one subscription (or basic.get) on one serving node, or, for a quorum
/// queue this node leads, the queue itself (the consumer attached to it directly).
#[derive(Debug)]
pub(super) struct Bind {
    pub(super) gen: u64,
    pub(super) via: Via,
}

#[derive(Debug)]
pub(super) enum Via {
    Node {
        session: Arc<Session>,
        /// 0 for basic.get.
        sub: u64,
    },
    Here(Arc<Queue>),
}

impl Bind {
    fn node(&self) -> Option<(&Arc<Session>, u64)> {
        match &self.via {
            Via::Node { session, sub } => Some((session, *sub)),
            Via::Here(_) => None,
        }
    }
}

/// A remote consumer's (or a basic.get's) end on this node.
#[derive(Debug)]
pub struct Proxy {
    /// The subscription that serves it now (last), and the earlier ones whose sessions live on
    /// (settlements of what they delivered go back to them).
    pub(super) binds: Mutex<Vec<Bind>>,
    pub(super) next_gen: AtomicU64,
    /// A consumer's (not a basic.get's).
    pub(super) consumer: bool,
    pub(super) no_ack: bool,
    /// For a quorum queue's consumer: how to subscribe again when its serving node stops
    /// serving it (the leader moved, or died).
    pub(super) follow: Option<Follow>,
    /// A task subscribes again.
    pub(super) following: AtomicBool,
    /// Ended for good: cancelled by the client, or lost (queue deleted, node gone).
    pub(super) gone: AtomicBool,
    pub(super) state: Mutex<ProxyState>,
    /// The proxy queue, for deliveries that arrive.
    pub(super) queue: Mutex<std::sync::Weak<Queue>>,
    pub(super) memory: &'static crate::broker::memory::MemoryMonitor,
}

/// What a quorum queue's consumer needs to subscribe again.
#[derive(Debug)]
pub(super) struct Follow {
    pub(super) sessions: Sessions,
    pub(super) vhost: std::sync::Weak<VHost>,
    pub(super) queue: String,
    pub(super) spec: ConsumeSpec,
}

#[derive(Debug, Default)]
pub(super) struct ProxyState {
    /// Deliveries received and not yet handed to the client, with their bind's generation.
    pub(super) buffer: VecDeque<(u64, Delivery)>,
    /// Credit granted to the current subscription, in all.
    pub(super) granted: u64,
}

/// Why a subscription was not made.
pub(super) enum BindError {
    /// The serving node refused it (its reply code and text).
    Refused(AmqpError),
    /// The serving node could not be asked, or the session ended.
    Unreachable(String),
}

impl Proxy {
    /// The subscription serving it now, if a node does.
    fn current(&self) -> Option<(Arc<Session>, u64, u64)> {
        let binds = self.binds.lock();
        let b = binds.last()?;
        b.node().map(|(s, sub)| (s.clone(), sub, b.gen))
    }

    /// The queue serving it now, if this node leads it.
    fn current_here(&self) -> Option<Arc<Queue>> {
        match &self.binds.lock().last()?.via {
            Via::Here(q) => Some(q.clone()),
            Via::Node { .. } => None,
        }
    }

    /// The client's consumer, once attached.
    fn consumer_of(&self) -> Option<Arc<crate::broker::queue::Consumer>> {
        let q = self.queue.lock().upgrade()?;
        q.consumer_list().into_iter().next()
    }

    /// A new bind, current from now on. Earlier subscriptions are kept while their sessions
    /// live: what they delivered is settled there.
    fn push_bind(&self, via: Via) -> u64 {
        let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let mut binds = self.binds.lock();
        binds.retain(|b| {
            b.node()
                .is_some_and(|(s, _)| !s.ended.load(Ordering::Relaxed))
        });
        binds.push(Bind { gen, via });
        gen
    }

    fn drop_bind(&self, gen: u64) {
        self.binds.lock().retain(|b| b.gen != gen);
    }

    /// Served by this node's own live view of the quorum queue `record`: the consumer is
    /// attached to it (now, or when the channel attaches it).
    pub(super) fn bind_here(self: &Arc<Self>, record: &Arc<Queue>) -> Result<(), BindError> {
        let gen = self.push_bind(Via::Here(record.clone()));
        let Some(c) = self.consumer_of() else {
            return Ok(());
        };
        if let Err(e) = self.attach_here(record, &c) {
            self.drop_bind(gen);
            return Err(e);
        }
        record.dispatch();
        Ok(())
    }

    /// Attach the client's consumer to the queue this node leads; if it stepped down
    /// meanwhile, undo (the caller follows the next leader).
    fn attach_here(&self, record: &Arc<Queue>, c: &Arc<Consumer>) -> Result<(), BindError> {
        record.add_consumer(c.clone()).map_err(BindError::Refused)?;
        if !record.replica().is_some_and(|r| r.is_live()) {
            record.remove_consumer(c);
            return Err(BindError::Unreachable(
                "this node no longer leads the queue".into(),
            ));
        }
        Ok(())
    }

    /// The channel attached its consumer to the proxy queue: tie it to this proxy, and to the
    /// queue itself when this node leads it.
    pub(crate) fn attached(self: &Arc<Self>, c: &Arc<Consumer>) -> AmqpResult<()> {
        let _ = c.follower.set(Arc::downgrade(self));
        let Some(record) = self.current_here() else {
            return Ok(());
        };
        match self.attach_here(&record, c) {
            Ok(()) => Ok(()),
            Err(BindError::Refused(e)) => Err(e),
            Err(BindError::Unreachable(_)) => {
                self.start_following();
                Ok(())
            }
        }
    }

    /// The quorum queue this node led, which served this proxy's consumer, stepped down.
    pub(crate) fn stepped_down(self: &Arc<Self>, record: &Queue) {
        if self.gone.load(Ordering::Relaxed) {
            return;
        }
        if self
            .current_here()
            .is_some_and(|q| std::ptr::eq(&*q, record))
        {
            self.start_following();
        }
    }

    /// The queue's leader is `node` now (this node's member of its group saw the change): a
    /// consumer served by another node leaves its subscription there (what it holds goes back)
    /// and follows at once, instead of waiting for that node's session to fail (a paused
    /// leader answers nothing for the link's 5 s).
    pub fn leader_moved(self: &Arc<Self>, node: &str) {
        if self.gone.load(Ordering::Relaxed) || self.follow.is_none() {
            return;
        }
        let Some((s, sub, gen)) = self.current() else {
            return;
        };
        if sub == 0 || s.node == node {
            return;
        }
        self.leave(&s, sub, gen);
        self.start_following();
    }

    /// End subscription `sub` (of bind `gen`) on `s`'s node: what it sent and was not handed
    /// to the client goes back there.
    fn leave(&self, s: &Session, sub: u64, gen: u64) {
        let buffered: Vec<u64> = self
            .state
            .lock()
            .buffer
            .drain(..)
            .filter(|(g, _)| *g == gen)
            .map(|(_, d)| d.id)
            .collect();
        s.state.lock().proxies.remove(&sub);
        s.queue_settle(|p| {
            p.cancel.push(sub);
            if !self.no_ack {
                p.requeue.extend(buffered);
            }
        });
    }

    fn start_following(self: &Arc<Self>) {
        if !self.following.swap(true, Ordering::Relaxed) {
            tokio::spawn(self.clone().follow());
        }
    }

    /// Subscribe on the session's node, as this proxy's current subscription.
    pub(super) async fn bind(
        self: &Arc<Self>,
        s: &Arc<Session>,
        vhost: &str,
        queue: &str,
        spec: &ConsumeSpec,
    ) -> Result<(), BindError> {
        let sub = s.next_sub.fetch_add(1, Ordering::Relaxed);
        let credit = if spec.no_ack || spec.prefetch == 0 {
            WINDOW
        } else {
            spec.prefetch as u64
        };
        let gen = self.push_bind(Via::Node {
            session: s.clone(),
            sub,
        });
        self.state.lock().granted = credit;
        // Registered first: deliveries may arrive before the answer.
        s.state.lock().proxies.insert(
            sub,
            Subscribed {
                proxy: self.clone(),
                gen,
                confirmed: false,
            },
        );
        let req = Request::Subscribe {
            session: s.id,
            sub,
            vhost: vhost.to_owned(),
            queue: queue.to_owned(),
            tag: spec.tag.clone(),
            no_ack: spec.no_ack,
            exclusive: spec.exclusive,
            priority: spec.priority,
            arguments: spec.arguments.clone(),
            credit,
        };
        let r = s.cluster.consume_call(&s.node, &req, CALL_TIMEOUT).await;
        let fail = |e: BindError| {
            s.state.lock().proxies.remove(&sub);
            self.drop_bind(gen);
            Err(e)
        };
        match r {
            Ok(Reply::Subscribed { .. }) => {
                if let Some(p) = s.state.lock().proxies.get_mut(&sub) {
                    p.confirmed = true;
                }
                s.known();
                if s.ended.load(Ordering::Relaxed) {
                    return fail(BindError::Unreachable("the session ended".into()));
                }
                Ok(())
            }
            Ok(Reply::Refused(r)) => fail(BindError::Refused(refusal(&r))),
            Ok(other) => fail(BindError::Refused(unexpected(&s.node, other))),
            Err(e) => {
                // It may have been taken: cancel, in case.
                s.queue_settle(|p| p.cancel.push(sub));
                fail(BindError::Unreachable(e))
            }
        }
    }

    /// Hand the deliveries received to the consumer, as far as its channel takes them (the
    /// proxy queue's dispatch).
    pub(crate) fn pump(&self, q: &Arc<Queue>) {
        let Some(c) = q.consumer_list().into_iter().next() else {
            return;
        };
        if self.gone.load(Ordering::Relaxed) && self.consumer {
            // Lost before the consumer was attached.
            if !c.cancelled.load(Ordering::Relaxed) {
                q.remove_consumer(&c);
                c.sink.cancelled(&c);
            }
            return;
        }
        if let Some(record) = self.current_here() {
            record.dispatch();
            return;
        }
        let mut handed = 0;
        let mut st = self.state.lock();
        let current = self.binds.lock().last().map(|b| b.gen);
        while !st.buffer.is_empty() {
            if c.cancelled.load(Ordering::Relaxed) || !c.sink.ready(&c, q) {
                break;
            }
            let (gen, d) = st.buffer.pop_front().expect("not empty");
            let mut entry = match entry_of(self.memory, d) {
                Ok(e) => e,
                Err(e) => {
                    warn!("{e}: dropped");
                    continue;
                }
            };
            entry.seq |= gen << GEN_SHIFT;
            if !c.no_ack {
                c.unacked.fetch_add(1, Ordering::Relaxed);
            }
            c.sink.deliver(&c, q, entry);
            if Some(gen) == current {
                handed += 1;
            }
        }
        if self.no_ack && handed > 0 {
            st.granted += handed;
            let total = st.granted;
            drop(st);
            if let Some((s, sub, _)) = self.current() {
                s.queue_settle(|p| {
                    p.grants.insert(sub, total);
                });
            }
        }
    }

    /// The client settled deliveries of this proxy (by the serving node's ids): each goes back
    /// to the subscription that delivered it; the current one is granted as much again.
    pub(crate) fn settle(&self, acked: Vec<QEntry>, back: Vec<QEntry>, dead: Vec<QEntry>) {
        let (binds, current): (Vec<(u64, Arc<Session>, u64)>, u64) = {
            let b = self.binds.lock();
            let Some(current) = b.last().map(|b| b.gen) else {
                return;
            };
            let nodes = b
                .iter()
                .filter_map(|b| b.node().map(|(s, sub)| (b.gen, s.clone(), sub)))
                .collect();
            (nodes, current)
        };
        let ids = |v: &[QEntry], gen: u64| -> Vec<u64> {
            v.iter()
                .filter(|e| e.seq >> GEN_SHIFT == gen)
                .map(|e| e.seq & ID_MASK)
                .collect()
        };
        for (gen, s, sub) in binds {
            let (acked, back, dead) = (ids(&acked, gen), ids(&back, gen), ids(&dead, gen));
            let n = (acked.len() + back.len() + dead.len()) as u64;
            if n == 0 {
                continue;
            }
            let grant = (gen == current && !self.no_ack && sub != 0).then(|| {
                let mut st = self.state.lock();
                st.granted += n;
                st.granted
            });
            s.queue_settle(|p| {
                p.acks.extend(acked);
                p.requeue.extend(back);
                p.drop.extend(dead);
                if let Some(total) = grant {
                    p.grants.insert(sub, total);
                }
            });
        }
    }

    /// The client's consumer went (basic.cancel, channel or connection closed): end the
    /// subscription; what was received and not handed to the client goes back.
    pub(crate) fn cancel(&self) {
        if self.gone.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(record) = self.current_here() {
            if let Some(c) = self.consumer_of() {
                record.remove_consumer(&c);
            }
            return;
        }
        let Some((s, sub, gen)) = self.current() else {
            return;
        };
        if sub == 0 {
            return;
        }
        self.leave(&s, sub, gen);
    }

    /// The serving node no longer serves subscription `sub` of session `s`. If it is this
    /// proxy's current one, a quorum queue's consumer subscribes again (with the queue's next
    /// leader); any other is cancelled here (basic.cancel to the client if it asked for that).
    pub(super) fn lost(self: &Arc<Self>, s: &Session, sub: u64) {
        if self.gone.load(Ordering::Relaxed) {
            return;
        }
        let current = self
            .binds
            .lock()
            .last()
            .and_then(|b| b.node())
            .is_some_and(|(bs, bsub)| std::ptr::eq(&**bs, s) && bsub == sub);
        if !current {
            return;
        }
        // The serving node takes back what it sent and this node did not hand over.
        self.state.lock().buffer.clear();
        if self.follow.is_some() {
            self.start_following();
        } else {
            self.end();
        }
    }

    /// Lost for good: the client's consumer is cancelled.
    fn end(&self) {
        if self.gone.swap(true, Ordering::Relaxed) {
            return;
        }
        self.state.lock().buffer.clear();
        let Some(q) = self.queue.lock().upgrade() else {
            return;
        };
        for c in q.consumer_list() {
            q.remove_consumer(&c);
            c.sink.cancelled(&c);
        }
    }

    /// A quorum queue's consumer whose serving node stopped serving it: subscribe again, with
    /// whichever node leads the queue now, until that works, the client cancels, or the queue
    /// is gone. Deliveries the old leader made stay the client's to settle: acks go to the old
    /// node while its session lives; otherwise the queue's new leader delivers them again.
    async fn follow(self: Arc<Self>) {
        let Some(f) = &self.follow else {
            return;
        };
        let mut wait = Duration::from_millis(50);
        let mut tries = 0u32;
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
            tries += 1;
            if self.gone.load(Ordering::Relaxed) {
                break;
            }
            let Some(v) = f.vhost.upgrade() else {
                break;
            };
            let Some(record) = v.find_queue(&f.queue) else {
                info!(
                    "consumer '{}' of queue '{}' in vhost '{}' is cancelled: the queue is gone",
                    f.spec.tag, f.queue, v.name
                );
                self.end();
                break;
            };
            let (r, home) = if record.replica().is_some_and(|r| r.is_live()) {
                let here = crate::config::this_node().to_owned();
                (self.bind_here(&record), here)
            } else {
                let (cluster, home) = match Client::target(&v, &record).await {
                    Ok(t) => t,
                    Err(e) => {
                        if tries == 1 {
                            info!(
                                "consumer '{}' of quorum queue '{}' waits for its leader: {e}",
                                f.spec.tag, f.queue
                            );
                        }
                        continue;
                    }
                };
                let s = session_with(&f.sessions, &cluster, &home);
                (self.bind(&s, &v.name, &f.queue, &f.spec).await, home)
            };
            match r {
                Ok(()) => {
                    info!(
                        "consumer '{}' of quorum queue '{}' in vhost '{}' is served by {home} now",
                        f.spec.tag, f.queue, v.name
                    );
                    self.following.store(false, Ordering::Relaxed);
                    if self.gone.swap(false, Ordering::Relaxed) {
                        // Cancelled by the client meanwhile.
                        self.cancel();
                    }
                    return;
                }
                Err(BindError::Refused(e)) if !retried(&e) => {
                    info!(
                        "consumer '{}' of quorum queue '{}' is cancelled: {home} refused it: {e:?}",
                        f.spec.tag, f.queue
                    );
                    self.end();
                    break;
                }
                Err(BindError::Refused(e)) => debug!("{home} cannot serve it yet: {e:?}"),
                Err(BindError::Unreachable(e)) => debug!("cannot reach {home} yet: {e}"),
            }
        }
        self.following.store(false, Ordering::Relaxed);
    }
}

/// A refusal a following consumer asks again after (the node it asked does not serve the queue,
/// or not yet); any other ends it.
pub(super) fn retried(e: &AmqpError) -> bool {
    match e {
        AmqpError::Channel(c) => c.code == crate::error::code::INTERNAL_ERROR,
        AmqpError::Connection(c) => c.code == crate::error::code::INTERNAL_ERROR,
    }
}
