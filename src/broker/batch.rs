//! A batch of work on one thread: a connection handling what one socket read brought (a few
//! hundred publishes under load). Inside a batch,
//! - a queue that took a message and has consumers is dispatched once, at the batch's end, for
//!   all the messages it took: one pass over its consumers and one lock, not one per message
//!   (`Queue::enqueue` defers when it may, see there);
//! - a writer that was handed bytes (`Wake`: a connection's outbox) is woken once, at the end,
//!   after those dispatches: so a batch reaches a consumer's socket as one write. After a big
//!   batch (`mark_heavy`), or for a writer with a lot queued (`Wake::heavy`), the wake-up comes
//!   from another thread (`handoff`), so the write is made on another core while this thread
//!   goes on with the next read; a light one is woken here, and runs on this core right after
//!   (no thread to wake: the lowest latency at light load).
//!
//! Outside a batch both happen at once, as they always did. Batches nest; the outermost one
//! does the work when it ends. A batch is a guard on the stack, never held across an `.await`.

use crate::broker::queue::Queue;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

/// Something to wake at the end of the batch that handed it work.
pub trait Wake: Send + Sync {
    fn wake(&self);
    /// Whether it has a lot to do (then it is woken from another thread, see `Batch`'s drop).
    fn heavy(&self) -> bool {
        false
    }
    /// Whether it is woken from this thread even after a heavy batch: a thread of its own
    /// (not a task of this runtime), which a wake-up does not bring onto this core.
    fn own_thread(&self) -> bool {
        false
    }
}

/// The thread that wakes, for a batch, the tasks with a lot to do (`Wake::heavy`). A task woken
/// from a runtime's own worker waits in that worker's LIFO slot until the waking task yields,
/// and the two take turns on one core; woken from another thread, it goes to the runtime's
/// shared queue and an idle worker runs it at once, on another core. Light wake-ups stay local:
/// the woken task runs on this core right after, without waking a thread (lower latency).
fn handoff() -> &'static tokio::runtime::Handle {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("wake-handoff")
            .build()
            .expect("the hand-off runtime starts")
    })
    .handle()
}

#[derive(Default)]
struct State {
    depth: u32,
    /// The batch was big (`Batch::mark_heavy`): every wake-up goes through the hand-off.
    heavy: bool,
    queues: Vec<Arc<Queue>>,
    wakes: Vec<Arc<dyn Wake>>,
}

thread_local! {
    static BATCH: RefCell<State> = RefCell::default();
}

/// The guard of a batch (see the module doc).
#[must_use = "a batch ends when its guard is dropped"]
pub struct Batch(());

impl Batch {
    pub fn begin() -> Batch {
        BATCH.with(|b| b.borrow_mut().depth += 1);
        Batch(())
    }

    /// The open batch was big (a read of many frames): the tasks it wakes run on other cores
    /// (see `handoff`), whatever each has to do.
    pub fn mark_heavy() {
        BATCH.with(|b| b.borrow_mut().heavy = true);
    }

    /// Inside a batch: dispatch `queue` at its end (true). Outside: false, dispatch now.
    pub(crate) fn defer_dispatch(queue: &Arc<Queue>) -> bool {
        BATCH.with(|b| {
            let mut b = b.borrow_mut();
            if b.depth == 0 {
                return false;
            }
            // Usually one or a few queues, again and again: each is kept once (a batch that
            // reaches very many only looks at the last few it added).
            if !b
                .queues
                .iter()
                .rev()
                .take(16)
                .any(|q| Arc::ptr_eq(q, queue))
            {
                b.queues.push(queue.clone());
            }
            true
        })
    }

    /// Inside a batch: wake `w` at its end (true). Outside: false, wake it now.
    pub fn defer_wake(w: &Arc<impl Wake + 'static>) -> bool {
        BATCH.with(|b| {
            let mut b = b.borrow_mut();
            if b.depth == 0 {
                return false;
            }
            let p = Arc::as_ptr(w) as *const ();
            if !b
                .wakes
                .iter()
                .rev()
                .take(64)
                .any(|o| std::ptr::eq(Arc::as_ptr(o) as *const (), p))
            {
                b.wakes.push(w.clone());
            }
            true
        })
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let outermost = BATCH.with(|b| {
            let mut b = b.borrow_mut();
            b.depth -= 1;
            b.depth == 0
        });
        if !outermost {
            return;
        }
        // Dispatching runs as a batch of its own: the writers it hands deliveries to are woken
        // below, once. (A guard, so that even a panic in a dispatch leaves the depth right.)
        let nested = Nested::enter();
        loop {
            let queues = BATCH.with(|b| std::mem::take(&mut b.borrow_mut().queues));
            if queues.is_empty() {
                break;
            }
            for q in &queues {
                let started = Instant::now();
                let n = q.dispatch_counted();
                if n > 0 {
                    crate::observe::stages::DISPATCH.record(started, n);
                }
            }
            recycle(queues, |b| &mut b.queues);
        }
        drop(nested);
        let (mut wakes, heavy) = BATCH.with(|b| {
            let mut b = b.borrow_mut();
            (std::mem::take(&mut b.wakes), std::mem::take(&mut b.heavy))
        });
        let mut far: Vec<Arc<dyn Wake>> = Vec::new();
        for w in wakes.drain(..) {
            if (heavy || w.heavy()) && !w.own_thread() {
                far.push(w);
            } else {
                w.wake();
            }
        }
        if !far.is_empty() {
            handoff().spawn(async move {
                for w in far {
                    w.wake();
                }
            });
        }
        recycle(wakes, |b| &mut b.wakes);
    }
}

/// One level of batch depth, given back when dropped.
struct Nested;

impl Nested {
    fn enter() -> Nested {
        BATCH.with(|b| b.borrow_mut().depth += 1);
        Nested
    }
}

impl Drop for Nested {
    fn drop(&mut self) {
        BATCH.with(|b| b.borrow_mut().depth -= 1);
    }
}

/// Give an emptied vector back to the thread's batch state, to be reused by the next batch.
fn recycle<T>(mut v: Vec<T>, slot: impl FnOnce(&mut State) -> &mut Vec<T>) {
    v.clear();
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let s = slot(&mut b);
        if s.is_empty() && s.capacity() < v.capacity() {
            *s = v;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::clock::Clock;
    use crate::broker::memory::MemoryMonitor;
    use crate::broker::message::{Message, Properties};
    use crate::broker::queue::{Consumer, ConsumerSink, QEntry};
    use bytes::Bytes;
    use parking_lot::Mutex;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    /// A consumer's channel that takes everything and remembers the bodies it got.
    #[derive(Debug, Default)]
    struct Taker(Mutex<Vec<Bytes>>);

    impl ConsumerSink for Taker {
        fn ready(&self, _: &Consumer, _: &Arc<Queue>) -> bool {
            true
        }
        fn deliver(&self, _: &Arc<Consumer>, _: &Arc<Queue>, entry: QEntry) {
            self.0.lock().push(entry.msg.body.bytes());
        }
        fn cancelled(&self, _: &Arc<Consumer>) {}
    }

    impl Taker {
        fn got(&self) -> Vec<String> {
            let got = self.0.lock();
            got.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        }
    }

    fn queue_with_consumer(args: amq_protocol::types::FieldTable) -> (Arc<Queue>, Arc<Taker>) {
        let q = Arc::new(Queue::new(
            "q".into(),
            std::sync::Weak::new(),
            Arc::new(Clock::default()),
            "/".into(),
            false,
            false,
            None,
            args,
        ));
        let sink = Arc::new(Taker::default());
        q.add_consumer(Arc::new(Consumer {
            tag: "c".into(),
            no_ack: true,
            exclusive: false,
            prefetch: 0,
            priority: 0,
            unacked: AtomicU32::new(0),
            cancelled: Default::default(),
            sink: sink.clone(),
            stream: None,
            arguments: Default::default(),
            follower: Default::default(),
        }))
        .unwrap();
        (q, sink)
    }

    /// A message with `body`, and an expiration (ms, as the property's text) if given.
    fn msg(body: &str, expiration: Option<&str>) -> Arc<Message> {
        let mut raw = vec![0u8, 0];
        if let Some(e) = expiration {
            raw[0] = 1; // the expiration flag (1 << 8)
            raw.push(e.len() as u8);
            raw.extend_from_slice(e.as_bytes());
        }
        let props = Properties::parse(Bytes::from(raw)).unwrap();
        let memory = MemoryMonitor::unlimited();
        Arc::new(Message::new(
            Bytes::new(),
            Bytes::from_static(b"q"),
            props,
            Bytes::copy_from_slice(body.as_bytes()),
            memory,
        ))
    }

    #[test]
    fn a_batch_dispatches_its_messages_once_it_ends_and_in_order() {
        let (q, sink) = queue_with_consumer(Default::default());
        {
            let _batch = Batch::begin();
            q.enqueue(msg("1", None), false);
            q.enqueue(msg("2", None), false);
            assert!(sink.got().is_empty(), "dispatched before the batch ended");
            {
                // A nested batch's end is not the end.
                let _inner = Batch::begin();
                q.enqueue(msg("3", None), false);
            }
            assert!(sink.got().is_empty(), "dispatched at a nested batch's end");
            // A message with a TTL is dispatched at once, after those before it.
            q.enqueue(msg("4", Some("60000")), false);
            assert_eq!(sink.got(), ["1", "2", "3", "4"]);
            q.enqueue(msg("5", None), false);
            assert_eq!(sink.got().len(), 4);
        }
        assert_eq!(sink.got(), ["1", "2", "3", "4", "5"]);
        // Outside a batch: at once.
        q.enqueue(msg("6", None), false);
        assert_eq!(sink.got().len(), 6);
    }

    #[test]
    fn a_queue_with_length_limits_dispatches_at_once() {
        // x-max-length applies to what dispatch leaves: a consumer waiting gets every message.
        let mut args = amq_protocol::types::FieldTable::default();
        args.insert(
            "x-max-length".into(),
            amq_protocol::types::AMQPValue::LongLongInt(1),
        );
        let (q, sink) = queue_with_consumer(args);
        let _batch = Batch::begin();
        for b in ["1", "2", "3"] {
            q.enqueue(msg(b, None), false);
        }
        assert_eq!(sink.got(), ["1", "2", "3"]);
    }

    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_come_once_each_when_the_batch_ends() {
        let (a, b) = (Arc::new(Counted::default()), Arc::new(Counted::default()));
        assert!(!Batch::defer_wake(&a), "deferred outside a batch");
        {
            let _batch = Batch::begin();
            for _ in 0..3 {
                assert!(Batch::defer_wake(&a));
                assert!(Batch::defer_wake(&b));
            }
            assert_eq!(a.0.load(Ordering::SeqCst), 0);
        }
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
    }
}
