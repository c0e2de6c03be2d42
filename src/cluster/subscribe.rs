//! Consumers through any node: the wire between the node a client consumes through (B) and the
//! node its queue is served from (A, the queue's home). The model on both sides is
//! `broker::remote`; this module only carries its requests and answers over the link
//! (service [`super::types::CONSUME`]).
//!
//! B opens a *session* with A (an id B chooses at random; A creates it on the first request that
//! names it). Within it:
//! - `Subscribe` attaches a proxy consumer to A's queue, with a credit (how many deliveries A may
//!   send before B grants more);
//! - `Pull` is a long poll: A answers with a batch of deliveries as soon as it has some (or empty
//!   after about a second). Each batch has a sequence number; the next `Pull` says which one B
//!   received, and a batch B did not receive is sent again. One `Pull` is in flight per session;
//! - `Settle` carries B's acks, requeues and drops (by A's delivery ids), credit grants and
//!   cancels, batched;
//! - `Get`, `Purge`, `Counts` are single calls.
//!
//! A session that A has not heard from for a few seconds (no call, no pull in flight) is ended
//! by A: its consumers detach and everything delivered and unsettled goes back to its queues. B
//! ends a session it could not reach A for as long, and cancels its consumers.
//!
//! Never trust the wire: unknown sessions, subscriptions or delivery ids are ignored (logged).

use super::meta::Refusal;
use amq_protocol::types::FieldTable;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How long A holds a `Pull` with nothing to send before it answers empty.
pub const HOLD: Duration = Duration::from_millis(1000);
/// A session not heard from for this long (and no pull in flight) is ended by A; B ends a
/// session whose pulls have failed for this long.
pub const LEASE: Duration = Duration::from_secs(3);
/// The most bytes of messages in one `Pull` answer (at least one message).
pub const BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Subscribe {
        session: u64,
        /// B's id for the subscription (unique in the session).
        sub: u64,
        vhost: String,
        queue: String,
        tag: String,
        no_ack: bool,
        exclusive: bool,
        priority: i64,
        arguments: FieldTable,
        /// Deliveries A may send before B grants more.
        credit: u64,
    },
    Pull {
        session: u64,
        /// The last batch B received (0: none).
        received: u64,
        /// The subscriptions B still has (A answers which of them it no longer serves).
        subs: Vec<u64>,
    },
    Settle {
        session: u64,
        acks: Vec<u64>,
        requeue: Vec<u64>,
        drop: Vec<u64>,
        /// (subscription, total credit granted since it started).
        grants: Vec<(u64, u64)>,
        cancel: Vec<u64>,
    },
    Get {
        session: u64,
        vhost: String,
        queue: String,
        no_ack: bool,
    },
    Purge {
        vhost: String,
        queue: String,
    },
    Counts {
        vhost: String,
        queue: String,
    },
    /// B is done with the session (best effort: A's lease ends it anyway).
    End {
        session: u64,
    },
}

/// One message delivered through a subscription (or a get).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub sub: u64,
    /// A's id for settling it.
    pub id: u64,
    pub redelivered: bool,
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
}

impl Delivery {
    pub fn size(&self) -> usize {
        self.body.len() + self.properties.len() + self.routing_key.len() + 48
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Subscribed {
        sub: u64,
    },
    Batch {
        /// 0: nothing new.
        seq: u64,
        deliveries: Vec<Delivery>,
        /// Subscriptions A no longer serves (their queue went away): B cancels them.
        gone: Vec<u64>,
    },
    /// A does not know the session (it restarted, or ended it): B ends it too.
    UnknownSession,
    Done,
    Got {
        delivery: Option<Delivery>,
        /// Messages still ready.
        left: u32,
    },
    Count {
        messages: u32,
        consumers: u32,
    },
    Refused(Refusal),
}

/// The model's side of the service on the queue's node.
pub trait ConsumeService: Send + Sync + 'static {
    /// Serve one request from the node named `from`.
    fn serve(&self, from: String, req: Request) -> Pin<Box<dyn Future<Output = Reply> + Send>>;
}

pub fn encode<T: Serialize>(v: &T) -> Result<Bytes, String> {
    postcard::to_stdvec(v)
        .map(Bytes::from)
        .map_err(|e| format!("cannot encode: {e}"))
}

pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("undecodable consume request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests and replies survive postcard (field tables included).
    #[test]
    fn round_trip() {
        let mut args = FieldTable::default();
        args.insert(
            "x-priority".into(),
            amq_protocol::types::AMQPValue::LongInt(3),
        );
        let r = Request::Subscribe {
            session: 1,
            sub: 2,
            vhost: "/".into(),
            queue: "q".into(),
            tag: "t".into(),
            no_ack: false,
            exclusive: true,
            priority: 3,
            arguments: args,
            credit: 10,
        };
        let back: Request = decode(&encode(&r).unwrap()).unwrap();
        assert!(matches!(
            back,
            Request::Subscribe {
                credit: 10,
                exclusive: true,
                ..
            }
        ));
        let b = Reply::Batch {
            seq: 2,
            deliveries: vec![Delivery {
                sub: 1,
                id: 9,
                redelivered: true,
                exchange: Bytes::from_static(b"x"),
                routing_key: Bytes::from_static(b"k"),
                properties: Bytes::from_static(b"\0\0"),
                body: Bytes::from_static(b"body"),
            }],
            gone: vec![4],
        };
        let Reply::Batch {
            deliveries, gone, ..
        } = decode(&encode(&b).unwrap()).unwrap()
        else {
            panic!("a batch")
        };
        assert_eq!(&deliveries[0].body[..], b"body");
        assert_eq!(gone, vec![4]);
        assert!(decode::<Request>(b"\xff\xff\xff").is_err());
    }
}
