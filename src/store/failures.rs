//! Failed database work, logged in summary.
//!
//! During an outage every request fails the same way. A line for each (measured: 40,000 lines,
//! 17 MB a minute) buries everything else and fills disks. So the store logs its own failures,
//! once per failed batch rather than once per caller, and within a window only the first of a
//! kind in full: later ones are counted, and one line at the end of the window says how many
//! there were and what the last one was. A kind is the work that failed and how it failed
//! (unavailable, or refused by the database).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Error;
use crate::metrics::Metrics;

/// How long after a fully logged failure others of its kind are only counted.
pub(super) const WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(super) struct Failures {
    windows: Mutex<HashMap<Kind, Window>>,
    /// Every failure is counted there, logged or not.
    metrics: Metrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Kind {
    work: &'static str,
    unavailable: bool,
}

struct Window {
    opened: Instant,
    more: u64,
    last: String,
}

impl Failures {
    /// Starts the task that writes the summaries; it ends with `stop` or when the last
    /// reference to the log goes.
    pub(super) fn start(stop: CancellationToken, metrics: Metrics) -> Arc<Self> {
        let failures = Arc::new(Self {
            windows: Mutex::default(),
            metrics,
        });
        tokio::spawn(summarise(Arc::downgrade(&failures), stop));
        failures
    }

    /// Records that `work` failed with `error`. Quota refusals and shutdown are not failures.
    pub(super) fn record(&self, work: &'static str, error: &Error) {
        let unavailable = match error {
            Error::Unavailable(_) => true,
            Error::Internal(_) | Error::Refused(_) | Error::Config(_) => false,
            Error::QuotaExceeded(_) | Error::ConditionFailed | Error::Closed => return,
        };
        let kind = Kind { work, unavailable };
        self.metrics.store_error(
            work,
            match error {
                Error::Unavailable(_) => "unavailable",
                Error::Refused(_) => "refused",
                _ => "internal",
            },
        );
        let mut windows = self.windows();
        match windows.get_mut(&kind) {
            Some(window) => {
                window.more += 1;
                window.last = error.to_string();
            }
            None => {
                windows.insert(
                    kind,
                    Window {
                        opened: Instant::now(),
                        more: 0,
                        last: String::new(),
                    },
                );
                drop(windows);
                log(kind, &error.to_string(), None);
            }
        }
    }

    /// Logs what each window past its end counted, and closes it.
    fn flush(&self, now: Instant) {
        let mut due = Vec::new();
        self.windows().retain(|kind, window| {
            let open = now.duration_since(window.opened) < WINDOW;
            if !open && window.more > 0 {
                due.push((*kind, window.more, std::mem::take(&mut window.last)));
            }
            open
        });
        for (kind, more, last) in due {
            log(kind, &last, Some(more));
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<Kind, Window>> {
        // Entries are only inserted, bumped or dropped whole; a panic cannot leave one half-made.
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn log(kind: Kind, error: &str, more: Option<u64>) {
    let work = kind.work;
    match (kind.unavailable, more) {
        (true, None) => tracing::warn!(work, error, "store call failed"),
        (false, None) => tracing::error!(work, error, "store call failed"),
        (true, Some(more)) => tracing::warn!(
            work,
            more,
            last_error = error,
            "store call failed {more} more times like that within {}s",
            WINDOW.as_secs()
        ),
        (false, Some(more)) => tracing::error!(
            work,
            more,
            last_error = error,
            "store call failed {more} more times like that within {}s",
            WINDOW.as_secs()
        ),
    }
}

async fn summarise(failures: Weak<Failures>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(WINDOW / 4);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(failures) = failures.upgrade() else {
            return;
        };
        failures.flush(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> Error {
        Error::Unavailable("connection refused".into())
    }

    fn counted(failures: &Failures, work: &'static str) -> Option<u64> {
        let kind = Kind {
            work,
            unavailable: true,
        };
        failures.windows().get(&kind).map(|w| w.more)
    }

    #[test]
    fn the_first_failure_opens_a_window_and_the_rest_are_counted() {
        let failures = Failures::default();
        for _ in 0..1000 {
            failures.record("write batch", &unavailable());
        }
        failures.record("read batch", &unavailable());
        assert_eq!(counted(&failures, "write batch"), Some(999));
        assert_eq!(counted(&failures, "read batch"), Some(0));
        // The metrics count every one, logged or not.
        let page = failures.metrics.render();
        assert!(
            page.contains(
                r#"retaind_store_errors_total{work="write batch",kind="unavailable"} 1000"#
            ),
            "{page}"
        );
    }

    #[test]
    fn a_window_closes_after_its_time_and_the_next_failure_is_logged_in_full() {
        let failures = Failures::default();
        failures.record("write batch", &unavailable());
        failures.record("write batch", &unavailable());
        failures.flush(Instant::now());
        assert_eq!(counted(&failures, "write batch"), Some(1), "still open");
        failures.flush(Instant::now() + WINDOW);
        assert_eq!(counted(&failures, "write batch"), None);
        failures.record("write batch", &unavailable());
        assert_eq!(counted(&failures, "write batch"), Some(0));
    }

    #[test]
    fn quota_refusals_and_shutdown_are_not_failures() {
        let failures = Failures::default();
        failures.record("write batch", &Error::Closed);
        failures.record(
            "write batch",
            &Error::QuotaExceeded(crate::store::QuotaExceeded::Service { limit: 1 }),
        );
        assert!(failures.windows().is_empty());
    }
}
