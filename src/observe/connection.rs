//! The live connections, as the management API and metrics see them.
//!
//! Each connection registers a `ConnInfo` when it starts and removes it when it ends (a drop
//! guard, so every exit path does). Its channels are `ChannelObs` entries, summed only when read;
//! a closed channel's or connection's counts fold into a retired total so the global counters
//! never go backwards.

use super::channel::{bump, ChannelObs, Counters};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

/// What the handshake learnt about the client.
#[derive(Debug, Clone, Default)]
pub struct Details {
    pub user: String,
    pub auth_mechanism: String,
    pub client_properties: Value,
    /// Set once connection.open succeeded.
    pub vhost: Option<String>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
}

/// One live connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub id: u64,
    /// RabbitMQ's connection name: `peer -> local`.
    pub name: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    pub details: Mutex<Details>,
    pub recv_oct: AtomicU64,
    pub recv_cnt: AtomicU64,
    /// Written by the connection's writer task only.
    pub send_oct: AtomicU64,
    pub send_cnt: AtomicU64,
    /// Rates of (recv_oct, send_oct), from the sampler.
    pub oct_rates: super::RatePair,
    channels: Mutex<BTreeMap<u16, Arc<ChannelObs>>>,
    retired: Mutex<Counters>,
    close_reason: Mutex<Option<String>>,
    /// Wakes the connection task to close the connection (see `close`).
    pub closer: Notify,
}

impl ConnInfo {
    pub fn new(id: u64, peer: SocketAddr, local: SocketAddr) -> Self {
        let connected_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        ConnInfo {
            id,
            name: format!("{peer} -> {local}"),
            peer,
            local,
            connected_at,
            details: Mutex::new(Details::default()),
            recv_oct: AtomicU64::new(0),
            recv_cnt: AtomicU64::new(0),
            send_oct: AtomicU64::new(0),
            send_cnt: AtomicU64::new(0),
            oct_rates: Default::default(),
            channels: Mutex::new(BTreeMap::new()),
            retired: Mutex::new(Counters::default()),
            close_reason: Mutex::new(None),
            closer: Notify::new(),
        }
    }

    /// Bytes read from the socket (the connection's task is the only writer).
    #[inline]
    pub fn received(&self, n: usize) {
        bump(&self.recv_oct, n as u64);
        bump(&self.recv_cnt, 1);
    }

    /// Bytes written to the socket (the writer task is the only writer).
    #[inline]
    pub fn sent(&self, n: usize) {
        bump(&self.send_oct, n as u64);
        bump(&self.send_cnt, 1);
    }

    /// Record a rate sample of the byte counters.
    pub fn sample_rates(&self, secs: Option<f64>) {
        self.oct_rates.sample(
            [
                self.recv_oct.load(Ordering::Relaxed),
                self.send_oct.load(Ordering::Relaxed),
            ],
            secs,
        );
    }

    pub fn channel_opened(&self, id: u16, ch: Arc<ChannelObs>) {
        self.channels.lock().insert(id, ch);
    }

    pub fn channel_closed(&self, id: u16) {
        if let Some(ch) = self.channels.lock().remove(&id) {
            self.retired.lock().add_stats(&ch.stats);
        }
    }

    pub fn channels(&self) -> Vec<(u16, Arc<ChannelObs>)> {
        self.channels
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    pub fn channel_count(&self) -> usize {
        self.channels.lock().len()
    }

    /// Everything this connection's channels counted, open or closed.
    pub fn totals(&self) -> Counters {
        let mut c = *self.retired.lock();
        for ch in self.channels.lock().values() {
            c.add_stats(&ch.stats);
        }
        c
    }

    pub fn is_open(&self) -> bool {
        self.details.lock().vhost.is_some()
    }

    /// Ask the connection to close with 320 CONNECTION_FORCED and this reason.
    pub fn close(&self, reason: &str) {
        *self.close_reason.lock() = Some(reason.to_owned());
        self.closer.notify_one();
    }

    pub fn take_close_reason(&self) -> String {
        self.close_reason
            .lock()
            .take()
            .unwrap_or_else(|| "Closed via management plugin".to_owned())
    }
}

/// Every live connection, by id.
#[derive(Debug, Default)]
pub struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<ConnInfo>>>,
    retired: Mutex<Counters>,
}

/// Removes its connection from the registry when dropped.
pub struct Registration {
    registry: Weak<Registry>,
    info: Arc<ConnInfo>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            r.conns.lock().remove(&self.info.id);
            let t = self.info.totals();
            r.retired.lock().add(&t);
        }
    }
}

impl Registry {
    pub fn register(self: &Arc<Self>, info: Arc<ConnInfo>) -> Registration {
        self.conns.lock().insert(info.id, info.clone());
        Registration {
            registry: Arc::downgrade(self),
            info,
        }
    }

    /// Every connection that finished its handshake, in order of arrival.
    pub fn list(&self) -> Vec<Arc<ConnInfo>> {
        self.conns
            .lock()
            .values()
            .filter(|c| c.is_open())
            .cloned()
            .collect()
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<ConnInfo>> {
        self.list().into_iter().find(|c| c.name == name)
    }

    /// Counters over every channel there has ever been.
    pub fn totals(&self) -> Counters {
        let mut c = *self.retired.lock();
        let conns: Vec<Arc<ConnInfo>> = self.conns.lock().values().cloned().collect();
        for conn in conns {
            c.add(&conn.totals());
        }
        c
    }
}
