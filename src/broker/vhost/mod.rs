//! A virtual host: the registries of exchanges and queues, and every operation on them that a
//! client can ask for, whichever adapter it came through. Errors carry RabbitMQ's reply codes
//! and texts.
//!
//! - `declare`: exchanges and queues, with RabbitMQ's equivalence checks;
//! - `bind`: queue and exchange bindings;
//! - `publish`: the one way in for a message (route -> store -> enqueue), for AMQP basic.publish,
//!   the HTTP API, dead-lettering and delayed release alike;
//! - `recovery`: definitions and messages back from the store at start;
//! - `super_stream`: super streams (an exchange over partition streams), made and removed as
//!   one.

mod bind;
mod declare;
mod placement;
mod publish;
mod recovery;
pub mod super_stream;

pub use declare::{ExchangeDeclare, QueueDeclare};
pub use publish::{cc_keys, Origin, Outcome, Publish, RouteCache};

use crate::broker::exchange::{Exchange, ExchangeKind};
use crate::broker::memory::MemoryMonitor;
use crate::broker::queue::{cancel_consumers, Queue};
use crate::error::{code, AmqpError, AmqpResult};
use crate::store::{Store, StoreError};
use amq_protocol::types::FieldTable;
use dashmap::DashMap;
use std::sync::Arc;
use tracing::error;

#[derive(Debug)]
pub struct VHost {
    pub name: String,
    pub(in crate::broker) exchanges: DashMap<String, Arc<Exchange>>,
    /// The default exchange (also in `exchanges` under ""), at hand for counting its publishes.
    pub(in crate::broker) default_exchange: Arc<Exchange>,
    pub(in crate::broker) queues: DashMap<String, Arc<Queue>>,
    pub(in crate::broker) store: Option<Arc<Store>>,
    /// Itself, for its queues (dead-lettering republishes through the vhost).
    pub(in crate::broker) me: std::sync::Weak<VHost>,
    /// Queues that have held messages with a TTL: the expiry sweeper visits only these.
    ttl_queues: parking_lot::Mutex<Vec<std::sync::Weak<Queue>>>,
    /// Channels consuming from amq.rabbitmq.reply-to, by token.
    pub replies: crate::broker::reply_to::ReplyRegistry,
    /// Channels whose unacked deliveries may exceed the consumer timeout.
    pub ack_watch: crate::broker::ack_watch::AckWatch,
    /// Messages held by `x-delayed-message` exchanges.
    pub delayed: Arc<crate::broker::exchange::delayed::DelayedStore>,
    /// The message-log id of this vhost's stored delayed messages (assigned on first use).
    pub(in crate::broker) delayed_id: std::sync::OnceLock<u32>,
    /// The broker's memory account, for messages read back from the message log.
    pub memory: std::sync::OnceLock<&'static MemoryMonitor>,
    /// The broker's clock.
    pub clock: Arc<crate::broker::clock::Clock>,
    /// The broker's churn counters.
    pub(in crate::broker) churn: Arc<crate::observe::Churn>,
    /// In a cluster: the node each queue was declared on (its home), by queue name.
    homes: DashMap<String, String>,
    /// Consumers of quorum queues, by queue: told when the queue's leader changes, so that
    /// they follow it at once (`broker::remote`).
    followers: DashMap<String, Vec<std::sync::Weak<crate::broker::remote::Proxy>>>,
    /// In a cluster: quorum queues' Raft groups, by queue name.
    quorum: DashMap<String, crate::store::QuorumDef>,
    /// This node's cluster, when it is in one.
    pub(in crate::broker) cluster: std::sync::OnceLock<Arc<crate::cluster::node::Cluster>>,
}

fn store_failed(e: StoreError) -> AmqpError {
    error!("{e}");
    AmqpError::connection(code::INTERNAL_ERROR, format!("{e}"))
}

/// A name for a queue declared with an empty name, as RabbitMQ makes them (`amq.gen-…`).
pub fn server_queue_name() -> String {
    random_name("amq.gen-")
}

fn random_name(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let tail: String = (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// A random token (for direct reply-to addresses).
pub fn random_token() -> String {
    random_name("")
}

/// A name for a server-generated consumer tag.
pub fn generate_consumer_tag() -> String {
    random_name("amq.ctag-")
}

impl VHost {
    pub fn new(
        name: &str,
        store: Option<Arc<Store>>,
        churn: Arc<crate::observe::Churn>,
        clock: Arc<crate::broker::clock::Clock>,
        me: std::sync::Weak<VHost>,
    ) -> Self {
        let v = VHost {
            name: name.to_owned(),
            exchanges: DashMap::new(),
            default_exchange: Arc::new(Exchange::new(
                String::new(),
                ExchangeKind::Direct,
                true,
                false,
                false,
                FieldTable::default(),
            )),
            queues: DashMap::new(),
            store,
            me,
            ttl_queues: parking_lot::Mutex::new(Vec::new()),
            replies: Default::default(),
            ack_watch: Default::default(),
            delayed: Arc::new(crate::broker::exchange::delayed::DelayedStore::new(
                clock.clone(),
            )),
            clock,
            delayed_id: std::sync::OnceLock::new(),
            memory: std::sync::OnceLock::new(),
            churn,
            homes: DashMap::new(),
            followers: DashMap::new(),
            quorum: DashMap::new(),
            cluster: std::sync::OnceLock::new(),
        };
        v.exchanges
            .insert(String::new(), v.default_exchange.clone());
        for (n, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
            ("amq.rabbitmq.trace", ExchangeKind::Topic),
        ] {
            v.exchanges.insert(
                n.to_owned(),
                Arc::new(Exchange::new(
                    n.to_owned(),
                    kind,
                    true,
                    false,
                    n == "amq.rabbitmq.trace",
                    FieldTable::default(),
                )),
            );
        }
        v
    }

    /// In a cluster: record the node a queue was declared on.
    pub fn set_home(&self, queue: &str, node: &str) {
        let old = self.homes.insert(queue.to_owned(), node.to_owned());
        if old.as_deref() != Some(node) {
            let followers: Vec<_> = self
                .followers
                .get_mut(queue)
                .map(|mut f| {
                    f.retain(|p| p.strong_count() > 0);
                    f.iter().filter_map(|p| p.upgrade()).collect()
                })
                .unwrap_or_default();
            for p in followers {
                p.leader_moved(node);
            }
        }
    }

    /// A quorum queue's consumer to tell when the queue's leader changes.
    pub fn add_follower(&self, queue: &str, p: std::sync::Weak<crate::broker::remote::Proxy>) {
        let mut f = self.followers.entry(queue.to_owned()).or_default();
        f.retain(|p| p.strong_count() > 0);
        f.push(p);
    }

    /// `queue`, for reading its messages here (consume, get, purge): a cluster's queue that
    /// lives on another node is refused, naming that node.
    pub fn local_queue(&self, name: &str, conn: u64) -> AmqpResult<Arc<Queue>> {
        let q = self.queue(name, conn)?;
        if let Some(r) = q.replica().filter(|r| !r.is_live()) {
            let leader = self
                .home_of(name)
                .unwrap_or_else(|| r.def.members.join(", "));
            return Err(AmqpError::channel(
                code::NOT_IMPLEMENTED,
                format!(
                    "quorum queue '{name}' in vhost '{}' is led by node {leader}: consume, get \
                     and purge it through that node (serving a queue through other nodes is not \
                     built yet)",
                    self.name
                ),
            ));
        }
        if let Some(home) = &q.remote {
            return Err(AmqpError::channel(
                code::NOT_IMPLEMENTED,
                format!(
                    "queue '{name}' in vhost '{}' is on node {home}: consume, get and purge it \
                     through that node (serving a queue through other nodes is not built yet)",
                    self.name
                ),
            ));
        }
        Ok(q)
    }

    /// In a cluster: record a quorum queue's group (before the queue is declared here).
    pub fn set_quorum(&self, queue: &str, def: crate::store::QuorumDef) {
        self.quorum.insert(queue.to_owned(), def);
    }

    pub fn forget_quorum(&self, queue: &str) {
        self.quorum.remove(queue);
    }

    pub fn quorum_of(&self, queue: &str) -> Option<crate::store::QuorumDef> {
        self.quorum.get(queue).map(|d| d.clone())
    }

    /// Every quorum queue of this vhost with its group, by name.
    pub fn quorum_queues(&self) -> Vec<(String, crate::store::QuorumDef)> {
        let mut v: Vec<_> = self
            .quorum
            .iter()
            .map(|d| (d.key().clone(), d.value().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Quorum queues of this vhost whose group has this node as a member.
    pub fn member_quorum_queues(&self) -> Vec<(Arc<Queue>, crate::store::QuorumDef)> {
        let me = crate::config::this_node();
        self.quorum
            .iter()
            .filter(|d| d.members.iter().any(|m| m == me))
            .filter_map(|d| Some((self.find_queue(d.key())?, d.clone())))
            .collect()
    }

    pub fn forget_home(&self, queue: &str) {
        self.homes.remove(queue);
    }

    /// The node a queue lives on when it is not this one (a cluster's queue declared elsewhere).
    pub(in crate::broker) fn remote_home(&self, queue: &str) -> Option<String> {
        self.homes
            .get(queue)
            .filter(|h| h.as_str() != crate::config::this_node())
            .map(|h| h.clone())
    }

    /// The node a queue was declared on, when this node is in a cluster and knows it.
    pub fn home_of(&self, queue: &str) -> Option<String> {
        self.homes.get(queue).map(|n| n.clone())
    }

    /// Run a store write, if this vhost has a store.
    fn persist(&self, f: impl FnOnce(&Store) -> Result<(), StoreError>) -> AmqpResult<()> {
        match &self.store {
            Some(st) => f(st).map_err(store_failed),
            None => Ok(()),
        }
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn locked(&self, name: &str) -> AmqpError {
        AmqpError::locked(format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could be \
             originally declared on another connection or the exclusive property value does not \
             match that of the original declaration.",
            self.name
        ))
    }

    pub fn exchange(&self, name: &str) -> AmqpResult<Arc<Exchange>> {
        self.exchanges
            .get(name)
            .map(|e| e.clone())
            .ok_or_else(|| self.no_exchange(name))
    }

    /// Look up a queue for use by connection `conn` (exclusive queues only by their owner).
    pub fn queue(&self, name: &str, conn: u64) -> AmqpResult<Arc<Queue>> {
        let q = self
            .queues
            .get(name)
            .map(|q| q.clone())
            .ok_or_else(|| self.no_queue(name))?;
        match q.exclusive_owner {
            Some(owner) if owner != conn => Err(self.locked(name)),
            _ => Ok(q),
        }
    }

    /// Put a queue on the expiry sweeper's round (message TTLs, x-expires).
    pub fn sweep_me(&self, q: &Arc<Queue>) {
        self.ttl_queues.lock().push(Arc::downgrade(q));
    }

    fn watch_expiry(&self, q: &Arc<Queue>) {
        if q.expires_after.is_some() {
            self.sweep_me(q);
        }
    }

    /// Expire due messages in every queue that can have some (called every few milliseconds).
    pub fn sweep_expired(&self, now: u64) {
        self.ack_watch.tick(now);
        let queues: Vec<Arc<Queue>> = {
            let mut l = self.ttl_queues.lock();
            l.retain(|w| w.upgrade().is_some_and(|q| !q.is_deleted()));
            l.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        for q in queues {
            q.retry_stalled();
            q.sweep_expired(now);
            if q.unused_for_too_long(now) {
                tracing::info!(queue = %q.name, vhost = %self.name, "deleting queue unused for its x-expires period");
                cancel_consumers(self.remove_queue(&q).1);
            }
        }
    }

    /// Every queue, for management listings (no particular order).
    pub fn queue_list(&self) -> Vec<Arc<Queue>> {
        self.queues.iter().map(|q| q.clone()).collect()
    }

    /// Every exchange, including the default one (named "").
    pub fn exchange_list(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.iter().map(|e| e.clone()).collect()
    }

    /// A queue by name, whoever owns it (management sees exclusive queues too).
    pub fn find_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.clone())
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    pub fn exchange_count(&self) -> usize {
        self.exchanges.len()
    }

    /// The vhost is being deleted: remove its queues (telling their consumers) and exchanges,
    /// from memory and from the store.
    pub fn delete_everything(&self) {
        for q in self.queue_list() {
            cancel_consumers(self.remove_queue_here(&q).1);
        }
        for e in self.exchange_list() {
            if !e.name.is_empty() {
                self.remove_exchange(&e);
            }
        }
    }
}
