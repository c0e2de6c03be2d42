//! Queues served through another node. A classic queue lives on its home node (A); a client
//! on any other node (B) consumes, gets and purges it as if it were local. This module is the
//! model's side of both ends (the wire is `cluster::subscribe`):
//!
//! - on B (`Client`, this file): a session per serving node, a pull loop that receives
//!   deliveries and hands them to the consumers' channels, and a settle loop that sends acks,
//!   returns, rejects, cancels and new credit back in batches. Each remote consumer gets a
//!   *proxy queue* of its own: a `Queue` with `proxy` set, never registered in the vhost, whose
//!   one consumer is the client's. The channel treats it as any queue (delivery tags, prefetch,
//!   unacked list); its dispatch pumps the deliveries received, and its settlements go to A.
//! - on A (`serve::Server`): proxy consumers on the real queue, and what they hold.
//!
//! Credit: A never sends a subscription more than B granted (the consumer's prefetch, or
//! [`WINDOW`] when it has none or does not ack); B grants one more per settled delivery (per
//! delivery handed to the client, without acks).
//!
//! The serving node is looked up (`VHost::home_of`) every time a subscription starts; when it
//! goes away (its session ends) the consumers are cancelled, as RabbitMQ does when a classic
//! queue's node goes down: basic.cancel to clients that announced `consumer_cancel_notify`, a
//! silently dead consumer otherwise.

pub mod serve;

use crate::broker::queue::{QEntry, Queue};
use crate::broker::vhost::VHost;
use crate::cluster::node::Cluster;
use crate::cluster::subscribe::{Delivery, Reply, Request, HOLD, LEASE};
use crate::error::{AmqpError, AmqpResult};
use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// Credit of a consumer without a prefetch limit, or without acks.
pub const WINDOW: u64 = 1000;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// This node's sessions with the nodes that serve its clients' queues.
#[derive(Debug, Default)]
pub struct Client {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

#[derive(Debug, Default)]
struct Pending {
    acks: Vec<u64>,
    requeue: Vec<u64>,
    drop: Vec<u64>,
    grants: HashMap<u64, u64>,
    cancel: Vec<u64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.acks.is_empty()
            && self.requeue.is_empty()
            && self.drop.is_empty()
            && self.grants.is_empty()
            && self.cancel.is_empty()
    }
}

#[derive(Debug, Default)]
struct SessionState {
    proxies: HashMap<u64, Arc<Proxy>>,
    pending: Pending,
}

/// One session with the node serving some of this node's consumers.
#[derive(Debug)]
pub struct Session {
    node: String,
    id: u64,
    cluster: Arc<Cluster>,
    state: Mutex<SessionState>,
    settle_wake: Notify,
    ended: AtomicBool,
    /// The pull loop runs (started once the serving node knows the session).
    pulling: AtomicBool,
    next_sub: AtomicU64,
}

/// A remote consumer's (or a basic.get's) end on this node.
#[derive(Debug)]
pub struct Proxy {
    session: Arc<Session>,
    /// 0 for basic.get.
    sub: u64,
    no_ack: bool,
    /// Subscribe answered: pulls name it.
    confirmed: AtomicBool,
    /// Cancelled by the serving node (queue deleted, node gone).
    gone: AtomicBool,
    state: Mutex<ProxyState>,
    /// The proxy queue, for deliveries that arrive.
    queue: Mutex<std::sync::Weak<Queue>>,
    memory: Arc<crate::broker::memory::MemoryMonitor>,
}

#[derive(Debug, Default)]
struct ProxyState {
    buffer: VecDeque<Delivery>,
    granted: u64,
}

/// What a basic.consume asks of the serving node.
#[derive(Debug, Clone)]
pub struct ConsumeSpec {
    pub tag: String,
    pub no_ack: bool,
    pub exclusive: bool,
    pub priority: i64,
    pub arguments: FieldTable,
    /// The consumer's prefetch (0: none).
    pub prefetch: u32,
}

/// The serving node cannot be reached: RabbitMQ's 404 for a queue whose node is down.
fn unreachable(node: &str, q: &Queue, e: String) -> AmqpError {
    warn!("cannot reach {node}, which serves queue '{}': {e}", q.name);
    if q.durable {
        AmqpError::not_found(format!(
            "home node '{node}' of durable queue '{}' in vhost '{}' is down or inaccessible",
            q.name, q.vhost
        ))
    } else {
        AmqpError::not_found(format!("no queue '{}' in vhost '{}'", q.name, q.vhost))
    }
}

fn refusal(r: &crate::cluster::meta::Refusal) -> AmqpError {
    crate::broker::replicated::refusal_error(r)
}

fn unexpected(node: &str, r: impl std::fmt::Debug) -> AmqpError {
    warn!("unexpected answer from {node}: {r:?}");
    AmqpError::channel(
        crate::error::code::INTERNAL_ERROR,
        format!("unexpected answer from node {node}"),
    )
}

impl Client {
    fn session(&self, cluster: &Arc<Cluster>, node: &str) -> Arc<Session> {
        let mut m = self.sessions.lock();
        if let Some(s) = m.get(node).filter(|s| !s.ended.load(Ordering::Relaxed)) {
            return s.clone();
        }
        let s = Arc::new(Session {
            node: node.to_owned(),
            id: rand::random::<u64>() | 1,
            cluster: cluster.clone(),
            state: Mutex::default(),
            settle_wake: Notify::new(),
            ended: AtomicBool::new(false),
            pulling: AtomicBool::new(false),
            next_sub: AtomicU64::new(1),
        });
        m.insert(node.to_owned(), s.clone());
        tokio::spawn(s.clone().settle_loop());
        s
    }

    /// The serving node of a record queue, and this node's cluster. A quorum queue whose group
    /// has no leader yet (declared a moment ago, or electing one) is waited for, up to 5 s.
    async fn target(v: &VHost, record: &Queue) -> AmqpResult<(Arc<Cluster>, String)> {
        if let Some(r) = record.replica() {
            for _ in 0..100 {
                let known = v.home_of(&record.name);
                if r.is_live()
                    || known
                        .as_deref()
                        .is_some_and(|h| h != crate::config::this_node())
                {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        let cluster = v.cluster.get().cloned().ok_or_else(|| {
            AmqpError::channel(crate::error::code::INTERNAL_ERROR, "not in a cluster")
        })?;
        let home = v
            .home_of(&record.name)
            .or_else(|| record.remote.clone())
            .ok_or_else(|| {
                AmqpError::not_found(format!("no queue '{}' in vhost '{}'", record.name, v.name))
            })?;
        if home == cluster.name {
            // A quorum queue whose leadership is moving here: not served yet.
            return Err(unreachable(&home, record, "its leader is changing".into()));
        }
        Ok((cluster, home))
    }

    /// basic.consume of a queue served by another node: subscribe there, and return the proxy
    /// queue the client's consumer attaches to (then dispatch it). The serving node's refusals
    /// come back with its reply code and text.
    pub async fn subscribe(
        &self,
        v: &Arc<VHost>,
        record: &Arc<Queue>,
        spec: ConsumeSpec,
    ) -> AmqpResult<Arc<Queue>> {
        let (cluster, home) = Self::target(v, record).await?;
        let s = self.session(&cluster, &home);
        let sub = s.next_sub.fetch_add(1, Ordering::Relaxed);
        let credit = if spec.no_ack || spec.prefetch == 0 {
            WINDOW
        } else {
            spec.prefetch as u64
        };
        let proxy = Arc::new(Proxy {
            session: s.clone(),
            sub,
            no_ack: spec.no_ack,
            confirmed: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            state: Mutex::new(ProxyState {
                buffer: VecDeque::new(),
                granted: credit,
            }),
            queue: Mutex::new(std::sync::Weak::new()),
            memory: memory_of(v),
        });
        let q = proxy_queue(v, record, &home, proxy.clone());
        *proxy.queue.lock() = Arc::downgrade(&q);
        // Registered first: deliveries may arrive before the answer.
        s.state.lock().proxies.insert(sub, proxy.clone());
        let req = Request::Subscribe {
            session: s.id,
            sub,
            vhost: v.name.clone(),
            queue: record.name.clone(),
            tag: spec.tag,
            no_ack: spec.no_ack,
            exclusive: spec.exclusive,
            priority: spec.priority,
            arguments: spec.arguments,
            credit,
        };
        let r = cluster.consume_call(&home, &req, CALL_TIMEOUT).await;
        let fail = |e: AmqpError| {
            s.state.lock().proxies.remove(&sub);
            Err(e)
        };
        match r {
            Ok(Reply::Subscribed { .. }) => {
                proxy.confirmed.store(true, Ordering::Relaxed);
                s.known();
                if s.ended.load(Ordering::Relaxed) {
                    return fail(unreachable(&home, record, "the session ended".into()));
                }
                Ok(q)
            }
            Ok(Reply::Refused(r)) => fail(refusal(&r)),
            Ok(other) => fail(unexpected(&home, other)),
            Err(e) => {
                // It may have been taken: cancel, in case.
                s.state.lock().pending.cancel.push(sub);
                s.settle_wake.notify_one();
                fail(unreachable(&home, record, e))
            }
        }
    }

    /// basic.get of a queue served by another node: the message (as an entry of a proxy queue
    /// whose settlements go back there) and the count left, or None.
    pub async fn get(
        &self,
        v: &Arc<VHost>,
        record: &Arc<Queue>,
        no_ack: bool,
    ) -> AmqpResult<Option<(Arc<Queue>, QEntry, u32)>> {
        let (cluster, home) = Self::target(v, record).await?;
        let s = self.session(&cluster, &home);
        let req = Request::Get {
            session: s.id,
            vhost: v.name.clone(),
            queue: record.name.clone(),
            no_ack,
        };
        match cluster.consume_call(&home, &req, CALL_TIMEOUT).await {
            Ok(Reply::Got { delivery: None, .. }) => Ok(None),
            Ok(Reply::Got {
                delivery: Some(d),
                left,
            }) => {
                if !no_ack {
                    // Held there until settled: the session's pulls keep it alive.
                    s.known();
                }
                let proxy = Arc::new(Proxy {
                    session: s.clone(),
                    sub: 0,
                    no_ack,
                    confirmed: AtomicBool::new(true),
                    gone: AtomicBool::new(false),
                    state: Mutex::default(),
                    queue: Mutex::new(std::sync::Weak::new()),
                    memory: memory_of(v),
                });
                let entry = entry_of(&proxy.memory, d).map_err(|e| unexpected(&home, e))?;
                let q = proxy_queue(v, record, &home, proxy);
                Ok(Some((q, entry, left)))
            }
            Ok(Reply::Refused(r)) => Err(refusal(&r)),
            Ok(other) => Err(unexpected(&home, other)),
            Err(e) => Err(unreachable(&home, record, e)),
        }
    }

    async fn count_call(&self, v: &VHost, record: &Queue, purge: bool) -> AmqpResult<(u32, u32)> {
        let (cluster, home) = Self::target(v, record).await?;
        let (vhost, queue) = (v.name.clone(), record.name.clone());
        let req = if purge {
            Request::Purge { vhost, queue }
        } else {
            Request::Counts { vhost, queue }
        };
        match cluster.consume_call(&home, &req, CALL_TIMEOUT).await {
            Ok(Reply::Count {
                messages,
                consumers,
            }) => Ok((messages, consumers)),
            Ok(Reply::Refused(r)) => Err(refusal(&r)),
            Ok(other) => Err(unexpected(&home, other)),
            Err(e) => Err(unreachable(&home, record, e)),
        }
    }

    /// queue.purge of a queue served by another node: how many messages it dropped.
    pub async fn purge(&self, v: &VHost, record: &Queue) -> AmqpResult<u32> {
        self.count_call(v, record, true).await.map(|(n, _)| n)
    }

    /// The ready messages and consumers of a queue served by another node (declare-ok).
    pub async fn counts(&self, v: &VHost, record: &Queue) -> AmqpResult<(u32, u32)> {
        self.count_call(v, record, false).await
    }
}

/// A private queue standing for `record` on this node, through which one consumer (or one
/// get) is served by `home`.
fn proxy_queue(v: &Arc<VHost>, record: &Queue, home: &str, proxy: Arc<Proxy>) -> Arc<Queue> {
    let mut q = Queue::new(
        record.name.clone(),
        v.me.clone(),
        v.clock.clone(),
        v.name.clone(),
        record.durable,
        false,
        None,
        record.arguments.clone(),
    );
    q.remote = Some(home.to_owned());
    q.proxy = Some(proxy);
    Arc::new(q)
}

fn memory_of(v: &VHost) -> Arc<crate::broker::memory::MemoryMonitor> {
    v.memory
        .get()
        .cloned()
        .unwrap_or_else(|| Arc::new(crate::broker::memory::MemoryMonitor::new(u64::MAX)))
}

fn entry_of(
    memory: &Arc<crate::broker::memory::MemoryMonitor>,
    d: Delivery,
) -> Result<QEntry, String> {
    let properties = crate::broker::message::Properties::parse(d.properties)
        .map_err(|e| format!("a delivery with bad properties: {e}"))?;
    let memory = memory.clone();
    let msg = Arc::new(crate::broker::message::Message::new(
        d.exchange,
        d.routing_key,
        properties,
        d.body,
        memory,
    ));
    Ok(QEntry {
        seq: d.id,
        msg,
        redelivered: d.redelivered,
        qid: 0,
        expires: None,
        delivery_count: 0,
        enqueued: 0,
    })
}

impl Session {
    /// The serving node created the session: keep it alive (and receive deliveries).
    fn known(self: &Arc<Self>) {
        if !self.pulling.swap(true, Ordering::Relaxed) {
            tokio::spawn(self.clone().pull_loop());
        }
    }

    async fn pull_loop(self: Arc<Self>) {
        let mut received = 0;
        let mut last_ok = tokio::time::Instant::now();
        let mut logged = false;
        while !self.ended.load(Ordering::Relaxed) {
            let subs: Vec<u64> = self
                .state
                .lock()
                .proxies
                .values()
                .filter(|p| p.confirmed.load(Ordering::Relaxed))
                .map(|p| p.sub)
                .collect();
            let req = Request::Pull {
                session: self.id,
                received,
                subs,
            };
            match self
                .cluster
                .consume_call(&self.node, &req, HOLD + CALL_TIMEOUT)
                .await
            {
                Ok(Reply::Batch {
                    seq,
                    deliveries,
                    gone,
                }) => {
                    last_ok = tokio::time::Instant::now();
                    logged = false;
                    if seq > received {
                        received = seq;
                        self.distribute(deliveries, gone);
                    }
                }
                Ok(Reply::UnknownSession) => {
                    self.end(&format!(
                        "{} no longer serves this node's session",
                        self.node
                    ));
                }
                Ok(other) => warn!("unexpected answer from {} to a pull: {other:?}", self.node),
                Err(e) => {
                    if last_ok.elapsed() > LEASE {
                        self.end(&format!("{} is unreachable: {e}", self.node));
                    } else {
                        if !logged {
                            warn!("cannot reach {} for its deliveries yet: {e}", self.node);
                            logged = true;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    fn distribute(&self, deliveries: Vec<Delivery>, gone: Vec<u64>) {
        let mut touched: Vec<Arc<Proxy>> = Vec::new();
        {
            let st = self.state.lock();
            for d in deliveries {
                // A subscription cancelled here meanwhile: the serving node takes its
                // deliveries back with the cancel (or drops them, without acks).
                match st.proxies.get(&d.sub) {
                    Some(p) => {
                        p.state.lock().buffer.push_back(d);
                        if !touched.iter().any(|t| Arc::ptr_eq(t, p)) {
                            touched.push(p.clone());
                        }
                    }
                    None => debug!(
                        sub = d.sub,
                        "a delivery from {} for a subscription ended here: left to it", self.node
                    ),
                }
            }
        }
        for p in touched {
            if let Some(q) = p.queue.lock().upgrade() {
                q.dispatch();
            }
        }
        let lost: Vec<Arc<Proxy>> = {
            let mut st = self.state.lock();
            gone.iter().filter_map(|id| st.proxies.remove(id)).collect()
        };
        for p in lost {
            p.lost();
        }
    }

    /// The serving node is gone (or forgot this session): consumers are cancelled, settlements
    /// of what they had are accepted and dropped.
    fn end(&self, why: &str) {
        if self.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        info!("consumers served by {} end: {why}", self.node);
        let proxies: Vec<Arc<Proxy>> = {
            let mut st = self.state.lock();
            st.pending = Pending::default();
            st.proxies.drain().map(|(_, p)| p).collect()
        };
        for p in proxies {
            p.lost();
        }
        self.settle_wake.notify_one();
    }

    async fn settle_loop(self: Arc<Self>) {
        loop {
            if self.ended.load(Ordering::Relaxed) {
                return;
            }
            let p = std::mem::take(&mut self.state.lock().pending);
            if p.is_empty() {
                self.settle_wake.notified().await;
                continue;
            }
            let req = Request::Settle {
                session: self.id,
                acks: p.acks,
                requeue: p.requeue,
                drop: p.drop,
                grants: p.grants.into_iter().collect(),
                cancel: p.cancel,
            };
            // Sent again until answered (settling twice is harmless: an id settled is
            // forgotten), or until the session ends: then the serving node has ended it too, or
            // will within its lease, and takes everything back.
            let mut logged = false;
            loop {
                match self
                    .cluster
                    .consume_call(&self.node, &req, CALL_TIMEOUT)
                    .await
                {
                    Ok(_) => break,
                    Err(_) if self.ended.load(Ordering::Relaxed) => break,
                    Err(e) => {
                        if !logged {
                            warn!("cannot send settlements to {} yet: {e}", self.node);
                            logged = true;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    fn queue_settle(&self, f: impl FnOnce(&mut Pending)) {
        if self.ended.load(Ordering::Relaxed) {
            return;
        }
        f(&mut self.state.lock().pending);
        self.settle_wake.notify_one();
    }
}

impl Proxy {
    /// Hand the deliveries received to the consumer, as far as its channel takes them (the
    /// proxy queue's dispatch).
    pub(crate) fn pump(&self, q: &Arc<Queue>) {
        let Some(c) = q.consumer_list().into_iter().next() else {
            return;
        };
        if self.gone.load(Ordering::Relaxed) && self.sub != 0 {
            // Lost before the consumer was attached.
            if !c.cancelled.load(Ordering::Relaxed) {
                q.remove_consumer(&c);
                c.sink.cancelled(&c);
            }
            return;
        }
        let mut handed = 0;
        let mut st = self.state.lock();
        while !st.buffer.is_empty() {
            if c.cancelled.load(Ordering::Relaxed) || !c.sink.ready(&c, q) {
                break;
            }
            let d = st.buffer.pop_front().expect("not empty");
            let entry = match entry_of(&self.memory, d) {
                Ok(e) => e,
                Err(e) => {
                    warn!("{e}: dropped");
                    continue;
                }
            };
            if !c.no_ack {
                c.unacked.fetch_add(1, Ordering::Relaxed);
            }
            c.sink.deliver(&c, q, entry);
            handed += 1;
        }
        if self.no_ack && handed > 0 {
            st.granted += handed;
            let total = st.granted;
            drop(st);
            let sub = self.sub;
            self.session.queue_settle(|p| {
                p.grants.insert(sub, total);
            });
        }
    }

    /// The client settled deliveries of this proxy (by the serving node's ids).
    pub(crate) fn settle(&self, acked: Vec<QEntry>, back: Vec<QEntry>, dead: Vec<QEntry>) {
        let n = (acked.len() + back.len() + dead.len()) as u64;
        let grant = (!self.no_ack && self.sub != 0 && n > 0).then(|| {
            let mut st = self.state.lock();
            st.granted += n;
            st.granted
        });
        let sub = self.sub;
        self.session.queue_settle(|p| {
            p.acks.extend(acked.iter().map(|e| e.seq));
            p.requeue.extend(back.iter().map(|e| e.seq));
            p.drop.extend(dead.iter().map(|e| e.seq));
            if let Some(total) = grant {
                p.grants.insert(sub, total);
            }
        });
    }

    /// The client's consumer went (basic.cancel, channel or connection closed): end the
    /// subscription; what was received and not handed to the client goes back.
    pub(crate) fn cancel(&self) {
        if self.sub == 0 || self.gone.swap(true, Ordering::Relaxed) {
            return;
        }
        let buffered: Vec<u64> = self.state.lock().buffer.drain(..).map(|d| d.id).collect();
        let sub = self.sub;
        let s = &self.session;
        s.state.lock().proxies.remove(&sub);
        s.queue_settle(|p| {
            p.cancel.push(sub);
            if !self.no_ack {
                p.requeue.extend(buffered);
            }
        });
    }

    /// The serving node no longer serves this consumer: cancel it here (basic.cancel to the
    /// client if it asked for that).
    fn lost(&self) {
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
}
