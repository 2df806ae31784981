//! The memory that the queues of the node's offline sessions hold together, and the limit past
//! which an offline session queues nothing more.
//!
//! Each session's queue has its own limits, but persistent sessions kept for clients that are
//! away add up with nothing else bounding them: a fleet offline for the night, or a device that
//! connects with a new client id each time and asks for a session, multiplies them. A connected
//! client's queue is not counted: it is bounded by its own limits and by the connection limit,
//! a client that keeps up must not lose messages because others are away, and its messages pass
//! through without touching a count that every thread shares.

use std::mem::size_of;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
}

impl QueueMemory {
    /// `limit` in bytes; 0: no limit.
    pub fn new(limit: usize) -> Self {
        let limit = if limit == 0 { usize::MAX } else { limit };
        Self {
            inner: Arc::new(Inner {
                held: AtomicUsize::new(0),
                limit,
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
        if to > from {
            self.inner.held.fetch_add(to - from, Ordering::Relaxed);
        } else {
            self.inner.held.fetch_sub(from - to, Ordering::Relaxed);
        }
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
/// not included.
#[cfg(test)]
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
    fn a_queue_entry_is_three_words() {
        assert_eq!(size_of::<Delivery>(), 24);
    }
}
