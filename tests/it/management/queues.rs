//! Queues: declare, show, get, purge, delete, and the age of the head message.

use super::not_found;
use crate::harness::*;
use lapin::options::*;
use lapin::BasicProperties;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_declare_show_get_purge_delete() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let q = "/api/queues/%2F/mq";
    let r = api
        .put(
            q,
            json!({"durable": true, "arguments": {"x-max-length": 100}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        api.put(
            q,
            json!({"durable": true, "arguments": {"x-max-length": 100}})
        )
        .await
        .status,
        204
    );
    let r = api.put(q, json!({"durable": false})).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["reason"]
            .as_str()
            .unwrap()
            .contains("inequivalent arg 'durable'"),
        "{}",
        r.text
    );
    let r = api.raw("PUT", q, "{not json").await;
    assert_eq!((r.status, &r.body["error"]), (400, &json!("bad_request")));
    let r = api.put(q, json!({"durable": "yes"})).await;
    assert_eq!(r.status, 400);
    let r = api
        .put(
            "/api/queues/%2F/bad-args",
            json!({"arguments": {"x-max-length": "many"}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api.put("/api/queues/%2F/amq.reserved", json!({})).await;
    assert_eq!(r.status, 401, "{}", r.text);
    not_found(&api.put("/api/queues/nosuch/q", json!({})).await);

    // Messages from a real client show up in the counts.
    let (_c, ch) = b.channel().await;
    for i in 0..3 {
        ch.basic_publish(
            "".into(),
            "mq".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default()
                .with_content_type("text/plain".into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap();
    }
    ch.basic_publish(
        "".into(),
        "mq".into(),
        BasicPublishOptions::default(),
        &[0xff, 0xfe, 0x00],
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let s = eventually(&api, q, |s| s["messages_ready"] == 4).await;
    assert_eq!(s["name"], "mq");
    assert_eq!(s["vhost"], "/");
    assert_eq!(s["durable"], true);
    assert_eq!(s["arguments"], json!({"x-max-length": 100}));
    assert_eq!(s["messages"], 4);
    assert_eq!(s["messages_unacknowledged"], 0);
    assert_eq!(s["consumers"], 0);
    assert_eq!(s["message_stats"]["publish"], 4);
    assert!(s["memory"].as_u64().unwrap() > 0);
    assert_eq!(s["message_bytes_ready"], 9);
    assert!(s["head_message_age_seconds"].as_f64().unwrap() >= 0.0);

    // Get with requeue leaves them (marked redelivered); text and binary payloads.
    let get = |ackmode: &str, count: u64, encoding: &str| json!({"count": count, "ackmode": ackmode, "encoding": encoding, "truncate": 50000});
    let r = api
        .post(&format!("{q}/get"), get("ack_requeue_true", 2, "auto"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let msgs = r.body.as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["payload"], "m0");
    assert_eq!(msgs[0]["payload_encoding"], "string");
    assert_eq!(msgs[0]["redelivered"], false);
    assert_eq!(msgs[0]["routing_key"], "mq");
    assert_eq!(msgs[0]["message_count"], 3);
    assert_eq!(msgs[0]["properties"]["content_type"], "text/plain");
    assert_eq!(msgs[0]["properties"]["delivery_mode"], 2);
    let r = api
        .post(&format!("{q}/get"), get("ack_requeue_true", 1, "base64"))
        .await;
    assert_eq!(r.body[0]["payload"], "bTA=");
    assert_eq!(r.body[0]["payload_encoding"], "base64");
    assert_eq!(r.body[0]["redelivered"], true);
    // Take the first three for good; the binary one remains, shown as base64 even in auto.
    let r = api
        .post(&format!("{q}/get"), get("ack_requeue_false", 3, "auto"))
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 3);
    let r = api
        .post(
            &format!("{q}/get"),
            json!({"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 2}),
        )
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(r.body[0]["payload_encoding"], "base64");
    assert_eq!(r.body[0]["payload"], "//4=");
    assert_eq!(r.body[0]["payload_bytes"], 3);
    let s = api.get(q).await.body;
    assert_eq!(s["messages_ready"], 1);
    assert_eq!(s["message_stats"]["get"], 7);
    assert_eq!(s["message_stats"]["ack"], 3);
    assert!(s["message_stats"]["redeliver"].as_u64().unwrap() >= 1);
    for bad in [
        json!({"count": 1, "ackmode": "sometimes", "encoding": "auto"}),
        json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "rot13"}),
        json!({"count": -1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
    ] {
        assert_eq!(api.post(&format!("{q}/get"), bad).await.status, 400);
    }
    not_found(
        &api.post(
            "/api/queues/%2F/nosuch/get",
            get("ack_requeue_true", 1, "auto"),
        )
        .await,
    );

    // Delete refuses when not empty and asked so; purge; delete; then 404.
    let r = api.delete(&format!("{q}?if-empty=true")).await;
    assert_eq!(r.status, 400);
    assert_eq!(api.delete(&format!("{q}/contents")).await.status, 204);
    assert_eq!(api.get(q).await.body["messages_ready"], 0);
    assert_eq!(api.delete(&format!("{q}?if-empty=true")).await.status, 204);
    not_found(&api.get(q).await);
    not_found(&api.delete(q).await);
    not_found(&api.delete(&format!("{q}/contents")).await);
    not_found(&api.get("/api/queues/nosuch").await);
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_message_age_grows_until_consumed() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let (_c, ch) = b.channel().await;
    declare(&ch, "aged").await;
    publish(&ch, "", "aged", b"old").await;
    eventually(&api, "/api/queues/%2F/aged", |s| s["messages_ready"] == 1).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    publish(&ch, "", "aged", b"new").await;
    let s = eventually(&api, "/api/queues/%2F/aged", |s| s["messages_ready"] == 2).await;
    let age = s["head_message_age_seconds"].as_f64().unwrap();
    assert!(
        (1.0..30.0).contains(&age),
        "age of the oldest message: {age}"
    );
    // Once the old one is gone the head is the new one.
    get_one(&ch, "aged").await.unwrap();
    let s = api.get("/api/queues/%2F/aged").await.body;
    assert!(s["head_message_age_seconds"].as_f64().unwrap() < age);
    get_one(&ch, "aged").await.unwrap();
    let s = api.get("/api/queues/%2F/aged").await.body;
    assert_eq!(s["head_message_age_seconds"], 0.0);
    b.handle.shutdown().await;
}
