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
    /// Ask the node that serves a queue (consume, get, purge, passive declare).
    Remote(Remote),
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

/// A method on a queue another node serves (consume, get, purge, passive declare): the
/// connection asks that node, then the channel answers.
#[derive(Debug)]
pub enum Remote {
    Consume {
        queue: Arc<Queue>,
        consume: basic::Consume,
        tag: String,
        prefetch: u32,
    },
    Get {
        queue: Arc<Queue>,
        no_ack: bool,
    },
    Purge {
        queue: Arc<Queue>,
        nowait: bool,
    },
    Declare {
        queue: Arc<Queue>,
        nowait: bool,
    },
}

/// What the serving node answered.
#[derive(Debug)]
pub enum RemoteDone {
    Consumed {
        queue: Arc<Queue>,
        consume: basic::Consume,
        tag: String,
    },
    Got {
        queue: Arc<Queue>,
        got: Option<(QEntry, u32)>,
        no_ack: bool,
    },
    Purged {
        messages: u32,
        nowait: bool,
    },
    Declared {
        name: String,
        messages: u32,
        consumers: u32,
        nowait: bool,
    },
}

impl Remote {
    /// Ask the serving node (the model does: `broker::remote`).
    pub async fn run(
        self,
        broker: &crate::broker::Broker,
        vhost: &Arc<VHost>,
    ) -> AmqpResult<RemoteDone> {
        let r = &broker.remote;
        Ok(match self {
            Remote::Consume {
                queue,
                consume,
                tag,
                prefetch,
            } => {
                let spec = crate::broker::remote::ConsumeSpec {
                    tag: tag.clone(),
                    no_ack: consume.no_ack,
                    exclusive: consume.exclusive,
                    priority: consume
                        .arguments
                        .inner()
                        .get("x-priority")
                        .and_then(crate::broker::args::as_int)
                        .unwrap_or(0),
                    arguments: consume.arguments.clone(),
                    prefetch,
                };
                let queue = r.subscribe(vhost, &queue, spec).await?;
                RemoteDone::Consumed {
                    queue,
                    consume,
                    tag,
                }
            }
            Remote::Get { queue, no_ack } => match r.get(vhost, &queue, no_ack).await? {
                Some((q, entry, left)) => RemoteDone::Got {
                    queue: q,
                    got: Some((entry, left)),
                    no_ack,
                },
                None => RemoteDone::Got {
                    queue,
                    got: None,
                    no_ack,
                },
            },
            Remote::Purge { queue, nowait } => RemoteDone::Purged {
                messages: r.purge(vhost, &queue).await?,
                nowait,
            },
            Remote::Declare { queue, nowait } => {
                let (messages, consumers) = r.counts(vhost, &queue).await?;
                RemoteDone::Declared {
                    name: queue.name.clone(),
                    messages,
                    consumers,
                    nowait,
                }
            }
        })
    }
}

impl RemoteDone {
    /// The channel went away meanwhile: undo what the serving node did for it.
    pub fn abandon(self) {
        match self {
            RemoteDone::Consumed { queue, .. } => {
                if let Some(p) = &queue.proxy {
                    p.cancel();
                }
            }
            RemoteDone::Got {
                queue,
                got: Some((entry, _)),
                no_ack: false,
            } => queue.settle_remote(Vec::new(), vec![entry], Vec::new()),
            _ => {}
        }
    }
}

impl Ctx<'_> {
    /// Defer a method on a queue another node serves.
    pub(super) fn defer_remote(&mut self, channel: u16, work: Remote) {
        *self.deferred = Some(Deferred {
            channel,
            work: Work::Remote(work),
        });
    }
}

impl Channel {
    /// The serving node answered: answer the client.
    pub fn finish_remote(&mut self, ctx: &mut Ctx, done: RemoteDone) -> AmqpResult<()> {
        match done {
            RemoteDone::Consumed {
                queue,
                consume,
                tag,
            } => self.attach_consumer(ctx, queue, consume, tag, None),
            RemoteDone::Got { queue, got, no_ack } => {
                self.answer_get(ctx, queue, got, no_ack);
                Ok(())
            }
            RemoteDone::Purged { messages, nowait } => {
                if !nowait {
                    self.send(AMQPClass::Queue(queue::AMQPMethod::PurgeOk(
                        queue::PurgeOk {
                            message_count: messages,
                        },
                    )));
                }
                Ok(())
            }
            RemoteDone::Declared {
                name,
                messages,
                consumers,
                nowait,
            } => {
                if !nowait {
                    self.send(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(
                        queue::DeclareOk {
                            queue: sstr(&name),
                            message_count: messages,
                            consumer_count: consumers,
                        },
                    )));
                }
                Ok(())
            }
        }
    }
}
