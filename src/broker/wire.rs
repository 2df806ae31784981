//! Broker messages ⇄ MQTT PUBLISH packets: the properties, the remaining expiry, the flags.

use std::num::{NonZeroU16, NonZeroU32};

use bytestring::ByteString;

use super::message::{Delivery, Message};
use crate::mqtt::{Publish, PublishProperties};
use crate::store::{Clock, MessageProperties, PayloadFormat, UserProperty};
use crate::topic::{TopicError, TopicLimits, TopicName};

/// The PUBLISH for a delivery, or `None` if the message expired while it waited
/// [MQTT-3.3.2-5]. The expiry sent is what is left of it [MQTT-3.3.2-6].
pub(super) fn publish_packet(
    delivery: &Delivery,
    packet_id: Option<NonZeroU16>,
    dup: bool,
    clock: &Clock,
) -> Option<Publish> {
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
    let (topic, shared) = m.wire.get_or_init(|| wire_form(m));
    let mut properties = shared.clone();
    properties.message_expiry_interval = message_expiry_interval;
    properties.subscription_ids = delivery.subscription_ids.clone();
    Some(Publish {
        dup,
        retain: delivery.retain,
        qos: delivery.qos.into(),
        topic: topic.clone(),
        packet_id,
        payload: m.payload.clone(),
        properties: Some(properties),
    })
}

/// What every subscriber's PUBLISH of `m` has in common, cached in [`Message::wire`].
fn wire_form(m: &Message) -> (ByteString, PublishProperties) {
    let p = &m.properties;
    let properties = PublishProperties {
        topic_alias: None,
        correlation_data: p.correlation_data.clone(),
        message_expiry_interval: None,
        content_type: p.content_type.as_deref().map(ByteString::from),
        user_properties: p
            .user_properties
            .iter()
            .map(|u| (u.key.as_str().into(), u.value.as_str().into()))
            .collect(),
        is_utf8_payload: p.payload_format == PayloadFormat::Utf8,
        response_topic: p
            .response_topic
            .as_ref()
            .map(|t| ByteString::from(t.as_str())),
        subscription_ids: Vec::new(),
    };
    (ByteString::from(m.topic.as_str()), properties)
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
