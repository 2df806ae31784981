//! The node's offline sessions in the order they would end, so that their number can be
//! bounded (`--mqtt-max-offline-sessions`).
//!
//! Expiry alone bounds them by time, not by count: a device that connects with a new client
//! id each time and asks for a session (an MQTT 5 client with an empty id and a session
//! expiry, or a random id and clean session 0) leaves one per connection for an hour. Past
//! the bound the session nearest its end ends first: it is the one its client asked the
//! least of, and with equal expiries the one away the longest. A session that never expires
//! ranks after every one that does. The index is the registry's, changed only under its lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::topic::ClientKey;

/// Between two log lines about sessions ended to make room: the metric counts each.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Where an offline session stands in the order of ending: its expiry (epoch ms, `i64::MAX`
/// for never), then the order in which sessions were listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    expires_at_ms: i64,
    listed: u64,
}

#[derive(Default)]
pub(super) struct Offline {
    order: BTreeMap<Rank, ClientKey>,
    ranks: HashMap<ClientKey, Rank>,
    next: u64,
}

impl Offline {
    /// `client`'s session is offline until `expires_at_ms`, in place of any earlier listing.
    pub fn list(&mut self, client: &ClientKey, expires_at_ms: i64) {
        self.unlist(client);
        self.next += 1;
        let rank = Rank {
            expires_at_ms,
            listed: self.next,
        };
        self.order.insert(rank, client.clone());
        self.ranks.insert(client.clone(), rank);
    }

    /// `client`'s session is no longer offline here: taken up, ended or gone elsewhere.
    pub fn unlist(&mut self, client: &str) {
        if let Some(rank) = self.ranks.remove(client) {
            self.order.remove(&rank);
        }
    }

    pub fn len(&self) -> usize {
        self.ranks.len()
    }

    /// The listed client ids, those nearest their end first.
    pub fn nearest_end(&self) -> impl Iterator<Item = &ClientKey> {
        self.order.values()
    }
}

/// Sessions ended to make room, logged in summary so that a flood of new client ids cannot
/// flood the log: the first at once, then how many more in each 10 s after, until 10 s pass
/// with none.
#[derive(Default)]
pub(super) struct EvictionLog(Mutex<Window>);

#[derive(Default)]
struct Window {
    open: bool,
    unlogged: u64,
}

impl EvictionLog {
    pub fn record(self: &Arc<Self>, ended: usize, max: usize) {
        if ended == 0 {
            return;
        }
        {
            let mut window = self.window();
            if window.open {
                window.unlogged += ended as u64;
                return;
            }
            window.open = true;
        }
        tracing::warn!(
            ended,
            max,
            "offline sessions ended before their expiry to keep within --mqtt-max-offline-sessions, those nearest their end first"
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.window().open = false;
            return;
        };
        let log = self.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(LOG_EVERY).await;
                let ended = {
                    let mut window = log.window();
                    if window.unlogged == 0 {
                        window.open = false;
                        return;
                    }
                    std::mem::take(&mut window.unlogged)
                };
                tracing::warn!(
                    ended,
                    max,
                    "more offline sessions ended before their expiry in the last 10 s (--mqtt-max-offline-sessions)"
                );
            }
        });
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        // Plain counts: a panic cannot leave them torn.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(offline: &Offline) -> Vec<&str> {
        offline.nearest_end().map(|k| &**k).collect()
    }

    #[test]
    fn sessions_rank_by_expiry_then_by_when_they_were_listed_never_last() {
        let mut offline = Offline::default();
        for (client, at) in [
            ("never", i64::MAX),
            ("late", 30),
            ("early", 10),
            ("tie", 30),
        ] {
            offline.list(&client.into(), at);
        }
        assert_eq!(order(&offline), ["early", "late", "tie", "never"]);
        assert_eq!(offline.len(), 4);
    }

    fn window(log: &EvictionLog) -> (bool, u64) {
        let w = log.window();
        (w.open, w.unlogged)
    }

    #[tokio::test(start_paused = true)]
    async fn evictions_are_logged_first_at_once_then_in_summary_until_a_quiet_window() {
        let log = Arc::new(EvictionLog::default());
        log.record(0, 5);
        assert_eq!(window(&log), (false, 0), "nothing ended, nothing logged");
        log.record(1, 5);
        assert_eq!(window(&log), (true, 0), "the first logged at once");
        log.record(2, 5);
        log.record(3, 5);
        assert_eq!(window(&log), (true, 5), "the others counted");
        tokio::time::sleep(LOG_EVERY + Duration::from_millis(1)).await;
        assert_eq!(window(&log), (true, 0), "logged at the window's end");
        log.record(4, 5);
        tokio::time::sleep(LOG_EVERY).await;
        assert_eq!(window(&log), (true, 0));
        tokio::time::sleep(LOG_EVERY).await;
        assert_eq!(window(&log), (false, 0), "a quiet window closes it");
        log.record(1, 5);
        assert_eq!(window(&log), (true, 0), "the next logged at once again");
    }

    #[test]
    fn without_a_runtime_every_eviction_is_logged_at_once() {
        let log = Arc::new(EvictionLog::default());
        log.record(1, 5);
        log.record(1, 5);
        assert_eq!(window(&log), (false, 0));
    }

    #[test]
    fn a_session_listed_again_keeps_one_place_and_unlisting_leaves_nothing() {
        let mut offline = Offline::default();
        offline.list(&"a".into(), 10);
        offline.list(&"b".into(), 20);
        offline.list(&"a".into(), 30);
        assert_eq!(order(&offline), ["b", "a"]);
        offline.unlist("a");
        offline.unlist("a");
        offline.unlist("unknown");
        assert_eq!(order(&offline), ["b"]);
        offline.unlist("b");
        assert_eq!(offline.len(), 0);
        assert!(offline.order.is_empty() && offline.ranks.is_empty());
    }
}
