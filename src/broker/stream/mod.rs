//! Stream queues (`x-queue-type: stream`): an append-only log per queue that any number of
//! consumers read from any offset, kept by size or age rather than until acknowledged.
//!
//! A stream is a `Queue` (so bindings, routing, permissions and management find it like any
//! other) whose messages go to a `Stream` instead of the ready list:
//! - publishing (`VHost::publish`) appends each message once to the stream's segment files
//!   (`store::stream`), through the message log's writer: the confirm waits for the same group
//!   commit as a durable queue's message, whatever the delivery mode;
//! - each consumer has a reader task (`reader`) with its own cursor, credit (its prefetch) and
//!   filter. It reads committed messages in batches, off the publishers' path, and hands them to
//!   the consumer's channel like any delivery; an ack returns credit and removes nothing.
//!
//! Every stored message carries its `x-stream-offset` header already (added at append, see
//! `append`), so a delivery sends the stored properties and body as they are.

pub mod args;
pub mod reader;

use crate::broker::message::Message;
use crate::store::stream::{NewEntry, StreamLog};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

pub use args::{ConsumerSpec, Filter};

/// The header every stream delivery carries: the message's offset.
pub const OFFSET_HEADER: &str = "x-stream-offset";
/// The file in a stream's directory with its named consumers' offsets.
pub const OFFSETS_FILE: &str = "consumer-offsets.json";

/// The header a publisher sets to tag a message for filtering.
pub const FILTER_HEADER: &str = "x-stream-filter-value";

/// The offsets the broker keeps for named consumers (`x-stream-consumer-name`): the next
/// offset each name reads. Kept in memory, written to `offsets` in the stream's directory at
/// most about once a second and when a named consumer goes (atomically: a temporary file,
/// fdatasync, rename), so a restart or `kill -9` resumes at most about a second of acks back
/// (at-least-once).
#[derive(Debug, Default)]
struct Tracked {
    next: std::collections::BTreeMap<String, u64>,
    dirty: bool,
    /// When they were last written (wall ms).
    written_at: u64,
}

/// A stream queue's log and what its readers wait on.
#[derive(Debug)]
pub struct Stream {
    pub log: Arc<StreamLog>,
    /// Where the named consumers' offsets are kept (None: not kept across restarts).
    offsets_file: Option<std::path::PathBuf>,
    tracked: parking_lot::Mutex<Tracked>,
    /// The memory account of messages read back (in flight to consumers).
    pub memory: &'static crate::broker::memory::MemoryMonitor,
    /// Wakes every reader of the stream: credit came back, a socket drained, a reader stopped.
    wake: Notify,
    /// When age retention last ran (wall ms).
    retention_at: AtomicU64,
    /// The stream's index among its super stream's partitions (0 otherwise).
    pub partition: std::sync::atomic::AtomicU32,
}

impl Stream {
    /// A stream over `log`; named consumers' offsets are kept in `offsets_file` (read back now).
    pub fn new(
        log: Arc<StreamLog>,
        memory: &'static crate::broker::memory::MemoryMonitor,
        offsets_file: Option<std::path::PathBuf>,
    ) -> Stream {
        let next = offsets_file
            .as_deref()
            .and_then(read_offsets)
            .unwrap_or_default();
        Stream {
            log,
            offsets_file,
            tracked: parking_lot::Mutex::new(Tracked {
                next,
                ..Tracked::default()
            }),
            memory,
            wake: Notify::new(),
            retention_at: AtomicU64::new(0),
            partition: Default::default(),
        }
    }

    /// Append a message (published at wall-clock `now_ms`); returns the message-log position its
    /// confirm waits for.
    pub fn append(&self, msg: &Message, now_ms: u64) -> u64 {
        let filter = filter_value(msg);
        let properties = |offset: u64, out: &mut Vec<u8>| with_offset(msg, offset, out);
        let (_, ticket) = self.log.append(&NewEntry {
            timestamp: now_ms,
            filter: filter.as_deref(),
            exchange: &msg.exchange,
            routing_key: &msg.routing_key,
            properties: &properties,
            body: &msg.body,
        });
        // Age retention, at most once a second (size retention runs as segments fill).
        let last = self.retention_at.load(Ordering::Relaxed);
        if now_ms >= last + 1000
            && self
                .retention_at
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.log.apply_retention(now_ms);
        }
        ticket
    }

    /// Wake every reader to look at its credit and socket again.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// The next offset a named consumer reads, if the stream knows the name.
    pub fn tracked(&self, name: &str) -> Option<u64> {
        self.tracked.lock().next.get(name).copied()
    }

    /// Every named consumer's next offset (for management).
    pub fn tracked_all(&self) -> Vec<(String, u64)> {
        let t = self.tracked.lock();
        t.next.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// A consumer acknowledged the message at `offset`: its lag moves, and a named consumer's
    /// offset is tracked.
    pub fn acked(&self, sc: &StreamConsumer, offset: u64) {
        sc.acked(offset);
        if let Some(name) = &sc.spec.name {
            self.track(name, offset + 1);
        }
    }

    /// Which member of a single-active group reads: the partition's index (0 for a plain
    /// stream) modulo the group's size, so a super stream's partitions spread over a group.
    pub fn partition(&self) -> u32 {
        self.partition.load(Ordering::Relaxed)
    }

    /// A named consumer acknowledged up to `next` (exclusive).
    pub fn track(&self, name: &str, next: u64) {
        let mut t = self.tracked.lock();
        let cur = t.next.entry(name.to_owned()).or_insert(0);
        if next > *cur {
            *cur = next;
            t.dirty = true;
        }
    }

    /// Whether tracked offsets wait to be written, and since when they were last written.
    pub fn flush_due(&self) -> Option<u64> {
        let t = self.tracked.lock();
        (t.dirty && self.offsets_file.is_some()).then_some(t.written_at)
    }

    /// Write the tracked offsets if they changed (blocking I/O: call from a blocking context).
    pub fn flush_offsets(&self, now_ms: u64) {
        let Some(path) = &self.offsets_file else {
            return;
        };
        let snapshot = {
            let mut t = self.tracked.lock();
            if !t.dirty {
                return;
            }
            t.dirty = false;
            t.written_at = now_ms;
            t.next.clone()
        };
        if let Err(e) = write_offsets(path, &snapshot) {
            tracing::warn!(file = %path.display(), "cannot write stream consumer offsets: {e}");
            self.tracked.lock().dirty = true;
        }
    }
}

/// Read a stream's tracked offsets (a JSON object of name -> next offset).
fn read_offsets(path: &std::path::Path) -> Option<std::collections::BTreeMap<String, u64>> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(file = %path.display(), "ignoring unreadable stream offsets: {e}");
            None
        }
    }
}

fn write_offsets(
    path: &std::path::Path,
    m: &std::collections::BTreeMap<String, u64>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            return Ok(()); // the stream was deleted
        }
    }
    let tmp = path.with_extension("tmp");
    let f = std::fs::File::create(&tmp)?;
    serde_json::to_writer(&f, m).map_err(std::io::Error::other)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// The stored properties of a message: the publisher's, plus the `x-stream-offset` header
/// (signed 64-bit, as RabbitMQ sends it).
fn with_offset(msg: &Message, offset: u64, out: &mut Vec<u8>) {
    let p = &msg.properties;
    if !p.may_have_header(OFFSET_HEADER) {
        let mut entry = [0u8; 1 + 15 + 1 + 8];
        entry[0] = 15;
        entry[1..16].copy_from_slice(OFFSET_HEADER.as_bytes());
        entry[16] = b'l';
        entry[17..].copy_from_slice(&(offset as i64).to_be_bytes());
        p.with_header_entry(&entry, out);
        return;
    }
    // The publisher set one itself: replaced, the slow way.
    use amq_protocol::types::AMQPValue;
    let Some(props) = p.decode() else {
        out.extend_from_slice(&p.raw);
        return;
    };
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(OFFSET_HEADER.into(), AMQPValue::LongLongInt(offset as i64));
    match crate::broker::message::Properties::encode(&props.with_headers(headers)) {
        Some(e) => out.extend_from_slice(&e.raw),
        None => out.extend_from_slice(&p.raw),
    }
}

/// The message's `x-stream-filter-value` header (a string), if any.
fn filter_value(msg: &Message) -> Option<Vec<u8>> {
    if !msg.properties.may_have_header(FILTER_HEADER) {
        return None;
    }
    let props = msg.properties.decode()?;
    let headers = props.headers().as_ref()?;
    crate::broker::args::str_bytes(headers.inner().get(FILTER_HEADER)?).map(<[u8]>::to_vec)
}

/// A consumer's side of a stream: where it reads, what it wants, how far it got.
#[derive(Debug)]
pub struct StreamConsumer {
    pub spec: ConsumerSpec,
    /// The next offset the reader will look at.
    pub next: AtomicU64,
    /// The offset the reader started at.
    pub first: AtomicU64,
    /// One past the highest offset acknowledged (0: none yet).
    pub acked: AtomicU64,
    /// Publication time (wall ms) of the highest offset acknowledged (0: none yet).
    pub acked_at: AtomicU64,
    /// (offset, publication time) of deliveries not yet acknowledged, oldest first: what an ack
    /// needs to know how far behind the tail the reader is in time. At most its prefetch long.
    in_flight: parking_lot::Mutex<std::collections::VecDeque<(u64, u64)>>,
    /// The reader task was started (by the first dispatch after consume-ok).
    pub started: AtomicBool,
    /// The consumer is gone (cancelled, channel closed, queue deleted): the reader stops.
    pub stopped: AtomicBool,
}

impl StreamConsumer {
    pub fn new(spec: ConsumerSpec) -> StreamConsumer {
        StreamConsumer {
            spec,
            next: AtomicU64::new(0),
            first: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_at: AtomicU64::new(0),
            in_flight: Default::default(),
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    /// Messages at these (offset, publication time) went out to the consumer.
    pub fn sent(&self, batch: impl IntoIterator<Item = (u64, u64)>) {
        self.in_flight.lock().extend(batch);
    }

    /// Offset `offset` was acknowledged.
    pub fn acked(&self, offset: u64) {
        self.acked.fetch_max(offset + 1, Ordering::Relaxed);
        let mut f = self.in_flight.lock();
        let mut at = None;
        while let Some(&(o, ts)) = f.front() {
            if o > offset {
                break;
            }
            f.pop_front();
            if o == offset {
                at = Some(ts);
            }
        }
        if let Some(ts) = at {
            self.acked_at.fetch_max(ts, Ordering::Relaxed);
        }
    }

    /// How far behind the stream's committed end this reader's acknowledgements are: in
    /// messages, and in milliseconds of publication time (`tail_ts`: the newest message's)
    /// from the newest message it acknowledged or, before its first ack, from the oldest
    /// delivery it holds (0 while it holds none: nothing read yet).
    pub fn lag(&self, next: u64, tail_ts: u64) -> (u64, u64) {
        let acked = self.acked.load(Ordering::Relaxed);
        let start = self.start_hint();
        let messages = next.saturating_sub(acked.max(start));
        let at = if messages == 0 {
            None
        } else {
            let acked_at = self.acked_at.load(Ordering::Relaxed);
            (acked > start && acked_at > 0)
                .then_some(acked_at)
                .or_else(|| self.in_flight.lock().front().map(|&(_, ts)| ts))
        };
        (messages, at.map_or(0, |at| tail_ts.saturating_sub(at)))
    }

    /// Where the reader started (its first offset), below which nothing counts as lag.
    fn start_hint(&self) -> u64 {
        self.first.load(Ordering::Relaxed)
    }
}

/// One reader of a stream, as management shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderStatus {
    pub consumer_tag: String,
    pub name: Option<String>,
    /// Reading now (false: a standby of a single-active group).
    pub active: bool,
    /// The offset it started at, and the next one it will read.
    pub first_offset: u64,
    pub next_offset: u64,
    /// The highest offset it acknowledged, if any.
    pub acked_offset: Option<u64>,
    /// How far its acknowledgements are behind the stream's end: in messages, and in
    /// milliseconds of publication time.
    pub lag_messages: u64,
    pub lag_ms: u64,
    /// Delivered, not yet acknowledged.
    pub unacked: u32,
}

/// A stream's state for management, metrics and the CLI.
#[derive(Debug, Clone, Default)]
pub struct StreamStatus {
    pub info: crate::store::stream::StreamInfo,
    pub readers: Vec<ReaderStatus>,
    /// Named consumers' next offsets, with their lag in messages.
    pub tracked: Vec<(String, u64, u64)>,
}

impl crate::broker::queue::Queue {
    /// The stream's status, if this is a stream queue.
    pub fn stream_status(&self) -> Option<StreamStatus> {
        let stream = self.stream()?;
        let info = stream.log.info();
        let readers = self
            .consumer_list()
            .iter()
            .filter_map(|c| {
                let sc = c.stream.as_ref()?;
                let (lag_messages, lag_ms) = sc.lag(info.next, info.last_timestamp);
                let acked = sc.acked.load(Ordering::Relaxed);
                Some(ReaderStatus {
                    consumer_tag: c.tag.clone(),
                    name: sc.spec.name.clone(),
                    active: reader::is_active(self, stream, c),
                    first_offset: sc.first.load(Ordering::Relaxed),
                    next_offset: sc.next.load(Ordering::Relaxed),
                    acked_offset: acked.checked_sub(1),
                    lag_messages,
                    lag_ms,
                    unacked: c.unacked.load(Ordering::Relaxed),
                })
            })
            .collect();
        let mut readers: Vec<ReaderStatus> = readers;
        // A standby of a single-active group has read nothing of its own: it is as far behind
        // as its group (the active member, or the name's tracked offset).
        let snapshot = readers.clone();
        for r in readers.iter_mut().filter(|r| !r.active) {
            let Some(name) = &r.name else { continue };
            if let Some(a) = snapshot
                .iter()
                .find(|a| a.active && a.name.as_ref() == Some(name))
            {
                (r.lag_messages, r.lag_ms) = (a.lag_messages, a.lag_ms);
            } else if let Some(next) = stream.tracked(name) {
                r.lag_messages = info.next.saturating_sub(next.max(info.first));
            }
        }
        let tracked = stream
            .tracked_all()
            .into_iter()
            .map(|(n, next)| {
                let lag = info.next.saturating_sub(next.max(info.first));
                (n, next, lag)
            })
            .collect();
        Some(StreamStatus {
            info,
            readers,
            tracked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::stream::Start;

    /// Lag in time counts from the newest acked message, or before any ack from the oldest
    /// delivery held; never from time 0 (a reader that acked nothing once showed decades).
    #[test]
    fn lag_in_time_is_from_the_last_ack_or_the_oldest_delivery() {
        let sc = StreamConsumer::new(ConsumerSpec {
            start: Start::First,
            filter: None,
            name: None,
            single_active: false,
        });
        sc.first.store(5, Ordering::Relaxed);
        // Started at 5 of a stream ending at 10 (newest published at 9_000), nothing read yet.
        assert_eq!(sc.lag(10, 9_000), (5, 0));
        sc.sent([(5, 5_000), (6, 6_000), (7, 7_000)]);
        assert_eq!(sc.lag(10, 9_000), (5, 4_000));
        sc.acked(6);
        assert_eq!(sc.lag(10, 9_000), (3, 3_000));
        // Caught up: no lag in either.
        assert_eq!(sc.lag(7, 9_000), (0, 0));
    }
}
