//! A session's state behind a lock that routers never wait for.
//!
//! A router queues a message for a session on the publisher's way to its PUBACK. The
//! session's connection takes the same lock for every message it sends, and while it delivers
//! a large retained set it runs on the background threads (decision 020), which the kernel
//! preempts whenever a normal thread wants their core. A router that waited for a lock held
//! by a preempted background thread would wait for an idle core: the publisher would be as
//! slow as the bulk work it should never notice.
//!
//! So a router that finds the lock taken leaves its message here, in order, and goes on.
//! Whoever holds the lock queues what was left before doing anything else, and looks again
//! after letting go, so a message left at that moment is not stranded either: the router
//! tried the lock after leaving it, and the holder looks after releasing, so at least one of
//! them sees the other (both fence). A message is placed by the same rules, at most once.
//!
//! Per publisher, order holds: a router that gets the lock first queues whatever waits here,
//! its own earlier messages included, then its new one.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{Ordering, fence};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};

use crossbeam_queue::SegQueue;

use super::message::Delivery;
use super::session::SessionState;

/// How the session places a message in its state: the queue, Postgres, a drop, or a
/// disconnect for a client that is not keeping up. `online` is as the router found it.
pub(super) trait Place {
    fn place(&self, state: &mut SessionState, delivery: Delivery, online: bool);
}

pub(super) struct Locked {
    state: Mutex<SessionState>,
    /// Made when a router first finds the lock taken. A `SegQueue` pads its ends to cache
    /// lines (256 bytes, and the alignment of whatever holds it): inline, it would make every
    /// session twice as large, connected or not, for what most never use.
    deferred: OnceLock<Box<SegQueue<(Delivery, bool)>>>,
    /// Messages left here at most; past it a router waits for the lock. The session's queue
    /// limit: a holder that long away finds a full queue anyway.
    bound: usize,
}

impl Locked {
    pub fn new(state: SessionState, bound: usize) -> Self {
        Self {
            state: Mutex::new(state),
            deferred: OnceLock::new(),
            bound,
        }
    }

    /// The state, with every message left here placed.
    pub fn lock<'a, P: Place>(&'a self, place: &'a P) -> StateGuard<'a, P> {
        // State changes are whole method calls on plain data; a panic cannot leave it torn.
        let guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        StateGuard::new(self, place, guard)
    }

    fn try_lock<'a, P: Place>(&'a self, place: &'a P) -> Option<StateGuard<'a, P>> {
        let guard = match self.state.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(StateGuard::new(self, place, guard))
    }

    /// Places a routed message now, or leaves it for the lock's holder.
    pub fn offer<P: Place>(&self, place: &P, delivery: Delivery, online: bool) {
        if let Some(mut state) = self.try_lock(place) {
            place.place(&mut state, delivery, online);
            return;
        }
        let deferred = self.deferred.get_or_init(Box::default);
        if deferred.len() >= self.bound {
            let mut state = self.lock(place);
            place.place(&mut state, delivery, online);
            return;
        }
        deferred.push((delivery, online));
        fence(Ordering::SeqCst);
        // Released meanwhile: place it ourselves. Otherwise the holder will see it.
        drop(self.try_lock(place));
    }

    /// Messages left for the holder, not yet placed.
    #[cfg(test)]
    pub fn left(&self) -> usize {
        self.deferred.get().map_or(0, |d| d.len())
    }
}

/// The locked state; dropping it lets go and places what was left meanwhile.
pub(super) struct StateGuard<'a, P: Place> {
    locked: &'a Locked,
    place: &'a P,
    guard: Option<MutexGuard<'a, SessionState>>,
}

impl<'a, P: Place> StateGuard<'a, P> {
    fn new(locked: &'a Locked, place: &'a P, mut guard: MutexGuard<'a, SessionState>) -> Self {
        place_left(locked, place, &mut guard);
        Self {
            locked,
            place,
            guard: Some(guard),
        }
    }
}

fn place_left<P: Place>(locked: &Locked, place: &P, state: &mut SessionState) {
    let Some(deferred) = locked.deferred.get() else {
        return;
    };
    while let Some((delivery, online)) = deferred.pop() {
        place.place(state, delivery, online);
    }
}

impl<P: Place> Deref for StateGuard<'_, P> {
    type Target = SessionState;

    fn deref(&self) -> &SessionState {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl<P: Place> DerefMut for StateGuard<'_, P> {
    fn deref_mut(&mut self) -> &mut SessionState {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl<P: Place> Drop for StateGuard<'_, P> {
    fn drop(&mut self) {
        let mut guard = self.guard.take();
        loop {
            drop(guard.take());
            fence(Ordering::SeqCst);
            if self.locked.deferred.get().is_none_or(|d| d.is_empty()) {
                return;
            }
            // Taken again: its holder places them.
            let Ok(mut again) = self.locked.state.try_lock() else {
                return;
            };
            place_left(self.locked, self.place, &mut again);
            guard = Some(again);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Message;
    use crate::broker::queue_memory::QueueMemory;
    use crate::broker::session::{Enqueued, SessionLimits};
    use crate::store::Qos;

    struct Queue;

    impl Place for Queue {
        fn place(&self, state: &mut SessionState, delivery: Delivery, online: bool) {
            assert!(matches!(state.enqueue(delivery, online), Enqueued::Queued));
        }
    }

    fn delivery(n: usize) -> Delivery {
        Delivery {
            message: Message::plain("t", n.to_string(), Qos::AtMostOnce),
            // No packet ids to run out of in the race below.
            qos: Qos::AtMostOnce,
            retain: false,
            subscription_ids: Default::default(),
        }
    }

    fn locked(bound: usize) -> Locked {
        let limits = SessionLimits {
            max_queued: 1_000_000,
            max_queued_bytes: usize::MAX,
        };
        Locked::new(SessionState::new(limits, QueueMemory::unlimited()), bound)
    }

    fn drain(state: &mut SessionState) -> Vec<String> {
        std::iter::from_fn(|| state.next_outgoing(usize::MAX, |_| true))
            .map(|o| String::from_utf8(o.delivery.message.payload.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_message_offered_while_the_lock_is_held_waits_for_its_holder_in_order() {
        let locked = locked(100);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let held = locked.lock(&Queue);
            s.spawn(|| {
                // Never waits: the lock stays held until all three are left.
                for n in 0..3 {
                    locked.offer(&Queue, delivery(n), true);
                }
                tx.send(()).unwrap();
            });
            rx.recv_timeout(std::time::Duration::from_secs(5))
                .expect("the router went on without the lock");
            assert_eq!(locked.left(), 3);
            drop(held);
        });
        assert_eq!(locked.left(), 0, "the holder placed them when it let go");
        let mut state = locked.lock(&Queue);
        assert_eq!(drain(&mut state), ["0", "1", "2"]);
    }

    #[test]
    fn the_next_holder_places_what_was_left_before_its_own_work() {
        let locked = locked(100);
        locked
            .deferred
            .get_or_init(Box::default)
            .push((delivery(0), true));
        let mut state = locked.lock(&Queue);
        Queue.place(&mut state, delivery(1), true);
        assert_eq!(drain(&mut state), ["0", "1"]);
    }

    #[test]
    fn past_the_bound_a_router_waits_for_the_lock() {
        let locked = locked(2);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let held = locked.lock(&Queue);
            s.spawn(|| {
                for n in 0..3 {
                    locked.offer(&Queue, delivery(n), true);
                    tx.send(n).unwrap();
                }
            });
            let timeout = std::time::Duration::from_secs(5);
            assert_eq!(rx.recv_timeout(timeout), Ok(0));
            assert_eq!(rx.recv_timeout(timeout), Ok(1));
            let third = rx.recv_timeout(std::time::Duration::from_millis(100));
            assert!(third.is_err(), "the third waits for the lock");
            drop(held);
            assert_eq!(rx.recv_timeout(timeout), Ok(2));
        });
        let mut state = locked.lock(&Queue);
        assert_eq!(drain(&mut state), ["0", "1", "2"]);
    }

    #[test]
    fn routers_racing_a_holder_lose_nothing_and_keep_their_own_order() {
        let locked = locked(1_000_000);
        let routers = 4;
        let each = 20_000;
        std::thread::scope(|s| {
            for r in 0..routers {
                let locked = &locked;
                s.spawn(move || {
                    for n in 0..each {
                        locked.offer(&Queue, delivery(r * each + n), true);
                    }
                });
            }
            // A connection taking the lock over and over meanwhile.
            s.spawn(|| {
                for _ in 0..20_000 {
                    let state = locked.lock(&Queue);
                    std::hint::black_box(state.queued());
                }
            });
        });
        assert_eq!(
            locked.left(),
            0,
            "nothing stranded once every holder let go"
        );
        let mut state = locked.lock(&Queue);
        let got: Vec<usize> = drain(&mut state)
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(got.len(), routers * each);
        for r in 0..routers {
            let own: Vec<usize> = got.iter().copied().filter(|n| n / each == r).collect();
            assert!(own.is_sorted(), "router {r}'s messages in its order");
            assert_eq!(own.len(), each);
        }
    }
}
