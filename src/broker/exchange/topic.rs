//! Topic routing: binding patterns compiled into a trie at bind time.
//!
//! Words are separated by `.`; in a pattern `*` matches exactly one word and `#` zero or more.
//! A routing key is matched by walking the trie once, following literal, `*` and `#` edges, so the
//! cost grows with the key's length and the patterns that can match it, not with the number of
//! bindings.
//!
//! Never trust the patterns: a `#` may swallow any number of words, so a naive walk of
//! `#.#.#.#…` against a long key tries exponentially many splits (a client could stall the broker
//! with one bind and one publish). The walk remembers, for each `#` node, the longest rest of the
//! key it has already been tried with; every shorter rest is then covered, so each `#` node
//! looks at each word at most once and a match costs O(trie nodes × key words).

use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Debug)]
pub struct TopicTrie<D> {
    root: Node<D>,
}

#[derive(Debug)]
struct Node<D> {
    words: HashMap<Box<[u8]>, Node<D>>,
    star: Option<Box<Node<D>>>,
    hash: Option<Box<Node<D>>>,
    dests: Vec<D>,
}

impl<D> Default for Node<D> {
    fn default() -> Self {
        Node {
            words: HashMap::new(),
            star: None,
            hash: None,
            dests: Vec::new(),
        }
    }
}

impl<D> Default for TopicTrie<D> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
        }
    }
}

/// Split a key or pattern into words; the empty key has no words.
fn words(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    let empty = key.is_empty();
    key.split(|&b| b == b'.').filter(move |_| !empty)
}

impl<D: Clone + PartialEq> TopicTrie<D> {
    pub fn insert(&mut self, pattern: &[u8], dest: D) {
        let mut node = &mut self.root;
        for w in words(pattern) {
            node = match w {
                b"*" => node.star.get_or_insert_with(Default::default),
                b"#" => node.hash.get_or_insert_with(Default::default),
                w => node.words.entry(w.into()).or_default(),
            };
        }
        if !node.dests.contains(&dest) {
            node.dests.push(dest);
        }
    }

    pub fn remove(&mut self, pattern: &[u8], dest: &D) {
        let ws: Vec<&[u8]> = words(pattern).collect();
        remove_at(&mut self.root, &ws, dest);
    }

    /// Append every destination whose pattern matches `key` (may contain duplicates).
    pub fn matches(&self, key: &[u8], out: &mut Vec<D>) {
        // Routing keys are short; a small fixed buffer avoids allocating for the split.
        let mut buf: [&[u8]; 32] = [&[]; 32];
        let mut n = 0;
        let mut spill = Vec::new();
        for w in words(key) {
            if n < buf.len() {
                buf[n] = w;
            } else {
                if spill.is_empty() {
                    spill.extend_from_slice(&buf);
                }
                spill.push(w);
            }
            n += 1;
        }
        let ws: &[&[u8]] = if spill.is_empty() { &buf[..n] } else { &spill };
        HASH_SEEN.with(|seen| match seen.try_borrow_mut() {
            Ok(mut seen) => {
                seen.clear();
                walk(&self.root, ws, out, &mut seen);
            }
            Err(_) => walk(&self.root, ws, out, &mut Seen::default()),
        });
    }
}

/// Per `#` node (by address) reached in the current match: the longest rest of the key it has
/// been tried with. A few entries are searched in a list (a match usually meets one or two `#`
/// nodes); many go to a map.
#[derive(Default)]
struct Seen {
    few: Vec<(usize, usize)>,
    many: HashMap<usize, usize>,
}

impl Seen {
    const FEW: usize = 16;

    fn clear(&mut self) {
        self.few.clear();
        if !self.many.is_empty() {
            self.many.clear();
        }
    }

    fn get(&self, id: usize) -> Option<usize> {
        if self.many.is_empty() {
            self.few.iter().find(|e| e.0 == id).map(|e| e.1)
        } else {
            self.many.get(&id).copied()
        }
    }

    fn set(&mut self, id: usize, rest: usize) {
        if self.many.is_empty() {
            if let Some(e) = self.few.iter_mut().find(|e| e.0 == id) {
                e.1 = rest;
                return;
            }
            if self.few.len() < Self::FEW {
                self.few.push((id, rest));
                return;
            }
            self.many.extend(self.few.drain(..));
        }
        self.many.insert(id, rest);
    }
}

thread_local! {
    /// Reused across matches, so routing allocates nothing once warm.
    static HASH_SEEN: RefCell<Seen> = RefCell::new(Seen::default());
}

#[cfg(test)]
thread_local! {
    /// Nodes visited by `walk` on this thread (tests bound the work of a match with it).
    static VISITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn walk<D: Clone>(node: &Node<D>, ws: &[&[u8]], out: &mut Vec<D>, seen: &mut Seen) {
    #[cfg(test)]
    VISITS.with(|v| {
        v.set(v.get() + 1);
        assert!(v.get() < 1_000_000, "runaway topic match");
    });
    if let Some(h) = &node.hash {
        // `#` swallows zero or more words: try it with every rest of the key not tried before.
        let rest = ws.len();
        let id = &**h as *const Node<D> as usize;
        let tried = seen.get(id);
        if tried.is_none_or(|t| t < rest) {
            seen.set(id, rest);
            let shortest = tried.map_or(0, |t| t + 1);
            for k in (shortest..=rest).rev() {
                walk(h, &ws[rest - k..], out, seen);
            }
        }
    }
    match ws.split_first() {
        None => out.extend(node.dests.iter().cloned()),
        Some((w, rest)) => {
            if let Some(child) = node.words.get(*w) {
                walk(child, rest, out, seen);
            }
            if let Some(s) = &node.star {
                walk(s, rest, out, seen);
            }
        }
    }
}

/// Remove `dest` under the path `ws`; returns whether `node` is now empty (and can be pruned).
fn remove_at<D: PartialEq>(node: &mut Node<D>, ws: &[&[u8]], dest: &D) -> bool {
    match ws.split_first() {
        None => node.dests.retain(|d| d != dest),
        Some((w, rest)) => match *w {
            b"*" => {
                if let Some(s) = &mut node.star {
                    if remove_at(s, rest, dest) {
                        node.star = None;
                    }
                }
            }
            b"#" => {
                if let Some(h) = &mut node.hash {
                    if remove_at(h, rest, dest) {
                        node.hash = None;
                    }
                }
            }
            w => {
                if let Some(c) = node.words.get_mut(w) {
                    if remove_at(c, rest, dest) {
                        node.words.remove(w);
                    }
                }
            }
        },
    }
    node.dests.is_empty() && node.words.is_empty() && node.star.is_none() && node.hash.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(t: &TopicTrie<u32>, key: &str) -> Vec<u32> {
        let mut v = Vec::new();
        t.matches(key.as_bytes(), &mut v);
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn star_and_hash() {
        let mut t = TopicTrie::default();
        t.insert(b"a.*.c", 1);
        t.insert(b"a.#", 2);
        t.insert(b"#", 3);
        t.insert(b"*.b.*", 4);
        t.insert(b"a.#.c", 5);
        t.insert(b"", 6);
        assert_eq!(route(&t, "a.b.c"), vec![1, 2, 3, 4, 5]);
        assert_eq!(route(&t, "a"), vec![2, 3]);
        assert_eq!(route(&t, "a.c"), vec![2, 3, 5]);
        assert_eq!(route(&t, "a.x.y.c"), vec![2, 3, 5]);
        assert_eq!(route(&t, "x.b"), vec![3]);
        assert_eq!(route(&t, ""), vec![3, 6]);
    }

    #[test]
    fn remove_prunes() {
        let mut t = TopicTrie::default();
        t.insert(b"a.*.c", 1);
        t.insert(b"a.*.c", 2);
        t.remove(b"a.*.c", &1);
        assert_eq!(route(&t, "a.b.c"), vec![2]);
        t.remove(b"a.*.c", &2);
        assert!(t.root.words.is_empty());
        assert!(route(&t, "a.b.c").is_empty());
    }

    /// Regression (found by fuzzing): chained `#` against a long key took exponential time.
    #[test]
    fn chained_hashes_match_in_linear_work() {
        let mut t = TopicTrie::default();
        let hashes = vec!["#"; 64].join(".");
        t.insert(hashes.as_bytes(), 1);
        t.insert(format!("{hashes}.z").as_bytes(), 2);
        t.insert(b"#.w.#.w.#.w.#.w.#.w.#.w.#.y", 3);
        let key = vec!["w"; 127].join(".");
        VISITS.with(|v| v.set(0));
        assert_eq!(route(&t, &key), vec![1]);
        let visits = VISITS.with(|v| v.get());
        assert!(visits < 100_000, "{visits} nodes visited");
        assert_eq!(route(&t, &(key.clone() + ".z")), vec![1, 2]);
        assert_eq!(route(&t, "w.w.w.w.w.w.y"), vec![1, 3]);
        assert_eq!(route(&t, "w.w.w.w.w.y"), vec![1]);
    }

    #[test]
    fn long_keys_spill() {
        let mut t = TopicTrie::default();
        t.insert(b"#.z", 1);
        let key = vec!["w"; 40].join(".") + ".z";
        assert_eq!(route(&t, &key), vec![1]);
    }
}
