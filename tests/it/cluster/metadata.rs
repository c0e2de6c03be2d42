//! The cluster's replicated definitions and forwarded publishes, through AMQP, with real
//! processes (issue 14, points 1, 3, 7): what a client sees on every node, the errors, and the
//! nodes a cluster refuses.

use super::harness::Cluster;
use crate::child;
use crate::harness::{code, text};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::time::Duration;

async fn channel(url: &str) -> (Connection, Channel) {
    let c = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = c.create_channel().await.expect("channel.open");
    (c, ch)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

async fn started(cluster: &Cluster) {
    if let Err(e) = cluster.wait_nodes_running(Duration::from_secs(30)).await {
        panic!("{e}\n{}", cluster.dump_logs());
    }
}

/// Wait until node i's log has a line holding every one of `needles`.
async fn logged(cluster: &Cluster, i: usize, needles: &[&str]) -> Result<(), String> {
    for _ in 0..100 {
        if cluster
            .logs(i)
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "{} never logged a line with {needles:?}",
        cluster.name(i)
    ))
}

/// A declare, bind or delete through one node is the cluster's: the other nodes find it at
/// once (passive declares, the API), a redeclare through another node is judged against it
/// (RabbitMQ's 406 and text), and a delete through a third node removes it everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_declared_through_one_node_are_everywhere() {
    let cluster = Cluster::start(3).await;
    started(&cluster).await;
    let (_c0, ch0) = channel(&cluster.url(0)).await;
    ch0.exchange_declare(
        "md.ex".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch0.queue_declare("md.q".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    ch0.queue_bind(
        "md.q".into(),
        "md.ex".into(),
        "a.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for i in 1..3 {
        let (_c, ch) = channel(&cluster.url(i)).await;
        ch.queue_declare("md.q".into(), passive(), FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("md.q on {}: {e}", cluster.name(i)));
        ch.exchange_declare(
            "md.ex".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let (status, b) = cluster
            .api(i, "GET", "/api/bindings/%2F/e/md.ex/q/md.q", None)
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(b[0]["routing_key"], "a.#", "{b}");
        let (_, q) = cluster
            .api(i, "GET", "/api/queues/%2F/md.q", None)
            .await
            .unwrap();
        assert_eq!(q["node"], cluster.name(0), "the queue's node: {q}");
    }
    // Judged against the cluster's definition, on another node.
    let (_c2, ch2) = channel(&cluster.url(2)).await;
    let e = ch2
        .queue_declare(
            "md.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert_eq!(
        text(&e),
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'md.q' in vhost '/': \
         received 'false' but current is 'true'"
    );
    // Deleted through node 1: gone through node 0.
    let (_c1, ch1) = channel(&cluster.url(1)).await;
    ch1.queue_delete("md.q".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch1.exchange_delete("md.ex".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let (_c0, ch0) = channel(&cluster.url(0)).await;
    let e = ch0
        .queue_declare("md.q".into(), passive(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(404), "{e}");
    let (status, _) = cluster
        .api(2, "GET", "/api/exchanges/%2F/md.ex", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    // A new metadata leader takes over when the current one is killed; definitions go on.
    let (_, s) = cluster
        .api(0, "GET", "/api/warren/cluster", None)
        .await
        .unwrap();
    let leader = s["leader"].as_str().expect("a leader").to_owned();
    let l = (0..3).find(|&i| cluster.name(i) == leader).unwrap();
    let mut cluster = cluster;
    cluster.kill9(l);
    let other = (l + 1) % 3;
    let (_c, ch) = channel(&cluster.url(other)).await;
    let t = std::time::Instant::now();
    ch.queue_declare("md.after".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    eprintln!(
        "declare right after killing the leader took {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    cluster.restart(l).await.unwrap();
    let (_c, ch) = channel(&cluster.url(l)).await;
    ch.queue_declare("md.after".into(), passive(), FieldTable::default())
        .await
        .expect("the restarted node caught up");
}

/// Messages published through one node reach a classic queue on another, in order, each
/// confirmed once stored there; the queue's messages are read through its own node (and
/// through another: get-empty once read); with that node down, a confirm is a nack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_through_any_node_reach_the_queue() {
    let mut cluster = Cluster::start(3).await;
    started(&cluster).await;
    let (_c1, ch1) = channel(&cluster.url(1)).await;
    ch1.queue_declare("fw.q".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let (_c0, ch0) = channel(&cluster.url(0)).await;
    ch0.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..300u32 {
        pending.push(
            ch0.basic_publish(
                "".into(),
                "fw.q".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &i.to_be_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        let c = p.await.unwrap();
        assert!(c.is_ack(), "every forwarded publish is confirmed");
        assert!(c.take_message().is_none(), "none comes back");
    }
    let q = ch1
        .queue_declare("fw.q".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 300);
    for i in 0..300u32 {
        let m = ch1
            .basic_get("fw.q".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(m.delivery.data, i.to_be_bytes(), "in order");
    }
    // Read through another node: served by the queue's node (empty now).
    let (_c, ch) = channel(&cluster.url(2)).await;
    let got = ch
        .basic_get("fw.q".into(), BasicGetOptions::default())
        .await
        .unwrap();
    assert!(got.is_none(), "get-empty through another node");
    // The queue's node is down: the publisher hears no after the forwarder gives up.
    cluster.kill9(1);
    let t = std::time::Instant::now();
    let c = ch0
        .basic_publish(
            "".into(),
            "fw.q".into(),
            BasicPublishOptions::default(),
            b"nowhere",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        c.is_nack(),
        "a publish its queue's node never took is nacked"
    );
    assert!(t.elapsed() < Duration::from_secs(20));
}

/// Nodes a cluster must not take: one without the secret, one of another Warren version, one
/// whose data directory belongs to another cluster. Each is refused with a line naming it on
/// the cluster's side, and the cluster keeps its three members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused() {
    let cluster = Cluster::start(3).await;
    started(&cluster).await;
    let seed = cluster.cluster_addr(0).to_string();
    let base = cluster.data_dir(0).parent().unwrap().to_owned();
    let secret = base.join("secret");
    let wrong = base.join("wrong-secret");
    std::fs::write(&wrong, "not the cluster's\n").unwrap();
    let node = |name: &str, secret: &std::path::Path, seeds: &str, env: &[(&str, &str)]| {
        let dir = base.join(name);
        child::spawn_env(
            &dir,
            &[
                "--node-name",
                name,
                "--cluster-listen",
                "127.0.0.1:0",
                "--cluster-seeds",
                seeds,
                "--cluster-secret-file",
                secret.to_str().unwrap(),
                "--prometheus-listen",
                "",
            ],
            &env.iter().map(|&(k, v)| (k, v)).collect::<Vec<_>>(),
        )
        .unwrap()
    };
    let s = node("warren@nosecret", &wrong, &seed, &[]);
    logged(
        &cluster,
        0,
        &["warren@nosecret", "does not hold this cluster's secret"],
    )
    .await
    .unwrap();
    s.kill9();
    let v = node(
        "warren@newer",
        &secret,
        &seed,
        &[("WARREN_CLUSTER_VERSION", "9.9.9")],
    );
    logged(
        &cluster,
        0,
        &["warren@newer", "9.9.9", env!("CARGO_PKG_VERSION")],
    )
    .await
    .unwrap();
    v.kill9();
    // A node of another cluster: it formed one alone (no seeds), then is pointed at this one.
    let other = node("warren@other", &secret, "", &[]);
    let (_c, _) = channel(&other.url).await;
    let mut formed = false;
    for _ in 0..100 {
        let id = std::fs::read_to_string(base.join("warren@other/cluster/node.json"))
            .unwrap_or_default();
        if id.contains("\"cluster_id\":\"") {
            formed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(formed, "a node without seeds forms a cluster of its own");
    other.term();
    let other = node("warren@other", &secret, &seed, &[]);
    logged(&cluster, 0, &["warren@other", "belongs to cluster"])
        .await
        .unwrap();
    other.kill9();
    let (_, s) = cluster
        .api(0, "GET", "/api/warren/cluster", None)
        .await
        .unwrap();
    let members = s["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{s}");
}

/// A single node's data directory, started in a cluster for the first time, keeps its queue
/// and messages (on that node), and the cluster learns of the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_nodes_data_joins_the_cluster() {
    let cluster = Cluster::start(3).await;
    started(&cluster).await;
    let base = cluster.data_dir(0).parent().unwrap().to_owned();
    let dir = base.join("legacy");
    let alone = child::spawn(&dir).unwrap();
    {
        let (_c, ch) = alone.channel().await;
        ch.queue_declare("legacy.q".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..5u8 {
            assert!(ch
                .basic_publish(
                    "".into(),
                    "legacy.q".into(),
                    BasicPublishOptions::default(),
                    &[i],
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap()
                .is_ack());
        }
    }
    alone.term();
    let seed = cluster.cluster_addr(0).to_string();
    let secret = base.join("secret");
    let joined = child::spawn_with(
        &dir,
        &[
            "--node-name",
            "warren@legacy",
            "--cluster-listen",
            "127.0.0.1:0",
            "--cluster-seeds",
            &seed,
            "--cluster-secret-file",
            secret.to_str().unwrap(),
            "--prometheus-listen",
            "",
        ],
    )
    .unwrap();
    // The cluster learns of the queue, on the node that has it.
    let mut seen = None;
    for _ in 0..150 {
        let (status, q) = cluster
            .api(1, "GET", "/api/queues/%2F/legacy.q", None)
            .await
            .unwrap();
        if status == 200 {
            seen = Some(q);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let q = seen.unwrap_or_else(|| panic!("never seen on n1\n{}", cluster.dump_logs()));
    assert_eq!(q["node"], "warren@legacy");
    let (_c, ch) = joined.channel().await;
    let q = ch
        .queue_declare("legacy.q".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 5, "its messages stayed");
    let (_, s) = cluster
        .api(2, "GET", "/api/warren/cluster", None)
        .await
        .unwrap();
    assert!(
        s["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "warren@legacy"),
        "{s}"
    );
    joined.kill9();
}
