//! Publishes forwarded to the node a queue lives on. A publisher's node routes a message as
//! usual; the copies for queues on another node go to that node's `Forwarder`, which sends them
//! there in batches over the link (one call per batch, in order). The other node enqueues them,
//! stores the persistent ones, and answers once they are durable; only then is each message's
//! publisher confirm sent (or a nack, when the node could not take them in time).
//!
//! Progress is a sequence number per forwarder: every message gets the next one, and
//! `resolved` is the highest one answered (taken or failed, in order). The few that failed are
//! remembered until their publishers have looked.

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tracing::warn;

/// One message for queues on the receiving node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    pub vhost: String,
    pub queues: Vec<String>,
    pub exchange: Bytes,
    pub routing_key: Bytes,
    /// The content header's property bytes, as the publisher sent them.
    pub properties: Bytes,
    pub body: Bytes,
}

/// What one call carries: messages in order, numbered by their forwarder (`origin`, random per
/// forwarder and start) up to `last`. A batch is sent again whole when its answer was lost: the
/// receiver skips a batch whose `last` it has taken already.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch {
    pub origin: u64,
    pub last: u64,
    pub msgs: Vec<Forwarded>,
}

#[derive(Serialize)]
struct BatchRef<'a> {
    origin: u64,
    last: u64,
    msgs: Vec<&'a Forwarded>,
}

/// The most bytes of messages a forwarder holds before publishers are paused.
const BUDGET: usize = 64 << 20;
/// The most bytes in one call.
const BATCH_BYTES: usize = 1 << 20;
/// How long a batch may keep failing before its messages are nacked.
const GIVE_UP: Duration = Duration::from_secs(10);

struct Pending {
    queue: VecDeque<(u64, Forwarded)>,
    bytes: usize,
    /// The sending task ended (`close`): a message sent now is refused at once.
    ended: bool,
}

/// The messages on their way to one node.
pub struct Forwarder {
    pub node: String,
    origin: u64,
    pending: Mutex<Pending>,
    next: AtomicU64,
    resolved: AtomicU64,
    failed: Mutex<BTreeSet<u64>>,
    wake: Notify,
    /// Set by `close`: the sending task ends once nothing is left to send or answer.
    closed: std::sync::atomic::AtomicBool,
    /// Bumped whenever any forwarder resolves messages (the cluster's, shared): connections
    /// waiting for confirms wake on it.
    progress: watch::Sender<u64>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("node", &self.node)
            .finish()
    }
}

/// Where a forwarded message's confirm waits.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub forwarder: Arc<Forwarder>,
    pub seq: u64,
}

impl Ticket {
    /// Whether the node has answered for this message.
    pub fn resolved(&self) -> bool {
        self.forwarder.resolved.load(Ordering::Acquire) >= self.seq
    }

    /// Once resolved: whether the node took the message. Asked once per ticket (a failure is
    /// forgotten once told).
    pub fn took(&self) -> bool {
        !self.forwarder.failed.lock().remove(&self.seq)
    }
}

fn size(m: &Forwarded) -> usize {
    m.body.len() + m.properties.len() + m.routing_key.len() + 64
}

impl Forwarder {
    pub fn new(node: String, progress: watch::Sender<u64>) -> Arc<Self> {
        Arc::new(Forwarder {
            node,
            origin: rand::random(),
            pending: Mutex::new(Pending {
                queue: VecDeque::new(),
                bytes: 0,
                ended: false,
            }),
            next: AtomicU64::new(1),
            resolved: AtomicU64::new(0),
            failed: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            closed: Default::default(),
            progress,
        })
    }

    /// No more messages will come (the queue's group stopped here): the task sending batches
    /// ends once what it holds is answered.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Closed and nothing left: the task ends (decided under the lock `send` takes).
    fn finished(&self) -> bool {
        let mut p = self.pending.lock();
        p.ended = self.closed.load(Ordering::Acquire) && p.queue.is_empty();
        p.ended
    }

    /// Queue a message; its confirm waits for the returned ticket.
    pub fn send(self: &Arc<Self>, m: Forwarded) -> Ticket {
        let (seq, ended);
        {
            let mut p = self.pending.lock();
            seq = self.next.fetch_add(1, Ordering::Relaxed);
            ended = p.ended;
            if !ended {
                p.bytes += size(&m);
                p.queue.push_back((seq, m));
            }
        }
        if ended {
            // Everything before it is answered: refused (its publisher gets a nack).
            self.resolve(seq, [seq]);
        } else {
            self.wake.notify_one();
        }
        Ticket {
            forwarder: self.clone(),
            seq,
        }
    }

    /// Publishers should pause: more than the budget waits to be sent.
    pub fn congested(&self) -> bool {
        self.pending.lock().bytes > BUDGET
    }

    fn take_batch(&self) -> Vec<(u64, Forwarded)> {
        let mut p = self.pending.lock();
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some((_, m)) = p.queue.front() {
            if !out.is_empty() && bytes + size(m) > BATCH_BYTES {
                break;
            }
            let (seq, m) = p.queue.pop_front().expect("front exists");
            bytes += size(&m);
            out.push((seq, m));
        }
        p.bytes -= bytes;
        out
    }

    fn resolve(&self, upto: u64, failed: impl IntoIterator<Item = u64>) {
        self.failed.lock().extend(failed);
        self.resolved.fetch_max(upto, Ordering::AcqRel);
        self.progress.send_modify(|n| *n += 1);
    }

    /// Send batches as they come, each once the previous one is answered. `call` sends one
    /// batch (encoded) and waits for the node's answer.
    pub async fn run<F, Fut>(self: Arc<Self>, call: F)
    where
        F: Fn(Bytes) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        loop {
            let batch = self.take_batch();
            if batch.is_empty() {
                if self.finished() {
                    return;
                }
                self.wake.notified().await;
                continue;
            }
            let last = batch.last().map_or(0, |(s, _)| *s);
            let msgs: Vec<&Forwarded> = batch.iter().map(|(_, m)| m).collect();
            let b = BatchRef {
                origin: self.origin,
                last,
                msgs,
            };
            let payload = match postcard::to_stdvec(&b) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    warn!("cannot encode messages for {}: {e}", self.node);
                    self.resolve(last, batch.iter().map(|(s, _)| *s));
                    continue;
                }
            };
            let started = tokio::time::Instant::now();
            let mut logged = false;
            loop {
                match call(payload.clone()).await {
                    Ok(()) => {
                        self.resolve(last, []);
                        break;
                    }
                    Err(e) if started.elapsed() < GIVE_UP => {
                        if !logged {
                            warn!("cannot forward messages to {} yet: {e}", self.node);
                            logged = true;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        warn!(
                            "{} messages for queues on {} were refused (their publishers get a \
                             nack): {e}",
                            batch.len(),
                            self.node
                        );
                        self.resolve(last, batch.iter().map(|(s, _)| *s));
                        break;
                    }
                }
            }
        }
    }
}

/// The batches taken lately from each forwarder (by their `last` number): a batch sent again
/// is skipped. Exact numbers, not the highest: with batches in flight together, one sent again
/// after a failure may come after a later one.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Seen(std::collections::HashMap<u64, BTreeSet<u64>>);

/// Batch numbers remembered per forwarder.
const SEEN_KEPT: usize = 1024;

impl Seen {
    /// Whether `b` is new (and remember it).
    pub fn take(&mut self, b: &Batch) -> bool {
        let seen = self.0.entry(b.origin).or_default();
        if !seen.insert(b.last) {
            return false;
        }
        while seen.len() > SEEN_KEPT {
            seen.pop_first();
        }
        true
    }
}

/// A batch proposed and not yet answered (`Forwarder::run_pipelined`).
pub type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

struct InFlight {
    last: u64,
    seqs: Vec<u64>,
    payload: Bytes,
    answer: Answer,
}

impl Forwarder {
    fn encode(&self, batch: &[(u64, Forwarded)]) -> Result<Bytes, String> {
        let last = batch.last().map_or(0, |(s, _)| *s);
        let b = BatchRef {
            origin: self.origin,
            last,
            msgs: batch.iter().map(|(_, m)| m).collect(),
        };
        postcard::to_stdvec(&b)
            .map(Bytes::from)
            .map_err(|e| format!("cannot encode messages for {}: {e}", self.node))
    }

    /// `run` with up to `depth` batches in flight: `submit` hands a batch on in order (to a
    /// Raft group's log, say) and returns its answer to wait for. Answers are taken in order; a
    /// batch that failed is sent again with `call` (and its retries) before the next answer.
    pub async fn run_pipelined<S, SFut, F, Fut>(self: Arc<Self>, depth: usize, submit: S, call: F)
    where
        S: Fn(Bytes) -> SFut,
        SFut: std::future::Future<Output = Result<Answer, String>>,
        F: Fn(Bytes) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut flight: VecDeque<InFlight> = VecDeque::new();
        loop {
            while flight.len() < depth {
                let batch = self.take_batch();
                if batch.is_empty() {
                    break;
                }
                let last = batch.last().map_or(0, |(s, _)| *s);
                let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
                let payload = match self.encode(&batch) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!("{e}");
                        self.resolve(last, seqs);
                        continue;
                    }
                };
                let answer: Answer = match submit(payload.clone()).await {
                    Ok(a) => a,
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                };
                flight.push_back(InFlight {
                    last,
                    seqs,
                    payload,
                    answer,
                });
            }
            let room = flight.len() < depth;
            let Some(front) = flight.front_mut() else {
                if self.finished() {
                    return;
                }
                self.wake.notified().await;
                continue;
            };
            if room {
                // Take more while waiting, if more comes.
                tokio::select! {
                    r = &mut front.answer => {
                        let f = flight.pop_front().expect("front exists");
                        self.settle(f, r, &call).await;
                    }
                    _ = self.wake.notified() => {}
                }
            } else {
                let r = (&mut front.answer).await;
                let f = flight.pop_front().expect("front exists");
                self.settle(f, r, &call).await;
            }
        }
    }

    /// A pipelined batch's answer: resolved, or sent again until answered or given up.
    async fn settle<F, Fut>(&self, f: InFlight, r: Result<(), String>, call: &F)
    where
        F: Fn(Bytes) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        if r.is_ok() {
            self.resolve(f.last, []);
            return;
        }
        let started = tokio::time::Instant::now();
        let mut last_err = r.err().unwrap_or_default();
        loop {
            if started.elapsed() >= GIVE_UP {
                warn!(
                    "{} messages for {} were refused (their publishers get a nack): {last_err}",
                    f.seqs.len(),
                    self.node
                );
                self.resolve(f.last, f.seqs);
                return;
            }
            match call(f.payload.clone()).await {
                Ok(()) => {
                    self.resolve(f.last, []);
                    return;
                }
                Err(e) => last_err = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `Forwarded` as decoded in place: its byte fields borrow the batch's buffer.
#[derive(Deserialize)]
struct ForwardedView<'a> {
    vhost: String,
    queues: Vec<String>,
    exchange: &'a [u8],
    routing_key: &'a [u8],
    properties: &'a [u8],
    body: &'a [u8],
}

#[derive(Deserialize)]
struct BatchView<'a> {
    origin: u64,
    last: u64,
    #[serde(borrow)]
    msgs: Vec<ForwardedView<'a>>,
}

/// Decode a batch the other side sent. The messages' bytes are not copied: each is a slice of
/// `b` (which they keep alive).
pub fn decode_batch(b: &Bytes) -> Result<Batch, String> {
    let v: BatchView<'_> =
        postcard::from_bytes(b).map_err(|e| format!("undecodable forwarded messages: {e}"))?;
    let share = |s: &[u8]| {
        if s.is_empty() {
            Bytes::new()
        } else {
            b.slice_ref(s)
        }
    };
    Ok(Batch {
        origin: v.origin,
        last: v.last,
        msgs: v
            .msgs
            .into_iter()
            .map(|m| Forwarded {
                vhost: m.vhost,
                queues: m.queues,
                exchange: share(m.exchange),
                routing_key: share(m.routing_key),
                properties: share(m.properties),
                body: share(m.body),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Forwarded {
        Forwarded {
            vhost: "/".into(),
            queues: vec!["q".into()],
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"q"),
            properties: Bytes::new(),
            body: Bytes::from_static(b"body"),
        }
    }

    /// A batch decodes without copying: its messages' bytes are slices of the payload.
    #[test]
    fn a_batch_decodes_in_place() {
        let f = Forwarder::new("n".into(), watch::channel(0).0);
        let payload = f.encode(&[(1, msg()), (2, msg())]).unwrap();
        let b = decode_batch(&payload).unwrap();
        assert_eq!((b.origin, b.last, b.msgs.len()), (f.origin, 2, 2));
        let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
        for m in &b.msgs {
            assert_eq!(
                (m.vhost.as_str(), m.queues.as_slice()),
                ("/", &["q".to_owned()][..])
            );
            assert_eq!(&m.body[..], b"body");
            assert!(
                range.contains(&(m.body.as_ptr() as usize)),
                "not a slice of the payload"
            );
        }
        assert!(decode_batch(&Bytes::from_static(b"\xff\xff")).is_err());
    }

    /// Closed, the sending task ends once what it holds is answered; a message sent after that
    /// is refused at once (its publisher is not left waiting).
    #[tokio::test]
    async fn a_closed_forwarder_ends_and_refuses_what_comes_later() {
        let f = Forwarder::new("n".into(), watch::channel(0).0);
        let task = tokio::spawn(f.clone().run_pipelined(
            4,
            |_| async { Ok(Box::pin(std::future::ready(Ok(()))) as Answer) },
            |_| async { Ok(()) },
        ));
        let tickets: Vec<Ticket> = (0..3).map(|_| f.send(msg())).collect();
        f.close();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends")
            .unwrap();
        assert!(tickets.iter().all(|t| t.resolved() && t.took()));
        let late = f.send(msg());
        assert!(late.resolved() && !late.took());
    }
}
