//! A connection's outgoing bytes and the task that writes them.
//!
//! Whoever produces frames (the connection's own task, or a queue dispatching from another
//! connection's task) encodes them straight into `buf` under a short lock. The writer task takes
//! everything queued at once and writes it with one `write_all`: many frames per syscall under load,
//! no added latency when idle. A connection handling a socket read wakes the writers it wrote to
//! once, at the end of the read's batch (`broker::batch`), not at the first frame, so that a
//! writer on another core does not send a batch in many small pieces; after a big batch (or for
//! a writer with a lot queued) the wake-up comes from another thread, so that the writer runs on
//! another core while the connection goes on parsing (see `broker::batch`).
//!
//! Back-pressure: `pending` counts bytes queued and not yet written. Above `HIGH_WATER` the
//! connection's consumers stop being offered messages (they stay in their queues) and those queues
//! are remembered; once the socket drains below `LOW_WATER` the writer asks them to dispatch again.
//! So a client that stops reading gets TCP back-pressure, not an ever-growing buffer.
//!
//! Everything else a client can make the broker send (basic.return, confirms, basic.get-ok, method
//! replies) is bounded another way: above `READ_STOP` the connection stops reading the client's
//! socket (and parsing what it already read) until the writer has drained it below that again. The
//! client then gets TCP back-pressure on its own writes. A writer that fails (the socket is gone)
//! marks the outbox dead: later frames are dropped, and the reader stops.

use crate::broker::batch::{Batch, Wake};
use crate::broker::queue::Queue;
use bytes::BytesMut;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

pub const HIGH_WATER: usize = 1 << 20;
/// The most one write sends: a client reading a big batch starts on its first part (and its
/// acknowledgements come back) while the rest is written.
const WRITE_MAX: usize = 64 << 10;
pub const LOW_WATER: usize = 256 << 10;
/// Bytes queued above which the connection reads no more from its client (see the module doc).
/// Above `HIGH_WATER`, so that deliveries alone (which stop there) never pause a consumer's acks.
pub const READ_STOP: usize = 4 << 20;

impl Wake for Outbox {
    fn wake(&self) {
        self.notify.notify_one();
    }

    fn heavy(&self) -> bool {
        self.pending() >= HEAVY
    }
}

/// Bytes queued above which a batch's wake-up of this writer is handed to another thread, so
/// that the writer runs on another core than the producer (see `broker::batch`).
const HEAVY: usize = 16 << 10;

#[derive(Debug, Default)]
pub struct Outbox {
    buf: Mutex<BytesMut>,
    pending: AtomicUsize,
    notify: Notify,
    closing: AtomicBool,
    blocked: Mutex<Vec<Weak<Queue>>>,
    /// Wakes the connection task for work another task found for it (a consumer timeout).
    kick: Notify,
    /// Wakes the reader when `pending` falls under `READ_STOP` again, or the writer died.
    room: Notify,
    /// The writer stopped on a write error: nothing queued will ever be sent.
    dead: AtomicBool,
}

impl Outbox {
    pub fn new() -> Arc<Self> {
        Arc::new(Outbox::default())
    }

    /// Append frames. Returns nothing: if the socket is gone the bytes are dropped. The writer
    /// is woken at once, or inside a batch (`broker::batch`) when the batch ends.
    pub fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut BytesMut) -> R) -> R {
        let (r, added) = {
            let mut b = self.buf.lock();
            let before = b.len();
            let r = f(&mut b);
            if self.dead.load(Ordering::Relaxed) {
                b.truncate(before);
            }
            let added = b.len() - before;
            // Counted under the lock: the writer subtracts what it took from the buffer, so
            // bytes it can take must already be counted (counting after the unlock let `pending`
            // wrap below zero for a moment, which read as a full outbox and stalled the reader).
            if added > 0 {
                self.pending.fetch_add(added, Ordering::SeqCst);
            }
            (r, added)
        };
        if added > 0 && !Batch::defer_wake(self) {
            self.notify.notify_one();
        }
        r
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Whether another delivery may be queued; if not, `queue` is woken once the socket drains.
    pub fn has_room(&self, queue: &Arc<Queue>) -> bool {
        if self.is_dead() {
            return false;
        }
        if self.pending() < HIGH_WATER {
            return true;
        }
        {
            let mut b = self.blocked.lock();
            if !b.iter().any(|w| w.as_ptr() == Arc::as_ptr(queue)) {
                b.push(Arc::downgrade(queue));
            }
        }
        // The writer may have drained between the check and the registration.
        self.pending() < HIGH_WATER
    }

    /// Whether the reader should stop reading from the client (see the module doc).
    pub fn is_full(&self) -> bool {
        self.pending() >= READ_STOP || self.is_dead()
    }

    /// The writer gave up (the socket failed).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Wait until `is_full` is false, or the writer died. The writer's wake-up is what ends the
    /// wait; the condition is also looked at again every 100 ms, so that a wake-up lost to some
    /// future accounting slip costs a pause, never a connection stuck for good.
    pub async fn room(&self) {
        while self.pending() >= READ_STOP && !self.is_dead() {
            let _ = tokio::time::timeout(Duration::from_millis(100), self.room.notified()).await;
        }
    }

    /// Wake the connection's own task (it looks for work such as overdue acknowledgements).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Wait for `kick`.
    pub async fn kicked(&self) {
        self.kick.notified().await
    }

    /// Stop after what is queued has been written.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn wake_blocked(&self) {
        let queues: Vec<Weak<Queue>> = std::mem::take(&mut *self.blocked.lock());
        for q in queues.iter().filter_map(Weak::upgrade) {
            q.dispatch();
        }
    }

    /// Wait for a wake-up; with `heartbeat` set, send a heartbeat frame if none comes for half
    /// the interval.
    async fn wait(self: &Arc<Self>, heartbeat: &std::sync::atomic::AtomicU64) {
        let hb = heartbeat.load(Ordering::Relaxed);
        if hb == 0 {
            self.notify.notified().await;
        } else if tokio::time::timeout(Duration::from_millis(hb * 500), self.notify.notified())
            .await
            .is_err()
        {
            self.with(crate::amqp::codec::encode_heartbeat);
        }
    }

    /// The writer task: runs until `close()` (after flushing) or a write error.
    /// With `heartbeat` set, a heartbeat frame goes out whenever nothing else was written for
    /// half that long (as RabbitMQ does; some clients give up after one silent interval).
    pub async fn run<W: tokio::io::AsyncWrite + Unpin>(
        self: Arc<Self>,
        mut sock: W,
        heartbeat: Arc<std::sync::atomic::AtomicU64>,
        info: Arc<crate::observe::ConnInfo>,
    ) {
        loop {
            // The rest of a batch cut at `WRITE_MAX` goes out next without waiting.
            let (chunk, more) = {
                let mut b = self.buf.lock();
                match b.len() {
                    0 => (None, false),
                    n if n > WRITE_MAX => (Some(b.split_to(WRITE_MAX)), true),
                    _ => (Some(b.split()), false),
                }
            };
            let Some(chunk) = chunk else {
                if self.closing.load(Ordering::SeqCst) {
                    break;
                }
                self.wait(&heartbeat).await;
                continue;
            };
            // flush: a TLS stream may keep encrypted records of the batch buffered when the
            // socket is full; nothing would push them out before the next batch (a no-op on TCP).
            let started = std::time::Instant::now();
            if let Err(e) = async {
                sock.write_all(&chunk).await?;
                sock.flush().await
            }
            .await
            {
                tracing::debug!("socket write failed: {e}");
                break;
            }
            crate::observe::stages::AMQP_WRITE.record(started, chunk.len() as u64);
            info.sent(chunk.len());
            let left = self.pending.fetch_sub(chunk.len(), Ordering::SeqCst) - chunk.len();
            if left < READ_STOP && left + chunk.len() >= READ_STOP {
                self.room.notify_one();
            }
            drop(chunk);
            if left < LOW_WATER && !self.blocked.lock().is_empty() {
                let _batch = Batch::begin();
                self.wake_blocked();
            }
            // What was added meanwhile goes out when its producer says so (a wake-up is stored
            // if it already did): not in small pieces while a batch is still being encoded.
            if !more && !self.closing.load(Ordering::SeqCst) {
                self.wait(&heartbeat).await;
            }
        }
        // Whatever is still queued will never go out: drop it, and stop the reader waiting.
        self.dead.store(true, Ordering::SeqCst);
        let dropped = std::mem::take(&mut *self.buf.lock());
        self.pending.fetch_sub(dropped.len(), Ordering::SeqCst);
        self.room.notify_one();
        let _ = sock.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// An outbox whose writer task writes to `sock`, on a runtime of one worker.
    fn writing_to<W: tokio::io::AsyncWrite + Unpin + Send + 'static>(
        sock: W,
    ) -> (
        tokio::runtime::Runtime,
        Arc<Outbox>,
        tokio::task::JoinHandle<()>,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let outbox = Outbox::new();
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let info = Arc::new(crate::observe::ConnInfo::new(1, addr, addr));
        let heartbeat = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = rt.spawn(outbox.clone().run(sock, heartbeat, info));
        (rt, outbox, writer)
    }

    /// Frames queued inside a batch go out when the batch ends, in one piece, not while the
    /// batch is still adding to them; outside a batch they go out at once.
    #[test]
    fn a_batch_is_written_when_it_ends() {
        let (sock, mut client) = tokio::io::duplex(1 << 20);
        let (rt, outbox, _writer) = writing_to(sock);
        let read = |client: &mut tokio::io::DuplexStream| {
            let mut got = vec![0u8; 1 << 16];
            rt.block_on(async {
                match tokio::time::timeout(Duration::from_millis(200), client.read(&mut got)).await
                {
                    Ok(n) => got[..n.unwrap()].to_vec(),
                    Err(_) => Vec::new(),
                }
            })
        };
        // (The writer is waiting for work before the batch begins.)
        std::thread::sleep(Duration::from_millis(50));
        let batch = crate::broker::batch::Batch::begin();
        outbox.with(|b| b.extend_from_slice(b"one,"));
        outbox.with(|b| b.extend_from_slice(b"two,"));
        assert_eq!(read(&mut client), b"", "written before the batch ended");
        outbox.with(|b| b.extend_from_slice(b"three"));
        drop(batch);
        assert_eq!(read(&mut client), b"one,two,three");
        outbox.with(|b| b.extend_from_slice(b"alone"));
        assert_eq!(read(&mut client), b"alone");
        outbox.close();
    }

    /// Regression: `with` counted its bytes in `pending` after releasing the buffer's lock, so
    /// the writer could take and subtract them first and `pending` wrapped below zero for a
    /// moment. Read as "more than READ_STOP queued", that paused a consumer's connection for
    /// good (seen in a benchmark after about a minute at 400,000 msg/s). Producers on two
    /// threads race a writer draining into a sink while a third samples `pending`.
    #[test]
    fn pending_never_wraps_below_zero_while_the_writer_drains() {
        let (rt, outbox, writer) = writing_to(tokio::io::sink());
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (o, stop) = (outbox.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        o.with(|b| b.extend_from_slice(&[0u8; 40]));
                    }
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_millis(400);
        let mut worst = 0;
        while std::time::Instant::now() < deadline {
            worst = worst.max(outbox.pending());
        }
        stop.store(true, Ordering::Relaxed);
        for p in producers {
            p.join().unwrap();
        }
        outbox.close();
        rt.block_on(writer).unwrap();
        assert!(worst < 1 << 40, "pending wrapped: {worst}");
        assert_eq!(outbox.pending(), 0);
    }
}
