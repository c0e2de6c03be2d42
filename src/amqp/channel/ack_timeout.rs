//! The consumer acknowledgement timeout on the channel side: the vhost's `AckWatch` asks the
//! channel (from the sweeper task) whether its oldest unacked delivery is overdue; if so the
//! channel records what to do and wakes its connection task, which does it (closing a channel
//! or cancelling a consumer needs the channel's own state, owned by that task).

use super::*;
use crate::broker::ack_watch::{AckDeadlines, TimeoutDefaults};
use crate::broker::queue::lifecycle::TimeoutAction;
use std::sync::atomic::AtomicU64;

/// What an overdue delivery makes the channel do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Overdue {
    Close { timeout_ms: u64 },
    Cancel { consumer_tag: String },
}

#[derive(Debug, Default)]
pub(super) struct AckState {
    /// Registered with the vhost's watch.
    watched: AtomicBool,
    /// The shortest timeout of any queue this channel took manual-ack deliveries from (0: none
    /// yet). No delivery younger than this can be overdue, which bounds the scan.
    min_timeout: AtomicU64,
    /// An action waiting for the connection task (checks pause meanwhile).
    overdue: Mutex<Option<Overdue>>,
}

impl AckDeadlines for ChannelShared {
    fn check_ack_deadlines(&self, now: u64, defaults: &TimeoutDefaults) -> bool {
        if !self.open.load(Ordering::Relaxed) {
            return false;
        }
        let min = self.ack.min_timeout.load(Ordering::Relaxed);
        if min == 0 || self.ack.overdue.lock().is_some() {
            return true;
        }
        let found = {
            let s = self.state.lock();
            let mut found = None;
            // Deliveries are in the order they went out: stop at the first one too young to be
            // overdue under any of this channel's timeouts.
            for u in s.unacked.iter() {
                if now < u.delivered_at.saturating_add(min) {
                    break;
                }
                let timeout = u.queue.life.consumer_timeout.unwrap_or(defaults.timeout_ms);
                if now >= u.delivered_at.saturating_add(timeout) {
                    let action = u.queue.life.timeout_action.unwrap_or(defaults.action);
                    found = Some(match (&u.consumer, action) {
                        (Some(c), TimeoutAction::CancelConsumer) if self.cancel_notify => {
                            Overdue::Cancel {
                                consumer_tag: c.tag.clone(),
                            }
                        }
                        _ => Overdue::Close {
                            timeout_ms: timeout,
                        },
                    });
                    break;
                }
            }
            found
        };
        if let Some(o) = found {
            *self.ack.overdue.lock() = Some(o);
            self.outbox.kick();
        }
        true
    }
}

impl Channel {
    /// This channel takes manual-ack deliveries from `q`: make sure the consumer timeout
    /// watches it.
    pub(super) fn watch_acks(&self, ctx: &Ctx, q: &Arc<Queue>) {
        let defaults = ctx.vhost.ack_watch.defaults();
        let t = q
            .life
            .consumer_timeout
            .unwrap_or(defaults.timeout_ms)
            .max(1);
        let a = &self.shared.ack;
        let cur = a.min_timeout.load(Ordering::Relaxed);
        if cur == 0 || t < cur {
            a.min_timeout.store(t, Ordering::Relaxed);
        }
        if !a.watched.swap(true, Ordering::Relaxed) {
            let me: Arc<dyn AckDeadlines> = self.shared.clone();
            ctx.vhost.ack_watch.watch(Arc::downgrade(&me));
        }
    }

    /// Act on an overdue delivery, if the watch found one (called by the connection task when
    /// woken). Closing the channel is RabbitMQ's behaviour; cancelling only the late consumer
    /// and requeueing its deliveries is Warren's alternative.
    pub fn handle_overdue(&mut self, ctx: &mut Ctx, synced: u64) {
        let Some(o) = self.shared.ack.overdue.lock().take() else {
            return;
        };
        if self.closing {
            return;
        }
        match o {
            Overdue::Close { timeout_ms } => {
                let e = AmqpError::precondition(format!(
                    "delivery acknowledgement on channel {} timed out. Timeout value used: \
                     {timeout_ms} ms. This timeout value can be configured, see consumers doc \
                     guide to learn more",
                    self.id()
                ));
                tracing::warn!(channel = self.id(), "{}", e.reply_text());
                self.flush_confirms(synced);
                self.close_with(ctx, &e);
            }
            Overdue::Cancel { consumer_tag } => {
                let Some((c, q)) = self.consumers.remove(&consumer_tag) else {
                    return;
                };
                tracing::warn!(
                    channel = self.id(),
                    consumer = %consumer_tag,
                    queue = %q.name,
                    "delivery acknowledgement timed out: cancelling the consumer and requeueing its unacked deliveries"
                );
                self.shared.obs.consumer_removed(&consumer_tag);
                let delete = q.remove_consumer(&c);
                c.sink.cancelled(&c);
                let back: Vec<Unacked> = {
                    let mut s = self.shared.state.lock();
                    let (mine, rest): (VecDeque<Unacked>, VecDeque<Unacked>) = s
                        .unacked
                        .drain(..)
                        .partition(|u| u.consumer.as_ref().is_some_and(|x| Arc::ptr_eq(x, &c)));
                    s.unacked = rest;
                    self.shared.note_unacked(&s);
                    mine.into()
                };
                self.shared
                    .consumer_unacked
                    .fetch_sub(back.len() as u32, Ordering::Relaxed);
                self.apply_settle(back, Settle::Requeue);
                if delete {
                    cancel_consumers(ctx.vhost.remove_queue(&q).1);
                }
            }
        }
    }
}
