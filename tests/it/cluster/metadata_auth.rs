//! Vhosts, users, permissions, topic permissions, limits and definitions imports are the
//! cluster's (issue 14, point 1), with real processes: a change through one node's API is in
//! force on every node once answered (logins, limits, the API's views), deletions close the
//! connections they concern on every node, bad requests answer as a single node does and change
//! nothing, a node that was down catches up, and a single node's users join with its data.

use super::harness::Cluster;
use crate::child;
use crate::harness::{code, text, Api, Broker};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::time::Duration;

async fn started(cluster: &Cluster) {
    if let Err(e) = cluster.wait_nodes_running(Duration::from_secs(30)).await {
        panic!("{e}\n{}", cluster.dump_logs());
    }
}

fn api(cluster: &Cluster, i: usize) -> Api {
    Api {
        base: format!("http://{}", cluster.http(i)),
    }
}

/// `user:pass` on node i's AMQP listener, in `vhost`.
fn url(cluster: &Cluster, i: usize, user: &str, pass: &str, vhost: &str) -> String {
    format!("amqp://{user}:{pass}@{}/{vhost}", cluster.amqp(i))
}

async fn login(url: &str) -> lapin::Result<(Connection, Channel)> {
    let c = tokio::time::timeout(
        Duration::from_secs(15),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("an answer to the login in time")?;
    let ch = c.create_channel().await?;
    Ok((c, ch))
}

/// The error that ends `c` (connection.close from the broker), once it comes.
type Closes = std::pin::Pin<Box<dyn futures_util::Stream<Item = lapin::Event> + Send>>;

fn close_of(c: &Connection) -> Closes {
    Box::pin(c.events_listener())
}

async fn closed_with(mut events: Closes, expected: &str) {
    use futures_util::StreamExt;
    let e = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.next().await {
                Some(lapin::Event::Error(e)) => return e,
                Some(_) => {}
                None => panic!("the connection ended without an error ({expected})"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no connection.close ({expected}) within 10 s"));
    assert_eq!(code(&e), Some(320), "{e}");
    assert_eq!(text(&e), expected);
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn all() -> Value {
    json!({"configure": ".*", "write": ".*", "read": ".*"})
}

/// What `GET /api/definitions` shows of access control, without the default user's password
/// hash (each node hashed the default password with a salt of its own when it first started).
async fn access_of(api: &Api) -> Value {
    let r = api.get("/api/definitions").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut d = r.body;
    for u in d["users"].as_array_mut().unwrap() {
        if u["name"] == "guest" {
            u["password_hash"] = Value::Null;
        }
    }
    let keys = [
        "users",
        "vhosts",
        "permissions",
        "topic_permissions",
        "parameters",
        "queues",
        "exchanges",
        "bindings",
    ];
    keys.iter()
        .map(|k| (k.to_string(), d[*k].clone()))
        .collect()
}

/// Every node's `access_of`, once they agree (lists are read from each node's applied state,
/// which a node that did not take a change reaches a few milliseconds after the answer).
async fn agreed(cluster: &Cluster, nodes: &[usize]) -> Value {
    let mut last = Vec::new();
    for _ in 0..50 {
        last.clear();
        for &i in nodes {
            last.push(access_of(&api(cluster, i)).await);
        }
        if last.windows(2).all(|w| w[0] == w[1]) {
            return last.remove(0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the nodes' definitions differ: {last:#?}");
}

async fn call(a: &Api, method: &str, path: &str, body: Option<Value>) -> crate::harness::Resp {
    match body {
        Some(b) => a.send(method, path, b).await,
        None => a.delete(path).await,
    }
}

/// Created, changed and deleted through different nodes: in force everywhere at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_control_changed_through_any_node_is_everywhere() {
    let mut cluster = Cluster::start(3).await;
    started(&cluster).await;
    let a0 = api(&cluster, 0);
    assert_eq!(
        a0.put("/api/vhosts/ma.v", json!({"description": "tenant"}))
            .await
            .status,
        201
    );
    assert_eq!(
        a0.put(
            "/api/users/ma.u",
            json!({"password": "p1", "tags": "management"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        a0.put("/api/permissions/ma.v/ma.u", all()).await.status,
        201
    );
    let topic = json!({"exchange": "amq.topic", "write": "^a", "read": ".*"});
    assert_eq!(
        a0.put("/api/topic-permissions/ma.v/ma.u", topic)
            .await
            .status,
        201
    );
    let limit = |n: i64| json!({ "value": n });
    assert_eq!(
        a0.put("/api/vhost-limits/ma.v/max-queues", limit(2))
            .await
            .status,
        204
    );
    assert_eq!(
        a0.put("/api/user-limits/ma.u/max-channels", limit(5))
            .await
            .status,
        204
    );
    // The user logs in through the two other nodes at once and declares in its vhost.
    let (_c1, ch1) = login(&url(&cluster, 1, "ma.u", "p1", "ma.v"))
        .await
        .unwrap_or_else(|e| panic!("login on n1: {e}\n{}", cluster.dump_logs()));
    ch1.queue_declare("ma.q1".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let (_c2, ch2) = login(&url(&cluster, 2, "ma.u", "p1", "ma.v"))
        .await
        .unwrap_or_else(|e| panic!("login on n2: {e}"));
    ch2.queue_declare("ma.q2".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    // The vhost's max-queues, set through node 0, holds through node 1 (RabbitMQ's text).
    let e = ch1
        .queue_declare("ma.q3".into(), durable(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406));
    assert_eq!(
        text(&e),
        "PRECONDITION_FAILED - cannot declare queue 'ma.q3': queue limit in vhost 'ma.v' (2) is \
         reached"
    );
    // Node 2's API shows what node 0 was told.
    let a2 = api(&cluster, 2);
    let users = a2.get("/api/users").await.body;
    let u = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "ma.u")
        .unwrap_or_else(|| panic!("{users}"));
    assert_eq!(u["tags"], json!(["management"]));
    assert_eq!(u["limits"], json!({"max-channels": 5}));
    let perms = a2.get("/api/permissions").await.body;
    assert!(
        perms.as_array().unwrap().contains(&json!({
            "user": "ma.u", "vhost": "ma.v", "configure": ".*", "write": ".*", "read": ".*"
        })),
        "{perms}"
    );
    let v = a2.get("/api/vhosts/ma.v").await;
    assert_eq!(v.status, 200);
    assert_eq!(v.body["description"], "tenant");
    assert!(a2.get("/api/vhosts").await.text.contains("\"ma.v\""));
    assert_eq!(
        a2.get("/api/vhost-limits/ma.v").await.body,
        json!([{"vhost": "ma.v", "value": {"max-queues": 2}}])
    );
    assert_eq!(
        a2.get("/api/topic-permissions/ma.v/ma.u").await.body,
        json!([{"user": "ma.u", "vhost": "ma.v", "exchange": "amq.topic", "write": "^a",
            "read": ".*"}])
    );
    let defs = agreed(&cluster, &[0, 1, 2]).await;
    assert!(defs["users"].to_string().contains("\"ma.u\""), "{defs}");

    // A new password through one node, in force on a follower whose links are slow (it
    // applies the change some 300 ms after the answer): its login catches up first.
    let (_, s) = cluster
        .api(0, "GET", "/api/warren/cluster", None)
        .await
        .unwrap();
    let leader = (0..3)
        .find(|&i| s["leader"] == cluster.name(i))
        .unwrap_or_else(|| panic!("no leader: {s}"));
    let (lagging, through) = ((leader + 1) % 3, (leader + 2) % 3);
    for i in [leader, through] {
        cluster.delay(lagging, i, Duration::from_millis(300));
    }
    assert_eq!(
        api(&cluster, through)
            .put("/api/users/ma.u", json!({"password": "p2"}))
            .await
            .status,
        204
    );
    login(&url(&cluster, lagging, "ma.u", "p2", "ma.v"))
        .await
        .expect("the new password on the lagging node");
    let e = login(&url(&cluster, lagging, "ma.u", "p1", "ma.v"))
        .await
        .map(|_| ())
        .expect_err("the old password is refused on the lagging node");
    assert_eq!(code(&e), Some(403), "{e}");
    // A new vhost and permission through the leader: the lagging node opens it at once.
    let a = api(&cluster, leader);
    assert_eq!(a.put("/api/vhosts/ma.v2", json!({})).await.status, 201);
    assert_eq!(
        a.put("/api/permissions/ma.v2/ma.u", all()).await.status,
        201
    );
    login(&url(&cluster, lagging, "ma.u", "p2", "ma.v2"))
        .await
        .expect("a vhost created a moment ago, on the lagging node");
    for i in [leader, through] {
        cluster.delay(lagging, i, Duration::ZERO);
    }

    // Node 2 is down (kill -9) while a user is added and a limit changed: it catches up.
    cluster.kill9(2);
    assert_eq!(
        a0.put("/api/users/ma.w", json!({"password": "w", "tags": ""}))
            .await
            .status,
        201
    );
    assert_eq!(
        a0.put("/api/permissions/ma.v/ma.w", all()).await.status,
        201
    );
    assert_eq!(
        api(&cluster, 1)
            .put("/api/vhost-limits/ma.v/max-queues", limit(3))
            .await
            .status,
        204
    );
    cluster.restart(2).await.unwrap();
    let (_cw, chw) = login(&url(&cluster, 2, "ma.w", "w", "ma.v"))
        .await
        .unwrap_or_else(|e| panic!("ma.w on the restarted n2: {e}\n{}", cluster.dump_logs()));
    chw.queue_declare("ma.q3".into(), durable(), FieldTable::default())
        .await
        .expect("max-queues is 3 now");
    login(&url(&cluster, 2, "ma.u", "p2", "ma.v"))
        .await
        .expect("ma.u's password on the restarted n2");
    assert_eq!(
        a2.get("/api/vhost-limits/ma.v").await.body,
        json!([{"vhost": "ma.v", "value": {"max-queues": 3}}])
    );
    let defs = agreed(&cluster, &[0, 1, 2]).await;
    assert!(defs["users"].to_string().contains("\"ma.w\""), "{defs}");

    // The user deleted through node 2: its connections on nodes 0 and 2 are closed.
    let (u0, _) = login(&url(&cluster, 0, "ma.u", "p2", "ma.v"))
        .await
        .unwrap();
    let (u2, _) = login(&url(&cluster, 2, "ma.u", "p2", "ma.v"))
        .await
        .unwrap();
    let (closed0, closed2) = (close_of(&u0), close_of(&u2));
    assert_eq!(a2.delete("/api/users/ma.u").await.status, 204);
    closed_with(closed0, "CONNECTION_FORCED - user 'ma.u' is deleted").await;
    closed_with(closed2, "CONNECTION_FORCED - user 'ma.u' is deleted").await;
    assert!(login(&url(&cluster, 0, "ma.u", "p2", "ma.v"))
        .await
        .is_err());
    assert_eq!(a0.get("/api/users/ma.u").await.status, 404);

    // The vhost deleted through node 1: connections to it on nodes 0 and 2 are closed.
    let (g0, _) = login(&url(&cluster, 0, "guest", "guest", "ma.v"))
        .await
        .unwrap();
    let (g2, _) = login(&url(&cluster, 2, "ma.w", "w", "ma.v")).await.unwrap();
    let (closed0, closed2) = (close_of(&g0), close_of(&g2));
    assert_eq!(
        api(&cluster, 1).delete("/api/vhosts/ma.v").await.status,
        204
    );
    closed_with(closed0, "CONNECTION_FORCED - vhost 'ma.v' is deleted").await;
    closed_with(closed2, "CONNECTION_FORCED - vhost 'ma.v' is deleted").await;
    for i in [0, 2] {
        let a = api(&cluster, i);
        assert_eq!(a.get("/api/vhosts/ma.v").await.status, 404);
        assert!(!a.get("/api/permissions").await.text.contains("\"ma.v\""));
        assert!(!a.get("/api/queues").await.text.contains("ma.q"));
    }
}

/// Bad requests through a cluster node answer exactly as a single node answers them, and
/// change nothing on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_access_changes_answer_as_a_single_node_and_change_nothing() {
    let cluster = Cluster::start(3).await;
    started(&cluster).await;
    let single = Broker::start().await;
    let alone = Api::of(&single);
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(access_of(&api(&cluster, i)).await);
    }
    let bad_pattern = json!({"configure": "(", "write": ".*", "read": ".*"});
    let topic = json!({"exchange": "amq.topic", "write": ".*", "read": ".*"});
    let import = json!({
        "users": [{"name": "imp.new", "tags": ""}],
        "permissions": [{"user": "nouser", "vhost": "/", "configure": ".*", "write": ".*",
            "read": ".*"}],
    });
    let cases: Vec<(&str, &str, Option<Value>)> = vec![
        ("PUT", "/api/permissions/nov/guest", Some(all())),
        ("PUT", "/api/permissions/%2F/nouser", Some(all())),
        ("PUT", "/api/permissions/%2F/guest", Some(bad_pattern)),
        ("DELETE", "/api/permissions/%2F/nouser", None),
        ("DELETE", "/api/users/nouser", None),
        ("DELETE", "/api/vhosts/nov", None),
        ("PUT", "/api/users/newu", Some(json!({"tags": ""}))),
        (
            "PUT",
            "/api/vhost-limits/nov/max-queues",
            Some(json!({"value": 1})),
        ),
        (
            "PUT",
            "/api/vhost-limits/%2F/max-queues",
            Some(json!({"value": "x"})),
        ),
        ("DELETE", "/api/vhost-limits/nov/max-queues", None),
        (
            "PUT",
            "/api/user-limits/nouser/max-channels",
            Some(json!({"value": 1})),
        ),
        ("DELETE", "/api/user-limits/nouser/max-channels", None),
        ("PUT", "/api/topic-permissions/nov/guest", Some(topic)),
        ("DELETE", "/api/topic-permissions/%2F/guest", None),
        ("POST", "/api/definitions", Some(import)),
        ("POST", "/api/definitions/nov", Some(json!({}))),
    ];
    let a1 = api(&cluster, 1);
    for (method, path, body) in cases {
        let want = call(&alone, method, path, body.clone()).await;
        let got = call(&a1, method, path, body).await;
        assert!(want.status >= 400, "{method} {path}: {}", want.status);
        assert_eq!(
            (got.status, &got.body),
            (want.status, &want.body),
            "{method} {path} through a cluster node, against a single node"
        );
    }
    for (i, b) in before.iter().enumerate() {
        assert_eq!(&access_of(&api(&cluster, i)).await, b, "n{i} unchanged");
    }
}

/// A definitions import through one node is one change of the cluster's: its vhost, user,
/// permissions, limits, exchange, queue and binding are on every node, the user logs in
/// through a third node, and every node exports the same definitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_imported_through_one_node_are_everywhere() {
    let cluster = Cluster::start(3).await;
    started(&cluster).await;
    let defs = json!({
        "vhosts": [{"name": "imp.v", "description": "imported"}],
        "users": [{"name": "imp.u", "password": "secret", "tags": ["monitoring"],
            "limits": {"max-connections": 10}}],
        "permissions": [{"user": "imp.u", "vhost": "imp.v", "configure": ".*", "write": ".*",
            "read": ".*"}],
        "topic_permissions": [{"user": "imp.u", "vhost": "imp.v", "exchange": "amq.topic",
            "write": "^x", "read": ".*"}],
        "parameters": [{"vhost": "imp.v", "component": "vhost-limits", "name": "limits",
            "value": {"max-queues": 10}}],
        "exchanges": [{"name": "imp.x", "vhost": "imp.v", "type": "topic", "durable": true,
            "auto_delete": false, "internal": false, "arguments": {}}],
        "queues": [{"name": "imp.q", "vhost": "imp.v", "durable": true, "auto_delete": false,
            "arguments": {"x-max-length": 100}},
            {"name": "imp.qq", "vhost": "imp.v", "durable": true, "auto_delete": false,
            "arguments": {"x-queue-type": "quorum"}}],
        "bindings": [{"source": "imp.x", "vhost": "imp.v", "destination": "imp.q",
            "destination_type": "queue", "routing_key": "k.#", "arguments": {}}],
    });
    let r = api(&cluster, 1).post("/api/definitions", defs).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let a0 = api(&cluster, 0);
    let q = a0.get("/api/queues/imp.v/imp.q").await;
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(
        q.body["node"],
        cluster.name(1),
        "it lives on the importing node"
    );
    assert_eq!(q.body["arguments"], json!({"x-max-length": 100}));
    let b = a0.get("/api/bindings/imp.v/e/imp.x/q/imp.q").await;
    assert_eq!(b.body[0]["routing_key"], "k.#", "{}", b.text);
    assert_eq!(
        a0.get("/api/vhost-limits/imp.v").await.body,
        json!([{"vhost": "imp.v", "value": {"max-queues": 10}}])
    );
    assert_eq!(
        a0.get("/api/users/imp.u").await.body["limits"],
        json!({"max-connections": 10})
    );
    // The user logs in through node 2 and finds the imported queue and exchange.
    let (_c, ch) = login(&url(&cluster, 2, "imp.u", "secret", "imp.v"))
        .await
        .unwrap_or_else(|e| panic!("imp.u on n2: {e}\n{}", cluster.dump_logs()));
    ch.queue_declare(
        "imp.q".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the imported queue on n2");
    ch.exchange_declare(
        "imp.x".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the imported exchange on n2");
    // The imported quorum queue has its group: a publish through node 2 is confirmed.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            "imp.qq".into(),
            BasicPublishOptions::default(),
            b"q",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap();
    let confirm = tokio::time::timeout(Duration::from_secs(15), confirm)
        .await
        .expect("a confirm for the imported quorum queue")
        .unwrap();
    assert!(confirm.is_ack());
    let qq = a0.get("/api/queues/imp.v/imp.qq").await;
    assert_eq!(qq.body["type"], "quorum", "{}", qq.text);
    groups_on_every_node(&cluster, 1).await;
    // A per-vhost import through node 2.
    let r = api(&cluster, 2)
        .post(
            "/api/definitions/imp.v",
            json!({"queues": [{"name": "imp.q2", "durable": true, "auto_delete": false,
                "arguments": {}}]}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let q = a0.get("/api/queues/imp.v/imp.q2").await;
    assert_eq!(q.body["node"], cluster.name(2), "{}", q.text);
    let defs = agreed(&cluster, &[0, 1, 2]).await;
    assert!(defs["queues"].to_string().contains("imp.q2"), "{defs}");
    assert!(defs["users"].to_string().contains("imp.u"), "{defs}");
    // Deleting the vhost takes its quorum queue's group (and its files) along, on every node.
    assert_eq!(a0.delete("/api/vhosts/imp.v").await.status, 204);
    groups_on_every_node(&cluster, 0).await;
}

/// Wait until every node holds `n` quorum queue groups (directories under `cluster/q`).
async fn groups_on_every_node(cluster: &Cluster, n: usize) {
    let count = |i: usize| {
        std::fs::read_dir(cluster.data_dir(i).join("cluster").join("q"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    for _ in 0..100 {
        if (0..cluster.len()).all(|i| count(i) == n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts: Vec<usize> = (0..cluster.len()).map(count).collect();
    panic!("quorum groups per node: {counts:?}, expected {n} on each");
}

/// A single node's vhost, users, permissions and limits join the cluster with its data
/// directory: its user logs in through another node, in its vhost, under its limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_nodes_users_join_the_cluster() {
    let cluster = Cluster::start(3).await;
    started(&cluster).await;
    let base = cluster.data_dir(0).parent().unwrap().to_owned();
    let dir = base.join("legacy-users");
    let alone = child::spawn(&dir).unwrap();
    let a = Api {
        base: format!("http://{}", alone.http),
    };
    assert_eq!(a.put("/api/vhosts/old.v", json!({})).await.status, 201);
    assert_eq!(
        a.put("/api/users/old.u", json!({"password": "op", "tags": ""}))
            .await
            .status,
        201
    );
    assert_eq!(
        a.put("/api/permissions/old.v/old.u", all()).await.status,
        201
    );
    assert_eq!(
        a.put("/api/vhost-limits/old.v/max-queues", json!({"value": 1}))
            .await
            .status,
        204
    );
    alone.term();
    let seed = cluster.cluster_addr(0).to_string();
    let secret = base.join("secret");
    let joined = child::spawn_with(
        &dir,
        &[
            "--node-name",
            "warren@legacy-users",
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
    // Proposed once joined, one change after the other: the permission comes after the vhost,
    // its limits and the user.
    let a1 = api(&cluster, 1);
    let mut adopted = false;
    for _ in 0..150 {
        if a1.get("/api/permissions/old.v/old.u").await.status == 200 {
            adopted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(adopted, "never adopted\n{}", cluster.dump_logs());
    let limits = a1.get("/api/vhost-limits/old.v").await.body;
    assert_eq!(
        limits,
        json!([{"vhost": "old.v", "value": {"max-queues": 1}}]),
        "{}",
        cluster.dump_logs()
    );
    let (_c, ch) = login(&url(&cluster, 1, "old.u", "op", "old.v"))
        .await
        .expect("the single node's user on n1");
    ch.queue_declare("old.q1".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let e = ch
        .queue_declare("old.q2".into(), durable(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "its vhost's limit holds on n1");
    // Guest (untouched on the single node) keeps its password everywhere.
    login(&cluster.url(2)).await.expect("guest on n2");
    joined.kill9();
}
