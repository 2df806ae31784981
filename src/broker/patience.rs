//! How long the broker keeps trying database work that no client can retry for itself (a
//! retained delivery's next page, a Will's retained write) when the database cannot serve it
//! for now: unreachable, failing over, or past its deadline.

use std::time::Duration;

use tokio::time::Instant;

use crate::store;

/// How long work is tried again, in store timeouts (`--store-timeout`): a minute at the default
/// 5 s, the time a Postgres restart or failover takes.
const RETRY_FOR: u32 = 12;
/// The wait before the first try again; it doubles after each failure, up to the second.
const RETRY_WAIT_FIRST: Duration = Duration::from_millis(250);
const RETRY_WAIT_MAX: Duration = Duration::from_secs(5);

/// Since when, and how many times, one piece of work has failed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Patience {
    failing: Option<(Instant, u32)>,
}

impl Patience {
    /// How long to wait before trying again after `error`, or `None` to give up: the error is
    /// one retrying cannot fix, or the work has failed for [`RETRY_FOR`] store timeouts.
    pub fn wait_after(
        &mut self,
        error: &store::Error,
        timeout: Duration,
        now: Instant,
    ) -> Option<Duration> {
        if !matches!(error, store::Error::Unavailable(_)) {
            return None;
        }
        let (since, failures) = self.failing.get_or_insert((now, 0));
        if now.duration_since(*since) >= timeout * RETRY_FOR {
            return None;
        }
        let wait = RETRY_WAIT_FIRST
            .saturating_mul(1 << (*failures).min(16))
            .min(RETRY_WAIT_MAX);
        *failures += 1;
        Some(wait)
    }

    /// The work succeeded: a later failure has its own patience.
    pub fn succeeded(&mut self) {
        self.failing = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_the_database_cannot_serve_is_tried_again_after_growing_waits_for_twelve_timeouts() {
        let mut p = Patience::default();
        let away = store::Error::timed_out();
        let timeout = Duration::from_secs(5);
        let t0 = Instant::now();
        let waits: Vec<_> = (0..8)
            .map(|_| p.wait_after(&away, timeout, t0).unwrap().as_millis())
            .collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        let last = t0 + timeout * RETRY_FOR;
        let just_before = last - Duration::from_millis(1);
        assert!(p.wait_after(&away, timeout, just_before).is_some());
        assert_eq!(p.wait_after(&away, timeout, last), None, "given up");

        p.succeeded();
        assert_eq!(
            p.wait_after(&away, timeout, last).map(|w| w.as_millis()),
            Some(250),
            "a new failure starts over"
        );
    }

    #[test]
    fn errors_retrying_cannot_fix_are_not_retried() {
        let mut p = Patience::default();
        let timeout = Duration::from_secs(5);
        let now = Instant::now();
        let broken = store::Error::Internal("syntax error".into());
        assert_eq!(p.wait_after(&broken, timeout, now), None);
        assert_eq!(p.wait_after(&store::Error::Closed, timeout, now), None);
        let refused = store::Error::Refused("value too long".into());
        assert_eq!(p.wait_after(&refused, timeout, now), None);
    }
}
