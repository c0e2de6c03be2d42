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

fn ms(n: u64) -> Bytes {
    Bytes::copy_from_slice(&n.to_be_bytes())
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t0 = StdInstant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "waited 3 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A call the caller gives up on (timeout or dropped future) is cancelled on the callee: the
/// handler's future is dropped rather than left running; the same for every call of a
/// connection whose caller goes away. Calls answered in time are not cancelled.
#[tokio::test]
async fn calls_given_up_are_cancelled_on_the_callee() {
    let (a, _, _) = start(cfg("warren@a")).await;
    let (b, b_addr, b_echo) = start(cfg("warren@b")).await;
    let stats = b_echo.stats.clone();
    match a
        .call(&b_addr, 5, ms(60_000), Duration::from_millis(200))
        .await
    {
        Err(LinkError::Timeout) => {}
        other => panic!("{other:?}"),
    }
    wait_until("the timed-out call's cancellation", || {
        stats.cancelled.load(Ordering::SeqCst) == 1 && stats.running.load(Ordering::SeqCst) == 0
    })
    .await;

    let (a2, addr) = (a.clone(), b_addr.clone());
    let dropped = tokio::spawn(async move { a2.call(&addr, 5, ms(60_000), T).await });
    wait_until("the call to start", || {
        stats.running.load(Ordering::SeqCst) == 1
    })
    .await;
    dropped.abort();
    wait_until("the dropped call's cancellation", || {
        stats.cancelled.load(Ordering::SeqCst) == 2
    })
    .await;

    a.call(&b_addr, 5, ms(10), T).await.unwrap();
    assert_eq!(stats.cancelled.load(Ordering::SeqCst), 2);

    let mut calls = Vec::new();
    for _ in 0..5 {
        let (a2, addr) = (a.clone(), b_addr.clone());
        calls.push(tokio::spawn(async move {
            a2.call(&addr, 5, ms(60_000), T).await
        }));
    }
    wait_until("5 calls to start", || {
        stats.running.load(Ordering::SeqCst) == 5
    })
    .await;
    a.shutdown();
    for c in calls {
        assert!(matches!(c.await.unwrap(), Err(LinkError::Closed)));
    }
    wait_until("the lost connection's calls to be cancelled", || {
        stats.cancelled.load(Ordering::SeqCst) == 7 && stats.running.load(Ordering::SeqCst) == 0
    })
    .await;
    b.shutdown();
}

/// At most MAX_IN_FLIGHT calls of one connection run at once; more callers wait for a slot (and
/// all complete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_are_bounded_and_callers_wait() {
    let (a, _, _) = start(cfg("warren@a")).await;
    let (b, b_addr, b_echo) = start(cfg("warren@b")).await;
    let stats = b_echo.stats.clone();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..MAX_IN_FLIGHT + 100 {
        let (a, addr) = (a.clone(), b_addr.clone());
        calls.spawn(async move { a.call(&addr, 5, ms(1500), Duration::from_secs(60)).await });
    }
    wait_until("MAX_IN_FLIGHT calls running", || {
        stats.running.load(Ordering::SeqCst) == MAX_IN_FLIGHT
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stats.running.load(Ordering::SeqCst), MAX_IN_FLIGHT);
    assert_eq!(a.pending_calls(&b_addr), MAX_IN_FLIGHT);
    while let Some(r) = calls.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(stats.max_running.load(Ordering::SeqCst), MAX_IN_FLIGHT);
    assert_eq!(stats.cancelled.load(Ordering::SeqCst), 0);
    a.shutdown();
    b.shutdown();
}

async fn wait_closed(s: &mut TcpStream, within: Duration) -> Duration {
    let t0 = StdInstant::now();
    let mut sink = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut sink)).await {
        Ok(_) => t0.elapsed(), // EOF or reset: closed either way
        Err(_) => panic!("the listener kept the connection open for {within:?}"),
    }
}

/// Garbage, an oversized hello, a stalled handshake and, after a good handshake, an oversized
/// frame or a frame of the wrong kind: the listener drops each connection, stays up and keeps
/// serving good peers (also while a stalled one is pending).
#[tokio::test]
async fn hostile_connections_are_dropped_and_good_peers_still_served() {
    let (logs, _g) = Logs::capture();
    let (a, a_addr, _) = start(cfg("warren@a")).await;
    let (b, _, _) = start(cfg("warren@b")).await;

    let mut s = TcpStream::connect(&a_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: warren\r\n\r\n")
        .await
        .unwrap();
    wait_closed(&mut s, Duration::from_secs(1)).await;
    logs.wait_warn("warren@a", "bad magic").await;

    let mut s = TcpStream::connect(&a_addr).await.unwrap();
    let mut hello = handshake::MAGIC.to_vec();
    hello.extend_from_slice(&1u16.to_be_bytes());
    hello.extend_from_slice(&u16::MAX.to_be_bytes());
    s.write_all(&hello).await.unwrap();
    wait_closed(&mut s, Duration::from_secs(1)).await;
    logs.wait_warn("warren@a", "above 1024").await;

    // Hellos with a field above 255 bytes, or a body that does not decode.
    let long = "x".repeat(256);
    let hellos = [
        handshake::Hello {
            version: "0.1.0".into(),
            name: long.clone(),
            id: node_id(&long),
            cluster_id: None,
            nonce: [0; 32],
        },
        handshake::Hello {
            version: long.clone(),
            name: "warren@v".into(),
            id: node_id("warren@v"),
            cluster_id: None,
            nonce: [0; 32],
        },
        handshake::Hello {
            version: "0.1.0".into(),
            name: "warren@c".into(),
            id: node_id("warren@c"),
            cluster_id: Some(long.clone()),
            nonce: [0; 32],
        },
        handshake::Hello {
            version: "0.1.0".into(),
            name: "warren@x\nERROR forged".into(),
            id: node_id("warren@x\nERROR forged"),
            cluster_id: None,
            nonce: [0; 32],
        },
    ];
    let mut bodies: Vec<Vec<u8>> = hellos
        .iter()
        .map(|h| postcard::to_stdvec(h).unwrap())
        .collect();
    bodies.push(vec![0xff; 40]);
    for body in bodies {
        let mut s = TcpStream::connect(&a_addr).await.unwrap();
        let mut hello = handshake::MAGIC.to_vec();
        hello.extend_from_slice(&1u16.to_be_bytes());
        hello.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hello.extend_from_slice(&body);
        s.write_all(&hello).await.unwrap();
        wait_closed(&mut s, Duration::from_secs(1)).await;
    }
    logs.wait_warn("warren@a", "field above 255 bytes").await;
    logs.wait_warn("warren@a", "does not decode").await;
    logs.wait_warn("warren@a", "its hello has control characters")
        .await;

    // A stall: nothing sent. Good peers are served meanwhile; it is closed at the timeout.
    let mut stalled = TcpStream::connect(&a_addr).await.unwrap();
    let r = b
        .call(&a_addr, 1, Bytes::from_static(b"ok"), T)
        .await
        .unwrap();
    assert_eq!(&r[..], b"warren@a:ok");
    let took = wait_closed(&mut stalled, HANDSHAKE_TIMEOUT + Duration::from_secs(2)).await;
    assert!(took > HANDSHAKE_TIMEOUT / 2, "{took:?}");

    // Authenticated peers that break the framing.
    for bad in [
        vec![0xff, 0xff, 0xff, 0xff],
        ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec(),
        frame_bytes(frame::REPLY_OK, 1, 0, b"not a call"),
    ] {
        let s = TcpStream::connect(&a_addr).await.unwrap();
        let peer = s.peer_addr().unwrap();
        let me = handshake::Local {
            name: "warren@raw",
            id: node_id("warren@raw"),
            version: "0.1.0",
            cluster_id: None,
            secret: SECRET,
        };
        let (mut s, remote) = handshake::handshake(s, &me, peer).await.unwrap();
        assert_eq!(remote.name, "warren@a");
        // A good call first, on the raw connection.
        s.write_all(&frame_bytes(frame::CALL, 9, 0, b"raw"))
            .await
            .unwrap();
        let mut reply = [0u8; 17 + 3];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[4], frame::REPLY_OK);
        assert_eq!(&reply[17..], b"raw");
        s.write_all(&bad).await.unwrap();
        wait_closed(&mut s, Duration::from_secs(1)).await;
    }
    // An authenticated dialer that vanishes without a close (sends nothing more, not even
    // pings) is closed by the listener.
    let s = TcpStream::connect(&a_addr).await.unwrap();
    let peer = s.peer_addr().unwrap();
    let me = handshake::Local {
        name: "warren@gone",
        id: node_id("warren@gone"),
        version: "0.1.0",
        cluster_id: None,
        secret: SECRET,
    };
    let (mut s, _) = handshake::handshake(s, &me, peer).await.unwrap();
    let took = wait_closed(&mut s, IDLE_CLOSE + Duration::from_secs(2)).await;
    assert!(took >= IDLE_CLOSE - Duration::from_millis(100), "{took:?}");
    logs.wait_warn("warren@a", "not even a ping").await;

    let l = logs.wait_warn("warren@a", "frame length 4294967295").await;
    assert!(l.contains("warren@raw"), "{l}");
    logs.wait_warn("warren@a", &format!("frame length {}", MAX_FRAME + 1))
        .await;
    logs.wait_warn("warren@a", "unexpected frame kind 1").await;

    let r = b
        .call(&a_addr, 1, Bytes::from_static(b"ok"), T)
        .await
        .unwrap();
    assert_eq!(&r[..], b"warren@a:ok");
    a.shutdown();
    b.shutdown();
}

fn frame_bytes(kind: u8, id: u64, service: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = ((13 + payload.len()) as u32).to_be_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&service.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A listener that is not a Warren link (wrong magic) refuses the dialer; a bad config does not
/// start.
#[tokio::test]
async fn dialing_something_else_is_refused_and_bad_configs_do_not_start() {
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = other.accept().await {
            let _ = s.write_all(b"AMQP\x00\x00\x09\x01 and then some").await;
        }
    });
    let (a, _, _) = start(cfg("warren@a")).await;
    let m = refused(a.call(&other_addr, 0, Bytes::new(), T).await);
    assert!(m.contains("bad magic"), "{m}");
    a.shutdown();

    let mut c = cfg("warren@x");
    c.secret.clear();
    assert!(Link::start(c, "127.0.0.1:0", Echo::new("x")).await.is_err());
    let c = cfg(&"n".repeat(256));
    assert!(Link::start(c, "127.0.0.1:0", Echo::new("x")).await.is_err());
}

/// Throughput of one connection: 1 KiB calls, 1,000 in flight. Not a pass/fail test:
/// `cargo test --lib cluster::link::tests::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let (a, _, _) = start(cfg("warren@a")).await;
    let (b, b_addr, _) = start(cfg("warren@b")).await;
    let payload = Bytes::from(vec![1u8; 1024]);
    a.call(&b_addr, 0, payload.clone(), T).await.unwrap();
    let total = 200_000usize;
    let workers = 1000;
    let t0 = StdInstant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (a, b_addr, payload) = (a.clone(), b_addr.clone(), payload.clone());
        set.spawn(async move {
            for _ in 0..total / workers {
                let r = a.call(&b_addr, 0, payload.clone(), T).await.unwrap();
                assert_eq!(r.len(), 1024);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{total} calls of 1 KiB, {workers} in flight, one connection: {secs:.2} s, {:.0} calls/s",
        total as f64 / secs
    );
    a.shutdown();
    b.shutdown();
}

/// Dropping the last handle shuts the link down: its listener closes and its calls fail.
#[tokio::test]
async fn dropping_the_last_handle_shuts_the_link_down() {
    let (a, _, _) = start(cfg("warren@a")).await;
    let (b, b_addr, _) = start(cfg("warren@b")).await;
    a.call(&b_addr, 0, Bytes::new(), T).await.unwrap();
    let b2 = b.clone();
    drop(b);
    a.call(&b_addr, 0, Bytes::new(), T).await.unwrap();
    let (a2, addr) = (a.clone(), b_addr.clone());
    let pending = tokio::spawn(async move { a2.call(&addr, 3, Bytes::new(), T).await });
    wait_until("the call to be pending", || a.pending_calls(&b_addr) == 1).await;
    drop(b2);
    assert!(matches!(
        pending.await.unwrap(),
        Err(LinkError::Unreachable(_))
    ));
    let t0 = StdInstant::now();
    while TcpStream::connect(&b_addr).await.is_ok() {
        assert!(t0.elapsed() < Duration::from_secs(2), "still listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An idle connection between live nodes stays open past the listener's idle limit: the
/// dialer's pings keep it alive, and the next call uses it without a new handshake.
#[tokio::test]
async fn an_idle_connection_is_kept_alive_by_pings() {
    let (a, _, a_echo) = start(cfg("warren@a")).await;
    let (b, b_addr, b_echo) = start(cfg("warren@b")).await;
    a.call(&b_addr, 0, Bytes::new(), T).await.unwrap();
    tokio::time::sleep(IDLE_CLOSE + Duration::from_secs(1)).await;
    a.call(&b_addr, 0, Bytes::new(), T).await.unwrap();
    assert_eq!(a_echo.connected.load(Ordering::SeqCst), 1);
    assert_eq!(b_echo.connected.load(Ordering::SeqCst), 1);
    a.shutdown();
    b.shutdown();
}
