//! Topic permissions: per user, vhost and topic exchange, a write pattern for routing keys
//! published to the exchange and a read pattern for binding keys bound from it, with
//! `{username}` and `{vhost}` expanded. Codes, texts and API answers as RabbitMQ 3.10.8 gives
//! them (each checked side by side with pika against a private RabbitMQ node), including that
//! over AMQP 0-9-1 `{client_id}` is never expanded, whatever client properties say.

use crate::harness::*;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;

/// User `lim` (password `lim`) with full resource permissions on `/` and, on `amq.topic`,
/// write `^{username}\.` and read `^{vhost}-{client_id}`.
async fn setup() -> (Broker, Api) {
    let b = Broker::start().await;
    let api = Api::of(&b);
    api.put("/api/users/lim", json!({"password": "lim", "tags": ""}))
        .await;
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    api.put("/api/permissions/%2F/lim", all).await;
    let r = api
        .put(
            "/api/topic-permissions/%2F/lim",
            json!({"exchange": "amq.topic", "write": "^{username}\\.", "read": "^{vhost}-{client_id}"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    (b, api)
}

async fn lim(b: &Broker, client_id: Option<&str>) -> Connection {
    let mut props = ConnectionProperties::default();
    if let Some(id) = client_id {
        props = props.with_client_property("client_id".into(), id.into());
    }
    Connection::connect(&format!("amqp://lim:lim@{}/%2f", b.handle.amqp_addr), props)
        .await
        .expect("lim connects")
}

async fn confirming(c: &Connection) -> Channel {
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch
}

fn refused_topic(key: &str, exchange: &str) -> (Option<u16>, String) {
    (
        Some(403),
        format!(
            "ACCESS_REFUSED - access to topic '{key}' in exchange '{exchange}' in vhost '/' \
             refused for user 'lim'"
        ),
    )
}

async fn bind(c: &Connection, exchange: &str, key: &str) -> lapin::Result<()> {
    let ch = c.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        exchange.into(),
        key.into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
}

/// A publish to a topic exchange is checked against the write pattern with `{username}`
/// expanded; refused, it closes the channel with 403 and RabbitMQ's text. Exchanges that are
/// not topic exchanges, or that have no topic permission, are not checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_checked_against_the_write_pattern() {
    let (b, api) = setup().await;
    let c = lim(&b, None).await;
    let ch = confirming(&c).await;
    publish_confirmed(&ch, "amq.topic", "lim.a", BasicProperties::default()).await;
    let e = publish_refused(&ch, "amq.topic", "other.a", BasicProperties::default()).await;
    assert_eq!((code(&e), text(&e)), refused_topic("other.a", "amq.topic"));
    // A topic exchange without a topic permission: anything goes.
    let ch = confirming(&c).await;
    ch.exchange_declare(
        "t2".into(),
        ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_confirmed(&ch, "t2", "other.a", BasicProperties::default()).await;
    // A direct exchange with a topic permission is not checked (as RabbitMQ).
    api.put(
        "/api/topic-permissions/%2F/lim",
        json!({"exchange": "amq.direct", "write": "^nothing$", "read": "^nothing$"}),
    )
    .await;
    publish_confirmed(&ch, "amq.direct", "other", BasicProperties::default()).await;
    bind(&c, "amq.direct", "other").await.expect("direct bind");
    // The default exchange neither.
    publish_confirmed(&ch, "", "other", BasicProperties::default()).await;
}

/// queue.bind, queue.unbind, exchange.bind and exchange.unbind from a topic exchange are
/// checked against the read pattern with `{vhost}` expanded; `{client_id}` stays literal over
/// AMQP 0-9-1 even when the client announces a client_id (RabbitMQ: a client_id of "abc" does
/// not make `^/-{client_id}` allow "/-abc", and "/-{client_id}" itself is allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_are_checked_against_the_read_pattern() {
    let (b, _api) = setup().await;
    let c = lim(&b, Some("abc")).await;
    bind(&c, "amq.topic", "/-{client_id}.x")
        .await
        .expect("literal {client_id}");
    let e = bind(&c, "amq.topic", "/-abc.x").await.unwrap_err();
    assert_eq!((code(&e), text(&e)), refused_topic("/-abc.x", "amq.topic"));
    let e = bind(&c, "amq.topic", "other").await.unwrap_err();
    assert_eq!((code(&e), text(&e)), refused_topic("other", "amq.topic"));

    let ch = c.create_channel().await.unwrap();
    let q = declare(&ch, "").await;
    let e = ch
        .queue_unbind(
            q.name().clone(),
            "amq.topic".into(),
            "other".into(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!((code(&e), text(&e)), refused_topic("other", "amq.topic"));

    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        "dest".into(),
        ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let e2e = |key: &'static str, unbind: bool| {
        let c = &c;
        async move {
            let ch = c.create_channel().await.unwrap();
            if unbind {
                ch.exchange_unbind(
                    "dest".into(),
                    "amq.topic".into(),
                    key.into(),
                    Default::default(),
                    FieldTable::default(),
                )
                .await
            } else {
                ch.exchange_bind(
                    "dest".into(),
                    "amq.topic".into(),
                    key.into(),
                    Default::default(),
                    FieldTable::default(),
                )
                .await
            }
        }
    };
    let e = e2e("other", false).await.unwrap_err();
    assert_eq!((code(&e), text(&e)), refused_topic("other", "amq.topic"));
    e2e("/-{client_id}", false).await.expect("allowed e2e bind");
    let e = e2e("other", true).await.unwrap_err();
    assert_eq!((code(&e), text(&e)), refused_topic("other", "amq.topic"));
    // Binds from an exchange without a topic permission are not checked.
    bind(&c, "dest", "other")
        .await
        .expect("no topic permission");
}

/// A topic permission set, changed or removed while a client is connected applies to its next
/// publish; other users are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_apply_to_open_connections() {
    let (b, api) = setup().await;
    let c = lim(&b, None).await;
    let ch = confirming(&c).await;
    publish_confirmed(&ch, "amq.topic", "lim.a", BasicProperties::default()).await;
    api.put(
        "/api/topic-permissions/%2F/lim",
        json!({"exchange": "amq.topic", "write": "^b\\.", "read": ".*"}),
    )
    .await;
    let e = publish_refused(&ch, "amq.topic", "lim.a", BasicProperties::default()).await;
    assert_eq!((code(&e), text(&e)), refused_topic("lim.a", "amq.topic"));
    let (_g, guest) = b.channel().await;
    guest.confirm_select(Default::default()).await.unwrap();
    publish_confirmed(&guest, "amq.topic", "lim.a", BasicProperties::default()).await;
    assert_eq!(
        api.delete("/api/topic-permissions/%2F/lim").await.status,
        204
    );
    let ch = confirming(&c).await;
    publish_confirmed(&ch, "amq.topic", "lim.a", BasicProperties::default()).await;
}

/// The API's paths and answers: the listings (all, per user, per vhost, per user and vhost),
/// 201 for a user's first topic permission in a vhost and 204 after, RabbitMQ's refusals of
/// missing fields, unknown users or vhosts and bad patterns, 404s, and deletion (all, or one
/// exchange's with Warren's `?exchange=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_rabbitmq() {
    let (b, api) = setup().await;
    let direct = json!({"exchange": "amq.direct", "write": "^x", "read": ".*"});
    let r = api.put("/api/topic-permissions/%2F/lim", direct).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let topic = json!({"user": "lim", "vhost": "/", "exchange": "amq.topic",
                       "write": "^{username}\\.", "read": "^{vhost}-{client_id}"});
    let direct = json!({"user": "lim", "vhost": "/", "exchange": "amq.direct",
                        "write": "^x", "read": ".*"});
    let both = json!([direct, topic]);
    assert_eq!(api.get("/api/topic-permissions").await.body, both);
    assert_eq!(api.get("/api/topic-permissions/%2F/lim").await.body, both);
    assert_eq!(api.get("/api/users/lim/topic-permissions").await.body, both);
    assert_eq!(
        api.get("/api/vhosts/%2F/topic-permissions").await.body,
        both
    );
    assert_eq!(
        api.get("/api/users/guest/topic-permissions").await.body,
        json!([])
    );
    for p in [
        "/api/topic-permissions/%2F/guest",
        "/api/topic-permissions/nope/lim",
        "/api/users/nobody/topic-permissions",
        "/api/vhosts/nope/topic-permissions",
    ] {
        assert_eq!(api.get(p).await.status, 404, "{p}");
    }
    let put = |path: &'static str, body: serde_json::Value| {
        let api = &api;
        async move {
            let r = api.put(path, body).await;
            (r.status, r.body["reason"].clone())
        }
    };
    assert_eq!(
        put(
            "/api/topic-permissions/%2F/lim",
            json!({"write": "a", "read": "b"})
        )
        .await,
        (400, json!("[{key_missing,exchange}]"))
    );
    assert_eq!(
        put(
            "/api/topic-permissions/%2F/lim",
            json!({"exchange": "amq.topic", "read": "b"})
        )
        .await,
        (400, json!("[{key_missing,write}]"))
    );
    let x = json!({"exchange": "amq.topic", "write": "a", "read": ".*"});
    assert_eq!(
        put("/api/topic-permissions/%2F/nobody", x.clone()).await,
        (400, json!("vhost_or_user_not_found"))
    );
    assert_eq!(
        put("/api/topic-permissions/nope/lim", x).await,
        (400, json!("vhost_or_user_not_found"))
    );
    let (status, reason) = put(
        "/api/topic-permissions/%2F/lim",
        json!({"exchange": "amq.topic", "write": "(", "read": ".*"}),
    )
    .await;
    assert_eq!(
        (status, &reason[0], &reason[1]),
        (400, &json!("invalid_regexp"), &json!("("))
    );
    assert_eq!(
        api.get("/api/topic-permissions/%2F/lim").await.body,
        both,
        "refused changes change nothing"
    );
    // One exchange's, then all.
    let r = api
        .delete("/api/topic-permissions/%2F/lim?exchange=amq.direct")
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        api.get("/api/topic-permissions/%2F/lim").await.body,
        json!([topic])
    );
    assert_eq!(
        api.delete("/api/topic-permissions/%2F/lim").await.status,
        204
    );
    assert_eq!(
        api.delete("/api/topic-permissions/%2F/lim").await.status,
        404
    );
    assert_eq!(api.get("/api/topic-permissions").await.body, json!([]));
    drop(b);
}

/// Topic permissions survive a restart (still enforced), travel in definitions' export and
/// import as RabbitMQ's `topic_permissions`, and leave with their user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_permissions_persist_and_round_trip() {
    let (b, _) = setup().await;
    let b = b.restart().await;
    let api = Api::of(&b);
    let c = lim(&b, None).await;
    let ch = confirming(&c).await;
    let e = publish_refused(&ch, "amq.topic", "other.a", BasicProperties::default()).await;
    assert_eq!((code(&e), text(&e)), refused_topic("other.a", "amq.topic"));

    let defs = api.get("/api/definitions").await.body;
    let rows = json!([{"user": "lim", "vhost": "/", "exchange": "amq.topic",
                       "write": "^{username}\\.", "read": "^{vhost}-{client_id}"}]);
    assert_eq!(defs["topic_permissions"], rows);
    let fresh = Broker::start().await;
    let fapi = Api::of(&fresh);
    let r = fapi.post("/api/definitions", defs).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(fapi.get("/api/topic-permissions").await.body, rows);
    let c = lim(&fresh, None).await;
    let ch = confirming(&c).await;
    publish_refused(&ch, "amq.topic", "other.a", BasicProperties::default()).await;

    assert_eq!(fapi.delete("/api/users/lim").await.status, 204);
    assert_eq!(fapi.get("/api/topic-permissions").await.body, json!([]));
    let fresh = fresh.restart().await;
    let fapi = Api::of(&fresh);
    assert_eq!(fapi.get("/api/topic-permissions").await.body, json!([]));
}

/// The management API's publish and binding creation are checked as AMQP's are, answered as
/// RabbitMQ answers them: a refused publish is a 400 carrying the AMQP refusal, a refused
/// binding a 401 "Access refused.".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apis_publish_and_bind_are_checked_too() {
    let (_b, api) = setup().await;
    api.put(
        "/api/users/lim",
        json!({"password": "lim", "tags": "management"}),
    )
    .await;
    api.put("/api/queues/%2F/tq", json!({})).await;
    let as_lim = |method: &'static str, path: &'static str, body: serde_json::Value| {
        let base = api.base.clone();
        async move {
            request(
                method,
                format!("{base}{path}"),
                Some(("lim", "lim")),
                Some(body.to_string()),
                &[],
            )
            .await
        }
    };
    let msg = |key: &str| json!({"routing_key": key, "payload": "x", "payload_encoding": "string", "properties": {}});
    let r = as_lim("POST", "/api/exchanges/%2F/amq.topic/publish", msg("other")).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (
            400,
            json!({"error": "bad_request", "reason": "403 ACCESS_REFUSED - access to topic \
                   'other' in exchange 'amq.topic' in vhost '/' refused for user 'lim'"})
        )
    );
    let r = as_lim("POST", "/api/exchanges/%2F/amq.topic/publish", msg("lim.x")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = as_lim(
        "POST",
        "/api/bindings/%2F/e/amq.topic/q/tq",
        json!({"routing_key": "b"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body.clone()),
        (
            401,
            json!({"error": "not_authorised", "reason": "Access refused."})
        )
    );
    let r = as_lim(
        "POST",
        "/api/bindings/%2F/e/amq.topic/q/tq",
        json!({"routing_key": "/-{client_id}"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = as_lim(
        "POST",
        "/api/bindings/%2F/e/amq.direct/q/tq",
        json!({"routing_key": "b"}),
    )
    .await;
    assert_eq!(r.status, 201, "not a topic exchange: {}", r.text);
}
