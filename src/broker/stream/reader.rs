//! A stream consumer's reader: a task of its own per consumer, so that a reader replaying old
//! data reads off the publishers' path and never holds up readers at the tail.
//!
//! The loop: while the consumer is active (always, unless it is one of a single-active group)
//! and has credit (prefetch minus unacknowledged deliveries) and its connection has room, read
//! the next committed messages (at most the credit, about 1 MiB) on the blocking pool, skip
//! those its filter leaves out, and hand the others to the consumer's channel
//! (`ConsumerSink::deliver`) as queue deliveries. Otherwise it waits for the stream's wake-up
//! (an ack, a drained socket, a consumer leaving) or, at the end of the stream, the next
//! commit. It stops once the consumer is gone.
//!
//! A named consumer starts where its name's tracked offset says, if the stream knows the name
//! (`x-stream-offset` only counts the first time); so does a single active consumer taking
//! over. Tracked offsets are written by the readers, at most about once a second.

use super::{Stream, StreamConsumer};
use crate::broker::message::{Message, Properties};
use crate::broker::queue::{Consumer, QEntry, Queue};
use crate::store::stream::{Cursor, Start};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, warn};

/// Bytes read per batch (a batch holds at least one message, however large).
const BATCH_BYTES: usize = 1 << 20;

/// How often tracked offsets are written at most.
const FLUSH_EVERY_MS: u64 = 1000;

/// Start the reader of a stream consumer, once (the first dispatch after consume-ok).
pub fn start(q: &Arc<Queue>, c: &Arc<Consumer>) {
    let Some(sc) = c.stream.as_ref() else {
        return;
    };
    if sc.started.swap(true, Ordering::AcqRel) {
        return;
    }
    let (q, c) = (q.clone(), c.clone());
    tokio::spawn(async move { run(q, c).await });
}

/// Whether this consumer reads now: not in a single-active group, or the group's chosen one.
pub fn is_active(q: &Queue, stream: &Stream, c: &Arc<Consumer>) -> bool {
    let Some(sc) = &c.stream else {
        return true;
    };
    if !sc.spec.single_active {
        return true;
    }
    let group: Vec<Arc<Consumer>> = q
        .consumer_list()
        .into_iter()
        .filter(|x| {
            x.stream
                .as_ref()
                .is_some_and(|y| y.spec.single_active && y.spec.name == sc.spec.name)
        })
        .collect();
    if group.is_empty() {
        return false;
    }
    let k = stream.partition() as usize % group.len();
    Arc::ptr_eq(&group[k], c)
}

/// Where a consumer starts reading now: its name's tracked offset if any, else what it asked.
/// Also returns the offset below which nothing is delivered: an offset beyond the end is
/// waited for, as in RabbitMQ (the cursor itself starts at the end).
fn seek(q: &Queue, stream: &Stream, sc: &StreamConsumer) -> Option<(Cursor, u64)> {
    let start = sc
        .spec
        .name
        .as_deref()
        .and_then(|n| stream.tracked(n))
        .map_or(sc.spec.start, Start::Offset);
    let floor = match start {
        Start::Offset(n) => n,
        _ => 0,
    };
    match stream.log.seek(start) {
        Ok(c) => Some((c, floor)),
        Err(e) => {
            error!(queue = %q.name, vhost = %q.vhost, "stream reader cannot start: {e}");
            None
        }
    }
}

/// Write the stream's tracked offsets (off the async threads).
async fn flush(stream: &Arc<Stream>, now_ms: u64) {
    let s = stream.clone();
    let _ = tokio::task::spawn_blocking(move || s.flush_offsets(now_ms)).await;
}

/// How long until tracked offsets are due to be written (None: nothing to write).
fn flush_in(stream: &Stream, now_ms: u64) -> Option<Duration> {
    let written = stream.flush_due()?;
    Some(Duration::from_millis(
        (written + FLUSH_EVERY_MS).saturating_sub(now_ms),
    ))
}

async fn run(q: Arc<Queue>, c: Arc<Consumer>) {
    let (Some(stream), Some(sc)) = (q.stream().cloned(), c.stream.clone()) else {
        return;
    };
    let mut commits = stream.log.subscribe();
    let mut cursor: Option<Cursor> = None;
    let mut floor = 0;
    // Bytes per stored message, as read so far (sizes the next read).
    let mut avg_record: usize = 1024;
    loop {
        let now = q.clock.wall_ms();
        if sc.stopped.load(Ordering::Acquire) || q.is_gone() {
            flush(&stream, now).await;
            return;
        }
        let woken = stream.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let due = flush_in(&stream, now);
        if due == Some(Duration::ZERO) {
            flush(&stream, now).await;
            continue;
        }
        let timer = tokio::time::sleep(due.unwrap_or(Duration::from_secs(3600)));
        if !is_active(&q, &stream, &c) {
            cursor = None;
            tokio::select! {
                _ = woken => {}
                _ = timer => {}
            }
            continue;
        }
        let mut cur = match cursor.take() {
            Some(cur) => cur,
            None => {
                let Some((cur, at_least)) = seek(&q, &stream, &sc) else {
                    return;
                };
                floor = at_least;
                sc.next.store(cur.next.max(floor), Ordering::Relaxed);
                sc.first.store(cur.next.max(floor), Ordering::Relaxed);
                cur
            }
        };
        let credit = c.prefetch.saturating_sub(c.unacked.load(Ordering::Relaxed)) as usize;
        if credit == 0 || !c.sink.ready(&c, &q) {
            cursor = Some(cur);
            tokio::select! {
                _ = woken => {}
                _ = timer => {}
            }
            continue;
        }
        commits.borrow_and_update();
        let log = stream.log.clone();
        // Read about what the credit covers (a small prefetch must not read a megabyte for a
        // few messages each time).
        let want = credit.saturating_mul(avg_record).min(BATCH_BYTES);
        let read = tokio::task::spawn_blocking(move || {
            let r = log.read(&mut cur, credit, want);
            (r, cur)
        })
        .await;
        let batch;
        (batch, cur) = match read {
            Ok(r) => r,
            Err(e) => {
                error!(queue = %q.name, "stream read task failed: {e}");
                return;
            }
        };
        cursor = Some(cur);
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                warn!(queue = %q.name, vhost = %q.vhost, "cannot read the stream: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = woken => {}
                _ = commits.changed() => {}
                _ = timer => {}
            }
            continue;
        }
        let bytes: usize = batch
            .iter()
            .map(|m| m.body.len() + m.properties.len() + m.routing_key.len() + 64)
            .sum();
        avg_record = (bytes / batch.len()).max(64);
        // What this consumer gets of the batch (its filter, and nothing below an offset it is
        // waiting for); recorded as in flight before any of it is handed over, so that an ack
        // can never arrive first.
        let last = batch.last().map(|m| m.offset);
        let wanted: Vec<_> = batch
            .into_iter()
            .filter(|m| {
                m.offset >= floor
                    && sc
                        .spec
                        .filter
                        .as_ref()
                        .is_none_or(|f| f.matches(m.filter.as_deref()))
            })
            .collect();
        if let Some(last) = last {
            sc.next.store((last + 1).max(floor), Ordering::Relaxed);
        }
        sc.sent(wanted.iter().map(|m| (m.offset, m.timestamp)));
        let mut delivered = 0u64;
        for m in wanted {
            let Ok(properties) = Properties::parse(m.properties) else {
                warn!(queue = %q.name, offset = m.offset, "skipping a stream record with bad properties");
                continue;
            };
            let msg = Message::new(m.exchange, m.routing_key, properties, m.body, stream.memory);
            c.unacked.fetch_add(1, Ordering::Relaxed);
            delivered += 1;
            c.sink.deliver(
                &c,
                &q,
                QEntry {
                    seq: m.offset,
                    msg: Arc::new(msg),
                    redelivered: false,
                    qid: 0,
                    expires: None,
                    delivery_count: 0,
                    enqueued: 0,
                },
            );
        }
        q.stream_delivered(delivered);
    }
}
