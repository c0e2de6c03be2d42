//! Persistent messages in durable queues across restarts and `kill -9` of the real binary.

use crate::child::{du, spawn, spawn_configured};
use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use std::time::Duration;

async fn durable(ch: &Channel, name: &str) {
    declare_durable(ch, name, FieldTable::default()).await;
}

fn persistent(i: usize) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert("i".into(), AMQPValue::LongLongInt(i as i64));
    h.insert(
        "nested".into(),
        AMQPValue::FieldArray(vec![AMQPValue::Boolean(true)].into()),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(format!("m{i}").into())
        .with_content_type("text/plain".into())
        .with_headers(h)
}

/// Publish and wait for the confirm (which, for a persistent message, means it is on disk).
async fn send(ch: &Channel, key: &str, body: &[u8], props: BasicProperties) {
    let c = ch
        .basic_publish(
            "".into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack(), "confirmed");
}

/// Everything in `queue` via basic.get with ack: (body, redelivered, message id, header i).
async fn drain(ch: &Channel, queue: &str) -> Vec<(Vec<u8>, bool, String, Option<i64>)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        let d = &m.delivery;
        let id = d
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let i = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("i").cloned())
            .and_then(|v| match v {
                AMQPValue::LongLongInt(n) => Some(n),
                _ => None,
            });
        out.push((d.data.clone(), d.redelivered, id, i));
        ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_persistent_messages_survive_kill_9_in_order_and_unacked_come_back_redelivered() {
    let dir = temp_data_dir();
    let p = spawn(&dir).unwrap();
    {
        let (c, ch) = p.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        durable(&ch, "pq").await;
        declare(&ch, "transient-q").await;
        for i in 0..20 {
            send(&ch, "pq", format!("p{i}").as_bytes(), persistent(i)).await;
            if i % 4 == 0 {
                // Transient messages in a durable queue do not survive.
                send(&ch, "pq", b"transient", BasicProperties::default()).await;
            }
        }
        send(&ch, "transient-q", b"x", persistent(99)).await;
        // Take the first 8 messages (6 persistent, 2 transient); ack 3 of them.
        let rx = c.create_channel().await.unwrap();
        let mut got = Vec::new();
        for _ in 0..8 {
            let m = rx
                .basic_get("pq".into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
                .expect("message");
            got.push(m.delivery);
        }
        let bodies: Vec<&[u8]> = got.iter().map(|d| d.data.as_slice()).collect();
        assert_eq!(
            bodies,
            [
                &b"p0"[..],
                b"transient",
                b"p1",
                b"p2",
                b"p3",
                b"p4",
                b"transient",
                b"p5"
            ]
        );
        for d in &got[..3] {
            rx.basic_ack(d.delivery_tag, BasicAckOptions::default())
                .await
                .unwrap();
        }
        // A round trip on the same channel: the acks were processed; give the log a moment.
        passive(&rx, "pq").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    p.kill9();

    let p = spawn(&dir).unwrap();
    let (c, ch) = p.channel().await;
    let got = drain(&ch, "pq").await;
    let bodies: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8_lossy(&g.0).into_owned())
        .collect();
    let want: Vec<String> = (2..20).map(|i| format!("p{i}")).collect();
    assert_eq!(
        bodies, want,
        "acked p0, p1 gone, the rest in order, no transient"
    );
    for (body, redelivered, id, i) in &got {
        let n: usize = String::from_utf8_lossy(body)[1..].parse().unwrap();
        assert_eq!(
            *redelivered,
            n <= 5,
            "delivered before the crash: redelivered ({n})"
        );
        assert_eq!(id, &format!("m{n}"), "properties survive");
        assert_eq!(*i, Some(n as i64), "headers survive");
    }
    let e = passive(&c.create_channel().await.unwrap(), "transient-q")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(404));
    drop(ch);
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_queues_give_disk_space_back_and_acked_messages_stay_gone() {
    let dir = temp_data_dir();
    let cfg = "segment_size_bytes = 1048576\n";
    let p = spawn_configured(&dir, cfg).unwrap();
    let messages = dir.join("messages");
    let before = du(&messages);
    let body = vec![7u8; 4096];
    {
        let (_c, ch) = p.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        durable(&ch, "big").await;
        let mut confirms = Vec::new();
        for i in 0..2000 {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    "big".into(),
                    BasicPublishOptions::default(),
                    &body,
                    persistent(i),
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
        let peak = du(&messages);
        assert!(peak >= 2000 * 4096, "stored on disk: {peak}");
        assert!(peak < 2000 * 4096 * 11 / 10, "about once, not more: {peak}");
        // Drain with acks (multiple), then the segments go.
        let mut consumer = consume(&ch, "big", false).await;
        let got = take(&mut consumer, 2000).await;
        got.last()
            .unwrap()
            .ack(BasicAckOptions { multiple: true })
            .await
            .unwrap();
        let mut after = u64::MAX;
        for _ in 0..100 {
            after = du(&messages);
            if after <= before + (1 << 20) + (64 << 10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            after <= before + (1 << 20) + (64 << 10),
            "disk use back within one segment: before {before}, after {after}"
        );
    }
    p.term();
    let p = spawn_configured(&dir, cfg).unwrap();
    let (_c, ch) = p.channel().await;
    assert_eq!(
        passive(&ch, "big").await.unwrap().message_count(),
        0,
        "acked messages are not delivered again after a clean restart"
    );
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_two_durable_queues_is_stored_once_and_kept_until_both_are_done() {
    let dir = temp_data_dir();
    let p = spawn(&dir).unwrap();
    let body = vec![1u8; 64 << 10];
    {
        let (_c, ch) = p.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for q in ["q1", "q2"] {
            durable(&ch, q).await;
            bind(&ch, q, "amq.fanout", "").await;
        }
        for i in 0..20 {
            ch.basic_publish(
                "amq.fanout".into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                persistent(i),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        let size = du(&dir.join("messages"));
        assert!(
            size < 20 * body.len() as u64 * 11 / 10,
            "one copy on disk for two queues: {size}"
        );
        assert_eq!(drain(&ch, "q1").await.len(), 20);
        passive(&ch, "q1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.kill9();
    let p = spawn(&dir).unwrap();
    let (_c, ch) = p.channel().await;
    assert_eq!(passive(&ch, "q1").await.unwrap().message_count(), 0);
    let q2 = drain(&ch, "q2").await;
    assert_eq!(q2.len(), 20, "still there for the queue that did not ack");
    assert!(q2.iter().all(|m| m.0 == body && !m.1));
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transaction_survives_kill_9_and_a_rolled_back_one_does_not_publish() {
    let dir = temp_data_dir();
    let p = spawn(&dir).unwrap();
    {
        let (_c, ch) = p.channel().await;
        durable(&ch, "txq").await;
        ch.tx_select().await.unwrap();
        for i in 0..5 {
            ch.basic_publish(
                "".into(),
                "txq".into(),
                BasicPublishOptions::default(),
                format!("c{i}").as_bytes(),
                persistent(i),
            )
            .await
            .unwrap();
        }
        ch.tx_commit().await.unwrap();
        ch.basic_publish(
            "".into(),
            "txq".into(),
            BasicPublishOptions::default(),
            b"rolled back",
            persistent(9),
        )
        .await
        .unwrap();
        ch.tx_rollback().await.unwrap();
        // Killed right after commit-ok: no grace period.
    }
    p.kill9();
    let p = spawn(&dir).unwrap();
    let (_c, ch) = p.channel().await;
    let got: Vec<Vec<u8>> = drain(&ch, "txq").await.into_iter().map(|m| m.0).collect();
    let want: Vec<Vec<u8>> = (0..5).map(|i| format!("c{i}").into_bytes()).collect();
    assert_eq!(got, want);
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_counts_the_time_the_broker_was_down() {
    let dir = temp_data_dir();
    let p = spawn(&dir).unwrap();
    {
        let (_c, ch) = p.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        durable(&ch, "ttlq").await;
        send(
            &ch,
            "ttlq",
            b"short",
            persistent(1).with_expiration("1000".into()),
        )
        .await;
        send(
            &ch,
            "ttlq",
            b"long",
            persistent(2).with_expiration("600000".into()),
        )
        .await;
    }
    p.kill9();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let p = spawn(&dir).unwrap();
    let (_c, ch) = p.channel().await;
    let got: Vec<Vec<u8>> = drain(&ch, "ttlq").await.into_iter().map(|m| m.0).collect();
    assert_eq!(
        got,
        vec![b"long".to_vec()],
        "expired while down; the other kept"
    );
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_sync_still_confirms_and_recovers_after_a_clean_stop() {
    let dir = temp_data_dir();
    let cfg = "message_sync_interval_ms = 200\n";
    let p = spawn_configured(&dir, cfg).unwrap();
    {
        let (_c, ch) = p.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        durable(&ch, "rq").await;
        for i in 0..50 {
            send(&ch, "rq", b"r", persistent(i)).await;
        }
    }
    p.term();
    let p = spawn_configured(&dir, cfg).unwrap();
    let (_c, ch) = p.channel().await;
    assert_eq!(passive(&ch, "rq").await.unwrap().message_count(), 50);
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_queue_comes_back_in_priority_order_after_kill_9() {
    let dir = temp_data_dir();
    // A budget so small that messages are read back one at a time: each must already sit at its
    // own priority level while still on disk.
    let cfg = "queue_ram_budget_bytes = 1\n";
    let p = spawn_configured(&dir, cfg).unwrap();
    {
        let (_c, ch) = p.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut args = FieldTable::default();
        args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
        ch.queue_declare(
            "prio".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
        for (i, prio) in [1u8, 7, 3, 7, 0, 9].into_iter().enumerate() {
            send(
                &ch,
                "prio",
                format!("{prio}-{i}").as_bytes(),
                persistent(i).with_priority(prio),
            )
            .await;
        }
    }
    p.kill9();
    let p = spawn_configured(&dir, cfg).unwrap();
    let (_c, ch) = p.channel().await;
    let got: Vec<String> = drain(&ch, "prio")
        .await
        .into_iter()
        .map(|m| String::from_utf8(m.0).unwrap())
        .collect();
    assert_eq!(got, ["9-5", "7-1", "7-3", "3-2", "1-0", "0-4"]);
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_on_a_durable_delayed_exchange_survive_kill_9() {
    let dir = temp_data_dir();
    let p = spawn(&dir).unwrap();
    let delay = |ms: i32| {
        let mut h = FieldTable::default();
        h.insert("x-delay".into(), AMQPValue::LongInt(ms));
        h
    };
    {
        let (_c, ch) = p.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut args = FieldTable::default();
        args.insert(
            "x-delayed-type".into(),
            AMQPValue::LongString("direct".into()),
        );
        ch.exchange_declare(
            "later".into(),
            lapin::ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
        durable(&ch, "due").await;
        ch.queue_bind(
            "due".into(),
            "later".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        for (body, ms, persistent_msg) in [
            (&b"soon"[..], 1500, true),
            (b"much later", 600_000, true),
            (b"transient", 1500, false),
        ] {
            let props = BasicProperties::default().with_headers(delay(ms));
            let props = if persistent_msg {
                props.with_delivery_mode(2)
            } else {
                props
            };
            let c = ch
                .basic_publish(
                    "later".into(),
                    "k".into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(c.is_ack());
        }
        assert_eq!(
            passive(&ch, "due").await.unwrap().message_count(),
            0,
            "held"
        );
    }
    p.kill9();
    let p = spawn(&dir).unwrap();
    let (_c, ch) = p.channel().await;
    // Due 1.5 s after it was published, however long the broker was down.
    let mut got = None;
    for _ in 0..100 {
        if let Some(m) = ch
            .basic_get("due".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            got = Some(m.delivery.data.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.as_deref(), Some(&b"soon"[..]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        passive(&ch, "due").await.unwrap().message_count(),
        0,
        "the transient one was lost with the broker; the other is still held"
    );
    drop(ch);
    p.kill9();
    // Still held (stored) across a second restart.
    let p = spawn(&dir).unwrap();
    let (_c, ch) = p.channel().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(passive(&ch, "due").await.unwrap().message_count(), 0);
    let held: u64 = crate::child::du(&dir.join("messages"));
    assert!(held > 0, "the long-delayed message is still on disk");
    p.kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_is_reported_and_skipped_and_a_foreign_segment_stops_the_start() {
    let dir = temp_data_dir();
    let p = spawn(&dir).unwrap();
    {
        let (_c, ch) = p.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        durable(&ch, "dmg").await;
        for i in 0..3 {
            send(
                &ch,
                "dmg",
                format!("intact-{i}-{}", "x".repeat(200)).as_bytes(),
                persistent(i),
            )
            .await;
        }
    }
    p.kill9();
    // Flip one byte inside the second record's body (a bit rotted on disk).
    let seg = std::fs::read_dir(dir.join("messages"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment");
    let mut data = std::fs::read(&seg).unwrap();
    let second = data
        .windows(8)
        .position(|w| w == b"intact-1")
        .expect("second body on disk");
    data[second + 20] ^= 0x01;
    std::fs::write(&seg, &data).unwrap();
    let p = spawn(&dir).unwrap();
    let (_c, ch) = p.channel().await;
    let got: Vec<String> = drain(&ch, "dmg")
        .await
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.0[..8]).into_owned())
        .collect();
    assert_eq!(
        got,
        ["intact-0", "intact-2"],
        "the damaged one is not delivered"
    );
    drop(ch);
    p.kill9();
    // A segment that is not Warren's: the start stops with an error naming the file.
    std::fs::write(
        dir.join("messages").join("99999999.seg"),
        b"NOT A SEGMENT FILE",
    )
    .unwrap();
    let log = match spawn(&dir) {
        Ok(p) => {
            p.kill9();
            panic!("started over a foreign segment");
        }
        Err(log) => log,
    };
    assert!(log.contains("99999999.seg"), "names the file: {log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The age of a queue's oldest message counts from its publication, across a restart: an alert on
/// consumer lag must not go quiet because the broker was restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_message_age_survives_a_restart() {
    let dir = temp_data_dir();
    let b = spawn(&dir).unwrap();
    let (_c, ch) = b.channel().await;
    durable(&ch, "aged").await;
    ch.confirm_select(Default::default()).await.unwrap();
    send(&ch, "aged", b"old", persistent(0)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.kill9();
    let b = spawn(&dir).unwrap();
    let url = format!("http://{}/api/queues/%2F/aged", b.http);
    let q = crate::harness::request("GET", url, Some(("guest", "guest")), None, &[]).await;
    let age = q.body["head_message_age_seconds"].as_f64().unwrap();
    assert!(
        (1.5..60.0).contains(&age),
        "age {age} after restart: {}",
        q.text
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `x-delivery-count` survives a restart: a poison message returned twice before a crash is at
/// its limit after it, not given a fresh allowance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_count_survives_kill_9() {
    let dir = temp_data_dir();
    let b = spawn(&dir).unwrap();
    let args = || {
        let mut t = FieldTable::default();
        t.insert("x-delivery-limit".into(), AMQPValue::LongInt(3));
        t
    };
    let (_c, ch) = b.channel().await;
    declare_durable(&ch, "poison", args()).await;
    ch.confirm_select(Default::default()).await.unwrap();
    send(&ch, "poison", b"p", persistent(0)).await;
    ch.basic_qos(1, Default::default()).await.unwrap();
    for expect in [None, Some(1)] {
        let m = get_with(&ch, "poison", false).await.expect("message");
        assert_eq!(delivery_count(&m), expect);
        m.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // Let the returns reach the ack file (it is written with the next batch of the log).
    send(&ch, "poison", b"flush", persistent(1)).await;
    b.kill9();

    let b = spawn(&dir).unwrap();
    let (_c, ch) = b.channel().await;
    declare_durable(&ch, "poison", args()).await;
    let m = get_with(&ch, "poison", false).await.expect("recovered");
    assert_eq!(&m.data[..], b"p");
    assert_eq!(delivery_count(&m), Some(2), "count kept");
    m.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let m = get_with(&ch, "poison", false)
        .await
        .expect("third return still allowed");
    assert_eq!(&m.data[..], b"p");
    m.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .unwrap();
    // The fourth return is over the limit of 3: dropped (no dead-letter exchange).
    let next = get_with(&ch, "poison", false)
        .await
        .expect("the other message");
    assert_eq!(&next.data[..], b"flush");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `x-delivery-count` header of a fetched message, if any.
fn delivery_count(m: &lapin::message::BasicGetMessage) -> Option<i64> {
    m.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
        .and_then(|v| v.as_long_long_int())
}
