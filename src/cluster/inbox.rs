//! Publishes arriving from other nodes: decoded, each handled once however many of this
//! node's subscriptions it came through, and handed to the broker in arrival order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

use super::claims::TakeOver;
use super::frame::{self, Routed};
use super::seen::Seen;
use crate::topic::TopicLimits;

/// What a node does with what the other nodes send it (the broker implements it).
pub trait Events: Send + Sync {
    /// A publish another node handled (and stored, if retained).
    fn publish(&self, routed: Routed);
    /// Another node claimed a client id: its connection here, if older, must close.
    fn taken_over(&self, notice: TakeOver);
}

pub struct Inbox {
    limits: TopicLimits,
    /// Held while a message is handed over, so that of two copies arriving at once on two
    /// subscriptions, the second waits and then sees the first as handled.
    seen: Mutex<Seen>,
    pub events: OnceLock<Box<dyn Events>>,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub malformed: AtomicU64,
}

impl Inbox {
    pub fn new(limits: TopicLimits) -> Self {
        Self {
            limits,
            seen: Mutex::new(Seen::default()),
            events: OnceLock::new(),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }
    }

    pub fn handle(&self, body: &Bytes) {
        let (routed, source) = match frame::decode(body, self.limits) {
            Ok(decoded) => decoded,
            Err(e) => {
                if self.malformed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(error = %e, "dropped a message from NATS that is not a retaind publish (logged once)");
                }
                return;
            }
        };
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !seen.first(&source.node, source.seq) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Some(events) = self.events.get() {
            events.publish(routed);
        }
    }

    /// Forgets what `node` sent (it left the service).
    pub fn forget(&self, node: &str) {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .forget(node);
    }
}
