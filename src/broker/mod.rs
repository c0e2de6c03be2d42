//! The model: virtual hosts, exchanges, queues and messages. Knows nothing of sockets or frames
//! (it uses amq-protocol's field-table value types for arguments and headers, nothing else).

pub mod args;
pub mod dead_letter;
pub mod exchange;
pub mod json;
pub mod memory;
pub mod message;
pub mod queue;
pub mod reply_to;
pub mod stats;
pub mod vhost;

use crate::store::{Definitions, Store};
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
    pub memory: Arc<MemoryMonitor>,
}

impl Broker {
    /// A broker whose memory alarm goes off above `memory_high_watermark` bytes of messages,
    /// keeping durable definitions in `store` (none: everything transient, for tools and tests).
    pub fn new(memory_high_watermark: u64, store: Option<Arc<Store>>) -> Self {
        let vhosts = DashMap::new();
        vhosts.insert(
            "/".to_owned(),
            Arc::new_cyclic(|me| VHost::new("/", store, me.clone())),
        );
        Broker {
            vhosts,
            next_connection_id: AtomicU64::new(1),
            memory: Arc::new(MemoryMonitor::new(memory_high_watermark)),
        }
    }

    /// Expire due messages everywhere (the sweeper task calls this).
    pub fn sweep_expired(&self) {
        let now = queue::now_ms();
        let vhosts: Vec<Arc<VHost>> = self.vhosts.iter().map(|v| v.clone()).collect();
        for v in vhosts {
            v.sweep_expired(now);
        }
    }

    /// Recreate the stored definitions in their vhosts.
    pub fn recover(&self, defs: &Definitions) {
        for v in self.vhosts.iter() {
            v.recover(defs);
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
            Arc::new_cyclic(|me| VHost::new(name, store, me.clone()))
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
