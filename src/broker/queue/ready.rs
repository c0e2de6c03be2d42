//! A queue's ready messages, in the order they go out.
//!
//! Two shapes behind one type, chosen once at declare:
//! - `Fifo`: one `VecDeque`, the plain queue — every operation is one branch on the shape and then
//!   exactly what a bare `VecDeque` would do (no per-message allocation);
//! - `Priority` (`x-max-priority`): one `VecDeque` per priority level, highest level first out,
//!   FIFO within a level. A message's priority above the maximum counts as the maximum, an absent
//!   one as 0 (as in RabbitMQ).
//!
//! Generic over the item (`ReadyItem`: its seq, body size and priority), so a queue can hold
//! entries in memory or paged-out ones alike.
//!
//! Invariants: within each deque items are sorted by `seq` (a requeued item goes back to its
//! original place within its level); `bytes` is the sum of the body sizes of all items; `len`
//! their number; no level above `top` holds items.

use crate::broker::queue::QEntry;
use std::collections::VecDeque;

/// What a ready list needs to know of its items.
pub trait ReadyItem {
    /// Position in the queue (publish order).
    fn seq(&self) -> u64;
    /// Body bytes (what `x-max-length-bytes` and `message_bytes_ready` count).
    fn size(&self) -> u64;
    /// The message's priority property (0 when absent).
    fn priority(&self) -> u8;
}

impl ReadyItem for QEntry {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn size(&self) -> u64 {
        self.msg.body_size() as u64
    }
    fn priority(&self) -> u8 {
        self.msg.properties.priority.unwrap_or(0)
    }
}

#[derive(Debug)]
pub struct Ready<T = QEntry> {
    shape: Shape<T>,
    bytes: u64,
}

#[derive(Debug)]
enum Shape<T> {
    Fifo(VecDeque<T>),
    Priority(Levels<T>),
}

#[derive(Debug)]
struct Levels<T> {
    /// `levels[p]` holds the items of priority `p`, for `p` in `0..=max`.
    levels: Vec<VecDeque<T>>,
    len: usize,
    /// No level above this one holds items (a hint that keeps `pop_front` from scanning
    /// empty levels).
    top: usize,
}

impl<T: ReadyItem> Levels<T> {
    fn level_of(&self, e: &T) -> usize {
        (e.priority() as usize).min(self.levels.len() - 1)
    }

    /// Lower `top` to the highest non-empty level (or 0).
    fn settle_top(&mut self) {
        while self.top > 0 && self.levels[self.top].is_empty() {
            self.top -= 1;
        }
    }

    fn add(&mut self, e: &T) -> usize {
        let l = self.level_of(e);
        self.len += 1;
        self.top = self.top.max(l);
        l
    }
}

impl<T: ReadyItem> Default for Ready<T> {
    fn default() -> Self {
        Ready::fifo()
    }
}

impl<T: ReadyItem> Ready<T> {
    /// A plain FIFO queue.
    pub fn fifo() -> Self {
        Ready {
            shape: Shape::Fifo(VecDeque::new()),
            bytes: 0,
        }
    }

    /// A priority queue with levels `0..=max_priority` (`x-max-priority`; 0 behaves as FIFO).
    pub fn with_max_priority(max_priority: u8) -> Self {
        if max_priority == 0 {
            return Ready::fifo();
        }
        Ready {
            shape: Shape::Priority(Levels {
                levels: (0..=max_priority).map(|_| VecDeque::new()).collect(),
                len: 0,
                top: 0,
            }),
            bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        match &self.shape {
            Shape::Fifo(d) => d.len(),
            Shape::Priority(p) => p.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sum of the body sizes of the ready messages.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Append a newly published item (its `seq` is the highest so far).
    #[inline]
    pub fn push_back(&mut self, e: T) {
        self.bytes += e.size();
        match &mut self.shape {
            Shape::Fifo(d) => d.push_back(e),
            Shape::Priority(p) => {
                let l = p.add(&e);
                p.levels[l].push_back(e);
            }
        }
    }

    /// Put an item back at the head of its level (it was just taken from there, e.g. to be
    /// read back in from disk).
    pub fn push_front(&mut self, e: T) {
        self.bytes += e.size();
        match &mut self.shape {
            Shape::Fifo(d) => d.push_front(e),
            Shape::Priority(p) => {
                let l = p.add(&e);
                p.levels[l].push_front(e);
            }
        }
    }

    /// The item that goes out next.
    #[inline]
    pub fn front(&self) -> Option<&T> {
        match &self.shape {
            Shape::Fifo(d) => d.front(),
            Shape::Priority(p) => p.levels[..=p.top].iter().rev().find_map(|l| l.front()),
        }
    }

    /// Take the item that goes out next.
    #[inline]
    pub fn pop_front(&mut self) -> Option<T> {
        let e = match &mut self.shape {
            Shape::Fifo(d) => d.pop_front(),
            Shape::Priority(p) => {
                p.settle_top();
                let e = p.levels[p.top].pop_front();
                if e.is_some() {
                    p.len -= 1;
                }
                e
            }
        }?;
        self.bytes -= e.size();
        Some(e)
    }

    /// Put a returned item back at its original place (by `seq`, within its priority).
    pub fn requeue(&mut self, e: T) {
        self.bytes += e.size();
        let d = match &mut self.shape {
            Shape::Fifo(d) => d,
            Shape::Priority(p) => {
                let l = p.add(&e);
                &mut p.levels[l]
            }
        };
        // Usually older than everything ready: a front insert.
        let pos = d.partition_point(|x| x.seq() < e.seq());
        d.insert(pos, e);
    }

    /// Keep only the items for which `keep` returns true (in order); the others are moved
    /// out to `removed`, in order too. `keep` sees each item once; nothing is moved or
    /// allocated before the first item to remove.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool, mut removed: impl FnMut(T)) {
        let mut gone = 0u64;
        let mut filter = |d: &mut VecDeque<T>| -> usize {
            let Some(first) = d.iter().position(|e| !keep(e)) else {
                return 0;
            };
            let mut tail = d.split_off(first);
            let before = tail.len();
            let mut out = 0;
            for (k, e) in tail.drain(..).enumerate() {
                if k > 0 && keep(&e) {
                    d.push_back(e);
                } else {
                    gone += e.size();
                    out += 1;
                    removed(e);
                }
            }
            debug_assert!(out <= before);
            out
        };
        match &mut self.shape {
            Shape::Fifo(d) => {
                filter(d);
            }
            Shape::Priority(p) => {
                for l in p.levels.iter_mut() {
                    p.len -= filter(l);
                }
                p.settle_top();
            }
        }
        self.bytes -= gone;
    }

    /// Every ready item, in the order they go out.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &T> + '_> {
        match &self.shape {
            Shape::Fifo(d) => Box::new(d.iter()),
            Shape::Priority(p) => Box::new(p.levels.iter().rev().flat_map(|l| l.iter())),
        }
    }

    /// Take every item out, in the order they would have gone out.
    pub fn drain(&mut self) -> Vec<T> {
        self.bytes = 0;
        match &mut self.shape {
            Shape::Fifo(d) => d.drain(..).collect(),
            Shape::Priority(p) => {
                p.len = 0;
                p.top = 0;
                p.levels
                    .iter_mut()
                    .rev()
                    .flat_map(|l| l.drain(..))
                    .collect()
            }
        }
    }

    /// Remove everything; returns how many items there were.
    pub fn clear(&mut self) -> usize {
        let n = self.len();
        match &mut self.shape {
            Shape::Fifo(d) => d.clear(),
            Shape::Priority(p) => {
                p.levels.iter_mut().for_each(VecDeque::clear);
                p.len = 0;
                p.top = 0;
            }
        }
        self.bytes = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryMonitor;
    use crate::broker::message::{Message, Properties};
    use bytes::Bytes;
    use std::sync::Arc;

    fn entry(seq: u64, priority: Option<u8>, body: &'static [u8]) -> QEntry {
        let mut raw = vec![0u8, 0];
        if let Some(p) = priority {
            raw = (1u16 << 11).to_be_bytes().to_vec();
            raw.push(p);
        }
        let props = Properties::parse(Bytes::from(raw)).unwrap();
        let msg = Message::new(
            Bytes::new(),
            Bytes::new(),
            props,
            Bytes::from_static(body),
            MemoryMonitor::unlimited(),
        );
        QEntry {
            seq,
            msg: Arc::new(msg),
            redelivered: false,
            qid: 0,
            expires: None,
            delivery_count: 0,
            enqueued: 0,
        }
    }

    fn seqs(r: &mut Ready) -> Vec<u64> {
        std::iter::from_fn(|| r.pop_front())
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn fifo_order_requeue_and_bytes() {
        let mut r = Ready::fifo();
        for s in 0..4 {
            r.push_back(entry(s, Some(9), b"ab"));
        }
        assert_eq!((r.len(), r.bytes()), (4, 8));
        let a = r.pop_front().unwrap();
        let b = r.pop_front().unwrap();
        r.requeue(b);
        r.requeue(a);
        let mut gone = Vec::new();
        r.retain(|e| e.seq == 0 || e.seq == 3, |e| gone.push(e.seq));
        assert_eq!(gone, vec![1, 2]);
        assert_eq!((r.len(), r.bytes()), (2, 4));
        r.push_back(entry(4, None, b"ab"));
        r.requeue(entry(1, None, b"ab"));
        r.retain(|e| e.seq != 4, |_| {});
        assert_eq!((r.len(), r.bytes()), (3, 6));
        assert_eq!(seqs(&mut r), vec![0, 1, 3]);
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn priority_order_cap_and_requeue() {
        let mut r = Ready::with_max_priority(5);
        r.push_back(entry(0, None, b"a"));
        r.push_back(entry(1, Some(3), b"a"));
        r.push_back(entry(2, Some(200), b"a")); // above max: counts as 5
        r.push_back(entry(3, Some(3), b"a"));
        r.push_back(entry(4, Some(5), b"a"));
        let first = r.pop_front().unwrap();
        assert_eq!(first.seq, 2);
        let second = r.pop_front().unwrap();
        assert_eq!(second.seq, 4);
        let third = r.pop_front().unwrap();
        assert_eq!(third.seq, 1);
        r.requeue(third);
        r.requeue(first);
        assert_eq!(
            r.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2, 1, 3, 0]
        );
        r.retain(|e| e.seq != 3, |_| {});
        assert_eq!(r.len(), 3);
        assert_eq!(r.front().map(|e| e.seq), Some(2));
        let head = r.pop_front().unwrap();
        r.push_front(head);
        assert_eq!(seqs(&mut r), vec![2, 1, 0]);
        assert_eq!((r.len(), r.bytes()), (0, 0));
        r.push_back(entry(9, Some(1), b"a"));
        r.push_back(entry(10, Some(4), b"a"));
        assert_eq!(
            r.drain().iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![10, 9]
        );
        assert_eq!((r.len(), r.bytes()), (0, 0));
        r.push_back(entry(11, Some(1), b"a"));
        assert_eq!(r.clear(), 1);
        assert!(r.pop_front().is_none());
    }
}
