//! Direct reply-to (`amq.rabbitmq.reply-to`): RPC replies delivered straight to the requesting
//! channel's pseudo-consumer, with no reply queue.
//!
//! A channel consuming from `amq.rabbitmq.reply-to` (no-ack) gets a token. Its requests'
//! `reply_to` property is rewritten to `amq.rabbitmq.reply-to.<token>`; a reply published to the
//! default exchange with that routing key goes to the channel, or nowhere if it has gone.

use crate::broker::message::Message;
use dashmap::DashMap;
use std::sync::{Arc, Weak};

pub const REPLY_QUEUE: &str = "amq.rabbitmq.reply-to";
pub const REPLY_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// The channel side: delivers a reply to the channel's reply consumer.
pub trait ReplySink: Send + Sync {
    /// Deliver; false if the channel can no longer take it.
    fn deliver_reply(&self, msg: &Message) -> bool;
}

#[derive(Default)]
pub struct ReplyRegistry {
    sinks: DashMap<String, Weak<dyn ReplySink>>,
}

impl std::fmt::Debug for ReplyRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyRegistry({} channels)", self.sinks.len())
    }
}

impl ReplyRegistry {
    pub fn register(&self, token: &str, sink: Weak<dyn ReplySink>) {
        self.sinks.insert(token.to_owned(), sink);
    }

    pub fn unregister(&self, token: &str) {
        self.sinks.remove(token);
    }

    /// Whether queue.declare of `queue` finds a direct reply-to address: the pseudo-queue
    /// `amq.rabbitmq.reply-to` itself, or `amq.rabbitmq.reply-to.<token>` of a channel still
    /// consuming from it.
    pub fn exists(&self, queue: &str) -> bool {
        queue == REPLY_QUEUE
            || queue
                .strip_prefix(REPLY_PREFIX)
                .and_then(|token| self.sinks.get(token))
                .is_some_and(|w| w.strong_count() > 0)
    }

    /// Deliver a reply addressed to `routing_key` (`amq.rabbitmq.reply-to.<token>`); false if no
    /// such channel is listening.
    pub fn deliver(&self, routing_key: &[u8], msg: &Message) -> bool {
        let Some(token) = routing_key.strip_prefix(REPLY_PREFIX.as_bytes()) else {
            return false;
        };
        let Ok(token) = std::str::from_utf8(token) else {
            return false;
        };
        let sink = self.sinks.get(token).and_then(|w| w.upgrade());
        sink.is_some_and(|s: Arc<dyn ReplySink>| s.deliver_reply(msg))
    }
}
