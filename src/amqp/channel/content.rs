//! Publish assembly: basic.publish, then a content header, then body frames, into one message
//! that is routed to its queues.

use super::*;
use crate::broker::queue::store_message;
use crate::broker::reply_to::{REPLY_PREFIX, REPLY_QUEUE};

#[derive(Debug)]
pub(super) enum Publishing {
    Idle,
    AwaitingHeader {
        exchange: Bytes,
        routing_key: Bytes,
        mandatory: bool,
    },
    AwaitingBody {
        exchange: Bytes,
        routing_key: Bytes,
        mandatory: bool,
        properties: Properties,
        size: u64,
        body: Body,
        received: u64,
    },
}

/// A body being assembled: one frame's payload is kept as it is (zero-copy); only a body split
/// over several frames is copied into one buffer.
#[derive(Debug)]
pub(super) enum Body {
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
        match &self.publishing {
            Publishing::AwaitingBody { received, .. } => *received,
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
        let Publishing::AwaitingHeader {
            exchange,
            routing_key,
            mandatory,
        } = std::mem::replace(&mut self.publishing, Publishing::Idle)
        else {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                "expected method frame, got non method frame instead",
            ));
        };
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
        if body_size == 0 {
            return self.finish_publish(
                ctx,
                exchange,
                routing_key,
                mandatory,
                properties,
                Bytes::new(),
            );
        }
        self.publishing = Publishing::AwaitingBody {
            exchange,
            routing_key,
            mandatory,
            properties,
            size: body_size,
            body: Body::Empty,
            received: 0,
        };
        Ok(())
    }

    pub fn on_body(&mut self, ctx: &mut Ctx, payload: Bytes) -> AmqpResult<()> {
        if self.closing {
            return Ok(());
        }
        let Publishing::AwaitingBody {
            size,
            body,
            received,
            ..
        } = &mut self.publishing
        else {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("unexpected content body frame on channel {}", self.id()),
            ));
        };
        *received += payload.len() as u64;
        if *received > *size {
            return Err(AmqpError::connection(
                code::FRAME_ERROR,
                format!(
                    "content body of {} bytes exceeds the {} announced in its header",
                    received, size
                ),
            ));
        }
        body.push(payload);
        if *received < *size {
            return Ok(());
        }
        let Publishing::AwaitingBody {
            exchange,
            routing_key,
            mandatory,
            properties,
            body,
            ..
        } = std::mem::replace(&mut self.publishing, Publishing::Idle)
        else {
            unreachable!()
        };
        let body = body.finish();
        self.finish_publish(ctx, exchange, routing_key, mandatory, properties, body)
    }

    pub(super) fn finish_publish(
        &mut self,
        ctx: &mut Ctx,
        exchange: Bytes,
        routing_key: Bytes,
        mandatory: bool,
        properties: Properties,
        body: Bytes,
    ) -> AmqpResult<()> {
        crate::observe::bump(&self.shared.obs.stats.publish, 1);
        let properties = self.address_replies(properties)?;
        let (properties, cc) = sender_selected(properties)?;
        let msg = Arc::new(Message::new(
            exchange.clone(),
            routing_key,
            properties,
            body,
            ctx.memory.clone(),
        ));
        if self.confirm {
            self.publish_seq += 1;
            self.note_unconfirmed();
        }
        if let Some(tx) = &mut self.tx {
            // Check the exchange now, as RabbitMQ does, so the error comes with the publish.
            let name = std::str::from_utf8(&exchange).unwrap_or("\u{fffd}");
            if !name.is_empty() {
                ctx.vhost.exchange(name).map_err(|e| e.at(60, 40))?;
            }
            tx.publishes.push((exchange, msg, mandatory, cc));
            return Ok(());
        }
        let (rejected, ticket) = self
            .route_publish(ctx, &exchange, msg, mandatory, &cc)
            .map_err(|e| e.at(60, 40))?;
        if self.confirm {
            if rejected {
                self.nack_publish(self.publish_seq);
            } else {
                self.publish_done(ticket);
            }
        }
        Ok(())
    }

    /// A request with `reply_to: amq.rabbitmq.reply-to` gets this channel's reply address.
    fn address_replies(&self, properties: Properties) -> AmqpResult<Properties> {
        if properties.reply_to() != Some(REPLY_QUEUE.as_bytes()) {
            return Ok(properties);
        }
        let Some(token) = &self.reply_token else {
            return Err(AmqpError::precondition("fast reply consumer does not exist").at(60, 40));
        };
        let props = properties.decode().ok_or_else(bad_header)?;
        let props = props.with_reply_to(sstr(&format!("{REPLY_PREFIX}{token}")));
        Properties::encode(&props).ok_or_else(bad_header)
    }

    /// Route, store (persistent messages for durable queues) and enqueue. Returns whether a full
    /// queue refused the message (reject-publish), and the message-log position a confirm must
    /// wait for (0: none).
    pub(super) fn route_publish(
        &mut self,
        ctx: &mut Ctx,
        exchange: &Bytes,
        msg: Arc<Message>,
        mandatory: bool,
        cc: &[Bytes],
    ) -> AmqpResult<(bool, u64)> {
        let name = std::str::from_utf8(exchange).map_err(|_| {
            AmqpError::not_found(format!(
                "no exchange '{}' in vhost '{}'",
                String::from_utf8_lossy(exchange),
                ctx.vhost.name
            ))
        })?;
        // x-delayed-message with a positive x-delay: held (and stored, when persistent on a
        // durable exchange), routed when due.
        if let Some(ticket) = ctx.vhost.delay_publish(name, &msg, cc)? {
            return Ok((false, ticket));
        }
        let mut out = std::mem::take(&mut self.route_out);
        // A reply to a direct reply-to address goes straight to the requesting channel.
        if name.is_empty() && msg.routing_key.starts_with(REPLY_PREFIX.as_bytes()) {
            let delivered = ctx.vhost.replies.deliver(&msg.routing_key, &msg);
            self.route_out = out;
            if !delivered && mandatory {
                self.return_unroutable(name, &msg);
            }
            return Ok((false, 0));
        }
        let cached = match &self.default_route {
            Some((key, q)) if name.is_empty() && cc.is_empty() && *key == msg.routing_key => {
                (!q.is_gone()).then(|| q.clone())
            }
            _ => None,
        };
        if let Some(q) = cached {
            out.clear();
            out.push(q);
            ctx.vhost.count_default_publish(1);
        } else {
            let routed = ctx
                .vhost
                .route_with_cc(name, &msg, cc, &mut out, &mut self.scratch);
            if let Err(e) = routed {
                self.route_out = out;
                return Err(e);
            }
            if name.is_empty() && cc.is_empty() && out.len() == 1 {
                // A copy: the key itself is a slice of the socket's read buffer, which must not
                // be held on to.
                let key = Bytes::copy_from_slice(&msg.routing_key);
                self.default_route = Some((key, out[0].clone()));
            }
        }
        let mut delivered = false;
        let mut rejected = false;
        let (ticket, stored) = store_message(&msg, &out);
        for q in out.drain(..) {
            match q.enqueue(msg.clone(), stored) {
                Enqueued::Accepted => delivered = true,
                Enqueued::Rejected => rejected = true,
                Enqueued::Gone => {}
            }
            if q.overloaded() && self.flow.is_none() {
                self.flow = Some(q);
            }
        }
        self.route_out = out;
        let st = &self.shared.obs.stats;
        crate::observe::bump(
            if delivered || rejected {
                &st.routed
            } else if mandatory {
                &st.return_unroutable
            } else {
                &st.drop_unroutable
            },
            1,
        );
        if !delivered && !rejected && mandatory {
            self.return_unroutable(name, &msg);
        }
        Ok((rejected, ticket))
    }

    /// basic.return 312 NO_ROUTE with the message, for a mandatory publish nothing took.
    fn return_unroutable(&self, exchange: &str, msg: &Message) {
        let sh = &self.shared;
        sh.outbox.with(|b| {
            codec::encode_method(
                b,
                sh.id,
                AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: code::NO_ROUTE,
                    reply_text: "NO_ROUTE".into(),
                    exchange: sstr(exchange),
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

/// Sender-selected distribution: routing keys from the `CC` and `BCC` headers (arrays of
/// strings), with `BCC` removed from what consumers will see.
fn sender_selected(properties: Properties) -> AmqpResult<(Properties, Vec<Bytes>)> {
    use amq_protocol::types::AMQPValue;
    // Cheap pre-check on the encoded table: the keys appear as length-prefixed short strings.
    let Some(raw) = properties.headers_raw() else {
        return Ok((properties, Vec::new()));
    };
    let has = |k: &[u8]| raw.windows(k.len()).any(|w| w == k);
    let (has_cc, has_bcc) = (has(b"\x02CC"), has(b"\x03BCC"));
    if !has_cc && !has_bcc {
        return Ok((properties, Vec::new()));
    }
    let props = properties.decode().ok_or_else(bad_header)?;
    let Some(mut headers) = props.headers().clone() else {
        return Ok((properties, Vec::new()));
    };
    let mut keys = Vec::new();
    for k in ["CC", "BCC"] {
        if let Some(AMQPValue::FieldArray(a)) = headers.inner().get(k) {
            keys.extend(
                a.as_slice()
                    .iter()
                    .filter_map(crate::broker::args::str_bytes)
                    .map(Bytes::copy_from_slice),
            );
        }
    }
    if !headers.contains_key("BCC") {
        return Ok((properties, keys));
    }
    let mut inner = headers.inner().clone();
    inner.remove("BCC");
    headers = inner.into();
    let props = props.with_headers(headers);
    Ok((Properties::encode(&props).ok_or_else(bad_header)?, keys))
}
