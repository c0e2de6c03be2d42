//! x-overflow reject-publish-dlx: what a full queue refuses is nacked and dead-lettered.

use super::{dead_letter_queue, declare_with, s, str_header};
use crate::harness::*;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::BasicProperties;

/// reject-publish-dlx: what a full queue refuses is nacked to the publisher and dead-lettered
/// (reason maxlen); what it holds stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_dlx_nacks_and_dead_letters() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    let dlq = dead_letter_queue(&ch, "full").await;
    let q = unique("rpdlx");
    declare_with(
        &ch,
        &q,
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-dead-letter-exchange", s("amq.direct")),
            ("x-dead-letter-routing-key", s("full")),
        ],
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut outcome = Vec::new();
    for body in [b"kept".as_slice(), b"refused"] {
        let c = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        outcome.push(c.is_ack());
    }
    assert_eq!(outcome, vec![true, false]);
    let m = get_one(&ch, &dlq)
        .await
        .expect("refused message dead-lettered");
    assert_eq!(m.delivery.data, b"refused");
    assert_eq!(
        str_header(&m.delivery.properties, "x-first-death-reason").as_deref(),
        Some("maxlen")
    );
    let m = get_one(&ch, &q).await.unwrap();
    assert_eq!(m.delivery.data, b"kept");
}
