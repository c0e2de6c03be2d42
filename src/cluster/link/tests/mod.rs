//! The link over real TCP on 127.0.0.1: calls both ways, refusals, failures, hostile peers.

use std::sync::atomic::AtomicUsize;
use std::time::Instant as StdInstant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::cluster::types::node_id;

const SECRET: &[u8] = b"the cluster secret";

fn cfg(name: &str) -> LinkConfig {
    LinkConfig {
        node_name: name.into(),
        node_id: node_id(name),
        secret: SECRET.to_vec(),
        cluster_id: None,
        version: "0.1.0".into(),
    }
}

/// Services: 1 = echo prefixed with the node's name after a delay of (first byte % 8) ms (so
/// replies overtake each other), 2 = an error naming the caller, 3 = never answers, 4 = panics,
/// 5 = sleeps for the milliseconds in its payload (u64) counting running, most running at once
/// and cancelled (dropped unfinished) calls, anything else = plain echo.
struct Echo {
    name: String,
    connected: AtomicUsize,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    running: AtomicUsize,
    max_running: AtomicUsize,
    cancelled: AtomicUsize,
}

impl Echo {
    fn new(name: &str) -> Arc<Echo> {
        Arc::new(Echo {
            name: name.into(),
            connected: AtomicUsize::new(0),
            stats: Arc::default(),
        })
    }
}

/// Counts a service-5 call as running while it lives, and as cancelled if dropped unfinished.
struct Running(Arc<Stats>, bool);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Handler for Echo {
    fn call(
        &self,
        from: &Remote,
        service: u32,
        payload: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>> {
        let me = self.name.clone();
        let from = from.name.clone();
        let stats = self.stats.clone();
        Box::pin(async move {
            match service {
                1 => {
                    let d = payload.first().copied().unwrap_or(0) % 8;
                    tokio::time::sleep(Duration::from_millis(d as u64)).await;
                    let mut v = format!("{me}:").into_bytes();
                    v.extend_from_slice(&payload);
                    Ok(v.into())
                }
                2 => Err(format!("no such thing for {from}")),
                3 => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(Bytes::new())
                }
                4 => panic!("boom"),
                5 => {
                    let n = stats.running.fetch_add(1, Ordering::SeqCst) + 1;
                    stats.max_running.fetch_max(n, Ordering::SeqCst);
                    let mut guard = Running(stats, false);
                    let ms = u64::from_be_bytes(payload[..8].try_into().unwrap());
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    guard.1 = true;
                    Ok(Bytes::new())
                }
                _ => Ok(payload),
            }
        })
    }
    fn connected(&self, _from: &Remote) {
        self.connected.fetch_add(1, Ordering::SeqCst);
    }
}

async fn start_on(c: LinkConfig, addr: &str) -> (Link, String, Arc<Echo>) {
    let echo = Echo::new(&c.node_name);
    let (link, bound) = Link::start(c, addr, echo.clone()).await.unwrap();
    (link, bound.to_string(), echo)
}

async fn start(c: LinkConfig) -> (Link, String, Arc<Echo>) {
    start_on(c, "127.0.0.1:0").await
}

const T: Duration = Duration::from_secs(10);

/// Captures the log lines of this thread (tests using it run on a current-thread runtime, so
/// both links' tasks log here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let guard = tracing::subscriber::set_default(sub);
        (logs, guard)
    }

    /// Waits (up to 3 s) for a WARN line logged by `node` containing `text`.
    async fn wait_warn(&self, node: &str, text: &str) -> String {
        let deadline = StdInstant::now() + Duration::from_secs(3);
        loop {
            let all = String::from_utf8_lossy(&self.0.lock()).into_owned();
            let tag = format!("node={node}");
            if let Some(l) = all
                .lines()
                .find(|l| l.contains("WARN") && l.contains(&tag) && l.contains(text))
            {
                return l.to_owned();
            }
            assert!(
                StdInstant::now() < deadline,
                "no WARN line of {node} containing {text:?} in:\n{all}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn refused(r: Result<Bytes, LinkError>) -> String {
    match r {
        Err(LinkError::Refused(m)) => m,
        other => panic!("expected Refused, got {other:?}"),
    }
}

/// Two links call each other both ways at once, 1,000 calls in flight each way on one connection
/// per direction, replies overtaking each other: every reply reaches its own caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_both_ways_concurrently_with_replies_matched() {
    let (a, a_addr, a_echo) = start(cfg("warren@a")).await;
    let (b, b_addr, b_echo) = start(cfg("warren@b")).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        for (from, to, to_name) in [(&a, &b_addr, "warren@b"), (&b, &a_addr, "warren@a")] {
            let (from, to) = (from.clone(), to.clone());
            calls.spawn(async move {
                let payload = Bytes::from(format!("{}-{i}", i % 251).into_bytes());
                let r = from.call(&to, 1, payload.clone(), T).await.unwrap();
                let mut want = format!("{to_name}:").into_bytes();
                want.extend_from_slice(&payload);
                assert_eq!(r, want);
            });
        }
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    // One connection each way: each side saw one dialed and one accepted handshake.
    assert_eq!(a_echo.connected.load(Ordering::SeqCst), 2);
    assert_eq!(b_echo.connected.load(Ordering::SeqCst), 2);
    let rb = a.remote(&b_addr).unwrap();
    assert_eq!(
        (rb.name.as_str(), rb.id, rb.version.as_str()),
        ("warren@b", node_id("warren@b"), "0.1.0")
    );
    assert_eq!(rb.addr.to_string(), b_addr);
    assert_eq!(b.remote(&a_addr).unwrap().name, "warren@a");
    assert!(a.remote("127.0.0.1:1").is_none());
    assert_eq!(a.pending_calls(&b_addr), 0);
    a.shutdown();
    b.shutdown();
}

/// A handler's error comes back as Remote; a call without an answer as Timeout, and a timed-out
/// or dropped call leaves nothing in the pending map; a panicking handler is an error, not a
/// dead connection; an oversized call is refused before it is sent.
#[tokio::test]
async fn remote_errors_timeouts_cancellation_and_panics() {
    let (a, _, _) = start(cfg("warren@a")).await;
    let (b, b_addr, _) = start(cfg("warren@b")).await;
    match a.call(&b_addr, 2, Bytes::new(), T).await {
        Err(LinkError::Remote(m)) => assert_eq!(m, "no such thing for warren@a"),
        other => panic!("{other:?}"),
    }
    let t0 = StdInstant::now();
    match a
        .call(&b_addr, 3, Bytes::new(), Duration::from_millis(200))
        .await
    {
        Err(LinkError::Timeout) => {}
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(a.pending_calls(&b_addr), 0);

    let a2 = a.clone();
    let addr = b_addr.clone();
    let dropped = tokio::spawn(async move { a2.call(&addr, 3, Bytes::new(), T).await });
    while a.pending_calls(&b_addr) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    dropped.abort();
    let _ = dropped.await;
    assert_eq!(a.pending_calls(&b_addr), 0);

    match a.call(&b_addr, 4, Bytes::new(), T).await {
        Err(LinkError::Remote(m)) => assert_eq!(m, "the handler panicked"),
        other => panic!("{other:?}"),
    }
    let r = a
        .call(&b_addr, 0, Bytes::from_static(b"still here"), T)
        .await
        .unwrap();
    assert_eq!(&r[..], b"still here");

    match a
        .call(&b_addr, 0, Bytes::from(vec![0u8; MAX_PAYLOAD + 1]), T)
        .await
    {
        Err(LinkError::Unreachable(m)) => assert!(m.contains("exceeds"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A payload of 1 MiB passes, both ways.
    let big = Bytes::from(vec![7u8; 1 << 20]);
    assert_eq!(a.call(&b_addr, 0, big.clone(), T).await.unwrap(), big);
    a.shutdown();
    b.shutdown();
}

/// A node with another secret is refused by both sides, both log it naming the peer, and the
/// dialer's error says why; nothing connects.
#[tokio::test]
async fn wrong_secret_is_refused_by_both_sides() {
    let (logs, _g) = Logs::capture();
    let (a, _, a_echo) = start(cfg("warren@a")).await;
    let mut c = cfg("warren@b");
    c.secret = b"another secret".to_vec();
    let (b, b_addr, b_echo) = start(c).await;
    let m = refused(a.call(&b_addr, 0, Bytes::new(), T).await);
    assert!(
        m.contains("node warren@b") && m.contains("does not hold this cluster's secret"),
        "{m}"
    );
    let la = logs
        .wait_warn("warren@a", "does not hold this cluster's secret")
        .await;
    assert!(la.contains("warren@b") && la.contains(&b_addr), "{la}");
    let lb = logs
        .wait_warn("warren@b", "does not hold this cluster's secret")
        .await;
    assert!(lb.contains("warren@a") && lb.contains("127.0.0.1:"), "{lb}");
    assert_eq!(a_echo.connected.load(Ordering::SeqCst), 0);
    assert_eq!(b_echo.connected.load(Ordering::SeqCst), 0);
    assert!(a.remote(&b_addr).is_none());
    // Within the backoff the refusal is answered at once, without another dial.
    let t0 = StdInstant::now();
    refused(a.call(&b_addr, 0, Bytes::new(), T).await);
    assert!(t0.elapsed() < Duration::from_millis(40));
    a.shutdown();
    b.shutdown();
}

/// Mixed Warren versions are refused with a message naming both versions, on both sides.
#[tokio::test]
async fn mixed_versions_are_refused_naming_both() {
    let (logs, _g) = Logs::capture();
    let (a, _, _) = start(cfg("warren@a")).await;
    let mut c = cfg("warren@b");
    c.version = "0.2.0".into();
    let (b, b_addr, _) = start(c).await;
    let m = refused(a.call(&b_addr, 0, Bytes::new(), T).await);
    assert_eq!(
        m,
        "node warren@b runs Warren 0.2.0 and this node runs 0.1.0: mixed versions cannot form a cluster"
    );
    logs.wait_warn("warren@a", "runs Warren 0.2.0 and this node runs 0.1.0")
        .await;
    logs.wait_warn("warren@b", "runs Warren 0.1.0 and this node runs 0.2.0")
        .await;
    a.shutdown();
    b.shutdown();
}

/// Nodes of different clusters are refused; a node without a cluster id yet is accepted; a
/// cluster id set later applies to new connections.
#[tokio::test]
async fn different_cluster_ids_are_refused() {
    let (logs, _g) = Logs::capture();
    let mut c = cfg("warren@a");
    c.cluster_id = Some("X".into());
    let (a, _, _) = start(c).await;
    let mut c = cfg("warren@b");
    c.cluster_id = Some("Y".into());
    let (b, b_addr, _) = start(c).await;
    let m = refused(a.call(&b_addr, 0, Bytes::new(), T).await);
    assert_eq!(
        m,
        "node warren@b belongs to cluster Y, this node to cluster X"
    );
    logs.wait_warn(
        "warren@b",
        "node warren@a belongs to cluster X, this node to cluster Y",
    )
    .await;

    let (c, c_addr, _) = start(cfg("warren@c")).await;
    a.call(&c_addr, 0, Bytes::new(), T).await.unwrap();
    assert_eq!(a.remote(&c_addr).unwrap().cluster_id, None);
    c.set_cluster_id("Z".into());
    let mut d = cfg("warren@d");
    d.cluster_id = Some("X".into());
    let (d, _, _) = start(d).await;
    let m = refused(d.call(&c_addr, 0, Bytes::new(), T).await);
    assert!(m.contains("cluster Z") && m.contains("cluster X"), "{m}");
    // The connection opened before the change stays.
    a.call(&c_addr, 0, Bytes::new(), T).await.unwrap();
    for l in [a, b, c, d] {
        l.shutdown();
    }
}

/// A node whose id does not match its name, or that has the other node's own name, is refused;
/// when the listener refuses, its reason reaches the dialer through the refusal message.
#[tokio::test]
async fn bad_node_ids_and_own_name_are_refused() {
    let (logs, _g) = Logs::capture();
    let (a, a_addr, a_echo) = start(cfg("warren@a")).await;
    let mut c = cfg("warren@e");
    c.node_id = 42;
    let (e, _, _) = start(c).await;
    let m = refused(e.call(&a_addr, 0, Bytes::new(), T).await);
    assert!(
        m.starts_with("node warren@a refused the link: node warren@e claims node id 42"),
        "{m}"
    );
    logs.wait_warn(
        "warren@a",
        "claims node id 42, which does not match its name",
    )
    .await;
    logs.wait_warn("warren@e", "refused the link").await;

    let (twin, _, _) = start(cfg("warren@a")).await;
    let m = refused(twin.call(&a_addr, 0, Bytes::new(), T).await);
    assert!(m.contains("has this node's own name"), "{m}");
    assert_eq!(a_echo.connected.load(Ordering::SeqCst), 0);
    for l in [a, e, twin] {
        l.shutdown();
    }
}

/// When the peer dies, calls pending on it fail at once (not at their timeouts); calls meanwhile
/// fail fast; when it comes back on the same address the next call reconnects. The dead side's
/// own calls fail with Closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_death_fails_pending_calls_fast_and_the_link_reconnects() {
    let (a, a_addr, _) = start(cfg("warren@a")).await;
    let (b, b_addr, _) = start(cfg("warren@b")).await;
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (a, b_addr) = (a.clone(), b_addr.clone());
        pending.spawn(async move {
            a.call(&b_addr, 3, Bytes::new(), Duration::from_secs(60))
                .await
        });
    }
    let b2 = b.clone();
    let a_addr2 = a_addr.clone();
    let own = tokio::spawn(async move {
        b2.call(&a_addr2, 3, Bytes::new(), Duration::from_secs(60))
            .await
    });
    while a.pending_calls(&b_addr) < 10 || b.pending_calls(&a_addr) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = StdInstant::now();
    b.shutdown();
    while let Some(r) = pending.join_next().await {
        match r.unwrap() {
            Err(LinkError::Unreachable(m)) => assert!(m.contains("lost"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(own.await.unwrap(), Err(LinkError::Closed)));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(matches!(
        b.call(&a_addr, 0, Bytes::new(), T).await,
        Err(LinkError::Closed)
    ));

    // While it is down: Unreachable, quickly (the listener closes just after shutdown()).
    let t0 = StdInstant::now();
    loop {
        match a.call(&b_addr, 0, Bytes::new(), T).await {
            Err(LinkError::Unreachable(_)) => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            other => panic!("{other:?}"),
        }
    }
    let t1 = StdInstant::now();
    for _ in 0..100 {
        assert!(matches!(
            a.call(&b_addr, 0, Bytes::new(), T).await,
            Err(LinkError::Unreachable(_))
        ));
    }
    assert!(t1.elapsed() < Duration::from_secs(1), "{:?}", t1.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(3));

    // Back on the same address: the next call after the backoff reconnects.
    let b_new = loop {
        match Link::start(cfg("warren@b"), &b_addr, Echo::new("warren@b")).await {
            Ok((l, _)) => break l,
            Err(_) if t1.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("cannot listen on {b_addr} again: {e}"),
        }
    };
    let t2 = StdInstant::now();
    let r = loop {
        match a.call(&b_addr, 1, Bytes::from_static(b"x"), T).await {
            Ok(r) => break r,
            Err(LinkError::Unreachable(_)) if t2.elapsed() < Duration::from_secs(3) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(&r[..], b"warren@b:x");
    a.shutdown();
    b_new.shutdown();
}

/// A peer that passed the handshake and then goes silent (a stopped process, a path cut
/// without a reset): pending calls fail with Unreachable within a few pings, not at their own
/// (long) timeouts. A peer that is alive but slow to answer keeps its connection (it answers
/// pings).
#[tokio::test]
async fn a_silent_peer_is_dropped_but_a_slow_one_is_not() {
    let (a, _, _) = start(cfg("warren@a")).await;
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, peer)) = silent.accept().await {
            let me = handshake::Local {
                name: "warren@silent",
                id: node_id("warren@silent"),
                version: "0.1.0",
                cluster_id: None,
                secret: SECRET,
            };
            if let Ok((mut s, _)) = handshake::handshake(s, &me, peer).await {
                tokio::spawn(async move {
                    let mut sink = vec![0u8; 4096];
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        }
    });
    let t0 = StdInstant::now();
    match a
        .call(&silent_addr, 0, Bytes::new(), Duration::from_secs(60))
        .await
    {
        Err(LinkError::Unreachable(m)) => assert!(m.contains("not even to pings"), "{m}"),
        other => panic!("{other:?}"),
    }
    let took = t0.elapsed();
    assert!(
        took >= DEAD_AFTER && took < DEAD_AFTER + Duration::from_secs(2),
        "{took:?}"
    );

    let (b, b_addr, _) = start(cfg("warren@b")).await;
    let wait = DEAD_AFTER * 2 + PING_EVERY * 2;
    match a.call(&b_addr, 3, Bytes::new(), wait).await {
        Err(LinkError::Timeout) => {}
        other => panic!("{other:?}"),
    }
    a.shutdown();
    b.shutdown();
}

/// A peer that accepts connections but never answers the handshake: callers with short
/// timeouts time out, but the one dial in progress carries on to the handshake timeout and its
/// failure is remembered, so later calls fail at once instead of each waiting (and dialing) again.
#[tokio::test]
async fn a_peer_that_never_answers_the_handshake_costs_one_dial() {
    let (a, _, _) = start(cfg("warren@a")).await;
    let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let t0 = StdInstant::now();
    while t0.elapsed() < HANDSHAKE_TIMEOUT + Duration::from_millis(300) {
        match a
            .call(&mute_addr, 0, Bytes::new(), Duration::from_millis(100))
            .await
        {
            Err(LinkError::Timeout) => {}
            Err(LinkError::Unreachable(m)) => {
                assert!(m.contains("did not complete the handshake"), "{m}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(t0.elapsed() >= HANDSHAKE_TIMEOUT, "{:?}", t0.elapsed());
    let t1 = StdInstant::now();
    assert!(matches!(
        a.call(&mute_addr, 0, Bytes::new(), T).await,
        Err(LinkError::Unreachable(_))
    ));
    assert!(t1.elapsed() < Duration::from_millis(40));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    a.shutdown();
}

mod limits;
