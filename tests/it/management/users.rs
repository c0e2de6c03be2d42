//! Virtual hosts, users and permissions, and their surviving a restart.

use super::not_found;
use crate::harness::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use std::time::Duration;

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

/// Deleting a user closes its connections with 320 CONNECTION_FORCED and RabbitMQ's text
/// (checked against RabbitMQ 3.10); other users' connections stay. The bug: they stayed open,
/// the deleted user going on publishing and consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_closes_its_connections() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let put = api
        .put("/api/users/gone", json!({"password": "pw", "tags": ""}))
        .await;
    assert_eq!(put.status, 201);
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(api.put("/api/permissions/%2F/gone", all).await.status, 201);
    let url = format!("amqp://gone:pw@{}/%2f", b.handle.amqp_addr);
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let (_guest, guest_ch) = b.channel().await;
    let mut events = Box::pin(conn.events_listener());
    assert_eq!(api.delete("/api/users/gone").await.status, 204);
    let e = tokio::time::timeout(Duration::from_secs(5), async {
        use futures_util::StreamExt;
        loop {
            if let Some(lapin::Event::Error(e)) = events.next().await {
                return e;
            }
        }
    })
    .await
    .expect("the deleted user's connection is closed");
    assert_eq!(code(&e), Some(320), "{e}");
    assert_eq!(text(&e), "CONNECTION_FORCED - user 'gone' is deleted");
    guest_ch
        .queue_declare(
            "still-here".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("guest's connection stays open");
    not_found(&api.delete("/api/users/gone").await);
}
