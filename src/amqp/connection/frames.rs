//! Frames on an open connection: channel 0's methods, opening channels (channel_max as RabbitMQ
//! counts it), handing every other frame to its channel, and what a channel's error closes.

use super::*;
use crate::amqp::channel::replicated;
use crate::amqp::whole_publish;

impl Connection {
    pub(super) fn on_frame(&mut self, frame: Frame) -> Result<(), ConnectionError> {
        match self.state {
            ConnectionState::Closed | ConnectionState::Answered => Ok(()),
            ConnectionState::Closing => {
                if let Frame::Method {
                    method: Method::Other(m),
                    ..
                } = frame
                {
                    match *m {
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                            self.state = ConnectionState::Closed
                        }
                        // Both sides closed at once: answer, and still wait for the close-ok of
                        // ours (or the client's end of the socket), as RabbitMQ does.
                        AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                            self.send(
                                0,
                                AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                    connection::CloseOk {},
                                )),
                            );
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            ConnectionState::Open => self.on_open_frame(frame),
            _ => self
                .on_handshake_frame(frame)
                .map_err(ConnectionError::from),
        }
    }

    fn on_open_frame(&mut self, frame: Frame) -> Result<(), ConnectionError> {
        let channel = match &frame {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. } => *channel,
            Frame::Heartbeat => return Ok(()),
        };
        if channel == 0 {
            return self.on_channel_zero(frame);
        }
        if !self.channels.contains_key(&channel) {
            return match frame {
                Frame::Method {
                    method: Method::Other(m),
                    class_id,
                    method_id,
                    ..
                } if matches!(
                    *m,
                    AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(_))
                ) =>
                {
                    let _ = (class_id, method_id);
                    // As RabbitMQ: channel_max bounds how many channels are open at once, not
                    // their numbers (any id from 1 to 65535 may be opened below the limit).
                    if self.channels.len() >= self.channel_max as usize {
                        return Err(ConnectionError::new(
                            code::NOT_ALLOWED,
                            format!(
                                "number of channels opened ({}) has reached the negotiated \
                                 channel_max ({})",
                                self.channels.len(),
                                self.channel_max
                            ),
                        ));
                    }
                    // The user's max-channels, counted over all its connections.
                    let slot = self
                        .admission
                        .as_ref()
                        .expect("set at connection.open")
                        .open_channel()
                        .map_err(|why| ConnectionError::new(code::NOT_ALLOWED, why))?;
                    let mut ch = Channel::new(
                        channel,
                        self.outbox.clone(),
                        self.frame_max,
                        self.cancel_notify,
                    );
                    ch.hold(slot);
                    self.info.channel_opened(channel, ch.obs().clone());
                    self.channels.insert(channel, ch);
                    self.send(
                        channel,
                        AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::OpenOk(
                            amq_protocol::protocol::channel::OpenOk {},
                        )),
                    );
                    Ok(())
                }
                // A close-ok for a channel already gone (both sides closed at once): ignore.
                Frame::Method {
                    class_id: 20,
                    method_id: 41,
                    ..
                } => Ok(()),
                Frame::Method {
                    class_id,
                    method_id,
                    ..
                } => Err(
                    AmqpError::connection(code::CHANNEL_ERROR, "expected 'channel.open'")
                        .at(class_id, method_id)
                        .into(),
                ),
                // RabbitMQ's answer to a content frame on a channel that is not open.
                _ => Err(ConnectionError::new(
                    code::UNEXPECTED_FRAME,
                    "expected method frame, got non method frame instead",
                )),
            };
        }
        // Borrowed, not cloned: an atomic increment and decrement per frame saved.
        let vhost = self.vhost.as_ref().expect("open connection has a vhost");
        let mut ctx = ctx!(self, vhost);
        let ch = self.channels.get_mut(&channel).expect("checked");
        if matches!(
            frame,
            Frame::Method {
                method: Method::Publish { .. },
                ..
            }
        ) {
            self.published = true;
        }
        let partial_before = ch.partial_content();
        let mut retry = None;
        let r = match frame {
            Frame::Method {
                class_id,
                method_id,
                method,
                ..
            } => {
                // In a cluster, a lookup that finds nothing is retried once caught up.
                if ctx.cluster.is_some() && replicated::reads_definitions(&method) {
                    retry = Some((class_id, method_id, method.clone()));
                }
                match ch.on_method(&mut ctx, class_id, method_id, method) {
                    Err(AmqpError::Channel(e)) if e.code == code::NOT_FOUND && retry.is_some() => {
                        let (class_id, method_id, method) = retry.take().expect("checked");
                        *ctx.deferred = Some(replicated::Deferred {
                            channel,
                            work: replicated::Work::Retry {
                                class_id,
                                method_id,
                                method,
                            },
                        });
                        Ok(After::Continue)
                    }
                    r => r,
                }
            }
            Frame::Header {
                class_id,
                body_size,
                properties,
                ..
            } => ch
                .on_header(&mut ctx, class_id, body_size, properties)
                .map(|_| After::Continue),
            Frame::Body { payload, .. } => ch.on_body(&mut ctx, payload).map(|_| After::Continue),
            Frame::Heartbeat => Ok(After::Continue),
        };
        let result = self.channel_outcome(channel, r);
        // Bound what a client can make us hold in half-sent messages across all its channels.
        let partial_after = self
            .channels
            .get(&channel)
            .map_or(0, Channel::partial_content);
        self.partial_content = self.partial_content + partial_after - partial_before;
        // Twice the largest message: two maximal messages may be in flight on parallel channels.
        let limit = self.config.max_message_size.saturating_mul(2);
        if self.partial_content > limit {
            return Err(ConnectionError::new(
                code::RESOURCE_ERROR,
                format!(
                    "{} bytes of unfinished message bodies across channels exceed the limit of {limit}",
                    self.partial_content
                ),
            ));
        }
        result
    }

    /// A publish whose three frames are all in `buf`, taken whole (`amqp::whole_publish`) when
    /// the connection is open and the publish's channel is open and assembling nothing. `false`:
    /// `buf` is as it was, for the frame-by-frame decoder.
    pub(super) fn take_whole_publish(&mut self, buf: &mut BytesMut) -> bool {
        if self.state != ConnectionState::Open {
            return false;
        }
        let Some(layout) = whole_publish::peek(buf, self.frame_max) else {
            return false;
        };
        let channel = layout.channel;
        let Some(ch) = self.channels.get_mut(&channel) else {
            return false;
        };
        if !ch.takes_whole_publish() {
            return false;
        }
        let w = whole_publish::take(buf, layout);
        self.published = true;
        let vhost = self.vhost.as_ref().expect("open connection has a vhost");
        let mut ctx = ctx!(self, vhost);
        let r = ch.on_whole_publish(&mut ctx, w).map(|()| After::Continue);
        if let Err(e) = self.channel_outcome(channel, r) {
            self.connection_error(e);
        }
        true
    }

    /// What a channel's method, header or body left: go on, drop the channel, close it with
    /// an error, or an error that closes the connection.
    pub(super) fn channel_outcome(
        &mut self,
        channel: u16,
        r: AmqpResult<After>,
    ) -> Result<(), ConnectionError> {
        // The usual outcome, for every frame of every publish: nothing to do.
        if matches!(r, Ok(After::Continue)) {
            return Ok(());
        }
        let vhost = self.vhost.clone().expect("open connections have a vhost");
        let mut ctx = ctx!(self, &vhost);
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        match r {
            Ok(After::Continue) => Ok(()),
            Ok(After::Remove) => {
                self.channels.remove(&channel);
                self.info.channel_closed(channel);
                Ok(())
            }
            Err(AmqpError::Channel(e)) => {
                warn!(
                    channel,
                    code = e.code,
                    class_id = e.class_id,
                    method_id = e.method_id,
                    "channel error: {}",
                    e.reply_text()
                );
                // Confirms already due go out before the close (the synced position is read
                // only here, not per frame).
                let synced = self
                    .server
                    .broker
                    .messages()
                    .map_or(u64::MAX, |l| l.synced());
                ch.flush_confirms(synced);
                ch.close_with(&mut ctx, &e);
                Ok(())
            }
            Err(AmqpError::Connection(e)) => Err(e),
        }
    }

    fn on_channel_zero(&mut self, frame: Frame) -> Result<(), ConnectionError> {
        use connection::AMQPMethod as M;
        let Frame::Method {
            method: Method::Other(m),
            class_id,
            method_id,
            ..
        } = frame
        else {
            return Err(ConnectionError::new(
                code::COMMAND_INVALID,
                "only connection methods and heartbeats are allowed on channel 0",
            ));
        };
        match *m {
            AMQPClass::Connection(M::Close(c)) => {
                debug!(
                    "client closed connection: {} {}",
                    c.reply_code,
                    c.reply_text.as_str()
                );
                self.teardown();
                self.send(0, AMQPClass::Connection(M::CloseOk(connection::CloseOk {})));
                self.state = ConnectionState::Answered;
                Ok(())
            }
            AMQPClass::Connection(M::CloseOk(_)) => {
                self.state = ConnectionState::Closed;
                Ok(())
            }
            AMQPClass::Connection(M::UpdateSecret(_)) => {
                self.send(
                    0,
                    AMQPClass::Connection(M::UpdateSecretOk(connection::UpdateSecretOk {})),
                );
                Ok(())
            }
            AMQPClass::Connection(M::Blocked(_) | M::Unblocked(_)) => Ok(()),
            _ => Err(AmqpError::connection(
                code::COMMAND_INVALID,
                format!("method class {class_id} id {method_id} is not allowed on channel 0"),
            )
            .at(class_id, method_id)
            .into()),
        }
    }
}
