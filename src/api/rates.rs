//! Per-principal request rates for the AWS operations: one token bucket per principal and
//! operation. The `throttle` middleware spends them; the bucket arithmetic is
//! [`TokenBucket`]'s.
//!
//! Only principals from the config file are counted (unknown callers are refused by
//! authentication first), so the buckets are bounded by five per configured principal; with
//! authentication off every caller is the anonymous principal and shares one bucket per
//! operation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::cluster::Cluster;
use crate::rate::TokenBucket;

/// The throttled operations, each with its own rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    GetRetainedMessage,
    ListRetainedMessages,
    Publish,
    /// Opening a watch (`GET /retainedMessage-watch`), retaind's own.
    WatchRetainedMessages,
    DeleteConnection,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Self::GetRetainedMessage => "GetRetainedMessage",
            Self::ListRetainedMessages => "ListRetainedMessages",
            Self::Publish => "Publish",
            Self::WatchRetainedMessages => "WatchRetainedMessages",
            Self::DeleteConnection => "DeleteConnection",
        }
    }
}

/// Requests per second allowed to each principal, per operation; `0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    pub get_retained_message: f64,
    pub list_retained_messages: f64,
    pub publish: f64,
    pub watch_retained_messages: f64,
    pub delete_connection: f64,
}

impl RateLimits {
    /// No limit on anything.
    pub const UNLIMITED: Self = Self {
        get_retained_message: 0.0,
        list_retained_messages: 0.0,
        publish: 0.0,
        watch_retained_messages: 0.0,
        delete_connection: 0.0,
    };

    fn per_second(&self, op: Operation) -> f64 {
        match op {
            Operation::GetRetainedMessage => self.get_retained_message,
            Operation::ListRetainedMessages => self.list_retained_messages,
            Operation::Publish => self.publish,
            Operation::WatchRetainedMessages => self.watch_retained_messages,
            Operation::DeleteConnection => self.delete_connection,
        }
    }
}

/// The buckets of every principal: a cheap `Clone` handle.
#[derive(Clone)]
pub struct Throttle {
    limits: RateLimits,
    buckets: Arc<Mutex<Buckets>>,
    /// The other nodes, when this node is one of many: the rates are the service's, so each
    /// node admits its share, the rate divided by the number of live nodes.
    cluster: Option<Cluster>,
}

/// One bucket per operation (created on first use), for each principal.
type PerOperation = [Option<TokenBucket>; 5];

#[derive(Default)]
struct Buckets {
    anonymous: PerOperation,
    /// By principal name.
    named: HashMap<Arc<str>, PerOperation>,
}

impl Throttle {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Arc::default(),
            cluster: None,
        }
    }

    /// The rates are the service's, shared by the live nodes of `cluster`.
    pub fn service_wide(mut self, cluster: Option<Cluster>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Whether `principal` may make one more `op` request at `now`; spends a token if so.
    pub(super) fn admit(&self, op: Operation, principal: Option<&str>, now: Instant) -> bool {
        let rate = self.limits.per_second(op);
        if rate <= 0.0 {
            return true;
        }
        let rate = match &self.cluster {
            Some(cluster) => rate / cluster.live_nodes() as f64,
            None => rate,
        };
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let buckets = &mut *buckets;
        let per_operation = match principal {
            None => &mut buckets.anonymous,
            Some(name) => {
                if !buckets.named.contains_key(name) {
                    buckets
                        .named
                        .insert(Arc::from(name), PerOperation::default());
                }
                buckets.named.get_mut(name).expect("inserted above")
            }
        };
        let bucket = per_operation[op as usize].get_or_insert_with(|| TokenBucket::new(rate, now));
        bucket.retune(rate);
        bucket.try_take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64) -> RateLimits {
        RateLimits {
            get_retained_message: rate,
            list_retained_messages: rate,
            publish: rate,
            watch_retained_messages: rate,
            delete_connection: rate,
        }
    }

    #[test]
    fn principals_and_operations_have_separate_buckets() {
        let t0 = Instant::now();
        let throttle = Throttle::new(limits(1.0));
        assert!(throttle.admit(Operation::Publish, Some("a"), t0));
        assert!(!throttle.admit(Operation::Publish, Some("a"), t0));
        assert!(throttle.admit(Operation::Publish, Some("b"), t0));
        assert!(throttle.admit(Operation::GetRetainedMessage, Some("a"), t0));
        assert!(throttle.admit(Operation::Publish, None, t0));
    }

    #[test]
    fn zero_means_no_limit() {
        let t0 = Instant::now();
        let throttle = Throttle::new(RateLimits::UNLIMITED);
        for _ in 0..10_000 {
            assert!(throttle.admit(Operation::ListRetainedMessages, None, t0));
        }
        assert!(throttle.buckets.lock().unwrap().named.is_empty());
    }
}
