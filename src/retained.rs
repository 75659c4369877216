//! Retained messages, kept in a topic tree so that a wildcard SUBSCRIBE visits only the
//! branches its filter can reach.

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::Publication;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<[u8]>, Node>,
    message: Option<Arc<Publication>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }

    fn collect_all(&self, out: &mut Vec<Arc<Publication>>) {
        if let Some(m) = &self.message {
            out.push(m.clone());
        }
        for child in self.children.values() {
            child.collect_all(out);
        }
    }
}

/// The latest retained message per topic.
#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    count: usize,
}

impl RetainedStore {
    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores `msg` as the retained message of its topic, or deletes the topic's retained
    /// message when the payload is empty [MQTT-3.3.1-10] (the empty message itself is not
    /// stored [MQTT-3.3.1-11]).
    pub fn set(&mut self, msg: Arc<Publication>) {
        let topic = msg.topic.clone();
        if msg.payload.is_empty() {
            let levels: Vec<&[u8]> = topic.split(|&b| b == b'/').collect();
            if Self::remove_at(&mut self.root, &levels) {
                self.count -= 1;
            }
            return;
        }
        let mut node = &mut self.root;
        for level in topic.split(|&b| b == b'/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(msg).is_none() {
            self.count += 1;
        }
    }

    fn remove_at(node: &mut Node, levels: &[&[u8]]) -> bool {
        match levels {
            [] => node.message.take().is_some(),
            [level, rest @ ..] => {
                let Some(child) = node.children.get_mut(*level) else {
                    return false;
                };
                let removed = Self::remove_at(child, rest);
                if child.is_empty() {
                    node.children.remove(*level);
                }
                removed
            }
        }
    }

    /// Appends the retained messages whose topic matches the (valid) `filter`.
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Publication>>) {
        let levels: Vec<&str> = filter.split('/').collect();
        Self::walk(&self.root, &levels, true, out);
    }

    fn walk(node: &Node, levels: &[&str], first: bool, out: &mut Vec<Arc<Publication>>) {
        match levels {
            [] => {
                if let Some(m) = &node.message {
                    out.push(m.clone());
                }
            }
            ["#"] => {
                // `a/#` also matches `a` itself.
                if let Some(m) = &node.message {
                    if !first {
                        out.push(m.clone());
                    }
                }
                for (name, child) in &node.children {
                    // [MQTT-4.7.2-1]
                    if first && name.first() == Some(&b'$') {
                        continue;
                    }
                    child.collect_all(out);
                }
            }
            ["+", rest @ ..] => {
                for (name, child) in &node.children {
                    if first && name.first() == Some(&b'$') {
                        continue;
                    }
                    Self::walk(child, rest, false, out);
                }
            }
            [level, rest @ ..] => {
                if let Some(child) = node.children.get(level.as_bytes()) {
                    Self::walk(child, rest, false, out);
                }
            }
        }
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
}
