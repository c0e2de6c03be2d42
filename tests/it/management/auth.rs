//! Authentication and scoping: who may use the API (credentials, management tags, guest only
//! from loopback), and what non-administrators may see and change.

use super::eventually_for;
use crate::harness::*;
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::time::Duration;

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
