//! Resource permissions (configure / write / read patterns) enforced per operation, with the codes
//! and texts RabbitMQ 3.10 gives (checked side by side with pika against a private RabbitMQ node).

use crate::harness::*;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;

/// A broker with user bob: configure `^bob-`, write `^(bob-.*|amq\.default)$`, read `^bob-`; and
/// guest-made `other-q` / `other-x` that bob may not touch.
async fn setup() -> (Broker, Api, Connection) {
    let b = Broker::start().await;
    let api = Api::of(&b);
    assert_eq!(
        api.put("/api/users/bob", json!({"password": "pw", "tags": ""}))
            .await
            .status,
        201
    );
    let perms = json!({"configure": "^bob-", "write": "^(bob-.*|amq\\.default)$", "read": "^bob-"});
    assert_eq!(api.put("/api/permissions/%2f/bob", perms).await.status, 201);
    let (_g, gch) = b.channel().await;
    declare(&gch, "other-q").await;
    gch.exchange_declare(
        "other-x".into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let bob = Connection::connect(
        &format!("amqp://bob:pw@{}/%2f", b.handle.amqp_addr),
        ConnectionProperties::default(),
    )
    .await
    .expect("bob connects");
    (b, api, bob)
}

/// The channel-level refusal an operation met: (code, text).
async fn refused<T>(r: lapin::Result<T>) -> (Option<u16>, String) {
    let e = r.err().expect("refused");
    (code(&e), text(&e))
}

fn denied(kind: &str, name: &str) -> (Option<u16>, String) {
    (
        Some(403),
        format!("ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user 'bob'"),
    )
}

fn with(key: &str, value: &str) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(key.into(), AMQPValue::LongString(value.into()));
    t
}

async fn ch(c: &Connection) -> Channel {
    c.create_channel().await.unwrap()
}

// One-line forms of the operations under test.
async fn qdecl(c: &Channel, name: &str, args: FieldTable) -> lapin::Result<lapin::Queue> {
    c.queue_declare(name.into(), Default::default(), args).await
}
async fn xdecl(c: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    let kind = ExchangeKind::Direct;
    c.exchange_declare(name.into(), kind, Default::default(), args)
        .await
}
async fn qbind(c: &Channel, queue: &str, exchange: &str) -> lapin::Result<()> {
    let none = FieldTable::default();
    c.queue_bind(
        queue.into(),
        exchange.into(),
        "k".into(),
        Default::default(),
        none,
    )
    .await
}
async fn xbind(c: &Channel, dest: &str, source: &str) -> lapin::Result<()> {
    let none = FieldTable::default();
    c.exchange_bind(
        dest.into(),
        source.into(),
        "k".into(),
        Default::default(),
        none,
    )
    .await
}
async fn get(c: &Channel, queue: &str) -> lapin::Result<Option<lapin::message::BasicGetMessage>> {
    c.basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
}
fn none() -> FieldTable {
    FieldTable::default()
}

#[tokio::test]
async fn configure_permission_guards_declare_and_delete() {
    let (_b, _api, bob) = setup().await;
    let c = ch(&bob).await;
    let r = qdecl(&c, "other-q2", none()).await;
    assert_eq!(refused(r).await, denied("queue", "other-q2"));
    let c = ch(&bob).await;
    qdecl(&c, "bob-q", none()).await.expect("own prefix");
    // Passive declares need no permission.
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    c.queue_declare("other-q".into(), passive, none())
        .await
        .expect("passive");
    // A server-named queue is checked under its generated amq.gen- name.
    let (code, text) = refused(qdecl(&c, "", none()).await).await;
    assert_eq!(code, Some(403));
    assert!(
        text.starts_with("ACCESS_REFUSED - access to queue 'amq.gen-"),
        "{text}"
    );
    let c = ch(&bob).await;
    let r = xdecl(&c, "other-x2", none()).await;
    assert_eq!(refused(r).await, denied("exchange", "other-x2"));
    let c = ch(&bob).await;
    xdecl(&c, "bob-x", none()).await.expect("own exchange");
    // An alternate exchange needs write on it; a dead-letter exchange likewise.
    let r = xdecl(&c, "bob-x2", with("alternate-exchange", "other-x")).await;
    assert_eq!(refused(r).await, denied("exchange", "other-x"));
    let c = ch(&bob).await;
    let r = qdecl(&c, "bob-q2", with("x-dead-letter-exchange", "other-x")).await;
    assert_eq!(refused(r).await, denied("exchange", "other-x"));
    let c = ch(&bob).await;
    qdecl(&c, "bob-q3", with("x-dead-letter-exchange", "bob-x"))
        .await
        .expect("own DLX");
    let r = c.queue_delete("other-q".into(), Default::default()).await;
    assert_eq!(refused(r).await, denied("queue", "other-q"));
    // System exchanges and amq.* queue names are refused for their own reason first, as in
    // RabbitMQ.
    let c = ch(&bob).await;
    let r = c
        .exchange_delete("amq.direct".into(), Default::default())
        .await;
    let (code, text) = refused(r).await;
    assert_eq!(code, Some(403));
    assert!(
        text.contains("deletion of system exchange 'amq.direct'"),
        "{text}"
    );
    let c = ch(&bob).await;
    let (code, text) = refused(qdecl(&c, "amq.bob", none()).await).await;
    assert_eq!(code, Some(403));
    assert!(text.contains("contains reserved prefix 'amq.*'"), "{text}");
    let c = ch(&bob).await;
    c.queue_delete("bob-q".into(), Default::default())
        .await
        .expect("own queue");
    // The refusals closed only their channels.
    assert!(bob.status().connected());
}

#[tokio::test]
async fn write_and_read_permissions_guard_bind_publish_and_consume() {
    let (b, _api, bob) = setup().await;
    let c = ch(&bob).await;
    qdecl(&c, "bob-q", none()).await.unwrap();
    xdecl(&c, "bob-x", none()).await.unwrap();
    // queue.bind: write on the queue, read on the exchange.
    let r = qbind(&c, "bob-q", "amq.direct").await;
    assert_eq!(refused(r).await, denied("exchange", "amq.direct"));
    let c = ch(&bob).await;
    qbind(&c, "bob-q", "bob-x")
        .await
        .expect("own queue to own exchange");
    // exchange.bind: write on the destination, read on the source.
    let r = xbind(&c, "bob-x", "amq.direct").await;
    assert_eq!(refused(r).await, denied("exchange", "amq.direct"));
    let c = ch(&bob).await;
    let r = xbind(&c, "amq.fanout", "bob-x").await;
    assert_eq!(refused(r).await, denied("exchange", "amq.fanout"));
    // basic.publish: write on the exchange; the default exchange is checked as amq.default.
    let c = ch(&bob).await;
    c.confirm_select(Default::default()).await.unwrap();
    publish_confirmed(&c, "", "bob-q", BasicProperties::default()).await;
    publish_confirmed(&c, "bob-x", "k", BasicProperties::default()).await;
    let e = publish_refused(&c, "amq.direct", "k", BasicProperties::default()).await;
    assert_eq!((code(&e), text(&e)), denied("exchange", "amq.direct"));
    // basic.get / basic.consume / queue.purge: read on the queue.
    let c = ch(&bob).await;
    assert!(
        get(&c, "bob-q").await.unwrap().is_some(),
        "bob reads its own queue"
    );
    assert_eq!(
        refused(get(&c, "other-q").await).await,
        denied("queue", "other-q")
    );
    let c = ch(&bob).await;
    let r = c
        .basic_consume("other-q".into(), "".into(), Default::default(), none())
        .await;
    assert_eq!(refused(r).await, denied("queue", "other-q"));
    let c = ch(&bob).await;
    let r = c.queue_purge("other-q".into(), Default::default()).await;
    assert_eq!(refused(r).await, denied("queue", "other-q"));
    // Nothing reached guest's queue, and guest (full permissions) is unaffected.
    let (_g, gch) = b.channel().await;
    assert_eq!(passive(&gch, "other-q").await.unwrap().message_count(), 0);
    publish(&gch, "amq.direct", "k", b"guest").await;
    assert!(bob.status().connected());
}

#[tokio::test]
async fn permission_changes_reach_open_connections() {
    let (_b, api, bob) = setup().await;
    let c = ch(&bob).await;
    qdecl(&c, "bob-q", none()).await.unwrap();
    let perms = json!({"configure": "^bob-", "write": "^bob-", "read": "^$"});
    assert_eq!(api.put("/api/permissions/%2f/bob", perms).await.status, 204);
    assert_eq!(
        refused(get(&c, "bob-q").await).await,
        denied("queue", "bob-q")
    );
    assert_eq!(api.delete("/api/permissions/%2f/bob").await.status, 204);
    let c = ch(&bob).await;
    let r = qdecl(&c, "bob-q9", none()).await;
    assert_eq!(refused(r).await, denied("queue", "bob-q9"));
}
