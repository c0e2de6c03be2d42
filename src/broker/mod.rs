//! The model: virtual hosts, exchanges, queues and messages. Knows nothing of sockets or frames
//! (it uses amq-protocol's field-table value types for arguments and headers, nothing else).

pub mod ack_watch;
pub mod admin;
pub mod args;
pub mod batch;
pub mod clock;
pub mod disk;
pub mod exchange;
pub mod json;
pub mod memory;
pub mod message;
pub mod queue;
pub mod quorum;
pub mod remote;
pub mod replicated;
pub mod reply_to;
pub mod stats;
pub mod stream;
pub mod vhost;

use crate::store::{Definitions, MessageLog, Store};
use dashmap::DashMap;
use memory::MemoryMonitor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vhost::VHost;

/// The whole broker state shared by every connection.
#[derive(Debug)]
pub struct Broker {
    vhosts: DashMap<String, Arc<VHost>>,
    next_connection_id: AtomicU64,
    pub memory: &'static MemoryMonitor,
    pub disk: Arc<disk::DiskMonitor>,
    /// Queues declared, created and deleted, for metrics.
    pub churn: Arc<crate::observe::Churn>,
    /// The one clock (TTLs, delays, timeouts, ages), driven by tests.
    pub clock: Arc<clock::Clock>,
    store: Option<Arc<Store>>,
    /// This node's place in a cluster, when `[cluster]` is configured.
    cluster: std::sync::OnceLock<Arc<crate::cluster::node::Cluster>>,
    /// Queues of other nodes consumed through this one (see `remote`).
    pub remote: remote::Client,
}

impl Broker {
    /// A broker whose memory alarm goes off above `memory_high_watermark` bytes of messages,
    /// keeping durable definitions in `store` (none: everything transient, for tools and tests).
    pub fn new(memory_high_watermark: u64, store: Option<Arc<Store>>) -> Self {
        let vhosts = DashMap::new();
        let churn: Arc<crate::observe::Churn> = Default::default();
        let clock: Arc<clock::Clock> = Default::default();
        vhosts.insert(
            "/".to_owned(),
            Arc::new_cyclic(|me| {
                VHost::new("/", store.clone(), churn.clone(), clock.clone(), me.clone())
            }),
        );
        let memory = MemoryMonitor::leak(memory_high_watermark);
        for v in vhosts.iter() {
            let _ = v.memory.set(memory);
        }
        Broker {
            vhosts,
            next_connection_id: AtomicU64::new(1),
            memory,
            disk: Arc::new(disk::DiskMonitor::new(
                store
                    .as_ref()
                    .map_or_else(std::env::temp_dir, |s| s.messages().dir().to_owned()),
                0,
            )),
            churn,
            clock,
            store,
            cluster: std::sync::OnceLock::new(),
            remote: Default::default(),
        }
    }

    /// This node's cluster, when it is in one: definition changes then go through it.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::node::Cluster>> {
        self.cluster.get()
    }

    /// In a cluster: serve this node's queues to consumers on other nodes.
    pub fn serve_other_nodes(self: &Arc<Self>) {
        if let Some(c) = self.cluster() {
            c.set_consume_service(remote::serve::Server::start(self));
        }
    }

    pub fn set_cluster(&self, c: Arc<crate::cluster::node::Cluster>) {
        for v in self.vhosts.iter() {
            let _ = v.cluster.set(c.clone());
        }
        let _ = self.cluster.set(c);
    }

    /// Re-measure free disk space (the disk alarm).
    pub fn check_disk(&self) {
        self.disk.check(
            self.messages().is_some_and(|l| l.failing())
                || self.spill().is_some_and(|l| l.failing()),
        );
    }

    /// Expire due messages everywhere (the sweeper task calls this).
    pub fn sweep_expired(&self) {
        let now = self.clock.now_ms();
        let vhosts: Vec<Arc<VHost>> = self.vhosts.iter().map(|v| v.clone()).collect();
        for v in vhosts {
            v.sweep_expired(now);
        }
    }

    /// Set the broker-wide consumer acknowledgement timeout and what it does.
    pub fn configure_consumer_timeout(&self, defaults: ack_watch::TimeoutDefaults) {
        for v in self.vhosts.iter() {
            v.ack_watch.configure(defaults);
        }
    }

    /// Recreate the stored definitions in their vhosts, and put stored messages back in their
    /// queues. Returns how many messages came back.
    pub fn recover(&self, defs: &Definitions) -> usize {
        let mut messages = self
            .store
            .as_ref()
            .map(|s| s.take_recovered())
            .unwrap_or_default();
        let total: usize = messages.queues.values().map(Vec::len).sum();
        for v in self.vhosts.iter() {
            v.recover(defs, &mut messages, self.memory);
        }
        let Some(store) = &self.store else {
            return 0;
        };
        // Messages of queues that no longer exist: let their records go.
        let log = store.messages();
        let mut orphans = 0;
        for (qid, msgs) in messages.queues.drain() {
            for m in msgs {
                orphans += 1;
                log.release(qid, m.segment, m.offset);
            }
        }
        log.collect();
        total - orphans
    }

    /// The message log, when the broker has a store.
    pub fn messages(&self) -> Option<&Arc<MessageLog>> {
        self.store.as_ref().map(|s| s.messages())
    }

    /// The scratch log queues page transient messages out to, when the broker has a store.
    pub fn spill(&self) -> Option<&Arc<MessageLog>> {
        self.store.as_ref().map(|s| s.spill())
    }

    /// Publishers are ahead of the message log's or the spill log's writer (see
    /// `MessageLog::congested`): they should wait.
    pub fn logs_congested(&self) -> bool {
        self.messages().is_some_and(|l| l.congested())
            || self.spill().is_some_and(|l| l.congested())
    }

    /// Publishers should wait: the logs' writers are behind, or (in a cluster) too much waits to
    /// be forwarded to other nodes.
    pub fn publishers_wait(&self) -> bool {
        self.logs_congested() || self.cluster().is_some_and(|c| c.forwarding_congested())
    }

    /// Wait until the message log is durable up to `ticket` (a publish's `Outcome::ticket`; 0:
    /// nothing to wait for), as a publisher confirm does. Gives up after `limit` (the disk is
    /// failing or full): false then.
    pub async fn stored(&self, ticket: u64, limit: std::time::Duration) -> bool {
        let Some(log) = self.messages().filter(|_| ticket > 0) else {
            return true;
        };
        let mut rx = log.subscribe();
        let reached = tokio::time::timeout(limit, rx.wait_for(|&synced| synced >= ticket)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Stop writing to the store (at shutdown, before the broker's state is dropped).
    pub fn close_store(&self) {
        if let Some(s) = &self.store {
            s.messages().close();
            s.spill().close();
        }
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Every virtual host, sorted by name.
    pub fn vhost_list(&self) -> Vec<Arc<VHost>> {
        let mut v: Vec<Arc<VHost>> = self.vhosts.iter().map(|v| v.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Create a virtual host (with its amq.* exchanges); false if it already exists.
    pub fn add_vhost(&self, name: &str, store: Option<Arc<Store>>) -> bool {
        let mut created = false;
        self.vhosts.entry(name.to_owned()).or_insert_with(|| {
            created = true;
            let v = Arc::new_cyclic(|me| {
                VHost::new(
                    name,
                    store,
                    self.churn.clone(),
                    self.clock.clone(),
                    me.clone(),
                )
            });
            let _ = v.memory.set(self.memory);
            if let Some(c) = self.cluster.get() {
                let _ = v.cluster.set(c.clone());
            }
            v
        });
        created
    }

    /// Remove a virtual host with everything in it (queues and exchanges leave the store too).
    /// Its connections are the caller's to close.
    pub fn delete_vhost(&self, name: &str) -> Option<Arc<VHost>> {
        let (_, v) = self.vhosts.remove(name)?;
        v.delete_everything();
        Some(v)
    }
}
