//! The live connections and their channels, as the management API and metrics see them.
//!
//! Each connection registers a `ConnInfo` when it starts and removes it when it ends (a drop
//! guard, so every exit path does). Counters are per channel (`ChannelStats`, on a cache line of
//! its own, written by the connection's task or under the channel's delivery lock) and summed
//! only when read; a closed channel's or connection's counts fold into a retired total so the
//! global counters never go backwards.

use crate::amqp::channel::ChannelShared;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

/// One channel's message counters (RabbitMQ's channel `message_stats`) and settings.
///
/// Each counter has one writer at a time: the channel's own task (publish, routed, returns,
/// confirm, get, ack) or whoever holds the channel's delivery lock (deliver, deliver_no_ack).
/// So `bump` is a plain load and store, with no locked instruction on the message path;
/// `redeliver`, written from both sides, uses `bump_shared`.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ChannelStats {
    pub publish: AtomicU64,
    pub routed: AtomicU64,
    pub confirm: AtomicU64,
    pub return_unroutable: AtomicU64,
    pub drop_unroutable: AtomicU64,
    pub deliver: AtomicU64,
    pub deliver_no_ack: AtomicU64,
    pub get: AtomicU64,
    pub get_no_ack: AtomicU64,
    pub ack: AtomicU64,
    pub redeliver: AtomicU64,
    /// basic.qos global=false prefetch (the channel's per-consumer default).
    pub prefetch: AtomicU32,
    pub confirm_mode: AtomicBool,
    pub transactional: AtomicBool,
}

/// Add to a counter that has a single writer at a time (see `ChannelStats`).
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Add to a counter written from more than one place.
#[inline]
pub fn bump_shared(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Plain sums of `ChannelStats` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub publish: u64,
    pub routed: u64,
    pub confirm: u64,
    pub return_unroutable: u64,
    pub drop_unroutable: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub ack: u64,
    pub redeliver: u64,
}

impl Counters {
    pub fn add_stats(&mut self, s: &ChannelStats) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.publish += l(&s.publish);
        self.routed += l(&s.routed);
        self.confirm += l(&s.confirm);
        self.return_unroutable += l(&s.return_unroutable);
        self.drop_unroutable += l(&s.drop_unroutable);
        self.deliver += l(&s.deliver);
        self.deliver_no_ack += l(&s.deliver_no_ack);
        self.get += l(&s.get);
        self.get_no_ack += l(&s.get_no_ack);
        self.ack += l(&s.ack);
        self.redeliver += l(&s.redeliver);
    }

    pub fn add(&mut self, o: &Counters) {
        self.publish += o.publish;
        self.routed += o.routed;
        self.confirm += o.confirm;
        self.return_unroutable += o.return_unroutable;
        self.drop_unroutable += o.drop_unroutable;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.ack += o.ack;
        self.redeliver += o.redeliver;
    }

    pub fn of(s: &ChannelStats) -> Counters {
        let mut c = Counters::default();
        c.add_stats(s);
        c
    }
}

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
    pub oct_rates: crate::broker::stats::RatePair,
    channels: Mutex<BTreeMap<u16, Arc<ChannelShared>>>,
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

    pub fn channel_opened(&self, id: u16, ch: Arc<ChannelShared>) {
        self.channels.lock().insert(id, ch);
    }

    pub fn channel_closed(&self, id: u16) {
        if let Some(ch) = self.channels.lock().remove(&id) {
            self.retired.lock().add_stats(&ch.stats);
        }
    }

    pub fn channels(&self) -> Vec<(u16, Arc<ChannelShared>)> {
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
