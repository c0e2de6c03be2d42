//! A quorum queue's consumers follow its leader (issue 14, point 4: consumers connected to other
//! nodes carry on), as RabbitMQ keeps a quorum queue's consumers across a leader change: no
//! basic.cancel when the leader is paused and deposed, or killed; deliveries go on from the
//! next leader, to consumers on the old leader's node too once it is back; a message a
//! consumer gets again comes flagged redelivered (delivery marks, `broker::quorum`).

use super::harness::Cluster;
use super::quorum_queues::{channel, leader_of, publish_confirmed, three_nodes_with};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A consumer on one node: what it received (bodies), and whether its stream ended (a
/// basic.cancel from the broker, or its connection closed).
struct Watched {
    node: usize,
    got: Arc<Mutex<Vec<String>>>,
    /// Bodies received again without the redelivered flag.
    unflagged: Arc<Mutex<Vec<String>>>,
    ended: Arc<AtomicBool>,
    _conn: lapin::Connection,
}

async fn watch(cluster: &Cluster, node: usize, queue: &str) -> Watched {
    let (conn, ch) = channel(&cluster.url(node)).await;
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            format!("on-{node}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("consume on {}: {e}", cluster.name(node)));
    let got = Arc::new(Mutex::new(Vec::new()));
    let unflagged = Arc::new(Mutex::new(Vec::new()));
    let ended = Arc::new(AtomicBool::new(false));
    let (g, u, e) = (got.clone(), unflagged.clone(), ended.clone());
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let body = String::from_utf8_lossy(&d.data).into_owned();
            if !d.redelivered && g.lock().contains(&body) {
                u.lock().push(body.clone());
            }
            g.lock().push(body);
            if d.ack(BasicAckOptions::default()).await.is_err() {
                break;
            }
        }
        e.store(true, Ordering::Relaxed);
    });
    Watched {
        node,
        got,
        unflagged,
        ended,
        _conn: conn,
    }
}

/// Wait until the consumers between them received every one of `bodies`.
async fn all_received(cluster: &Cluster, watched: &[&Watched], bodies: &[String], what: &str) {
    for _ in 0..300 {
        let seen: BTreeSet<String> = watched.iter().flat_map(|w| w.got.lock().clone()).collect();
        if bodies.iter().all(|b| seen.contains(b)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen: BTreeSet<String> = watched.iter().flat_map(|w| w.got.lock().clone()).collect();
    let missing: Vec<&String> = bodies.iter().filter(|b| !seen.contains(*b)).collect();
    panic!(
        "{what}: {} of {} never delivered (first {:?})\n{}",
        missing.len(),
        bodies.len(),
        missing.first(),
        cluster.dump_logs()
    );
}

fn bodies(tag: &str, n: u32) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_follow_the_queues_leader() {
    let (mut cluster, _c0, ch0, l) = three_nodes_with("qf").await;
    let o = (l + 1) % 3;
    let t = (l + 2) % 3;
    // One consumer on the leader's node (attached to the queue there), one on another node
    // (served through the leader).
    let on_leader = watch(&cluster, l, "qf").await;
    let elsewhere = watch(&cluster, o, "qf").await;
    {
        let (_c, ch) = channel(&cluster.url(t)).await;
        publish_confirmed(&ch, "qf", "first", 20).await;
    }
    all_received(
        &cluster,
        &[&on_leader, &elsewhere],
        &bodies("first", 20),
        "first",
    )
    .await;
    assert!(
        !on_leader.got.lock().is_empty() && !elsewhere.got.lock().is_empty(),
        "both consumers are served: {:?} / {:?}",
        on_leader.got.lock(),
        elsewhere.got.lock()
    );

    // The leader is paused: another node leads; the consumer elsewhere goes on.
    cluster.stop(l);
    let paused = std::time::Instant::now();
    let l2 = leader_of(&cluster, "qf", &[o, t]).await;
    {
        let (_c, ch) = channel(&cluster.url(t)).await;
        publish_confirmed(&ch, "qf", "paused", 20).await;
    }
    all_received(
        &cluster,
        &[&elsewhere],
        &bodies("paused", 20),
        "while paused",
    )
    .await;
    eprintln!(
        "the consumer on {} was served again {:?} after its leader was paused",
        cluster.name(o),
        paused.elapsed()
    );
    assert!(
        !elsewhere.ended.load(Ordering::Relaxed),
        "the consumer on {} was not cancelled",
        cluster.name(o)
    );

    // Back, the old leader learns it was deposed: its consumer follows the new leader.
    cluster.cont(l);
    assert_eq!(leader_of(&cluster, "qf", &[0, 1, 2]).await, l2);
    let before = on_leader.got.lock().len();
    {
        let (_c, ch) = channel(&cluster.url(t)).await;
        publish_confirmed(&ch, "qf", "back", 40).await;
    }
    all_received(
        &cluster,
        &[&on_leader, &elsewhere],
        &bodies("back", 40),
        "back",
    )
    .await;
    assert!(
        on_leader.got.lock().len() > before,
        "the consumer on the deposed leader {} is served again",
        cluster.name(l)
    );
    for w in [&on_leader, &elsewhere] {
        assert!(
            !w.ended.load(Ordering::Relaxed),
            "the consumer on {} was not cancelled",
            cluster.name(w.node)
        );
    }
    let (s, q) = cluster
        .api(l2, "GET", "/api/queues/%2F/qf", None)
        .await
        .unwrap();
    assert_eq!(s, 200);
    assert_eq!(q["consumers"], 2, "both consumers on the new leader: {q}");

    // The new leader is killed: the consumers on the other two nodes go on.
    cluster.kill9(l2);
    let survivors: Vec<&Watched> = [&on_leader, &elsewhere]
        .into_iter()
        .filter(|w| w.node != l2)
        .collect();
    let rest: Vec<usize> = (0..3).filter(|&i| i != l2).collect();
    let l3 = leader_of(&cluster, "qf", &rest).await;
    {
        let (_c, ch) = channel(&cluster.url(l3)).await;
        publish_confirmed(&ch, "qf", "killed", 20).await;
    }
    all_received(
        &cluster,
        &survivors,
        &bodies("killed", 20),
        "after the kill",
    )
    .await;
    for w in &survivors {
        assert!(
            !w.ended.load(Ordering::Relaxed),
            "the consumer on {} was not cancelled by the kill of {}",
            cluster.name(w.node),
            cluster.name(l2)
        );
    }
    // Whatever came twice (to the same consumer) came flagged the second time.
    for w in [&on_leader, &elsewhere] {
        assert!(
            w.unflagged.lock().is_empty(),
            "repeats without the redelivered flag on {}: {:?}",
            cluster.name(w.node),
            w.unflagged.lock()
        );
    }

    // Deleted: the consumers are cancelled, as for any deleted queue.
    ch0.queue_delete("qf".into(), QueueDeleteOptions::default())
        .await
        .ok();
    let (_c, chd) = channel(&cluster.url(l3)).await;
    chd.queue_delete("qf".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    for _ in 0..100 {
        if survivors.iter().all(|w| w.ended.load(Ordering::Relaxed)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in &survivors {
        assert!(
            w.ended.load(Ordering::Relaxed),
            "the consumer on {} was cancelled with its queue",
            cluster.name(w.node)
        );
    }
}
