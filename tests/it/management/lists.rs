//! Listings: pagination, sorting, name filters and column selection (on queues and exchanges).

use crate::harness::*;
use serde_json::json;

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
