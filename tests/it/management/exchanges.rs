//! Exchanges: declare, publish through the API, delete.

use super::not_found;
use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_declare_publish_delete() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let xs = api.get("/api/exchanges/%2F").await.body;
    let names: Vec<&str> = xs
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.rabbitmq.trace",
            "amq.topic"
        ]
    );
    let d = api.get("/api/exchanges/%2F/amq.default").await.body;
    assert_eq!(
        (d["name"].as_str(), d["type"].as_str()),
        (Some(""), Some("direct"))
    );

    let x = "/api/exchanges/%2F/mx";
    let r = api
        .put(
            x,
            json!({"type": "topic", "durable": true, "arguments": {"alternate-exchange": "ae"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        api.put(
            x,
            json!({"type": "topic", "durable": true, "arguments": {"alternate-exchange": "ae"}})
        )
        .await
        .status,
        204
    );
    let r = api.put(x, json!({"type": "fanout", "durable": true})).await;
    assert_eq!(r.status, 400);
    let r = api
        .put("/api/exchanges/%2F/x-bad", json!({"type": "nosuch"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(api.raw("PUT", x, "[1,2").await.status, 400);
    let e = api.get(x).await.body;
    assert_eq!(e["type"], "topic");
    assert_eq!(e["durable"], true);
    assert_eq!(e["arguments"]["alternate-exchange"], "ae");
    assert_eq!(
        api.put("/api/exchanges/%2F/plain", json!({})).await.status,
        201
    );
    assert_eq!(
        api.get("/api/exchanges/%2F/plain").await.body["type"],
        "direct"
    );

    // Publish: routed to a queue bound by a real client; unroutable says so.
    let (_c, ch) = b.channel().await;
    declare(&ch, "xq").await;
    ch.queue_bind(
        "xq".into(),
        "mx".into(),
        "a.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let body = json!({
        "routing_key": "a.b",
        "payload": "hi there",
        "payload_encoding": "string",
        "properties": {"headers": {"h": "v", "n": 5}, "delivery_mode": 2, "content_type": "text/plain"},
    });
    let r = api.post(&format!("{x}/publish"), body).await;
    assert_eq!(r.body, json!({"routed": true}), "{}", r.text);
    let r = api
        .post(&format!("{x}/publish"), json!({"routing_key": "b.b", "payload": "", "payload_encoding": "string", "properties": {}}))
        .await;
    assert_eq!(r.body, json!({"routed": false}));
    let r = api
        .post("/api/exchanges/%2F/amq.default/publish", json!({"routing_key": "xq", "payload": "AAEC", "payload_encoding": "base64", "properties": {}}))
        .await;
    assert_eq!(r.body, json!({"routed": true}));
    let m = get_one(&ch, "xq").await.unwrap();
    assert_eq!(m.delivery.data, b"hi there");
    let p = &m.delivery.properties;
    assert_eq!(p.delivery_mode(), &Some(2));
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
    let h = p.headers().as_ref().unwrap();
    assert_eq!(h.inner().get("n"), Some(&AMQPValue::LongLongInt(5)));
    let m = get_one(&ch, "xq").await.unwrap();
    assert_eq!(m.delivery.data, [0, 1, 2]);
    for bad in [
        json!({"routing_key": "k", "payload": "!", "payload_encoding": "base64", "properties": {}}),
        json!({"routing_key": "k", "payload": "x", "payload_encoding": "utf-7", "properties": {}}),
        json!({"routing_key": "k", "payload": "x", "properties": {"delivery_mode": "lots"}}),
        json!({"routing_key": "k", "payload": "x", "properties": {"expiration": "-5"}}),
        json!({"routing_key": "k", "payload": "x", "properties": {"no_such_property": 1}}),
        json!({"routing_key": "k", "payload": "x", "properties": [1]}),
    ] {
        let r = api.post(&format!("{x}/publish"), bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    let r = api
        .post(
            "/api/exchanges/%2F/nosuch/publish",
            json!({"routing_key": "k", "payload": "x"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["reason"].as_str().unwrap().contains("NOT_FOUND"));

    // Binding listings from both ends.
    let src = api.get(&format!("{x}/bindings/source")).await.body;
    assert_eq!(src.as_array().unwrap().len(), 1);
    assert_eq!(src[0]["destination"], "xq");
    assert_eq!(src[0]["routing_key"], "a.*");
    let dst = api
        .get("/api/exchanges/%2F/plain/bindings/destination")
        .await
        .body;
    assert_eq!(dst, json!([]));
    let qb = api.get("/api/queues/%2F/xq/bindings").await.body;
    assert_eq!(
        qb.as_array().unwrap().len(),
        2,
        "default exchange and mx: {qb}"
    );

    // Delete: if-unused refuses a bound exchange; system exchanges stay; 404 after.
    assert_eq!(api.delete(&format!("{x}?if-unused=true")).await.status, 400);
    assert_eq!(
        api.delete("/api/exchanges/%2F/amq.direct").await.status,
        401
    );
    assert_eq!(api.delete(x).await.status, 204);
    not_found(&api.get(x).await);
    not_found(&api.delete(x).await);
    not_found(&api.get("/api/exchanges/nosuch").await);
    b.handle.shutdown().await;
}
