//! The node as a whole: overview, nodes, health checks, and the dashboard's files.

use super::not_found;
use crate::harness::*;
use serde_json::json;

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
    // Without [cluster]: no cluster link, the one node as the only member (the dashboard shows
    // no cluster controls on that).
    let c = api.get("/api/warren/cluster").await.body;
    assert_eq!(c["cluster_link"], serde_json::Value::Null, "{c}");
    assert_eq!(c["members"][0]["name"], node.as_str(), "{c}");

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
