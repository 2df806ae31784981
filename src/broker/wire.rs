//! Broker messages ⇄ MQTT PUBLISH packets: the properties, the remaining expiry, the flags.

use std::num::{NonZeroU16, NonZeroU32};

use bytestring::ByteString;

use super::message::Delivery;
use crate::mqtt::{KeyValue, OutgoingProperties, OutgoingPublish};
use crate::store::{Clock, MessageProperties, PayloadFormat, UserProperty};
use crate::topic::{TopicError, TopicLimits, TopicName};

/// The PUBLISH for a delivery, borrowed from its message, or `None` if the message expired
/// while it waited [MQTT-3.3.2-5]. The expiry sent is what is left of it [MQTT-3.3.2-6].
pub(super) fn publish<'a>(
    delivery: &'a Delivery,
    packet_id: Option<NonZeroU16>,
    dup: bool,
    clock: &Clock,
) -> Option<OutgoingPublish<'a, UserProperty>> {
    let m = &delivery.message;
    // The clock is read only for a message that expires: most do not, and reading it for each
    // delivery was about 2% of a fan-out's CPU samples.
    let message_expiry_interval = match m.expires_at_ms {
        None => None,
        Some(at) => {
            let now_ms = clock.now_ms();
            if at <= now_ms {
                return None;
            }
            let secs = (at - now_ms + 999) / 1000;
            NonZeroU32::new(u32::try_from(secs).unwrap_or(u32::MAX))
        }
    };
    let p = &m.properties;
    Some(OutgoingPublish {
        dup,
        qos: delivery.qos.into(),
        retain: delivery.retain,
        topic: m.topic.as_str(),
        packet_id,
        payload: &m.payload,
        properties: OutgoingProperties {
            correlation_data: p.correlation_data.as_deref(),
            message_expiry_interval,
            content_type: p.content_type.as_deref(),
            utf8_payload: p.payload_format == PayloadFormat::Utf8,
            response_topic: p.response_topic.as_ref().map(TopicName::as_str),
            subscription_ids: &delivery.subscription_ids,
            user_properties: &p.user_properties,
        },
    })
}

impl KeyValue for UserProperty {
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> &str {
        &self.value
    }
}

/// The MQTT 5 properties of an incoming PUBLISH (or Will), as the broker keeps them. The
/// response topic is a topic name and must follow the same rules [MQTT-3.3.2-14].
pub(super) fn message_properties(
    user_properties: &[(ByteString, ByteString)],
    content_type: Option<&ByteString>,
    response_topic: Option<&ByteString>,
    correlation_data: Option<&bytes::Bytes>,
    utf8: bool,
    limits: TopicLimits,
) -> Result<MessageProperties, TopicError> {
    Ok(MessageProperties {
        user_properties: user_properties
            .iter()
            .map(|(k, v)| UserProperty {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        content_type: content_type.map(|c| c.to_string()),
        response_topic: response_topic
            .map(|t| TopicName::parse(t.to_string(), limits))
            .transpose()?,
        correlation_data: correlation_data.cloned(),
        payload_format: if utf8 {
            PayloadFormat::Utf8
        } else {
            PayloadFormat::Unspecified
        },
    })
}
