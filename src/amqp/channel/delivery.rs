//! Delivery tags, the unacked list, channel-wide prefetch and acknowledgements: the part of a
//! channel that queues reach from other tasks (`ChannelShared` is every consumer's sink).

use super::*;
use crate::observe::bump;

/// One delivery awaiting ack. `consumer` is None for basic.get.
#[derive(Debug)]
pub(super) struct Unacked {
    pub(super) tag: u64,
    pub(super) queue: Arc<Queue>,
    pub(super) entry: QEntry,
    pub(super) consumer: Option<Arc<Consumer>>,
    /// When it went out (the queue clock's `coarse_ms`), for the consumer timeout.
    pub(super) delivered_at: u64,
}

#[derive(Debug, Default)]
pub(super) struct DeliveryState {
    pub(super) next_tag: u64,
    /// Sorted by tag (tags are assigned in order under this lock).
    pub(super) unacked: VecDeque<Unacked>,
}

#[derive(Debug)]
pub struct ChannelShared {
    pub id: u16,
    pub(super) outbox: Arc<Outbox>,
    pub(super) open: AtomicBool,
    pub(super) state: Mutex<DeliveryState>,
    /// basic.qos global=true: limit on unacked consumer deliveries across the channel; 0 = none.
    pub(super) global_prefetch: AtomicU32,
    pub(super) consumer_unacked: AtomicU32,
    pub(super) frame_max: u32,
    pub(super) cancel_notify: bool,
    /// The consumer tag of this channel's amq.rabbitmq.reply-to consumer, if any.
    pub(super) reply_tag: Mutex<Option<String>>,
    /// Consumer timeout bookkeeping (see `ack_timeout`).
    pub(super) ack: super::ack_timeout::AckState,
    /// What management sees of this channel (counters, settings, consumers).
    pub obs: Arc<crate::observe::ChannelObs>,
}

impl crate::broker::reply_to::ReplySink for ChannelShared {
    fn deliver_reply(&self, m: &crate::broker::message::Message) -> bool {
        if !self.open.load(Ordering::Relaxed) {
            return false;
        }
        let Some(tag) = self.reply_tag.lock().clone() else {
            return false;
        };
        let mut s = self.state.lock();
        s.next_tag += 1;
        let delivery_tag = s.next_tag;
        self.outbox.with(|b| {
            codec::encode_deliver(
                b,
                self.id,
                &tag,
                delivery_tag,
                false,
                &m.exchange,
                &m.routing_key,
            );
            codec::encode_content(b, self.id, &m.properties.raw, &m.body, self.frame_max);
        });
        true
    }
}

impl ConsumerSink for ChannelShared {
    fn ready(&self, consumer: &Consumer, queue: &Arc<Queue>) -> bool {
        if !self.open.load(Ordering::Relaxed) {
            return false;
        }
        let g = self.global_prefetch.load(Ordering::Relaxed);
        if !consumer.no_ack && g > 0 && self.consumer_unacked.load(Ordering::Relaxed) >= g {
            return false;
        }
        self.outbox.has_room(queue)
    }

    fn deliver(&self, consumer: &Arc<Consumer>, queue: &Arc<Queue>, entry: QEntry) {
        let (mut s, first) = self.write_run(consumer, std::slice::from_ref(&entry));
        if !consumer.no_ack {
            self.keep_unacked(&mut s, consumer, queue, first, std::iter::once(entry));
        }
    }

    fn credit(&self, consumer: &Consumer) -> u32 {
        let g = self.global_prefetch.load(Ordering::Relaxed);
        if consumer.no_ack || g == 0 {
            return u32::MAX;
        }
        g.saturating_sub(self.consumer_unacked.load(Ordering::Relaxed))
    }

    /// One lock of the delivery state and one of the outbox for the whole run.
    fn deliver_many(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        entries: &mut Vec<QEntry>,
    ) {
        let (mut s, first) = self.write_run(consumer, entries);
        if consumer.no_ack {
            entries.clear();
        } else {
            self.keep_unacked(&mut s, consumer, queue, first, entries.drain(..));
        }
    }

    fn cancelled(&self, consumer: &Arc<Consumer>) {
        consumer.cancelled.store(true, Ordering::Relaxed);
        self.obs.consumer_removed(&consumer.tag);
        if self.cancel_notify && self.open.load(Ordering::Relaxed) {
            self.send(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: ShortString::from(consumer.tag.clone()),
                nowait: true,
            })));
        }
    }
}

impl ChannelShared {
    /// Deliveries to `consumer`, in order: their tags assigned and their frames written under
    /// one lock of each. Returns the delivery state, still locked (so that the tags go into the
    /// unacked list in order), and the first tag.
    fn write_run(
        &self,
        consumer: &Consumer,
        entries: &[QEntry],
    ) -> (parking_lot::MutexGuard<'_, DeliveryState>, u64) {
        let k = entries.len() as u64;
        let mut s = self.state.lock();
        let first = s.next_tag + 1;
        s.next_tag += k;
        self.outbox.with(|b| {
            for (tag, entry) in (first..).zip(entries) {
                let m = &entry.msg;
                codec::encode_deliver(
                    b,
                    self.id,
                    &consumer.tag,
                    tag,
                    entry.redelivered,
                    &m.exchange,
                    &m.routing_key,
                );
                codec::encode_content(b, self.id, &m.properties.raw, &m.body, self.frame_max);
            }
        });
        let st = &self.obs.stats;
        let redelivered = entries.iter().filter(|e| e.redelivered).count() as u64;
        if redelivered > 0 {
            crate::observe::bump_shared(&st.redeliver, redelivered);
        }
        let counter = if consumer.no_ack {
            &st.deliver_no_ack
        } else {
            &st.deliver
        };
        bump(counter, k);
        (s, first)
    }

    /// Deliveries that wait for an ack, tagged from `first` on.
    fn keep_unacked(
        &self,
        s: &mut DeliveryState,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        first: u64,
        entries: impl ExactSizeIterator<Item = QEntry>,
    ) {
        self.consumer_unacked
            .fetch_add(entries.len() as u32, Ordering::Relaxed);
        let delivered_at = queue.clock.coarse_ms();
        for (tag, entry) in (first..).zip(entries) {
            s.unacked.push_back(Unacked {
                tag,
                queue: queue.clone(),
                entry,
                consumer: Some(consumer.clone()),
                delivered_at,
            });
        }
        self.note_unacked(s);
    }

    /// Take every delivery awaiting ack (the channel closes, or recovers them).
    pub(super) fn take_unacked(&self) -> Vec<Unacked> {
        let mut s = self.state.lock();
        let all = s.unacked.drain(..).collect();
        self.note_unacked(&s);
        all
    }

    pub(super) fn send(&self, m: AMQPClass) {
        self.outbox.with(|b| codec::encode_method(b, self.id, m));
    }

    /// Tell management how many deliveries await ack (called with the delivery lock held,
    /// after each change to the list).
    pub(super) fn note_unacked(&self, s: &DeliveryState) {
        self.obs
            .stats
            .unacked
            .store(s.unacked.len() as u32, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settle {
    Ack,
    Drop,
    Requeue,
}

impl Channel {
    // ---- acknowledgements -------------------------------------------------------------------

    pub(super) fn settle(&mut self, tag: u64, multiple: bool, how: Settle) -> AmqpResult<()> {
        let taken: Vec<Unacked> = {
            let mut s = self.shared.state.lock();
            let taken = if multiple {
                if tag == 0 {
                    s.unacked.drain(..).collect()
                } else {
                    let n = s.unacked.partition_point(|u| u.tag <= tag);
                    if n == 0 {
                        return Err(unknown_tag(tag));
                    }
                    s.unacked.drain(..n).collect()
                }
            } else {
                let i = s.unacked.partition_point(|u| u.tag < tag);
                match s.unacked.get(i) {
                    Some(u) if u.tag == tag => vec![s.unacked.remove(i).expect("present")],
                    _ => return Err(unknown_tag(tag)),
                }
            };
            self.shared.note_unacked(&s);
            taken
        };
        let from_consumers = taken.iter().filter(|u| u.consumer.is_some()).count() as u32;
        self.shared
            .consumer_unacked
            .fetch_sub(from_consumers, Ordering::Relaxed);
        if how != Settle::Ack {
            // As RabbitMQ: a stream delivery cannot be rejected; the connection closes (what
            // else was taken goes back to its queue first, as the close would do).
            if let Some(q) = taken
                .iter()
                .find(|u| u.queue.is_stream())
                .map(|u| u.queue.clone())
            {
                self.apply_settle(taken, Settle::Requeue);
                return Err(AmqpError::not_implemented(format!(
                    "basic.nack and basic.reject not supported by stream queues queue '{}' in \
                     vhost '{}'",
                    q.name, q.vhost
                )));
            }
        }
        if how == Settle::Ack {
            bump(&self.shared.obs.stats.ack, taken.len() as u64);
        }
        if let Some(tx) = &mut self.tx {
            tx.settles.push((taken, how));
        } else {
            self.apply_settle(taken, how);
        }
        Ok(())
    }

    pub(super) fn apply_settle(&mut self, entries: Vec<Unacked>, how: Settle) {
        // Entries come in tag order, usually all from one queue: settle each run of the same
        // queue under one lock. Rejected messages go on to the queue's dead-letter exchange.
        let mut run: Option<SettleRun> = None;
        for u in entries {
            if let Some(c) = &u.consumer {
                c.unacked.fetch_sub(1, Ordering::Relaxed);
                if let (Some(sc), Some(s), Settle::Ack) = (&c.stream, u.queue.stream(), how) {
                    s.acked(sc, u.entry.seq);
                }
            }
            match &run {
                Some(r) if Arc::ptr_eq(&r.queue, &u.queue) => {}
                _ => {
                    if let Some(r) = run.take() {
                        r.finish();
                    }
                    run = Some(SettleRun {
                        remote: u.queue.proxy.is_some(),
                        queue: u.queue.clone(),
                        done: 0,
                        acked: Vec::new(),
                        back: Vec::new(),
                        dead: Vec::new(),
                    });
                }
            }
            let r = run.as_mut().expect("set above");
            match how {
                // Settled by id on the queue's node: the entries go there.
                Settle::Ack if r.remote => r.acked.push(u.entry),
                Settle::Ack => r.done += 1,
                Settle::Drop => {
                    r.done += 1;
                    if r.remote || r.queue.dead_letter.is_some() {
                        r.dead.push(u.entry);
                    }
                }
                Settle::Requeue => r.back.push(u.entry),
            }
        }
        if let Some(r) = run {
            r.finish();
        }
        if self.shared.global_prefetch.load(Ordering::Relaxed) > 0 {
            self.redispatch_all();
        }
    }

    pub(super) fn recover(&mut self, requeue: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let all: Vec<Unacked> = self.shared.take_unacked();
        let from_consumers = all.iter().filter(|u| u.consumer.is_some()).count() as u32;
        self.shared
            .consumer_unacked
            .fetch_sub(from_consumers, Ordering::Relaxed);
        self.apply_settle(all, Settle::Requeue);
        Ok(())
    }

    pub(super) fn redispatch_all(&self) {
        let mut seen: Vec<&Arc<Queue>> = Vec::new();
        for (_, q) in self.consumers.values() {
            if !seen.iter().any(|x| Arc::ptr_eq(x, q)) {
                seen.push(q);
                q.dispatch();
            }
        }
    }
}

pub(super) fn unknown_tag(tag: u64) -> AmqpError {
    AmqpError::precondition(format!("unknown delivery tag {tag}"))
}

/// Deliveries of one queue settled together.
struct SettleRun {
    queue: Arc<Queue>,
    /// A queue served by another node (a proxy queue): settled there, by id.
    remote: bool,
    done: u64,
    acked: Vec<QEntry>,
    back: Vec<QEntry>,
    dead: Vec<QEntry>,
}

impl SettleRun {
    fn finish(self) {
        if self.remote {
            self.queue.settle_remote(self.acked, self.back, self.dead);
            return;
        }
        self.queue.settle(self.done, self.back);
        if !self.dead.is_empty() {
            self.queue.dead_letter(
                self.dead,
                crate::broker::queue::dead_letter::Reason::Rejected,
            );
        }
    }
}
