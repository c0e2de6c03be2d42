//! Definition methods in a cluster: the channel hands the change to the connection, which
//! proposes it to the metadata group and answers once this node has applied it (reading no
//! further frames meanwhile, as a client waits for a declare-ok anyway). A lookup that finds
//! nothing first catches up with the cluster, then looks again, so that what another node has
//! confirmed is never "not found" here.

use super::*;
use crate::cluster::meta::{Applied, MetaOp};

/// The reply a deferred method sends once applied.
#[derive(Debug)]
pub enum Reply {
    /// Sent as is.
    Fixed(AMQPClass),
    /// queue.declare-ok for this queue, with the applied counts.
    QueueDeclareOk(String),
    /// queue.delete-ok with the applied message count.
    QueueDeleteOk,
}

/// What the connection does for a channel before reading further frames.
#[derive(Debug)]
pub enum Work {
    Propose {
        op: MetaOp,
        reply: Reply,
        nowait: bool,
    },
    /// Catch up with the cluster, then run the method again (it found nothing the first time).
    Retry {
        class_id: u16,
        method_id: u16,
        method: Method,
    },
}

#[derive(Debug)]
pub struct Deferred {
    pub channel: u16,
    pub work: Work,
}

impl Ctx<'_> {
    /// In a cluster: defer `op` (true), to be answered with `reply` once applied here.
    pub(super) fn replicate(
        &mut self,
        channel: u16,
        op: MetaOp,
        reply: Reply,
        nowait: bool,
    ) -> bool {
        if self.cluster.is_none() {
            return false;
        }
        *self.deferred = Some(Deferred {
            channel,
            work: Work::Propose { op, reply, nowait },
        });
        true
    }
}

/// Methods that only read definitions: when they find nothing in a cluster, they are retried
/// after catching up.
pub fn reads_definitions(m: &Method) -> bool {
    let Method::Other(c) = m else {
        return false;
    };
    matches!(
        &**c,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            passive: true,
            ..
        })) | AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            passive: true,
            ..
        })) | AMQPClass::Basic(basic::AMQPMethod::Consume(_))
            | AMQPClass::Basic(basic::AMQPMethod::Get(_))
            | AMQPClass::Queue(queue::AMQPMethod::Purge(_))
    )
}

impl Channel {
    /// The proposal was applied here: answer as the single node would have.
    pub fn finish_replicated(
        &mut self,
        applied: Applied,
        reply: Reply,
        nowait: bool,
    ) -> AmqpResult<()> {
        if let Some(r) = &applied.error {
            return Err(crate::broker::replicated::refusal_error(r));
        }
        if nowait {
            return Ok(());
        }
        let m = match reply {
            Reply::Fixed(m) => m,
            Reply::QueueDeclareOk(name) => {
                self.current_queue = Some(name.clone());
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: sstr(&name),
                    message_count: applied.messages,
                    consumer_count: applied.consumers,
                }))
            }
            Reply::QueueDeleteOk => {
                AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                    message_count: applied.messages,
                }))
            }
        };
        self.send(m);
        Ok(())
    }
}
