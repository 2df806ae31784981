//! Bytes a queue towards a slower party (NATS, Postgres) may hold besides its count of items:
//! a count alone would let a stall of either hold thousands of the largest messages.

use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes `n` bytes if they fit. An empty budget takes anything, so that an item larger
    /// than the whole budget still passes when nothing else waits.
    pub fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used == 0 || used.saturating_add(n) <= self.limit).then(|| used + n)
            })
            .is_ok()
    }

    /// Returns what [`Budget::take`] took, once its item left the queue.
    pub fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_fits_and_anything_when_empty() {
        let budget = Budget::new(100);
        assert!(budget.take(60));
        assert!(budget.take(40));
        assert!(!budget.take(1));
        budget.give_back(60);
        assert!(!budget.take(61));
        assert!(budget.take(60));
        budget.give_back(100);
        assert_eq!(budget.used(), 0);
        assert!(
            budget.take(1_000),
            "an empty budget takes an item larger than itself"
        );
        assert!(!budget.take(1));
    }
}
