//! Take-overs of a client id, watched for devices that share one.
//!
//! A connection with a client id already connected takes the session over and closes the
//! other [MQTT-3.1.4-3]. Two devices given the same client id (a cloned firmware image, a
//! copied certificate) then close each other in turn, each reconnecting as soon as it is
//! closed: neither keeps a connection long enough to receive much, and each take-over costs a
//! handshake, a session move and, with `--cluster-url`, a claim in Postgres. It is the
//! commonest fleet fault brokers see, and from a single take-over it looks like an ordinary
//! reconnect. So the node counts take-overs of each client id over a minute and says so once
//! when one is taken over again and again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::topic::ClientKey;

/// The span over which one client id's take-overs are counted.
const WINDOW: Duration = Duration::from_secs(60);
/// Take-overs of one client id within [`WINDOW`] that are logged: more than a device
/// reconnecting over a flaky network makes.
const REPEATED: u32 = 5;
/// Client ids followed at once; past it the oldest windows are dropped, and a new id is not
/// followed while every window is younger than [`WINDOW`] (the metric still counts it).
const FOLLOWED: usize = 4096;

#[derive(Default)]
pub(super) struct TakeOvers(Mutex<HashMap<ClientKey, Recent>>);

struct Recent {
    since: Instant,
    count: u32,
    told: bool,
}

impl TakeOvers {
    /// `client`'s connection was taken over; returns how many times within the last minute
    /// when that is the time to log it (once per client id per window).
    pub fn record(&self, client: &ClientKey) -> Option<u32> {
        let now = Instant::now();
        let mut recent = self.recent();
        if !recent.contains_key(client) && recent.len() >= FOLLOWED {
            recent.retain(|_, r| now.duration_since(r.since) < WINDOW);
            if recent.len() >= FOLLOWED {
                return None;
            }
        }
        let r = recent.entry(client.clone()).or_insert(Recent {
            since: now,
            count: 0,
            told: false,
        });
        if now.duration_since(r.since) >= WINDOW {
            *r = Recent {
                since: now,
                count: 0,
                told: false,
            };
        }
        r.count += 1;
        if r.count < REPEATED || r.told {
            return None;
        }
        r.told = true;
        Some(r.count)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Recent>> {
        // Whole entries inserted and replaced: a panic cannot leave the map torn.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_id_taken_over_again_and_again_is_told_once_a_minute() {
        let takeovers = TakeOvers::default();
        let twin: ClientKey = "twin".into();
        let told: Vec<_> = (0..10).map(|_| takeovers.record(&twin)).collect();
        assert_eq!(told[..4], [None; 4], "a few take-overs are reconnects");
        assert_eq!(told[4], Some(REPEATED));
        assert!(told[5..].iter().all(Option::is_none), "once per window");
        // Another id keeps its own count.
        assert_eq!(takeovers.record(&"other".into()), None);
        tokio::time::sleep(WINDOW).await;
        let again: Vec<_> = (0..5).map(|_| takeovers.record(&twin)).collect();
        assert_eq!(again, [None, None, None, None, Some(REPEATED)]);
    }

    #[tokio::test(start_paused = true)]
    async fn take_overs_spread_over_more_than_a_minute_are_not_told() {
        let takeovers = TakeOvers::default();
        let flaky: ClientKey = "flaky".into();
        for _ in 0..20 {
            assert_eq!(takeovers.record(&flaky), None);
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_client_ids_followed_are_bounded() {
        let takeovers = TakeOvers::default();
        for i in 0..FOLLOWED {
            takeovers.record(&format!("id-{i}").into());
        }
        let late: ClientKey = "late".into();
        for _ in 0..REPEATED {
            assert_eq!(
                takeovers.record(&late),
                None,
                "not followed while all are young"
            );
        }
        assert_eq!(takeovers.recent().len(), FOLLOWED);
        tokio::time::sleep(WINDOW).await;
        takeovers.record(&late);
        assert_eq!(takeovers.recent().len(), 1, "old windows make room");
    }
}
