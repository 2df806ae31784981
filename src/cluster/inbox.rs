//! Publishes arriving from other nodes: decoded, each handled once however many of this
//! node's subscriptions it came through, and handed to the broker in arrival order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::adoption::Adopted;
use super::claims::TakeOver;
use super::frame::{self, Routed};
use super::seen::Seen;
use crate::topic::{ClientKey, FilterSpec, TopicLimits};

/// What a node does with what the other nodes send it (the broker implements it).
pub trait Events: Send + Sync {
    /// A publish another node handled (and stored, if retained).
    fn publish(&self, routed: Routed);
    /// A publish for `member`'s shared subscription `spec`: NATS chose this member of the
    /// group, service-wide.
    fn publish_to_member(&self, routed: Routed, spec: &FilterSpec, member: &ClientKey);
    /// Another node claimed a client id: its connection here, if older, must close.
    fn taken_over(&self, notice: TakeOver);
    /// Another node resumes `client_id`'s session: this node ends its copy, handing what it
    /// queued in memory to the spool ([`super::Cluster::spool`]) before it returns, and
    /// returns the QoS 2 exchanges it left open, if any, in the broker's encoding.
    fn hand_over(&self, client_id: &str) -> Option<Bytes>;
    /// The plain (not shared) filters of `client_id`'s session held here; none if none is.
    fn filters_of(&self, client_id: &str) -> Vec<FilterSpec>;
    /// Sessions of nodes that are gone, now this node's.
    fn adopt(&self, sessions: Vec<Adopted>);
    /// The others took this node for dead: the sessions they adopted and the client ids
    /// whose claims they removed are no longer this node's.
    fn taken_for_dead(&self);
    /// An operator disconnects `client_id` (DeleteConnection on another node): whether it was
    /// connected here, once it is being disconnected.
    fn disconnect(
        &self,
        client_id: &str,
        clean_session: bool,
        prevent_will: bool,
    ) -> BoxFuture<'static, bool>;
}

pub struct Inbox {
    limits: TopicLimits,
    /// Held while a message is handed over, so that of two copies arriving at once on two
    /// subscriptions, the second waits and then sees the first as handled.
    seen: Mutex<Seen>,
    pub events: OnceLock<Box<dyn Events>>,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    /// Messages on this node's subjects that are not retaind publishes.
    pub malformed: AtomicU64,
    /// Publishes from nodes of a release that sends another frame version.
    pub other_version: AtomicU64,
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
            other_version: AtomicU64::new(0),
        }
    }

    fn decode(&self, body: &Bytes) -> Option<Routed> {
        frame::decode(body, self.limits)
            .map_err(|e| self.malformed(&e))
            .ok()
    }

    fn malformed(&self, e: &frame::FrameError) {
        if let frame::FrameError::Version(_) = e {
            if self.other_version.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    error = %e,
                    "dropped a publish from a node of a release whose frames this node does not read (logged once)"
                );
            }
        } else if self.malformed.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(error = %e, "dropped a message from NATS that is not a retaind publish (logged once)");
        }
    }

    /// A copy from a queue subscription: one per group service-wide, so no duplicates to
    /// drop, and it goes to that member alone.
    fn handle_one_for_member(&self, body: &Bytes, spec: &FilterSpec, member: &ClientKey) {
        let Some(routed) = self.decode(body) else {
            return;
        };
        if routed.shared_done {
            return;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Some(events) = self.events.get() {
            events.publish_to_member(routed, spec, member);
        }
    }

    /// A NATS message from a plain subscription: each publish it carries (one, or a batch).
    pub fn handle(&self, body: &Bytes) {
        // One lock for the whole batch: its frames are handed over in order meanwhile.
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for frame in self.frames(body) {
            self.handle_one(&frame, &mut seen);
        }
    }

    /// A NATS message from a queue subscription: each publish it carries goes to `member`.
    pub fn handle_for_member(&self, body: &Bytes, spec: &FilterSpec, member: &ClientKey) {
        for frame in self.frames(body) {
            self.handle_one_for_member(&frame, spec, member);
        }
    }

    fn frames<'a>(&'a self, body: &'a Bytes) -> impl Iterator<Item = Bytes> + 'a {
        frame::frames(body).filter_map(|f| f.map_err(|e| self.malformed(&e)).ok())
    }

    fn handle_one(&self, body: &Bytes, seen: &mut Seen) {
        let Some(routed) = self.decode(body) else {
            return;
        };
        // Every node stamps what it sends; an unstamped frame is from no node.
        let Some(stamp) = routed.stamp else {
            self.malformed(&frame::FrameError::Head);
            return;
        };
        if !seen.first(stamp.node, stamp.seq) {
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
            .forget(frame::Stamp::node_tag(node));
    }
}
