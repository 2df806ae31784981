//! How often one client id may connect (`--mqtt-connect-rate-per-client-id`; AWS IoT: once a
//! second). Each connection taken over is a session handed over and, with `--cluster-url`, a
//! claim written to Postgres and a notice sent over NATS: two devices sharing a client id, or
//! firmware reconnecting in a tight loop, would repeat that as fast as the round trips allow.
//!
//! A CONNECT sooner than its client id's turn waits for it, up to [`MAX_WAIT`], instead of
//! being refused as AWS does: a device that reconnects at once after a reboot, or a script
//! publishing with a fixed client id, gets in a little later rather than not at all, while a
//! loop is held to the rate. One whose turn is further off is refused (0x9F Connection rate
//! exceeded; 3.1.1: 0x03). The check comes after the credentials, so only a client that may
//! connect with the id can use up its turns.
//!
//! The table holds a bucket only while it is not full again; client ids are kept as keyed
//! hashes (a client id may be tens of kilobytes), and the table is bounded ([`MAX_TRACKED`]):
//! beyond that a client id not in it is let in untracked.
//!
//! [`PrincipalRates`] paces the CONNECTs of each principal the same way
//! (`--mqtt-connect-rate-per-principal`, off by default; AWS IoT: 500 a second per account).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::rate::TokenBucket;

/// The longest a CONNECT waits for its client id's turn.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(2);
/// Client ids tracked at once: a table of at most 131,072 slots of 41 bytes, about 5.4 MB.
const MAX_TRACKED: usize = 100_000;
/// The table is not swept below this many entries.
const FIRST_SWEEP: usize = 1024;

/// When a CONNECT may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turn {
    /// At once.
    Now,
    /// After this wait, its client id's next turn, which is now its own.
    After(Duration),
    /// Its turn is further off than [`MAX_WAIT`]: refuse it.
    Refused,
}

impl Turn {
    /// What a bucket's reservation ([`TokenBucket::reserve`]) means for a CONNECT.
    fn of(reserved: Option<Duration>) -> Self {
        match reserved {
            Some(Duration::ZERO) => Self::Now,
            Some(wait) => Self::After(wait),
            None => Self::Refused,
        }
    }
}

pub(super) struct ConnectRates {
    /// Per second; 0: no limit.
    rate: f64,
    hasher: std::hash::RandomState,
    table: Mutex<Table>,
}

struct Table {
    buckets: HashMap<u64, TokenBucket>,
    /// The size at which the full buckets are next swept out.
    sweep_at: usize,
    /// When a sweep found no room: none is tried again before a second has passed.
    found_no_room: Option<Instant>,
}

impl ConnectRates {
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            hasher: std::hash::RandomState::new(),
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                sweep_at: FIRST_SWEEP,
                found_no_room: None,
            }),
        }
    }

    /// `client`'s turn to connect, taken.
    pub fn turn(&self, client: &str, now: Instant) -> Turn {
        if self.rate <= 0.0 {
            return Turn::Now;
        }
        let key = self.hasher.hash_one(client);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if !table.buckets.contains_key(&key) && !table.make_room(now) {
            return Turn::Now;
        }
        let bucket = table
            .buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(self.rate, now));
        Turn::of(bucket.reserve(now, MAX_WAIT))
    }

    /// Gives back the turn `client` was given: its CONNECT was refused after all (for its
    /// principal's rate), and a refused CONNECT takes no turn.
    pub fn give_back(&self, client: &str) {
        if self.rate <= 0.0 {
            return;
        }
        let key = self.hasher.hash_one(client);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = table.buckets.get_mut(&key) {
            bucket.give_back();
        }
    }

    /// Client ids in the table, for the tests.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().unwrap().buckets.len()
    }
}

/// CONNECTs per second of each principal, the service's: with `--cluster-url` each node lets in
/// its share, the rate divided by the live nodes, as with the HTTP rates (decision 014).
/// Without principals every client shares one bucket, the node's CONNECT rate. The buckets are
/// bounded by the principals ever configured, as the HTTP rates' are.
pub(super) struct PrincipalRates {
    /// Per second, for the whole service; 0: no limit.
    rate: f64,
    cluster: Option<Cluster>,
    buckets: Mutex<PrincipalBuckets>,
}

#[derive(Default)]
struct PrincipalBuckets {
    anonymous: Option<TokenBucket>,
    named: HashMap<Arc<str>, TokenBucket>,
}

impl PrincipalRates {
    pub fn new(rate: f64, cluster: Option<Cluster>) -> Self {
        Self {
            rate,
            cluster,
            buckets: Mutex::default(),
        }
    }

    /// The principal's turn to connect (`None`: without principals), taken.
    pub fn turn(&self, principal: Option<&str>, now: Instant) -> Turn {
        if self.rate <= 0.0 {
            return Turn::Now;
        }
        let nodes = self.cluster.as_ref().map_or(1, Cluster::live_nodes).max(1);
        self.turn_at(principal, self.rate / nodes as f64, now)
    }

    /// [`PrincipalRates::turn`] at this node's share of the rate.
    fn turn_at(&self, principal: Option<&str>, rate: f64, now: Instant) -> Turn {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = &mut *buckets;
        let bucket = match principal {
            None => buckets
                .anonymous
                .get_or_insert_with(|| TokenBucket::new(rate, now)),
            Some(name) => {
                if !buckets.named.contains_key(name) {
                    buckets
                        .named
                        .insert(Arc::from(name), TokenBucket::new(rate, now));
                }
                buckets.named.get_mut(name).expect("inserted above")
            }
        };
        bucket.retune(rate);
        Turn::of(bucket.reserve(now, MAX_WAIT))
    }
}

impl Table {
    /// Whether one more bucket may be added, after forgetting the full ones when the table
    /// has doubled since they were last forgotten (so that sweeping costs a constant amount
    /// per CONNECT), or at most once a second when it is full of buckets still refilling.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.buckets.len() < self.sweep_at {
            return true;
        }
        if self
            .found_no_room
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
        {
            return false;
        }
        self.buckets.retain(|_, bucket| !bucket.is_full(now));
        let left = self.buckets.len();
        self.sweep_at = (2 * left).clamp(FIRST_SWEEP, MAX_TRACKED);
        self.found_no_room = (left >= MAX_TRACKED).then_some(now);
        self.found_no_room.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_waits_for_its_turn_and_is_refused_past_the_longest_wait() {
        let rates = ConnectRates::new(1.0);
        let t0 = Instant::now();
        assert_eq!(rates.turn("a", t0), Turn::Now);
        assert_eq!(rates.turn("a", t0), Turn::After(Duration::from_secs(1)));
        assert_eq!(rates.turn("a", t0), Turn::After(Duration::from_secs(2)));
        assert_eq!(rates.turn("a", t0), Turn::Refused);
        // Another client id has its own turns.
        assert_eq!(rates.turn("b", t0), Turn::Now);
        // The turns promised come first.
        let t1 = t0 + Duration::from_millis(2500);
        assert_eq!(rates.turn("a", t1), Turn::After(Duration::from_millis(500)));
        assert_eq!(rates.turn("a", t0 + Duration::from_secs(10)), Turn::Now);
    }

    #[test]
    fn each_principal_has_its_own_turns_and_a_burst_of_a_seconds_worth() {
        let rates = PrincipalRates::new(2.0, None);
        let t0 = Instant::now();
        let turns: Vec<Turn> = (0..7).map(|_| rates.turn(Some("fleet"), t0)).collect();
        let ms = |n| Turn::After(Duration::from_millis(n));
        assert_eq!(
            turns,
            [
                Turn::Now,
                Turn::Now,
                ms(500),
                ms(1000),
                ms(1500),
                ms(2000),
                Turn::Refused
            ]
        );
        assert_eq!(rates.turn(Some("other"), t0), Turn::Now);
        assert_eq!(rates.turn(None, t0), Turn::Now);
        assert_eq!(
            PrincipalRates::new(0.0, None).turn(Some("fleet"), t0),
            Turn::Now
        );
    }

    #[test]
    fn a_principals_bucket_follows_its_share_as_nodes_come_and_go() {
        let rates = PrincipalRates::new(3.0, None);
        let t0 = Instant::now();
        // Alone, the node's share is all 3 a second; two more nodes come, and it is one: the
        // bucket keeps at most one second's worth of the new share.
        assert_eq!(rates.turn_at(Some("fleet"), 3.0, t0), Turn::Now);
        assert_eq!(rates.turn_at(Some("fleet"), 1.0, t0), Turn::Now);
        assert_eq!(
            rates.turn_at(Some("fleet"), 1.0, t0),
            Turn::After(Duration::from_secs(1))
        );
    }

    #[test]
    fn no_rate_lets_everyone_in_and_tracks_nothing() {
        let rates = ConnectRates::new(0.0);
        let t0 = Instant::now();
        assert!((0..100).all(|_| rates.turn("a", t0) == Turn::Now));
        assert_eq!(rates.tracked(), 0);
    }

    #[test]
    fn full_buckets_are_forgotten_as_the_table_grows() {
        let rates = ConnectRates::new(1.0);
        let t0 = Instant::now();
        for i in 0..FIRST_SWEEP {
            assert_eq!(rates.turn(&format!("c{i}"), t0), Turn::Now);
        }
        assert_eq!(rates.tracked(), FIRST_SWEEP);
        // A second later every bucket is full again: the next new id sweeps them out.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(rates.turn("new", t1), Turn::Now);
        assert_eq!(rates.tracked(), 1);
        // A forgotten id starts again with a full bucket.
        assert_eq!(rates.turn("c0", t1), Turn::Now);
        assert_eq!(rates.turn("c0", t1), Turn::After(Duration::from_secs(1)));
    }

    #[test]
    fn past_the_bound_new_client_ids_go_untracked_until_room_is_made() {
        let rates = ConnectRates::new(0.01);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED {
            rates.turn(&format!("c{i}"), t0);
        }
        assert_eq!(rates.tracked(), MAX_TRACKED);
        // Every bucket still needs 100 s to refill: the newcomer is let in, untracked, and the
        // table is not swept again within the second.
        for ms in [0, 10, 999] {
            let t = t0 + Duration::from_millis(ms);
            assert_eq!(rates.turn("untracked", t), Turn::Now);
        }
        assert_eq!(rates.tracked(), MAX_TRACKED);
        // A tracked id keeps its turns.
        assert_eq!(rates.turn("c7", t0), Turn::Refused);
        // Once they are full again, room is made.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(rates.turn("untracked", later), Turn::Now);
        assert_eq!(rates.turn("untracked", later), Turn::Refused);
        assert_eq!(rates.tracked(), 1);
    }
}
