//! A publish whose three frames arrive in one read is taken whole (`amqp::whole_publish`), a
//! shortcut past the frame-by-frame path. Each case here is sent both ways, the frames in one
//! write and then one by one, and must end the same way: the same close (code, text, method) or
//! the same message in the queue.

use super::*;
use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::BasicProperties;

struct Case {
    exchange: &'static str,
    immediate: bool,
    mandatory: bool,
    properties: BasicProperties,
    body: Vec<u8>,
}

impl Case {
    fn new() -> Case {
        Case {
            exchange: "",
            immediate: false,
            mandatory: false,
            properties: BasicProperties::default().with_delivery_mode(1),
            body: b"hello".to_vec(),
        }
    }

    fn frames(&self, routing_key: &str) -> Vec<Vec<u8>> {
        let publish = AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: self.exchange.into(),
                routing_key: routing_key.into(),
                mandatory: self.mandatory,
                immediate: self.immediate,
            })),
        );
        let header = AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: self.body.len() as u64,
                properties: self.properties.clone(),
            },
        );
        let body = AMQPFrame::Body(1, self.body.clone());
        vec![bytes(&publish), bytes(&header), bytes(&body)]
    }
}

/// Send the case (in one write, or frame by frame with pauses), then basic.get from the queue:
/// what comes back, as text.
async fn outcome(b: &Broker, q: &str, case: &Case, together: bool) -> String {
    let mut r = Raw::open(b).await;
    r.sock.set_nodelay(true).unwrap();
    r.open_channel(1).await;
    let frames = case.frames(q);
    if together {
        r.send_raw(&frames.concat()).await;
    } else {
        for f in &frames {
            r.send_raw(f).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    r.send(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: q.into(),
            no_ack: true,
        })),
    ))
    .await;
    let mut seen = Vec::new();
    while let Some(f) = r.recv().await {
        match f {
            AMQPFrame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(c))) => {
                seen.push(format!(
                    "channel {ch} close {} {} {}.{}",
                    c.reply_code, c.reply_text, c.class_id, c.method_id
                ));
                break;
            }
            AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                seen.push(format!(
                    "connection close {} {} {}.{}",
                    c.reply_code, c.reply_text, c.class_id, c.method_id
                ));
                break;
            }
            AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Return(m))) => {
                seen.push(format!("return {} {}", m.reply_code, m.reply_text))
            }
            AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))) => {
                seen.push("get-empty".into());
                break;
            }
            AMQPFrame::Body(_, body) => {
                // A returned message's body, or the got one's.
                let returned = seen.iter().any(|s| s.starts_with("return"))
                    && !seen.iter().any(|s| s.starts_with("body"));
                seen.push(format!("body {}", String::from_utf8_lossy(&body)));
                if !returned {
                    break;
                }
            }
            AMQPFrame::Header(_, h) => seen.push(format!("header {:?}", h.properties.expiration())),
            _ => {}
        }
    }
    seen.join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_taken_whole_ends_as_one_sent_frame_by_frame() {
    let b = Broker::start_with(|c| c.max_message_size = 1000).await;
    let (_c, ch) = b.channel().await;
    let q = unique("whole");
    declare(&ch, &q).await;
    let with = |f: &dyn Fn(&mut Case)| {
        let mut c = Case::new();
        f(&mut c);
        c
    };
    let cases = [
        ("delivered", Case::new(), "header None, body hello"),
        (
            "with an expiration",
            with(&|c| c.properties = c.properties.clone().with_expiration("60000".into())),
            "header Some(ShortString(\"60000\")), body hello",
        ),
        (
            "no such exchange",
            with(&|c| c.exchange = "no-such-exchange"),
            "channel 1 close 404 NOT_FOUND - no exchange 'no-such-exchange' in vhost '/' 60.40",
        ),
        (
            "immediate",
            with(&|c| c.immediate = true),
            "connection close 540 NOT_IMPLEMENTED - immediate=true 60.40",
        ),
        (
            "another user's user-id",
            with(&|c| c.properties = c.properties.clone().with_user_id("mallory".into())),
            "channel 1 close 406 PRECONDITION_FAILED - user_id property set to 'mallory' but \
             authenticated user was 'guest' 60.40",
        ),
        (
            "a bad expiration",
            with(&|c| c.properties = c.properties.clone().with_expiration("-1".into())),
            "channel 1 close 406 PRECONDITION_FAILED - invalid expiration '-1': value_negative 60.40",
        ),
        (
            "over the largest message size",
            with(&|c| c.body = vec![b'x'; 2000]),
            "channel 1 close 406 PRECONDITION_FAILED - message size 2000 is larger than \
             configured max size 1000 60.40",
        ),
        (
            "mandatory, to no queue",
            with(&|c| {
                c.mandatory = true;
                c.exchange = "amq.direct";
            }),
            "return 312 NO_ROUTE, header None, body hello, get-empty",
        ),
    ];
    for (what, case, expected) in cases {
        let apart = outcome(&b, &q, &case, false).await;
        let together = outcome(&b, &q, &case, true).await;
        assert_eq!(apart, together, "{what}: frame by frame, then in one write");
        assert_eq!(apart, expected, "{what}");
    }
    still_serving(&b).await;
}
