//! Definitions: importing a RabbitMQ export, and exporting what was imported.

use super::not_found;
use crate::harness::*;
use lapin::options::*;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};

/// A definitions file as RabbitMQ 3.10 exports it (the hash is RabbitMQ's for password "guest").
const RABBIT_EXPORT: &str = r##"{
 "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8", "product_name": "RabbitMQ",
 "product_version": "3.10.8",
 "users": [{"name": "ops", "password_hash": "/eAN14WfTpApCOngZ2NKDCjIPV/5HcXbK/3WhDjiYdp8b6Er",
            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"], "limits": {}},
           {"name": "legacy", "password_hash": "/eAN14WfTpApCOngZ2NKDCjIPV/5HcXbK/3WhDjiYdp8b6Er",
            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "management,monitoring"}],
 "vhosts": [{"name": "/"}, {"name": "shop", "metadata": {"description": "the shop", "tags": []}}],
 "permissions": [{"user": "ops", "vhost": "shop", "configure": ".*", "write": ".*", "read": ".*"}],
 "topic_permissions": [], "parameters": [],
 "global_parameters": [{"name": "internal_cluster_id", "value": "rabbitmq-cluster-id-xyz"}],
 "policies": [],
 "queues": [{"name": "orders", "vhost": "shop", "durable": true, "auto_delete": false,
             "arguments": {"x-queue-type": "classic", "x-max-length": 1000}},
            {"name": "events", "vhost": "shop", "durable": true, "auto_delete": false, "arguments": {}}],
 "exchanges": [{"name": "shop.topic", "vhost": "shop", "type": "topic", "durable": true,
                "auto_delete": false, "internal": false, "arguments": {}},
               {"name": "shop.fan", "vhost": "shop", "type": "fanout", "durable": true,
                "auto_delete": false, "internal": false, "arguments": {}}],
 "bindings": [{"source": "shop.topic", "vhost": "shop", "destination": "orders",
               "destination_type": "queue", "routing_key": "order.*", "arguments": {}},
              {"source": "shop.topic", "vhost": "shop", "destination": "shop.fan",
               "destination_type": "exchange", "routing_key": "#", "arguments": {}},
              {"source": "shop.fan", "vhost": "shop", "destination": "events",
               "destination_type": "queue", "routing_key": "", "arguments": {}}]
}"##;

fn sorted_by_name(v: &Value, key: &str) -> Vec<Value> {
    let mut a = v[key].as_array().cloned().unwrap_or_default();
    a.sort_by_key(|x| x.to_string());
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_import_a_rabbitmq_export_and_round_trip() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let r = api.raw("POST", "/api/definitions", RABBIT_EXPORT).await;
    assert_eq!(r.status, 204, "{}", r.text);
    // The imported user logs in with the password RabbitMQ hashed.
    let url = format!("amqp://ops:guest@{}/shop", b.handle.amqp_addr);
    let c = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("ops logs in");
    let ch = c.create_channel().await.unwrap();
    ch.basic_publish(
        "shop.topic".into(),
        "order.new".into(),
        BasicPublishOptions::default(),
        b"o",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let orders = eventually(&api, "/api/queues/shop/orders", |q| q["messages"] == 1).await;
    assert_eq!(orders["arguments"]["x-max-length"], 1000);
    eventually(&api, "/api/queues/shop/events", |q| q["messages"] == 1).await;
    assert_eq!(
        api.get("/api/users/legacy").await.body["tags"],
        json!(["management", "monitoring"])
    );
    assert_eq!(
        api.get("/api/vhosts/shop").await.body["description"],
        "the shop"
    );

    let exported = api.get("/api/definitions").await.body;
    assert_eq!(exported["product_name"], "Warren");
    assert_eq!(sorted_by_name(&exported, "queues").len(), 2);
    assert_eq!(
        sorted_by_name(&exported, "exchanges").len(),
        2,
        "amq.* and the default are not exported"
    );
    assert_eq!(sorted_by_name(&exported, "bindings").len(), 3);
    assert_eq!(exported["bindings"][0]["vhost"], "shop");
    let per_vhost = api.get("/api/definitions/shop").await.body;
    assert_eq!(per_vhost["queues"].as_array().unwrap().len(), 2);
    assert!(per_vhost["queues"][0].get("vhost").is_none());

    // Into a fresh broker, and back out the same.
    let b2 = Broker::start().await;
    let api2 = Api::of(&b2);
    let r = api2.post("/api/definitions", exported.clone()).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let again = api2.get("/api/definitions").await.body;
    for k in ["queues", "exchanges", "bindings", "users", "permissions"] {
        assert_eq!(
            sorted_by_name(&again, k),
            sorted_by_name(&exported, k),
            "{k}"
        );
    }
    let vnames = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v["vhosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(vnames(&again), vnames(&exported));

    // Per-vhost import puts everything in the named vhost.
    api2.put("/api/vhosts/copy", json!({})).await;
    let r = api2.post("/api/definitions/copy", per_vhost).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(
        api2.get("/api/queues/copy")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Bad input: not JSON, wrong shapes, and references to what does not exist.
    assert_eq!(api2.raw("POST", "/api/definitions", "{{").await.status, 400);
    assert_eq!(api2.raw("POST", "/api/definitions", "[]").await.status, 400);
    assert_eq!(
        api2.post("/api/definitions", json!({"queues": "no"}))
            .await
            .status,
        400
    );
    let r = api2
        .post(
            "/api/definitions",
            json!({"queues": [{"name": "q", "vhost": "nowhere", "durable": true}]}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["reason"].as_str().unwrap().contains("nowhere"),
        "{}",
        r.text
    );
    let r = api2
        .post("/api/definitions", json!({"bindings": [{"source": "nosuch", "vhost": "/", "destination": "q", "destination_type": "queue", "routing_key": ""}]}))
        .await;
    assert_eq!(r.status, 400);
    not_found(&api2.get("/api/definitions/nosuch").await);
    b2.handle.shutdown().await;
    b.handle.shutdown().await;
}
