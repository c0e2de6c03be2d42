//! The management HTTP API, driven over HTTP (ureq) against a live broker, with lapin clients
//! creating the state it reports.

use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::time::Duration;

fn not_found(r: &Resp) {
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_required_and_checked() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let url = format!("{}/api/whoami", api.base);
    for auth in [None, Some(("guest", "wrong")), Some(("nobody", "guest"))] {
        let r = request("GET", url.clone(), auth, None, &[]).await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"RabbitMQ Management\"")
        );
        assert_eq!(r.body["error"], "not_authorized");
    }
    let r = request(
        "GET",
        url.clone(),
        None,
        None,
        &[("Authorization", "Basic !!!")],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = api.get("/api/whoami").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"name": "guest", "tags": ["administrator"]}));

    // A user without a management tag may not use the API; a management user may, but not
    // the administrator-only parts.
    assert_eq!(
        api.put("/api/users/plain", json!({"password": "p", "tags": ""}))
            .await
            .status,
        201
    );
    assert_eq!(
        api.put(
            "/api/users/mon",
            json!({"password": "m", "tags": "management"})
        )
        .await
        .status,
        201
    );
    let r = request("GET", url.clone(), Some(("plain", "p")), None, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["reason"], "Not management user");
    let r = request("GET", url.clone(), Some(("mon", "m")), None, &[]).await;
    assert_eq!(r.body, json!({"name": "mon", "tags": ["management"]}));
    let r = request(
        "GET",
        format!("{}/api/users", api.base),
        Some(("mon", "m")),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"], "not_authorised");
    b.handle.shutdown().await;
}

/// This host's address on a non-loopback interface, if it has one (no packet is sent).
fn outside_address() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_only_from_loopback_as_in_rabbitmq() {
    let Some(ip) = outside_address() else {
        eprintln!("no non-loopback interface: skipping");
        return;
    };
    let b = Broker::start_with(|c| c.http_listen = "0.0.0.0:0".into()).await;
    let port = b.handle.http_addr.port();
    let r = request(
        "GET",
        format!("http://{ip}:{port}/api/whoami"),
        Some(GUEST),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.body["reason"], "User can only log in via localhost");
    let r = request(
        "GET",
        format!("http://127.0.0.1:{port}/api/whoami"),
        Some(GUEST),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    b.handle.shutdown().await;
    // With guest taken off loopback_users it may come from anywhere.
    let b = Broker::start_with(|c| {
        c.http_listen = "0.0.0.0:0".into();
        c.loopback_users = vec![];
    })
    .await;
    let port = b.handle.http_addr.port();
    let r = request(
        "GET",
        format!("http://{ip}:{port}/api/whoami"),
        Some(GUEST),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_nodes_and_health() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let (_c, ch) = b.channel().await;
    declare(&ch, "ov-q").await;
    publish(&ch, "", "ov-q", b"x").await;
    let o = eventually(&api, "/api/overview", |o| {
        o["queue_totals"]["messages_ready"] == 1
    })
    .await;
    assert_eq!(o["object_totals"]["queues"], 1);
    assert_eq!(o["object_totals"]["connections"], 1);
    assert_eq!(o["object_totals"]["channels"], 1);
    assert_eq!(o["object_totals"]["exchanges"], 7);
    assert_eq!(o["message_stats"]["publish"], 1);
    assert!(o["message_stats"]["publish_details"]["rate"].is_number());
    assert_eq!(o["product_name"], "Warren");
    assert!(o["exchange_types"].as_array().unwrap().len() == 4);
    let node = o["node"].as_str().unwrap().to_owned();

    let nodes = api.get("/api/nodes").await.body;
    assert_eq!(nodes[0]["name"], node.as_str());
    assert_eq!(nodes[0]["running"], true);
    let r = api.get(&format!("/api/nodes/{node}")).await;
    assert_eq!(r.body["name"], node.as_str());
    not_found(&api.get("/api/nodes/rabbit@elsewhere").await);

    for p in [
        "/api/health/checks/alive",
        "/api/health/checks/local-alarms",
        "/api/health/checks/virtual-hosts",
        "/api/aliveness-test/%2F",
    ] {
        let r = api.get(p).await;
        assert_eq!((r.status, &r.body["status"]), (200, &json!("ok")), "{p}");
    }
    let port = b.handle.amqp_addr.port();
    let r = api
        .get(&format!("/api/health/checks/port-listener/{port}"))
        .await;
    assert_eq!(r.status, 200);
    let r = api.get("/api/health/checks/port-listener/1").await;
    assert_eq!((r.status, &r.body["status"]), (503, &json!("failed")));
    not_found(&api.get("/api/aliveness-test/nosuch").await);
    not_found(&api.get("/api/nosuch").await);
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_files_are_served() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let r = request("GET", format!("{}/", api.base), None, None, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text.contains("Warren"));
    let r = request("GET", format!("{}/index.html", api.base), None, None, &[]).await;
    assert_eq!(r.status, 200);
    let r = request(
        "GET",
        format!("{}/no/such/file.js", api.base),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
    b.handle.shutdown().await;
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_sort_filter_and_select_columns() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    for i in 0..25 {
        assert_eq!(
            api.put(&format!("/api/queues/%2F/page-{i:02}"), json!({}))
                .await
                .status,
            201
        );
    }
    api.put("/api/queues/%2F/other", json!({})).await;
    let all = api.get("/api/queues").await.body;
    assert_eq!(all.as_array().unwrap().len(), 26);
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name by default");

    let r = api
        .get("/api/queues?page=2&page_size=10&name=page-")
        .await
        .body;
    assert_eq!(r["filtered_count"], 25);
    assert_eq!(r["total_count"], 26);
    assert_eq!(r["item_count"], 10);
    assert_eq!(r["page"], 2);
    assert_eq!(r["page_count"], 3);
    assert_eq!(r["page_size"], 10);
    assert_eq!(r["items"][0]["name"], "page-10");
    let r = api
        .get("/api/queues/%2F?page=3&page_size=10&name=page-")
        .await
        .body;
    assert_eq!(r["item_count"], 5);
    let r = api
        .get("/api/queues?page=1&page_size=3&sort=name&sort_reverse=true")
        .await
        .body;
    assert_eq!(r["items"][0]["name"], "page-24");
    let r = api
        .get("/api/queues?name=^page-0[0-2]$&use_regex=true")
        .await
        .body;
    assert_eq!(r.as_array().unwrap().len(), 3);
    let r = api.get("/api/queues?name=PAGE-07").await.body;
    assert_eq!(
        r.as_array().unwrap().len(),
        1,
        "the name filter ignores case"
    );
    // The list's rendering of a queue (typed, streamed) is the single queue's (a JSON tree).
    let listed = api.get("/api/queues?name=other").await.body[0].clone();
    let mut single = api.get("/api/queues/%2F/other").await.body;
    single.as_object_mut().unwrap().remove("consumer_details");
    assert_eq!(listed, single);
    let sorted = api.get("/api/queues?name=other&sort=messages").await.body[0].clone();
    assert_eq!(sorted, single);
    let r = api
        .get("/api/queues?columns=name,message_stats.publish&name=other")
        .await
        .body;
    assert_eq!(
        r,
        json!([{"name": "other", "message_stats": {"publish": 0}}])
    );
    // Sorting on a numeric field.
    let (_c, ch) = b.channel().await;
    publish(&ch, "", "page-05", b"a").await;
    publish(&ch, "", "page-05", b"b").await;
    publish(&ch, "", "page-06", b"c").await;
    eventually(&api, "/api/queues/%2F/page-05", |q| q["messages"] == 2).await;
    eventually(&api, "/api/queues/%2F/page-06", |q| q["messages"] == 1).await;
    let r = api
        .get("/api/queues?sort=messages&sort_reverse=true&page=1&page_size=2")
        .await
        .body;
    assert_eq!(r["items"][0]["name"], "page-05");
    assert_eq!(r["items"][1]["name"], "page-06");

    for bad in [
        "/api/queues?page=0",
        "/api/queues?page=x",
        "/api/queues?page=1&page_size=501",
        "/api/queues?page=9&page_size=10",
        "/api/queues?name=(&use_regex=true",
    ] {
        let r = api.get(bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    assert_eq!(
        api.get("/api/queues?page=9&page_size=10").await.body["error"],
        "page_out_of_range"
    );
    let r = api.get("/api/exchanges?page=1&page_size=2").await.body;
    assert_eq!(r["total_count"], 7);
    b.handle.shutdown().await;
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_create_show_delete() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    api.put("/api/queues/%2F/bq", json!({})).await;
    api.put("/api/exchanges/%2F/bx", json!({"type": "headers"}))
        .await;
    api.put("/api/exchanges/%2F/bx2", json!({"type": "fanout"}))
        .await;
    let path = "/api/bindings/%2F/e/bx/q/bq";
    let r = api
        .post(
            path,
            json!({"routing_key": "a/b", "arguments": {"x-match": "any", "k": 1}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let location = r.header("location").unwrap().to_owned();
    assert!(location.starts_with("bq/a%252Fb~"), "{location}");
    let r = api.post(path, json!({"routing_key": "plain"})).await;
    assert_eq!((r.status, r.header("location")), (201, Some("bq/plain")));
    let list = api.get(path).await.body;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let with_args = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["routing_key"] == "a/b")
        .unwrap()
        .clone();
    assert_eq!(with_args["arguments"], json!({"x-match": "any", "k": 1}));
    assert_eq!(with_args["destination_type"], "queue");
    let key = with_args["properties_key"].as_str().unwrap();
    assert!(key.starts_with("a%2Fb~"), "{key}");
    // Addressed by its properties key, quoted for the path.
    let quoted =
        percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string();
    let one = api.get(&format!("{path}/{quoted}")).await;
    assert_eq!(one.body["routing_key"], "a/b", "{}", one.text);
    assert_eq!(api.delete(&format!("{path}/{quoted}")).await.status, 204);
    not_found(&api.get(&format!("{path}/{quoted}")).await);
    not_found(&api.delete(&format!("{path}/{quoted}")).await);
    assert_eq!(api.delete(&format!("{path}/plain")).await.status, 204);
    assert_eq!(api.get(path).await.body, json!([]));

    // Exchange to exchange.
    let e2e = "/api/bindings/%2F/e/bx2/e/bx";
    assert_eq!(api.post(e2e, json!({"routing_key": ""})).await.status, 201);
    let l = api.get(e2e).await.body;
    assert_eq!(l[0]["destination_type"], "exchange");
    assert_eq!(l[0]["properties_key"], "~");
    assert_eq!(
        api.get("/api/exchanges/%2F/bx/bindings/destination")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(api.delete(&format!("{e2e}/~")).await.status, 204);

    // All bindings, the default exchange's included.
    let all = api.get("/api/bindings").await.body;
    assert_eq!(
        all,
        json!([{
            "source": "", "vhost": "/", "destination": "bq", "destination_type": "queue",
            "routing_key": "bq", "arguments": {}, "properties_key": "bq"
        }])
    );
    assert_eq!(api.get("/api/bindings/%2F").await.body, all);
    not_found(&api.get("/api/bindings/%2F/e/nosuch/q/bq").await);
    not_found(&api.post("/api/bindings/%2F/e/bx/q/nosuch", json!({})).await);
    not_found(&api.get("/api/bindings/%2F/e/bx/z/bq").await);
    assert_eq!(api.raw("POST", path, "{").await.status, 400);
    assert_eq!(
        api.post("/api/bindings/%2F/e/amq.default/q/bq", json!({}))
            .await
            .status,
        401
    );
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_channels_consumers_and_closing() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let props = ConnectionProperties::default().with_connection_name("orders-service".into());
    let conn = Connection::connect(&b.url(), props).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(7, BasicQosOptions::default()).await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&ch, "cq").await;
    let _consumer = ch
        .basic_consume(
            "cq".into(),
            "my-tag".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        "cq".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let conns = eventually(&api, "/api/connections", |c| {
        c.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let c = &conns[0];
    assert_eq!(c["user"], "guest");
    assert_eq!(c["vhost"], "/");
    assert_eq!(c["protocol"], "AMQP 0-9-1");
    assert_eq!(c["state"], "running");
    assert_eq!(c["auth_mechanism"], "PLAIN");
    assert_eq!(c["client_properties"]["connection_name"], "orders-service");
    assert_eq!(c["channels"], 1);
    assert_eq!(c["port"], b.handle.amqp_addr.port());
    assert!(c["recv_oct"].as_u64().unwrap() > 0);
    let name = c["name"].as_str().unwrap().to_owned();
    assert!(
        name.ends_with(&format!(" -> {}", b.handle.amqp_addr)),
        "{name}"
    );
    let quoted = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    assert_eq!(
        api.get(&format!("/api/connections/{quoted}")).await.body["name"],
        name.as_str()
    );
    assert_eq!(
        api.get("/api/vhosts/%2F/connections")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let chans = eventually(&api, "/api/channels", |c| {
        c[0]["messages_unacknowledged"] == 1
    })
    .await;
    let c0 = &chans[0];
    assert_eq!(c0["name"], format!("{name} (1)"));
    assert_eq!(c0["number"], 1);
    assert_eq!(c0["consumer_count"], 1);
    assert_eq!(c0["prefetch_count"], 7);
    assert_eq!(c0["confirm"], true);
    assert_eq!(c0["connection_details"]["name"], name.as_str());
    assert_eq!(c0["message_stats"]["publish"], 1);
    assert_eq!(c0["message_stats"]["deliver"], 1);
    assert_eq!(c0["message_stats"]["confirm"], 1);
    assert_eq!(
        api.get(&format!("/api/connections/{quoted}/channels"))
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let cname = percent_encoding::utf8_percent_encode(
        &format!("{name} (1)"),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    assert_eq!(
        api.get(&format!("/api/channels/{cname}")).await.body["number"],
        1
    );

    let cons = api.get("/api/consumers").await.body;
    assert_eq!(cons.as_array().unwrap().len(), 1);
    assert_eq!(cons[0]["consumer_tag"], "my-tag");
    assert_eq!(cons[0]["queue"], json!({"name": "cq", "vhost": "/"}));
    assert_eq!(cons[0]["ack_required"], true);
    assert_eq!(cons[0]["prefetch_count"], 7);
    assert_eq!(cons[0]["channel_details"]["connection_name"], name.as_str());
    assert_eq!(api.get("/api/consumers/%2F").await.body, cons);
    let q = api.get("/api/queues/%2F/cq").await.body;
    assert_eq!(q["consumers"], 1);
    assert_eq!(q["consumer_details"][0]["consumer_tag"], "my-tag");

    // Closing from the API: the client hears 320 CONNECTION_FORCED with the reason.
    let r = request(
        "DELETE",
        format!("{}/api/connections/{quoted}", api.base),
        Some(GUEST),
        None,
        &[("X-Reason", "maintenance window")],
    )
    .await;
    assert_eq!(r.status, 204);
    let e = ch
        .queue_declare(
            "after".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(|_| ())
        .unwrap_err();
    let closed = code(&e) == Some(320) || !conn.status().connected();
    assert!(closed, "expected 320, got {e}");
    eventually(&api, "/api/connections", |c| c == &json!([])).await;
    assert_eq!(api.get("/api/channels").await.body, json!([]));
    assert_eq!(api.get("/api/consumers").await.body, json!([]));
    not_found(&api.delete(&format!("/api/connections/{quoted}")).await);
    // Counters of closed channels still count globally.
    let o = api.get("/api/overview").await.body;
    assert_eq!(o["message_stats"]["publish"], 1);
    assert_eq!(o["message_stats"]["deliver"], 1);
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_reports_the_default_reason() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let conn = b.connect().await;
    let conns = eventually(&api, "/api/connections", |c| {
        c.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let name = conns[0]["name"].as_str().unwrap();
    let quoted =
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string();
    let mut events = Box::pin(conn.events_listener());
    assert_eq!(
        api.delete(&format!("/api/connections/{quoted}"))
            .await
            .status,
        204
    );
    let e = tokio::time::timeout(Duration::from_secs(5), async {
        use futures_util::StreamExt;
        loop {
            if let Some(lapin::Event::Error(e)) = events.next().await {
                return e;
            }
        }
    })
    .await
    .expect("the client hears the close");
    assert_eq!(code(&e), Some(320), "{e}");
    assert!(
        text(&e).contains("Closed via management plugin"),
        "{}",
        text(&e)
    );
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_users_permissions() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let v = api.get("/api/vhosts").await.body;
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["name"], "/");
    assert_eq!(v[0]["description"], "Default virtual host");
    assert_eq!(
        api.put(
            "/api/vhosts/staging",
            json!({"description": "pre-prod", "tags": "a,b"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        api.put(
            "/api/vhosts/staging",
            json!({"description": "pre-production"})
        )
        .await
        .status,
        204
    );
    let s = api.get("/api/vhosts/staging").await.body;
    assert_eq!(s["description"], "pre-production");
    assert_eq!(s["tags"], json!(["a", "b"]));
    assert_eq!(api.raw("PUT", "/api/vhosts/bad", "{").await.status, 400);
    not_found(&api.get("/api/vhosts/nosuch").await);

    // A new user with permissions on the new vhost connects with AMQP.
    assert_eq!(
        api.put(
            "/api/users/alice",
            json!({"password": "s3cret", "tags": ["management"]})
        )
        .await
        .status,
        201
    );
    let u = api.get("/api/users/alice").await.body;
    assert_eq!(u["tags"], json!(["management"]));
    assert_eq!(u["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert!(u["password_hash"].as_str().unwrap().len() > 40);
    assert_eq!(
        api.put("/api/users/nopass", json!({"tags": ""}))
            .await
            .status,
        400
    );
    let perm = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(
        api.put("/api/permissions/staging/alice", perm.clone())
            .await
            .status,
        201
    );
    assert_eq!(
        api.put("/api/permissions/staging/alice", perm.clone())
            .await
            .status,
        204
    );
    assert_eq!(
        api.put("/api/permissions/staging/nobody", perm.clone())
            .await
            .status,
        400
    );
    assert_eq!(
        api.put("/api/permissions/nosuch/alice", perm.clone())
            .await
            .status,
        400
    );
    assert_eq!(
        api.put("/api/permissions/staging/alice", json!({"configure": "("}))
            .await
            .status,
        400
    );
    assert_eq!(
        api.put(
            "/api/permissions/staging/alice",
            json!({"configure": "(", "write": "", "read": ""})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        api.get("/api/permissions/staging/alice").await.body,
        json!({"user": "alice", "vhost": "staging", "configure": ".*", "write": ".*", "read": ".*"})
    );
    assert_eq!(
        api.get("/api/vhosts/staging/permissions")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2,
        "creator and alice"
    );
    assert_eq!(
        api.get("/api/users/alice/permissions")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.get("/api/permissions")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let url = format!("amqp://alice:s3cret@{}/staging", b.handle.amqp_addr);
    let alice = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("alice connects");
    let ach = alice.create_channel().await.unwrap();
    declare(&ach, "staging-q").await;
    assert_eq!(
        api.get("/api/queues/staging").await.body[0]["name"],
        "staging-q"
    );
    assert!(api
        .get("/api/queues/%2F")
        .await
        .body
        .as_array()
        .unwrap()
        .is_empty());
    // Wrong password, and a vhost without permission, are refused.
    let bad = format!("amqp://alice:wrong@{}/staging", b.handle.amqp_addr);
    assert!(Connection::connect(&bad, ConnectionProperties::default())
        .await
        .is_err());
    let other = format!("amqp://alice:s3cret@{}/%2f", b.handle.amqp_addr);
    let e = Connection::connect(&other, ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(530), "{e}");

    // Changing the password keeps the tags.
    assert_eq!(
        api.put("/api/users/alice", json!({"password": "new"}))
            .await
            .status,
        204
    );
    assert_eq!(
        api.get("/api/users/alice").await.body["tags"],
        json!(["management"])
    );
    let newurl = format!("amqp://alice:new@{}/staging", b.handle.amqp_addr);
    Connection::connect(&newurl, ConnectionProperties::default())
        .await
        .expect("new password works");

    // Deleting the vhost closes its connections and removes its queues and permissions.
    assert_eq!(api.delete("/api/vhosts/staging").await.status, 204);
    let e = ach
        .queue_declare(
            "x".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(code(&e) == Some(320) || !alice.status().connected(), "{e}");
    not_found(&api.get("/api/vhosts/staging").await);
    not_found(&api.delete("/api/vhosts/staging").await);
    not_found(&api.get("/api/queues/staging").await);
    not_found(&api.get("/api/permissions/staging/alice").await);
    assert!(
        Connection::connect(&newurl, ConnectionProperties::default())
            .await
            .is_err()
    );

    assert_eq!(api.delete("/api/users/alice").await.status, 204);
    not_found(&api.delete("/api/users/alice").await);
    not_found(&api.get("/api/users/alice").await);
    let users = api.get("/api/users").await.body;
    assert!(users
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "guest"));
    // guest has permissions on /; the refused "nopass" was never created.
    assert_eq!(
        api.get("/api/users/without-permissions").await.body,
        json!([])
    );
    b.handle.shutdown().await;
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_vhosts_and_permissions_survive_a_restart() {
    let dir = temp_data_dir();
    let start = |dir: std::path::PathBuf| async move {
        let mut c = warren::config::Config {
            amqp_listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            prometheus_listen: String::new(),
            data_dir: dir,
            ..Default::default()
        };
        // The previous instance's tasks may still hold the store for a moment.
        for _ in 0..100 {
            match warren::Server::start(c.clone()).await {
                Ok(h) => return h,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        c.data_dir = std::path::PathBuf::new();
        panic!("broker did not restart");
    };
    let h = start(dir.clone()).await;
    let api = Api {
        base: format!("http://{}", h.http_addr),
    };
    api.put("/api/vhosts/kept", json!({"description": "d"}))
        .await;
    api.put(
        "/api/users/keeper",
        json!({"password": "pw", "tags": "administrator"}),
    )
    .await;
    api.put(
        "/api/permissions/kept/keeper",
        json!({"configure": "c", "write": "w", "read": "r"}),
    )
    .await;
    api.put("/api/queues/kept/dq", json!({"durable": true}))
        .await;
    api.delete("/api/vhosts/%2F").await;
    h.shutdown().await;

    let h = start(dir.clone()).await;
    let api = Api {
        base: format!("http://{}", h.http_addr),
    };
    let r = request(
        "GET",
        format!("{}/api/whoami", api.base),
        Some(("keeper", "pw")),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(api.get("/api/vhosts/kept").await.body["description"], "d");
    not_found(&api.get("/api/vhosts/%2F").await);
    assert_eq!(
        api.get("/api/permissions/kept/keeper").await.body["write"],
        "w"
    );
    assert_eq!(api.get("/api/queues/kept/dq").await.status, 200);
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_never_gets_a_server_error() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    api.put("/api/queues/%2F/fz", json!({})).await;
    let bodies = [
        "",
        "{",
        "null",
        "[]",
        "1",
        "\"s\"",
        "{\"durable\": null}",
        "{\"arguments\": 5}",
        "{\"arguments\": {\"x-message-ttl\": -1}}",
        "{\"type\": 7}",
        "{\"count\": \"x\"}",
        "{\"routing_key\": 1}",
        "{\"properties\": {\"headers\": [1]}}",
        "{\"arguments\": {\"k\": {\"deep\": [[[[{}]]]]}}}",
        &format!("{{\"routing_key\": \"{}\"}}", "k".repeat(300)),
        &format!("{{\"arguments\": {{\"{}\": 1}}}}", "k".repeat(300)),
        "\u{0}\u{1}binary",
    ];
    let paths = [
        ("PUT", "/api/queues/%2F/fz"),
        ("PUT", "/api/queues/%2F/fz2"),
        ("POST", "/api/queues/%2F/fz/get"),
        ("PUT", "/api/exchanges/%2F/fx"),
        ("POST", "/api/exchanges/%2F/amq.default/publish"),
        ("POST", "/api/bindings/%2F/e/amq.direct/q/fz"),
        ("PUT", "/api/vhosts/fv"),
        ("PUT", "/api/users/fu"),
        ("PUT", "/api/permissions/%2F/guest"),
        ("POST", "/api/definitions"),
        ("POST", "/api/definitions/%2F"),
    ];
    for (m, p) in paths {
        for body in bodies {
            let r = api.raw(m, p, body).await;
            assert!(r.status < 500, "{m} {p} {body:?}: {} {}", r.status, r.text);
        }
    }
    for p in [
        "/api/queues/%FF%FE/x",
        "/api/queues/%2F/%00",
        "/api/queues?sort=%00",
        "/api/queues?page=99999999999999999999",
        "/api/queues?page_size=-1&page=1",
        "/api/queues?name=[&use_regex=true",
        "/api/bindings/%2F/e/a/q/b/c/d",
        "/api/connections/%00",
        "/api/exchanges/%2F/amq.default/bindings/source",
    ] {
        let r = api.get(p).await;
        assert!(r.status < 500, "GET {p}: {} {}", r.status, r.text);
    }
    // The broker still serves AMQP afterwards.
    let (_c, ch) = b.channel().await;
    declare(&ch, "still-alive").await;
    b.handle.shutdown().await;
}

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

async fn eventually_for(
    api: &Api,
    path: &str,
    limit: Duration,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        let r = api.get(path).await;
        if r.status == 200 && f(&r.body) {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{path} never satisfied the condition: {}",
        api.get(path).await.text
    );
}

/// Non-administrators see and change only what RabbitMQ lets them: vhosts they have permissions
/// on, their own connections (management tag), resource patterns on every change; monitoring
/// users read everything. Replies as RabbitMQ 3.10's (checked side by side with curl).
#[tokio::test]
async fn management_users_are_scoped() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let amqp = b.handle.amqp_addr;
    for (user, tags) in [("mgr", "management"), ("mon", "monitoring")] {
        let body = json!({"password": "pw", "tags": tags});
        assert_eq!(
            api.put(&format!("/api/users/{user}"), body).await.status,
            201
        );
        let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
        let path = format!("/api/permissions/%2F/{user}");
        assert_eq!(api.put(&path, all).await.status, 201);
    }
    assert_eq!(api.put("/api/vhosts/other", json!({})).await.status, 201);
    assert_eq!(api.put("/api/queues/other/oq", json!({})).await.status, 201);
    let as_user = |user: &'static str| {
        let base = api.base.clone();
        move |method: &'static str, path: &str, body: Option<Value>| {
            let url = format!("{base}{path}");
            async move {
                request(
                    method,
                    url,
                    Some((user, "pw")),
                    body.map(|b| b.to_string()),
                    &[],
                )
                .await
            }
        }
    };
    let mgr = as_user("mgr");
    let mon = as_user("mon");

    // Another vhost: refused before any handler, reads and changes alike.
    for (method, path, body) in [
        ("GET", "/api/queues/other", None),
        ("GET", "/api/queues/other/oq", None),
        ("DELETE", "/api/queues/other/oq", None),
        ("PUT", "/api/queues/other/new", Some(json!({}))),
        (
            "POST",
            "/api/queues/other/oq/get",
            Some(json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})),
        ),
        ("GET", "/api/bindings/other", None),
    ] {
        let r = mgr(method, path, body).await;
        assert_eq!(r.status, 401, "{method} {path}: {}", r.text);
        assert_eq!(
            r.body["reason"],
            "User not authorised to access virtual host"
        );
    }
    assert!(
        api.get("/api/queues/other/oq").await.status == 200,
        "still there"
    );
    // Lists leave out what the user may not see.
    let qs = mgr("GET", "/api/queues", None).await.body;
    assert!(
        qs.as_array().unwrap().iter().all(|q| q["vhost"] == "/"),
        "{qs}"
    );
    let vs = mgr("GET", "/api/vhosts", None).await.body;
    assert_eq!(vs.as_array().unwrap().len(), 1, "{vs}");
    let o = mgr("GET", "/api/overview", None).await.body;
    assert_eq!(
        o["object_totals"]["queues"], 0,
        "oq is in another vhost: {o}"
    );
    let o = mon("GET", "/api/overview", None).await.body;
    assert_eq!(o["object_totals"]["queues"], 1, "{o}");
    let bs = mgr("GET", "/api/bindings", None).await.body;
    assert!(
        bs.as_array().unwrap().iter().all(|b| b["vhost"] == "/"),
        "{bs}"
    );
    // Monitoring users read everything, and node details (management users do not).
    let qs = mon("GET", "/api/queues", None).await.body;
    assert!(
        qs.as_array().unwrap().iter().any(|q| q["vhost"] == "other"),
        "{qs}"
    );
    assert_eq!(mon("GET", "/api/nodes", None).await.status, 200);
    let r = mgr("GET", "/api/nodes", None).await;
    assert_eq!(
        (r.status, r.body["reason"].clone()),
        (401, json!("Not monitor user"))
    );
    // ...but change nothing where they have no permissions.
    assert_eq!(
        mon("DELETE", "/api/queues/other/oq", None).await.status,
        401
    );

    // Connections: a management user sees only its own.
    let guest_conn = Connection::connect(&b.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let mgr_conn = Connection::connect(
        &format!("amqp://mgr:pw@{amqp}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let cs = eventually_for(&api, "/api/connections", Duration::from_secs(5), |c| {
        c.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let guest_name = cs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["user"] == "guest")
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let mine = mgr("GET", "/api/connections", None).await.body;
    let users: Vec<&Value> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["user"])
        .collect();
    assert_eq!(users, vec![&json!("mgr")], "{mine}");
    assert_eq!(
        mon("GET", "/api/connections", None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let enc =
        percent_encoding::utf8_percent_encode(&guest_name, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let r = mgr("DELETE", &format!("/api/connections/{enc}"), None).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(guest_conn.status().connected());

    // Resource patterns apply to management actions as to AMQP ones.
    let none = json!({"configure": "^$", "write": "^$", "read": "^$"});
    assert_eq!(api.put("/api/permissions/%2F/mgr", none).await.status, 204);
    api.put("/api/queues/%2F/guest-q", json!({})).await;
    let r = mgr("PUT", "/api/queues/%2F/mq", Some(json!({}))).await;
    assert_eq!(
        (r.status, r.body["reason"].clone()),
        (401, json!("Access refused."))
    );
    let r = mgr("DELETE", "/api/queues/%2F/guest-q", None).await;
    assert_eq!(
        (r.status, r.body["reason"].clone()),
        (401, json!("Access refused."))
    );
    let r = mgr("DELETE", "/api/queues/%2F/guest-q/contents", None).await;
    assert_eq!(r.status, 401);
    let r = mgr(
        "POST",
        "/api/queues/%2F/guest-q/get",
        Some(json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body["reason"],
        "ACCESS_REFUSED - access to queue 'guest-q' in vhost '/' refused for user 'mgr'"
    );
    let r = mgr(
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        Some(json!({"properties": {}, "routing_key": "guest-q", "payload": "x", "payload_encoding": "string"})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body["reason"],
        "403 ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'mgr'"
    );
    let r = mgr(
        "POST",
        "/api/bindings/%2F/e/amq.direct/q/guest-q",
        Some(json!({"routing_key": "k"})),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(api.get("/api/queues/%2F/guest-q").await.status, 200);
    drop(mgr_conn);
    b.handle.shutdown().await;
}
