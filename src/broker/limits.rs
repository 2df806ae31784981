//! The limits that are not a queue's: concurrent connections across the broker, subscriptions
//! per session, the longest keep alive, and how long a closing connection waits for its
//! client. Pure counting, no I/O; the connection and SUBSCRIBE handling decide what to answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::topic::FilterSpec;

/// How long a closing connection waits to send its last packet, and then reads and discards
/// what the client still sends, so that the client gets the packet that says why (the same
/// as for a CONNECT the codec refuses).
pub(super) const GOODBYE_TIMEOUT: Duration = crate::mqtt::GOODBYE;

/// The number of live connections, shared by every listener.
#[derive(Debug, Default)]
pub(super) struct ConnectionCount {
    live: AtomicUsize,
}

/// One counted connection; dropping it frees its place.
#[derive(Debug)]
pub(super) struct ConnectionSlot(Arc<ConnectionCount>);

impl ConnectionCount {
    /// A place for one more connection, unless `max` are already live.
    pub fn try_acquire(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live < max).then_some(live + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(self.clone()))
    }

    /// A place past `max`, by at most [`takeover_margin`] places: for a CONNECT to a full
    /// node while it is checked, and kept only by one whose client id is connected here
    /// already (its new connection takes the old one over, which then closes).
    pub fn try_acquire_for_takeover(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        self.try_acquire(max.saturating_add(takeover_margin(max)))
    }

    /// Connections holding a place now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How far past a cap of `max` connections the take-overs of connected client ids may hold a
/// node while their old connections close (each within a few seconds): 1/32 of it, rounded
/// up. The file descriptors are budgeted for it (`app`).
pub fn takeover_margin(max: usize) -> usize {
    max.div_ceil(32)
}

/// Whether a session holding `existing` may subscribe to `spec` within `max` subscriptions:
/// replacing a subscription it already has [MQTT-3.8.4-3] does not add one.
pub(super) fn subscription_fits<V>(
    existing: &HashMap<FilterSpec, V>,
    spec: &FilterSpec,
    max: usize,
) -> bool {
    existing.contains_key(spec) || existing.len() < max
}

/// The session expiry (seconds) a client asking for `asked` gets under a maximum of `max`
/// (0: none). "Never" (0xFFFFFFFF, and every 3.1.1 persistent session) is more than any
/// maximum: without one, offline sessions would pile up for every client id ever seen.
pub(super) fn session_expiry(asked: u32, max: u32) -> u32 {
    if max == 0 { asked } else { asked.min(max) }
}

/// The keep alive (seconds) a client asking for `asked` is held to under a maximum of `max`
/// (0: none). Asking for none (0) or for more than the maximum gets the maximum, which an
/// MQTT 5 client is told in Server Keep Alive [MQTT-3.2.2-21] and a 3.1.1 client is not.
pub(super) fn keep_alive(asked: u16, max: u16) -> u16 {
    if max != 0 && (asked == 0 || asked > max) {
        max
    } else {
        asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_overs_pass_a_full_node_by_its_margin_and_no_more() {
        let count = Arc::new(ConnectionCount::default());
        let full: Vec<_> = (0..64)
            .map(|_| count.try_acquire(64).expect("a place below the cap"))
            .collect();
        assert!(
            count.try_acquire(64).is_none(),
            "the cap holds for newcomers"
        );
        assert_eq!(takeover_margin(64), 2);
        let over: Vec<_> = (0..2)
            .map(|_| {
                count
                    .try_acquire_for_takeover(64)
                    .expect("within the margin")
            })
            .collect();
        assert!(
            count.try_acquire_for_takeover(64).is_none(),
            "past the margin"
        );
        assert_eq!(count.live(), 66);
        drop(over);
        drop(full);
        assert_eq!(count.live(), 0, "every place is given back");
        assert_eq!(takeover_margin(1), 1);
        assert_eq!(takeover_margin(10_000), 313);
        assert_eq!(takeover_margin(0), 0);
    }

    #[test]
    fn session_expiry_is_held_to_the_maximum_never_included() {
        assert_eq!(session_expiry(0, 3600), 0, "ends with the connection");
        assert_eq!(session_expiry(60, 3600), 60);
        assert_eq!(session_expiry(7200, 3600), 3600);
        assert_eq!(session_expiry(u32::MAX, 3600), 3600, "never is held too");
        assert_eq!(session_expiry(u32::MAX, 0), u32::MAX, "no maximum");
    }

    #[test]
    fn keep_alive_is_held_to_the_maximum_when_asked_for_more_or_none() {
        assert_eq!(keep_alive(60, 1200), 60);
        assert_eq!(keep_alive(1200, 1200), 1200);
        assert_eq!(keep_alive(1201, 1200), 1200);
        assert_eq!(keep_alive(0, 1200), 1200);
        assert_eq!(keep_alive(0, 0), 0, "no maximum: no keep alive stays so");
        assert_eq!(keep_alive(u16::MAX, 0), u16::MAX);
    }

    #[test]
    fn connections_beyond_the_maximum_are_refused_until_one_leaves() {
        let count = Arc::new(ConnectionCount::default());
        let first = count.try_acquire(2).expect("first");
        let _second = count.try_acquire(2).expect("second");
        assert!(count.try_acquire(2).is_none());
        drop(first);
        assert_eq!(count.live(), 1);
        assert!(count.try_acquire(2).is_some());
    }

    #[test]
    fn a_new_filter_beyond_the_maximum_does_not_fit_but_a_repeated_one_does() {
        let a = FilterSpec::parse("a/#").unwrap();
        let b = FilterSpec::parse("b/+").unwrap();
        let held: HashMap<FilterSpec, ()> = [(a.clone(), ())].into();
        assert!(subscription_fits(&held, &a, 1));
        assert!(!subscription_fits(&held, &b, 1));
        assert!(subscription_fits(&held, &b, 2));
        assert!(!subscription_fits(&HashMap::<FilterSpec, ()>::new(), &a, 0));
    }
}
