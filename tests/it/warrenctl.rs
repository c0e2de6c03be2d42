//! warrenctl, the real built binary, against a live in-process broker.

use crate::harness::*;

use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::{json, Value};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run warrenctl against `url`.
async fn ctl(url: &str, args: &[&str]) -> Run {
    let (code, stdout, stderr) = warrenctl(url, args).await;
    Run {
        code,
        stdout,
        stderr,
    }
}

fn ok(r: &Run) {
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_rabbitmqctl_shaped() {
    let b = Broker::start().await;
    let url = format!("http://{}", b.handle.http_addr);
    let (_c, ch) = b.channel().await;
    declare(&ch, "ctl-a").await;
    declare(&ch, "ctl-b").await;
    publish(&ch, "", "ctl-a", b"1").await;
    publish(&ch, "", "ctl-a", b"2").await;
    let _consumer = consume(&ch, "ctl-b", false).await;
    Api::of(&b)
        .put("/api/exchanges/%2F/ctl-x", json!({"type": "fanout"}))
        .await;
    ch.queue_bind(
        "ctl-b".into(),
        "ctl-x".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let r = ctl(&url, &["list_queues"]).await;
    ok(&r);
    assert_eq!(
        r.stdout,
        "Listing queues for vhost / ...\nname\tmessages\nctl-a\t2\nctl-b\t0\n"
    );
    let r = ctl(
        &url,
        &[
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "consumers",
            "durable",
        ],
    )
    .await;
    assert_eq!(
        r.stdout,
        "name\tmessages_ready\tconsumers\tdurable\nctl-a\t2\t0\tfalse\nctl-b\t0\t1\tfalse\n"
    );
    let r = ctl(
        &url,
        &["-q", "--no-table-headers", "list_queues", "name,messages"],
    )
    .await;
    assert_eq!(r.stdout, "ctl-a\t2\nctl-b\t0\n");
    let r = ctl(&url, &["--json", "list_queues", "name", "messages"]).await;
    ok(&r);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v,
        json!([{"name": "ctl-a", "messages": 2}, {"name": "ctl-b", "messages": 0}])
    );

    let r = ctl(&url, &["-q", "list_exchanges"]).await;
    assert!(
        r.stdout
            .starts_with("name\ttype\n\tdirect\namq.direct\tdirect\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("ctl-x\tfanout\n"));
    let r = ctl(&url, &["-q", "list_bindings"]).await;
    assert!(r.stdout.starts_with(
        "source_name\tsource_kind\tdestination_name\tdestination_kind\trouting_key\targuments\n"
    ));
    assert!(
        r.stdout.contains("\texchange\tctl-a\tqueue\tctl-a\t[]\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("ctl-x\texchange\tctl-b\tqueue\t\t[]\n"),
        "{}",
        r.stdout
    );
    let r = ctl(&url, &["-q", "list_connections"]).await;
    assert!(
        r.stdout
            .starts_with("user\tpeer_host\tpeer_port\tstate\nguest\t127.0.0.1\t"),
        "{}",
        r.stdout
    );
    let r = ctl(&url, &["-q", "list_channels"]).await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "name\tuser\tconsumer_count\tmessages_unacknowledged"
    );
    assert!(lines[1].ends_with("(1)\tguest\t1\t0"), "{}", r.stdout);
    let r = ctl(
        &url,
        &[
            "-q",
            "list_consumers",
            "queue_name",
            "ack_required",
            "prefetch_count",
        ],
    )
    .await;
    assert_eq!(
        r.stdout,
        "queue_name\tack_required\tprefetch_count\nctl-b\ttrue\t0\n"
    );
    let r = ctl(&url, &["status"]).await;
    ok(&r);
    assert!(r.stdout.contains("queues: 2"), "{}", r.stdout);
    let r = ctl(&url, &["--json", "status"]).await;
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["overview"]["object_totals"]["queues"], 2);
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_errors() {
    let b = Broker::start().await;
    let url = format!("http://{}", b.handle.http_addr);
    let api = Api::of(&b);
    let (c, ch) = b.channel().await;
    declare(&ch, "ctl-p").await;
    publish(&ch, "", "ctl-p", b"1").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let r = ctl(&url, &["delete_queue", "ctl-p", "--if-empty"]).await;
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    ok(&ctl(&url, &["purge_queue", "ctl-p"]).await);
    assert_eq!(api.get("/api/queues/%2F/ctl-p").await.body["messages"], 0);
    ok(&ctl(&url, &["delete_queue", "ctl-p"]).await);
    let r = ctl(&url, &["delete_queue", "ctl-p"]).await;
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.trim(),
        "Error: queue 'ctl-p' in vhost '/' not found"
    );
    let r = ctl(&url, &["purge_queue", "x", "-p", "nosuch"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("vhost 'nosuch'"), "{}", r.stderr);

    // Users, vhosts, permissions: the new user connects over AMQP.
    ok(&ctl(&url, &["add_vhost", "ctl-v"]).await);
    ok(&ctl(&url, &["add_user", "carol", "pw1"]).await);
    let r = ctl(&url, &["add_user", "carol", "pw1"]).await;
    assert_eq!(r.code, 65);
    ok(&ctl(
        &url,
        &["set_permissions", "-p", "ctl-v", "carol", ".*", ".*", ".*"],
    )
    .await);
    let r = ctl(&url, &["-q", "list_permissions", "-p", "ctl-v"]).await;
    assert!(r.stdout.contains("carol\t.*\t.*\t.*\n"), "{}", r.stdout);
    ok(&ctl(&url, &["change_password", "carol", "pw2"]).await);
    ok(&ctl(&url, &["set_user_tags", "carol", "management"]).await);
    let r = ctl(&url, &["-q", "list_users"]).await;
    assert!(r.stdout.contains("carol\t[management]\n"), "{}", r.stdout);
    let amqp = format!("amqp://carol:pw2@{}/ctl-v", b.handle.amqp_addr);
    lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .expect("carol connects");
    let r = ctl(&url, &["-q", "list_vhosts"]).await;
    assert_eq!(r.stdout, "name\n/\nctl-v\n");
    let r = ctl(&url, &["change_password", "nobody", "x"]).await;
    assert_eq!(
        (r.code, r.stderr.trim()),
        (1, "Error: user 'nobody' not found")
    );
    ok(&ctl(&url, &["clear_permissions", "-p", "ctl-v", "carol"]).await);
    ok(&ctl(&url, &["delete_user", "carol"]).await);
    assert_eq!(ctl(&url, &["delete_user", "carol"]).await.code, 1);
    ok(&ctl(&url, &["delete_vhost", "ctl-v"]).await);
    assert_eq!(ctl(&url, &["delete_vhost", "ctl-v"]).await.code, 1);

    // Closing a connection by the name list_connections shows.
    let r = ctl(
        &url,
        &["-q", "--no-table-headers", "list_connections", "name"],
    )
    .await;
    let name = r.stdout.lines().next().unwrap().to_owned();
    ok(&ctl(&url, &["close_connection", &name, "go away"]).await);
    let e = ch
        .queue_declare(
            "x".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(code(&e) == Some(320) || !c.status().connected(), "{e}");
    let r = ctl(&url, &["close_connection", "no such connection"]).await;
    assert_eq!(r.code, 1);

    // Wrong credentials, usage errors.
    let r = ctl(&url, &["--password", "nope", "list_queues"]).await;
    assert_eq!(r.code, 77);
    assert!(r.stderr.contains("access refused"), "{}", r.stderr);
    let r = ctl(&url, &["frobnicate"]).await;
    assert_eq!(r.code, 64);
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_export_and_import_between_brokers() {
    let b = Broker::start().await;
    let url = format!("http://{}", b.handle.http_addr);
    let api = Api::of(&b);
    api.put(
        "/api/queues/%2F/def-q",
        json!({"durable": true, "arguments": {"x-message-ttl": 5000}}),
    )
    .await;
    api.put(
        "/api/exchanges/%2F/def-x",
        json!({"type": "topic", "durable": true}),
    )
    .await;
    api.post(
        "/api/bindings/%2F/e/def-x/q/def-q",
        json!({"routing_key": "k.#"}),
    )
    .await;
    let file = std::env::temp_dir().join(format!("warrenctl-defs-{}.json", std::process::id()));
    let path = file.to_str().unwrap();
    ok(&ctl(&url, &["export_definitions", path]).await);
    let r = ctl(&url, &["export_definitions", "-"]).await;
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["queues"][0]["name"], "def-q");

    let b2 = Broker::start().await;
    let url2 = format!("http://{}", b2.handle.http_addr);
    ok(&ctl(&url2, &["import_definitions", path]).await);
    let q = Api::of(&b2).get("/api/queues/%2F/def-q").await.body;
    assert_eq!(q["arguments"]["x-message-ttl"], 5000);
    let r = ctl(
        &url2,
        &["-q", "list_bindings", "source_name", "routing_key"],
    )
    .await;
    assert!(r.stdout.contains("def-x\tk.#\n"), "{}", r.stdout);
    std::fs::write(&file, "{ not json").unwrap();
    let r = ctl(&url2, &["import_definitions", path]).await;
    assert_eq!(r.code, 65);
    let r = ctl(&url2, &["import_definitions", "/no/such/file.json"]).await;
    assert_eq!(r.code, 66);
    let _ = std::fs::remove_file(&file);
    b2.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_is_a_clear_error() {
    // A port that was just free: nothing listens there.
    let port = crate::harness::reserve_port().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [&["list_queues"][..], &["status"], &["purge_queue", "q"]] {
        let r = ctl(&url, args).await;
        assert_eq!(r.code, 69, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr
                .starts_with(&format!("Error: cannot reach Warren at {url}")),
            "{}",
            r.stderr
        );
        assert_eq!(r.stderr.lines().count(), 1);
    }
}

/// set/clear/list of vhost limits, user limits and topic permissions, with rabbitmqctl's
/// arguments and semantics: set_vhost_limits replaces the vhost's limits, set_user_limits adds
/// to the user's; refusals exit 65 with the broker's reason, unknown objects 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_topic_permissions_commands() {
    let b = Broker::start().await;
    let url = format!("http://{}", b.handle.http_addr);
    let api = Api::of(&b);
    ok(&ctl(&url, &["add_user", "lim", "pw"]).await);

    let r = ctl(
        &url,
        &[
            "set_vhost_limits",
            r#"{"max-connections": 10, "max-queues": 4}"#,
        ],
    )
    .await;
    ok(&r);
    assert_eq!(
        r.stdout,
        "Setting vhost limits to \"{\"max-connections\": 10, \"max-queues\": 4}\" for vhost \"/\" ...\n"
    );
    ok(&ctl(&url, &["set_vhost_limits", r#"{"max-queues": 5}"#]).await);
    let r = ctl(&url, &["list_vhost_limits"]).await;
    ok(&r);
    assert_eq!(
        r.stdout,
        "Listing limits for vhost \"/\" ...\n{\"max-queues\":5}\n"
    );
    let r = ctl(&url, &["set_vhost_limits", r#"{"max-foo": 1}"#]).await;
    assert_eq!(r.code, 65, "{}", r.stderr);
    assert!(r.stderr.contains("Unrecognised terms"), "{}", r.stderr);
    assert_eq!(ctl(&url, &["set_vhost_limits", "notjson"]).await.code, 65);
    assert_eq!(
        ctl(&url, &["-p", "nope", "clear_vhost_limits"]).await.code,
        1
    );
    ok(&ctl(&url, &["clear_vhost_limits"]).await);
    assert_eq!(api.get("/api/vhost-limits").await.body, json!([]));

    ok(&ctl(&url, &["set_user_limits", "lim", r#"{"max-channels": 3}"#]).await);
    ok(&ctl(
        &url,
        &["set_user_limits", "lim", r#"{"max-connections": 2}"#],
    )
    .await);
    let r = ctl(&url, &["-q", "list_user_limits", "--user", "lim"]).await;
    ok(&r);
    assert_eq!(r.stdout, "{\"max-channels\":3,\"max-connections\":2}\n");
    ok(&ctl(&url, &["clear_user_limits", "lim", "max-channels"]).await);
    assert_eq!(
        api.get("/api/users/lim").await.body["limits"],
        json!({"max-connections": 2})
    );
    ok(&ctl(&url, &["clear_user_limits", "lim", "all"]).await);
    assert_eq!(api.get("/api/users/lim").await.body["limits"], json!({}));
    assert_eq!(
        ctl(&url, &["clear_user_limits", "lim", "max-queues"])
            .await
            .code,
        64
    );
    let r = ctl(
        &url,
        &["set_user_limits", "nobody", r#"{"max-channels": 1}"#],
    )
    .await;
    assert_eq!(r.code, 65, "{}", r.stderr);

    ok(&ctl(
        &url,
        &["set_topic_permissions", "lim", "amq.topic", "^a", "^b"],
    )
    .await);
    ok(&ctl(&url, &["set_topic_permissions", "lim", "t2", "^c", "^d"]).await);
    let r = ctl(&url, &["list_topic_permissions"]).await;
    ok(&r);
    assert_eq!(
        r.stdout,
        "Listing topic permissions for vhost \"/\" ...\nuser\texchange\twrite\tread\n\
         lim\tamq.topic\t^a\t^b\nlim\tt2\t^c\t^d\n"
    );
    ok(&ctl(&url, &["clear_topic_permissions", "lim", "t2"]).await);
    let r = ctl(&url, &["-q", "list_user_topic_permissions", "lim"]).await;
    ok(&r);
    assert_eq!(
        r.stdout,
        "vhost\texchange\twrite\tread\n/\tamq.topic\t^a\t^b\n"
    );
    ok(&ctl(&url, &["clear_topic_permissions", "lim"]).await);
    assert_eq!(api.get("/api/topic-permissions").await.body, json!([]));
    assert_eq!(ctl(&url, &["clear_topic_permissions", "lim"]).await.code, 1);
    let r = ctl(
        &url,
        &["set_topic_permissions", "lim", "amq.topic", "(", "x"],
    )
    .await;
    assert_eq!(r.code, 65, "{}", r.stderr);
}
