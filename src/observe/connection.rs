//! The live connections, as the management API and metrics see them.
//!
//! Each connection registers a `ConnInfo` when it starts and removes it when it ends (a drop
//! guard, so every exit path does). Its channels are `ChannelObs` entries, summed only when read;
//! a closed channel's or connection's counts fold into a retired total so the global counters
//! never go backwards. A move into a retired total happens under the lock of the map it leaves,
//! and readers take that lock first, so no reading counts an object twice or misses it.
//!
//! Churn (RabbitMQ's `connections_opened_total` and friends) is counted the same way: a
//! connection counts as opened once its connection.open succeeded (as RabbitMQ), and as closed
//! when such a connection ends, so opened minus closed is always the open connections.
//! (RabbitMQ also counts as closed the sockets that never got as far as connection.open, such
//! as port probes; Warren does not.)

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
    /// channel.open-ok sent, and channels ended (either way), on this connection.
    channels_opened: AtomicU64,
    channels_closed: AtomicU64,
    close_reason: Mutex<Option<String>>,
    /// Wakes the connection task to close the connection (see `close`).
    pub closer: Notify,
    /// The TLS session, for connections on the amqps listener.
    pub tls: Option<Arc<crate::tls::Session>>,
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
            channels_opened: AtomicU64::new(0),
            channels_closed: AtomicU64::new(0),
            close_reason: Mutex::new(None),
            closer: Notify::new(),
            tls: None,
        }
    }

    /// A connection over TLS.
    pub fn with_tls(mut self, tls: Option<Arc<crate::tls::Session>>) -> Self {
        self.tls = tls;
        self
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
        let mut channels = self.channels.lock();
        if channels.insert(id, ch).is_none() {
            self.channels_opened.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn channel_closed(&self, id: u16) {
        let mut channels = self.channels.lock();
        if let Some(ch) = channels.remove(&id) {
            self.retired.lock().add_stats(&ch.stats);
            self.channels_closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Close the channels still listed (the connection is gone).
    fn close_channels(&self) {
        let mut channels = self.channels.lock();
        let mut retired = self.retired.lock();
        for ch in std::mem::take(&mut *channels).into_values() {
            retired.add_stats(&ch.stats);
            self.channels_closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Channels opened and closed on this connection.
    pub fn channel_churn(&self) -> (u64, u64) {
        // Closed first, so that no channel is counted as closed without being counted as
        // opened when it comes and goes between the two reads.
        let closed = self.channels_closed.load(Ordering::Relaxed);
        (self.channels_opened.load(Ordering::Relaxed), closed)
    }

    /// Open channels that have published at least once (RabbitMQ's publishers).
    pub fn publishers(&self) -> usize {
        self.channels
            .lock()
            .values()
            .filter(|c| c.stats.publish.load(Ordering::Relaxed) > 0)
            .count()
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
        let channels = self.channels.lock();
        let mut c = *self.retired.lock();
        for ch in channels.values() {
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
    retired: Mutex<Retired>,
}

/// What the connections that ended had counted.
#[derive(Debug, Default)]
struct Retired {
    counters: Counters,
    /// Connections that had been opened (and so are now closed).
    connections: u64,
    channels_opened: u64,
    channels_closed: u64,
}

/// Connections and channels opened and closed since the broker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnChurn {
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub channels_opened: u64,
    pub channels_closed: u64,
}

/// Removes its connection from the registry when dropped.
pub struct Registration {
    registry: Weak<Registry>,
    info: Arc<ConnInfo>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let info = &self.info;
        info.close_channels();
        if let Some(r) = self.registry.upgrade() {
            let mut conns = r.conns.lock();
            conns.remove(&info.id);
            let t = info.totals();
            let (opened, closed) = info.channel_churn();
            let mut retired = r.retired.lock();
            retired.counters.add(&t);
            retired.connections += u64::from(info.is_open());
            retired.channels_opened += opened;
            retired.channels_closed += closed;
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

    /// The live connections (open or still in their handshake) with what the ended ones left.
    fn snapshot<T>(&self, retired: impl FnOnce(&Retired) -> T) -> (T, Vec<Arc<ConnInfo>>) {
        let conns = self.conns.lock();
        let r = retired(&self.retired.lock());
        (r, conns.values().cloned().collect())
    }

    /// Counters over every channel there has ever been.
    pub fn totals(&self) -> Counters {
        let (mut c, conns) = self.snapshot(|r| r.counters);
        for conn in conns {
            c.add(&conn.totals());
        }
        c
    }

    /// Connections and channels opened and closed, over every connection there has been.
    pub fn churn(&self) -> ConnChurn {
        let (mut c, conns) = self.snapshot(|r| ConnChurn {
            connections_opened: r.connections,
            connections_closed: r.connections,
            channels_opened: r.channels_opened,
            channels_closed: r.channels_closed,
        });
        for conn in conns {
            c.connections_opened += u64::from(conn.is_open());
            let (opened, closed) = conn.channel_churn();
            c.channels_opened += opened;
            c.channels_closed += closed;
        }
        c
    }

    /// Open channels that have published at least once (RabbitMQ's `global_publishers`).
    pub fn publishers(&self) -> usize {
        self.list().iter().map(|c| c.publishers()).sum()
    }
}
