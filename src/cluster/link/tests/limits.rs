//! The link's limits over real TCP: calls given up, calls in flight bounded, hostile and
//! misdirected connections, shutdown, keep-alive, throughput.

use super::*;

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
