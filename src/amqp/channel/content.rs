//! Publish assembly: basic.publish, then a content header, then body frames, into one message
//! that is routed to its queues.

use super::*;
use crate::amqp::whole_publish::WholePublish;
use crate::broker::reply_to::{REPLY_PREFIX, REPLY_QUEUE};
use crate::broker::vhost::{Outcome, Publish};
use std::mem::take;

/// basic.publish's own checks: `immediate` (which RabbitMQ 3 dropped) and write access to the
/// exchange.
pub(super) fn check_publish(ctx: &mut Ctx, exchange: &[u8], immediate: bool) -> AmqpResult<()> {
    if immediate {
        return Err(AmqpError::not_implemented("immediate=true"));
    }
    ctx.allow(
        Perm::Write,
        Resource::Exchange,
        std::str::from_utf8(exchange).unwrap_or("\u{fffd}"),
    )
}

/// The publish being assembled. Its parts stay in place from frame to frame (a state moved
/// whole on every frame cost a few hundred bytes of copying per message); `stage` says which
/// frame comes next.
#[derive(Debug, Default)]
pub(super) struct Publishing {
    stage: Stage,
    exchange: Bytes,
    routing_key: Bytes,
    mandatory: bool,
    properties: Properties,
    size: u64,
    body: Body,
    received: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Stage {
    #[default]
    Idle,
    AwaitingHeader,
    AwaitingBody,
}

impl Publishing {
    pub(super) fn is_idle(&self) -> bool {
        self.stage == Stage::Idle
    }

    /// basic.publish arrived: its content header comes next.
    pub(super) fn start(&mut self, exchange: Bytes, routing_key: Bytes, mandatory: bool) {
        self.stage = Stage::AwaitingHeader;
        self.exchange = exchange;
        self.routing_key = routing_key;
        self.mandatory = mandatory;
    }

    /// Drop what was assembled (the channel goes away).
    pub(super) fn reset(&mut self) {
        *self = Publishing::default();
    }
}

/// A body being assembled: one frame's payload is kept as it is (zero-copy); only a body split
/// over several frames is copied into one buffer.
#[derive(Debug, Default)]
pub(super) enum Body {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    pub(super) fn push(&mut self, part: Bytes) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(part),
            Body::One(first) => {
                let mut b = BytesMut::with_capacity(first.len() + part.len());
                b.extend_from_slice(&first);
                b.extend_from_slice(&part);
                Body::Many(b)
            }
            Body::Many(mut b) => {
                b.extend_from_slice(&part);
                Body::Many(b)
            }
        }
    }

    pub(super) fn finish(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(b) => b.freeze(),
        }
    }
}

impl Channel {
    pub fn partial_content(&self) -> u64 {
        match self.publishing.stage {
            Stage::AwaitingBody => self.publishing.received,
            _ => 0,
        }
    }

    // ---- content ----------------------------------------------------------------------------

    pub fn on_header(
        &mut self,
        ctx: &mut Ctx,
        class_id: u16,
        body_size: u64,
        properties: Bytes,
    ) -> AmqpResult<()> {
        if self.closing {
            return Ok(());
        }
        if self.publishing.stage != Stage::AwaitingHeader {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                "expected method frame, got non method frame instead",
            ));
        }
        self.publishing.stage = Stage::Idle;
        let properties = self.content_properties(ctx, class_id, body_size, properties)?;
        let p = &mut self.publishing;
        if body_size == 0 {
            let (exchange, routing_key) = (take(&mut p.exchange), take(&mut p.routing_key));
            let mandatory = p.mandatory;
            return self.finish_publish(
                ctx,
                exchange,
                routing_key,
                mandatory,
                properties,
                Bytes::new(),
            );
        }
        p.stage = Stage::AwaitingBody;
        p.properties = properties;
        p.size = body_size;
        p.body = Body::Empty;
        p.received = 0;
        Ok(())
    }

    /// A content header's checks, whichever way it came: its class, the size it announces, and
    /// the properties parsed (expiration and user-id as RabbitMQ checks them).
    #[inline]
    fn content_properties(
        &self,
        ctx: &Ctx,
        class_id: u16,
        body_size: u64,
        properties: impl Into<crate::broker::message::Small>,
    ) -> AmqpResult<Properties> {
        if class_id != 60 {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("content header for class {class_id}, expected 60 (basic)"),
            ));
        }
        if body_size > ctx.max_message_size {
            return Err(AmqpError::precondition(format!(
                "message size {body_size} is larger than configured max size {}",
                ctx.max_message_size
            ))
            .at(60, 40));
        }
        let properties = Properties::parse(properties).map_err(|e| {
            AmqpError::connection(code::SYNTAX_ERROR, format!("invalid content header: {e}"))
        })?;
        if let Err(why) = properties.ttl_ms() {
            return Err(AmqpError::precondition(format!(
                "invalid expiration '{}': {why}",
                String::from_utf8_lossy(properties.expiration().unwrap_or_default())
            ))
            .at(60, 40));
        }
        if let Some(uid) = properties.user_id() {
            if uid != ctx.user.as_bytes() {
                return Err(AmqpError::precondition(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    String::from_utf8_lossy(uid),
                    ctx.user
                ))
                .at(60, 40));
            }
        }
        Ok(properties)
    }

    /// A publish taken whole off the read buffer (`amqp::whole_publish`): the checks of its
    /// method and of its content header, in the order its frames would meet them, then the
    /// publish. The channel is open and assembles nothing (the connection checked).
    #[inline(always)]
    pub fn on_whole_publish(&mut self, ctx: &mut Ctx, w: WholePublish) -> AmqpResult<()> {
        debug_assert!(!self.closing && self.publishing.is_idle());
        check_publish(ctx, &w.exchange, w.immediate).map_err(|e| e.at(60, 40))?;
        let properties = self.content_properties(ctx, 60, w.body.len() as u64, w.properties)?;
        self.finish_publish(
            ctx,
            w.exchange,
            w.routing_key,
            w.mandatory,
            properties,
            w.body,
        )
    }

    /// Whether the next frames may be a publish taken whole: the channel is open and is not
    /// in the middle of one.
    pub fn takes_whole_publish(&self) -> bool {
        !self.closing && self.publishing.is_idle()
    }

    pub fn on_body(&mut self, ctx: &mut Ctx, payload: Bytes) -> AmqpResult<()> {
        if self.closing {
            return Ok(());
        }
        let p = &mut self.publishing;
        if p.stage != Stage::AwaitingBody {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("unexpected content body frame on channel {}", self.id()),
            ));
        }
        p.received += payload.len() as u64;
        if p.received > p.size {
            return Err(AmqpError::connection(
                code::FRAME_ERROR,
                format!(
                    "content body of {} bytes exceeds the {} announced in its header",
                    p.received, p.size
                ),
            ));
        }
        p.body.push(payload);
        if p.received < p.size {
            return Ok(());
        }
        p.stage = Stage::Idle;
        let (exchange, routing_key) = (take(&mut p.exchange), take(&mut p.routing_key));
        let (mandatory, properties) = (p.mandatory, take(&mut p.properties));
        let body = take(&mut p.body).finish();
        self.finish_publish(ctx, exchange, routing_key, mandatory, properties, body)
    }

    pub(super) fn finish_publish(
        &mut self,
        ctx: &mut Ctx,
        exchange: Bytes,
        routing_key: impl Into<crate::broker::message::Small>,
        mandatory: bool,
        mut properties: Properties,
        body: impl Into<crate::broker::message::Small>,
    ) -> AmqpResult<()> {
        let (routing_key, body) = (routing_key.into(), body.into());
        crate::observe::bump(&self.shared.obs.stats.publish, 1);
        self.shared.obs.stats.received(body.len(), self.confirm);
        ctx.allow_topic(Perm::Write, &exchange, &routing_key)
            .map_err(|e| e.at(60, 40))?;
        self.address_replies(&mut properties)?;
        let p = Publish::new(
            exchange,
            routing_key,
            properties,
            body,
            ctx.memory,
            mandatory,
        )?;
        if self.confirm {
            self.publish_seq += 1;
            self.note_unconfirmed();
        }
        if let Some(tx) = &mut self.tx {
            // Check the exchange now, as RabbitMQ does, so the error comes with the publish.
            let name = p.exchange_name(ctx.vhost).map_err(|e| e.at(60, 40))?;
            if !name.is_empty() {
                ctx.vhost.exchange(name).map_err(|e| e.at(60, 40))?;
            }
            tx.publishes.push(p);
            return Ok(());
        }
        let mut outcome = Outcome::default();
        self.route_publish(ctx, &p, &mut outcome)
            .map_err(|e| e.at(60, 40))?;
        if self.confirm {
            if outcome.rejected {
                self.nack_publish(self.publish_seq);
            } else {
                self.publish_done(outcome.ticket, outcome.forwarded);
            }
        }
        Ok(())
    }

    /// A request with `reply_to: amq.rabbitmq.reply-to` gets this channel's reply address.
    fn address_replies(&self, properties: &mut Properties) -> AmqpResult<()> {
        if properties.reply_to() != Some(REPLY_QUEUE.as_bytes()) {
            return Ok(());
        }
        let Some(token) = &self.reply_token else {
            return Err(AmqpError::precondition("fast reply consumer does not exist").at(60, 40));
        };
        let props = properties.decode().ok_or_else(bad_header)?;
        let props = props.with_reply_to(sstr(&format!("{REPLY_PREFIX}{token}")));
        *properties = Properties::encode(&props).ok_or_else(bad_header)?;
        Ok(())
    }

    /// Hand the message to the vhost's `publish` (route, store, enqueue), then do the wire's
    /// part: count it, return it if mandatory and unroutable, remember a queue that asks this
    /// publisher to pause. What became of it is left in `outcome` (a fresh one): whether a full
    /// queue refused it (reject-publish), the message-log position a confirm must wait for
    /// (0: none), and the copies forwarded to other nodes it waits for too. (An out-parameter:
    /// the outcome moved back through two returns cost the hot path a stall per message.)
    #[inline]
    pub(super) fn route_publish(
        &mut self,
        ctx: &mut Ctx,
        p: &Publish,
        outcome: &mut Outcome,
    ) -> AmqpResult<()> {
        ctx.vhost.publish_into(p, &mut self.routes, outcome)?;
        if self.flow.is_none() {
            self.flow = outcome.flow.take();
        }
        let st = &self.shared.obs.stats;
        let routed = outcome.routed();
        crate::observe::bump(
            if routed {
                &st.routed
            } else if p.mandatory {
                &st.return_unroutable
            } else {
                &st.drop_unroutable
            },
            1,
        );
        if !routed && p.mandatory {
            self.return_unroutable(&p.msg);
        }
        Ok(())
    }

    /// basic.return 312 NO_ROUTE with the message, for a mandatory publish nothing took.
    fn return_unroutable(&self, msg: &Message) {
        let sh = &self.shared;
        sh.outbox.with(|b| {
            codec::encode_method(
                b,
                sh.id,
                AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: code::NO_ROUTE,
                    reply_text: "NO_ROUTE".into(),
                    exchange: sstr(&String::from_utf8_lossy(&msg.exchange)),
                    routing_key: sstr(&String::from_utf8_lossy(&msg.routing_key)),
                })),
            );
            codec::encode_content(b, sh.id, &msg.properties.raw, &msg.body, sh.frame_max);
        });
    }
}

fn bad_header() -> AmqpError {
    AmqpError::connection(code::SYNTAX_ERROR, "invalid content header")
}
