//! What the broker moves around: a published message, and one copy of it on its way to one
//! subscriber.

use std::num::NonZeroU32;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use thin_vec::ThinVec;

use crate::cluster::{Outgoing, Routed, Stamp};
use crate::store::{MessageProperties, Qos, RetainedMessage, RetainedPublish, Write};
use crate::topic::ClientKey;
use crate::topic::TopicName;

/// What a client publishes, as each transport reads it (an MQTT PUBLISH or Will, an HTTP
/// Publish): the parts of a [`Message`] that the client chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: Qos,
    pub retain: bool,
    pub properties: MessageProperties,
    /// The MQTT 5 Message Expiry Interval, in seconds.
    pub expiry_secs: Option<u32>,
}

/// An application message as published, over MQTT or HTTP. Shared by every delivery of it.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: Qos,
    pub retain: bool,
    pub properties: MessageProperties,
    /// When the MQTT 5 Message Expiry Interval runs out (epoch ms).
    pub expires_at_ms: Option<i64>,
    /// The publishing client, for No Local; `None` for HTTP publishes.
    pub origin: Option<ClientKey>,
    /// Set when it is sent between nodes (a node of many): copies of it may be queued on
    /// two nodes while a session moves, and are delivered once.
    pub stamp: OnceLock<Stamp>,
    /// How many session queues hold it now, so that the node's count of queued memory counts
    /// it once however many sessions it waits for (`queue_memory`).
    pub queued: QueuedCopies,
}

/// A count that a copy of the message does not inherit: the copy is queued nowhere yet.
#[derive(Debug, Default)]
pub struct QueuedCopies(pub AtomicU32);

impl Clone for QueuedCopies {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Message {
    /// A plain message: no properties, no expiry, no origin.
    #[cfg(test)]
    pub fn plain(topic: &str, payload: impl Into<Bytes>, qos: Qos) -> Arc<Self> {
        let limits = crate::topic::TopicLimits::default();
        Arc::new(Self {
            topic: TopicName::parse(topic, limits).expect("a valid topic"),
            payload: payload.into(),
            qos,
            retain: false,
            properties: MessageProperties::default(),
            expires_at_ms: None,
            origin: None,
            stamp: Default::default(),
            queued: Default::default(),
        })
    }

    /// The message a publication becomes on arriving at `now_ms` from `origin` (`None` over
    /// HTTP): its expiry counts from then. A publish reads the clock once, and its retained
    /// write (see [`Self::retained_write`]) and its routing use the same reading.
    pub fn published(p: Publication, origin: Option<ClientKey>, now_ms: i64) -> Self {
        Self {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            expires_at_ms: p.expiry_secs.map(|s| now_ms + i64::from(s) * 1000),
            origin,
            stamp: OnceLock::new(),
            queued: Default::default(),
        }
    }

    /// The change a retained publish makes to the store. [MQTT-3.3.1-6]: an empty retained
    /// payload removes the topic's retained message and is not stored.
    pub fn retained_write(&self, now_ms: i64) -> Option<Write> {
        if !self.retain {
            return None;
        }
        if self.payload.is_empty() {
            return Some(Write::Delete(self.topic.clone()));
        }
        Some(Write::Put(RetainedMessage {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            properties: self.properties.clone(),
            expires_at_ms: self.expires_at_ms,
            last_modified_ms: now_ms,
            last_accessed_ms: now_ms,
            revision: 0,
            writer: None,
        }))
    }

    /// A stored retained message, as it is sent to a new subscription.
    pub fn from_retained(stored: RetainedPublish) -> Self {
        Self {
            topic: stored.topic,
            payload: stored.payload,
            qos: stored.qos,
            retain: true,
            properties: stored.properties,
            expires_at_ms: stored.expires_at_ms,
            origin: None,
            stamp: OnceLock::new(),
            queued: Default::default(),
        }
    }

    /// A publish another node handled, as this node's subscribers receive it.
    pub fn routed(r: Routed) -> Self {
        Self {
            topic: r.topic,
            payload: r.payload,
            qos: r.qos,
            retain: r.retain,
            properties: r.properties,
            expires_at_ms: r.expires_at_ms,
            origin: r.origin,
            stamp: r.stamp.map(OnceLock::from).unwrap_or_default(),
            queued: Default::default(),
        }
    }

    /// The message as it is written for another node or for later (a frame, `cluster`).
    pub fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            topic: &self.topic,
            payload: &self.payload,
            qos: self.qos,
            retain: self.retain,
            properties: &self.properties,
            expires_at_ms: self.expires_at_ms,
            origin: self.origin.as_deref(),
            shared_done: false,
        }
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS) [MQTT-3.8.4-8].
    pub qos: Qos,
    /// The RETAIN flag as sent: set for retained messages sent on subscribe, and for ordinary
    /// forwarding only with Retain As Published [MQTT-3.3.1-12, -13].
    pub retain: bool,
    /// Subscription identifiers of every matching subscription [MQTT-3.3.4-3]. One pointer,
    /// and no allocation when there are none: every queued copy of a message is one of these.
    pub subscription_ids: ThinVec<NonZeroU32>,
}

impl Delivery {
    /// A plain message on topic "t", delivered at its own QoS, as tests make them.
    #[cfg(test)]
    pub fn plain(payload: &'static str, qos: Qos) -> Self {
        Self {
            message: Message::plain("t", Bytes::from_static(payload.as_bytes()), qos),
            qos,
            retain: false,
            subscription_ids: ThinVec::new(),
        }
    }
}
