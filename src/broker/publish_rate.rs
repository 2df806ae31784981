//! Each principal's MQTT PUBLISH packets per second, for the whole service
//! (`--mqtt-publish-rate-per-principal`; AWS IoT bounds an account's inbound publishes). The
//! per-connection bound (`--mqtt-max-publish-rate`) leaves a principal of many connections
//! free to fill the store's write lanes and the routers for every other principal.
//!
//! A connection finds its principal's bucket once, at CONNECT, and holds it; each PUBLISH then
//! takes a token under that bucket's own lock, shared only with the principal's other
//! connections. The table holds the buckets weakly and forgets those no connection holds
//! whenever it has doubled since it last did. With `--cluster-url` each node admits the rate
//! divided by the live nodes, as for the other per-principal rates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use crate::cluster::Cluster;
use crate::rate::TokenBucket;

/// Entries the table holds before it is first sifted of buckets no connection holds.
const KEPT: usize = 64;

/// The node's table of buckets; a cheap handle.
#[derive(Clone)]
pub(super) struct PublishRates {
    inner: Arc<Inner>,
}

struct Inner {
    /// Per second, service-wide; 0: no limit.
    rate: f64,
    cluster: Option<Cluster>,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// By principal name; `None`: clients without principals, who share one.
    buckets: HashMap<Option<Arc<str>>, Weak<Mutex<TokenBucket>>>,
    /// Entries the last sift kept.
    kept: usize,
}

/// One principal's bucket, held by each of its connections.
pub(super) struct PublishBucket {
    rates: PublishRates,
    bucket: Arc<Mutex<TokenBucket>>,
}

impl PublishRates {
    pub fn new(rate: f64, cluster: Option<Cluster>) -> Self {
        Self {
            inner: Arc::new(Inner {
                rate,
                cluster,
                table: Mutex::default(),
            }),
        }
    }

    /// The bucket of `principal` (`None`: without principals), for a connection of it; `None`
    /// without a limit.
    pub fn bucket(&self, principal: Option<&str>, now: Instant) -> Option<PublishBucket> {
        if self.inner.rate <= 0.0 {
            return None;
        }
        let mut table = self
            .inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = principal.map(Arc::from);
        if let Some(bucket) = table.buckets.get(&key).and_then(Weak::upgrade) {
            return Some(self.held(bucket));
        }
        if table.buckets.len() >= KEPT.max(2 * table.kept) {
            table.buckets.retain(|_, b| b.strong_count() > 0);
            table.kept = table.buckets.len();
        }
        let bucket = Arc::new(Mutex::new(TokenBucket::new(self.node_rate(), now)));
        table.buckets.insert(key, Arc::downgrade(&bucket));
        Some(self.held(bucket))
    }

    fn held(&self, bucket: Arc<Mutex<TokenBucket>>) -> PublishBucket {
        PublishBucket {
            rates: self.clone(),
            bucket,
        }
    }

    /// This node's share of the rate.
    fn node_rate(&self) -> f64 {
        let nodes = self.inner.cluster.as_ref().map_or(1, Cluster::live_nodes);
        self.inner.rate / nodes.max(1) as f64
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .buckets
            .len()
    }
}

impl PublishBucket {
    /// Whether one more PUBLISH of the principal may go on now (a token taken if so).
    pub fn try_take(&self, now: Instant) -> bool {
        let rate = self.rates.node_rate();
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        bucket.retune(rate);
        bucket.try_take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principals_connections_share_its_bucket_and_others_have_their_own() {
        let now = Instant::now();
        let rates = PublishRates::new(2.0, None);
        let (a, b) = (
            rates.bucket(Some("fleet"), now).unwrap(),
            rates.bucket(Some("fleet"), now).unwrap(),
        );
        let other = rates.bucket(Some("other"), now).unwrap();
        assert!(a.try_take(now));
        assert!(b.try_take(now));
        // Two a second, in bursts of a second's worth: the fleet's are used up, together.
        assert!(!a.try_take(now));
        assert!(!b.try_take(now));
        assert!(other.try_take(now));
        // Refilled as time passes.
        assert!(a.try_take(now + std::time::Duration::from_millis(600)));
    }

    #[test]
    fn without_a_rate_no_bucket_is_made() {
        let rates = PublishRates::new(0.0, None);
        assert!(rates.bucket(Some("fleet"), Instant::now()).is_none());
        assert_eq!(rates.entries(), 0);
    }

    #[test]
    fn buckets_no_connection_holds_are_forgotten_as_the_table_doubles() {
        let now = Instant::now();
        let rates = PublishRates::new(1.0, None);
        let held = rates.bucket(Some("kept"), now).unwrap();
        for i in 0..1_000 {
            drop(rates.bucket(Some(&format!("p{i}")), now));
        }
        assert!(rates.entries() <= KEPT, "{}", rates.entries());
        // The bucket still held is the one its principal's next connection gets.
        assert!(held.try_take(now));
        let again = rates.bucket(Some("kept"), now).unwrap();
        assert!(!again.try_take(now));
    }
}
