//! MQTT connections that have not yet sent their CONNECT, on every listener (TCP, TLS once its
//! handshake is done, WebSocket once upgraded). Each holds a slot from its start until its
//! CONNECT is read. They are few next to the connections a node serves, and shared fairly
//! among addresses ([`Slots`]): connections of one address that never send anything cannot
//! use up the node's open files and keep every device out. When the slots are full, a newcomer
//! takes the slot of one that has waited past its grace, from the address holding the most;
//! if none has, the newcomer is closed at once and retries, as after a refused connection.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::tcp::slots::{Slots, Source};

/// How long a connection keeps its slot, whatever newcomers arrive: honest clients send their
/// CONNECT within a round trip or two of connecting.
const GRACE: Duration = Duration::from_secs(2);

/// The node's slots for connections awaiting their CONNECT: a cheap handle.
#[derive(Clone)]
pub struct Awaiting(Arc<Mutex<State>>);

struct State {
    slots: Slots<u64>,
    next_key: u64,
}

/// A connection's slot until its CONNECT is read; freed when dropped.
pub struct Slot {
    awaiting: Awaiting,
    key: u64,
    /// Cancelled when a newcomer takes this slot: the connection is to close.
    pub given_up: CancellationToken,
}

impl Awaiting {
    pub fn new(max: usize) -> Self {
        Self::with_grace(max, GRACE)
    }

    fn with_grace(max: usize, grace: Duration) -> Self {
        Self(Arc::new(Mutex::new(State {
            slots: Slots::new(max, grace),
            next_key: 0,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connections holding a slot now.
    pub fn len(&self) -> usize {
        self.state().slots.len()
    }

    /// A slot for a connection from `source`, freeing one if need be; `None` when every slot is
    /// held by a connection still within its grace.
    pub fn enter(&self, source: Option<IpAddr>) -> Option<Slot> {
        let mut state = self.state();
        let now = Instant::now();
        if !state.slots.can_take(now) {
            return None;
        }
        if state.slots.make_room(now) {
            tracing::debug!(
                "every slot for connections awaiting CONNECT taken: closed the oldest waiting one of the address holding the most"
            );
        }
        let key = state.next_key;
        state.next_key += 1;
        let given_up = CancellationToken::new();
        let cancel = given_up.clone();
        state.slots.add(
            key,
            Source::from(source),
            now,
            Box::new(move || cancel.cancel()),
        );
        Some(Slot {
            awaiting: self.clone(),
            key,
            given_up,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.awaiting.state().slots.remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newcomer_closes_the_oldest_waiting_connection_of_the_crowded_address_or_is_refused() {
        let awaiting = Awaiting::with_grace(2, Duration::from_millis(50));
        let crowd: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let first = awaiting.enter(Some(crowd)).unwrap();
        let second = awaiting.enter(Some(crowd)).unwrap();
        assert!(
            awaiting.enter(Some(other)).is_none(),
            "all within their grace"
        );

        std::thread::sleep(Duration::from_millis(60));
        let newcomer = awaiting.enter(Some(other)).expect("a slot past its grace");
        assert!(first.given_up.is_cancelled());
        assert!(!second.given_up.is_cancelled());

        // A connection that sent its CONNECT frees its slot: room without giving anyone up.
        drop(second);
        let third = awaiting.enter(None).expect("room");
        assert!(!newcomer.given_up.is_cancelled() && !third.given_up.is_cancelled());
        drop(first);
        assert!(
            awaiting.enter(None).is_none(),
            "the given-up slot was freed already"
        );
    }
}
