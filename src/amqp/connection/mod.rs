//! One client connection: protocol header, handshake (start, tune, open), the channel table,
//! heartbeats, connection-level errors and the orderly close.
//!
//! `ConnectionState` is the state machine; everything runs on the connection's own task except
//! the writer (see `outbox`). A connection error sends connection.close and then ignores all but
//! close/close-ok for a few seconds, as the spec asks. A client's connection.close is answered
//! with close-ok and the socket left for the client to close (within a few seconds), as RabbitMQ
//! does: a server that hangs up first makes some clients (amqp091-go) report the clean close as
//! an error.

use crate::amqp::channel::{After, Channel, Ctx};
use crate::amqp::codec::{self, Frame, Method};
use crate::amqp::outbox::Outbox;
use crate::broker::queue::{cancel_consumers, Queue};
use crate::broker::vhost::VHost;
use crate::config::Config;
use crate::error::{code, AmqpError, AmqpResult, ConnectionError};
use crate::observe::ConnInfo;
use crate::ServerState;
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

/// The context a channel call gets from its connection. A macro rather than a method, so that
/// the borrows stay on separate fields and the caller can still use `self.channels` beside it.
macro_rules! ctx {
    ($conn:ident, $vhost:expr) => {
        Ctx {
            vhost: $vhost,
            user: &$conn.user,
            grants: $conn.grants.as_mut().expect("set with the vhost"),
            memory: &$conn.server.broker.memory,
            conn_id: $conn.id,
            max_message_size: $conn.config.max_message_size,
            exclusive_queues: &mut $conn.exclusive_queues,
            cluster: $conn.server.broker.cluster(),
            deferred: &mut $conn.deferred,
        }
    };
}

mod alarms;
mod close;
mod deferred;
mod external;
mod frames;
mod handshake;
use handshake::server_properties;

const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Room offered to a socket read: small for a connection whose last read left room to spare
/// (idle connections hold little), big once a read filled all it was given (fewer system calls
/// and bigger batches for a busy publisher).
const READ_SMALL: usize = 16 * 1024;
const READ_BIG: usize = 128 * 1024;

/// Frames in one read's batch from which the writers it wakes run on other cores
/// (`broker::batch::Batch::mark_heavy`): a publisher under load keeps its core for parsing.
const HEAVY_BATCH: u64 = 32;

/// Channel ids are small integers the client picks (at most channel_max of them open): a
/// multiplicative hash is enough (the table is per connection and bounded), and SipHash showed up
/// at 10% of a core in profiles, three lookups per published message.
type ChannelIdHash = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectionState {
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent connection.close; waiting for close-ok.
    Closing,
    /// We answered the client's connection.close with close-ok: waiting (at most
    /// `CLOSE_TIMEOUT`) for the client to close the socket, ignoring whatever it sends.
    Answered,
    /// Done: stop reading.
    Closed,
}

struct Connection {
    id: u64,
    peer: SocketAddr,
    state: ConnectionState,
    outbox: Arc<Outbox>,
    config: Arc<Config>,
    server: Arc<ServerState>,
    frame_max: u32,
    channel_max: u16,
    heartbeat: Arc<AtomicU64>,
    user: String,
    vhost: Option<Arc<VHost>>,
    /// The user's permissions on `vhost`; set with it at connection.open.
    grants: Option<crate::auth::grants::Grants>,
    /// Its place under its vhost's and user's connection limits (set at connection.open), and
    /// the user's channel limit.
    admission: Option<crate::auth::limits::Admission>,
    channels: HashMap<u16, Channel, ChannelIdHash>,
    exclusive_queues: Vec<Weak<Queue>>,
    cancel_notify: bool,
    /// The client understands connection.blocked/unblocked.
    blocked_notify: bool,
    /// The client has published: the memory alarm stops reading from it.
    published: bool,
    /// Bytes of message bodies received but not yet complete, over all channels.
    partial_content: u64,
    /// A channel's tx.commit-ok waits for the message log: read no further frames until then.
    committing: bool,
    /// What management sees of this connection.
    info: Arc<ConnInfo>,
    /// A login decided at start-ok, answered once its delay (`auth::throttle`) is over.
    login: Option<handshake::PendingLogin>,
    /// The TLS session, on the amqps listener.
    tls: Option<Arc<crate::tls::Session>>,
    /// In a cluster: a channel's definition change (or lookup retry) to finish before reading
    /// further frames.
    deferred: Option<crate::amqp::channel::replicated::Deferred>,
    /// In a cluster: a start-ok or open this node would refuse (unknown user or password, vhost
    /// or permission), to decide again once caught up with the cluster's definitions.
    recheck: Option<Frame>,
    /// The frame being handled is such a second look (it is then answered as it stands).
    rechecking: bool,
}

fn sstr(s: &str) -> ShortString {
    ShortString::try_new(s).unwrap_or_else(|_| ShortString::from(""))
}

/// A byte stream a connection runs over: a TCP socket, or anything else that reads and writes
/// (a TLS session over one, an in-memory pipe) and splits into a reading and a writing half, so
/// that the writer task runs beside the reader.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    type Read: AsyncRead + Send + Unpin + 'static;
    type Write: AsyncWrite + Send + Unpin + 'static;
    fn split(self) -> (Self::Read, Self::Write);
}

impl Transport for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    /// The halves of a TCP socket need no lock between them.
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Transport for tokio::io::DuplexStream {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// A TLS session over TCP; its halves share the session behind a lock.
impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// Serve one accepted stream until it closes. Everything logged about it — here, in its
/// channels and in its writer task — carries a `conn` span: its id, peer, and once known its user
/// and vhost. `local` is the address the client connected to.
pub async fn serve<S: Transport>(
    sock: S,
    peer: SocketAddr,
    local: SocketAddr,
    server: Arc<ServerState>,
    shutdown: watch::Receiver<bool>,
) {
    let id = server.broker.next_connection_id();
    let span = tracing::info_span!(
        "conn",
        id,
        %peer,
        user = tracing::field::Empty,
        vhost = tracing::field::Empty
    );
    run(id, sock, peer, local, server, shutdown, None)
        .instrument(span)
        .await
}

/// `serve` for a stream whose TLS handshake is done: the connection offers the EXTERNAL
/// mechanism (the user named by the client certificate's CN, or its full DN, as `[tls]
/// cert_login_from` says) and shows the session in the management API.
pub async fn serve_tls<S: Transport>(
    sock: S,
    peer: SocketAddr,
    local: SocketAddr,
    server: Arc<ServerState>,
    shutdown: watch::Receiver<bool>,
    session: crate::tls::Session,
) {
    let id = server.broker.next_connection_id();
    let span = tracing::info_span!(
        "conn",
        id,
        %peer,
        tls = true,
        user = tracing::field::Empty,
        vhost = tracing::field::Empty
    );
    let session = Some(Arc::new(session));
    run(id, sock, peer, local, server, shutdown, session)
        .instrument(span)
        .await
}

async fn run<S: Transport>(
    id: u64,
    mut sock: S,
    peer: SocketAddr,
    local: SocketAddr,
    server: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<Arc<crate::tls::Session>>,
) {
    let handshake_timeout = Duration::from_millis(server.config.handshake_timeout_ms);
    // Protocol header, within the handshake timeout.
    let mut header = [0u8; 8];
    match tokio::time::timeout(handshake_timeout, sock.read_exact(&mut header)).await {
        Ok(Ok(_)) if &header == codec::PROTOCOL_HEADER => {}
        Ok(Ok(_)) => {
            warn!("closing connection: bad protocol header {:?}", header);
            let _ = sock.write_all(codec::PROTOCOL_HEADER).await;
            return;
        }
        Ok(Err(e)) => {
            debug!("connection closed before protocol header: {e}");
            return;
        }
        Err(_) => {
            warn!(
                "closing connection: no protocol header within {:?}",
                handshake_timeout
            );
            return;
        }
    }
    let (mut rd, wr) = sock.split();
    let outbox = Outbox::new();
    let heartbeat = Arc::new(AtomicU64::new(0));
    let config = server.config.clone();
    let info = Arc::new(ConnInfo::new(id, peer, local).with_tls(tls.clone()));
    let writer = tokio::spawn(
        outbox
            .clone()
            .run(wr, heartbeat.clone(), info.clone())
            .instrument(tracing::Span::current()),
    );
    let _registration = server.connections.register(info.clone());
    let mut conn = Connection {
        id,
        peer,
        state: ConnectionState::AwaitStartOk,
        outbox,
        frame_max: config.frame_max,
        channel_max: config.channel_max,
        config,
        server,
        heartbeat,
        user: String::new(),
        vhost: None,
        grants: None,
        admission: None,
        channels: HashMap::default(),
        exclusive_queues: Vec::new(),
        cancel_notify: false,
        blocked_notify: false,
        published: false,
        partial_content: 0,
        committing: false,
        info: info.clone(),
        login: None,
        tls,
        deferred: None,
        recheck: None,
        rechecking: false,
    };
    let mut synced_rx = conn.server.broker.messages().map(|l| l.subscribe());
    // In a cluster: wakes when other nodes answer for messages forwarded to them.
    let mut forwarded_rx = conn.server.broker.cluster().map(|c| c.progress());
    conn.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            // As RabbitMQ with rabbitmq_auth_mechanism_ssl: EXTERNAL on every TLS connection
            // (refused at start-ok if the client sent no certificate).
            mechanisms: if conn.tls.is_some() {
                "PLAIN AMQPLAIN EXTERNAL"
            } else {
                "PLAIN AMQPLAIN"
            }
            .into(),
            locales: "en_US".into(),
        })),
    );
    let mut buf = BytesMut::with_capacity(READ_SMALL);
    // The last read filled all the room it was given: more was waiting (see `READ_BIG`).
    let mut read_full = false;
    let handshake_deadline = tokio::time::Instant::now() + handshake_timeout;
    let mut close_deadline = None;
    let mut kicked = false;
    let mut backpressured = false;
    loop {
        // Parse everything buffered, then flush confirms once per batch.
        let (parse_started, mut frames) = (std::time::Instant::now(), 0u64);
        let batch = crate::broker::batch::Batch::begin();
        while !conn.committing
            && conn.login.is_none()
            && conn.deferred.is_none()
            && conn.recheck.is_none()
        {
            if conn.state == ConnectionState::Answered {
                buf.clear();
                break;
            }
            // The client is not reading what we send: parse nothing more until it does.
            if conn.outbox.is_full() {
                break;
            }
            if conn.take_whole_publish(&mut buf) {
                frames += 3;
                if conn.state == ConnectionState::Closed {
                    break;
                }
                continue;
            }
            let frame = match codec::decode(&mut buf, conn.frame_max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    conn.connection_error(e);
                    buf.clear();
                    break;
                }
            };
            frames += 1;
            if let Err(e) = conn.on_frame(frame) {
                conn.connection_error(e);
            }
            if conn.state == ConnectionState::Closed {
                break;
            }
        }
        if frames >= HEAVY_BATCH {
            crate::broker::batch::Batch::mark_heavy();
        }
        drop(batch);
        if frames > 0 {
            crate::observe::stages::AMQP_READ.record(parse_started, frames);
        }
        if let Some(login) = conn.login.take() {
            // A delayed login answer: this task sleeps (holding no lock), reading nothing more,
            // and the handshake timeout still applies.
            tokio::select! {
                _ = tokio::time::sleep_until(login.at.min(handshake_deadline)) => {}
                _ = shutdown.changed() => break,
            }
            if login.at > handshake_deadline {
                warn!("handshake timed out while a login answer was delayed");
                break;
            }
            if let Err(e) = conn.answer_login(login) {
                conn.connection_error(e);
            }
            if conn.state != ConnectionState::Closed {
                continue;
            }
        }
        if let Some(frame) = conn.recheck.take() {
            // A user, password, vhost or permission this node does not know (yet): catch up
            // with every change the cluster committed, then decide again, once.
            if let Some(c) = conn.server.broker.cluster().cloned() {
                tokio::select! {
                    r = tokio::time::timeout_at(handshake_deadline, c.barrier()) => {
                        if let Ok(Err(why)) = r {
                            warn!("could not catch up with the cluster before a login: {why}");
                        }
                    }
                    _ = shutdown.changed() => break,
                }
            }
            conn.rechecking = true;
            let r = conn.on_frame(frame);
            conn.rechecking = false;
            if let Err(e) = r {
                conn.connection_error(e);
            }
            if conn.state != ConnectionState::Closed {
                continue;
            }
        }
        if let Some(d) = conn.deferred.take() {
            conn.run_deferred(d, &mut shutdown).await;
            if conn.state != ConnectionState::Closed {
                continue;
            }
        }
        if std::mem::take(&mut kicked) {
            conn.handle_overdue_acks();
        }
        let synced = synced_rx
            .as_mut()
            .map_or(u64::MAX, |r| *r.borrow_and_update());
        let mut flow = None;
        let mut awaits_log = false;
        let mut awaits_nodes = false;
        conn.committing = false;
        for ch in conn.channels.values_mut() {
            ch.flush_confirms(synced);
            awaits_log |= ch.awaits_log();
            awaits_nodes |= forwarded_rx.is_some() && ch.awaits_nodes();
            conn.committing |= ch.committing();
            if let Some(q) = ch.take_flow() {
                flow = Some(q);
            }
        }
        if conn.committing && conn.state == ConnectionState::Open {
            tokio::select! {
                _ = log_advanced(&mut synced_rx) => {}
                _ = shutdown.changed() => {
                    conn.committing = false;
                    conn.connection_error(AmqpError::connection(
                        code::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                }
            }
            continue;
        }
        conn.committing = false;
        // Flow control: stop reading from a publisher that outruns its queue's consumers.
        if let Some(q) = flow {
            let started = std::time::Instant::now();
            q.wait_drained().await;
            crate::observe::stages::FLOW.record(started, 1);
        }
        // Publishers ahead of the message log's disk writes wait for the writer.
        if conn.published && conn.server.broker.publishers_wait() {
            while conn.server.broker.publishers_wait() {
                tokio::select! {
                    _ = log_advanced(&mut synced_rx) => {}
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = shutdown.changed() => break,
                }
                let synced = synced_rx
                    .as_mut()
                    .map_or(u64::MAX, |r| *r.borrow_and_update());
                for ch in conn.channels.values_mut() {
                    ch.flush_confirms(synced);
                }
            }
        }
        // Memory alarm: stop reading from publishers until memory falls back.
        if conn.published
            && conn.state == ConnectionState::Open
            && (conn.server.broker.memory.alarmed() || conn.server.broker.disk.alarmed())
        {
            conn.block_until_alarms_clear(&mut shutdown, &mut synced_rx)
                .await;
        }
        if conn.state == ConnectionState::Closed {
            break;
        }
        let closing = matches!(
            conn.state,
            ConnectionState::Closing | ConnectionState::Answered
        );
        if closing && close_deadline.is_none() {
            close_deadline = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
        }
        let deadline = match conn.state {
            ConnectionState::Closing | ConnectionState::Answered => {
                close_deadline.expect("set above")
            }
            ConnectionState::Open => {
                let hb = conn.heartbeat.load(Ordering::Relaxed);
                if hb == 0 {
                    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
                } else {
                    tokio::time::Instant::now() + Duration::from_secs(hb * 2)
                }
            }
            _ => handshake_deadline,
        };
        // Back-pressure on a client that sends faster than it reads what it is sent: its reads
        // wait until its outbox drains (or the close deadline passes).
        let full = conn.outbox.is_full();
        if full && !std::mem::replace(&mut backpressured, true) {
            info!(
                queued_bytes = conn.outbox.pending(),
                "client is not reading what it is sent: reading from it pauses until it does"
            );
        }
        // A busy connection reads in big pieces, an idle one keeps a small buffer.
        let want = if read_full { READ_BIG } else { READ_SMALL };
        if buf.capacity() - buf.len() < want / 4 {
            buf.reserve(want);
        }
        let room = buf.capacity() - buf.len();
        tokio::select! {
            _ = conn.outbox.room(), if full => {
                if conn.outbox.is_dead() {
                    debug!("socket write failed: closing");
                    break;
                }
            }
            // (An async block: its timer is only made when the branch is enabled and polled.)
            _ = async { tokio::time::sleep_until(deadline).await }, if full && closing => {
                debug!("client did not read the connection.close in time");
                break;
            }
            r = tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)), if !full => match r {
                Ok(Ok(0)) => {
                    if conn.state == ConnectionState::Open {
                        info!("client closed the socket without connection.close");
                    }
                    break;
                }
                Ok(Ok(n)) => {
                    read_full = n >= room;
                    info.received(n)
                }
                Ok(Err(e)) => {
                    debug!("read error: {e}");
                    break;
                }
                Err(_) => {
                    match conn.state {
                        ConnectionState::Open => warn!("missed heartbeats from client, timeout: {}s", conn.heartbeat.load(Ordering::Relaxed) * 2),
                        ConnectionState::Closing => debug!("no close-ok in time"),
                        ConnectionState::Answered => debug!("client kept the socket open after close-ok"),
                        _ => warn!("handshake timed out"),
                    }
                    break;
                }
            },
            // A consumer timeout found an overdue delivery on one of our channels.
            _ = conn.outbox.kicked() => kicked = true,
            _ = log_advanced(&mut synced_rx), if awaits_log => {}
            _ = log_advanced(&mut forwarded_rx), if awaits_nodes => {}
            _ = shutdown.changed(), if conn.state != ConnectionState::Closing => {
                if conn.state == ConnectionState::Answered {
                    break;
                }
                conn.connection_error(AmqpError::connection(
                    code::CONNECTION_FORCED,
                    "broker forced connection closure with reason 'shutdown'",
                ));
            }
            _ = info.closer.notified(), if !closing => {
                // Closed by an operator (management API DELETE /api/connections/{name}).
                conn.connection_error(AmqpError::connection(
                    code::CONNECTION_FORCED,
                    info.take_close_reason(),
                ));
            }
        }
    }
    conn.teardown();
    conn.outbox.close();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer).await;
    if conn.vhost.is_some() {
        info!("connection closed");
    } else {
        debug!("connection closed before it was opened");
    }
}

/// The message log synced further (never, without a log).
async fn log_advanced(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

impl Connection {
    fn send(&self, channel: u16, m: AMQPClass) {
        self.outbox.with(|b| codec::encode_method(b, channel, m));
    }

    /// Act on consumer timeouts the vhost's ack watch found on this connection's channels.
    fn handle_overdue_acks(&mut self) {
        if self.state != ConnectionState::Open {
            return;
        }
        let Some(vhost) = self.vhost.clone() else {
            return;
        };
        let mut ctx = ctx!(self, &vhost);
        let synced = self
            .server
            .broker
            .messages()
            .map_or(u64::MAX, |l| l.synced());
        for ch in self.channels.values_mut() {
            ch.handle_overdue(&mut ctx, synced);
        }
    }
}
