//! Message statistics: sampled rates and the traffic counters of exchanges and connections.

use super::eventually_for;
use crate::harness::*;
use lapin::types::FieldTable;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rates_are_sampled() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let (_c, ch) = b.channel().await;
    declare(&ch, "rq").await;
    for _ in 0..200 {
        publish(&ch, "", "rq", b"r").await;
    }
    // Rates come from samples every 5 s: the first after start, the next sees the publishes.
    let o = eventually_for(&api, "/api/overview", Duration::from_secs(15), |o| {
        o["message_stats"]["publish_details"]["rate"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    })
    .await;
    let rate = o["message_stats"]["publish_details"]["rate"]
        .as_f64()
        .unwrap();
    assert!(rate <= 200.0, "{rate}");
    assert!(
        o["queue_totals"]["messages_details"]["rate"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let q = api.get("/api/queues/%2F/rq").await.body;
    assert!(
        q["message_stats"]["publish_details"]["rate"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{q}"
    );
    let x = api.get("/api/exchanges/%2F/amq.default").await.body;
    assert!(
        x["message_stats"]["publish_in_details"]["rate"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{x}"
    );
    let conns = api.get("/api/connections").await.body;
    assert!(
        conns[0]["recv_oct_details"]["rate"].as_f64().unwrap() > 0.0,
        "{conns}"
    );
    b.handle.shutdown().await;
}

/// Exchange message_stats (publish_in, and publish_out once per queue reached) and the bytes a
/// connection sent, as RabbitMQ reports them.
#[tokio::test]
async fn exchange_and_connection_traffic_counters() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let (_c, ch) = b.channel().await;
    for q in ["fan-a", "fan-b"] {
        declare(&ch, q).await;
        ch.queue_bind(
            q.into(),
            "amq.fanout".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    declare(&ch, "direct-q").await;
    for _ in 0..10 {
        publish(&ch, "amq.fanout", "", b"f").await;
    }
    for _ in 0..3 {
        publish(&ch, "", "direct-q", b"d").await;
        publish(&ch, "", "nowhere", b"d").await;
    }
    ch.basic_qos(0, Default::default()).await.unwrap();
    let (_c2, consumer_ch) = b.channel().await;
    let mut c = consume(&consumer_ch, "fan-a", true).await;
    take(&mut c, 10).await;
    let x = eventually_for(
        &api,
        "/api/exchanges/%2F/amq.fanout",
        Duration::from_secs(5),
        |x| x["message_stats"]["publish_in"] == 10,
    )
    .await;
    assert_eq!(x["message_stats"]["publish_out"], 20, "{x}");
    let d = api.get("/api/exchanges/%2F/amq.default").await.body;
    assert_eq!(d["message_stats"]["publish_in"], 6, "{d}");
    assert_eq!(d["message_stats"]["publish_out"], 3, "{d}");
    // No publish yet: no message_stats, as in RabbitMQ.
    let t = api.get("/api/exchanges/%2F/amq.topic").await.body;
    assert!(t.get("message_stats").is_none(), "{t}");
    // The consumer's connection was sent the 10 deliveries (and the handshake before them).
    let conns = api.get("/api/connections").await.body;
    let sent: Vec<u64> = conns
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["send_oct"].as_u64().unwrap())
        .collect();
    assert!(sent.iter().all(|&n| n > 0), "{conns}");
    assert!(
        conns
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["send_cnt"].as_u64().unwrap() > 0),
        "{conns}"
    );
    let m = request("GET", format!("{}/metrics", api.base), None, None, &[]).await;
    let line = m
        .text
        .lines()
        .find(|l| l.starts_with("rabbitmq_connection_outgoing_bytes_total "))
        .expect("outgoing bytes metric");
    let total: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(total as u64, sent.iter().sum::<u64>());
    b.handle.shutdown().await;
}

/// Warren's per-stage counters (`/api/warren/stages`): every stage is listed with its counts;
/// persistent messages published with confirms add runs (and items) to the connection's read
/// and write stages and the message log's write and sync, publishes to a consumed queue to the
/// route and dispatch stages; users who may not monitor are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_count_the_message_logs_rounds() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let stages = |v: &serde_json::Value| -> std::collections::HashMap<String, (u64, u64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                for f in ["what", "total_us", "avg_us", "avg_items", "max_us"] {
                    assert!(s.get(f).is_some(), "{f} in {s}");
                }
                (
                    s["stage"].as_str().unwrap().to_owned(),
                    (s["runs"].as_u64().unwrap(), s["items"].as_u64().unwrap()),
                )
            })
            .collect()
    };
    let r = api.get("/api/warren/stages").await;
    assert_eq!(r.status, 200);
    let before = stages(&r.body);
    for s in [
        "amqp.read",
        "route",
        "dispatch",
        "amqp.write",
        "log.write",
        "log.sync",
        "raft.append",
        "raft.replicate",
        "quorum.commit",
    ] {
        assert!(before.contains_key(s), "{s} in {:?}", r.body);
    }
    let (_c, ch) = b.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    declare_durable(&ch, "staged", FieldTable::default()).await;
    for _ in 0..20 {
        let props = lapin::BasicProperties::default().with_delivery_mode(2);
        publish_confirmed(&ch, "", "staged", props).await;
    }
    let after = stages(&api.get("/api/warren/stages").await.body);
    for s in ["log.write", "log.sync", "amqp.read", "amqp.write"] {
        assert!(
            after[s].0 > before[s].0,
            "{s}: {:?} then {:?}",
            before[s],
            after[s]
        );
        assert!(
            after[s].1 > before[s].1,
            "{s}: {:?} then {:?}",
            before[s],
            after[s]
        );
    }
    // A consumer waiting while publishes arrive: the batch's dispatch is counted, and routing
    // is sampled (one publish in 64 per thread: 300 reach a sample on one of the two threads).
    let (_c2, ch2) = b.channel().await;
    declare(&ch2, "staged-consumed").await;
    let mut consumer = ch2
        .basic_consume(
            "staged-consumed".into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let before = stages(&api.get("/api/warren/stages").await.body);
    let (_c3, ch3) = b.channel().await;
    for _ in 0..300 {
        publish(&ch3, "", "staged-consumed", b"s").await;
    }
    for _ in 0..300 {
        tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut consumer),
        )
        .await
        .expect("every message delivered")
        .unwrap()
        .unwrap();
    }
    let after = stages(&api.get("/api/warren/stages").await.body);
    for s in ["route", "dispatch"] {
        assert!(
            after[s].0 > before[s].0 && after[s].1 > before[s].1,
            "{s}: {:?} then {:?}",
            before[s],
            after[s]
        );
    }
    api.put(
        "/api/users/plain",
        serde_json::json!({"password": "p", "tags": ""}),
    )
    .await;
    api.put(
        "/api/users/mgmt",
        serde_json::json!({"password": "m", "tags": "management"}),
    )
    .await;
    let url = format!("{}/api/warren/stages", api.base);
    for who in [("plain", "p"), ("mgmt", "m")] {
        let r = request("GET", url.clone(), Some(who), None, &[]).await;
        assert_eq!(r.status, 401, "{who:?}: {:?}", r.body);
    }
    b.handle.shutdown().await;
}
