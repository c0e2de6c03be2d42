//! Vhost limits (`max-connections`, `max-queues`) and user limits (`max-connections`,
//! `max-channels`): the API's paths, bodies and refusals, and their enforcement with the codes
//! and texts RabbitMQ 3.10.8 gives (each checked side by side with pika against a private
//! RabbitMQ node), including limits lowered while clients are connected.

use crate::harness::*;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use std::time::Duration;

async fn connect_as(b: &Broker, user: &str, pass: &str) -> lapin::Result<Connection> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(
            &format!("amqp://{user}:{pass}@{}/%2f", b.handle.amqp_addr),
            ConnectionProperties::default(),
        ),
    )
    .await
    .expect("answered in time")
}

/// The (code, text) a refused connection.open or a closed connection carries.
fn refusal(e: &lapin::Error) -> (Option<u16>, String) {
    (code(e), text(e))
}

/// A user `lim` (password `lim`) with full permissions on `/`.
async fn user_lim(api: &Api) {
    let r = api
        .put("/api/users/lim", json!({"password": "lim", "tags": ""}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(api.put("/api/permissions/%2F/lim", all).await.status, 201);
}

async fn set(api: &Api, path: &str, value: i64) {
    let r = api.put(path, json!({ "value": value })).await;
    assert_eq!(r.status, 204, "PUT {path}: {}", r.text);
}

/// A vhost's max-connections refuses connection.open over it with 530 and RabbitMQ's text;
/// lowered while a client is connected, it leaves that connection working and refuses the
/// next; 0 allows none, a negative value or a cleared limit any number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_max_connections() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    set(&api, "/api/vhost-limits/%2F/max-connections", 1).await;
    let first = b.connect().await;
    let e = connect_as(&b, "guest", "guest").await.unwrap_err();
    assert_eq!(
        refusal(&e),
        (
            Some(530),
            "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (1) \
             is reached"
                .into()
        )
    );
    set(&api, "/api/vhost-limits/%2F/max-connections", 0).await;
    let ch = first
        .create_channel()
        .await
        .expect("the open connection goes on");
    declare(&ch, "still-works").await;
    let e = connect_as(&b, "guest", "guest").await.unwrap_err();
    assert!(text(&e).contains("connection limit (0) is reached"), "{e}");
    // Another vhost is not limited by this one's limit.
    api.put("/api/vhosts/other", json!({})).await;
    let other = format!("amqp://guest:guest@{}/other", b.handle.amqp_addr);
    Connection::connect(&other, ConnectionProperties::default())
        .await
        .expect("other vhost");
    set(&api, "/api/vhost-limits/%2F/max-connections", -1).await;
    let _second = b.connect().await;
    // A closed connection gives its place back.
    set(&api, "/api/vhost-limits/%2F/max-connections", 2).await;
    connect_as(&b, "guest", "guest").await.unwrap_err();
    first.close(200, "bye".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _third = b.connect().await;
    let r = api.delete("/api/vhost-limits/%2F/max-connections").await;
    assert_eq!(r.status, 204);
    let _fourth = b.connect().await;
}

/// A user's max-connections counts its connections to every vhost; max-channels its channels
/// over all its connections, refused at channel.open with 530 NOT_ALLOWED closing the
/// connection. Lowered while channels are open, they stay usable and the next open is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_max_connections_and_channels() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    user_lim(&api).await;
    set(&api, "/api/user-limits/lim/max-connections", 1).await;
    let c1 = connect_as(&b, "lim", "lim").await.unwrap();
    let e = connect_as(&b, "lim", "lim").await.unwrap_err();
    assert_eq!(
        refusal(&e),
        (
            Some(530),
            "NOT_ALLOWED - connection refused for user 'lim': user connection limit (1) is \
             reached"
                .into()
        )
    );
    let _guest = b.connect().await; // other users are not counted
    set(&api, "/api/user-limits/lim/max-connections", 2).await;
    let c2 = connect_as(&b, "lim", "lim").await.unwrap();

    set(&api, "/api/user-limits/lim/max-channels", 2).await;
    let a = c1.create_channel().await.unwrap();
    let closed = c2.create_channel().await.unwrap();
    let e = c2.create_channel().await.unwrap_err();
    assert_eq!(
        refusal(&e),
        (
            Some(530),
            "NOT_ALLOWED - number of channels opened for user 'lim' has reached the maximum \
             allowed user limit of (2)"
                .into()
        )
    );
    assert!(!c2.status().connected(), "the connection is closed");
    drop(closed);
    // c2's channel went with c2: its place is free again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b2 = c1.create_channel().await.expect("a freed place");
    set(&api, "/api/user-limits/lim/max-channels", 0).await;
    declare(&a, "a-still-works").await;
    declare(&b2, "b-still-works").await;
    let e = c1.create_channel().await.unwrap_err();
    assert!(
        text(&e).contains("maximum allowed user limit of (0)"),
        "{e}"
    );
    // Cleared: any number.
    assert_eq!(
        api.delete("/api/user-limits/lim/max-channels").await.status,
        204
    );
    let c3 = connect_as(&b, "lim", "lim").await.unwrap();
    for _ in 0..5 {
        c3.create_channel().await.unwrap();
    }
}

/// A vhost's max-queues refuses the declare of a new queue with 406 PRECONDITION_FAILED and
/// RabbitMQ's text, naming a server-named or exclusive queue by its generated name; redeclares
/// and passive declares of existing queues are not refused; the API's PUT answers 400 with the
/// same text; a deleted queue frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_max_queues() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let c = b.connect().await;
    let ch = c.create_channel().await.unwrap();
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    set(&api, "/api/vhost-limits/%2F/max-queues", 2).await;
    declare(&ch, "q1").await;
    passive(&ch, "q2").await.unwrap();
    let decl = |name: &'static str, exclusive: bool| {
        let c = &c;
        async move {
            let ch = c.create_channel().await.unwrap();
            let opts = QueueDeclareOptions {
                exclusive,
                ..Default::default()
            };
            ch.queue_declare(name.into(), opts, FieldTable::default())
                .await
                .unwrap_err()
        }
    };
    let e = decl("q3", false).await;
    assert_eq!(
        refusal(&e),
        (
            Some(406),
            "PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost '/' (2) is \
             reached"
                .into()
        )
    );
    for exclusive in [false, true] {
        let e = decl("", exclusive).await;
        let t = text(&e);
        assert!(
            t.starts_with("PRECONDITION_FAILED - cannot declare queue 'amq.gen-")
                && t.ends_with("': queue limit in vhost '/' (2) is reached"),
            "{t}"
        );
    }
    let r = api
        .put("/api/queues/%2F/q4", json!({"durable": true}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body["reason"],
        "cannot declare queue 'q4': queue limit in vhost '/' (2) is reached"
    );
    assert_eq!(api.get("/api/queues/%2F/q4").await.status, 404);
    let ch = c.create_channel().await.unwrap();
    ch.queue_delete("q1".into(), Default::default())
        .await
        .unwrap();
    declare(&ch, "q3").await;
    set(&api, "/api/vhost-limits/%2F/max-queues", 0).await;
    let e = decl("q5", false).await;
    assert!(
        text(&e).contains("queue limit in vhost '/' (0) is reached"),
        "{e}"
    );
    // Another vhost is not limited.
    api.put("/api/vhosts/free", json!({})).await;
    assert_eq!(api.put("/api/queues/free/q", json!({})).await.status, 201);
}

/// The API's answers to bad limits, as RabbitMQ's: values that are not integers, unknown
/// names, a missing value, unknown vhosts and users; non-administrators are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_limits_are_refused_as_rabbitmq_refuses_them() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    user_lim(&api).await;
    let bad = |r: Resp| {
        assert_eq!(r.status, 400, "{}", r.text);
        r.body["reason"].clone()
    };
    let v = "/api/vhost-limits/%2F";
    assert_eq!(
        bad(api
            .put(&format!("{v}/max-queues"), json!({"value": "x"}))
            .await),
        "Validation failed\n\nmax-queues should be a number, actually was <<\"x\">>\n"
    );
    assert_eq!(
        bad(api
            .put(&format!("{v}/max-queues"), json!({"value": 1.5}))
            .await),
        "Validation failed\n\nmax-queues should be a number, actually was 1.5\n"
    );
    assert_eq!(
        bad(api.put(&format!("{v}/max-foo"), json!({"value": 3})).await),
        "Validation failed\n\nUnrecognised terms [{<<\"max-foo\">>,3}] in limits\n"
    );
    assert_eq!(
        bad(api.put(&format!("{v}/max-queues"), json!({"val": 3})).await),
        "[{key_missing,value}]"
    );
    let r = api
        .raw("PUT", &format!("{v}/max-queues"), "{not json")
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .put("/api/vhost-limits/nope/max-queues", json!({"value": 3}))
        .await;
    assert_eq!(
        (r.status, r.body.clone()),
        (
            404,
            json!({"error": "not_found", "reason": "vhost_not_found"})
        )
    );
    assert_eq!(api.get("/api/vhost-limits/nope").await.status, 404);
    assert_eq!(
        api.delete("/api/vhost-limits/nope/max-queues").await.status,
        404
    );
    let u = "/api/user-limits/lim";
    assert_eq!(
        bad(api
            .put(&format!("{u}/max-queues"), json!({"value": 2}))
            .await),
        "Unrecognised terms [{<<\"max-queues\">>,2}] in user-limits"
    );
    assert_eq!(
        bad(api
            .put(&format!("{u}/max-channels"), json!({"value": "x"}))
            .await),
        "max-channels should be a number, actually was <<\"x\">>"
    );
    assert_eq!(
        bad(api
            .put("/api/user-limits/nobody/max-channels", json!({"value": 2}))
            .await),
        json!(["no_such_user", "nobody"])
    );
    assert_eq!(api.get("/api/user-limits/nobody").await.status, 404);
    // Nothing of the refused changes was kept.
    assert_eq!(api.get("/api/vhost-limits").await.body, json!([]));
    assert_eq!(api.get("/api/user-limits").await.body, json!([]));
    // A management user that is not an administrator may not change limits.
    api.put(
        "/api/users/mgr",
        json!({"password": "pw", "tags": "management"}),
    )
    .await;
    let r = request(
        "PUT",
        format!("{}{u}/max-channels", api.base),
        Some(("mgr", "pw")),
        Some(json!({"value": 1}).to_string()),
        &[],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
}

/// Limits are listed and shown as RabbitMQ shows them (rows of {vhost|user, value}, the user
/// object's `limits`), kept by a PUT of the user or vhost, and survive a restart still enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_shown_and_survive_a_restart() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    user_lim(&api).await;
    set(&api, "/api/vhost-limits/%2F/max-connections", 5).await;
    set(&api, "/api/vhost-limits/%2F/max-queues", 0).await;
    set(&api, "/api/user-limits/lim/max-channels", 2).await;
    set(&api, "/api/user-limits/lim/max-connections", 1).await;
    let vrow = json!([{"vhost": "/", "value": {"max-connections": 5, "max-queues": 0}}]);
    let urow = json!([{"user": "lim", "value": {"max-channels": 2, "max-connections": 1}}]);
    assert_eq!(api.get("/api/vhost-limits").await.body, vrow);
    assert_eq!(api.get("/api/vhost-limits/%2F").await.body, vrow);
    assert_eq!(api.get("/api/user-limits").await.body, urow);
    assert_eq!(api.get("/api/user-limits/lim").await.body, urow);
    assert_eq!(api.get("/api/user-limits/guest").await.body, json!([]));
    assert_eq!(
        api.get("/api/users/lim").await.body["limits"],
        json!({"max-channels": 2, "max-connections": 1})
    );
    assert_eq!(api.get("/api/users/guest").await.body["limits"], json!({}));
    // RabbitMQ lists vhost limits among the runtime parameters too.
    let param = json!([{"value": {"max-connections": 5, "max-queues": 0}, "vhost": "/",
                        "component": "vhost-limits", "name": "limits"}]);
    assert_eq!(api.get("/api/parameters").await.body, param);
    assert_eq!(api.get("/api/parameters/vhost-limits").await.body, param);
    assert_eq!(
        api.get("/api/parameters/vhost-limits/%2F").await.body,
        param
    );
    assert_eq!(
        api.get("/api/parameters/federation-upstream").await.body,
        json!([])
    );
    assert_eq!(
        api.get("/api/parameters/vhost-limits/nope").await.status,
        404
    );
    // A PUT of the user (a new password) or of the vhost keeps their limits.
    api.put("/api/users/lim", json!({"password": "lim2"})).await;
    api.put("/api/vhosts/%2F", json!({"description": "d"}))
        .await;
    assert_eq!(api.get("/api/user-limits/lim").await.body, urow);
    assert_eq!(api.get("/api/vhost-limits/%2F").await.body, vrow);

    let b = b.restart().await;
    let api = Api::of(&b);
    assert_eq!(api.get("/api/vhost-limits").await.body, vrow);
    assert_eq!(api.get("/api/user-limits").await.body, urow);
    let c = connect_as(&b, "lim", "lim2").await.unwrap();
    connect_as(&b, "lim", "lim2").await.unwrap_err();
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare("q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap_err();
    assert!(text(&e).contains("queue limit in vhost '/' (0)"), "{e}");
}

/// Definitions export user limits in the user objects and vhost limits as `vhost-limits`
/// parameters (RabbitMQ's places), and an import of that export restores and enforces them;
/// a vhost's own export carries its limits too; bad limits in an import are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_round_trip_through_definitions() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    user_lim(&api).await;
    set(&api, "/api/vhost-limits/%2F/max-queues", 3).await;
    set(&api, "/api/user-limits/lim/max-connections", 0).await;
    let defs = api.get("/api/definitions").await.body;
    let lim = defs["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "lim")
        .unwrap();
    assert_eq!(lim["limits"], json!({"max-connections": 0}));
    assert_eq!(
        defs["parameters"],
        json!([{"value": {"max-queues": 3}, "vhost": "/", "component": "vhost-limits", "name": "limits"}])
    );
    let own = api.get("/api/definitions/%2F").await.body;
    assert_eq!(
        own["parameters"],
        json!([{"value": {"max-queues": 3}, "component": "vhost-limits", "name": "limits"}])
    );

    let fresh = Broker::start().await;
    let fapi = Api::of(&fresh);
    let r = fapi.post("/api/definitions", defs).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(
        fapi.get("/api/vhost-limits/%2F").await.body,
        json!([{"vhost": "/", "value": {"max-queues": 3}}])
    );
    let e = connect_as(&fresh, "lim", "lim").await.unwrap_err();
    assert!(text(&e).contains("user connection limit (0)"), "{e}");

    let bad = json!({
        "users": [{"name": "x", "password": "p", "tags": "", "limits": {"max-queues": 1}}],
        "parameters": [{"value": {"max-connections": "many"}, "vhost": "/",
                        "component": "vhost-limits", "name": "limits"}],
    });
    let r = fapi.post("/api/definitions", bad).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let reason = r.body["reason"].as_str().unwrap();
    assert!(
        reason.contains("Unrecognised terms [{<<\"max-queues\">>,1}]"),
        "{reason}"
    );
    assert!(
        reason.contains("max-connections should be a number"),
        "{reason}"
    );
    assert_eq!(
        fapi.get("/api/vhost-limits/%2F").await.body,
        json!([{"vhost": "/", "value": {"max-queues": 3}}]),
        "a refused limit changes nothing"
    );
}
