//! Super streams: created with one API call or `warrenctl add_super_stream` in RabbitMQ's
//! layout, publishers reaching one partition by key or by hash, consumer groups splitting the
//! partitions and rebalancing, what survives a restart, deletion, and refused requests that
//! leave nothing behind.

use super::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Create a super stream in vhost `/` through the API.
async fn create(api: &Api, name: &str, body: Value) -> Resp {
    api.put(&format!("/api/super-streams/%2F/{name}"), body)
        .await
}

/// Publish `msgs` (routing key, body) to exchange `ex` with confirms; all must be acked.
async fn publish_keys(ch: &Channel, ex: &str, msgs: &[(String, String)]) {
    let mut pending = Vec::new();
    for (key, body) in msgs {
        pending.push(
            ch.basic_publish(
                ex.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("basic.publish"),
        );
    }
    for p in pending {
        assert!(p.await.expect("confirm").is_ack());
    }
}

/// Take deliveries, acking each, until none comes for `quiet_ms`; returns (offset, body).
async fn drain(c: &mut lapin::Consumer, quiet_ms: u64) -> Vec<(i64, String)> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(quiet_ms), c.next()).await {
        let d = d.expect("delivery");
        d.ack(BasicAckOptions::default()).await.unwrap();
        out.push((offset_of(&d), String::from_utf8_lossy(&d.data).into_owned()));
    }
    out
}

/// Everything a partition holds, read from `first` on a fresh channel.
async fn read_partition(b: &Broker, queue: &str) -> Vec<(i64, String)> {
    let (_c, ch) = b.channel().await;
    let mut c = stream_consumer(&ch, queue, 100, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    drain(&mut c, 400).await
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// The queue names in vhost `/`, and the exchange names.
async fn queues_and_exchanges(api: &Api) -> (BTreeSet<String>, BTreeSet<String>) {
    let of = |v: Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_owned())
            .collect()
    };
    (
        of(api.get("/api/queues/%2F").await.body),
        of(api.get("/api/exchanges/%2F").await.body),
    )
}

/// Created through the API, a super stream is laid out as `rabbitmq-streams
/// add_super_stream` lays one out on RabbitMQ 3.10: a durable direct exchange with
/// `x-super-stream: true`, durable streams NAME-0… carrying the stream arguments, bound with
/// keys 0… and `x-stream-partition-order`; binding keys name the partitions NAME-KEY. Each
/// partition stream knows its index. The listings show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_through_the_api_in_rabbitmqs_layout() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let r = create(
        &api,
        "inv",
        json!({"partitions": 3, "arguments": {"x-max-length-bytes": 1000000, "x-max-age": "7D"}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(names(&r.body["partitions"]), ["inv-0", "inv-1", "inv-2"]);
    assert_eq!(r.body["routing"], "key");
    let x = api.get("/api/exchanges/%2F/inv").await.body;
    assert_eq!(x["type"], "direct");
    assert_eq!(x["durable"], true);
    assert_eq!(x["auto_delete"], false);
    assert_eq!(x["arguments"], json!({"x-super-stream": true}));
    let bindings = api.get("/api/exchanges/%2F/inv/bindings/source").await.body;
    let mut seen: Vec<(String, String, Value)> = bindings
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["destination"].as_str().unwrap().to_owned(),
                b["routing_key"].as_str().unwrap().to_owned(),
                b["arguments"].clone(),
            )
        })
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (dest, key, args)) in seen.iter().enumerate() {
        assert_eq!(dest, &format!("inv-{i}"));
        assert_eq!(key, &i.to_string());
        assert_eq!(args, &json!({"x-stream-partition-order": i}));
    }
    assert_eq!(seen.len(), 3);
    let vh = b.handle.state.broker.vhost("/").unwrap();
    for i in 0..3u32 {
        let q = api.get(&format!("/api/queues/%2F/inv-{i}")).await.body;
        assert_eq!(q["durable"], true);
        assert_eq!(
            q["arguments"],
            json!({"x-queue-type": "stream", "x-max-length-bytes": 1000000, "x-max-age": "7D"})
        );
        let stream = vh.find_queue(&format!("inv-{i}")).unwrap();
        assert_eq!(stream.stream().unwrap().partition(), i);
    }

    let r = create(&api, "geo", json!({"binding_keys": ["eu", "us", "asia"]})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        names(&r.body["partitions"]),
        ["geo-eu", "geo-us", "geo-asia"]
    );
    assert_eq!(names(&r.body["binding_keys"]), ["eu", "us", "asia"]);
    assert_eq!(
        vh.find_queue("geo-asia")
            .unwrap()
            .stream()
            .unwrap()
            .partition(),
        2
    );

    let all = api.get("/api/super-streams/%2F").await.body;
    let listed: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["geo", "inv"]);
    assert_eq!(api.get("/api/super-streams").await.body, all);
    let one = api.get("/api/super-streams/%2F/inv").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["vhost"], "/");
    assert_eq!(one.body["arguments"]["x-max-age"], "7D");
    // A plain exchange is not a super stream.
    assert_eq!(
        api.get("/api/super-streams/%2F/amq.direct").await.status,
        404
    );
}

/// Routing by key: a message published to the super stream's exchange with a binding key lands
/// in that key's partition, and only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_reach_a_partition_by_its_key() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let r = create(&api, "bykey", json!({"binding_keys": ["eu", "us", "asia"]})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (_c, ch) = confirming(&b).await;
    let keys = ["eu", "us", "asia"];
    let msgs: Vec<(String, String)> = (0..30)
        .map(|i| (keys[i % 3].to_owned(), format!("{}/{i}", keys[i % 3])))
        .collect();
    publish_keys(&ch, "bykey", &msgs).await;
    for key in keys {
        let got = read_partition(&b, &format!("bykey-{key}")).await;
        assert_eq!(got.len(), 10, "{key}: {got:?}");
        for (n, (offset, body)) in got.iter().enumerate() {
            assert_eq!(*offset, n as i64);
            assert!(body.starts_with(&format!("{key}/")), "{key}: {body}");
        }
    }
}

/// Routing by hash (Warren's `x-super-stream` exchange type): any routing key lands in exactly
/// one partition, the same key always in the same one, and the keys spread over every
/// partition. The partition is the one RabbitMQ's stream clients pick for the key (murmur3,
/// seed 104729, modulo the partition count): the hashes their own tests expect put "world" in
/// partition 0, "hello" in 1, "brave" and "new" in 2 of 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_reach_one_partition_by_hash() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let r = create(&api, "h", json!({"partitions": 4, "routing": "hash"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["routing"], "hash");
    assert_eq!(
        api.get("/api/exchanges/%2F/h").await.body["arguments"],
        json!({"x-super-stream": true})
    );
    let (_c, ch) = confirming(&b).await;
    let mut msgs: Vec<(String, String)> = (0..400)
        .map(|i| {
            (
                format!("customer-{}", i % 40),
                format!("customer-{}/{i}", i % 40),
            )
        })
        .collect();
    for k in ["world", "hello", "brave", "new"] {
        msgs.push((k.to_owned(), format!("{k}/x")));
    }
    publish_keys(&ch, "h", &msgs).await;
    let mut partition_of_key: BTreeMap<String, usize> = BTreeMap::new();
    let mut bodies = BTreeSet::new();
    for p in 0..4 {
        let got = read_partition(&b, &format!("h-{p}")).await;
        assert!(!got.is_empty(), "partition {p} got nothing");
        for (_, body) in got {
            let key = body.split('/').next().unwrap().to_owned();
            if let Some(other) = partition_of_key.insert(key.clone(), p) {
                assert_eq!(other, p, "key {key} in partitions {other} and {p}");
            }
            assert!(bodies.insert(body.clone()), "{body} twice");
        }
    }
    assert_eq!(
        bodies.len(),
        msgs.len(),
        "every message in exactly one partition"
    );
    for (k, p) in [("world", 0), ("hello", 1), ("brave", 2), ("new", 2)] {
        assert_eq!(partition_of_key[k], p, "{k}");
    }
}

/// A member of a consumer group: one channel consuming every partition with the group's name,
/// as a single active consumer, from `first`.
struct Member {
    conn: lapin::Connection,
    ch: Channel,
    /// One consumer per partition, in partition order.
    parts: Vec<lapin::Consumer>,
}

async fn join(b: &Broker, partitions: &[String], group: &str) -> Member {
    let conn = b.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut parts = Vec::new();
    for p in partitions {
        parts.push(
            stream_consumer(
                &ch,
                p,
                50,
                &[
                    ("x-stream-consumer-name", s(group)),
                    ("x-single-active-consumer", AMQPValue::Boolean(true)),
                    ("x-stream-offset", s("first")),
                ],
            )
            .await
            .unwrap(),
        );
    }
    Member { conn, ch, parts }
}

impl Member {
    /// What each partition delivered (acked) until quiet, then a round trip on the channel so
    /// the broker has handled the acks.
    async fn drain(&mut self) -> Vec<Vec<(i64, String)>> {
        let mut out = Vec::new();
        for c in &mut self.parts {
            out.push(drain(c, 300).await);
        }
        self.ch
            .basic_qos(50, BasicQosOptions::default())
            .await
            .unwrap();
        out
    }
}

/// Which consumer tags read each partition now (the active readers).
fn active_readers(b: &Broker, partitions: &[String]) -> Vec<usize> {
    let vh = b.handle.state.broker.vhost("/").unwrap();
    partitions
        .iter()
        .map(|p| {
            let st = vh.find_queue(p).unwrap().stream_status().unwrap();
            st.readers.iter().filter(|r| r.active).count()
        })
        .collect()
}

/// The consumer tag of each partition's active reader (it must have exactly one).
fn active_tags(b: &Broker, partitions: &[String]) -> Vec<String> {
    let vh = b.handle.state.broker.vhost("/").unwrap();
    partitions
        .iter()
        .map(|p| {
            let st = vh.find_queue(p).unwrap().stream_status().unwrap();
            let active: Vec<String> = st
                .readers
                .iter()
                .filter(|r| r.active)
                .map(|r| r.consumer_tag.clone())
                .collect();
            assert_eq!(active.len(), 1, "{p}: {active:?}");
            active[0].clone()
        })
        .collect()
}

fn offsets(d: &[(i64, String)]) -> Vec<i64> {
    d.iter().map(|(o, _)| *o).collect()
}

/// Consumer groups over a super stream: members consuming every partition under one name
/// split the partitions (partition i is read by member i mod members, in joining order), so
/// each message reaches the group once. A third member joining takes a partition over where
/// the group's acks left it; a member leaving hands its partitions on, resuming right after the
/// last acked offset, its unacked deliveries redelivered and nothing skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_split_partitions_and_rebalance() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let r = create(&api, "grp", json!({"partitions": 3})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let parts: Vec<String> = (0..3).map(|i| format!("grp-{i}")).collect();
    let (_c, pubch) = confirming(&b).await;
    let batch = |from: usize| -> Vec<(String, String)> {
        (from..from + 10)
            .flat_map(|i| (0..3).map(move |p| (p.to_string(), format!("p{p}/{i}"))))
            .collect()
    };

    // Two members: A reads partitions 0 and 2, B partition 1.
    let mut a = join(&b, &parts, "app").await;
    let mut bm = join(&b, &parts, "app").await;
    publish_keys(&pubch, "grp", &batch(0)).await;
    let got_a = a.drain().await;
    let got_b = bm.drain().await;
    assert_eq!(offsets(&got_a[0]), (0..10).collect::<Vec<_>>());
    assert_eq!(offsets(&got_a[2]), (0..10).collect::<Vec<_>>());
    assert!(got_a[1].is_empty(), "A read partition 1: {:?}", got_a[1]);
    assert_eq!(offsets(&got_b[1]), (0..10).collect::<Vec<_>>());
    assert!(got_b[0].is_empty() && got_b[2].is_empty());
    assert!(got_b[1].iter().all(|(_, m)| m.starts_with("p1/")));
    assert_eq!(active_readers(&b, &parts), [1, 1, 1]);

    // A third member: partition 2 moves to C (2 mod 3), which resumes after A's acks.
    let mut c = join(&b, &parts, "app").await;
    publish_keys(&pubch, "grp", &batch(10)).await;
    let got_a = a.drain().await;
    let got_b = bm.drain().await;
    let got_c = c.drain().await;
    assert_eq!(offsets(&got_a[0]), (10..20).collect::<Vec<_>>());
    assert!(got_a[1].is_empty() && got_a[2].is_empty(), "{got_a:?}");
    assert!(got_b[0].is_empty() && got_b[2].is_empty());
    assert_eq!(offsets(&got_b[1]), (10..20).collect::<Vec<_>>());
    assert!(got_c[0].is_empty() && got_c[1].is_empty());
    assert_eq!(offsets(&got_c[2]), (10..20).collect::<Vec<_>>());
    assert_eq!(active_readers(&b, &parts), [1, 1, 1]);

    // The next batch: A and C settle theirs; B takes 5 of partition 1's and acks only 3,
    // then leaves. With A and C left, partition 1 goes to C (1 mod 2), which resumes at B's
    // first unacked offset; partition 2 goes back to A (2 mod 2), after C's acks.
    publish_keys(&pubch, "grp", &batch(20)).await;
    let got_a = a.drain().await;
    let got_c = c.drain().await;
    assert_eq!(offsets(&got_a[0]), (20..30).collect::<Vec<_>>());
    assert_eq!(offsets(&got_c[2]), (20..30).collect::<Vec<_>>());
    let early = take(&mut bm.parts[1], 5).await;
    assert_eq!(offset_of(&early[0]), 20);
    early[2]
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    bm.ch
        .basic_qos(50, BasicQosOptions::default())
        .await
        .unwrap();
    bm.conn.close(200, "bye".into()).await.unwrap();
    publish_keys(&pubch, "grp", &batch(30)).await;
    let got_a = a.drain().await;
    let got_c = c.drain().await;
    assert_eq!(offsets(&got_a[0]), (30..40).collect::<Vec<_>>());
    assert!(got_a[1].is_empty(), "{got_a:?}");
    assert_eq!(offsets(&got_a[2]), (30..40).collect::<Vec<_>>());
    assert_eq!(offsets(&got_c[1]), (23..40).collect::<Vec<_>>());
    assert!(got_c[0].is_empty() && got_c[2].is_empty(), "{got_c:?}");
    assert_eq!(active_readers(&b, &parts), [1, 1, 1]);
    drop(a);
}

/// A restart keeps the super stream (exchange type, partitions and bindings), every
/// partition's index (a group still splits the partitions: with indexes lost, the first member
/// would read them all) and hash routing (a key lands where it landed before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_partitions_indexes_and_routing() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let r = create(&api, "keep", json!({"partitions": 3, "routing": "hash"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let before = r.body.clone();
    let msgs: Vec<(String, String)> = (0..30)
        .map(|i| (format!("k{i}"), format!("k{i}/a")))
        .collect();
    {
        let (_c, ch) = confirming(&b).await;
        publish_keys(&ch, "keep", &msgs).await;
    }
    let b = b.restart().await;
    let api = Api::of(&b);
    assert_eq!(api.get("/api/super-streams/%2F/keep").await.body, before);
    let parts: Vec<String> = (0..3).map(|i| format!("keep-{i}")).collect();
    let vh = b.handle.state.broker.vhost("/").unwrap();
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(
            vh.find_queue(p).unwrap().stream().unwrap().partition(),
            i as u32
        );
    }
    let again: Vec<(String, String)> = (0..30)
        .map(|i| (format!("k{i}"), format!("k{i}/b")))
        .collect();
    let (_c, ch) = confirming(&b).await;
    publish_keys(&ch, "keep", &again).await;
    for p in &parts {
        let got = read_partition(&b, p).await;
        let (old, new): (Vec<_>, Vec<_>) = got.iter().partition(|(_, m)| m.ends_with("/a"));
        let keys = |v: &[&(i64, String)]| -> BTreeSet<String> {
            v.iter()
                .map(|(_, m)| m.split('/').next().unwrap().to_owned())
                .collect()
        };
        assert!(!old.is_empty(), "{p} is empty");
        assert_eq!(keys(&old), keys(&new), "{p}: keys moved across the restart");
    }
    // A group of two: the first member reads partitions 0 and 2, the second partition 1.
    let a = join(&b, &parts, "after").await;
    let m2 = join(&b, &parts, "after").await;
    let want = [a.parts[0].tag(), m2.parts[1].tag(), a.parts[2].tag()];
    let want: Vec<String> = want.iter().map(|t| t.to_string()).collect();
    assert_eq!(active_tags(&b, &parts), want);
    // Close the clients while the runtime still runs: a lapin connection dropped with consumers
    // still receiving once hung the runtime's shutdown at the end of this test (lapin's I/O
    // thread waiting on its consumers' lock).
    for conn in [&a.conn, &m2.conn, &_c] {
        let _ = conn.close(200, "done".into()).await;
    }
}

/// Deleting a super stream removes its exchange and every partition (their consumers are
/// cancelled); then it is gone (404), and a name that is a plain exchange is not a super
/// stream to delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_exchange_and_every_partition() {
    use futures_util::StreamExt;
    let b = Broker::start().await;
    let api = Api::of(&b);
    let (q0, x0) = queues_and_exchanges(&api).await;
    assert_eq!(
        create(&api, "gone", json!({"partitions": 2})).await.status,
        201
    );
    let (_c, ch) = b.channel().await;
    let mut reader = stream_consumer(&ch, "gone-1", 10, &[]).await.unwrap();
    let r = api.delete("/api/super-streams/%2F/gone").await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(queues_and_exchanges(&api).await, (q0, x0));
    assert_eq!(api.get("/api/super-streams/%2F/gone").await.status, 404);
    assert_eq!(api.delete("/api/super-streams/%2F/gone").await.status, 404);
    // The partition's consumer was cancelled: its delivery stream ends.
    let end = tokio::time::timeout(Duration::from_secs(5), reader.next()).await;
    assert!(matches!(end, Ok(None)), "consumer not cancelled: {end:?}");
    // A plain exchange stays.
    api.put(
        "/api/exchanges/%2F/plain",
        json!({"type": "direct", "durable": true}),
    )
    .await;
    assert_eq!(api.delete("/api/super-streams/%2F/plain").await.status, 404);
    assert_eq!(api.get("/api/exchanges/%2F/plain").await.status, 200);
}

/// Refused requests get a 4xx with a reason and create nothing: no partitions, zero
/// partitions, duplicate or empty keys, both a count and keys, an unknown routing, bad stream
/// arguments, a name that exists (as a super stream or another exchange), a partition name
/// taken by a queue, a missing vhost, a user without configure permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_create_nothing() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    assert_eq!(
        create(&api, "taken", json!({"partitions": 1})).await.status,
        201
    );
    api.put(
        "/api/exchanges/%2F/plainx",
        json!({"type": "direct", "durable": true}),
    )
    .await;
    api.put(
        "/api/queues/%2F/clash-1",
        json!({"durable": true, "arguments": {"x-queue-type": "stream"}}),
    )
    .await;
    let before = queues_and_exchanges(&api).await;
    for (name, body, reason) in [
        ("s1", json!({}), "give partitions"),
        ("s1", json!({"partitions": 0}), "at least one partition"),
        ("s1", json!({"partitions": -2}), "positive integer"),
        ("s1", json!({"partitions": "3"}), "positive integer"),
        ("s1", json!({"partitions": 100000}), "at most 1000"),
        (
            "s1",
            json!({"binding_keys": ["a", "b", "a"]}),
            "duplicate binding key 'a'",
        ),
        (
            "s1",
            json!({"binding_keys": ["a", ""]}),
            "must not be empty",
        ),
        (
            "s1",
            json!({"binding_keys": []}),
            "at least one binding key",
        ),
        ("s1", json!({"binding_keys": "a,b"}), "list of strings"),
        (
            "s1",
            json!({"partitions": 2, "binding_keys": ["a"]}),
            "not both",
        ),
        (
            "s1",
            json!({"partitions": 2, "routing": "round-robin"}),
            "routing must be",
        ),
        (
            "s1",
            json!({"partitions": 2, "arguments": {"x-max-age": "forever"}}),
            "x-max-age",
        ),
        (
            "s1",
            json!({"partitions": 2, "arguments": {"x-queue-type": "quorum"}}),
            "x-queue-type must be 'stream'",
        ),
        ("amq.s", json!({"partitions": 2}), "reserved prefix"),
        (
            "taken",
            json!({"partitions": 2}),
            "super stream 'taken' in vhost '/' already exists",
        ),
        (
            "plainx",
            json!({"partitions": 2}),
            "exchange 'plainx' in vhost '/' already exists",
        ),
        (
            "clash",
            json!({"partitions": 3}),
            "queue 'clash-1' in vhost '/' already exists",
        ),
    ] {
        let r = create(&api, name, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        let why = r.body["reason"].as_str().unwrap_or_default();
        assert!(why.contains(reason), "{body}: {why}");
    }
    let r = api
        .put("/api/super-streams/nowhere/s1", json!({"partitions": 2}))
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    // The vhost's max-queues counts every partition: 2 queues now, a limit of 4 leaves room
    // for 2 partitions, not 3.
    let r = api
        .put("/api/vhost-limits/%2F/max-queues", json!({"value": 4}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = create(&api, "big", json!({"partitions": 3})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.body["reason"],
        "cannot declare queue 'big-2': queue limit in vhost '/' (4) is reached"
    );
    api.delete("/api/vhost-limits/%2F/max-queues").await;
    assert_eq!(queues_and_exchanges(&api).await, before);
    assert_eq!(
        api.get("/api/super-streams/%2F")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A user allowed to configure only `own.*` may not make partitions outside it.
    api.put(
        "/api/users/bob",
        json!({"password": "pw", "tags": "management"}),
    )
    .await;
    api.put(
        "/api/permissions/%2F/bob",
        json!({"configure": "^own", "write": ".*", "read": ".*"}),
    )
    .await;
    let as_bob = |path: &str, body: Value| {
        request(
            "PUT",
            format!("{}{path}", api.base),
            Some(("bob", "pw")),
            Some(body.to_string()),
            &[],
        )
    };
    let r = as_bob("/api/super-streams/%2F/other", json!({"partitions": 1})).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = as_bob("/api/super-streams/%2F/own", json!({"partitions": 2})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(queues_and_exchanges(&api).await.0.len(), before.0.len() + 2);

    // A management user without permissions in the vhost neither sees nor lists them.
    api.put(
        "/api/users/eve",
        json!({"password": "pw", "tags": "management"}),
    )
    .await;
    let as_eve = |path: &str| {
        request(
            "GET",
            format!("{}{path}", api.base),
            Some(("eve", "pw")),
            None,
            &[],
        )
    };
    assert_eq!(as_eve("/api/super-streams/%2F").await.status, 401);
    assert_eq!(as_eve("/api/super-streams/%2F/own").await.status, 401);
    let r = as_eve("/api/super-streams").await;
    assert_eq!((r.status, r.body), (200, json!([])));
}

/// All or nothing: when a partition cannot be created midway (its stream directory cannot be
/// made), the partitions already made are removed and no exchange is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_midway_removes_what_was_made() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let (_c, ch) = b.channel().await;
    declare_stream(&ch, "probe", &[]).await.unwrap();
    // Find the probe's stream directory: the next streams get the next ids.
    let data = b.handle.state.config.data_dir.clone();
    let streams = walk(&data)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "streams"))
        .expect("a streams directory");
    let probe: u32 = std::fs::read_dir(&streams)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .max()
        .expect("the probe's directory");
    // The second partition's directory is taken by a file.
    std::fs::write(streams.join(format!("{:08}", probe + 2)), b"in the way").unwrap();
    let before = queues_and_exchanges(&api).await;
    let r = create(&api, "half", json!({"partitions": 3})).await;
    assert!(r.status >= 400, "{}: {}", r.status, r.text);
    assert_eq!(queues_and_exchanges(&api).await, before);
    assert_eq!(api.get("/api/super-streams/%2F/half").await.status, 404);
}

/// Every path under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// `warrenctl add_super_stream`, `list_super_streams` and `delete_super_stream`, with
/// rabbitmq-streams' options (sizes with units, ISO 8601 ages), and their exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warrenctl_adds_lists_and_deletes_super_streams() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let url = format!("http://{}", b.handle.http_addr);
    let r = ctl(
        &url,
        &[
            "add_super_stream",
            "orders",
            "--partitions",
            "2",
            "--routing",
            "hash",
            "--max-length-bytes",
            "2mb",
            "--max-age",
            "PT10M30S",
        ],
    )
    .await;
    assert_eq!(r.0, 0, "{r:?}");
    let s = api.get("/api/super-streams/%2F/orders").await.body;
    assert_eq!(s["routing"], "hash");
    assert_eq!(names(&s["partitions"]), ["orders-0", "orders-1"]);
    let q = api.get("/api/queues/%2F/orders-1").await.body;
    assert_eq!(q["arguments"]["x-max-length-bytes"], 2_000_000);
    assert_eq!(q["arguments"]["x-max-age"], "630s");
    let r = ctl(
        &url,
        &["add_super_stream", "geo", "--binding-keys", "eu,us"],
    )
    .await;
    assert_eq!(r.0, 0, "{r:?}");
    let r = ctl(&url, &["-q", "list_super_streams"]).await;
    assert_eq!(r.0, 0, "{r:?}");
    assert_eq!(
        r.1,
        "name\trouting\tpartitions\ngeo\tkey\t[geo-eu, geo-us]\norders\thash\t[orders-0, orders-1]\n"
    );
    // Refused by the broker: 65; bad options: 64; not found: 1.
    let r = ctl(&url, &["add_super_stream", "geo", "--partitions", "2"]).await;
    assert_eq!(r.0, 65, "{r:?}");
    assert!(r.2.contains("already exists"), "{r:?}");
    let r = ctl(&url, &["add_super_stream", "x", "--max-age", "forever"]).await;
    assert_eq!(r.0, 64, "{r:?}");
    let r = ctl(
        &url,
        &[
            "add_super_stream",
            "x",
            "--partitions",
            "2",
            "--binding-keys",
            "a",
        ],
    )
    .await;
    assert_eq!(r.0, 64, "{r:?}");
    let r = ctl(&url, &["delete_super_stream", "orders"]).await;
    assert_eq!(r.0, 0, "{r:?}");
    assert_eq!(api.get("/api/queues/%2F/orders-0").await.status, 404);
    let r = ctl(&url, &["delete_super_stream", "orders"]).await;
    assert_eq!(r.0, 1, "{r:?}");
}

/// Run warrenctl against `url`: (exit code, stdout, stderr).
async fn ctl(url: &str, args: &[&str]) -> (i32, String, String) {
    warrenctl(url, args).await
}

/// Regression: the API showed and exported a plugin exchange's routing kind instead of its
/// type (`direct` for an `x-super-stream` exchange, as for `x-delayed-message`), so a
/// definitions export imported elsewhere turned a hash super stream into a key-routed one.
/// Exported and imported, a hash super stream keeps its type, partition indexes and routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_carry_a_hash_super_stream() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    assert_eq!(
        create(&api, "moved", json!({"partitions": 4, "routing": "hash"}))
            .await
            .status,
        201
    );
    assert_eq!(
        api.get("/api/exchanges/%2F/moved").await.body["type"],
        "x-super-stream"
    );
    let defs = api.get("/api/definitions").await.body;
    let x = defs["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "moved")
        .unwrap();
    assert_eq!(x["type"], "x-super-stream");

    let other = Broker::start().await;
    let oapi = Api::of(&other);
    let r = oapi.post("/api/definitions", defs).await;
    assert!(r.status < 300, "{}", r.text);
    let s = oapi.get("/api/super-streams/%2F/moved").await.body;
    assert_eq!(s["routing"], "hash");
    let vh = other.handle.state.broker.vhost("/").unwrap();
    for i in 0..4u32 {
        let q = vh.find_queue(&format!("moved-{i}")).unwrap();
        assert_eq!(q.stream().unwrap().partition(), i);
    }
    let (_c, ch) = confirming(&other).await;
    publish_keys(&ch, "moved", &[("hello".into(), "hello/1".into())]).await;
    assert_eq!(read_partition(&other, "moved-1").await.len(), 1);
}

/// An AMQP client may make a hash super stream itself: an exchange of type `x-super-stream`
/// and its own streams bound with `x-stream-partition-order`. Each stream learns its index; a
/// binding without an order is no partition (it neither receives nor counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_declare_hash_super_streams_over_amqp() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let (_c, ch) = confirming(&b).await;
    ch.exchange_declare(
        "own".into(),
        lapin::ExchangeKind::Custom("x-super-stream".into()),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    for (q, order) in [("own-b", Some(1)), ("own-a", Some(0)), ("own-x", None)] {
        declare_stream(&ch, q, &[]).await.unwrap();
        let args = match order {
            Some(i) => table(&[("x-stream-partition-order", AMQPValue::LongInt(i))]),
            None => FieldTable::default(),
        };
        ch.queue_bind(
            q.into(),
            "own".into(),
            q.into(),
            QueueBindOptions::default(),
            args,
        )
        .await
        .unwrap();
    }
    let vh = b.handle.state.broker.vhost("/").unwrap();
    assert_eq!(
        vh.find_queue("own-b")
            .unwrap()
            .stream()
            .unwrap()
            .partition(),
        1
    );
    let s = api.get("/api/super-streams/%2F/own").await.body;
    assert_eq!(s["routing"], "hash");
    assert_eq!(names(&s["partitions"]), ["own-a", "own-b"]);
    // "hello" hashes to partition 1 of 2 (1321743225 is odd), "brave" to 0.
    publish_keys(
        &ch,
        "own",
        &[
            ("hello".into(), "hello/1".into()),
            ("brave".into(), "brave/1".into()),
        ],
    )
    .await;
    assert_eq!(read_partition(&b, "own-b").await[0].1, "hello/1");
    assert_eq!(read_partition(&b, "own-a").await[0].1, "brave/1");
    assert!(read_partition(&b, "own-x").await.is_empty());
}
