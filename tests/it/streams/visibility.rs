//! Streams made visible: the management API (RabbitMQ's fields for a stream queue, Warren's
//! `stream` object, each reader's offsets and lag), Prometheus (`warren_stream_*`) and
//! warrenctl (`list_stream_consumers`, `stream_status`), all from one state that lapin
//! consumers set up: one acked some of what it holds, one acked nothing, one is caught up.

use super::*;
use crate::prometheus::{scrape, Sample};
use serde_json::{json, Value};
use std::time::Duration;

/// Run the built warrenctl against `b`'s API.
async fn ctl(b: &Broker, args: &[&str]) -> (i32, String, String) {
    warrenctl(&format!("http://{}", b.handle.http_addr), args).await
}

/// The sample `name` whose labels include all of `labels`.
fn sample(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = s
        .iter()
        .filter(|x| {
            x.name == name
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "one sample {name} {labels:?}: {found:?}");
    found[0].value
}

/// The `stream` object of the consumer `tag` in a single-queue view.
fn reader<'a>(q: &'a Value, tag: &str) -> &'a Value {
    q["consumer_details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer_tag"] == tag)
        .unwrap_or_else(|| panic!("no consumer {tag} in {q}"))
}

/// A stream of 10 messages (offsets 0-2, then 1.1 s later 3-9) read by:
/// - A, named `app`, from `first` with prefetch 5, which acked 0-2 and holds 3-7 unacked;
/// - B, from offset 5 with prefetch 10, which holds 5-9 and acked nothing;
/// - C, from `first`, which acked everything.
///
/// The API shows each one's offsets and lag exactly, RabbitMQ's counts for a stream
/// (`messages` = `messages_ready` = held, `messages_unacknowledged` 0 whatever the readers
/// hold), and a classic queue's JSON without any stream field. Regression: a reader that had
/// acked nothing (B) showed a lag in time counted from 1970 (decades).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_prometheus_and_warrenctl_show_offsets_and_lag() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-vis", &[("x-max-age", s("7D"))])
        .await
        .unwrap();
    declare(&ch, "c-vis").await;
    publish_n(&ch, "s-vis", 0, 3, BasicProperties::default()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish_n(&ch, "s-vis", 3, 7, BasicProperties::default()).await;

    let (_ca, ra) = b.channel().await;
    let mut a = stream_consumer(
        &ra,
        "s-vis",
        5,
        &[
            ("x-stream-offset", s("first")),
            ("x-stream-consumer-name", s("app")),
        ],
    )
    .await
    .unwrap();
    let got = take(&mut a, 5).await;
    assert_eq!(offset_of(&got[2]), 2);
    got[2]
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let more = take(&mut a, 3).await;
    assert_eq!(offset_of(&more[2]), 7);
    let (_cb, rb) = b.channel().await;
    let mut bc = stream_consumer(
        &rb,
        "s-vis",
        10,
        &[("x-stream-offset", AMQPValue::LongInt(5))],
    )
    .await
    .unwrap();
    assert_eq!(offset_of(&take(&mut bc, 5).await[4]), 9);
    let (_cc, rc) = b.channel().await;
    let mut cc = stream_consumer(&rc, "s-vis", 20, &[("x-stream-offset", s("first"))])
        .await
        .unwrap();
    let all = take(&mut cc, 10).await;
    all[9]
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let (ta, tb, tc) = (
        a.tag().to_string(),
        bc.tag().to_string(),
        cc.tag().to_string(),
    );

    // Once both acks are in, nothing moves any more: every figure is exact.
    let q = eventually(&api, "/api/queues/%2f/s-vis", |q| {
        q["consumer_details"].as_array().is_some_and(|cs| {
            cs.len() == 3
                && cs.iter().all(|c| c["stream"]["next_offset"] != json!(0))
                && cs
                    .iter()
                    .filter(|c| c["stream"]["unacked"] == json!(5))
                    .count()
                    == 2
                && cs.iter().any(|c| c["stream"]["acked_offset"] == json!(9))
                && cs.iter().any(|c| c["stream"]["acked_offset"] == json!(2))
        })
    })
    .await;
    assert_eq!(q["type"], "stream");
    assert_eq!(q["durable"], true);
    assert_eq!(q["messages"], 10);
    assert_eq!(q["messages_ready"], 10);
    assert_eq!(q["messages_unacknowledged"], 0);
    assert_eq!(q["consumers"], 3);
    let node = q["node"].as_str().unwrap().to_owned();
    assert_eq!(q["members"], json!([node]));
    assert_eq!(q["online"], json!([node]));
    let mut readers = serde_json::Map::new();
    readers.insert(node.clone(), json!(3));
    assert_eq!(q["readers"], Value::Object(readers));
    assert_eq!(q["arguments"]["x-max-age"], "7D");
    let st = &q["stream"];
    assert_eq!(st["first_offset"], 0);
    assert_eq!(st["next_offset"], 10);
    assert_eq!(st["messages"], 10);
    assert_eq!(st["segments"], 1);
    let disk = st["disk_bytes"].as_u64().unwrap();
    assert!(disk > 10 * 2, "{st}");
    let (t0, t9) = (
        st["first_timestamp"].as_u64().unwrap(),
        st["last_timestamp"].as_u64().unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(t9 >= t0 + 1100 && t9 <= now && now - t0 < 60_000, "{st}");
    assert_eq!(
        st["tracked"],
        json!([{"name": "app", "next_offset": 3, "lag_messages": 7}])
    );

    // A: acked 0-2, holds 3-7; lag from offset 2 (the first wave) to 9 (the second).
    let ra_ = reader(&q, &ta);
    assert_eq!(
        ra_["active"], false,
        "RabbitMQ shows stream consumers inactive"
    );
    assert_eq!(ra_["ack_required"], true);
    assert_eq!(ra_["prefetch_count"], 5);
    let sa = &ra_["stream"];
    let lag_a = sa["lag_seconds"].as_f64().unwrap();
    assert!(
        (1.1..=(t9 - t0) as f64 / 1000.0).contains(&lag_a),
        "{lag_a} {st}"
    );
    assert_eq!(
        *sa,
        json!({"name": "app", "active": true, "first_offset": 0, "next_offset": 8,
               "acked_offset": 2, "lag_messages": 7, "lag_seconds": lag_a, "unacked": 5})
    );
    // B: acked nothing; its lag in time runs from its oldest delivery (offset 5), which was
    // published with 9 in the second wave: well under the 1.1 s between the waves.
    let sb = &reader(&q, &tb)["stream"];
    let lag_b = sb["lag_seconds"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&lag_b), "{sb}");
    assert_eq!(
        *sb,
        json!({"name": null, "active": true, "first_offset": 5, "next_offset": 10,
               "acked_offset": null, "lag_messages": 5, "lag_seconds": lag_b, "unacked": 5})
    );
    let sc = &reader(&q, &tc)["stream"];
    assert_eq!(
        *sc,
        json!({"name": null, "active": true, "first_offset": 0, "next_offset": 10,
               "acked_offset": 9, "lag_messages": 0, "lag_seconds": 0.0, "unacked": 0})
    );

    // The list shows the same queue fields (no consumer details); a classic queue none of them.
    let list = api.get("/api/queues/%2f").await.body;
    let find = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == n)
            .cloned()
            .unwrap()
    };
    let ls = find("s-vis");
    assert_eq!(ls["stream"], q["stream"]);
    assert_eq!(
        (&ls["messages"], &ls["messages_unacknowledged"]),
        (&json!(10), &json!(0))
    );
    let classic = find("c-vis");
    assert_eq!(classic["type"], "classic");
    for k in ["stream", "members", "online", "readers"] {
        assert!(classic.get(k).is_none(), "classic queue has {k}: {classic}");
    }

    // The overview's and the vhost's totals count a stream the same way (A and B hold 10
    // deliveries unacknowledged).
    let o = api.get("/api/overview").await.body;
    let v = api.get("/api/vhosts/%2f").await.body;
    for t in [&o["queue_totals"], &v] {
        assert_eq!(
            (&t["messages"], &t["messages_unacknowledged"]),
            (&json!(10), &json!(0)),
            "{t}"
        );
    }

    // Prometheus, per object: the stream's figures and one lag series per reader.
    let prom = format!("http://{}", b.handle.prometheus_addr.unwrap());
    let (_, s) = scrape(format!("{prom}/metrics/per-object")).await;
    let sv = [("vhost", "/"), ("queue", "s-vis")];
    for (name, v) in [
        ("warren_stream_messages", 10.0),
        ("warren_stream_segments", 1.0),
        ("warren_stream_first_offset", 0.0),
        ("warren_stream_next_offset", 10.0),
        ("warren_stream_disk_bytes", disk as f64),
        ("rabbitmq_queue_messages_ready", 10.0),
        ("rabbitmq_queue_messages_unacked", 0.0),
        ("rabbitmq_queue_messages", 10.0),
    ] {
        assert_eq!(sample(&s, name, &sv), v, "{name}");
    }
    assert!(!s.iter().any(|x| x.name.starts_with("warren_stream_")
        && x.labels.get("queue").map(String::as_str) == Some("c-vis")));
    let lag = |tag: &str, unit: &str| {
        sample(
            &s,
            &format!("warren_stream_consumer_lag_{unit}"),
            &[("vhost", "/"), ("queue", "s-vis"), ("consumer_tag", tag)],
        )
    };
    assert_eq!((lag(&ta, "messages"), lag(&ta, "seconds")), (7.0, lag_a));
    assert_eq!((lag(&tb, "messages"), lag(&tb, "seconds")), (5.0, lag_b));
    assert_eq!((lag(&tc, "messages"), lag(&tc, "seconds")), (0.0, 0.0));
    // The named reader carries its name; the others have no name label.
    let named: Vec<_> = s
        .iter()
        .filter(|x| x.name == "warren_stream_consumer_lag_messages")
        .map(|x| {
            (
                x.labels["consumer_tag"].clone(),
                x.labels.get("name").cloned(),
            )
        })
        .collect();
    assert_eq!(named.len(), 3);
    for (tag, name) in named {
        assert_eq!(name.as_deref(), (tag == ta).then_some("app"), "{tag}");
    }
    assert_eq!(
        sample(
            &s,
            "warren_stream_tracked_lag_messages",
            &[("queue", "s-vis"), ("name", "app")]
        ),
        7.0
    );
    // Aggregated: sizes summed, lag the largest.
    let (_, agg) = scrape(format!("{prom}/metrics")).await;
    assert_eq!(sample(&agg, "warren_stream_messages", &[]), 10.0);
    assert_eq!(
        sample(&agg, "warren_stream_consumer_lag_messages", &[]),
        7.0
    );
    assert_eq!(
        sample(&agg, "warren_stream_consumer_lag_seconds", &[]),
        lag_a
    );

    // warrenctl: the readers' table and the stream's status.
    let (code, out, err) = ctl(&b, &["-q", "list_stream_consumers"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.remove(0),
        "stream\tconsumer_tag\tname\tactive\tnext_offset\tacked_offset\tlag_messages\tlag_seconds"
    );
    lines.sort();
    // Numbers as JSON writes them (0.0, not 0).
    let (ja, jb) = (json!(lag_a), json!(lag_b));
    let mut want = vec![
        format!("s-vis\t{ta}\tapp\ttrue\t8\t2\t7\t{ja}"),
        format!("s-vis\t{tb}\t\ttrue\t10\t\t5\t{jb}"),
        format!("s-vis\t{tc}\t\ttrue\t10\t9\t0\t0.0"),
    ];
    want.sort();
    assert_eq!(lines, want);
    let (code, out2, _) = ctl(&b, &["-q", "list_stream_consumers", "s-vis"]).await;
    assert_eq!((code, out2.lines().count()), (0, 4), "{out2}");
    let (code, out, err) = ctl(&b, &["stream_status", "s-vis"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "Status of stream 's-vis' in vhost / ...",
        "first_offset: 0",
        "next_offset: 10",
        "messages: 10",
        "segments: 1",
        &format!("disk_bytes: {disk}"),
        &format!("first_timestamp: {t0}"),
        &format!("last_timestamp: {t9}"),
        "consumers: 3",
        "tracked consumers: 1",
        "name\tnext_offset\tlag_messages",
        "app\t3\t7",
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in\n{out}");
    }
    let (code, out, _) = ctl(&b, &["--json", "stream_status", "s-vis"]).await;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), q["stream"]);
    // Errors: a missing stream (1), a classic queue (65), in both commands.
    let (code, _, err) = ctl(&b, &["stream_status", "nope"]).await;
    assert_eq!(
        (code, err.trim()),
        (1, "Error: stream 'nope' in vhost '/' not found")
    );
    for cmd in ["stream_status", "list_stream_consumers"] {
        let (code, _, err) = ctl(&b, &[cmd, "c-vis"]).await;
        assert_eq!(
            (code, err.trim()),
            (65, "Error: queue 'c-vis' in vhost '/' is not a stream"),
            "{cmd}"
        );
    }
}

/// A single-active group by name: the API and warrenctl tell the reading member from the
/// standby (`stream.active`), and the standby takes over when the reader leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_readers_show_which_one_reads() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let (_c, ch) = confirming(&b).await;
    declare_stream(&ch, "s-vis-sac", &[]).await.unwrap();
    publish_n(&ch, "s-vis-sac", 0, 4, BasicProperties::default()).await;
    let args = [
        ("x-stream-offset", s("first")),
        ("x-stream-consumer-name", s("grp")),
        ("x-single-active-consumer", AMQPValue::Boolean(true)),
    ];
    let (_c1, r1) = b.channel().await;
    let mut first = stream_consumer(&r1, "s-vis-sac", 10, &args).await.unwrap();
    take_acked(&mut first, 4).await;
    let (_c2, r2) = b.channel().await;
    let standby = stream_consumer(&r2, "s-vis-sac", 10, &args).await.unwrap();
    let (t1, t2) = (first.tag().to_string(), standby.tag().to_string());
    let active = |q: &Value, tag: &str| reader(q, tag)["stream"]["active"].clone();
    let q = eventually(&api, "/api/queues/%2f/s-vis-sac", |q| {
        q["consumers"] == 2 && q["stream"]["tracked"][0]["next_offset"] == 4
    })
    .await;
    assert_eq!(
        (active(&q, &t1), active(&q, &t2)),
        (json!(true), json!(false))
    );
    assert_eq!(reader(&q, &t1)["stream"]["name"], "grp");
    assert_eq!(reader(&q, &t1)["stream"]["lag_messages"], 0);
    // The standby is as far behind as its group, not the whole stream.
    assert_eq!(reader(&q, &t2)["stream"]["lag_messages"], 0);
    // Its consume arguments are shown as sent (as RabbitMQ shows them).
    assert_eq!(
        reader(&q, &t2)["arguments"],
        json!({"x-stream-offset": "first", "x-stream-consumer-name": "grp",
               "x-single-active-consumer": true})
    );
    // /api/consumers: stream consumers are not `active`, as RabbitMQ 3.10 shows them, with their
    // arguments.
    let all = api.get("/api/consumers").await.body;
    let mine: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["queue"]["name"] == "s-vis-sac")
        .collect();
    assert_eq!(mine.len(), 2, "{all}");
    assert!(mine.iter().all(|c| c["active"] == false), "{all}");
    assert!(
        mine.iter()
            .all(|c| c["arguments"]["x-stream-consumer-name"] == "grp"),
        "{all}"
    );
    let (code, out, _) = ctl(&b, &["-q", "-s", "list_stream_consumers", "s-vis-sac"]).await;
    assert_eq!(code, 0);
    let mut rows: Vec<&str> = out.lines().collect();
    rows.sort();
    let mut want = vec![
        format!("s-vis-sac\t{t1}\tgrp\ttrue\t4\t3\t0\t0.0"),
        format!("s-vis-sac\t{t2}\tgrp\tfalse"),
    ];
    want.sort();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows.iter()
            .zip(&want)
            .all(|(r, w)| r.starts_with(w.as_str())),
        "{rows:?} {want:?}"
    );
    r1.basic_cancel(first.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    let q = eventually(&api, "/api/queues/%2f/s-vis-sac", |q| q["consumers"] == 1).await;
    assert_eq!(active(&q, &t2), json!(true));
}
