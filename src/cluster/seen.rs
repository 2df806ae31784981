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

#[derive(Default)]
pub struct Seen {
    /// By the node's tag ([`super::frame::Stamp::node`]).
    nodes: HashMap<u64, Window>,
}

struct Window {
    /// The highest number handled, plus one.
    end: u64,
    bits: Box<[u64]>,
}

impl Seen {
    /// Whether message `seq` of `node` is new; it counts as handled from now on.
    pub fn first(&mut self, node: u64, seq: u64) -> bool {
        self.nodes
            .entry(node)
            .or_insert_with(Window::new)
            .first(seq)
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
}
