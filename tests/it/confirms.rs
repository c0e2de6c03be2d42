//! Publisher confirms, mandatory returns, and transactions.

use crate::harness::*;
use lapin::options::*;
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_ack_every_publish() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("confirm");
    declare(&ch, &q).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..1000u32 {
        pending.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(p.await.unwrap().is_ack());
    }
    let ok = passive(&ch, &q).await.unwrap();
    assert_eq!(ok.message_count(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_unroutable_is_returned_then_acked() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let conf = ch
        .basic_publish(
            "amq.direct".into(),
            "nobody-home".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost?",
            BasicProperties::default().with_message_id("m1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(conf.is_ack());
    let ret = conf.take_message().expect("basic.return before the ack");
    assert_eq!(ret.reply_code, 312);
    assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(ret.delivery.data, b"lost?");
    assert_eq!(
        ret.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m1")
    );
    // Without mandatory, an unroutable message is simply dropped (and still confirmed).
    let conf = ch
        .basic_publish(
            "amq.direct".into(),
            "nobody".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(conf.is_ack() && conf.take_message().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_commit_and_rollback() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let q = unique("tx");
    declare(&ch, &q).await;
    ch.tx_select().await.unwrap();
    publish(&ch, "", &q, b"a").await;
    publish(&ch, "", &q, b"b").await;
    let probe = _c.create_channel().await.unwrap();
    let count = |probe: lapin::Channel, q: String| async move {
        passive(&probe, &q).await.unwrap().message_count()
    };
    assert_eq!(
        count(probe.clone(), q.clone()).await,
        0,
        "nothing visible before commit"
    );
    ch.tx_commit().await.unwrap();
    assert_eq!(count(probe.clone(), q.clone()).await, 2);
    publish(&ch, "", &q, b"c").await;
    ch.tx_rollback().await.unwrap();
    assert_eq!(
        count(probe.clone(), q.clone()).await,
        2,
        "rolled-back publish is discarded"
    );

    // Acks inside a transaction take effect on commit; rolled back, they are undone.
    let mut cons = consume(&ch, &q, false).await;
    let ds = take(&mut cons, 2).await;
    ds[0].acker.ack(BasicAckOptions::default()).await.unwrap();
    ch.tx_rollback().await.unwrap();
    ds[0].acker.ack(BasicAckOptions::default()).await.unwrap();
    ds[1].acker.ack(BasicAckOptions::default()).await.unwrap();
    ch.tx_commit().await.unwrap();
    ch.basic_cancel(cons.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert_eq!(count(probe.clone(), q.clone()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_and_tx_are_exclusive() {
    let b = Broker::start().await;
    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let e = ch.tx_select().await.unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    let ch = c.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    let e = ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(406), "{e}");
    let ch = c.create_channel().await.unwrap();
    let e = ch.tx_commit().await.unwrap_err();
    assert_eq!(
        code(&e),
        Some(406),
        "commit on a non-transactional channel: {e}"
    );
}
