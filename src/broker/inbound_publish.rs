//! An inbound PUBLISH checked and turned into a [`Message`], with the client's MQTT 5 topic
//! aliases. No I/O and no permissions: what is refused here is refused for what the packet
//! says, the same for every client.

use std::collections::HashMap;
use std::num::NonZeroU32;

use super::config::BrokerConfig;
use super::inbound_qos::Refusal;
use super::message::{Message, Publication};
use super::wire;
use crate::mqtt::{ByteString, DisconnectReasonCode as R, Publish, PublishAckReason};
use crate::store;
use crate::topic::ClientKey;
use crate::topic::{TopicError, TopicName};

/// The reason string of a publish refused for its user properties.
const USER_PROPERTIES_TOO_LARGE: &str = "user properties over 8192 bytes";

/// The MQTT 5 topic aliases a client set up [MQTT-3.3.2-10]; an alias above the Topic Alias
/// Maximum we advertised is refused, so there are at most that many.
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
    // A payload declared UTF-8 must be UTF-8: MQTT 5 §3.3.2.3.2 lets the receiver check and
    // answer 0x99 Payload format invalid (no numbered clause).
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
    let publication = Publication {
        topic,
        payload: p.payload,
        qos: p.qos.into(),
        retain: p.retain,
        properties,
        expiry_secs: props.message_expiry_interval.map(NonZeroU32::get),
    };
    Ok(Message::published(
        publication,
        Some(client.clone()),
        now_ms,
    ))
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

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use bytes::Bytes;

    use super::*;
    use crate::mqtt::{PublishProperties, QoS};

    fn publish(topic: &str, payload: &'static [u8]) -> Publish {
        Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: ByteString::from(topic),
            packet_id: NonZeroU16::new(1),
            payload: Bytes::from_static(payload),
            properties: Some(PublishProperties::default()),
        }
    }

    fn with_alias(mut p: Publish, alias: u16) -> Publish {
        if let Some(props) = p.properties.as_mut() {
            props.topic_alias = NonZeroU16::new(alias);
        }
        p
    }

    fn parse(p: Publish, aliases: &mut Aliases) -> Result<Message, Refusal> {
        let client: ClientKey = "c".into();
        message(p, aliases, &BrokerConfig::default(), &client, 1_000)
    }

    #[test]
    fn an_alias_set_with_a_topic_stands_for_it_later() {
        let mut aliases = Aliases::default();
        let first = parse(with_alias(publish("a/b", b"1"), 3), &mut aliases).unwrap();
        let second = parse(with_alias(publish("", b"2"), 3), &mut aliases).unwrap();
        assert_eq!(first.topic, second.topic);
        assert_eq!(second.origin.as_deref(), Some("c"));
    }

    #[test]
    fn an_unknown_or_too_large_alias_closes_the_connection() {
        let mut aliases = Aliases::default();
        assert_eq!(
            parse(with_alias(publish("", b"x"), 3), &mut aliases).unwrap_err(),
            Refusal::Close(R::ProtocolError)
        );
        let over = BrokerConfig::default().topic_alias_maximum + 1;
        assert_eq!(
            parse(with_alias(publish("a", b"x"), over), &mut aliases).unwrap_err(),
            Refusal::Close(R::TopicAliasInvalid)
        );
    }

    #[test]
    fn a_retained_publish_to_a_reserved_topic_is_invalid_not_a_protocol_error() {
        let mut p = publish("$SYS/x", b"x");
        p.retain = true;
        assert_eq!(
            parse(p, &mut Aliases::default()).unwrap_err(),
            Refusal::Invalid(R::TopicNameInvalid)
        );
    }

    #[test]
    fn a_payload_declared_utf8_must_be_utf8() {
        let mut p = publish("t", b"\xff");
        if let Some(props) = p.properties.as_mut() {
            props.is_utf8_payload = true;
        }
        assert_eq!(
            parse(p, &mut Aliases::default()).unwrap_err(),
            Refusal::Invalid(R::PayloadFormatInvalid)
        );
    }

    #[test]
    fn topic_errors_close_or_are_answered_by_kind() {
        let mut aliases = Aliases::default();
        assert_eq!(
            parse(publish(&"x".repeat(300), b""), &mut aliases).unwrap_err(),
            Refusal::Invalid(R::TopicNameInvalid)
        );
        assert_eq!(
            parse(publish("a/+", b""), &mut aliases).unwrap_err(),
            Refusal::Close(R::TopicNameInvalid)
        );
        assert_eq!(
            parse(publish("", b""), &mut aliases).unwrap_err(),
            Refusal::Close(R::ProtocolError)
        );
    }

    #[test]
    fn the_message_expiry_runs_from_now() {
        let mut p = publish("t", b"x");
        if let Some(props) = p.properties.as_mut() {
            props.message_expiry_interval = std::num::NonZeroU32::new(5);
        }
        let m = parse(p, &mut Aliases::default()).unwrap();
        assert_eq!(m.expires_at_ms, Some(6_000));
    }
}
