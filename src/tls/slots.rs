//! Who holds a TLS listener's handshake slots. They are few (a handshake costs memory and a
//! task until it ends or times out), so a single client holding them all with connections
//! that never say hello would keep every other client waiting in the kernel's backlog. When
//! they are full, a newcomer takes the slot of a handshake that has had its grace, from the
//! address (IPv6: the /64) that holds the most, oldest first. One address cannot then shut
//! the others out; a slow honest client is only given up for a newcomer while its address
//! holds as many slots as any other; and handshakes younger than their grace are never given
//! up, so a burst of honest clients (a fleet reconnecting through one load balancer) waits in
//! the backlog as before rather than churning through each other's handshakes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::task::{AbortHandle, Id};

/// Where a connection comes from, for sharing the slots: an IPv4 address, or the /64 of an
/// IPv6 one (a single host is usually given a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Source {
    V4(u32),
    V6Prefix(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

struct Holder {
    source: Source,
    since: Instant,
    abort: AbortHandle,
}

pub(super) struct Slots {
    max: usize,
    /// How long a handshake keeps its slot whatever happens.
    grace: Duration,
    held: HashMap<Id, Holder>,
    per_source: HashMap<Source, usize>,
}

impl Slots {
    pub(super) fn new(max: usize, grace: Duration) -> Self {
        Self {
            max,
            grace,
            held: HashMap::new(),
            per_source: HashMap::new(),
        }
    }

    pub(super) fn has_room(&self) -> bool {
        self.held.len() < self.max
    }

    /// Whether a newcomer can have a slot now: there is room, or one can be given up.
    pub(super) fn can_take(&self, now: Instant) -> bool {
        self.has_room() || self.victim(now).is_some()
    }

    /// When a slot can next be given up, if none can now and there is no room.
    pub(super) fn next_chance(&self) -> Option<Instant> {
        self.held.values().map(|h| h.since + self.grace).min()
    }

    /// Records the handshake `abort` controls, from `source`, started `since`.
    pub(super) fn add(&mut self, source: Source, since: Instant, abort: AbortHandle) {
        *self.per_source.entry(source).or_default() += 1;
        self.held.insert(
            abort.id(),
            Holder {
                source,
                since,
                abort,
            },
        );
    }

    /// The handshake `id` ended (or was given up): its slot is free.
    pub(super) fn remove(&mut self, id: Id) {
        let Some(holder) = self.held.remove(&id) else {
            return;
        };
        if let Some(n) = self.per_source.get_mut(&holder.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&holder.source);
            }
        }
    }

    /// Frees a slot for a newcomer if there is none: aborts the handshake [`Self::victim`]
    /// names. Whether one was given up.
    pub(super) fn make_room(&mut self, now: Instant) -> bool {
        if self.has_room() {
            return false;
        }
        let Some(id) = self.victim(now) else {
            return false;
        };
        if let Some(holder) = self.held.get(&id) {
            holder.abort.abort();
        }
        self.remove(id);
        true
    }

    /// Among the handshakes past their grace, the oldest of the source holding the most slots.
    fn victim(&self, now: Instant) -> Option<Id> {
        self.held
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.since) >= self.grace)
            .max_by_key(|(_, h)| {
                let held = self.per_source.get(&h.source).copied().unwrap_or(0);
                // The most slots first; among them the oldest (the earliest start).
                (held, std::cmp::Reverse(h.since))
            })
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(last: u8) -> Source {
        Source::from(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    /// A handshake that never ends, and its handle.
    fn pending(tasks: &mut tokio::task::JoinSet<()>) -> AbortHandle {
        tasks.spawn(std::future::pending())
    }

    #[tokio::test]
    async fn a_full_set_gives_up_the_oldest_handshake_of_the_address_holding_the_most() {
        let mut tasks = tokio::task::JoinSet::new();
        let mut slots = Slots::new(4, Duration::from_secs(2));
        let t0 = Instant::now();
        // One address with the oldest handshake, another with three younger ones.
        let lone = pending(&mut tasks);
        slots.add(v4(1), t0, lone.clone());
        let crowd: Vec<_> = (0..3).map(|_| pending(&mut tasks)).collect();
        for (i, abort) in crowd.iter().enumerate() {
            slots.add(
                v4(2),
                t0 + Duration::from_millis(10 * (i as u64 + 1)),
                abort.clone(),
            );
        }
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
        tokio::task::yield_now().await;
        assert!(crowd[0].is_finished(), "the crowd's oldest is given up");
        assert!(!lone.is_finished() && !crowd[1].is_finished() && !crowd[2].is_finished());

        // The crowd still holds the most (two, against one and one).
        let third = pending(&mut tasks);
        slots.add(v4(3), later, third.clone());
        let much_later = later + Duration::from_secs(3);
        assert!(slots.make_room(much_later));
        tokio::task::yield_now().await;
        assert!(crowd[1].is_finished());
        assert!(!lone.is_finished() && !crowd[2].is_finished() && !third.is_finished());

        // One each now: the oldest of all goes, the lone address's own.
        slots.add(v4(4), much_later, pending(&mut tasks));
        assert!(slots.make_room(much_later));
        tokio::task::yield_now().await;
        assert!(lone.is_finished());
        assert!(!crowd[2].is_finished() && !third.is_finished());
    }

    #[tokio::test]
    async fn a_finished_handshake_frees_its_slot_and_its_address_count() {
        let mut tasks = tokio::task::JoinSet::new();
        let mut slots = Slots::new(1, Duration::ZERO);
        let abort = pending(&mut tasks);
        slots.add(v4(1), Instant::now(), abort.clone());
        assert!(!slots.has_room());
        slots.remove(abort.id());
        slots.remove(abort.id());
        assert!(slots.has_room());
        assert!(slots.per_source.is_empty());
        assert_eq!(slots.next_chance(), None);
        assert!(!slots.make_room(Instant::now()), "room already");
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
    }
}
