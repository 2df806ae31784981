//! Sessions ended to make room (`offline`), logged in summary so that a flood of new client
//! ids cannot flood the log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::SessionBound;

/// Between two log lines about sessions ended to make room: the metric counts each.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Sessions ended to make room, logged in summary so that a flood of new client ids cannot
/// flood the log: for each bound, the first at once, then how many more in each 10 s after,
/// until 10 s pass with none.
#[derive(Default)]
pub(super) struct EvictionLog(Mutex<[Window; 2]>);

#[derive(Default)]
struct Window {
    open: bool,
    unlogged: u64,
}

impl EvictionLog {
    pub fn record(self: &Arc<Self>, bound: SessionBound, ended: usize) {
        if ended == 0 {
            return;
        }
        {
            let mut windows = self.windows();
            let window = &mut windows[bound as usize];
            if window.open {
                window.unlogged += ended as u64;
                return;
            }
            window.open = true;
        }
        log(bound, ended as u64, false);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.windows()[bound as usize].open = false;
            return;
        };
        let log_ = self.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(LOG_EVERY).await;
                let ended = {
                    let mut windows = log_.windows();
                    let window = &mut windows[bound as usize];
                    if window.unlogged == 0 {
                        window.open = false;
                        return;
                    }
                    std::mem::take(&mut window.unlogged)
                };
                log(bound, ended, true);
            }
        });
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, [Window; 2]> {
        // Plain counts: a panic cannot leave them torn.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn log(bound: SessionBound, ended: u64, more: bool) {
    let bound = match bound {
        SessionBound::node => "the node's (--mqtt-max-offline-sessions)",
        SessionBound::principal => "their principal's (max_offline_sessions)",
    };
    if more {
        tracing::warn!(
            ended,
            bound,
            "more offline sessions ended before their expiry in the last 10 s to keep within a bound"
        );
    } else {
        tracing::warn!(
            ended,
            bound,
            "offline sessions ended before their expiry to keep within a bound, those nearest their end first"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(log: &EvictionLog) -> (bool, u64) {
        let w = &log.windows()[SessionBound::node as usize];
        (w.open, w.unlogged)
    }

    #[tokio::test(start_paused = true)]
    async fn evictions_are_logged_first_at_once_then_in_summary_until_a_quiet_window() {
        let log = Arc::new(EvictionLog::default());
        log.record(SessionBound::node, 0);
        assert_eq!(window(&log), (false, 0), "nothing ended, nothing logged");
        log.record(SessionBound::node, 1);
        assert_eq!(window(&log), (true, 0), "the first logged at once");
        log.record(SessionBound::node, 2);
        log.record(SessionBound::node, 3);
        assert_eq!(window(&log), (true, 5), "the others counted");
        log.record(SessionBound::principal, 7);
        let principal = {
            let w = &log.windows()[SessionBound::principal as usize];
            (w.open, w.unlogged)
        };
        assert_eq!(principal, (true, 0), "each bound its own");
        assert_eq!(window(&log), (true, 5));
        tokio::time::sleep(LOG_EVERY + Duration::from_millis(1)).await;
        assert_eq!(window(&log), (true, 0), "logged at the window's end");
        log.record(SessionBound::node, 4);
        tokio::time::sleep(LOG_EVERY).await;
        assert_eq!(window(&log), (true, 0));
        tokio::time::sleep(LOG_EVERY).await;
        assert_eq!(window(&log), (false, 0), "a quiet window closes it");
        log.record(SessionBound::node, 1);
        assert_eq!(window(&log), (true, 0), "the next logged at once again");
    }

    #[test]
    fn without_a_runtime_every_eviction_is_logged_at_once() {
        let log = Arc::new(EvictionLog::default());
        log.record(SessionBound::node, 1);
        log.record(SessionBound::node, 1);
        assert_eq!(window(&log), (false, 0));
    }
}
