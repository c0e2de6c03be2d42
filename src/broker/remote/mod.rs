//! Queues served through another node. A classic queue lives on its home node (A); a client
//! on any other node (B) consumes, gets and purges it as if it were local. This module is the
//! model's side of both ends (the wire is `cluster::subscribe`):
//!
//! - on B (`Client`, this file): a session per serving node, a pull loop that receives
//!   deliveries and hands them to the consumers' channels, and a settle loop that sends acks,
//!   returns, rejects, cancels and new credit back in batches. Each remote consumer gets a
//!   *proxy queue* of its own: a `Queue` with `proxy` set, never registered in the vhost, whose
//!   one consumer is the client's. The channel treats it as any queue (delivery tags, prefetch,
//!   unacked list); its dispatch pumps the deliveries received, and its settlements go to A
//!   (`proxy`).
//! - on A (`serve::Server`): proxy consumers on the real queue, and what they hold.
//!
//! Credit: A never sends a subscription more than B granted (the consumer's prefetch, or
//! [`WINDOW`] when it has none or does not ack); B grants one more per settled delivery (per
//! delivery handed to the client, without acks).
//!
//! The serving node is looked up (`VHost::home_of`) every time a subscription starts; when it
//! goes away (its session ends) a classic queue's consumers are cancelled, as RabbitMQ does
//! when a classic queue's node goes down: basic.cancel to clients that announced
//! `consumer_cancel_notify`, a silently dead consumer otherwise. A quorum queue's consumers
//! (every one of them, also on the node that leads the queue) follow its leader instead: they
//! subscribe again with the next one, as RabbitMQ keeps them across a leader change.

mod proxy;
pub mod serve;

pub use proxy::Proxy;
use proxy::{retried, Bind, BindError, Follow, Via};

use crate::broker::queue::{Consumer, QEntry, Queue};
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
/// How long a refusal saying the queue is not served there yet is asked again.
const SETTLING: Duration = Duration::from_secs(5);

/// Runs `once` again every 50 ms, for up to `SETTLING`, while it fails with a refusal a quorum
/// queue's new leader gives before it serves (`retried`); its first other answer is returned.
async fn settled<T, F: std::future::Future<Output = AmqpResult<T>>>(
    mut once: impl FnMut() -> F,
) -> AmqpResult<T> {
    let deadline = tokio::time::Instant::now() + SETTLING;
    loop {
        match once().await {
            Err(e) if retried(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

/// This node's sessions with the nodes that serve its clients' queues.
#[derive(Debug, Default)]
pub struct Client {
    sessions: Sessions,
}

/// The sessions by serving node (shared with the consumers that subscribe again on their own).
type Sessions = Arc<Mutex<HashMap<String, Arc<Session>>>>;

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

/// A subscription of this session: its proxy, and which of the proxy's binds it is.
#[derive(Debug)]
struct Subscribed {
    proxy: Arc<Proxy>,
    gen: u64,
    /// Subscribe answered: pulls name it.
    confirmed: bool,
}

#[derive(Debug, Default)]
struct SessionState {
    proxies: HashMap<u64, Subscribed>,
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

/// This node's session with `node` (a new one if the last ended).
fn session_with(sessions: &Sessions, cluster: &Arc<Cluster>, node: &str) -> Arc<Session> {
    let mut m = sessions.lock();
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

impl Client {
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
    /// come back with its reply code and text. A quorum queue's consumer follows its leader:
    /// when the node serving it stops (it stepped down, or died), it subscribes again with the
    /// next, as RabbitMQ keeps a quorum queue's consumers across a leader change.
    pub async fn subscribe(
        &self,
        v: &Arc<VHost>,
        record: &Arc<Queue>,
        spec: ConsumeSpec,
    ) -> AmqpResult<Arc<Queue>> {
        let quorum =
            record.replica().is_some() || crate::broker::args::is_quorum(&record.arguments);
        let follow = quorum.then(|| Follow {
            sessions: self.sessions.clone(),
            vhost: Arc::downgrade(v),
            queue: record.name.clone(),
            spec: spec.clone(),
        });
        let proxy = Arc::new(Proxy {
            binds: Mutex::new(Vec::new()),
            next_gen: AtomicU64::new(0),
            consumer: true,
            no_ack: spec.no_ack,
            follow,
            following: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            state: Mutex::default(),
            queue: Mutex::new(std::sync::Weak::new()),
            memory: memory_of(v),
        });
        if proxy.follow.is_some() {
            v.add_follower(&record.name, Arc::downgrade(&proxy));
        }
        // A quorum queue's new leader is known before it serves: asked again meanwhile.
        settled(|| self.subscribe_once(v, record, &spec, &proxy)).await
    }

    async fn subscribe_once(
        &self,
        v: &Arc<VHost>,
        record: &Arc<Queue>,
        spec: &ConsumeSpec,
        proxy: &Arc<Proxy>,
    ) -> AmqpResult<Arc<Queue>> {
        let (r, home) = if record.replica().is_some_and(|r| r.is_live()) {
            // Led here: the consumer attaches to the queue itself, and follows its leader when
            // this node steps down.
            let home = crate::config::this_node().to_owned();
            let q = proxy_queue(v, record, &home, proxy.clone());
            *proxy.queue.lock() = Arc::downgrade(&q);
            (proxy.bind_here(record).map(|()| q), home)
        } else {
            let (cluster, home) = Self::target(v, record).await?;
            let s = session_with(&self.sessions, &cluster, &home);
            let q = proxy_queue(v, record, &home, proxy.clone());
            *proxy.queue.lock() = Arc::downgrade(&q);
            let r = proxy.bind(&s, &v.name, &record.name, spec).await;
            (r.map(|()| q), home)
        };
        r.map_err(|e| match e {
            BindError::Refused(e) => e,
            BindError::Unreachable(e) => unreachable(&home, record, e),
        })
    }

    /// basic.get of a queue served by another node: the message (as an entry of a proxy queue
    /// whose settlements go back there) and the count left, or None.
    pub async fn get(
        &self,
        v: &Arc<VHost>,
        record: &Arc<Queue>,
        no_ack: bool,
    ) -> AmqpResult<Option<(Arc<Queue>, QEntry, u32)>> {
        settled(|| self.get_once(v, record, no_ack)).await
    }

    async fn get_once(
        &self,
        v: &Arc<VHost>,
        record: &Arc<Queue>,
        no_ack: bool,
    ) -> AmqpResult<Option<(Arc<Queue>, QEntry, u32)>> {
        let (cluster, home) = Self::target(v, record).await?;
        let s = session_with(&self.sessions, &cluster, &home);
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
                    binds: Mutex::new(vec![Bind {
                        gen: 0,
                        via: Via::Node {
                            session: s.clone(),
                            sub: 0,
                        },
                    }]),
                    next_gen: AtomicU64::new(1),
                    consumer: false,
                    no_ack,
                    follow: None,
                    following: AtomicBool::new(false),
                    gone: AtomicBool::new(false),
                    state: Mutex::default(),
                    queue: Mutex::new(std::sync::Weak::new()),
                    memory: memory_of(v),
                });
                let entry = entry_of(proxy.memory, d).map_err(|e| unexpected(&home, e))?;
                let q = proxy_queue(v, record, &home, proxy);
                Ok(Some((q, entry, left)))
            }
            Ok(Reply::Refused(r)) => Err(refusal(&r)),
            Ok(other) => Err(unexpected(&home, other)),
            Err(e) => Err(unreachable(&home, record, e)),
        }
    }

    async fn count_call(&self, v: &VHost, record: &Queue, purge: bool) -> AmqpResult<(u32, u32)> {
        settled(|| self.count_once(v, record, purge)).await
    }

    async fn count_once(&self, v: &VHost, record: &Queue, purge: bool) -> AmqpResult<(u32, u32)> {
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

fn memory_of(v: &VHost) -> &'static crate::broker::memory::MemoryMonitor {
    v.memory
        .get()
        .cloned()
        .unwrap_or_else(crate::broker::memory::MemoryMonitor::unlimited)
}

fn entry_of(
    memory: &'static crate::broker::memory::MemoryMonitor,
    d: Delivery,
) -> Result<QEntry, String> {
    let properties = crate::broker::message::Properties::parse(d.properties)
        .map_err(|e| format!("a delivery with bad properties: {e}"))?;
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
                .iter()
                .filter(|(_, p)| p.confirmed)
                .map(|(sub, _)| *sub)
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
                        p.proxy.state.lock().buffer.push_back((p.gen, d));
                        if !touched.iter().any(|t| Arc::ptr_eq(t, &p.proxy)) {
                            touched.push(p.proxy.clone());
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
        let lost: Vec<(u64, Subscribed)> = {
            let mut st = self.state.lock();
            gone.iter()
                .filter_map(|id| st.proxies.remove(id).map(|p| (*id, p)))
                .collect()
        };
        for (sub, p) in lost {
            p.proxy.lost(self, sub);
        }
    }

    /// The serving node is gone (or forgot this session): its consumers are cancelled (those of
    /// quorum queues subscribe again, with the queue's next leader); settlements of what they
    /// had are accepted and dropped.
    fn end(&self, why: &str) {
        if self.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        info!("consumers served by {} end: {why}", self.node);
        let proxies: Vec<(u64, Subscribed)> = {
            let mut st = self.state.lock();
            st.pending = Pending::default();
            st.proxies.drain().collect()
        };
        for (sub, p) in proxies {
            p.proxy.lost(self, sub);
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
