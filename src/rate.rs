//! A token bucket, the arithmetic behind every rate limit: HTTP operations per principal
//! (`api::throttle`) and MQTT publishes per client (`broker`). Pure: the caller passes the
//! time, so the tests need no clock.

use std::time::Instant;

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
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(Self::capacity(self.rate));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
    fn a_zero_rate_never_refuses() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0.0, t0);
        assert!((0..10_000).all(|_| bucket.try_take(t0)));
    }
}
