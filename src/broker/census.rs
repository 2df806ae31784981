//! A count of the connections in some state, each counted while it holds its [`Member`]: the
//! connections reading retained pages (`retained`), those on the background threads
//! (`background`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Clone, Default)]
pub(super) struct Census(Arc<AtomicUsize>);

/// One connection counted in a [`Census`] until dropped.
pub(super) struct Member(Arc<AtomicUsize>);

impl Census {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub fn enter(&self) -> Member {
        self.0.fetch_add(1, Ordering::Relaxed);
        Member(self.0.clone())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_census_counts_each_member_until_it_leaves() {
        let census = Census::default();
        let (a, b) = (census.enter(), census.enter());
        assert_eq!(census.count(), 2);
        drop(a);
        assert_eq!(census.count(), 1);
        drop(b);
        assert_eq!(census.count(), 0);
    }
}
