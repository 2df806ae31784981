//! The memory that the queues of the node's offline sessions hold together, and the limit past
//! which an offline session queues nothing more.
//!
//! Each session's queue has its own limits, but persistent sessions kept for clients that are
//! away add up with nothing else bounding them: a fleet offline for the night, or a device that
//! connects with a new client id each time and asks for a session, multiplies them. A connected
//! client's queue is not counted: it is bounded by its own limits and by the connection limit,
//! a client that keeps up must not lose messages because others are away, and its messages pass
//! through without touching a count that every thread shares.
//!
//! A principal may have a share of its own (`max_queue_memory_mib`): what the queues of its
//! offline sessions hold, each copy counting its whole message. Counting a message shared with
//! other principals' queues once, for whichever queue took it first, would bill one principal
//! for memory that another's sessions keep alive; counting it whole per copy keeps a
//! principal's count a function of its own sessions' queues alone, and an upper bound of what
//! they hold.

use std::collections::HashMap;
use std::mem::size_of;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::message::{Delivery, Message};

/// A cheap handle on the node's count; every session holds one.
#[derive(Debug, Clone)]
pub struct QueueMemory {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    held: AtomicUsize,
    /// Past this, an offline session queues nothing more; `usize::MAX`: no limit.
    limit: usize,
    /// The principals' shares, by principal name, while an offline session holds one.
    shares: Mutex<Shares>,
}

#[derive(Debug, Default)]
struct Shares {
    by_principal: HashMap<String, Weak<Account>>,
    /// Entries the last sift kept: the next comes when the map has doubled since, so each
    /// costs a look at every entry amortized over as many insertions.
    kept: usize,
}

/// One principal's share: what its offline sessions' queues hold, each copy counting its
/// whole message. Held by each of its offline sessions that counts in it.
#[derive(Debug, Clone)]
pub struct Share(Arc<Account>);

#[derive(Debug)]
struct Account {
    held: AtomicUsize,
    /// The principal's limit as it was when one of its sessions last went offline.
    limit: AtomicUsize,
}

/// Entries the map of shares holds before it is first sifted of shares no session holds.
const SHARES_KEPT: usize = 64;

impl QueueMemory {
    /// `limit` in bytes; 0: no limit.
    pub fn new(limit: usize) -> Self {
        let limit = if limit == 0 { usize::MAX } else { limit };
        Self {
            inner: Arc::new(Inner {
                held: AtomicUsize::new(0),
                limit,
                shares: Mutex::new(Shares::default()),
            }),
        }
    }

    #[cfg(test)]
    pub fn unlimited() -> Self {
        Self::new(0)
    }

    /// What the offline sessions' queues hold now, as [`QueueMemory::add`] counts it.
    pub fn held(&self) -> usize {
        self.inner.held.load(Ordering::Relaxed)
    }

    /// Whether an offline session may queue `delivery`, its queue growing by `growth` bytes
    /// to take it: false once the offline sessions' queues would hold more than the limit.
    /// Routers on other threads may add theirs at the same moment, so the limit can be passed
    /// by a message or so per router, never more.
    pub fn admits(&self, delivery: &Delivery, growth: usize) -> bool {
        let message = match delivery.message.queued.0.load(Ordering::Relaxed) {
            0 => message_heap(&delivery.message),
            _ => 0,
        };
        self.held()
            .saturating_add(per_copy(delivery) + message + growth)
            <= self.inner.limit
    }

    /// A queue took `delivery`. What the copy holds of its own counts for each copy; the
    /// message it shares with the other sessions it waits for counts once, while any queue
    /// holds it. The queue's own allocation is counted by [`QueueMemory::resized`].
    pub fn add(&self, delivery: &Delivery) {
        let first = delivery.message.queued.0.fetch_add(1, Ordering::Relaxed) == 0;
        let message = if first {
            message_heap(&delivery.message)
        } else {
            0
        };
        self.inner
            .held
            .fetch_add(per_copy(delivery) + message, Ordering::Relaxed);
    }

    /// A queue gave `delivery` up: sent, dropped, moved to Postgres, or its session ended.
    pub fn remove(&self, delivery: &Delivery) {
        let last = delivery.message.queued.0.fetch_sub(1, Ordering::Relaxed) == 1;
        let message = if last {
            message_heap(&delivery.message)
        } else {
            0
        };
        self.inner
            .held
            .fetch_sub(per_copy(delivery) + message, Ordering::Relaxed);
    }

    /// A queue's allocation went from `from` to `to` bytes.
    pub fn resized(&self, from: usize, to: usize) {
        resize(&self.inner.held, from, to);
    }
}

impl QueueMemory {
    /// The share of `principal`, whose limit is `limit` bytes, for one of its sessions going
    /// offline now: the one its other offline sessions count in, if any, its limit set to
    /// `limit` (the one in force now, after a reload too).
    pub fn share(&self, principal: &str, limit: usize) -> Share {
        let mut shares = self
            .inner
            .shares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(account) = shares.by_principal.get(principal).and_then(Weak::upgrade) {
            account.limit.store(limit, Ordering::Relaxed);
            return Share(account);
        }
        if shares.by_principal.len() >= SHARES_KEPT.max(2 * shares.kept) {
            shares
                .by_principal
                .retain(|_, account| account.strong_count() > 0);
            shares.kept = shares.by_principal.len();
        }
        let account = Arc::new(Account {
            held: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
        });
        shares
            .by_principal
            .insert(principal.to_owned(), Arc::downgrade(&account));
        Share(account)
    }
}

impl QueueMemory {
    /// Each principal's share that some session counts in, by principal name, and what it
    /// holds.
    pub fn shares_held(&self) -> Vec<(String, usize)> {
        let shares = self
            .inner
            .shares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shares
            .by_principal
            .iter()
            .filter_map(|(name, account)| {
                let account = account.upgrade()?;
                Some((name.clone(), account.held.load(Ordering::Relaxed)))
            })
            .collect()
    }
}

impl Share {
    /// What the principal's offline sessions' queues hold now, as [`Share::add`] counts it.
    pub fn held(&self) -> usize {
        self.0.held.load(Ordering::Relaxed)
    }

    /// Whether the principal's offline session may queue `delivery`, its queue growing by
    /// `growth` bytes to take it. As for the node's, the limit can be passed by a message or
    /// so per router thread.
    pub fn admits(&self, delivery: &Delivery, growth: usize) -> bool {
        self.held().saturating_add(alone(delivery) + growth) <= self.0.limit.load(Ordering::Relaxed)
    }

    /// One of the principal's offline queues took `delivery`.
    pub fn add(&self, delivery: &Delivery) {
        self.0.held.fetch_add(alone(delivery), Ordering::Relaxed);
    }

    /// One of the principal's offline queues gave `delivery` up.
    pub fn remove(&self, delivery: &Delivery) {
        self.0.held.fetch_sub(alone(delivery), Ordering::Relaxed);
    }

    /// One of the principal's offline queues' allocation went from `from` to `to` bytes.
    pub fn resized(&self, from: usize, to: usize) {
        resize(&self.0.held, from, to);
    }
}

fn resize(held: &AtomicUsize, from: usize, to: usize) {
    if to > from {
        held.fetch_add(to - from, Ordering::Relaxed);
    } else {
        held.fetch_sub(from - to, Ordering::Relaxed);
    }
}

/// What a queue of `capacity` entries allocates.
pub fn queue_bytes(capacity: usize) -> usize {
    capacity * size_of::<Delivery>()
}

/// What a queue of `capacity` entries, all taken, grows by to take one more: `VecDeque`
/// doubles, from four entries at first.
pub fn growth(len: usize, capacity: usize) -> usize {
    if len < capacity {
        0
    } else {
        queue_bytes(capacity.max(4))
    }
}

/// What `delivery` counts for when its message is queued nowhere else, its queue's entry
/// not included: in the node's count, the first copy; in a principal's share, every copy.
pub fn alone(delivery: &Delivery) -> usize {
    per_copy(delivery) + message_heap(&delivery.message)
}

/// What one queued copy holds of its own besides its entry in the queue: its subscription
/// identifiers, if it has any (a `ThinVec` keeps its length and capacity with them).
fn per_copy(delivery: &Delivery) -> usize {
    match delivery.subscription_ids.capacity() {
        0 => 0,
        n => 2 * size_of::<usize>() + n * size_of::<NonZeroU32>(),
    }
}

/// What a message holds, its payload, topic and properties, shared by all its copies.
fn message_heap(m: &Message) -> usize {
    let p = &m.properties;
    size_of::<Message>()
        + m.topic.as_str().len()
        + m.payload.len()
        + p.user_properties
            .iter()
            .map(|u| u.key.len() + u.value.len())
            .sum::<usize>()
        + p.content_type.as_ref().map_or(0, String::len)
        + p.response_topic.as_ref().map_or(0, |t| t.as_str().len())
        + p.correlation_data.as_ref().map_or(0, |d| d.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every queued copy of a message is an entry: with a fleet's sessions offline, entries
    /// are most of what the queues hold (decision 026).
    #[test]
    fn shares_no_session_holds_are_sifted_out_as_the_map_doubles() {
        let memory = QueueMemory::unlimited();
        let held: Vec<Share> = (0..40).map(|i| memory.share(&format!("p{i}"), 1)).collect();
        for i in 0..1000 {
            drop(memory.share(&format!("gone{i}"), 1));
        }
        let shares = memory.inner.shares.lock().unwrap();
        assert!(
            shares.by_principal.len() < 2 * SHARES_KEPT.max(2 * held.len()),
            "{}",
            shares.by_principal.len()
        );
        for (i, share) in held.iter().enumerate() {
            let kept = shares.by_principal[&format!("p{i}")].upgrade().unwrap();
            assert!(Arc::ptr_eq(&kept, &share.0));
        }
    }

    #[test]
    fn a_queue_entry_is_three_words() {
        assert_eq!(size_of::<Delivery>(), 24);
    }
}
