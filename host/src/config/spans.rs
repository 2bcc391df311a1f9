//! Where each key of the pipeline file is: serde_yaml reports positions for the errors it
//! finds itself, but not for the checks that come after parsing (an input that does not
//! exist, a cycle, a plugin that rejects its config). This index answers those.
//!
//! It costs time and memory in proportion to the file, whatever its shape: each key and
//! sequence item is one node, stored as its parent node and its own key, never as the whole
//! path down to it (a path per key made one long key above many others, or long keys nested
//! deep, cost the product of the two). The events are read in a loop with a stack of our
//! own, so deep nesting costs no native stack either.

use indexmap::{Equivalent, IndexMap};
use yaml_rust2::{
    parser::{Event, Parser},
    scanner::Marker,
};

/// Line and column (both 1-based) of every map key and sequence item, by path.
#[derive(Debug, Default, Clone)]
pub struct Spans {
    /// Every key and sequence item -> its position. A node's index in this map is its id,
    /// which its children name as their parent.
    nodes: IndexMap<Node, (usize, usize)>,
}

/// The parent of the document's top-level keys.
const ROOT: usize = usize::MAX;

/// A key, or a sequence item (its index in decimal), under its parent node. The key is boxed
/// to its length: the parser's strings keep spare capacity (a fifth more at peak, for a large
/// map of short keys).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Node {
    parent: usize,
    key: Box<str>,
}

/// A [`Node`] to look up, borrowing its key. It hashes as `Node` does: the same fields, in
/// the same order.
#[derive(Hash)]
struct NodeRef<'a> {
    parent: usize,
    key: &'a str,
}

impl Equivalent<Node> for NodeRef<'_> {
    fn equivalent(&self, node: &Node) -> bool {
        self.parent == node.parent && self.key == &*node.key
    }
}

impl Spans {
    /// Indexes `text`, the first document in it. A text that does not parse yields what was
    /// indexed before the error: serde_yaml reports the syntax error with its own position.
    pub fn index(text: &str) -> Spans {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // Not `Parser::load`: it recurses once per level of nesting.
        while let Ok((event, mark)) = parser.next_token() {
            if matches!(event, Event::DocumentEnd | Event::StreamEnd) {
                break;
            }
            builder.on_event(event, mark);
        }
        Spans {
            nodes: builder.nodes,
        }
    }

    /// The position of the key (or sequence item) at `path`, e.g. `["stages", "export", "inputs", "0"]`.
    pub fn get(&self, path: &[&str]) -> Option<(usize, usize)> {
        match self.walk(path) {
            (found, position) if found == path.len() => position,
            _ => None,
        }
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn nearest(&self, path: &[&str]) -> Option<(usize, usize)> {
        self.walk(path).1
    }

    /// How many of `path`'s keys lead from the top to a node, and the position of the last
    /// node reached.
    fn walk(&self, path: &[&str]) -> (usize, Option<(usize, usize)>) {
        let mut parent = ROOT;
        let mut position = None;
        for (depth, key) in path.iter().enumerate() {
            match self.nodes.get_full(&NodeRef { parent, key }) {
                Some((id, _, at)) => {
                    parent = id;
                    position = Some(*at);
                }
                None => return (depth, position),
            }
        }
        (path.len(), position)
    }
}

/// A collection being read.
struct Frame {
    /// The collection's own node (the key or item it is the value of); `None` inside a
    /// complex key (`? [a, b]`) or its value, which no path of names can reach.
    node: Option<usize>,
    next: Next,
}

/// What the next node in a collection is.
enum Next {
    /// An item of a sequence, with this index.
    Item(usize),
    /// A key of a map.
    Key,
    /// The value of the key read last, whose node this is.
    Value(Option<usize>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    nodes: IndexMap<Node, (usize, usize)>,
}

impl Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let position = (mark.line(), mark.col() + 1);
        match event {
            Event::Scalar(value, ..) => {
                self.place(Some(value), position);
            }
            Event::Alias(_) => {
                self.place(None, position);
            }
            Event::MappingStart(..) => {
                let node = self.place(None, position);
                self.stack.push(Frame {
                    node,
                    next: Next::Key,
                });
            }
            Event::SequenceStart(..) => {
                let node = self.place(None, position);
                self.stack.push(Frame {
                    node,
                    next: Next::Item(0),
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }

    /// Places a node that starts at `position` (`scalar` is its text if it is a scalar) in
    /// the collection being read. Returns the node that a collection starting here is the
    /// value of, if a path can reach it.
    fn place(&mut self, scalar: Option<String>, position: (usize, usize)) -> Option<usize> {
        let Some(frame) = self.stack.last_mut() else {
            return Some(ROOT);
        };
        match frame.next {
            Next::Item(index) => {
                frame.next = Next::Item(index + 1);
                let parent = frame.node?;
                Some(add(&mut self.nodes, parent, index.to_string(), position))
            }
            Next::Key => {
                // A scalar names its value. A collection or an alias as a key is a complex
                // key: neither it nor its value has a name to find them by.
                let key = frame
                    .node
                    .zip(scalar)
                    .map(|(parent, key)| add(&mut self.nodes, parent, key, position));
                frame.next = Next::Value(key);
                None
            }
            Next::Value(node) => {
                frame.next = Next::Key;
                node
            }
        }
    }
}

/// The node `key` under `parent`, added at `position` if it is new (a key written twice
/// keeps its first position).
fn add(
    nodes: &mut IndexMap<Node, (usize, usize)>,
    parent: usize,
    key: String,
    position: (usize, usize),
) -> usize {
    let entry = nodes.entry(Node {
        parent,
        key: key.into_boxed_str(),
    });
    let id = entry.index();
    entry.or_insert(position);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_items_in_block_and_flow_style() {
        let text = "sources:\n  ingest: { type: zmq }\nstages:\n  p:\n    inputs: [ingest, other]\n    config:\n      drop:\n        - field: level\n";
        let s = Spans::index(text);
        assert_eq!(s.get(&["sources"]), Some((1, 1)));
        assert_eq!(s.get(&["sources", "ingest"]), Some((2, 3)));
        assert_eq!(s.get(&["sources", "ingest", "type"]), Some((2, 13)));
        assert_eq!(s.get(&["stages", "p", "inputs"]), Some((5, 5)));
        assert_eq!(s.get(&["stages", "p", "inputs", "1"]), Some((5, 22)));
        assert_eq!(
            s.get(&["stages", "p", "config", "drop", "0", "field"]),
            Some((8, 11))
        );
        assert_eq!(s.nearest(&["stages", "p", "plugin"]), Some((4, 3)));
        assert_eq!(s.get(&["stages", "p", "plugin"]), None);
        assert_eq!(s.nearest(&["nope", "p"]), None);
    }

    #[test]
    fn a_key_written_twice_keeps_its_first_position() {
        let s = Spans::index("a:\n  x: 1\na:\n  y: 2\n");
        assert_eq!(s.get(&["a"]), Some((1, 1)));
        assert_eq!(s.get(&["a", "x"]), Some((2, 3)));
        assert_eq!(s.get(&["a", "y"]), Some((4, 3)));
    }

    #[test]
    fn keys_after_a_complex_key_keep_their_places() {
        let s = Spans::index("k: &x v\n? [a, b]\n: { c: 1 }\n? *x\n: 2\nafter:\n  d: 3\n");
        assert_eq!(s.get(&["k"]), Some((1, 1)));
        assert_eq!(s.get(&["after"]), Some((6, 1)));
        assert_eq!(s.get(&["after", "d"]), Some((7, 3)));
        assert_eq!(s.get(&["c"]), None);
        assert_eq!(s.get(&["0"]), None);
    }

    #[test]
    fn a_key_is_not_confused_with_a_path() {
        // Paths were once joined with U+001F: this key then stood for the path a/b.
        let s = Spans::index("\"a\\u001fb\": 1\na:\n  c: 2\n");
        assert_eq!(s.get(&["a\u{1f}b"]), Some((1, 1)));
        assert_eq!(s.get(&["a", "b"]), None);
        assert_eq!(s.nearest(&["a", "b"]), Some((2, 1)));
    }

    /// One long key above many short ones: each is stored once, not as its whole path (which
    /// made this 1 MiB key times 20,000 children, 20 GB).
    #[test]
    fn a_long_key_above_many_keys_is_stored_once() {
        let long = "k".repeat(1 << 20);
        let mut text = format!("top:\n  ? {long}\n  :\n");
        for i in 0..20_000 {
            text.push_str(&format!("    c{i}: {i}\n"));
        }
        let s = Spans::index(&text);
        assert_eq!(s.get(&["top", &long]), Some((2, 5)));
        assert_eq!(s.get(&["top", &long, "c19999"]), Some((20_003, 5)));
        let stored: usize = s.nodes.keys().map(|n| n.key.len()).sum();
        assert!(stored < 2 * text.len(), "{stored} bytes of keys");
    }

    /// Nesting costs no native stack: far deeper than a test thread's stack would allow for
    /// a recursive reader.
    #[test]
    fn deep_nesting_is_indexed_without_recursion() {
        let depth = 200_000;
        let text = format!("{}x\n", "- ".repeat(depth));
        let s = Spans::index(&text);
        let path = vec!["0"; depth];
        assert_eq!(s.get(&path), Some((1, 2 * depth + 1)));
    }
}
