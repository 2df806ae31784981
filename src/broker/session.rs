//! One client's session state, free of I/O: its subscriptions, the messages waiting for it,
//! the QoS 1/2 messages it has not acknowledged yet, and the QoS 2 ids it is sending us.
//!
//! The connection task drives it; when the client is offline it keeps queueing for a
//! persistent session. Every buffer here is bounded ([`SessionLimits`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;

use super::inbound_qos::AwaitingRelease;
use super::message::Delivery;
use super::queue_memory::{self, QueueMemory, Share};
use crate::auth::Principal;
use crate::metrics::{DropReason, Metrics};
use crate::store::Qos;
use crate::topic::{FilterSpec, TopicName};

/// Options of one subscription as granted, as the subscription tree and the session keep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: Qos,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub subscription_id: Option<std::num::NonZeroU32>,
}

#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Messages waiting to be sent (not counting those in flight).
    pub max_queued: usize,
    /// Payload bytes waiting to be sent.
    pub max_queued_bytes: usize,
}

/// Messages a session did not deliver, by reason, until they are counted in the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// QoS 0 to a connected client whose queue was full.
    pub slow_subscriber: u64,
    /// Any QoS to an offline session whose queue was full.
    pub queue_full: u64,
    /// QoS 0 to an offline session, which queues none.
    pub offline: u64,
    /// The client's principal may no longer receive the topic.
    pub policy: u64,
    /// Any QoS to an offline session while the offline sessions' queues held
    /// `--mqtt-max-queue-memory-mib`.
    pub queue_memory: u64,
    /// Any QoS to an offline session while its principal's offline sessions' queues held
    /// the principal's `max_queue_memory_mib`.
    pub principal_queue_memory: u64,
}

impl Dropped {
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.slow_subscriber
            + self.queue_full
            + self.offline
            + self.policy
            + self.queue_memory
            + self.principal_queue_memory
    }

    /// Adds these to the metrics and starts again from zero.
    pub fn report(&mut self, metrics: &Metrics) {
        // Called for every message sent: nothing to add, almost always.
        if self.slow_subscriber
            | self.queue_full
            | self.offline
            | self.policy
            | self.queue_memory
            | self.principal_queue_memory
            == 0
        {
            return;
        }
        let d = std::mem::take(self);
        metrics.mqtt_dropped(DropReason::slow_subscriber, d.slow_subscriber);
        metrics.mqtt_dropped(DropReason::queue_full, d.queue_full);
        metrics.mqtt_dropped(DropReason::offline, d.offline);
        metrics.mqtt_dropped(DropReason::policy, d.policy);
        metrics.mqtt_dropped(DropReason::queue_memory, d.queue_memory);
        metrics.mqtt_dropped(DropReason::principal_queue_memory, d.principal_queue_memory);
    }
}

/// What became of a message offered to a session.
#[derive(Debug)]
pub enum Enqueued {
    Queued,
    /// Dropped by policy: QoS 0 when the queue is full or the client is offline, or any QoS
    /// while an offline session's queue is full.
    Dropped,
    /// A QoS ≥ 1 message for an online client whose queue is full, handed back: the client is
    /// not keeping up, and routing disconnects it.
    Full(Delivery),
    /// A QoS ≥ 1 message for an offline session whose queue is kept in Postgres (a node of
    /// many): the caller appends it there.
    Spool(Delivery),
}

/// A message sent at QoS ≥ 1 and not yet fully acknowledged.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: NonZeroU16,
    pub delivery: Delivery,
    /// QoS 2: PUBREC received and PUBREL sent; only PUBCOMP is missing.
    pub released: bool,
}

/// The next thing to put on the wire.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub packet_id: Option<NonZeroU16>,
    pub delivery: Delivery,
}

#[derive(Debug)]
pub struct SessionState {
    /// Every subscription of the session, as the client wrote it → granted options.
    pub subscriptions: HashMap<FilterSpec, SubOptions>,
    queue: VecDeque<Delivery>,
    queued_bytes: usize,
    inflight: VecDeque<Inflight>,
    /// The packet ids of `inflight`, so a free id is found without scanning the window.
    in_use: HashSet<NonZeroU16>,
    last_packet_id: u16,
    /// What the client sends us at QoS 2; `inbound_qos` keeps it.
    awaiting_release: AwaitingRelease,
    limits: SessionLimits,
    /// What the queues of the node's offline sessions hold together; while this session is
    /// offline (`counted`), every change to `queue` is counted there.
    memory: QueueMemory,
    /// Whether `queue` is counted in `memory`: from when the session is left until a connection
    /// takes it up. A connected client's queue is held to its own limits only, and its
    /// messages pass through without touching the node's count.
    counted: bool,
    /// The capacity of `queue` as counted in `memory` (0 while not counted).
    counted_capacity: usize,
    /// While counted, the share of the session's principal it also counts in, if its
    /// principal has a limit of its own.
    share: Option<Share>,
    /// Messages dropped since they were last counted in the metrics, by reason.
    pub dropped: Dropped,
    /// Offline, with its queue in Postgres (a node of many).
    spool: Spool,
}

/// Entries an emptied queue keeps room for: enough for the bursts of a client that keeps up.
const KEPT_CAPACITY: usize = 64;

/// Where an offline session's new messages go on a node of many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spool {
    /// Here, in memory (online, or a single node).
    Off,
    /// To Postgres, which holds this much already.
    On(Stored),
    /// Here again while a connection on this node takes the queue back from Postgres, which
    /// holds this much: what arrives meanwhile stays behind them, in order.
    Paused(Stored),
}

/// An offline session's queue in Postgres, held to the same limits as one in memory: it all
/// comes back into memory when its client returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub messages: usize,
    /// Payload bytes (for a session adopted from another node, the stored frames' bytes).
    pub bytes: usize,
}

impl SessionState {
    pub fn new(limits: SessionLimits, memory: QueueMemory) -> Self {
        Self {
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            in_use: HashSet::new(),
            last_packet_id: 0,
            awaiting_release: AwaitingRelease::default(),
            limits,
            memory,
            counted: true,
            counted_capacity: 0,
            share: None,
            dropped: Dropped::default(),
            spool: Spool::Off,
        }
    }

    /// The client is away and its session outlives this node: from now on its queue is kept
    /// in Postgres. Returns what waited here, unacknowledged messages first, to be stored
    /// there in this order; `already` were stored before (an adopted session).
    pub fn start_spooling(&mut self, already: Stored) -> Vec<Delivery> {
        // A released QoS 2 message is owed only its PUBREL [MQTT-4.4.0-1], which a queue of
        // messages in Postgres cannot hold: it stays here, in flight, for the client's return
        // to this node (before 2026-12-06 it was dropped, and the PUBREL never came).
        let (released, unacknowledged): (Vec<Inflight>, Vec<Inflight>) =
            self.inflight.drain(..).partition(|i| i.released);
        let mut waiting: Vec<Delivery> = unacknowledged.into_iter().map(|i| i.delivery).collect();
        self.in_use.clear();
        self.in_use.extend(released.iter().map(|i| i.packet_id));
        self.inflight.extend(released);
        for d in &self.queue {
            self.count_out(d);
        }
        waiting.extend(self.queue.drain(..));
        self.queued_bytes = 0;
        self.recount();
        self.spool = Spool::On(Stored {
            messages: already.messages + waiting.len(),
            bytes: already.bytes
                + waiting
                    .iter()
                    .map(|d| d.message.payload.len())
                    .sum::<usize>(),
        });
        waiting
    }

    /// A connection on this node is about to take the queue back from Postgres: until it
    /// has (`stop_spooling`) or gives up (`resume_spooling`), new messages wait here, so none
    /// reaches Postgres after the queue was read. False if the session was not spooling.
    pub fn pause_spooling(&mut self) -> bool {
        match self.spool {
            Spool::On(stored) => {
                self.spool = Spool::Paused(stored);
                true
            }
            _ => false,
        }
    }

    /// The connection that paused spooling failed: what waited here goes to Postgres after
    /// what is there, and new messages follow it.
    pub fn resume_spooling(&mut self) -> Vec<Delivery> {
        match self.spool {
            Spool::Paused(stored) => self.start_spooling(stored),
            _ => Vec::new(),
        }
    }

    /// The client is back: what was stored in Postgres comes back with it (`requeue_ahead`).
    pub fn stop_spooling(&mut self) {
        self.spool = Spool::Off;
    }

    /// Queues messages taken back from Postgres, in their order, ahead of any that arrived
    /// while they were being taken. A message that arrived here and was also queued by the
    /// node that held the session before (both subscribed while it moved) is kept once, in its
    /// place among those taken back. All of them are held to the session's limits, the oldest
    /// first, as when a queue fills: a queue in Postgres can hold more than the session
    /// counted (one written by an older release, or a node taken for dead adding what it held
    /// in memory to the adopter's).
    pub fn requeue_ahead(&mut self, mut deliveries: Vec<Delivery>) {
        let mut stamps = HashSet::new();
        // Queued twice in Postgres too: by the node the session left and by one that gave
        // up resuming it.
        deliveries.retain(|d| d.message.stamp.get().is_none_or(|s| stamps.insert(*s)));
        if !stamps.is_empty() {
            let before = self.queue.len();
            let mut freed = 0;
            let counting = self.counted.then_some(&self.memory);
            self.queue.retain(|d| {
                let twice = d.message.stamp.get().is_some_and(|s| stamps.contains(s));
                if twice {
                    freed += d.message.payload.len();
                    if let Some(memory) = counting {
                        memory.remove(d);
                    }
                }
                !twice
            });
            self.queued_bytes -= freed;
            if self.queue.len() < before {
                tracing::debug!(
                    copies = before - self.queue.len(),
                    "messages queued on two nodes while a session moved, delivered once"
                );
            }
        }
        let (mut count, mut bytes) = (0, 0);
        let limits = self.limits;
        let mut dropped = 0;
        deliveries.retain(|d| {
            let size = d.message.payload.len();
            let fits = count < limits.max_queued && bytes + size <= limits.max_queued_bytes;
            if fits {
                count += 1;
                bytes += size;
            } else {
                dropped += 1;
            }
            fits
        });
        while self.queue.len() + count > limits.max_queued
            || self.queued_bytes + bytes > limits.max_queued_bytes
        {
            let Some(newest) = self.queue.pop_back() else {
                break;
            };
            self.queued_bytes -= newest.message.payload.len();
            self.count_out(&newest);
            dropped += 1;
        }
        self.dropped.queue_full += dropped;
        for delivery in deliveries.into_iter().rev() {
            self.queued_bytes += delivery.message.payload.len();
            self.count_in(&delivery);
            self.queue.push_front(delivery);
        }
        self.recount();
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Counts the queue's allocation in the node's memory as it is now; called after every
    /// change to the queue. A queue that has emptied gives back what a burst made it grow
    /// by: a client that was away long keeps no room for its whole queue once it took it.
    fn recount(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > KEPT_CAPACITY {
            self.queue.shrink_to(KEPT_CAPACITY);
        }
        if !self.counted {
            return;
        }
        let capacity = self.queue.capacity();
        if capacity != self.counted_capacity {
            let (from, to) = (
                queue_memory::queue_bytes(self.counted_capacity),
                queue_memory::queue_bytes(capacity),
            );
            self.memory.resized(from, to);
            if let Some(share) = &self.share {
                share.resized(from, to);
            }
            self.counted_capacity = capacity;
        }
    }

    fn count_in(&self, delivery: &Delivery) {
        if self.counted {
            self.memory.add(delivery);
            if let Some(share) = &self.share {
                share.add(delivery);
            }
        }
    }

    fn count_out(&self, delivery: &Delivery) {
        if self.counted {
            self.memory.remove(delivery);
            if let Some(share) = &self.share {
                share.remove(delivery);
            }
        }
    }

    /// The session was left: its queue, as it is, counts in the node's memory from now on,
    /// and in its principal's share if `principal` has a limit of its own (the one in force
    /// now). A session already counted stays in the share it counts in.
    pub fn go_offline(&mut self, principal: Option<&Principal>) {
        if self.counted {
            return;
        }
        self.share = principal.and_then(|p| {
            let limit = p.limits.queue_memory_bytes?;
            Some(self.memory.share(&p.name, limit))
        });
        self.counted = true;
        for d in &self.queue {
            self.count_in(d);
        }
        self.recount();
    }

    /// A session made offline without a connection (restored at start, adopted from a node
    /// that is gone) counts as if `principal`, the one that made it, had just left it: in the
    /// node's memory, and in the principal's share if it has one.
    pub fn count_as_left_by(&mut self, principal: Option<&Principal>) {
        self.go_online();
        self.go_offline(principal);
    }

    /// A connection took the session up: its queue stops counting, in the node's memory and
    /// in its principal's share.
    pub fn go_online(&mut self) {
        if !self.counted {
            return;
        }
        for d in &self.queue {
            self.count_out(d);
        }
        let counted = queue_memory::queue_bytes(self.counted_capacity);
        self.memory.resized(counted, 0);
        if let Some(share) = self.share.take() {
            share.resized(counted, 0);
        }
        self.counted_capacity = 0;
        self.counted = false;
    }

    /// The payload bytes of the queued messages (those in flight not included).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    #[cfg(test)]
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    pub fn enqueue(&mut self, delivery: Delivery, online: bool) -> Enqueued {
        let qos0 = delivery.qos == Qos::AtMostOnce;
        if qos0 && !online {
            self.dropped.offline += 1;
            return Enqueued::Dropped;
        }
        let size = delivery.message.payload.len();
        let stored = match &mut self.spool {
            Spool::On(stored) => {
                if stored.messages >= self.limits.max_queued
                    || stored.bytes + size > self.limits.max_queued_bytes
                {
                    self.dropped.queue_full += 1;
                    return Enqueued::Dropped;
                }
                stored.messages += 1;
                stored.bytes += size;
                return Enqueued::Spool(delivery);
            }
            Spool::Paused(stored) => *stored,
            Spool::Off => Stored::default(),
        };
        let full = self.queue.len() + stored.messages >= self.limits.max_queued
            || self.queued_bytes + stored.bytes + size > self.limits.max_queued_bytes;
        // The offline sessions' queues are full; a connected client's queue is held to its own
        // limits only (see `queue_memory`).
        let growth = queue_memory::growth(self.queue.len(), self.queue.capacity());
        if !full && !online {
            // The principal's own share first: past it, the principal is the one to look at.
            if let Some(share) = &self.share
                && !share.admits(&delivery, growth)
            {
                self.dropped.principal_queue_memory += 1;
                return Enqueued::Dropped;
            }
            if !self.memory.admits(&delivery, growth) {
                self.dropped.queue_memory += 1;
                return Enqueued::Dropped;
            }
        }
        if full {
            if online {
                // QoS 0 only: a QoS 1 or 2 message is handed back (`Full`).
                if qos0 {
                    self.dropped.slow_subscriber += 1;
                    return Enqueued::Dropped;
                }
            } else {
                self.dropped.queue_full += 1;
                return Enqueued::Dropped;
            }
            return Enqueued::Full(delivery);
        }
        self.queued_bytes += size;
        self.count_in(&delivery);
        self.queue.push_back(delivery);
        self.recount();
        Enqueued::Queued
    }

    /// Takes the next queued message if the flow-control `window` (the client's Receive
    /// Maximum, capped by ours) allows it, giving QoS ≥ 1 messages a free packet id.
    /// Messages leave in queue order, so per-topic order holds [MQTT-4.6.0-6].
    ///
    /// A message whose topic the client may not receive now is dropped instead: permission is
    /// checked when a message leaves, not only when it was queued, since the principal or its
    /// policy may have changed in between.
    pub fn next_outgoing(
        &mut self,
        window: usize,
        may_receive: impl Fn(&TopicName) -> bool,
    ) -> Option<Outgoing> {
        let delivery = loop {
            let front = self.queue.front()?;
            if front.qos != Qos::AtMostOnce && self.inflight.len() >= window {
                return None;
            }
            let delivery = self.queue.pop_front()?;
            self.queued_bytes -= delivery.message.payload.len();
            self.count_out(&delivery);
            self.recount();
            if may_receive(&delivery.message.topic) {
                break delivery;
            }
            self.dropped.policy += 1;
        };
        if delivery.qos == Qos::AtMostOnce {
            return Some(Outgoing {
                packet_id: None,
                delivery,
            });
        }
        let packet_id = self.free_packet_id()?;
        self.inflight.push_back(Inflight {
            packet_id,
            delivery: delivery.clone(),
            released: false,
        });
        Some(Outgoing {
            packet_id: Some(packet_id),
            delivery,
        })
    }

    fn free_packet_id(&mut self) -> Option<NonZeroU16> {
        // At most 65535 ids exist; the window keeps far fewer in use, so this ends quickly.
        for _ in 0..u16::MAX {
            self.last_packet_id = self.last_packet_id.wrapping_add(1);
            let Some(id) = NonZeroU16::new(self.last_packet_id) else {
                continue;
            };
            if self.in_use.insert(id) {
                return Some(id);
            }
        }
        None
    }

    fn remove(&mut self, i: usize) {
        if let Some(done) = self.inflight.remove(i) {
            self.in_use.remove(&done.packet_id);
        }
    }

    fn position(&self, packet_id: NonZeroU16) -> Option<usize> {
        // Acknowledgements mostly arrive in order, so the front is the usual hit.
        self.inflight.iter().position(|i| i.packet_id == packet_id)
    }

    /// PUBACK for a QoS 1 message. False when no QoS 1 message has that id.
    pub fn acknowledge(&mut self, packet_id: NonZeroU16) -> bool {
        match self.position(packet_id) {
            Some(i) if self.inflight[i].delivery.qos == Qos::AtLeastOnce => {
                self.remove(i);
                true
            }
            _ => false,
        }
    }

    /// PUBREC for a QoS 2 message: from now on only PUBCOMP is awaited. False when unknown.
    pub fn received(&mut self, packet_id: NonZeroU16) -> bool {
        match self.position(packet_id) {
            Some(i) if self.inflight[i].delivery.qos == Qos::ExactlyOnce => {
                self.inflight[i].released = true;
                true
            }
            _ => false,
        }
    }

    /// PUBCOMP: the QoS 2 exchange is over. False when no released message has that id.
    pub fn completed(&mut self, packet_id: NonZeroU16) -> bool {
        match self.position(packet_id) {
            Some(i) if self.inflight[i].released => {
                self.remove(i);
                true
            }
            _ => false,
        }
    }

    /// Drops an in-flight message without an acknowledgement: it expired before it could be
    /// resent, the client cannot take it (too large), or an MQTT 5 client refused it.
    pub fn forget(&mut self, packet_id: NonZeroU16) {
        if let Some(i) = self.position(packet_id) {
            self.remove(i);
        }
    }

    /// Queues a retained message for a new subscription. The caller bounds these (a page at
    /// a time, only when the queue is short), so the queue limits do not apply: a retained
    /// message the client subscribed for must not be dropped because live traffic is busy.
    pub fn push_retained(&mut self, delivery: Delivery) {
        self.queued_bytes += delivery.message.payload.len();
        self.count_in(&delivery);
        self.queue.push_back(delivery);
        self.recount();
    }

    /// What must be sent again on a resumed session, in the original order: unacknowledged
    /// PUBLISHes (with DUP) and PUBRELs [MQTT-4.4.0-1].
    #[cfg(test)]
    pub fn unacknowledged(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.iter()
    }

    /// [`SessionState::unacknowledged`] less the PUBLISHes whose topic the client may no
    /// longer receive, which are forgotten. A PUBREL carries no message and is
    /// always resent.
    pub fn resendable(&mut self, may_receive: impl Fn(&TopicName) -> bool) -> Vec<Inflight> {
        let denied: Vec<NonZeroU16> = self
            .inflight
            .iter()
            .filter(|i| !i.released && !may_receive(&i.delivery.message.topic))
            .map(|i| i.packet_id)
            .collect();
        for id in denied {
            self.forget(id);
            self.dropped.policy += 1;
        }
        self.inflight.iter().cloned().collect()
    }

    /// The QoS 2 ids the client sent that await PUBREL.
    pub fn awaiting_release(&mut self) -> &mut AwaitingRelease {
        &mut self.awaiting_release
    }

    /// What a restart keeps of the session (decision 024): its unacknowledged messages in send
    /// order, its queue, and the QoS 2 ids the client sent that await PUBREL.
    pub fn to_save(&self) -> (&VecDeque<Inflight>, &VecDeque<Delivery>, &AwaitingRelease) {
        (&self.inflight, &self.queue, &self.awaiting_release)
    }

    /// The QoS 2 exchanges the node that held the session before left open (decision 014):
    /// the released messages go ahead of anything in flight here (they were sent first), the
    /// ids awaiting PUBREL join those here. An id in flight here already keeps its message.
    pub fn take_up(&mut self, released: Vec<Inflight>, awaiting: Vec<NonZeroU16>) {
        for i in released.into_iter().rev() {
            if self.in_use.insert(i.packet_id) {
                self.inflight.push_front(i);
            }
        }
        self.awaiting_release.extend(awaiting);
    }

    /// A session saved before a restart, as [`Self::to_save`] gave it: resent and sent as
    /// after a reconnect. The queue is held to this start's limits, the oldest kept.
    pub fn restore(
        &mut self,
        inflight: Vec<Inflight>,
        queue: Vec<Delivery>,
        awaiting_release: AwaitingRelease,
    ) {
        for i in &inflight {
            self.in_use.insert(i.packet_id);
        }
        // New ids follow the newest in flight, as they did before the restart.
        if let Some(last) = inflight.last() {
            self.last_packet_id = last.packet_id.get();
        }
        self.inflight = inflight.into();
        self.awaiting_release = awaiting_release;
        self.requeue_ahead(queue);
    }
}

impl Drop for SessionState {
    /// A session that ends gives back what its queue held.
    fn drop(&mut self) {
        self.go_online();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::topic::{TopicLimits, TopicName};

    fn delivery(payload: &'static str, qos: Qos) -> Delivery {
        Delivery::plain(payload, qos)
    }

    fn state(max_queued: usize) -> SessionState {
        state_in(max_queued, QueueMemory::unlimited())
    }

    /// [`state`], its queue counted in `memory` (a new session counts, as one left does).
    fn state_in(max_queued: usize, memory: QueueMemory) -> SessionState {
        SessionState::new(
            SessionLimits {
                max_queued,
                max_queued_bytes: 1 << 20,
            },
            memory,
        )
    }

    fn all(_: &TopicName) -> bool {
        true
    }

    fn payload(o: &Outgoing) -> &[u8] {
        &o.delivery.message.payload
    }

    #[test]
    fn qos0_is_not_queued_for_an_offline_client() {
        let mut s = state(10);
        assert!(matches!(
            s.enqueue(delivery("a", Qos::AtMostOnce), false),
            Enqueued::Dropped
        ));
        assert!(matches!(
            s.enqueue(delivery("b", Qos::AtLeastOnce), false),
            Enqueued::Queued
        ));
        assert_eq!(s.queued(), 1);
    }

    #[test]
    fn a_full_queue_drops_qos0_and_reports_qos1_for_online_clients() {
        let mut s = state(1);
        assert!(matches!(
            s.enqueue(delivery("a", Qos::AtLeastOnce), true),
            Enqueued::Queued
        ));
        assert!(matches!(
            s.enqueue(delivery("b", Qos::AtMostOnce), true),
            Enqueued::Dropped
        ));
        assert!(matches!(
            s.enqueue(delivery("c", Qos::AtLeastOnce), true),
            Enqueued::Full(_)
        ));
        assert!(matches!(
            s.enqueue(delivery("d", Qos::AtLeastOnce), false),
            Enqueued::Dropped
        ));
        assert_eq!(s.dropped.total(), 2);
    }

    #[test]
    fn the_byte_limit_bounds_the_queue_too() {
        let mut s = SessionState::new(
            SessionLimits {
                max_queued: 100,
                max_queued_bytes: 3,
            },
            QueueMemory::unlimited(),
        );
        assert!(matches!(
            s.enqueue(delivery("ab", Qos::AtLeastOnce), true),
            Enqueued::Queued
        ));
        assert!(matches!(
            s.enqueue(delivery("cd", Qos::AtLeastOnce), true),
            Enqueued::Full(_)
        ));
        s.next_outgoing(10, all).unwrap();
        assert!(matches!(
            s.enqueue(delivery("cd", Qos::AtLeastOnce), true),
            Enqueued::Queued
        ));
    }

    #[test]
    fn the_window_limits_qos1_in_flight_and_acks_open_it() {
        let mut s = state(10);
        for p in ["1", "2", "3"] {
            s.enqueue(delivery(p, Qos::AtLeastOnce), true);
        }
        let first = s.next_outgoing(2, all).unwrap();
        let second = s.next_outgoing(2, all).unwrap();
        assert!(s.next_outgoing(2, all).is_none(), "window of 2 is full");
        assert_ne!(first.packet_id, second.packet_id);
        assert!(s.acknowledge(first.packet_id.unwrap()));
        assert!(
            !s.acknowledge(first.packet_id.unwrap()),
            "an id is acked once"
        );
        assert_eq!(payload(&s.next_outgoing(2, all).unwrap()), b"3");
    }

    #[test]
    fn qos0_is_not_held_back_by_an_empty_window() {
        let mut s = state(10);
        s.enqueue(delivery("a", Qos::AtMostOnce), true);
        let out = s.next_outgoing(0, all).unwrap();
        assert!(out.packet_id.is_none());
    }

    #[test]
    fn qos2_needs_pubrec_then_pubcomp() {
        let mut s = state(10);
        s.enqueue(delivery("x", Qos::ExactlyOnce), true);
        let id = s.next_outgoing(10, all).unwrap().packet_id.unwrap();
        assert!(!s.acknowledge(id), "PUBACK does not finish QoS 2");
        assert!(!s.completed(id), "PUBCOMP before PUBREC is out of order");
        assert!(s.received(id));
        assert!(s.unacknowledged().next().unwrap().released);
        assert!(s.completed(id));
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn unacknowledged_messages_are_kept_in_send_order_for_resending() {
        let mut s = state(10);
        for p in ["1", "2"] {
            s.enqueue(delivery(p, Qos::AtLeastOnce), true);
        }
        s.next_outgoing(10, all);
        s.next_outgoing(10, all);
        let order: Vec<&[u8]> = s
            .unacknowledged()
            .map(|i| &i.delivery.message.payload[..])
            .collect();
        assert_eq!(order, [b"1", b"2"]);
    }

    #[test]
    fn packet_ids_skip_ids_still_in_flight_after_wrapping() {
        let mut s = state(100_000);
        s.enqueue(delivery("held", Qos::AtLeastOnce), true);
        let held = s.next_outgoing(usize::MAX, all).unwrap().packet_id.unwrap();
        for _ in 0..u16::MAX as usize + 5 {
            s.enqueue(delivery("x", Qos::AtLeastOnce), true);
            let id = s.next_outgoing(usize::MAX, all).unwrap().packet_id.unwrap();
            assert_ne!(id, held);
            s.acknowledge(id);
        }
    }

    fn topic_delivery(topic: &str, qos: Qos) -> Delivery {
        let mut d = delivery("x", qos);
        Arc::make_mut(&mut d.message).topic =
            TopicName::parse(topic, TopicLimits::default()).unwrap();
        d
    }

    #[test]
    fn a_queued_message_the_client_may_no_longer_receive_is_dropped_when_it_leaves() {
        let mut s = state(10);
        for topic in ["open", "secret", "open"] {
            s.enqueue(topic_delivery(topic, Qos::AtLeastOnce), true);
        }
        let not_secret = |t: &TopicName| t.as_str() != "secret";
        let sent: Vec<_> = std::iter::from_fn(|| s.next_outgoing(10, not_secret))
            .map(|o| o.delivery.message.topic.as_str().to_owned())
            .collect();
        assert_eq!(sent, ["open", "open"]);
        assert_eq!((s.inflight(), s.dropped.policy), (2, 1));
    }

    #[test]
    fn an_unacknowledged_message_the_client_may_no_longer_receive_is_not_resent() {
        let mut s = state(10);
        for (topic, qos) in [
            ("open", Qos::AtLeastOnce),
            ("secret", Qos::AtLeastOnce),
            ("secret", Qos::ExactlyOnce),
        ] {
            s.enqueue(topic_delivery(topic, qos), true);
        }
        let ids: Vec<_> = std::iter::from_fn(|| s.next_outgoing(10, all))
            .map(|o| o.packet_id.unwrap())
            .collect();
        // The QoS 2 one is past PUBREC: only its PUBREL is left, which carries no message.
        assert!(s.received(ids[2]));
        let not_secret = |t: &TopicName| t.as_str() != "secret";
        let resent: Vec<_> = s
            .resendable(not_secret)
            .into_iter()
            .map(|i| (i.packet_id, i.released))
            .collect();
        assert_eq!(resent, [(ids[0], false), (ids[2], true)]);
        assert!(!s.acknowledge(ids[1]), "the denied one is forgotten");
    }

    #[test]
    fn a_paused_spool_keeps_new_messages_behind_the_stored_ones_within_the_limit() {
        let mut s = state(3);
        assert!(s.start_spooling(Stored::default()).is_empty());
        assert!(matches!(
            s.enqueue(delivery("stored", Qos::AtLeastOnce), false),
            Enqueued::Spool(_)
        ));
        assert!(s.pause_spooling());
        assert!(!s.pause_spooling(), "paused once");
        for p in ["new1", "new2"] {
            assert!(matches!(
                s.enqueue(delivery(p, Qos::AtLeastOnce), false),
                Enqueued::Queued
            ));
        }
        // One in Postgres and two here fill a queue of three.
        assert!(matches!(
            s.enqueue(delivery("over", Qos::AtLeastOnce), false),
            Enqueued::Dropped
        ));
        s.stop_spooling();
        s.requeue_ahead(vec![delivery("stored", Qos::AtLeastOnce)]);
        let order: Vec<Vec<u8>> = std::iter::from_fn(|| s.next_outgoing(10, all))
            .map(|o| payload(&o).to_vec())
            .collect();
        assert_eq!(order, [&b"stored"[..], b"new1", b"new2"]);
    }

    #[test]
    fn a_spooled_queue_is_held_to_the_byte_limit_too() {
        let mut s = SessionState::new(
            SessionLimits {
                max_queued: 100,
                max_queued_bytes: 10,
            },
            QueueMemory::unlimited(),
        );
        // Adopted with 6 bytes stored: 4 more fit, 5 do not.
        let _ = s.start_spooling(Stored {
            messages: 1,
            bytes: 6,
        });
        assert!(matches!(
            s.enqueue(delivery("12345", Qos::AtLeastOnce), false),
            Enqueued::Dropped
        ));
        assert!(matches!(
            s.enqueue(delivery("1234", Qos::AtLeastOnce), false),
            Enqueued::Spool(_)
        ));
        assert!(matches!(
            s.enqueue(delivery("1", Qos::AtLeastOnce), false),
            Enqueued::Dropped
        ));
        // Paused, what waits here counts with what is stored.
        assert!(s.pause_spooling());
        assert!(matches!(
            s.enqueue(delivery("1", Qos::AtLeastOnce), false),
            Enqueued::Dropped
        ));
        assert_eq!(s.dropped.queue_full, 3);
    }

    #[test]
    fn a_queue_taken_back_is_held_to_the_limits_the_oldest_first() {
        let mut s = state(3);
        let _ = s.enqueue(delivery("arrived here", Qos::AtLeastOnce), false);
        let back = ["a", "b", "c", "d"].map(|p| delivery(p, Qos::AtLeastOnce));
        s.requeue_ahead(back.into());
        let queued: Vec<_> = s.queue.iter().map(|d| d.message.payload.clone()).collect();
        assert_eq!(queued, [&b"a"[..], b"b", b"c"]);
        assert_eq!(s.queued_bytes(), 3);
        assert_eq!(s.dropped.queue_full, 2);

        let mut s = SessionState::new(
            SessionLimits {
                max_queued: 100,
                max_queued_bytes: 10,
            },
            QueueMemory::unlimited(),
        );
        let _ = s.enqueue(delivery("12", Qos::AtLeastOnce), false);
        let back = ["12345", "123456", "1234"].map(|p| delivery(p, Qos::AtLeastOnce));
        s.requeue_ahead(back.into());
        let queued: Vec<_> = s.queue.iter().map(|d| d.message.payload.clone()).collect();
        assert_eq!(queued, [&b"12345"[..], b"1234"]);
        assert_eq!(s.queued_bytes(), 9);
        assert_eq!(s.dropped.queue_full, 2);
    }

    fn counted(payload: &'static str) -> usize {
        crate::broker::queue_memory::alone(&delivery(payload, Qos::AtLeastOnce))
    }

    /// What the queues' allocations count for.
    fn room(states: &[&SessionState]) -> usize {
        states
            .iter()
            .map(|s| queue_memory::queue_bytes(s.queue.capacity()))
            .sum()
    }

    #[test]
    fn an_offline_session_queues_nothing_more_once_the_nodes_queues_are_full() {
        // Room for three messages and two queues of four entries, the least a queue takes.
        let limit = 3 * counted("m") + 2 * queue_memory::queue_bytes(4);
        let memory = QueueMemory::new(limit);
        let limits = SessionLimits {
            max_queued: 100,
            max_queued_bytes: 1 << 20,
        };
        let (mut away, mut other) = (
            SessionState::new(limits, memory.clone()),
            SessionState::new(limits, memory.clone()),
        );
        for s in [&mut away, &mut other] {
            assert!(matches!(
                s.enqueue(delivery("m", Qos::AtLeastOnce), false),
                Enqueued::Queued
            ));
        }
        assert!(matches!(
            away.enqueue(delivery("m", Qos::AtLeastOnce), false),
            Enqueued::Queued
        ));
        assert_eq!(memory.held(), limit);
        for s in [&mut away, &mut other] {
            assert!(matches!(
                s.enqueue(delivery("m", Qos::ExactlyOnce), false),
                Enqueued::Dropped
            ));
            assert_eq!(s.dropped.queue_memory, 1);
        }
        // A connected client is held to its own limits only, and not counted.
        let mut here = SessionState::new(limits, memory.clone());
        here.go_online();
        for _ in 0..5 {
            assert!(matches!(
                here.enqueue(delivery("m", Qos::AtLeastOnce), true),
                Enqueued::Queued
            ));
        }
        assert_eq!(here.dropped.total(), 0);
        assert_eq!(memory.held(), limit);
        // Left with its queue: counted from then on, past the limit as it is.
        here.go_offline(None);
        assert_eq!(memory.held(), limit + 5 * counted("m") + room(&[&here]));
        // What a queue gives back, by sending or by ending, is free again.
        assert!(here.next_outgoing(10, all).is_some());
        assert_eq!(memory.held(), limit + 4 * counted("m") + room(&[&here]));
        drop(here);
        assert_eq!(memory.held(), limit);
        let _ = away.next_outgoing(10, all);
        assert!(matches!(
            other.enqueue(delivery("m", Qos::AtLeastOnce), false),
            Enqueued::Queued
        ));
        assert!(matches!(
            other.enqueue(delivery("m", Qos::AtLeastOnce), false),
            Enqueued::Dropped
        ));
    }

    #[test]
    fn an_offline_session_does_not_grow_its_queue_past_the_nodes_limit() {
        // Room for four messages in queues of four: a fifth would double the queue.
        let limit = 5 * counted("m") + queue_memory::queue_bytes(4);
        let memory = QueueMemory::new(limit);
        let mut s = state_in(100, memory.clone());
        for _ in 0..4 {
            let _ = s.enqueue(delivery("m", Qos::AtLeastOnce), false);
        }
        assert!(matches!(
            s.enqueue(delivery("m", Qos::AtLeastOnce), false),
            Enqueued::Dropped
        ));
        assert_eq!(s.queued(), 4);
    }

    #[test]
    fn a_message_queued_for_many_sessions_counts_once() {
        let memory = QueueMemory::new(0);
        let limits = SessionLimits {
            max_queued: 100,
            max_queued_bytes: 1 << 20,
        };
        let shared = delivery("a payload shared by every session", Qos::AtLeastOnce);
        let whole = counted("a payload shared by every session");
        let mut sessions: Vec<_> = (0..3)
            .map(|_| SessionState::new(limits, memory.clone()))
            .collect();
        for s in &mut sessions {
            let _ = s.enqueue(shared.clone(), false);
        }
        let rooms = |v: &[SessionState]| room(&v.iter().collect::<Vec<_>>());
        assert_eq!(memory.held(), whole + rooms(&sessions));
        let _ = sessions[0].next_outgoing(10, all);
        drop(sessions.remove(1));
        assert_eq!(
            memory.held(),
            whole + rooms(&sessions),
            "the last copy holds the message"
        );
        drop(sessions);
        assert_eq!(memory.held(), 0);
    }

    #[test]
    fn every_way_a_queue_changes_is_counted_in_the_nodes_memory() {
        let memory = QueueMemory::new(0);
        let mut s = state_in(3, memory.clone());
        let _ = s.enqueue(delivery("a", Qos::AtLeastOnce), false);
        s.push_retained(delivery("retained", Qos::AtLeastOnce));
        assert_eq!(
            memory.held(),
            counted("a") + counted("retained") + room(&[&s])
        );
        // Taken back ahead of them, held to three: "a" and "retained" leave, newest first.
        s.requeue_ahead(
            ["b", "c", "d"]
                .map(|p| delivery(p, Qos::AtLeastOnce))
                .into(),
        );
        assert_eq!(memory.held(), 3 * counted("b") + room(&[&s]));
        let _ = s.next_outgoing(10, all);
        assert_eq!(memory.held(), 2 * counted("b") + room(&[&s]));
        // Spooled to Postgres: nothing left here but the queue's room.
        let spooled = s.start_spooling(Stored::default());
        assert_eq!(spooled.len(), 3, "one in flight, two queued");
        assert_eq!(memory.held(), room(&[&s]));
        s.stop_spooling();
        let _ = s.enqueue(delivery("e", Qos::AtLeastOnce), false);
        assert_eq!(memory.held(), counted("e") + room(&[&s]));
        drop(s);
        assert_eq!(memory.held(), 0);
    }

    #[test]
    fn a_session_taken_up_stops_counting_and_one_left_counts_what_it_holds() {
        let memory = QueueMemory::new(0);
        let mut s = state_in(100, memory.clone());
        for p in ["a", "b"] {
            let _ = s.enqueue(delivery(p, Qos::AtLeastOnce), false);
        }
        assert_eq!(memory.held(), 2 * counted("a") + room(&[&s]));
        s.go_online();
        assert_eq!(memory.held(), 0);
        let _ = s.enqueue(delivery("c", Qos::AtLeastOnce), true);
        let _ = s.next_outgoing(10, all);
        assert_eq!(
            memory.held(),
            0,
            "a connected client's messages are not counted"
        );
        s.go_offline(None);
        s.go_offline(None);
        assert_eq!(memory.held(), 2 * counted("a") + room(&[&s]));
        drop(s);
        assert_eq!(memory.held(), 0);
    }

    /// Two principals' sessions by name, with tokens only; `fleet` with `fleet_share`.
    fn principals(fleet_share: &str) -> (Arc<Principal>, Arc<Principal>) {
        use crate::auth::{AuthConfig, Authenticator};
        let config = AuthConfig::parse(&format!(
            "[[principals]]\nname = \"fleet\"\napi_tokens_sha256 = [\"{}\"]\n{fleet_share}\n\
             [[principals]]\nname = \"other\"\napi_tokens_sha256 = [\"{}\"]\n",
            "a".repeat(64),
            "b".repeat(64),
        ))
        .unwrap();
        let auth = Authenticator::new(config).unwrap();
        (
            auth.principal("fleet").unwrap(),
            auth.principal("other").unwrap(),
        )
    }

    /// A session of `principal`, left by its client; its own limits far above the shares.
    fn left(principal: &Principal, memory: &QueueMemory) -> SessionState {
        let limits = SessionLimits {
            max_queued: 100,
            max_queued_bytes: 16 << 20,
        };
        let mut s = SessionState::new(limits, memory.clone());
        s.go_online();
        s.go_offline(Some(principal));
        s
    }

    #[test]
    fn a_principals_offline_sessions_stop_at_its_share_and_the_others_go_on() {
        let (fleet, other) = principals("max_queue_memory_mib = 1");
        let memory = QueueMemory::new(0);
        let big: &'static str = Box::leak("x".repeat(300 * 1024).into_boxed_str());
        let m = delivery(big, Qos::AtLeastOnce);
        // Held here too, so that this is the one the sessions count in.
        let share = memory.share("fleet", 1 << 20);
        let (mut f1, mut f2, mut o) = (
            left(&fleet, &memory),
            left(&fleet, &memory),
            left(&other, &memory),
        );
        for s in [&mut f1, &mut f2, &mut o] {
            assert!(matches!(s.enqueue(m.clone(), false), Enqueued::Queued));
        }
        // Each of the principal's copies counts whole in its share; once in the node's.
        assert_eq!(share.held(), 2 * counted(big) + room(&[&f1, &f2]));
        assert_eq!(memory.held(), counted(big) + room(&[&f1, &f2, &o]));
        assert!(matches!(f1.enqueue(m.clone(), false), Enqueued::Queued));
        assert!(matches!(f2.enqueue(m.clone(), false), Enqueued::Dropped));
        assert_eq!(f2.dropped.principal_queue_memory, 1);
        assert_eq!(f2.dropped.queue_memory, 0);
        // Another principal's session goes on queueing.
        for _ in 0..5 {
            assert!(matches!(o.enqueue(m.clone(), false), Enqueued::Queued));
        }
        assert_eq!(o.dropped.total(), 0);
        // A client back takes its queue out of the share: the other session queues again.
        f1.go_online();
        assert_eq!(share.held(), counted(big) + room(&[&f2]));
        assert!(matches!(f2.enqueue(m.clone(), false), Enqueued::Queued));
        // Left again, under a limit reloaded meanwhile: the share is the same one, its limit
        // the one in force now.
        let (reloaded, _) = principals("max_queue_memory_mib = 2");
        f1.go_offline(Some(&reloaded));
        assert_eq!(share.held(), 4 * counted(big) + room(&[&f1, &f2]));
        for _ in 0..2 {
            assert!(matches!(f2.enqueue(m.clone(), false), Enqueued::Queued));
        }
        assert!(matches!(f2.enqueue(m.clone(), false), Enqueued::Dropped));
        // Sessions that end give everything back.
        drop((f1, f2, o));
        assert_eq!((share.held(), memory.held()), (0, 0));
    }

    #[test]
    fn a_principal_without_a_share_counts_in_the_nodes_memory_only() {
        let (_, other) = principals("");
        let memory = QueueMemory::new(0);
        let mut s = left(&other, &memory);
        assert!(s.share.is_none());
        let _ = s.enqueue(delivery("m", Qos::AtLeastOnce), false);
        assert_eq!(memory.held(), counted("m") + room(&[&s]));
    }

    #[test]
    fn a_queue_that_emptied_gives_back_what_a_burst_grew_it_by() {
        let memory = QueueMemory::new(0);
        let mut s = SessionState::new(
            SessionLimits {
                max_queued: 10_000,
                max_queued_bytes: 1 << 30,
            },
            memory.clone(),
        );
        for _ in 0..5_000 {
            let _ = s.enqueue(delivery("m", Qos::AtMostOnce), true);
        }
        assert!(s.queue.capacity() >= 5_000);
        while s.next_outgoing(10, all).is_some() {}
        assert!(
            s.queue.capacity() <= KEPT_CAPACITY,
            "{}",
            s.queue.capacity()
        );
        assert_eq!(memory.held(), room(&[&s]));
    }

    #[test]
    fn a_failed_resume_spools_what_waited_after_what_is_stored() {
        let mut s = state(3);
        let _ = s.start_spooling(Stored::default());
        let _ = s.enqueue(delivery("stored", Qos::AtLeastOnce), false);
        assert!(s.pause_spooling());
        let _ = s.enqueue(delivery("new", Qos::AtLeastOnce), false);
        let back: Vec<_> = s.resume_spooling();
        assert_eq!(back.len(), 1);
        assert_eq!(&back[0].message.payload[..], b"new");
        assert_eq!(s.queued(), 0);
        assert!(matches!(
            s.enqueue(delivery("later", Qos::AtLeastOnce), false),
            Enqueued::Spool(_)
        ));
        // Stored, new and later: the third fills the queue of three.
        assert!(matches!(
            s.enqueue(delivery("over", Qos::AtLeastOnce), false),
            Enqueued::Dropped
        ));
        assert!(s.resume_spooling().is_empty(), "not paused any more");
    }

    #[test]
    fn a_message_queued_on_two_nodes_while_its_session_moved_comes_once_in_its_place() {
        let stamped = |payload: &'static str, seq: u64| {
            let d = delivery(payload, Qos::AtLeastOnce);
            d.message
                .stamp
                .set(crate::cluster::Stamp { node: 7, seq })
                .unwrap();
            d
        };
        let mut s = state(10);
        for d in [
            stamped("x", 1),
            stamped("y", 2),
            delivery("z", Qos::AtLeastOnce),
        ] {
            assert!(matches!(s.enqueue(d, false), Enqueued::Queued));
        }
        // Taken back from Postgres: "x" was queued by both nodes, and twice there.
        s.requeue_ahead(vec![stamped("w", 0), stamped("x", 1), stamped("x", 1)]);
        let order: Vec<Vec<u8>> = std::iter::from_fn(|| s.next_outgoing(10, all))
            .map(|o| payload(&o).to_vec())
            .collect();
        assert_eq!(order, [&b"w"[..], b"x", b"y", b"z"]);
        assert_eq!(
            s.queued_bytes, 0,
            "the bytes of the copies dropped are given back"
        );
    }
}
