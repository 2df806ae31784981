//! Places for connections, shared fairly among their sources: TLS handshakes in progress,
//! MQTT connections before their CONNECT, and HTTP connections (which decline to be given up
//! while they serve a request). They are bounded, so a single client holding them all with
//! connections that never say anything would keep every other client out until they time
//! out, again and again, or use up the open files. When they are full, a newcomer takes the
//! place of one that has had its grace, from the address (IPv6: the /64) that holds the most,
//! oldest first. One address cannot then shut the others out; a slow honest client is only
//! given up for a newcomer while its address holds as many places as any other; and
//! connections younger than their grace are never given up, so a burst of honest clients (a
//! fleet reconnecting through one load balancer) is not churned through.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Where a connection comes from, for sharing the slots: an IPv4 address, or the /64 of an
/// IPv6 one (a single host is usually given a whole /64); `Unknown` for a transport that does
/// not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    V6Prefix(u64),
    Unknown,
}

impl From<Option<IpAddr>> for Source {
    fn from(ip: Option<IpAddr>) -> Self {
        ip.map_or(Self::Unknown, Self::from)
    }
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Connections asked, in order, to give their place up for one newcomer.
const MAX_ASKED: usize = 16;

/// Gives a slot's connection up, if it can be now: whether it was (an HTTP connection
/// serving a request declines).
pub type GiveUp = Box<dyn FnMut() -> bool + Send>;

struct Holder {
    source: Source,
    since: Instant,
    give_up: GiveUp,
}

/// The slots, each known by a key of the owner's (`K`).
pub struct Slots<K> {
    max: usize,
    /// How long a connection keeps its slot whatever happens.
    grace: Duration,
    held: HashMap<K, Holder>,
    per_source: HashMap<Source, usize>,
}

impl<K: Copy + Eq + Hash> Slots<K> {
    pub fn new(max: usize, grace: Duration) -> Self {
        Self {
            max,
            grace,
            held: HashMap::new(),
            per_source: HashMap::new(),
        }
    }

    /// Slots held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn has_room(&self) -> bool {
        self.held.len() < self.max
    }

    /// Whether a newcomer may have a slot now: there is room, or one is past its grace (which
    /// may still decline to be given up).
    pub fn can_take(&self, now: Instant) -> bool {
        self.has_room() || self.candidates(now).next().is_some()
    }

    /// When a slot can next be given up, if none can now and there is no room.
    pub fn next_chance(&self) -> Option<Instant> {
        self.held.values().map(|h| h.since + self.grace).min()
    }

    /// Records the connection `key`, from `source`, started `since`, which `give_up` ends.
    pub fn add(&mut self, key: K, source: Source, since: Instant, give_up: GiveUp) {
        *self.per_source.entry(source).or_default() += 1;
        let holder = Holder {
            source,
            since,
            give_up,
        };
        if let Some(old) = self.held.insert(key, holder) {
            self.forget(old.source);
        }
    }

    /// The connection `key` turned out to come from `source` (a PROXY protocol header said so):
    /// it counts there from now on.
    pub fn set_source(&mut self, key: K, source: Source) {
        let Some(holder) = self.held.get_mut(&key) else {
            return;
        };
        let old = std::mem::replace(&mut holder.source, source);
        *self.per_source.entry(source).or_default() += 1;
        self.forget(old);
    }

    /// The connection `id` went past the point the slots are for, ended, or was given up: its
    /// slot is free.
    pub fn remove(&mut self, id: K) {
        if let Some(holder) = self.held.remove(&id) {
            self.forget(holder.source);
        }
    }

    fn forget(&mut self, source: Source) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// Frees a slot for a newcomer if there is none: gives up, of the connections past their
    /// grace, the oldest of the source holding the most slots, or the next if it declines.
    /// Whether one was given up.
    pub fn make_room(&mut self, now: Instant) -> bool {
        if self.has_room() {
            return false;
        }
        let mut order: Vec<(usize, Instant, K)> = self
            .candidates(now)
            .map(|(key, h)| (self.per_source[&h.source], h.since, *key))
            .collect();
        // The most slots first; among them the oldest. Only the first few are asked: under a
        // flood of newcomers while every place is busy, each must not cost a pass over all.
        let first =
            |a: &(usize, Instant, K), b: &(usize, Instant, K)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        if order.len() > MAX_ASKED {
            order.select_nth_unstable_by(MAX_ASKED - 1, first);
            order.truncate(MAX_ASKED);
        }
        order.sort_unstable_by(first);
        for (_, _, key) in order {
            let agreed = self.held.get_mut(&key).is_some_and(|h| (h.give_up)());
            if agreed {
                self.remove(key);
                return true;
            }
        }
        false
    }

    fn candidates(&self, now: Instant) -> impl Iterator<Item = (&K, &Holder)> {
        self.held
            .iter()
            .filter(move |(_, h)| now.saturating_duration_since(h.since) >= self.grace)
    }
}

/// Slots shared by connections of one or several listeners: a cheap handle.
#[derive(Clone)]
pub struct Places(Arc<Mutex<PlacesState>>);

struct PlacesState {
    slots: Slots<u64>,
    next_key: u64,
    /// Places given up for a newcomer, and newcomers refused, since the start.
    given_up: u64,
    refused: u64,
}

/// A connection's place until it has shown who it is (or, for HTTP, while it lives); freed
/// when dropped.
pub struct Place {
    places: Places,
    key: u64,
    /// Cancelled when a newcomer takes this place: the connection is to close.
    pub given_up: CancellationToken,
}

impl Places {
    pub fn new(max: usize, grace: Duration) -> Self {
        Self(Arc::new(Mutex::new(PlacesState {
            slots: Slots::new(max, grace),
            next_key: 0,
            given_up: 0,
            refused: 0,
        })))
    }

    fn state(&self) -> MutexGuard<'_, PlacesState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Places held now.
    pub fn len(&self) -> usize {
        self.state().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Places given up for newcomers, and newcomers refused, since the start.
    pub fn closed_for_room(&self) -> (u64, u64) {
        let state = self.state();
        (state.given_up, state.refused)
    }

    /// A place for a connection from `source`, freeing one if need be; `None` when none can be
    /// had: every one is within its grace, or declines. A connection declines while `busy`
    /// says so.
    pub fn enter(
        &self,
        source: Option<IpAddr>,
        busy: impl Fn() -> bool + Send + 'static,
    ) -> Option<Place> {
        let mut state = self.state();
        let now = Instant::now();
        if !state.slots.has_room() {
            if state.slots.can_take(now) && state.slots.make_room(now) {
                state.given_up += 1;
            } else {
                state.refused += 1;
                return None;
            }
        }
        let key = state.next_key;
        state.next_key += 1;
        let given_up = CancellationToken::new();
        let cancel = given_up.clone();
        let give_up: GiveUp = Box::new(move || {
            if busy() {
                return false;
            }
            cancel.cancel();
            true
        });
        state.slots.add(key, Source::from(source), now, give_up);
        Some(Place {
            places: self.clone(),
            key,
            given_up,
        })
    }
}

impl Place {
    /// The connection turned out to come from `source` (a PROXY protocol header said so): its
    /// place counts there from now on.
    pub fn moved_to(&self, source: IpAddr) {
        self.places
            .state()
            .slots
            .set_source(self.key, Source::from(source));
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.places.state().slots.remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;

    fn v4(last: u8) -> Source {
        Source::from(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    /// A connection in a slot until given up: its key, and whether it was given up.
    struct Pending {
        key: u64,
        given_up: Arc<AtomicBool>,
    }

    impl Pending {
        fn given_up(&self) -> bool {
            self.given_up.load(Ordering::SeqCst)
        }
    }

    fn pending(slots: &mut Slots<u64>, source: Source, since: Instant) -> Pending {
        static KEYS: AtomicU64 = AtomicU64::new(0);
        let key = KEYS.fetch_add(1, Ordering::Relaxed);
        let given_up = Arc::new(AtomicBool::new(false));
        let flag = given_up.clone();
        slots.add(
            key,
            source,
            since,
            Box::new(move || {
                flag.store(true, Ordering::SeqCst);
                true
            }),
        );
        Pending { key, given_up }
    }

    #[test]
    fn a_full_set_gives_up_the_oldest_connection_of_the_address_holding_the_most() {
        let mut slots = Slots::new(4, Duration::from_secs(2));
        let t0 = Instant::now();
        // One address with the oldest connection, another with three younger ones.
        let lone = pending(&mut slots, v4(1), t0);
        let crowd: Vec<_> = (1..=3)
            .map(|i| pending(&mut slots, v4(2), t0 + Duration::from_millis(10 * i)))
            .collect();
        assert!(!slots.has_room());

        // Within their grace, none is given up: the newcomer waits.
        let early = t0 + Duration::from_secs(1);
        assert!(!slots.can_take(early));
        assert!(!slots.make_room(early));
        assert_eq!(slots.next_chance(), Some(t0 + Duration::from_secs(2)));

        let later = t0 + Duration::from_secs(3);
        assert!(slots.can_take(later));
        assert!(slots.make_room(later));
        assert!(slots.has_room());
        assert!(crowd[0].given_up(), "the crowd's oldest is given up");
        assert!(!lone.given_up() && !crowd[1].given_up() && !crowd[2].given_up());

        // The crowd still holds the most (two, against one and one).
        let third = pending(&mut slots, v4(3), later);
        let much_later = later + Duration::from_secs(3);
        assert!(slots.make_room(much_later));
        assert!(crowd[1].given_up());
        assert!(!lone.given_up() && !crowd[2].given_up() && !third.given_up());

        // One each now: the oldest of all goes, the lone address's own.
        pending(&mut slots, v4(4), much_later);
        assert!(slots.make_room(much_later));
        assert!(lone.given_up());
        assert!(!crowd[2].given_up() && !third.given_up());
    }

    #[test]
    fn a_connection_that_declines_is_passed_over_for_the_next() {
        let mut slots = Slots::new(2, Duration::ZERO);
        let t0 = Instant::now();
        let asked = Arc::new(AtomicBool::new(false));
        let flag = asked.clone();
        slots.add(
            u64::MAX,
            v4(1),
            t0,
            Box::new(move || {
                flag.store(true, Ordering::SeqCst);
                false
            }),
        );
        let younger = pending(&mut slots, v4(1), t0 + Duration::from_millis(1));
        assert!(slots.make_room(t0 + Duration::from_secs(1)));
        assert!(asked.load(Ordering::SeqCst), "the oldest was asked first");
        assert!(younger.given_up());
        assert!(!slots.make_room(t0 + Duration::from_secs(1)), "room now");
        // Alone, it still declines: no room can be made.
        let other = pending(&mut slots, v4(2), t0 + Duration::from_millis(2));
        assert!(slots.make_room(t0 + Duration::from_secs(1)));
        assert!(
            other.given_up(),
            "passed over to the next, of another address"
        );
        let mut slots_of_one = Slots::new(1, Duration::ZERO);
        slots_of_one.add(u64::MAX, v4(1), t0, Box::new(|| false));
        assert!(
            slots_of_one.can_take(t0),
            "past its grace, so it may be asked"
        );
        assert!(!slots_of_one.make_room(t0), "and it declines");
    }

    #[test]
    fn no_more_than_a_few_are_asked_for_one_newcomer() {
        let n = MAX_ASKED as u64 + 1;
        let mut slots = Slots::new(n as usize, Duration::ZERO);
        let t0 = Instant::now();
        let asked = Arc::new(AtomicU64::new(0));
        // Keys apart from those `pending` hands out.
        for i in 0..MAX_ASKED as u64 {
            let asked = asked.clone();
            slots.add(
                u64::MAX - i,
                v4(1),
                t0 + Duration::from_millis(i),
                Box::new(move || {
                    asked.fetch_add(1, Ordering::SeqCst);
                    false
                }),
            );
        }
        // The youngest, and the only one that would agree: never reached.
        let willing = pending(&mut slots, v4(1), t0 + Duration::from_secs(1));
        assert!(!slots.make_room(t0 + Duration::from_secs(2)));
        assert_eq!(asked.load(Ordering::SeqCst), MAX_ASKED as u64);
        assert!(!willing.given_up());
    }

    #[test]
    fn a_connection_past_the_slots_frees_its_slot_and_its_address_count() {
        let mut slots = Slots::new(1, Duration::ZERO);
        let one = pending(&mut slots, v4(1), Instant::now());
        assert!(!slots.has_room());
        slots.remove(one.key);
        slots.remove(one.key);
        assert!(slots.has_room());
        assert!(slots.per_source.is_empty());
        assert_eq!(slots.next_chance(), None);
        assert!(!slots.make_room(Instant::now()), "room already");
        assert!(!one.given_up());
    }

    #[test]
    fn a_connection_moved_to_its_real_source_counts_there() {
        let mut slots = Slots::new(4, Duration::ZERO);
        let t0 = Instant::now();
        // Four through one balancer (v4(9)): the oldest is a lone client, three one crowd.
        let lone = pending(&mut slots, v4(9), t0);
        let crowd: Vec<_> = (1..=3)
            .map(|i| pending(&mut slots, v4(9), t0 + Duration::from_millis(i)))
            .collect();
        slots.set_source(lone.key, v4(1));
        for c in &crowd {
            slots.set_source(c.key, v4(2));
        }
        slots.set_source(u64::MAX, v4(3));
        assert_eq!(
            slots.per_source.get(&v4(9)),
            None,
            "the balancer holds none"
        );
        assert_eq!(slots.per_source[&v4(2)], 3);
        // Counted by the balancer's address alone, the lone client, oldest, would go.
        assert!(slots.make_room(t0 + Duration::from_secs(1)));
        assert!(crowd[0].given_up());
        assert!(!lone.given_up());
        slots.remove(lone.key);
        assert_eq!(slots.per_source.get(&v4(1)), None);
    }

    #[test]
    fn ipv6_addresses_of_one_64_are_one_source_and_mapped_ipv4_is_ipv4() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::from(IpAddr::V6(a)), Source::from(IpAddr::V6(b)));
        assert_ne!(Source::from(IpAddr::V6(a)), Source::from(IpAddr::V6(c)));
        let mapped = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped();
        assert_eq!(Source::from(IpAddr::V6(mapped)), v4(1));
        assert_eq!(Source::from(None), Source::Unknown);
    }

    #[test]
    fn a_newcomer_closes_the_oldest_waiting_connection_of_the_crowded_address_or_is_refused() {
        let places = Places::new(2, Duration::from_millis(50));
        let crowd: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let first = places.enter(Some(crowd), || false).unwrap();
        let second = places.enter(Some(crowd), || false).unwrap();
        assert!(
            places.enter(Some(other), || false).is_none(),
            "all within their grace"
        );

        std::thread::sleep(Duration::from_millis(60));
        let newcomer = places
            .enter(Some(other), || false)
            .expect("a place past its grace");
        assert!(first.given_up.is_cancelled());
        assert!(!second.given_up.is_cancelled());
        assert_eq!(places.len(), 2);

        // A connection past what the places are for frees its own: room without giving
        // anyone up.
        drop(second);
        let third = places.enter(None, || false).expect("room");
        assert!(!newcomer.given_up.is_cancelled() && !third.given_up.is_cancelled());
        drop(first);
        assert_eq!(places.len(), 2, "the place given up was freed already");
        assert_eq!(places.closed_for_room(), (1, 1));
    }

    #[test]
    fn a_busy_connection_keeps_its_place_and_the_newcomer_is_refused() {
        let places = Places::new(1, Duration::ZERO);
        let busy = places.enter(None, || true).unwrap();
        assert!(places.enter(None, || false).is_none());
        assert!(!busy.given_up.is_cancelled());
    }
}
