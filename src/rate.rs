//! A token bucket, the arithmetic behind every rate limit: HTTP operations per principal
//! (`api::throttle`), MQTT publishes per client and CONNECTs per client id (`broker`). Pure:
//! the caller passes the time, so the tests need no clock.

use std::time::{Duration, Instant};

/// Holds up to one second's worth of tokens (at least one) and refills continuously at `rate`
/// tokens per second; a rate of 0 (or less) means no limit.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            tokens: Self::capacity(rate),
            updated: now,
        }
    }

    fn capacity(rate: f64) -> f64 {
        rate.max(1.0)
    }

    /// Changes the rate (a service's rate shared by a changing number of nodes), keeping the
    /// tokens it holds up to the new capacity.
    pub fn retune(&mut self, rate: f64) {
        if rate != self.rate {
            self.rate = rate;
            self.tokens = self.tokens.min(Self::capacity(rate));
        }
    }

    /// Whether the bucket limits anything: without a limit, callers need not read the clock.
    pub fn limits(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one token now or, when there is none, the next one to come within `max_wait`,
    /// answering how long to wait for it; `None`: not within `max_wait`, and nothing taken.
    /// Tokens promised are owed (the count goes below zero), so callers waiting together are
    /// served one after another at the rate, in the order they asked.
    pub fn reserve(&mut self, now: Instant, max_wait: Duration) -> Option<Duration> {
        if self.rate <= 0.0 {
            return Some(Duration::ZERO);
        }
        self.refill(now);
        let wait = ((1.0 - self.tokens) / self.rate).max(0.0);
        if wait > max_wait.as_secs_f64() {
            return None;
        }
        self.tokens -= 1.0;
        Some(Duration::from_secs_f64(wait))
    }

    /// Returns a token taken (by [`Self::reserve`] or [`Self::try_take`]) for something that
    /// did not happen after all.
    pub fn give_back(&mut self) {
        if self.rate > 0.0 {
            self.tokens = (self.tokens + 1.0).min(Self::capacity(self.rate));
        }
    }

    /// Whether the bucket is full at `now`: then it is no different from a new one, and a
    /// table of buckets may forget it.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.rate <= 0.0 || self.tokens + elapsed * self.rate >= Self::capacity(self.rate)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(Self::capacity(self.rate));
        self.updated = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_given_back_is_taken_again_and_never_past_the_capacity() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1.0, t0);
        assert_eq!(
            bucket.reserve(t0, Duration::from_secs(2)),
            Some(Duration::ZERO)
        );
        bucket.give_back();
        assert_eq!(
            bucket.reserve(t0, Duration::from_secs(2)),
            Some(Duration::ZERO)
        );
        bucket.give_back();
        bucket.give_back();
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0), "one second's worth at most");
    }

    #[test]
    fn a_retuned_bucket_keeps_at_most_its_new_capacity_and_refills_at_its_new_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, t0);
        bucket.retune(2.5);
        assert_eq!((0..10).filter(|_| bucket.try_take(t0)).count(), 2);
        let t1 = t0 + Duration::from_millis(400);
        assert!(bucket.try_take(t1), "one token after 0.4 s at 2.5/s");
        assert!(!bucket.try_take(t1));
    }

    #[test]
    fn a_bucket_allows_one_seconds_worth_then_refuses() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(3.0, t0);
        assert!((0..3).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_capacity() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2.0, t0);
        assert!(bucket.try_take(t0) && bucket.try_take(t0));
        assert!(!bucket.try_take(t0));
        let later = t0 + Duration::from_millis(500);
        assert!(bucket.try_take(later));
        assert!(!bucket.try_take(later));
        // A long pause refills only up to one second's worth.
        let much_later = later + Duration::from_secs(60);
        assert!(bucket.try_take(much_later) && bucket.try_take(much_later));
        assert!(!bucket.try_take(much_later));
    }

    #[test]
    fn rates_below_one_still_allow_a_single_request() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0.5, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0));
        assert!(!bucket.try_take(t0 + Duration::from_secs(1)));
        assert!(bucket.try_take(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn reservations_are_served_one_after_another_at_the_rate_up_to_the_longest_wait() {
        let t0 = Instant::now();
        let max_wait = Duration::from_secs(2);
        let mut bucket = TokenBucket::new(1.0, t0);
        assert_eq!(bucket.reserve(t0, max_wait), Some(Duration::ZERO));
        assert!(!bucket.is_full(t0));
        assert_eq!(bucket.reserve(t0, max_wait), Some(Duration::from_secs(1)));
        assert_eq!(bucket.reserve(t0, max_wait), Some(Duration::from_secs(2)));
        // A third would wait 3 s: refused, and it takes nothing.
        assert_eq!(bucket.reserve(t0, max_wait), None);
        assert!(!bucket.try_take(t0));
        // Half a second on the next would still wait 2.5 s; a second more, 1.5.
        assert_eq!(
            bucket.reserve(t0 + Duration::from_millis(500), max_wait),
            None
        );
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(
            bucket.reserve(t1, max_wait),
            Some(Duration::from_millis(1500))
        );
        // Owed tokens are paid back before the bucket counts as full again.
        assert!(!bucket.is_full(t0 + Duration::from_secs(3)));
        assert!(bucket.is_full(t0 + Duration::from_secs(4)));
        let t4 = t0 + Duration::from_secs(4);
        assert_eq!(bucket.reserve(t4, max_wait), Some(Duration::ZERO));
    }

    #[test]
    fn a_zero_rate_never_refuses() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0.0, t0);
        assert!((0..10_000).all(|_| bucket.try_take(t0)));
        assert!((0..10_000).all(|_| bucket.reserve(t0, Duration::ZERO) == Some(Duration::ZERO)));
        assert!(bucket.is_full(t0));
    }
}
