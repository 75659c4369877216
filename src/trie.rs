//! The subscription trie shared by all connections.
//!
//! One node per topic level. A node holds the subscribers whose filter ends exactly there and
//! the subscribers of `<that level>/#`; `+` is a separate child. Matching walks only the
//! branches the topic can reach, so its cost depends on the topic's depth and the matching
//! subscriptions, not on how many other subscriptions exist.

use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::LazyLock;

/// A subscriber's entry: who (a unique session id) and what it stored (e.g. session handle + QoS).
pub type Entry<V> = (u64, V);

/// One node per topic level: its size times the number of subscriptions is the trie's memory
/// (with one subscription per client, the parent's table holds one node per client), so what
/// most nodes lack is boxed.
#[derive(Debug)]
struct Node<V> {
    /// Literal child levels.
    children: HashMap<Box<[u8]>, Node<V>, LevelHasher>,
    /// Filters ending at this node.
    exact: Subscribers<V>,
    /// The `+` child and the `#` subscribers, which most nodes do not have.
    wild: Option<Box<Wild<V>>>,
}

#[derive(Debug)]
struct Wild<V> {
    /// The `+` child.
    plus: Option<Node<V>>,
    /// Filters ending in `/#` below this node (or `#` at the root).
    multi: Subscribers<V>,
}

/// SipHash with keys drawn once per process: topic levels come from the network, so the keys
/// must be random (no flooding one bucket), and one copy for all nodes saves 16 bytes a node
/// over `RandomState` in each.
#[derive(Debug, Clone, Copy, Default)]
struct LevelHasher;

static LEVEL_KEYS: LazyLock<RandomState> = LazyLock::new(RandomState::new);

impl BuildHasher for LevelHasher {
    type Hasher = DefaultHasher;
    fn build_hasher(&self) -> DefaultHasher {
        LEVEL_KEYS.build_hasher()
    }
}

/// Lists this long get an id -> position index, so that many sessions subscribing to one
/// filter cost O(1) each instead of a scan (O(N^2) in total).
const INDEX_ABOVE: usize = 16;

/// The subscribers of one filter: a Vec to iterate when matching, plus an index once long.
#[derive(Debug)]
struct Subscribers<V> {
    entries: Vec<Entry<V>>,
    /// Boxed: most lists never get one, and unboxed it would cost 48 bytes in every node.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<u64, usize>>>,
}

impl<V> Default for Subscribers<V> {
    fn default() -> Self {
        Subscribers {
            entries: Vec::new(),
            index: None,
        }
    }
}

impl<V> Subscribers<V> {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, id: u64) -> Option<usize> {
        match &self.index {
            Some(ix) => ix.get(&id).copied(),
            None => self.entries.iter().position(|(i, _)| *i == id),
        }
    }

    /// Adds or replaces `id`; true if it is new.
    fn upsert(&mut self, id: u64, value: V) -> bool {
        if let Some(p) = self.position(id) {
            self.entries[p].1 = value;
            return false;
        }
        if self.entries.capacity() == 0 {
            // Most filters have one subscriber: room for one, not Vec's first four.
            self.entries.reserve_exact(1);
        }
        self.entries.push((id, value));
        let last = self.entries.len() - 1;
        match &mut self.index {
            Some(ix) => {
                ix.insert(id, last);
            }
            None if self.entries.len() > INDEX_ABOVE => {
                self.index = Some(Box::new(
                    self.entries
                        .iter()
                        .enumerate()
                        .map(|(p, (i, _))| (*i, p))
                        .collect(),
                ));
            }
            None => {}
        }
        true
    }

    /// Removes `id`; true if it was there.
    fn remove(&mut self, id: u64) -> bool {
        let Some(p) = self.position(id) else {
            return false;
        };
        self.entries.swap_remove(p);
        if let Some(ix) = &mut self.index {
            ix.remove(&id);
            if let Some((moved, _)) = self.entries.get(p) {
                ix.insert(*moved, p);
            }
            if self.entries.len() < INDEX_ABOVE / 2 {
                self.index = None;
            }
        }
        if self.entries.is_empty() {
            self.entries.shrink_to_fit();
        }
        true
    }
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::default(),
            exact: Subscribers::default(),
            wild: None,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.exact.is_empty() && self.wild.is_none()
    }

    fn wild_mut(&mut self) -> &mut Wild<V> {
        self.wild.get_or_insert_with(|| {
            Box::new(Wild {
                plus: None,
                multi: Subscribers::default(),
            })
        })
    }

    /// Drops the wildcard part once it holds nothing.
    fn prune_wild(&mut self) {
        if self
            .wild
            .as_ref()
            .is_some_and(|w| w.plus.is_none() && w.multi.is_empty())
        {
            self.wild = None;
        }
    }
}

/// One pending step of a match: a node, the rest of the topic below it (None: the topic
/// ended above), and whether its wildcards are skipped (a `$` topic's first level).
type MatchStep<'a, V> = (&'a Node<V>, Option<&'a [u8]>, bool);

/// A LIFO stack whose first `N` entries live inline (on the caller's stack), the rest on the
/// heap: a match of a usual topic allocates nothing, a 65,536-level one still works.
struct InlineStack<T, const N: usize> {
    inline: [Option<T>; N],
    len: usize,
    spill: Vec<T>,
}

impl<T, const N: usize> Default for InlineStack<T, N> {
    fn default() -> Self {
        InlineStack {
            inline: std::array::from_fn(|_| None),
            len: 0,
            spill: Vec::new(),
        }
    }
}

impl<T, const N: usize> InlineStack<T, N> {
    fn push(&mut self, item: T) {
        if self.len < N {
            self.inline[self.len] = Some(item);
            self.len += 1;
        } else {
            self.spill.push(item);
        }
    }

    fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        self.inline[self.len].take()
    }
}

/// Topic-filter trie mapping filters to subscriber entries.
#[derive(Debug)]
pub struct Trie<V> {
    root: Node<V>,
    /// Number of (filter, subscriber) pairs stored.
    len: usize,
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V: Clone> Trie<V> {
    /// Number of (filter, subscriber) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no subscription is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces subscriber `id` on `filter` (which must be valid). Returns true if new.
    pub fn insert(&mut self, filter: &str, id: u64, value: V) -> bool {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                let added = node.wild_mut().multi.upsert(id, value);
                self.len += added as usize;
                return added;
            }
            node = if level == "+" {
                node.wild_mut().plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.as_bytes().into()).or_default()
            };
        }
        let added = node.exact.upsert(id, value);
        self.len += added as usize;
        added
    }

    /// Removes subscriber `id` from `filter`. Returns true if it was there. Prunes empty nodes.
    ///
    /// Loops, no recursion: a filter's depth is the client's to choose (up to 65,536 levels
    /// in a 65,535-byte filter), and a stack overflow would abort the process.
    pub fn remove(&mut self, filter: &str, id: u64) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        // `a/#` keeps its subscribers in the wild part of node `a`: walk to that node.
        let multi = levels.last() == Some(&"#");
        let path = if multi {
            &levels[..levels.len() - 1]
        } else {
            &levels[..]
        };
        let Some(terminal) = Self::node_mut(&mut self.root, path) else {
            return false;
        };
        let removed = if multi {
            let removed = terminal
                .wild
                .as_deref_mut()
                .is_some_and(|w| w.multi.remove(id));
            terminal.prune_wild();
            removed
        } else {
            terminal.exact.remove(id)
        };
        if !removed {
            return false;
        }
        self.len -= 1;
        // The shallowest node from which down the path every node holds nothing but the
        // path's next node: that whole branch goes.
        let mut cut = None;
        let mut node = &self.root;
        for (depth, level) in path.iter().enumerate() {
            let Some(child) = Self::child(node, level) else {
                break;
            };
            let sole = match path.get(depth + 1) {
                None => child.is_empty(),
                Some(&"+") => {
                    child.exact.is_empty()
                        && child.children.is_empty()
                        && child.wild.as_ref().is_some_and(|w| w.multi.is_empty())
                }
                Some(_) => {
                    child.exact.is_empty() && child.wild.is_none() && child.children.len() == 1
                }
            };
            if !sole {
                cut = None;
            } else if cut.is_none() {
                cut = Some(depth);
            }
            node = child;
        }
        if let Some(depth) = cut {
            if let Some(parent) = Self::node_mut(&mut self.root, &path[..depth]) {
                let level = path[depth];
                if level == "+" {
                    if let Some(w) = parent.wild.as_deref_mut() {
                        w.plus = None;
                    }
                    parent.prune_wild();
                } else {
                    parent.children.remove(level.as_bytes());
                }
            }
        }
        true
    }

    /// The child of `node` for one filter level.
    fn child<'a>(node: &'a Node<V>, level: &str) -> Option<&'a Node<V>> {
        if level == "+" {
            node.wild.as_deref().and_then(|w| w.plus.as_ref())
        } else {
            node.children.get(level.as_bytes())
        }
    }

    /// The node reached from `node` by the filter levels `path` (a loop, not recursion).
    fn node_mut<'a>(mut node: &'a mut Node<V>, path: &[&str]) -> Option<&'a mut Node<V>> {
        for level in path {
            node = if *level == "+" {
                node.wild.as_deref_mut()?.plus.as_mut()?
            } else {
                node.children.get_mut(level.as_bytes())?
            };
        }
        Some(node)
    }

    /// Appends every entry whose filter matches `topic` to `out`. A subscriber with several
    /// matching filters appears once per filter; the caller merges them.
    ///
    /// An explicit stack instead of recursion: the topic's depth is the client's to choose.
    /// The stack holds at most two entries per level (the literal and the `+` branch).
    pub fn matches(&self, topic: &[u8], out: &mut Vec<Entry<V>>) {
        // [MQTT-4.7.2-1] wildcards at the first level do not match '$' topics.
        let dollar = topic.first() == Some(&b'$');
        // Inline for the usual depths: no allocation per PUBLISH.
        let mut stack: InlineStack<MatchStep<'_, V>, 16> = InlineStack::default();
        stack.push((&self.root, Some(topic), dollar));
        while let Some((node, rest, skip_wildcards)) = stack.pop() {
            let wild = if skip_wildcards {
                None
            } else {
                node.wild.as_deref()
            };
            if let Some(w) = wild {
                out.extend(w.multi.entries.iter().cloned());
            }
            let Some(rest) = rest else {
                out.extend(node.exact.entries.iter().cloned());
                continue;
            };
            let (level, next) = match rest.iter().position(|&b| b == b'/') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if let Some(child) = node.children.get(level) {
                stack.push((child, next, false));
            }
            if let Some(child) = wild.and_then(|w| w.plus.as_ref()) {
                stack.push((child, next, false));
            }
        }
    }
}

/// Dropping a node would drop its children recursively, one stack frame per level of a
/// client's filter: the subtree is taken apart with a loop instead.
impl<V> Drop for Node<V> {
    fn drop(&mut self) {
        if self.children.is_empty() && self.wild.as_ref().is_none_or(|w| w.plus.is_none()) {
            return;
        }
        let mut stack: Vec<Node<V>> = Vec::new();
        self.take_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.take_children(&mut stack);
            // `node` has no children left: its own drop ends at once.
        }
    }
}

impl<V> Node<V> {
    fn take_children(&mut self, stack: &mut Vec<Node<V>>) {
        stack.extend(self.children.drain().map(|(_, n)| n));
        if let Some(plus) = self.wild.as_deref_mut().and_then(|w| w.plus.take()) {
            stack.push(plus);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::filter_matches;
    use proptest::prelude::*;

    fn matched(trie: &Trie<()>, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        trie.matches(topic.as_bytes(), &mut out);
        let mut ids: Vec<u64> = out.into_iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn wildcards_match_as_section_4_7_describes() {
        let mut t = Trie::default();
        t.insert("sport/#", 1, ());
        t.insert("sport/+", 2, ());
        t.insert("#", 3, ());
        t.insert("+/+", 4, ());
        t.insert("$SYS/#", 5, ());
        assert_eq!(matched(&t, "sport"), vec![1, 3]);
        assert_eq!(matched(&t, "sport/tennis"), vec![1, 2, 3, 4]);
        assert_eq!(matched(&t, "/finance"), vec![3, 4]);
        // [MQTT-4.7.2-1]
        assert_eq!(matched(&t, "$SYS/broker"), vec![5]);
    }

    #[test]
    fn remove_prunes_and_counts() {
        let mut t = Trie::default();
        assert!(t.insert("a/+/c", 1, ()));
        assert!(!t.insert("a/+/c", 1, ()));
        assert!(t.insert("a/#", 1, ()));
        assert_eq!(t.len(), 2);
        assert!(t.remove("a/+/c", 1));
        assert!(!t.remove("a/+/c", 1));
        assert!(t.remove("a/#", 1));
        assert!(t.is_empty());
        assert!(t.root.is_empty());
    }

    #[test]
    fn many_sessions_on_one_filter_stay_consistent() {
        let mut t = Trie::default();
        for id in 0..1000 {
            assert!(t.insert("shared/+", id, ()));
        }
        assert!(!t.insert("shared/+", 500, ()));
        for id in (0..1000).step_by(3) {
            assert!(t.remove("shared/+", id));
        }
        assert!(!t.remove("shared/+", 0));
        let expected: Vec<u64> = (0..1000).filter(|i| i % 3 != 0).collect();
        assert_eq!(matched(&t, "shared/x"), expected);
        for id in 0..1000 {
            t.remove("shared/+", id);
        }
        assert!(t.is_empty() && t.root.is_empty());
    }

    /// The deepest filters and topics a client can send (65,535 bytes: 65,536 levels) are
    /// inserted, matched, removed and dropped with loops: the old recursive `collect`,
    /// `remove_at` and the nodes' drop overflowed the stack (issue 11, items 1 and 8).
    #[test]
    fn the_deepest_filters_and_topics_need_no_recursion() {
        let topic = "/".repeat(65_535);
        let mut plus = "+/".repeat(32_767);
        plus.push('+');
        let mut hash = "+/".repeat(32_767);
        hash.push('#');
        let mut t = Trie::default();
        t.insert(&topic, 1, ());
        t.insert(&plus, 2, ());
        t.insert(&hash, 3, ());
        assert_eq!(matched(&t, &topic), vec![1, 3]);
        // 32,768 levels, the last empty: both `+` chains match.
        assert_eq!(matched(&t, &"a/".repeat(32_767)), vec![2, 3]);
        assert!(t.remove(&topic, 1));
        assert!(t.remove(&plus, 2));
        assert_eq!(matched(&t, &topic), vec![3]);
        assert!(t.remove(&hash, 3));
        assert!(t.is_empty() && t.root.is_empty());
        // Dropping a deep trie.
        t.insert(&topic, 1, ());
        t.insert(&plus, 2, ());
        drop(t);
    }

    /// The inline stack is LIFO across its inline part and its spill.
    #[test]
    fn inline_stack_is_lifo_past_its_inline_part() {
        let mut s: InlineStack<u32, 2> = InlineStack::default();
        for i in 0..5 {
            s.push(i);
        }
        assert_eq!(s.pop(), Some(4));
        s.push(9);
        let rest: Vec<u32> = std::iter::from_fn(|| s.pop()).collect();
        assert_eq!(rest, vec![9, 3, 2, 1, 0]);
    }

    /// Removing one of two filters sharing a prefix prunes only the branch it alone used.
    #[test]
    fn remove_prunes_only_the_branch_left_empty() {
        let mut t = Trie::default();
        t.insert("a/b/c/d", 1, ());
        t.insert("a/b", 2, ());
        t.insert("a/+/x", 3, ());
        assert!(t.remove("a/b/c/d", 1));
        assert!(t.root.children[&b"a"[..]].children[&b"b"[..]]
            .children
            .is_empty());
        assert_eq!(matched(&t, "a/b"), vec![2]);
        assert_eq!(matched(&t, "a/q/x"), vec![3]);
        assert!(t.remove("a/+/x", 3));
        assert!(t.root.children[&b"a"[..]].wild.is_none());
        assert!(t.remove("a/b", 2));
        assert!(t.root.is_empty());
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$x".to_string()),
            Just("é".to_string()),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("empty filter", |(mut l, hash)| {
                if hash {
                    l.push("#".into());
                }
                (!l.is_empty()).then(|| l.join("/"))
            })
    }

    proptest! {
        /// The trie agrees with the plain reference matcher on random filters and topics.
        #[test]
        fn trie_agrees_with_reference_matcher(
            filters in prop::collection::vec(filter(), 1..30),
            topics in prop::collection::vec(topic(), 1..20),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut trie = Trie::default();
            for (id, f) in filters.iter().enumerate() {
                trie.insert(f, id as u64, ());
            }
            let mut live: Vec<bool> = vec![true; filters.len()];
            for r in removals {
                let id = r.index(filters.len());
                trie.remove(&filters[id], id as u64);
                live[id] = false;
            }
            for t in &topics {
                let expected: Vec<u64> = filters.iter().enumerate()
                    .filter(|(id, f)| live[*id] && filter_matches(f, t))
                    .map(|(id, _)| id as u64).collect();
                prop_assert_eq!(matched(&trie, t), expected, "topic {}", t);
            }
            // Removing everything prunes every node.
            for (id, f) in filters.iter().enumerate() {
                trie.remove(f, id as u64);
            }
            prop_assert!(trie.is_empty() && trie.root.is_empty());
        }
    }
}
