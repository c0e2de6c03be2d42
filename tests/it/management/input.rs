//! Bad input: malformed requests get RabbitMQ's 4xx answers, never a server error.

use crate::harness::*;
use serde_json::json;

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
