//! Bindings: create, show, delete.

use super::not_found;
use crate::harness::*;
use serde_json::json;

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
