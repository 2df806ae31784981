//! `$SYS/broker/...`: this node's status for MQTT clients that monitor brokers that way, under
//! Mosquitto's topic names (mosquitto(8), "Broker status").
//!
//! The values are the broker's live state, so they are never written to the retained store
//! (ListRetainedMessages and GetRetainedMessage never see them) and never sent to other nodes:
//! each node publishes its own numbers to its own subscribers. The latest value of each topic
//! is kept here instead and handed to a new subscription as a retained message would be
//! (RETAIN=1), as Mosquitto, which retains them, does. Who may read them is the policy's
//! business: `iot:Subscribe` on the filter, `iot:Receive` on each topic, as for any message.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::handle::{Broker, Inner};
use super::message::{Delivery, Message, Publication};
use super::registry::Session;
use super::session::SubOptions;
use crate::store::{MessageProperties, Qos};
use crate::topic::{TopicFilter, TopicName};

/// Connections open on this node (Mosquitto: "the number of currently connected clients").
pub const CLIENTS_CONNECTED: &str = "$SYS/broker/clients/connected";
/// PUBLISH packets received from clients. Mosquitto's `$SYS/broker/messages/received` counts
/// packets of every type, which retaind does not count, so that name is not published.
pub const PUBLISH_RECEIVED: &str = "$SYS/broker/publish/messages/received";
/// PUBLISH packets sent to clients, resends included.
pub const PUBLISH_SENT: &str = "$SYS/broker/publish/messages/sent";
/// Retained messages in the store: the whole store, which every node on it shares.
pub const RETAINED_COUNT: &str = "$SYS/broker/retained messages/count";
/// Seconds since this node started, as `"N seconds"`.
pub const UPTIME: &str = "$SYS/broker/uptime";
/// `"retaind version X.Y.Z"`; it never changes while the node runs.
pub const VERSION: &str = "$SYS/broker/version";

/// What the status topics say at one moment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Status {
    pub connected: usize,
    pub publish_received: u64,
    pub publish_sent: u64,
    /// `None` when the store could not say: the topic keeps its last value.
    pub retained: Option<u64>,
    pub uptime: Duration,
}

impl Status {
    /// Each topic with its payload, as Mosquitto writes them: decimal text.
    fn payloads(&self) -> Vec<(&'static str, String)> {
        let mut payloads = vec![
            (CLIENTS_CONNECTED, self.connected.to_string()),
            (PUBLISH_RECEIVED, self.publish_received.to_string()),
            (PUBLISH_SENT, self.publish_sent.to_string()),
            (UPTIME, format!("{} seconds", self.uptime.as_secs())),
            (
                VERSION,
                format!("retaind version {}", env!("CARGO_PKG_VERSION")),
            ),
        ];
        if let Some(retained) = self.retained {
            payloads.push((RETAINED_COUNT, retained.to_string()));
        }
        payloads
    }
}

/// The latest message of each status topic.
pub(super) struct SysTopics {
    started: Instant,
    latest: Mutex<Vec<Arc<Message>>>,
}

impl SysTopics {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            latest: Mutex::new(Vec::new()),
        }
    }

    fn latest(&self) -> MutexGuard<'_, Vec<Arc<Message>>> {
        // Replaced whole under the lock; a panic cannot leave it torn.
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues for a new subscription to `filter` the latest value of each status topic it
    /// matches and `session` may receive, flagged RETAIN [MQTT-3.3.1-9]. A leading wildcard
    /// never matches them [MQTT-4.7.2-1]: `#` subscribers get none.
    pub fn send_latest(&self, session: &Session, filter: &TopicFilter, options: SubOptions) {
        // Held while queueing, so that a newer value routed meanwhile (`publish`, under the
        // same lock) comes after this one and is the one the client ends with.
        let latest = self.latest();
        let may_receive = session.receive_check();
        let wanted: Vec<Delivery> = latest
            .iter()
            .filter(|m| filter.matches(&m.topic) && may_receive(&m.topic))
            .map(|m| Delivery {
                message: m.clone(),
                qos: m.qos.min(options.qos),
                retain: true,
                subscription_ids: options.subscription_id.into_iter().collect(),
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let mut state = session.state();
        for delivery in wanted {
            state.push_retained(delivery);
        }
    }

    /// Takes `status` as the latest values and sends the ones that changed to this node's
    /// subscribers, and only theirs: the values are this node's.
    fn publish(&self, broker: &Broker, status: &Status) {
        let now = broker.store().clock().now_ms();
        let mut latest = self.latest();
        for (topic, payload) in status.payloads() {
            let at = latest.iter().position(|m| m.topic.as_str() == topic);
            if at.is_some_and(|i| latest[i].payload == payload.as_bytes()) {
                continue;
            }
            let message = Arc::new(Message::published(
                Publication {
                    topic: TopicName::from_stored(topic.to_owned()),
                    payload: Bytes::from(payload),
                    // Superseded at the next interval, so never worth a retransmission, and
                    // never the message that disconnects a slow subscriber.
                    qos: Qos::AtMostOnce,
                    retain: true,
                    properties: MessageProperties::default(),
                    expiry_secs: None,
                },
                None,
                now,
            ));
            match at {
                Some(i) => latest[i] = message.clone(),
                None => latest.push(message.clone()),
            }
            broker.sessions().route(message, now, true);
        }
    }
}

/// Publishes the status topics every `interval` (now, then on each tick) until the broker
/// shuts down or is dropped. Holds the broker weakly, like the metrics probe.
pub(super) fn start(broker: &Broker, interval: Duration) {
    let weak = Arc::downgrade(&broker.inner);
    let shutdown = broker.shutdown_signal().clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            if !tick(&weak).await {
                return;
            }
        }
    });
}

/// One round of values; false once the broker is gone.
async fn tick(weak: &Weak<Inner>) -> bool {
    let Some(inner) = weak.upgrade() else {
        return false;
    };
    let broker = Broker { inner };
    let retained = match broker.store().count(None).await {
        Ok(n) => Some(n),
        Err(e) => {
            // The store logs its failures in summary; the topic keeps its last value.
            tracing::debug!(error = %e, "the retained count for $SYS could not be read");
            None
        }
    };
    let status = Status {
        connected: broker.connections(),
        publish_received: broker.metrics().mqtt_received_total(),
        publish_sent: broker.metrics().mqtt_sent_total(),
        retained,
        uptime: broker.inner.sys.started.elapsed(),
    };
    broker.inner.sys.publish(&broker, &status);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(connected: usize, retained: Option<u64>) -> Status {
        Status {
            connected,
            publish_received: 7,
            publish_sent: 9,
            retained,
            uptime: Duration::from_millis(61_900),
        }
    }

    #[test]
    fn payloads_are_mosquittos_decimal_text() {
        let payloads = status(3, Some(12)).payloads();
        let of = |topic| {
            payloads
                .iter()
                .find(|(t, _)| *t == topic)
                .map(|(_, p)| p.as_str())
        };
        assert_eq!(of(CLIENTS_CONNECTED), Some("3"));
        assert_eq!(of(PUBLISH_RECEIVED), Some("7"));
        assert_eq!(of(PUBLISH_SENT), Some("9"));
        assert_eq!(of(RETAINED_COUNT), Some("12"));
        assert_eq!(of(UPTIME), Some("61 seconds"));
        assert!(of(VERSION).unwrap().starts_with("retaind version "));
    }

    #[test]
    fn an_unknown_retained_count_is_left_out_not_zero() {
        let payloads = status(0, None).payloads();
        assert!(payloads.iter().all(|(t, _)| *t != RETAINED_COUNT));
    }

    #[test]
    fn every_topic_is_a_valid_broker_status_topic() {
        for (topic, _) in status(0, Some(0)).payloads() {
            let name = TopicName::parse(topic, crate::topic::TopicLimits::default()).unwrap();
            assert!(name.is_broker_status(), "{topic}");
        }
    }
}
