//! Changes of users, vhosts and permissions that the store refuses (a failing disk, simulated
//! with `Store::inject_definition_write_failure`): the management API answers them as RabbitMQ
//! answers an internal error, memory keeps what the store has, and a restart of the real binary
//! brings back exactly what the API reported.

use crate::child::{spawn, Proc};
use crate::harness::*;
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::time::Duration;

/// RabbitMQ's answer to a change it could not make: 500 {"error":"internal_server_error",
/// "reason": …}; ours names what was refused and why.
fn internal_error(r: &Resp, names: &str) {
    assert_eq!(r.status, 500, "{}", r.text);
    assert_eq!(r.body["error"], "internal_server_error", "{}", r.text);
    let reason = r.body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(names), "reason names {names}: {}", r.text);
    assert!(reason.contains("injected"), "reason says why: {}", r.text);
    assert_eq!(r.body.as_object().map(|o| o.len()), Some(2), "{}", r.text);
}

fn status(r: &Resp, want: u16) {
    assert_eq!(r.status, want, "{}", r.text);
}

/// Log in over AMQP as `user`:`pass` to `vhost`: Ok, or the reply code of the refusal.
async fn login(amqp: &str, user: &str, pass: &str, vhost: &str) -> Result<Connection, u16> {
    let url = format!("amqp://{user}:{pass}@{amqp}/{}", vhost.replace('/', "%2f"));
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .expect("login answered in time");
    r.map_err(|e| code(&e).unwrap_or(0))
}

/// An in-process broker on `dir` (handed back whole: the tests shut it down and start the real
/// binary on the same directory), and its management API.
async fn start_on(dir: &std::path::Path) -> (warren::ServerHandle, Api) {
    let h = warren::Server::start(warren::config::Config {
        amqp_listen: "127.0.0.1:0".into(),
        http_listen: "127.0.0.1:0".into(),
        prometheus_listen: String::new(),
        data_dir: dir.to_owned(),
        ..Default::default()
    })
    .await
    .expect("broker starts");
    let api = Api {
        base: format!("http://{}", h.http_addr),
    };
    (h, api)
}

/// Start the real binary on `dir` once the in-process broker's tasks have let go of it.
async fn spawn_when_free(dir: &std::path::Path) -> Proc {
    let mut last = String::new();
    for _ in 0..100 {
        match spawn(dir) {
            Ok(p) => return p,
            Err(log) if log.contains("in use by another running broker") => {
                last = log;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(log) => panic!("broker did not start:\n{log}"),
        }
    }
    panic!("data directory never released:\n{last}");
}

/// The bug: a store write that failed was only logged; the API answered 201/204 and memory
/// changed, so a refused user could log in until the next restart and a deleted user came back
/// after it. Now each refused change answers 500 in RabbitMQ's shape and changes nothing, and
/// after a restart the state is exactly what the API reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_changes_answer_500_change_nothing_and_stay_undone_after_a_restart() {
    let dir = temp_data_dir();
    let (h, api) = start_on(&dir).await;
    let amqp = h.amqp_addr.to_string();
    let store = h.state.store.clone().expect("a store");

    // Before the disk fails: alice may use / and kept-v; bob and carol exist.
    for u in ["alice", "bob", "carol"] {
        status(
            &api.put(&format!("/api/users/{u}"), json!({"password": "pw"}))
                .await,
            201,
        );
    }
    status(&api.put("/api/vhosts/kept-v", json!({})).await, 201);
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    status(
        &api.put("/api/permissions/%2F/alice", all.clone()).await,
        201,
    );
    status(
        &api.put("/api/permissions/kept-v/alice", all.clone()).await,
        201,
    );
    status(
        &api.put("/api/permissions/%2F/carol", all.clone()).await,
        201,
    );
    // alice stays connected to kept-v while its deletion is refused.
    let alice_in_kept = login(&amqp, "alice", "pw", "kept-v")
        .await
        .expect("alice in kept-v");

    store.inject_definition_write_failure(true);

    // A new user: 500, absent, cannot log in.
    let r = api.put("/api/users/dave", json!({"password": "pw"})).await;
    internal_error(&r, "user 'dave'");
    status(&api.get("/api/users/dave").await, 404);
    assert_eq!(login(&amqp, "dave", "pw", "/").await.err(), Some(403));
    // A changed password: 500, the old one still works.
    let r = api
        .put("/api/users/alice", json!({"password": "new"}))
        .await;
    internal_error(&r, "user 'alice'");
    assert_eq!(login(&amqp, "alice", "new", "/").await.err(), Some(403));
    // A deleted user: 500, still there and logging in, permissions kept.
    internal_error(&api.delete("/api/users/alice").await, "user 'alice'");
    status(&api.get("/api/users/alice").await, 200);
    login(&amqp, "alice", "pw", "/")
        .await
        .expect("alice still logs in");
    status(&api.get("/api/permissions/kept-v/alice").await, 200);

    // A new vhost: 500, absent, cannot be opened.
    internal_error(
        &api.put("/api/vhosts/new-v", json!({})).await,
        "vhost 'new-v'",
    );
    status(&api.get("/api/vhosts/new-v").await, 404);
    status(&api.get("/api/permissions/new-v/guest").await, 404);
    assert_eq!(
        login(&amqp, "guest", "guest", "new-v").await.err(),
        Some(530)
    );
    // A deleted vhost: 500, still there, its connections left open, its permissions kept.
    internal_error(&api.delete("/api/vhosts/kept-v").await, "vhost 'kept-v'");
    status(&api.get("/api/vhosts/kept-v").await, 200);
    status(&api.get("/api/permissions/kept-v/alice").await, 200);
    alice_in_kept
        .create_channel()
        .await
        .expect("its connection still works");
    login(&amqp, "alice", "pw", "kept-v")
        .await
        .expect("kept-v opens");

    // A new permission: 500, absent, the vhost stays closed to bob.
    let r = api.put("/api/permissions/%2F/bob", all.clone()).await;
    internal_error(&r, "permission of user 'bob' on vhost '/'");
    status(&api.get("/api/permissions/%2F/bob").await, 404);
    assert_eq!(login(&amqp, "bob", "pw", "/").await.err(), Some(530));
    // A deleted permission: 500, still there and granting.
    let r = api.delete("/api/permissions/%2F/carol").await;
    internal_error(&r, "permission of user 'carol' on vhost '/'");
    status(&api.get("/api/permissions/%2F/carol").await, 200);
    login(&amqp, "carol", "pw", "/")
        .await
        .expect("carol still may");

    // A definitions import stops at the refused write with a 500.
    let defs = json!({"users": [{"name": "erin", "password": "pw", "tags": ""}]});
    internal_error(&api.post("/api/definitions", defs).await, "user 'erin'");
    status(&api.get("/api/users/erin").await, 404);

    // The disk is back: changes are kept again (and reported as before).
    store.inject_definition_write_failure(false);
    status(&api.delete("/api/users/carol").await, 204);
    status(
        &api.put("/api/users/frank", json!({"password": "pw"})).await,
        201,
    );
    assert_eq!(login(&amqp, "carol", "pw", "/").await.err(), Some(403));

    drop(alice_in_kept);
    drop(store);
    h.shutdown().await;

    // The real binary on the same data directory: what the API reported, nothing else.
    let p = spawn_when_free(&dir).await;
    let api = Api {
        base: format!("http://{}", p.http),
    };
    let amqp = p
        .url
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v
            .as_array()
            .expect("a list")
            .iter()
            .map(|x| x["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(&api.get("/api/users").await.body),
        ["alice", "bob", "frank", "guest"],
        "refused users absent, the deleted one gone, refused deletions kept"
    );
    assert_eq!(names(&api.get("/api/vhosts").await.body), ["/", "kept-v"]);
    login(&amqp, "alice", "pw", "/")
        .await
        .expect("the old password");
    login(&amqp, "alice", "pw", "kept-v")
        .await
        .expect("kept-v kept");
    assert_eq!(login(&amqp, "alice", "new", "/").await.err(), Some(403));
    assert_eq!(login(&amqp, "carol", "pw", "/").await.err(), Some(403));
    assert_eq!(login(&amqp, "dave", "pw", "/").await.err(), Some(403));
    assert_eq!(login(&amqp, "bob", "pw", "/").await.err(), Some(530));
    // frank exists (530: no permission on /, not 403: no such user).
    assert_eq!(login(&amqp, "frank", "pw", "/").await.err(), Some(530));
    status(&api.get("/api/permissions/%2F/carol").await, 404);
    p.term();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same for exchanges, queues and bindings: a durable declare, delete, bind or unbind the
/// store refuses is an error (AMQP: the connection closes with 541 INTERNAL_ERROR; the API: 500)
/// and changes nothing — deletions used to go ahead in memory with only a log line, so a queue
/// deleted for its client came back after a restart. After the failure, the real binary on the
/// same directory sees what memory saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_definition_changes_change_nothing() {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let dir = temp_data_dir();
    let (h, api) = start_on(&dir).await;
    let url = format!("amqp://guest:guest@{}/%2f", h.amqp_addr);
    let connect = || async {
        let c = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = c.create_channel().await.unwrap();
        (c, ch)
    };
    let store = h.state.store.clone().expect("a store");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let (_c, ch) = connect().await;
    ch.queue_declare("kept".into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.exchange_declare(
        "kept-x".into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "kept".into(),
        "kept-x".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    store.inject_definition_write_failure(true);
    // AMQP: each refused change closes the connection with 541; nothing changed.
    let (c, ch) = connect().await;
    let e = ch
        .queue_declare("refused".into(), durable, FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(541), "{e}");
    drop(c);
    let (c, ch) = connect().await;
    let e = ch
        .queue_delete("kept".into(), QueueDeleteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(541), "{e}");
    drop(c);
    let (c, ch) = connect().await;
    let e = ch
        .queue_unbind(
            "kept".into(),
            "kept-x".into(),
            "k".into(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(541), "{e}");
    drop(c);
    // The API: 500 in RabbitMQ's shape.
    for path in ["/api/queues/%2F/kept", "/api/exchanges/%2F/kept-x"] {
        let r = api.delete(path).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (500, Some("internal_server_error")),
            "DELETE {path}: {}",
            r.text
        );
    }
    let r = api
        .put("/api/queues/%2F/refused-too", json!({"durable": true}))
        .await;
    assert_eq!(r.status, 500, "{}", r.text);
    // Memory: all still there, nothing new.
    definitions_kept(&api).await;
    // Messages still route through the binding that stayed.
    let (_c, ch) = connect().await;
    publish(&ch, "kept-x", "k", b"still bound").await;
    assert!(get_one(&ch, "kept").await.is_some());

    store.inject_definition_write_failure(false);
    drop(store);
    h.shutdown().await;
    let p = spawn_when_free(&dir).await;
    let api = Api {
        base: format!("http://{}", p.http),
    };
    definitions_kept(&api).await;
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `refused_definition_changes_change_nothing` expects, in memory and after a restart: the
/// queue, exchange and binding whose deletions were refused are there, the refused ones are not.
async fn definitions_kept(api: &Api) {
    assert_eq!(api.get("/api/queues/%2F/kept").await.status, 200);
    assert_eq!(api.get("/api/exchanges/%2F/kept-x").await.status, 200);
    let bound = api.get("/api/bindings/%2F/e/kept-x/q/kept").await;
    assert_eq!(
        bound.body.as_array().map(Vec::len),
        Some(1),
        "{}",
        bound.text
    );
    for q in ["refused", "refused-too"] {
        assert_eq!(api.get(&format!("/api/queues/%2F/{q}")).await.status, 404);
    }
}
