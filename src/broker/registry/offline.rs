//! The node's offline sessions in the order they would end, so that their number can be
//! bounded (`--mqtt-max-offline-sessions`).
//!
//! Expiry alone bounds them by time, not by count: a device that connects with a new client
//! id each time and asks for a session (an MQTT 5 client with an empty id and a session
//! expiry, or a random id and clean session 0) leaves one per connection for an hour. Past
//! the bound the session nearest its end ends first: it is the one its client asked the
//! least of, and with equal expiries the one away the longest. A session that never expires
//! ranks after every one that does. The index is the registry's, changed only under its lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::topic::ClientKey;

/// Where an offline session stands in the order of ending: its expiry (epoch ms, `i64::MAX`
/// for never), then the order in which sessions were listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    expires_at_ms: i64,
    listed: u64,
}

/// A session's place in the index, kept on the session rather than in a map by client id
/// (a map entry per offline session cost about 100 bytes more). Read and changed only under
/// the registry's lock; atomics for the `Arc`'d session's interior, not for concurrency.
#[derive(Debug, Default)]
pub(in crate::broker) struct Listed {
    expires_at_ms: AtomicI64,
    /// 0: not listed.
    listed: AtomicU64,
}

impl Listed {
    fn take(&self) -> Option<Rank> {
        let listed = self.listed.swap(0, Ordering::Relaxed);
        (listed != 0).then(|| Rank {
            expires_at_ms: self.expires_at_ms.load(Ordering::Relaxed),
            listed,
        })
    }

    fn set(&self, rank: Rank) {
        self.expires_at_ms
            .store(rank.expires_at_ms, Ordering::Relaxed);
        self.listed.store(rank.listed, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub(super) struct Offline {
    order: BTreeMap<Rank, ClientKey>,
    /// The same ranks by the principal that created each session (`""`: anonymous), for the
    /// principals' own bounds.
    by_creator: HashMap<String, BTreeSet<Rank>>,
    next: u64,
}

impl Offline {
    /// `client`'s session, created by `creator` and placed at `listed`, is offline until
    /// `expires_at_ms`, in place of any earlier listing.
    pub fn list(
        &mut self,
        client: &ClientKey,
        creator: Option<&str>,
        expires_at_ms: i64,
        listed: &Listed,
    ) {
        self.unlist(creator, listed);
        self.next += 1;
        let rank = Rank {
            expires_at_ms,
            listed: self.next,
        };
        let creator = creator.unwrap_or_default();
        match self.by_creator.get_mut(creator) {
            Some(theirs) => theirs.insert(rank),
            None => self
                .by_creator
                .entry(creator.to_owned())
                .or_default()
                .insert(rank),
        };
        self.order.insert(rank, client.clone());
        listed.set(rank);
    }

    /// The session placed at `listed` is no longer offline here: taken up, ended or gone
    /// elsewhere.
    pub fn unlist(&mut self, creator: Option<&str>, listed: &Listed) {
        let Some(rank) = listed.take() else {
            return;
        };
        self.order.remove(&rank);
        let creator = creator.unwrap_or_default();
        if let Some(theirs) = self.by_creator.get_mut(creator) {
            theirs.remove(&rank);
            if theirs.is_empty() {
                self.by_creator.remove(creator);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// How many of the listed sessions `creator` made.
    pub fn len_of(&self, creator: Option<&str>) -> usize {
        self.by_creator
            .get(creator.unwrap_or_default())
            .map_or(0, BTreeSet::len)
    }

    /// The listed client ids, those nearest their end first.
    pub fn nearest_end(&self) -> impl Iterator<Item = &ClientKey> {
        self.order.values()
    }

    /// [`Self::nearest_end`], of the sessions `creator` made.
    pub fn nearest_end_of(&self, creator: Option<&str>) -> impl Iterator<Item = &ClientKey> {
        self.by_creator
            .get(creator.unwrap_or_default())
            .into_iter()
            .flatten()
            .filter_map(|rank| self.order.get(rank))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(offline: &Offline) -> Vec<&str> {
        offline.nearest_end().map(|k| &**k).collect()
    }

    /// Each client's place, as its session would keep it.
    #[derive(Default)]
    struct Places(HashMap<&'static str, Listed>);

    impl Places {
        fn list(&mut self, o: &mut Offline, client: &'static str, creator: Option<&str>, at: i64) {
            let listed = self.0.entry(client).or_default();
            o.list(&client.into(), creator, at, listed);
        }

        fn unlist(&mut self, o: &mut Offline, client: &'static str, creator: Option<&str>) {
            o.unlist(creator, self.0.entry(client).or_default());
        }
    }

    #[test]
    fn sessions_rank_by_expiry_then_by_when_they_were_listed_never_last() {
        let (mut offline, mut places) = (Offline::default(), Places::default());
        for (client, at) in [
            ("never", i64::MAX),
            ("late", 30),
            ("early", 10),
            ("tie", 30),
        ] {
            places.list(&mut offline, client, None, at);
        }
        assert_eq!(order(&offline), ["early", "late", "tie", "never"]);
        assert_eq!(offline.len(), 4);
    }

    #[test]
    fn a_session_listed_again_keeps_one_place_and_unlisting_leaves_nothing() {
        let (mut offline, mut places) = (Offline::default(), Places::default());
        places.list(&mut offline, "a", Some("fleet"), 10);
        places.list(&mut offline, "b", None, 20);
        places.list(&mut offline, "a", Some("fleet"), 30);
        assert_eq!(order(&offline), ["b", "a"]);
        assert_eq!(
            (offline.len_of(Some("fleet")), offline.len_of(None)),
            (1, 1)
        );
        places.unlist(&mut offline, "a", Some("fleet"));
        places.unlist(&mut offline, "a", Some("fleet"));
        places.unlist(&mut offline, "unknown", None);
        assert_eq!(order(&offline), ["b"]);
        assert_eq!(offline.len_of(Some("fleet")), 0);
        places.unlist(&mut offline, "b", None);
        assert_eq!(offline.len(), 0);
        assert!(offline.order.is_empty());
        assert!(offline.by_creator.is_empty(), "no principal left behind");
    }

    #[test]
    fn each_principals_sessions_rank_among_their_own() {
        let (mut offline, mut places) = (Offline::default(), Places::default());
        for (client, creator, at) in [
            ("f1", Some("fleet"), 40),
            ("a1", None, 10),
            ("f2", Some("fleet"), 20),
            ("o1", Some("other"), 30),
        ] {
            places.list(&mut offline, client, creator, at);
        }
        let of = |creator| {
            offline
                .nearest_end_of(creator)
                .map(|k| &**k)
                .collect::<Vec<_>>()
        };
        assert_eq!(of(Some("fleet")), ["f2", "f1"]);
        assert_eq!(of(None), ["a1"]);
        assert_eq!(of(Some("nobody")), Vec::<&str>::new());
        assert_eq!(order(&offline), ["a1", "f2", "o1", "f1"]);
        assert_eq!(offline.len_of(Some("fleet")), 2);
    }
}
