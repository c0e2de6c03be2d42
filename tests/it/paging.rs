//! Paging: beyond `queue_ram_budget_bytes`, a queue keeps its messages' bodies on disk only and
//! reads them back, in order, as consumers reach them: persistent messages of durable queues from
//! the message log, the others (transient ones) from the spill log.

use crate::child::du;
use crate::harness::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use std::time::Duration;

fn body(i: usize) -> Vec<u8> {
    let mut b = format!("{i:08}").into_bytes();
    b.resize(1024, (i % 251) as u8);
    b
}

async fn publish_persistent(ch: &Channel, key: &str, n: usize, props: BasicProperties) {
    let mut confirms = Vec::new();
    for i in 0..n {
        confirms.push(
            ch.basic_publish(
                "".into(),
                key.into(),
                BasicPublishOptions::default(),
                &body(i),
                props.clone().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
}

async fn publish_transient(ch: &Channel, key: &str, from: usize, n: usize) {
    let mut confirms = Vec::new();
    for i in from..from + n {
        confirms.push(
            ch.basic_publish(
                "".into(),
                key.into(),
                BasicPublishOptions::default(),
                &body(i),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
}

/// basic.get the head (body 0) and nack it back into the queue.
async fn requeue_the_first(ch: &Channel, q: &str) {
    let first = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.delivery.data, body(0));
    first
        .delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Queue arguments: messages expire after `ttl` ms into queue `dlq` (default exchange).
fn ttl_into(ttl: i32, dlq: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(ttl));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dlq.into()),
    );
    args
}

/// Wait (up to 5 s) for a log to be down to its current segment.
async fn segments_go(log: &warren::store::MessageLog) {
    for _ in 0..250 {
        if log.segment_count() <= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("segments left: {}", log.segment_count());
}

async fn small_budget() -> Broker {
    Broker::start_with(|c| c.queue_ram_budget_bytes = 64 << 10).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_persistent_backlog_stays_on_disk_and_comes_back_in_order() {
    let b = small_budget().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = unique("paged");
    declare_durable(&ch, &q, FieldTable::default()).await;
    publish_persistent(&ch, &q, 3000, BasicProperties::default()).await;
    // 3 MB of bodies queued; only about the 64 KiB budget of them is in memory.
    let used = b.handle.state.broker.memory.used();
    assert!(
        used < 512 << 10,
        "bodies paged out: {used} bytes of messages in memory"
    );
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 3000);
    // Take some, requeue them: they go back before the paged ones.
    requeue_the_first(&ch, &q).await;
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&ch, &q, false).await;
    for i in 0..3000 {
        let d = take(&mut consumer, 1).await.pop().unwrap();
        assert_eq!(d.data, body(i), "message {i} in order, intact");
        assert_eq!(d.redelivered, i == 0);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    none_within(&mut consumer, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_messages_expire_into_the_dead_letter_queue_with_their_bodies() {
    let b = small_budget().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = unique("paged-ttl");
    let dlq = unique("paged-dlq");
    declare(&ch, &dlq).await;
    let args = ttl_into(300, &dlq);
    declare_durable(&ch, &q, args).await;
    publish_persistent(&ch, &q, 500, BasicProperties::default()).await;
    let mut consumer = consume(&ch, &dlq, true).await;
    let got = take(&mut consumer, 500).await;
    for (i, d) in got.iter().enumerate() {
        assert_eq!(
            d.data,
            body(i),
            "dead-lettered message {i} intact, in order"
        );
    }
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_paged_messages_gives_the_disk_space_back() {
    let b = Broker::start_with(|c| {
        c.queue_ram_budget_bytes = 64 << 10;
        c.segment_size_bytes = 1 << 20;
    })
    .await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = unique("paged-purge");
    declare_durable(&ch, &q, FieldTable::default()).await;
    let dir = b.handle.state.config.data_dir.join("messages");
    let before = du(&dir);
    publish_persistent(&ch, &q, 4000, BasicProperties::default()).await;
    assert!(du(&dir) > before + (3 << 20));
    let n = ch
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 4000);
    let mut after = u64::MAX;
    for _ in 0..100 {
        after = du(&dir);
        if after <= before + (1 << 20) + (64 << 10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        after <= before + (1 << 20) + (64 << 10),
        "back within a segment: {before} -> {after}"
    );
}

/// Regression: with the disk full, the writer retried its batch forever and never deleted the
/// segments consumers had emptied meanwhile — the very space it waited for — and a paged message
/// whose record was not written yet was dropped after a timeout instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_writes_failing_emptied_segments_still_go_and_unwritten_messages_wait() {
    let b = Broker::start_with(|c| {
        c.queue_ram_budget_bytes = 64 << 10;
        c.segment_size_bytes = 1 << 20;
    })
    .await;
    let log = b.handle.state.broker.messages().unwrap().clone();
    let dir = b.handle.state.config.data_dir.join("messages");
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = unique("full");
    declare_durable(&ch, &q, FieldTable::default()).await;
    publish_persistent(&ch, &q, 1000, BasicProperties::default()).await;
    let segments_before = std::fs::read_dir(&dir).unwrap().count();

    // The disk is "full" from now on: these are neither written nor confirmed.
    log.inject_write_failure(true);
    // The publishes go from their own task: once the disk alarm blocks the publisher's
    // connection, the broker stops reading it and lapin's writes wait for socket room.
    let publisher = ch.clone();
    let queue = q.clone();
    let sender = tokio::spawn(async move {
        let mut pending = Vec::new();
        for i in 1000..1300 {
            pending.push(
                publisher
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body(i),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap(),
            );
        }
        let mut acks = 0;
        for c in pending {
            acks += c.await.unwrap().is_ack() as usize;
        }
        acks
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !sender.is_finished(),
        "no confirms while nothing is on disk"
    );

    // Consumers drain what was written; the segments they empty are deleted even now.
    let (_c2, rx) = b.channel().await;
    rx.basic_qos(200, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&rx, &q, false).await;
    for i in 0..1000 {
        let d = take(&mut consumer, 1).await.pop().unwrap();
        assert_eq!(d.data, body(i));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let mut segments_now = usize::MAX;
    for _ in 0..100 {
        segments_now = std::fs::read_dir(&dir).unwrap().count();
        if segments_now < segments_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        segments_now < segments_before,
        "emptied segments deleted while writes fail: {segments_before} -> {segments_now} files"
    );
    // The unwritten ones wait (paged out, not yet readable): nothing is dropped.
    none_within(&mut consumer, 300).await;
    // (Asked on the consumer's connection: the publisher's is blocked by the disk alarm, and may
    // not have had all its publishes read yet.)
    assert!(passive(&rx, &q).await.unwrap().message_count() <= 300);

    // Space is back: they are written, confirmed, and delivered in order.
    log.inject_write_failure(false);
    let acks = tokio::time::timeout(Duration::from_secs(30), sender)
        .await
        .expect("confirms arrive once writes succeed")
        .unwrap();
    assert_eq!(acks, 300);
    for i in 1000..1300 {
        let d = take(&mut consumer, 1).await.pop().unwrap();
        assert_eq!(d.data, body(i), "message {i}");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

/// Transient messages were never paged: a backlog of them stayed in RAM until the memory alarm
/// blocked every publisher. Now beyond the budget they go to the spill log, in a transient queue
/// as in a durable one, and come back intact and in order (a requeued one first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transient_backlog_is_spilled_to_disk_and_comes_back_in_order() {
    let b = Broker::start_with(|c| {
        c.queue_ram_budget_bytes = 64 << 10;
        c.segment_size_bytes = 1 << 20;
    })
    .await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let spill = b.handle.state.broker.spill().unwrap().clone();
    let transient_q = unique("spilled");
    let durable_q = unique("spilled-durable");
    declare(&ch, &transient_q).await;
    declare_durable(&ch, &durable_q, FieldTable::default()).await;
    for q in [&transient_q, &durable_q] {
        publish_transient(&ch, q, 0, 3000).await;
    }
    // 6 MB of bodies queued; only about twice the 64 KiB budget of them is in memory.
    let used = b.handle.state.broker.memory.used();
    assert!(used < 1 << 20, "bodies spilled: {used} bytes in memory");
    assert!(spill.segment_count() >= 5, "{}", spill.segment_count());
    for q in [&transient_q, &durable_q] {
        assert_eq!(passive(&ch, q).await.unwrap().message_count(), 3000);
        requeue_the_first(&ch, q).await;
    }
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    for q in [&transient_q, &durable_q] {
        let mut consumer = consume(&ch, q, false).await;
        for i in 0..3000 {
            let d = take(&mut consumer, 1).await.pop().unwrap();
            assert_eq!(d.data, body(i), "{q}: message {i} in order, intact");
            assert_eq!(d.redelivered, i == 0);
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
        none_within(&mut consumer, 100).await;
    }
    // Read back, the spill's records are released: its segments go.
    segments_go(&spill).await;
}

/// Spilled messages that expire are dead-lettered with their bodies; a purge releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilled_messages_expire_with_their_bodies_and_purge_frees_the_spill() {
    let b = Broker::start_with(|c| {
        c.queue_ram_budget_bytes = 64 << 10;
        c.segment_size_bytes = 1 << 20;
    })
    .await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let spill = b.handle.state.broker.spill().unwrap().clone();
    let q = unique("spill-ttl");
    let dlq = unique("spill-dlq");
    declare(&ch, &dlq).await;
    let args = ttl_into(60_000, &dlq);
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    publish_transient(&ch, &q, 0, 500).await;
    b.advance(Duration::from_secs(61)).await;
    let mut consumer = consume(&ch, &dlq, true).await;
    let got = take(&mut consumer, 500).await;
    for (i, d) in got.iter().enumerate() {
        assert_eq!(
            d.data,
            body(i),
            "dead-lettered message {i} intact, in order"
        );
    }
    assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 0);

    let p = unique("spill-purge");
    declare(&ch, &p).await;
    publish_transient(&ch, &p, 0, 4000).await;
    assert!(spill.segment_count() >= 3, "{}", spill.segment_count());
    let n = ch
        .queue_purge(p.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 4000);
    segments_go(&spill).await;
}
