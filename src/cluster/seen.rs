//! Which messages of each node this node has already handled. A node whose subscriptions
//! overlap (`a/#` and `a/+`) is sent one copy of a publish per matching subscription, and must
//! handle one. Each node numbers what it sends; a receiver remembers, per sending node, the
//! numbers it handled within a window of the most recent ones.
//!
//! Copies of one message leave the NATS server back to back on one connection, so they arrive
//! within a subscription buffer of each other; the window is far wider than that. A number
//! older than the window is taken as already handled: a copy that late is a duplicate.

use std::collections::HashMap;

/// Messages remembered per sending node (a bit each: 128 KiB per node).
const WINDOW: u64 = 1 << 20;

/// Sending nodes remembered at most (16 MiB of windows). A node restarted is a new node, and
/// one that left cleanly is forgotten by nobody, so without a bound the map would grow with
/// every restart; past it, the node heard from least recently is forgotten. One forgotten
/// while it still sends could have a copy of a message arriving right then handled twice.
const NODES: usize = 128;

#[derive(Default)]
pub struct Seen {
    /// By the node's tag ([`super::frame::Stamp::node`]).
    nodes: HashMap<u64, Window>,
    /// Counts calls, to tell which node was heard from least recently.
    clock: u64,
}

struct Window {
    /// The highest number handled, plus one.
    end: u64,
    bits: Box<[u64]>,
    /// [`Seen::clock`] when the node was last heard from.
    heard: u64,
}

impl Seen {
    /// Whether message `seq` of `node` is new; it counts as handled from now on.
    pub fn first(&mut self, node: u64, seq: u64) -> bool {
        self.clock += 1;
        if self.nodes.len() >= NODES && !self.nodes.contains_key(&node) {
            let quietest = self.nodes.iter().min_by_key(|(_, w)| w.heard);
            if let Some(&quietest) = quietest.map(|(tag, _)| tag) {
                self.nodes.remove(&quietest);
            }
        }
        let window = self.nodes.entry(node).or_insert_with(Window::new);
        window.heard = self.clock;
        window.first(seq)
    }

    /// Forgets a node that left the service, so that the map does not grow with restarts.
    pub fn forget(&mut self, node: u64) {
        self.nodes.remove(&node);
    }
}

impl Window {
    fn new() -> Self {
        Self {
            end: 0,
            bits: vec![0; (WINDOW / 64) as usize].into_boxed_slice(),
            heard: 0,
        }
    }

    fn first(&mut self, seq: u64) -> bool {
        if seq >= self.end {
            // Slots between the old end and `seq` are reused for newer numbers: clear them.
            let from = self.end.max(seq.saturating_sub(WINDOW - 1));
            for s in from..seq {
                self.set(s, false);
            }
            self.end = seq + 1;
            self.set(seq, true);
            return true;
        }
        if self.end - seq > WINDOW {
            return false;
        }
        if self.get(seq) {
            return false;
        }
        self.set(seq, true);
        true
    }

    fn get(&self, seq: u64) -> bool {
        let slot = seq % WINDOW;
        self.bits[(slot / 64) as usize] & (1 << (slot % 64)) != 0
    }

    fn set(&mut self, seq: u64, on: bool) {
        let slot = seq % WINDOW;
        let word = &mut self.bits[(slot / 64) as usize];
        if on {
            *word |= 1 << (slot % 64);
        } else {
            *word &= !(1 << (slot % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_number_is_handled_once_in_any_order() {
        let mut seen = Seen::default();
        let (a, b) = (1, 2);
        assert!(seen.first(a, 5));
        assert!(seen.first(a, 3), "an earlier number not seen yet");
        assert!(!seen.first(a, 5));
        assert!(!seen.first(a, 3));
        assert!(seen.first(b, 5), "numbers are per node");
        assert!(seen.first(a, 4));
        assert!(seen.first(a, 0));
        assert!(!seen.first(a, 0));
    }

    #[test]
    fn the_window_slides_without_forgetting_what_it_holds() {
        let mut seen = Seen::default();
        let a = 1;
        assert!(seen.first(a, 10));
        // A jump past a whole window clears the reused slots, 10's included.
        assert!(seen.first(a, 10 + WINDOW * 3));
        assert!(
            !seen.first(a, 10),
            "older than the window: taken as a duplicate"
        );
        assert!(
            seen.first(a, 11 + WINDOW * 2),
            "inside the window, never seen"
        );
        assert!(!seen.first(a, 11 + WINDOW * 2));
        assert!(seen.first(a, 10 + WINDOW * 3 + 1));
        seen.forget(a);
        assert!(seen.first(a, 10), "a forgotten node starts afresh");
    }

    #[test]
    fn past_the_bound_the_node_heard_from_least_recently_is_forgotten() {
        let mut seen = Seen::default();
        let nodes = NODES as u64;
        for node in 0..nodes {
            assert!(seen.first(node, 7));
        }
        // Node 0 is heard from again; node 1 is now the quietest.
        assert!(!seen.first(0, 7));
        assert!(seen.first(nodes, 7), "one node more");
        assert_eq!(seen.nodes.len(), NODES);
        assert!(!seen.first(0, 7), "kept: heard from lately");
        assert!(!seen.first(2, 7), "kept");
        assert!(seen.first(1, 7), "forgotten: its number is new again");
        assert_eq!(seen.nodes.len(), NODES, "and node 1 took another's place");
    }
}
