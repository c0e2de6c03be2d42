//! Topic routing: binding patterns compiled into a trie at bind time.
//!
//! Words are separated by `.`; in a pattern `*` matches exactly one word and `#` zero or more.
//! A routing key is matched by walking the trie once, following literal, `*` and `#` edges, so the
//! cost grows with the key's length and the patterns that can match it, not with the number of
//! bindings.

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
        walk(&self.root, ws, out);
    }
}

fn walk<D: Clone>(node: &Node<D>, ws: &[&[u8]], out: &mut Vec<D>) {
    if let Some(h) = &node.hash {
        // `#` swallows zero or more words.
        for skip in 0..=ws.len() {
            walk(h, &ws[skip..], out);
        }
    }
    match ws.split_first() {
        None => out.extend(node.dests.iter().cloned()),
        Some((w, rest)) => {
            if let Some(child) = node.words.get(*w) {
                walk(child, rest, out);
            }
            if let Some(s) = &node.star {
                walk(s, rest, out);
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

    #[test]
    fn long_keys_spill() {
        let mut t = TopicTrie::default();
        t.insert(b"#.z", 1);
        let key = vec!["w"; 40].join(".") + ".z";
        assert_eq!(route(&t, &key), vec![1]);
    }
}
