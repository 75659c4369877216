//! Retained messages, kept in a topic tree so that a wildcard SUBSCRIBE visits only the
//! branches its filter can reach.
//!
//! Every walk is a loop over an explicit stack, never recursion: a topic may have 65,536
//! levels (65,535 `/`), and a stored message must not crash the broker on every start.
//! Children are ordered (a BTreeMap), so a walk can stop after any message and resume after
//! it later (`matching_after`): a subscription matching a million retained messages is fed
//! to its client a chunk at a time instead of being copied into its queue at once.

use std::collections::btree_map::Range;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::message::Publication;

#[derive(Debug, Default)]
struct Node {
    children: BTreeMap<Box<[u8]>, Node>,
    message: Option<Arc<Publication>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }
}

/// Dropping a node would drop its children recursively, a stack frame per level.
impl Drop for Node {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node> = std::mem::take(&mut self.children).into_values().collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(std::mem::take(&mut node.children).into_values());
        }
    }
}

/// Bounds on what is retained (`max_retained_messages`, `max_retained_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct RetainedLimits {
    pub max_messages: usize,
    /// Topic + payload bytes of all retained messages.
    pub max_bytes: usize,
}

impl Default for RetainedLimits {
    fn default() -> Self {
        RetainedLimits {
            max_messages: usize::MAX,
            max_bytes: usize::MAX,
        }
    }
}

/// What `set` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// Stored (new topic, or replacing the topic's previous message).
    Stored,
    /// An empty payload deleted the topic's retained message (or there was none).
    Deleted,
    /// Not retained: over `max_retained_messages` or `max_retained_bytes`. The previous
    /// message of the topic, if any, stays.
    Refused,
}

/// The latest retained message per topic.
#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    count: usize,
    /// Topic + payload bytes retained.
    bytes: usize,
    /// Of those, the `$SYS/` messages (not held against the limits).
    sys_count: usize,
    sys_bytes: usize,
    limits: RetainedLimits,
}

/// A walk over the tree for one filter, from a cursor, up to a number of messages.
struct Walk<'a, 'o> {
    filter: Vec<&'a [u8]>,
    cursor: Vec<&'a [u8]>,
    out: &'o mut Vec<Arc<Publication>>,
    /// Messages still to take.
    left: usize,
}

impl<'a> Walk<'a, '_> {
    /// Visits one node: takes its message if it matches, then pushes a frame for the
    /// children the filter reaches. True once `left` messages were taken.
    fn visit(
        &mut self,
        node: &'a Node,
        depth: usize,
        on_cursor: bool,
        all: bool,
        stack: &mut Vec<Frame<'a>>,
    ) -> bool {
        // (take this node's message, children to visit: None = none, Some(None) = all of
        // them, Some(Some(l)) = the one named l)
        let (take, children) = if all {
            (true, Some(None))
        } else if depth == self.filter.len() {
            (true, None)
        } else {
            match self.filter[depth] {
                // `a/#` also matches `a` itself.
                b"#" => (depth > 0, Some(None)),
                b"+" => (false, Some(None)),
                literal => (false, Some(Some(literal))),
            }
        };
        // A node on the cursor's path comes before the cursor, or is it: already taken.
        if take && !on_cursor {
            if let Some(m) = &node.message {
                self.out.push(m.clone());
                self.left -= 1;
                if self.left == 0 {
                    return true;
                }
            }
        }
        let Some(literal) = children else {
            return false;
        };
        let cursor_level = if on_cursor {
            self.cursor.get(depth).copied()
        } else {
            None
        };
        let range = match (literal, cursor_level) {
            // The one child wanted lies before the cursor: nothing left here.
            (Some(l), Some(c)) if l < c => node
                .children
                .range::<[u8], _>((Bound::Included(l), Bound::Excluded(l))),
            (Some(l), _) => node
                .children
                .range::<[u8], _>((Bound::Included(l), Bound::Included(l))),
            (None, Some(c)) => node
                .children
                .range::<[u8], _>((Bound::Included(c), Bound::Unbounded)),
            (None, None) => node.children.range::<[u8], _>(..),
        };
        let hash = !all && literal.is_none() && self.filter.get(depth) == Some(&&b"#"[..]);
        stack.push(Frame {
            children: range,
            depth: depth + 1,
            cursor_level,
            all: all || hash,
            skip_dollar: depth == 0 && literal.is_none(),
        });
        false
    }
}

/// One level of a walk: the children still to visit, and how to treat them.
struct Frame<'a> {
    children: Range<'a, Box<[u8]>, Node>,
    /// Depth of the children (topic levels above them).
    depth: usize,
    /// The resume cursor's level at this depth when the parent lies on the cursor's path:
    /// the child with this name is on the path, later ones are past it.
    cursor_level: Option<&'a [u8]>,
    /// Inside a `#`: every descendant matches.
    all: bool,
    /// First level under a leading wildcard: `$` topics are skipped [MQTT-4.7.2-1].
    skip_dollar: bool,
}

impl RetainedStore {
    pub fn new(limits: RetainedLimits) -> RetainedStore {
        RetainedStore {
            limits,
            ..RetainedStore::default()
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Topic + payload bytes of all retained messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stores `msg` as the retained message of its topic, or deletes the topic's retained
    /// message when the payload is empty [MQTT-3.3.1-10] (the empty message itself is not
    /// stored [MQTT-3.3.1-11]). A message that would take the store over its limits is
    /// refused (and the topic keeps its previous one).
    pub fn set(&mut self, msg: Arc<Publication>) -> SetOutcome {
        if msg.payload.is_empty() {
            if let Some(old) = self.remove(&msg.topic) {
                self.count -= 1;
                self.bytes -= old.size();
                if old.topic.starts_with(b"$SYS/") {
                    self.sys_count -= 1;
                    self.sys_bytes -= old.size();
                }
            }
            return SetOutcome::Deleted;
        }
        // `$SYS/` values are the broker's own (a fixed set): not held against the limits.
        let sys = msg.topic.starts_with(b"$SYS/");
        let size = msg.size();
        let (limits, total, sys_bytes) = (self.limits, self.bytes, self.sys_bytes);
        // Replacing a topic's message (a sensor retaining every reading) is one walk.
        if let Some(slot) = self.message_mut(&msg.topic) {
            let old = slot.size();
            if !sys && total - old + size - sys_bytes > limits.max_bytes {
                return SetOutcome::Refused;
            }
            *slot = msg;
            self.bytes = total - old + size;
            if sys {
                self.sys_bytes = sys_bytes - old + size;
            }
            return SetOutcome::Stored;
        }
        if !sys
            && (total + size - sys_bytes > limits.max_bytes
                || self.count + 1 - self.sys_count > limits.max_messages)
        {
            return SetOutcome::Refused;
        }
        let mut node = &mut self.root;
        for level in msg.topic.clone().split(|&b| b == b'/') {
            node = node.children.entry(level.into()).or_default();
        }
        node.message = Some(msg);
        self.bytes += size;
        self.count += 1;
        if sys {
            self.sys_bytes += size;
            self.sys_count += 1;
        }
        SetOutcome::Stored
    }

    /// The topic's retained message, if it has one.
    fn message_mut(&mut self, topic: &[u8]) -> Option<&mut Arc<Publication>> {
        let mut node = &mut self.root;
        for level in topic.split(|&b| b == b'/') {
            node = node.children.get_mut(level)?;
        }
        node.message.as_mut()
    }

    /// Takes the topic's message out and prunes the branch left empty (loops only).
    fn remove(&mut self, topic: &[u8]) -> Option<Arc<Publication>> {
        let levels: Vec<&[u8]> = topic.split(|&b| b == b'/').collect();
        let mut node = &mut self.root;
        for level in &levels {
            node = node.children.get_mut(*level)?;
        }
        let old = node.message.take()?;
        // The shallowest node from which down the path nothing but the path remains.
        let mut cut = None;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            let Some(child) = node.children.get(*level) else {
                break;
            };
            let sole = if depth + 1 == levels.len() {
                child.is_empty()
            } else {
                child.message.is_none() && child.children.len() == 1
            };
            if !sole {
                cut = None;
            } else if cut.is_none() {
                cut = Some(depth);
            }
            node = child;
        }
        if let Some(depth) = cut {
            let mut parent = &mut self.root;
            for level in &levels[..depth] {
                match parent.children.get_mut(*level) {
                    Some(child) => parent = child,
                    None => return Some(old),
                }
            }
            parent.children.remove(levels[depth]);
        }
        Some(old)
    }

    /// Appends the retained messages whose topic matches the (valid) `filter`.
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Publication>>) {
        self.matching_after(filter, None, usize::MAX, out);
    }

    /// Appends up to `limit` retained messages matching the (valid) `filter` whose topics come
    /// after `after` in the walk's order (a topic before its sub-topics, levels in byte
    /// order); `None` starts at the beginning. Returns true when it stopped at `limit` (more
    /// may follow: call again with the last topic returned).
    pub fn matching_after(
        &self,
        filter: &str,
        after: Option<&[u8]>,
        limit: usize,
        out: &mut Vec<Arc<Publication>>,
    ) -> bool {
        if limit == 0 {
            return true;
        }
        let mut walk = Walk {
            filter: filter.split('/').map(str::as_bytes).collect(),
            cursor: after
                .map(|a| a.split(|&b| b == b'/').collect())
                .unwrap_or_default(),
            out,
            left: limit,
        };
        let mut stack: Vec<Frame<'_>> = Vec::new();
        if walk.visit(&self.root, 0, after.is_some(), false, &mut stack) {
            return true;
        }
        while let Some(frame) = stack.last_mut() {
            let Some((name, child)) = frame.children.next() else {
                stack.pop();
                continue;
            };
            if frame.skip_dollar && name.first() == Some(&b'$') {
                continue;
            }
            let on_cursor = frame.cursor_level.is_some_and(|c| c == &**name);
            let (depth, all) = (frame.depth, frame.all);
            if walk.visit(child, depth, on_cursor, all, &mut stack) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::filter_matches;
    use bytes::Bytes;
    use mqttbytes::QoS;

    fn msg(topic: &str, payload: &str) -> Arc<Publication> {
        Arc::new(Publication {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: true,
            received_at: std::time::Instant::now(),
        })
    }

    fn topics(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.matching(filter, &mut out);
        let mut t: Vec<String> = out.iter().map(|m| m.topic_lossy().into_owned()).collect();
        t.sort();
        t
    }

    #[test]
    fn latest_wins_and_empty_payload_deletes() {
        let mut s = RetainedStore::default();
        s.set(msg("a/b", "1"));
        s.set(msg("a/b", "2"));
        assert_eq!(s.len(), 1);
        let mut out = Vec::new();
        s.matching("a/b", &mut out);
        assert_eq!(&out[0].payload[..], b"2");
        s.set(msg("a/b", ""));
        assert!(s.is_empty());
        assert!(s.root.is_empty());
    }

    #[test]
    fn wildcard_lookup_agrees_with_reference_matcher() {
        let all = [
            "sport",
            "sport/tennis",
            "sport/tennis/p1",
            "/x",
            "$SYS/a",
            "a//b",
            "a/",
        ];
        let mut s = RetainedStore::default();
        for t in all {
            s.set(msg(t, "x"));
        }
        for f in [
            "#", "sport/#", "+", "+/+", "+/#", "$SYS/#", "sport/+", "a/+/b", "a/+", "/#",
        ] {
            let mut expected: Vec<String> = all
                .iter()
                .filter(|t| filter_matches(f, t))
                .map(|t| t.to_string())
                .collect();
            expected.sort();
            assert_eq!(topics(&s, f), expected, "filter {f}");
        }
    }

    /// Resuming after any message gives exactly the rest of the full walk, in order: a
    /// chunked feed (`matching_after`) sends every matching message once [MQTT-3.3.1-6].
    #[test]
    fn chunked_walks_return_every_match_once() {
        let all = [
            "sport",
            "sport/tennis",
            "sport/tennis/p1",
            "sport/golf",
            "/x",
            "$SYS/a",
            "a//b",
            "a/",
            "a",
            "a/b",
            "a/b/c",
            "b/a",
            "$x",
            "sport/tennis/p2",
        ];
        let mut s = RetainedStore::default();
        for t in all {
            s.set(msg(t, "x"));
        }
        for f in [
            "#", "sport/#", "+", "+/+", "+/#", "$SYS/#", "sport/+", "a/+/b", "a/#", "/#", "a",
        ] {
            let mut full = Vec::new();
            s.matching(f, &mut full);
            let full: Vec<String> = full.iter().map(|m| m.topic_lossy().into_owned()).collect();
            for chunk in 1..4 {
                let mut got: Vec<String> = Vec::new();
                let mut after: Option<Bytes> = None;
                loop {
                    let mut out = Vec::new();
                    let more = s.matching_after(f, after.as_deref(), chunk, &mut out);
                    assert!(out.len() <= chunk);
                    got.extend(out.iter().map(|m| m.topic_lossy().into_owned()));
                    match out.last() {
                        Some(last) if more => after = Some(last.topic.clone()),
                        _ => break,
                    }
                }
                assert_eq!(got, full, "filter {f} chunk {chunk}");
            }
        }
    }

    /// A topic of 65,536 empty levels (65,535 '/', the longest a topic can be) is stored,
    /// found by '#' and '+/...' filters, deleted and dropped without recursion (the old
    /// recursive walk overflowed the stack at this depth: issue 11, item 8).
    #[test]
    fn the_deepest_topic_is_walked_with_loops() {
        let topic = "/".repeat(65_535);
        let mut s = RetainedStore::default();
        assert_eq!(s.set(msg(&topic, "deep")), SetOutcome::Stored);
        assert_eq!(topics(&s, "#").len(), 1);
        let mut filter = "+/".repeat(32_767);
        filter.push('#');
        assert_eq!(topics(&s, &filter).len(), 1);
        assert_eq!(topics(&s, &topic).len(), 1);
        let mut out = Vec::new();
        assert!(!s.matching_after("#", Some(topic.as_bytes()), 10, &mut out));
        assert!(out.is_empty());
        s.set(msg(&topic, "again"));
        drop(s);
        let mut s = RetainedStore::default();
        s.set(msg(&topic, "deep"));
        s.set(msg(&topic, ""));
        assert!(s.is_empty() && s.root.is_empty());
    }

    /// max_retained_messages and max_retained_bytes refuse what would pass them; a refused
    /// message leaves the topic's previous one in place; replacing counts the difference.
    #[test]
    fn limits_refuse_what_would_pass_them() {
        let mut s = RetainedStore::new(RetainedLimits {
            max_messages: 2,
            max_bytes: 10,
        });
        assert_eq!(s.set(msg("a", "1234")), SetOutcome::Stored); // 5 bytes
        assert_eq!(s.set(msg("b", "1")), SetOutcome::Stored); // 7
        assert_eq!(s.set(msg("c", "1")), SetOutcome::Refused, "third message");
        assert_eq!(s.set(msg("a", "12345678")), SetOutcome::Refused, "11 bytes");
        assert_eq!(&topics(&s, "a")[..], ["a"]);
        let mut out = Vec::new();
        s.matching("a", &mut out);
        assert_eq!(&out[0].payload[..], b"1234");
        assert_eq!(s.set(msg("a", "1234567")), SetOutcome::Stored); // 8 + 2
        assert_eq!(s.bytes(), 10);
        assert_eq!(s.set(msg("b", "")), SetOutcome::Deleted);
        assert_eq!((s.len(), s.bytes()), (1, 8));
        assert_eq!(s.set(msg("c", "1")), SetOutcome::Stored);
    }
}
