//! basic.consume: a consumer attached to its queue (a plain or quorum queue's, a stream's
//! reader, or the direct reply-to pseudo-queue's).

use super::methods::queue_name;
use super::*;
use crate::broker::args::refuse_global_qos;
use crate::broker::reply_to::{ReplySink, REPLY_QUEUE};
use crate::broker::vhost::random_token;

impl Channel {
    pub(super) fn on_consume(&mut self, ctx: &mut Ctx, c: basic::Consume) -> AmqpResult<()> {
        if c.queue.as_str() == REPLY_QUEUE {
            return self.on_consume_replies(ctx, c);
        }
        let name = queue_name(&self.current_queue, &c.queue)?;
        ctx.allow(Perm::Read, Resource::Queue, &name)?;
        let q = ctx.vhost.queue(&name, ctx.conn_id)?;
        let tag = if c.consumer_tag.as_str().is_empty() {
            generate_consumer_tag()
        } else {
            c.consumer_tag.as_str().to_owned()
        };
        // Consumers the broker cancelled (their queue was deleted: basic.cancel went to the
        // client) are gone, as in RabbitMQ: their tags are free again. Dropped here, where the
        // map grows, so it holds at most the live consumers plus those cancelled since the
        // last basic.consume.
        self.consumers
            .retain(|_, (c, _)| !c.cancelled.load(Ordering::Relaxed));
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        // As RabbitMQ: a stream's consume argument on another type of queue is refused.
        if q.stream().is_none()
            && !crate::broker::args::is_stream(&q.arguments)
            && c.arguments.inner().contains_key("x-stream-offset")
        {
            let kind = crate::broker::args::queue_type_module(&q.arguments);
            return Err(AmqpError::precondition(format!(
                "invalid arg 'x-stream-offset' for queue '{}' in vhost '{}' of queue type {kind}",
                q.name, q.vhost
            )));
        }
        if q.served_elsewhere() || q.replica().is_some() {
            // Served by another node: subscribe there first (its refusals are the answer). A
            // quorum queue's consumer goes the same way when this node leads the queue: it
            // follows the queue's leader from node to node.
            if q.life.quorum && self.shared.global_prefetch.load(Ordering::Relaxed) != 0 {
                return Err(refuse_global_qos(&q.name, &q.vhost));
            }
            let prefetch = self.prefetch;
            ctx.defer_remote(
                self.id(),
                replicated::Remote::Consume {
                    queue: q,
                    consume: c,
                    tag,
                    prefetch,
                },
            );
            return Ok(());
        }
        let stream = match q.stream() {
            None => None,
            Some(_) => Some(Arc::new(self.stream_consumer(&q, &c)?)),
        };
        if q.life.quorum && self.shared.global_prefetch.load(Ordering::Relaxed) != 0 {
            return Err(refuse_global_qos(&q.name, &q.vhost));
        }
        self.attach_consumer(ctx, q, c, tag, stream)
    }

    /// Attach a consumer to `q` (a proxy queue when another node serves it), answer
    /// consume-ok, dispatch.
    pub(super) fn attach_consumer(
        &mut self,
        ctx: &mut Ctx,
        q: Arc<Queue>,
        c: basic::Consume,
        tag: String,
        stream: Option<Arc<crate::broker::stream::StreamConsumer>>,
    ) -> AmqpResult<()> {
        let consumer = Arc::new(Consumer {
            stream,
            tag: tag.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: self.prefetch,
            priority: c
                .arguments
                .inner()
                .get("x-priority")
                .and_then(crate::broker::args::as_int)
                .unwrap_or(0),
            unacked: AtomicU32::new(0),
            cancelled: AtomicBool::new(false),
            sink: self.shared.clone(),
            arguments: c.arguments.clone(),
            follower: Default::default(),
        });
        // consume-ok must reach the client before the first delivery: attach, reply, dispatch.
        q.add_consumer(consumer.clone())?;
        if !c.nowait {
            self.send(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(
                basic::ConsumeOk {
                    consumer_tag: sstr(&tag),
                },
            )));
        }
        if !c.no_ack {
            self.watch_acks(ctx, &q);
        }
        self.shared.obs.consumer_added(crate::observe::ConsumerObs {
            tag: tag.clone(),
            queue: q.name.clone(),
            vhost: q.vhost.clone(),
            exclusive: consumer.exclusive,
            ack_required: !consumer.no_ack,
            prefetch: consumer.prefetch,
            priority: consumer.priority,
            arguments: consumer.arguments.clone(),
            stream: consumer.stream.is_some(),
        });
        q.dispatch();
        self.consumers.insert(tag, (consumer, q));
        Ok(())
    }

    /// A consumer of a stream queue: acknowledgements and a per-consumer prefetch are required
    /// (its credit), and its arguments say where it starts and what it reads.
    fn stream_consumer(
        &self,
        q: &Queue,
        c: &basic::Consume,
    ) -> AmqpResult<crate::broker::stream::StreamConsumer> {
        // RabbitMQ's order: the arguments, then the prefetch, then the ack mode.
        let spec = crate::broker::stream::args::consumer_spec(
            &c.arguments,
            q.clock.wall_ms(),
            &q.name,
            &q.vhost,
        )?;
        let rs = format!("queue '{}' in vhost '{}'", q.name, q.vhost);
        if self.prefetch == 0 {
            return Err(AmqpError::precondition(format!(
                "consumer prefetch count is not set for '{rs}'"
            )));
        }
        if c.no_ack {
            return Err(AmqpError::not_implemented(format!(
                "automatic acknowledgement not supported by stream queues {rs}"
            )));
        }
        Ok(crate::broker::stream::StreamConsumer::new(spec))
    }

    /// basic.consume from amq.rabbitmq.reply-to: this channel becomes reachable for replies.
    fn on_consume_replies(&mut self, ctx: &mut Ctx, c: basic::Consume) -> AmqpResult<()> {
        if !c.no_ack {
            return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
        }
        if self.shared.reply_tag.lock().is_some() {
            return Err(AmqpError::precondition("reply consumer already set"));
        }
        let tag = if c.consumer_tag.as_str().is_empty() {
            generate_consumer_tag()
        } else {
            c.consumer_tag.as_str().to_owned()
        };
        let token = random_token();
        let sink: Arc<dyn ReplySink> = self.shared.clone();
        ctx.vhost.replies.register(&token, Arc::downgrade(&sink));
        *self.shared.reply_tag.lock() = Some(tag.clone());
        self.reply_token = Some(token);
        if !c.nowait {
            self.send(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(
                basic::ConsumeOk {
                    consumer_tag: sstr(&tag),
                },
            )));
        }
        Ok(())
    }
}
