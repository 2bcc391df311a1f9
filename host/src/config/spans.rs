//! Where each key of the pipeline file is: serde_yaml reports positions for the errors it
//! finds itself, but not for the checks that come after parsing (an input that does not
//! exist, a cycle, a plugin that rejects its config). This index answers those.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

/// Line and column (both 1-based) of every map key and sequence item, by path.
#[derive(Debug, Default, Clone)]
pub struct Spans {
    positions: HashMap<String, (usize, usize)>,
}

const SEP: char = '\u{1f}';

fn join(path: &[&str]) -> String {
    path.join(&SEP.to_string())
}

impl Spans {
    /// Indexes `text`. A text that does not parse yields an empty index: serde_yaml reports
    /// the syntax error with its own position.
    pub fn index(text: &str) -> Spans {
        let mut builder = Builder::default();
        let _ = Parser::new_from_str(text).load(&mut builder, false);
        Spans {
            positions: builder.positions,
        }
    }

    /// The position of the key (or sequence item) at `path`, e.g. `["stages", "export", "inputs", "0"]`.
    pub fn get(&self, path: &[&str]) -> Option<(usize, usize)> {
        self.positions.get(&join(path)).copied()
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn nearest(&self, path: &[&str]) -> Option<(usize, usize)> {
        (1..=path.len()).rev().find_map(|n| self.get(&path[..n]))
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// The path of the node being built (keys and indexes of the frames above).
    path: Vec<String>,
    positions: HashMap<String, (usize, usize)>,
}

impl Builder {
    /// Called before a node (scalar or collection) that is a value, not a key.
    fn enter_value(&mut self, mark: Marker) {
        match self.stack.last_mut() {
            Some(Frame::Seq { index }) => {
                self.path.push(index.to_string());
                *index += 1;
                let key = self.path.join(&SEP.to_string());
                self.positions
                    .entry(key)
                    .or_insert((mark.line(), mark.col() + 1));
            }
            Some(Frame::Map { key }) => {
                self.path.push(key.take().unwrap_or_default());
            }
            None => {}
        }
    }

    /// Called after a value node is complete.
    fn leave_value(&mut self) {
        if !self.stack.is_empty() {
            self.path.pop();
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key }) = self.stack.last_mut() {
                    if key.is_none() {
                        let mut full = self.path.clone();
                        full.push(value.clone());
                        self.positions
                            .entry(full.join(&SEP.to_string()))
                            .or_insert((mark.line(), mark.col() + 1));
                        *key = Some(value);
                        return;
                    }
                }
                self.enter_value(mark);
                self.leave_value();
            }
            Event::Alias(_) => {
                self.enter_value(mark);
                self.leave_value();
            }
            Event::MappingStart(..) => {
                self.enter_value(mark);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.enter_value(mark);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.leave_value();
            }
            _ => {}
        }
    }
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
    }
}
