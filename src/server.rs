//! Starting and stopping a broker: `Server::start` binds the listeners, recovers the store and
//! spawns the background tasks; the `ServerHandle` it returns stops them all.

use crate::broker::Broker;
use crate::config::Config;
use crate::state::{Listeners, ServerState};
use crate::tls::Tls;
use crate::{amqp, auth, http, metrics, store};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for AMQP on {addr}: {source}")]
    AmqpListen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpListen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the TLS listeners: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
}

/// A running broker.
pub struct ServerHandle {
    pub amqp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The dedicated Prometheus listener, if `prometheus_listen` is set and could be bound.
    pub prometheus_addr: Option<SocketAddr>,
    /// The AMQP-over-TLS listener, if `amqps_listen` is set.
    pub amqps_addr: Option<SocketAddr>,
    /// The management listener over HTTPS, if `https_listen` is set.
    pub https_addr: Option<SocketAddr>,
    pub state: Arc<ServerState>,
    tls: Option<Arc<Tls>>,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
    /// The amqps accept loop and the https server, when configured.
    tls_tasks: Vec<JoinHandle<()>>,
    http: JoinHandle<()>,
    connections: Arc<Semaphore>,
    max_connections: u32,
}

pub struct Server;

impl Server {
    /// Bind the listeners and start serving.
    pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
        if !config.node_name.is_empty() {
            crate::config::set_this_node(config.node_name.clone());
        }
        let started = std::time::Instant::now();
        let store = Arc::new(store::Store::open_with(
            &config.data_dir,
            config.log_options(),
        )?);
        let defs = store.load()?;
        // TLS first: a TLS listener without usable certificate files is a start error.
        let tls = if config.amqps_listen.is_empty() && config.https_listen.is_empty() {
            None
        } else {
            Some(Arc::new(Tls::load(&config.tls)?))
        };
        let amqp = TcpListener::bind(&config.amqp_listen)
            .await
            .map_err(|source| StartError::AmqpListen {
                addr: config.amqp_listen.clone(),
                source,
            })?;
        let http = TcpListener::bind(&config.http_listen)
            .await
            .map_err(|source| StartError::HttpListen {
                addr: config.http_listen.clone(),
                source,
            })?;
        let bind_opt = |addr: &String| {
            let addr = addr.clone();
            async move {
                if addr.is_empty() {
                    return Ok(None);
                }
                TcpListener::bind(&addr)
                    .await
                    .map(Some)
                    .map_err(|source| (addr, source))
            }
        };
        let amqps = bind_opt(&config.amqps_listen)
            .await
            .map_err(|(addr, source)| StartError::AmqpListen { addr, source })?;
        let https = bind_opt(&config.https_listen)
            .await
            .map_err(|(addr, source)| StartError::HttpListen { addr, source })?;
        let amqps_addr = amqps.as_ref().and_then(|l| l.local_addr().ok());
        let https_addr = https.as_ref().and_then(|l| l.local_addr().ok());
        // The HTTPS listener's accept task starts here, serving once `http::serve` takes it.
        let https = match (https, &tls) {
            (Some(l), Some(t)) => {
                let timeout = Duration::from_millis(config.handshake_timeout_ms);
                Some(
                    crate::tls::HttpsListener::new(l, t.clone(), timeout).map_err(|source| {
                        StartError::HttpListen {
                            addr: config.https_listen.clone(),
                            source,
                        }
                    })?,
                )
            }
            _ => None,
        };
        // Prometheus is auxiliary: a port already taken is a warning, not a refusal to start.
        let prometheus = if config.prometheus_listen.is_empty() {
            None
        } else {
            match TcpListener::bind(&config.prometheus_listen).await {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!(
                        "cannot listen for Prometheus on {}: {e}",
                        config.prometheus_listen
                    );
                    None
                }
            }
        };
        let prometheus_addr = prometheus.as_ref().and_then(|l| l.local_addr().ok());
        let amqp_addr = amqp.local_addr().expect("bound socket has an address");
        let http_addr = http.local_addr().expect("bound socket has an address");
        let max_connections = config.max_connections.min(Semaphore::MAX_PERMITS) as u32;
        let users = Arc::new(auth::Access::load(
            Some(store.clone()),
            &config.default_user,
            &config.default_pass,
            &config.loopback_users,
        )?);
        let logins = Arc::new(auth::throttle::Logins::new(
            Duration::from_millis(config.auth_failure_delay_ms),
            Duration::from_millis(config.auth_failure_delay_max_ms),
        ));
        let state = Arc::new(ServerState {
            broker: Arc::new(Broker::new(config.memory_limit(), Some(store.clone()))),
            config: Arc::new(config),
            connections: Default::default(),
            users,
            logins,
            rates: Default::default(),
            store: Some(store),
            listeners: Listeners {
                amqp: amqp_addr,
                http: http_addr,
                prometheus: prometheus_addr,
                amqps: amqps_addr,
                https: https_addr,
            },
        });
        let vhosts = state.users.vhosts();
        for v in &vhosts {
            state.broker.add_vhost(&v.name, state.store.clone());
        }
        if !vhosts.iter().any(|v| v.name == "/") {
            state.broker.delete_vhost("/");
        }
        state
            .broker
            .disk
            .set_limit(state.config.disk_free_limit_bytes);
        state.broker.check_disk();
        let messages = state.broker.recover(&defs);
        state
            .broker
            .configure_consumer_timeout(state.config.consumer_timeout());
        info!(
            messages,
            recovery_ms = started.elapsed().as_millis() as u64,
            exchanges = defs.exchanges.len(),
            queues = defs.queues.len(),
            bindings = defs.bindings.len(),
            data_dir = %state.config.data_dir.display(),
            "recovered durable definitions and messages"
        );
        if !state.config.cluster.listen.is_empty() {
            let cluster = start_cluster(&state).await.map_err(StartError::Cluster)?;
            state.broker.set_cluster(cluster.clone());
            crate::broker::replicated::start_replicas(&state.broker);
            state.broker.serve_other_nodes();
            // Vhosts, users and permissions first: the definitions need their vhosts.
            let mut ops = crate::broker::admin::adoption_ops(
                &state.users,
                &state.config.default_user,
                &state.config.default_pass,
            );
            ops.extend(crate::broker::replicated::adoption_ops(
                &defs,
                &cluster.name,
            ));
            let marker = state.config.data_dir.join("cluster").join("adopted");
            tokio::spawn(cluster.adopt(ops, marker));
        }
        let (shutdown, rx) = watch::channel(false);
        let connections = Arc::new(Semaphore::new(max_connections as usize));
        let accept = tokio::spawn(accept_loop(
            amqp,
            None,
            state.clone(),
            rx.clone(),
            connections.clone(),
        ));
        let mut tls_tasks = Vec::new();
        if let (Some(l), Some(t)) = (amqps, &tls) {
            tls_tasks.push(tokio::spawn(accept_loop(
                l,
                Some(t.clone()),
                state.clone(),
                rx.clone(),
                connections.clone(),
            )));
        }
        if let Some(l) = https {
            tls_tasks.push(tokio::spawn(http::serve(l, state.clone(), rx.clone())));
        }
        tokio::spawn(expiry_sweeper(state.clone(), rx.clone()));
        tokio::spawn(disk_watch(state.broker.clone(), rx.clone()));
        if let Some(l) = prometheus {
            tokio::spawn(http::serve_prometheus(l, state.clone(), rx.clone()));
        }
        let http = tokio::spawn(http::serve(http, state.clone(), rx));
        if let Some(a) = amqps_addr {
            info!(amqps_addr = %a, "AMQP over TLS listening");
        }
        if let Some(a) = https_addr {
            info!(https_addr = %a, "management over HTTPS listening");
        }
        info!(%amqp_addr, %http_addr, "Warren {} started", env!("CARGO_PKG_VERSION"));
        Ok(ServerHandle {
            amqp_addr,
            http_addr,
            prometheus_addr,
            amqps_addr,
            https_addr,
            state,
            tls,
            shutdown,
            accept,
            tls_tasks,
            http,
            connections,
            max_connections,
        })
    }
}

/// Expires messages promptly, wherever they are in their queues, consumers or not. The same
/// tick advances the coarse clock (message ages) and samples message rates every
/// `metrics::SAMPLE_INTERVAL`: one wake-up source, not two (a second 10 ms ticker measurably
/// raised RSS per queue by moving connection tasks between worker threads).
async fn expiry_sweeper(state: Arc<ServerState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sample = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                state.broker.clock.tick();
                state.broker.sweep_expired();
                if tokio::time::Instant::now() >= next_sample {
                    next_sample += metrics::SAMPLE_INTERVAL;
                    state.rates.sample(&state.broker, &state.connections);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Re-checks free disk space (and the message log's health) for the disk alarm.
/// Start this node's part of the cluster: its link, the metadata group, forming or joining.
async fn start_cluster(
    state: &Arc<ServerState>,
) -> Result<Arc<crate::cluster::node::Cluster>, String> {
    let config = &state.config;
    let secret = config.cluster_secret()?;
    let node_name = config.node_name();
    let broker = Arc::downgrade(&state.broker);
    let apply = crate::broker::replicated::Apply {
        broker: broker.clone(),
        on_formed: Box::new(move |id| {
            if let Some(c) = broker.upgrade().as_ref().and_then(|b| b.cluster().cloned()) {
                c.formed(id);
            }
        }),
        seen: Default::default(),
        access: state.users.clone(),
        connections: state.connections.clone(),
        store: state.store.clone(),
    };
    let log = state
        .store
        .as_ref()
        .map(|s| s.messages().clone())
        .ok_or("a cluster node needs a data directory")?;
    crate::cluster::node::Cluster::start(
        crate::cluster::node::Settings {
            node_name,
            listen: config.cluster.listen.clone(),
            seeds: config.cluster.seeds.clone(),
            secret,
            dir: config.data_dir.join("cluster"),
            quorum_snapshot_every: match config.cluster.quorum_snapshot_every {
                0 => 5000,
                n => n,
            },
            quorum_segment_bytes: match config.cluster.quorum_segment_bytes {
                0 => crate::cluster::raft_log::RaftLogOptions::default().segment_size,
                n => n,
            },
            // The version other nodes must match; a test may pose as another version.
            version: std::env::var("WARREN_CLUSTER_VERSION")
                .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned()),
        },
        Arc::new(apply),
        log,
    )
    .await
}

async fn disk_watch(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.check_disk()).await;
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Accept AMQP connections, plain or (with `tls`) over TLS, each served by its own task: the
/// TLS handshake runs there, bounded by the handshake timeout, never in this loop.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
    connections: Arc<Semaphore>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        warn!(%peer, "refusing connection: max_connections ({}) reached",
                            state.config.max_connections);
                        drop(sock);
                        continue;
                    };
                    let st = state.clone();
                    let rx = shutdown.clone();
                    let _ = sock.set_nodelay(true);
                    let local = sock.local_addr().unwrap_or(peer);
                    let Some(tls) = &tls else {
                        tokio::spawn(async move {
                            amqp::connection::serve(sock, peer, local, st, rx).await;
                            drop(permit);
                        });
                        continue;
                    };
                    let acceptor = tls.amqp_acceptor();
                    tokio::spawn(async move {
                        let timeout = Duration::from_millis(st.config.handshake_timeout_ms);
                        let mut stop = rx.clone();
                        let session = tokio::select! {
                            s = crate::tls::handshake(acceptor, sock, peer, timeout) => s,
                            _ = stop.changed() => None,
                        };
                        if let Some(s) = session {
                            let info = crate::tls::Session::of(s.get_ref().1);
                            amqp::connection::serve_tls(s, peer, local, st, rx, info)
                                .await;
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

impl ServerHandle {
    /// Re-read the TLS certificate, key and CA files (what SIGHUP does): new handshakes use
    /// them, open connections stay as they are; on failure the old ones stay in use.
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        match &self.tls {
            Some(t) => t.reload(),
            None => Err(crate::tls::TlsError::NotConfigured),
        }
    }

    /// Stop accepting, close every connection with 320 CONNECTION_FORCED, wait for them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept.await;
        for t in self.tls_tasks {
            let _ = t.await;
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.connections.acquire_many(self.max_connections),
        )
        .await;
        let _ = self.http.await;
        // Everything the store was told is written and synced; later drops of queues and
        // messages are not acknowledgements.
        if let Some(c) = self.state.broker.cluster() {
            c.shutdown().await;
        }
        self.state.broker.close_store();
        info!("Warren stopped");
    }
}
