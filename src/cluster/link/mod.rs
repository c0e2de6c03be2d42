//! The inter-node link: authenticated TCP connections between nodes carrying request/response
//! calls (Raft RPCs, forwarded operations).
//!
//! Connections go one way each: a node dials a peer for its own calls and serves the peer's
//! calls on the connections it accepted. One connection per address carries any number of
//! concurrent calls (call ids; replies in any order), at most [`MAX_IN_FLIGHT`] at a time (more
//! callers wait for a slot). Every connection opens with the handshake of [`handshake`] (shared
//! secret proven by HMAC, versions, names and cluster ids checked), then carries the frames of
//! [`frame`]: calls, replies, cancels, pings.
//!
//! Failures: a lost connection fails its pending calls at once with `Unreachable`; the next call
//! dials again. A dialer pings a peer silent for 1 s and treats the connection as lost after 5 s
//! of silence; a listener closes a connection silent for 15 s. Dials run in a task of their own, one at a time per address; a failed
//! dial or refused handshake is remembered for a short backoff (50 ms, doubling to 1 s) during
//! which calls to that address fail at once with the same error. A call given up (timeout,
//! dropped future) is cancelled on the callee, whose handler future is dropped; so are all the
//! calls of a connection that ends. `shutdown`, or dropping the last handle, fails everything
//! in flight with `Closed`.
//!
//! Bounds: hello fields (255 bytes), frames ([`frame::MAX_FRAME`], 64 MiB, checked before
//! anything is buffered), the handshake's time (5 s), handshakes in progress
//! ([`MAX_HANDSHAKING`]), calls in flight per connection on both sides, and every writer queue
//! (a queued frame holds its call's slot until written). A handler call runs in its own task,
//! and a panic in it comes back as an error.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

mod frame;
mod handshake;
mod serve;
#[cfg(test)]
mod tests;

pub use frame::{MAX_FRAME, MAX_PAYLOAD};

/// Calls in flight per connection: more callers wait for a slot; a peer sending more is not read
/// until one of its calls is answered.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Connections accepted but not yet through the handshake; more are closed at once.
pub const MAX_HANDSHAKING: usize = 256;
/// The time a connection has to complete the handshake (both sides).
pub const HANDSHAKE_TIMEOUT: Duration = if cfg!(test) {
    Duration::from_secs(2)
} else {
    Duration::from_secs(5)
};
/// A dialer with calls pending that has heard nothing from the peer for `PING_EVERY` pings it;
/// after `DEAD_AFTER` of silence it drops the connection (a stopped process or a silently cut
/// path would otherwise hold calls until TCP gives up, many minutes later).
const PING_EVERY: Duration = if cfg!(test) {
    Duration::from_millis(200)
} else {
    Duration::from_secs(1)
};
const DEAD_AFTER: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(5)
};
/// The listener closes a connection on which nothing (not even a ping) arrived for this long:
/// its dialer is gone without a close.
const IDLE_CLOSE: Duration = if cfg!(test) {
    Duration::from_secs(3)
} else {
    Duration::from_secs(15)
};
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A handler's error text is cut to this length before it is sent.
const MAX_ERROR: usize = 64 << 10;

pub struct LinkConfig {
    /// e.g. "warren@host1"
    pub node_name: String,
    /// `crate::cluster::types::node_id(&node_name)`
    pub node_id: u64,
    /// The shared cluster secret (file contents, trimmed). Never sent.
    pub secret: Vec<u8>,
    /// This data dir's cluster id once it has one.
    pub cluster_id: Option<String>,
    /// Warren's version; `env!("CARGO_PKG_VERSION")` by default. Peers must run the same.
    pub version: String,
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("node_name", &self.node_name)
            .field("node_id", &self.node_id)
            .field("secret", &"<redacted>")
            .field("cluster_id", &self.cluster_id)
            .field("version", &self.version)
            .finish()
    }
}

/// What the handshake learnt of the other side.
#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    pub id: u64,
    pub version: String,
    pub cluster_id: Option<String>,
    /// The other end of the connection: the peer's listening address when this node dialed it,
    /// its (ephemeral) source address when it dialed this node.
    pub addr: SocketAddr,
}

pub trait Handler: Send + Sync + 'static {
    /// Serve one call. `service` tells which part of the node it is for (e.g. the metadata Raft
    /// group, a queue's Raft group, forwarding); `payload` is opaque to the link.
    ///
    /// The future runs in a task of its own. It is dropped unfinished when the caller gives up
    /// (its timeout, or its future dropped) or the connection is lost: it must be cancel-safe,
    /// or hand work that must finish to a task of its own.
    fn call(
        &self,
        from: &Remote,
        service: u32,
        payload: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;
    /// Optional: called after a peer passed the handshake (default: nothing), on both sides: for
    /// a connection this node dialed and for one it accepted (see [`Remote::addr`]).
    fn connected(&self, _from: &Remote) {}
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// No connection: the dial failed, or the connection was lost (calls pending on it fail at
    /// once with this), or the payload exceeds [`MAX_PAYLOAD`].
    #[error("cluster link unreachable: {0}")]
    Unreachable(String),
    /// The call got no answer within its timeout.
    #[error("cluster link call timed out")]
    Timeout,
    /// The handshake was refused, by either side: the reason.
    #[error("cluster link refused: {0}")]
    Refused(String),
    /// The remote handler returned this error.
    #[error("remote error: {0}")]
    Remote(String),
    /// This link was shut down.
    #[error("cluster link closed")]
    Closed,
}

/// A handle on this node's link; clones share it.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
    /// Shared by the handles only (not by the link's tasks): when the last handle is dropped
    /// the link shuts down.
    _owner: Arc<Owner>,
}

struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

struct Inner {
    name: String,
    id: u64,
    secret: Vec<u8>,
    version: String,
    cluster_id: RwLock<Option<String>>,
    handler: Arc<dyn Handler>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    remotes: Mutex<HashMap<String, Remote>>,
    shut: AtomicBool,
    shut_tx: watch::Sender<bool>,
    handshaking: Arc<Semaphore>,
}

/// What the dialer keeps per address.
struct Peer {
    addr: String,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Held while dialing, so concurrent callers wait for one dial.
    dial: Arc<tokio::sync::Mutex<Backoff>>,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    /// Until when calls fail at once with the last error.
    last: Option<(Instant, LinkError)>,
}

/// A connection this node dialed: its calls in flight and the queue to its writer.
struct Conn {
    remote: Remote,
    activity: Arc<frame::Activity>,
    out: mpsc::UnboundedSender<frame::Out>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    slots: Arc<Semaphore>,
}

#[derive(Default)]
struct Pending {
    calls: HashMap<u64, oneshot::Sender<Result<Bytes, LinkError>>>,
    /// Set once the connection is gone: the error its calls get.
    closed: Option<LinkError>,
}

impl Link {
    /// Listen on `addr` ("127.0.0.1:0" allowed); returns the bound address too.
    pub async fn start(
        cfg: LinkConfig,
        addr: &str,
        handler: Arc<dyn Handler>,
    ) -> std::io::Result<(Link, SocketAddr)> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        if cfg.secret.is_empty() {
            return Err(invalid("the cluster secret is empty".into()));
        }
        if cfg.node_name.is_empty() || cfg.node_name.len() > handshake::MAX_NAME {
            return Err(invalid(format!(
                "the node name must be 1 to {} bytes",
                handshake::MAX_NAME
            )));
        }
        if cfg.version.len() > handshake::MAX_NAME
            || cfg
                .cluster_id
                .as_ref()
                .is_some_and(|c| c.len() > handshake::MAX_NAME)
        {
            return Err(invalid(format!(
                "the version and cluster id must be at most {} bytes",
                handshake::MAX_NAME
            )));
        }
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let (shut_tx, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            name: cfg.node_name,
            id: cfg.node_id,
            secret: cfg.secret,
            version: cfg.version,
            cluster_id: RwLock::new(cfg.cluster_id),
            handler,
            peers: Mutex::new(HashMap::new()),
            remotes: Mutex::new(HashMap::new()),
            shut: AtomicBool::new(false),
            shut_tx,
            handshaking: Arc::new(Semaphore::new(MAX_HANDSHAKING)),
        });
        info!(node = %inner.name, "cluster link listening on {bound}");
        tokio::spawn(serve::accept_loop(inner.clone(), listener));
        let owner = Arc::new(Owner(inner.clone()));
        Ok((
            Link {
                inner,
                _owner: owner,
            },
            bound,
        ))
    }

    /// Call `service` on the node at `addr` (host:port). Connects lazily, keeps one connection
    /// per address, multiplexes concurrent calls on it, reconnects after a failure (with a short
    /// backoff after a failed dial). `timeout` covers everything, the dial included.
    pub async fn call(
        &self,
        addr: &str,
        service: u32,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, LinkError> {
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(LinkError::Closed);
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(LinkError::Unreachable(format!(
                "a call of {} bytes exceeds the link's limit of {MAX_PAYLOAD} bytes",
                payload.len()
            )));
        }
        let peer = self.inner.peer(addr);
        let inner = &self.inner;
        match tokio::time::timeout(timeout, async {
            let conn = inner.conn(&peer).await?;
            conn.call(service, payload).await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(LinkError::Timeout),
        }
    }

    /// The handshake's view of the node at `addr`, if connected at least once.
    pub fn remote(&self, addr: &str) -> Option<Remote> {
        self.inner.remotes.lock().get(addr).cloned()
    }

    /// Change the cluster id (a node learns it when it joins/forms the cluster). Connections
    /// already open stay; new handshakes use the new id.
    pub fn set_cluster_id(&self, id: String) {
        *self.inner.cluster_id.write() = Some(id);
    }

    /// Close the listener and every connection (calls in flight fail with `Closed`). Dropping
    /// the last handle does the same.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    #[cfg(test)]
    fn pending_calls(&self, addr: &str) -> usize {
        let p = self.inner.peers.lock().get(addr).cloned();
        p.and_then(|p| p.conn.lock().clone())
            .map_or(0, |c| c.pending.lock().calls.len())
    }
}

impl Inner {
    fn shutdown(&self) {
        if self.shut.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shut_tx.send_replace(true);
        let peers: Vec<_> = self.peers.lock().values().cloned().collect();
        for p in peers {
            if let Some(c) = p.conn.lock().take() {
                c.fail_all(LinkError::Closed);
            }
        }
        info!(node = %self.name, "cluster link shut down");
    }

    fn local(&self) -> handshake::Local<'_> {
        handshake::Local {
            name: &self.name,
            id: self.id,
            version: &self.version,
            cluster_id: self.cluster_id.read().clone(),
            secret: &self.secret,
        }
    }

    fn peer(&self, addr: &str) -> Arc<Peer> {
        let mut peers = self.peers.lock();
        if let Some(p) = peers.get(addr) {
            return p.clone();
        }
        let p = Arc::new(Peer {
            addr: addr.to_owned(),
            conn: Mutex::new(None),
            dial: Arc::new(tokio::sync::Mutex::new(Backoff::default())),
        });
        peers.insert(addr.to_owned(), p.clone());
        p
    }

    /// The live connection to `peer`, dialing it if needed. The dial runs in a task of its own
    /// and records its outcome even if this caller gives up first (its timeout), so a peer that
    /// accepts but never answers costs one handshake timeout and then a backoff, not every
    /// caller's full timeout.
    async fn conn(self: &Arc<Self>, peer: &Arc<Peer>) -> Result<Arc<Conn>, LinkError> {
        if let Some(c) = peer.live() {
            return Ok(c);
        }
        let backoff = peer.dial.clone().lock_owned().await;
        if let Some(c) = peer.live() {
            return Ok(c);
        }
        if self.shut.load(Ordering::Acquire) {
            return Err(LinkError::Closed);
        }
        if let Some((until, err)) = &backoff.last {
            if Instant::now() < *until {
                return Err(err.clone());
            }
        }
        let (tx, rx) = oneshot::channel();
        let (inner, peer) = (self.clone(), peer.clone());
        tokio::spawn(async move {
            let mut backoff = backoff;
            let r = inner.dial(&peer.addr).await;
            let r = match r {
                Ok(c) => {
                    *backoff = Backoff::default();
                    *peer.conn.lock() = Some(c.clone());
                    if inner.shut.load(Ordering::Acquire) {
                        // Shut down while dialing: shutdown() may have missed this one.
                        c.fail_all(LinkError::Closed);
                        Err(LinkError::Closed)
                    } else {
                        Ok(c)
                    }
                }
                Err(e) => {
                    backoff.failures = backoff.failures.saturating_add(1);
                    let wait = BACKOFF_MIN
                        .saturating_mul(1 << (backoff.failures - 1).min(10))
                        .min(BACKOFF_MAX);
                    backoff.last = Some((Instant::now() + wait, e.clone()));
                    Err(e)
                }
            };
            drop(backoff);
            let _ = tx.send(r);
        });
        rx.await.unwrap_or(Err(LinkError::Closed))
    }

    async fn dial(self: &Arc<Self>, addr: &str) -> Result<Arc<Conn>, LinkError> {
        let s = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(node = %self.name, "cluster link: cannot connect to {addr}: {e}");
                return Err(LinkError::Unreachable(format!(
                    "cannot connect to {addr}: {e}"
                )));
            }
            Err(_) => {
                return Err(LinkError::Unreachable(format!(
                    "cannot connect to {addr}: no answer within {HANDSHAKE_TIMEOUT:?}"
                )))
            }
        };
        let _ = s.set_nodelay(true);
        let peer_addr = s
            .peer_addr()
            .map_err(|e| LinkError::Unreachable(format!("{addr}: {e}")))?;
        let me = self.local();
        let (s, remote) = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            handshake::handshake(s, &me, peer_addr),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                warn!(node = %self.name, "cluster link: {addr} did not complete the handshake within {HANDSHAKE_TIMEOUT:?}");
                return Err(LinkError::Unreachable(format!(
                    "{addr} did not complete the handshake within {HANDSHAKE_TIMEOUT:?}"
                )));
            }
        };
        info!(node = %self.name, "cluster link: connected to node {} at {addr}", remote.name);
        self.remotes.lock().insert(addr.to_owned(), remote.clone());
        self.handler.connected(&remote);
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            remote,
            activity: frame::Activity::new(),
            out: tx,
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        tokio::spawn(run_dialed(
            self.clone(),
            conn.clone(),
            s,
            rx,
            addr.to_owned(),
        ));
        Ok(conn)
    }
}

impl Peer {
    fn live(&self) -> Option<Arc<Conn>> {
        let mut c = self.conn.lock();
        match &*c {
            Some(conn) if conn.pending.lock().closed.is_none() => Some(conn.clone()),
            Some(_) => {
                *c = None;
                None
            }
            None => None,
        }
    }
}

/// Removes a call from the pending map however the call ends (reply, timeout, dropped future).
/// A call given up before its reply (timeout, dropped future) is also cancelled on the other
/// side: a cancel frame makes it drop the handler's future.
struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
    slot: Option<Arc<OwnedSemaphorePermit>>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let unanswered = {
            let mut p = self.conn.pending.lock();
            p.calls.remove(&self.id).is_some() && p.closed.is_none()
        };
        if unanswered {
            let cancel = frame::Out::new(frame::CANCEL, self.id, 0, Bytes::new(), self.slot.take());
            let _ = self.conn.out.send(cancel);
        }
    }
}

impl Conn {
    fn closed_err(&self) -> LinkError {
        self.pending
            .lock()
            .closed
            .clone()
            .unwrap_or(LinkError::Closed)
    }

    async fn call(&self, service: u32, payload: Bytes) -> Result<Bytes, LinkError> {
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(s) => Arc::new(s),
            Err(_) => return Err(self.closed_err()),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock();
            if let Some(e) = &p.closed {
                return Err(e.clone());
            }
            p.calls.insert(id, tx);
        }
        let out = frame::Out::new(frame::CALL, id, service, payload, Some(slot.clone()));
        let _guard = PendingGuard {
            conn: self,
            id,
            slot: Some(slot),
        };
        if self.out.send(out).is_err() {
            return Err(self.closed_err());
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.closed_err()),
        }
    }

    /// Fails every pending call with `err` and refuses new ones (idempotent: the first error
    /// stays).
    fn fail_all(&self, err: LinkError) {
        let calls = {
            let mut p = self.pending.lock();
            if p.closed.is_some() {
                return;
            }
            p.closed = Some(err.clone());
            std::mem::take(&mut p.calls)
        };
        self.slots.close();
        for (_, tx) in calls {
            let _ = tx.send(Err(err.clone()));
        }
    }
}

/// Resolves once the link is shut down.
async fn shut_down(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Drives a dialed connection: replies in, calls out, until it fails or the link shuts down.
async fn run_dialed(
    inner: Arc<Inner>,
    conn: Arc<Conn>,
    s: TcpStream,
    rx: mpsc::UnboundedReceiver<frame::Out>,
    addr: String,
) {
    let (r, w) = s.into_split();
    let name = conn.remote.name.clone();
    let why = tokio::select! {
        r = read_replies(frame::FrameReader::new(r).with_activity(conn.activity.clone()), &conn) => r,
        r = heartbeat(&conn) => r,
        r = frame::write_loop(w, rx) => match r {
            Ok(()) => "the writer stopped".to_owned(),
            Err(e) => format!("write failed: {e}"),
        },
        _ = shut_down(inner.shut_tx.subscribe()) => String::new(),
    };
    if inner.shut.load(Ordering::Acquire) {
        conn.fail_all(LinkError::Closed);
    } else {
        warn!(node = %inner.name, "cluster link: connection to node {name} ({addr}) lost: {why}");
        conn.fail_all(LinkError::Unreachable(format!(
            "connection to node {name} ({addr}) lost: {why}"
        )));
    }
}

async fn read_replies(
    mut r: frame::FrameReader<tokio::net::tcp::OwnedReadHalf>,
    conn: &Conn,
) -> String {
    loop {
        let f = match r.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return "closed by the peer".into(),
            Err(e) => return e.to_string(),
        };
        let result = match f.kind {
            frame::REPLY_OK => Ok(f.payload),
            frame::REPLY_ERR => Err(LinkError::Remote(
                String::from_utf8_lossy(&f.payload).into_owned(),
            )),
            frame::PONG => continue,
            k => return format!("unexpected frame kind {k} from the node called"),
        };
        // A reply to a call given up (timed out or dropped) finds nothing and is dropped.
        let tx = conn.pending.lock().calls.remove(&f.id);
        if let Some(tx) = tx {
            let _ = tx.send(result);
        }
    }
}

/// Pings the peer when it has been silent for `PING_EVERY` (so an idle connection carries a
/// ping and a pong a second, and the listener can tell a live idle dialer from a vanished one);
/// returns once it has been silent for `DEAD_AFTER`.
async fn heartbeat(conn: &Conn) -> String {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let silent = conn.activity.silent_for();
        if silent >= DEAD_AFTER {
            return format!("no answer, not even to pings, for {silent:?}");
        }
        if silent >= PING_EVERY {
            let _ = conn
                .out
                .send(frame::Out::new(frame::PING, 0, 0, Bytes::new(), None));
        }
    }
}
