//! Connections, channels and consumers as the API reports them, and closing connections.

use super::not_found;
use crate::harness::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use std::time::Duration;

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
