//! An inbound PUBLISH checked and turned into a [`Message`], with the client's MQTT 5 topic
//! aliases. No I/O and no permissions: what is refused here is refused for what the packet
//! says, the same for every client.

use std::collections::HashMap;

use super::config::BrokerConfig;
use super::inbound_qos::Refusal;
use super::message::Message;
use super::tree::ClientKey;
use super::wire;
use crate::mqtt::{ByteString, DisconnectReasonCode as R, Publish, PublishAckReason};
use crate::store;
use crate::topic::{TopicError, TopicName};

/// The reason string of a publish refused for its user properties.
const USER_PROPERTIES_TOO_LARGE: &str = "user properties over 8192 bytes";

/// The MQTT 5 topic aliases a client set up [MQTT-3.3.2-10], at most `--mqtt` topic alias
/// maximum of them since a larger alias is refused.
#[derive(Debug, Default)]
pub(super) struct Aliases(HashMap<u16, TopicName>);

/// Validates an inbound PUBLISH and turns it into a message from `client`; `now_ms` starts
/// its expiry.
pub(super) fn message(
    p: Publish,
    aliases: &mut Aliases,
    cfg: &BrokerConfig,
    client: &ClientKey,
    now_ms: i64,
) -> Result<Message, Refusal> {
    let props = p.properties.unwrap_or_default();
    let topic = match props.topic_alias {
        Some(alias) if alias.get() > cfg.topic_alias_maximum => {
            return Err(Refusal::Close(R::TopicAliasInvalid)); // [MQTT-3.3.2-9]
        }
        Some(alias) if p.topic.is_empty() => match aliases.0.get(&alias.get()) {
            Some(topic) => topic.clone(),
            None => return Err(Refusal::Close(R::ProtocolError)),
        },
        alias => {
            let topic = topic_name(&p.topic, cfg)?;
            if let Some(alias) = alias {
                aliases.0.insert(alias.get(), topic.clone());
            }
            topic
        }
    };
    if p.payload.len() > cfg.max_payload_bytes {
        return Err(Refusal::Close(R::PacketTooLarge));
    }
    if p.retain && topic.is_reserved() {
        // Like the HTTP API: `$` topics belong to the server [MQTT-4.7.2-1].
        return Err(Refusal::Invalid(R::TopicNameInvalid));
    }
    // [MQTT-3.3.2-19] a payload declared UTF-8 must be UTF-8.
    if props.is_utf8_payload && std::str::from_utf8(&p.payload).is_err() {
        return Err(Refusal::Invalid(R::PayloadFormatInvalid));
    }
    let properties = wire::message_properties(
        &props.user_properties,
        props.content_type.as_ref(),
        props.response_topic.as_ref(),
        props.correlation_data.as_ref(),
        props.is_utf8_payload,
        cfg.topic_limits,
    )
    .map_err(|_| Refusal::Close(R::ProtocolError))?;
    if store::user_properties_wire_len(&properties.user_properties) > store::MAX_USER_PROPERTY_BYTES
    {
        // The limit the HTTP API applies, measured the same way. 0x83: the
        // publish is valid but not accepted; no PUBACK code names a size limit.
        return Err(Refusal::Declined {
            reason: PublishAckReason::ImplementationSpecificError,
            why: USER_PROPERTIES_TOO_LARGE,
        });
    }
    Ok(Message {
        topic,
        payload: p.payload,
        qos: wire::store_qos(p.qos),
        retain: p.retain,
        properties,
        expires_at_ms: props
            .message_expiry_interval
            .map(|s| now_ms + i64::from(s.get()) * 1000),
        origin: Some(client.clone()),
        wire: Default::default(),
    })
}

fn topic_name(raw: &ByteString, cfg: &BrokerConfig) -> Result<TopicName, Refusal> {
    TopicName::parse(&**raw, cfg.topic_limits).map_err(|e| match e {
        // [MQTT-3.3.2-1] a topic name is required without an alias.
        TopicError::Empty => Refusal::Close(R::ProtocolError),
        // [MQTT-3.3.2-2] wildcards never appear in topic names.
        TopicError::Wildcard => Refusal::Close(R::TopicNameInvalid),
        // [MQTT-1.5.4-2] U+0000 in a UTF-8 string makes the packet malformed.
        TopicError::NullCharacter => Refusal::Close(R::MalformedPacket),
        TopicError::TooLong { .. } | TopicError::TooManyLevels { .. } => {
            Refusal::Invalid(R::TopicNameInvalid)
        }
    })
}
