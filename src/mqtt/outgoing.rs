//! The PUBLISH packets the broker sends, written from borrowed parts.
//!
//! rmqtt-codec encodes an owned packet. For every delivery of a fan-out the broker built one
//! (topic, payload and properties cloned, the packet boxed), encoded it and dropped it: with
//! the shared reference counts that touches, about a fifth of a fan-out node's CPU samples.
//! This writes the same bytes straight from the message as the broker holds it:
//! `tests/mqtt_codec.rs` compares them with the codec's for every field and both versions.
//!
//! One difference is deliberate. MQTT 5's Maximum Packet Size is the size of the whole packet
//! [MQTT-3.1.2-24], and a packet of exactly that size may be sent. The codec keeps five bytes of
//! margin for the fixed header whatever its length, so it refused a PUBLISH up to four bytes
//! under the limit: a message the client would have taken, skipped as too large.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, BytesMut};
use rmqtt_codec::error::EncodeError;

use super::{QoS, Version};

/// The longest remaining length a fixed header can state (four bytes of variable length).
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// MQTT 5 property identifiers (section 2.2.2.2).
const PAYLOAD_FORMAT: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const USER_PROPERTY: u8 = 0x26;

/// A user property as its holder keeps it.
pub trait KeyValue {
    fn key(&self) -> &str;
    fn value(&self) -> &str;
}

impl<S: AsRef<str>> KeyValue for (S, S) {
    fn key(&self) -> &str {
        self.0.as_ref()
    }
    fn value(&self) -> &str {
        self.1.as_ref()
    }
}

/// A PUBLISH to send, borrowed from the message it carries.
#[derive(Debug)]
pub struct OutgoingPublish<'a, U> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    /// Present exactly when `qos` is 1 or 2.
    pub packet_id: Option<NonZeroU16>,
    pub payload: &'a [u8],
    /// MQTT 5 only: a 3.1.1 PUBLISH has none.
    pub properties: OutgoingProperties<'a, U>,
}

/// The MQTT 5 properties of an [`OutgoingPublish`]. The server never sends a Topic Alias.
#[derive(Debug)]
pub struct OutgoingProperties<'a, U> {
    pub correlation_data: Option<&'a [u8]>,
    pub message_expiry_interval: Option<NonZeroU32>,
    pub content_type: Option<&'a str>,
    pub utf8_payload: bool,
    pub response_topic: Option<&'a str>,
    pub subscription_ids: &'a [NonZeroU32],
    pub user_properties: &'a [U],
}

/// Appends `p` to `dst` as `version` frames it. `max_packet_size` is the client's Maximum
/// Packet Size (MQTT 5; 0 for none): a larger packet is refused with
/// [`EncodeError::OverMaxPacketSize`] and nothing is written.
pub(super) fn encode<U: KeyValue>(
    p: &OutgoingPublish<'_, U>,
    version: Version,
    max_packet_size: u32,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, Some(_)) => return Err(EncodeError::MalformedPacket),
        (QoS::AtLeastOnce | QoS::ExactlyOnce, None) => return Err(EncodeError::PacketIdRequired),
        _ => {}
    }
    let properties = match version {
        Version::V5 => Some(properties_len(&p.properties)?),
        Version::V3 => None,
    };
    let remaining = string_len(p.topic)?
        + p.packet_id.map_or(0, |_| 2)
        + properties.map_or(0, |len| var_int_len(len) + len)
        + p.payload.len();
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::InvalidLength);
    }
    let total = 1 + var_int_len(remaining) + remaining;
    if version == Version::V5 && max_packet_size != 0 && total > max_packet_size as usize {
        return Err(EncodeError::OverMaxPacketSize {
            size: u32::try_from(total).unwrap_or(u32::MAX),
            max: max_packet_size,
        });
    }
    dst.reserve(total);
    dst.put_u8(0x30 | (u8::from(p.dup) << 3) | (u8::from(p.qos) << 1) | u8::from(p.retain));
    put_var_int(remaining, dst);
    put_bytes(p.topic.as_bytes(), dst);
    if let Some(id) = p.packet_id {
        dst.put_u16(id.get());
    }
    if let Some(len) = properties {
        put_var_int(len, dst);
        put_properties(&p.properties, dst);
    }
    dst.put_slice(p.payload);
    Ok(())
}

/// The properties' length, without the variable-length integer that states it.
fn properties_len<U: KeyValue>(p: &OutgoingProperties<'_, U>) -> Result<usize, EncodeError> {
    let mut len = 0;
    if let Some(data) = p.correlation_data {
        len += 1 + string_len_bytes(data)?;
    }
    if p.message_expiry_interval.is_some() {
        len += 1 + 4;
    }
    if let Some(t) = p.content_type {
        len += 1 + string_len(t)?;
    }
    if p.utf8_payload {
        len += 1 + 1;
    }
    if let Some(t) = p.response_topic {
        len += 1 + string_len(t)?;
    }
    for id in p.subscription_ids {
        len += 1 + var_int_len(id.get() as usize);
    }
    for u in p.user_properties {
        len += 1 + string_len(u.key())? + string_len(u.value())?;
    }
    Ok(len)
}

/// In the codec's order, so that both write the same bytes.
fn put_properties<U: KeyValue>(p: &OutgoingProperties<'_, U>, dst: &mut BytesMut) {
    if let Some(data) = p.correlation_data {
        dst.put_u8(CORRELATION_DATA);
        put_bytes(data, dst);
    }
    if let Some(secs) = p.message_expiry_interval {
        dst.put_u8(MESSAGE_EXPIRY_INTERVAL);
        dst.put_u32(secs.get());
    }
    if let Some(t) = p.content_type {
        dst.put_u8(CONTENT_TYPE);
        put_bytes(t.as_bytes(), dst);
    }
    if p.utf8_payload {
        dst.put_u8(PAYLOAD_FORMAT);
        dst.put_u8(1);
    }
    if let Some(t) = p.response_topic {
        dst.put_u8(RESPONSE_TOPIC);
        put_bytes(t.as_bytes(), dst);
    }
    for id in p.subscription_ids {
        dst.put_u8(SUBSCRIPTION_IDENTIFIER);
        put_var_int(id.get() as usize, dst);
    }
    for u in p.user_properties {
        dst.put_u8(USER_PROPERTY);
        put_bytes(u.key().as_bytes(), dst);
        put_bytes(u.value().as_bytes(), dst);
    }
}

fn string_len(s: &str) -> Result<usize, EncodeError> {
    string_len_bytes(s.as_bytes())
}

/// A string or binary field: two bytes of length, then at most 65,535 bytes.
fn string_len_bytes(b: &[u8]) -> Result<usize, EncodeError> {
    if b.len() > usize::from(u16::MAX) {
        return Err(EncodeError::InvalidLength);
    }
    Ok(2 + b.len())
}

/// Only after `string_len_bytes` accepted `b`.
fn put_bytes(b: &[u8], dst: &mut BytesMut) {
    dst.put_u16(b.len() as u16);
    dst.put_slice(b);
}

fn var_int_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Only for `n` ≤ [`MAX_REMAINING_LENGTH`].
fn put_var_int(mut n: usize, dst: &mut BytesMut) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            dst.put_u8(byte);
            return;
        }
        dst.put_u8(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish<'a>(
        qos: QoS,
        packet_id: Option<u16>,
        topic: &'a str,
    ) -> OutgoingPublish<'a, (&'a str, &'a str)> {
        OutgoingPublish {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id: packet_id.and_then(NonZeroU16::new),
            payload: b"p",
            properties: OutgoingProperties {
                correlation_data: None,
                message_expiry_interval: None,
                content_type: None,
                utf8_payload: false,
                response_topic: None,
                subscription_ids: &[],
                user_properties: &[],
            },
        }
    }

    fn refusal(p: &OutgoingPublish<'_, (&str, &str)>, version: Version) -> EncodeError {
        let mut buf = BytesMut::new();
        let e = encode(p, version, 0, &mut buf).expect_err("refused");
        assert!(buf.is_empty(), "nothing written for a refused packet");
        e
    }

    #[test]
    fn a_packet_id_goes_with_qos_1_and_2_only() {
        for version in [Version::V3, Version::V5] {
            let e = refusal(&publish(QoS::AtMostOnce, Some(1), "t"), version);
            assert!(matches!(e, EncodeError::MalformedPacket), "{e:?}");
            let e = refusal(&publish(QoS::AtLeastOnce, None, "t"), version);
            assert!(matches!(e, EncodeError::PacketIdRequired), "{e:?}");
        }
    }

    #[test]
    fn a_string_longer_than_its_length_prefix_allows_is_refused() {
        let long = "t".repeat(usize::from(u16::MAX) + 1);
        for version in [Version::V3, Version::V5] {
            let e = refusal(&publish(QoS::AtMostOnce, None, &long), version);
            assert!(matches!(e, EncodeError::InvalidLength), "{e:?}");
        }
        let mut p = publish(QoS::AtMostOnce, None, "t");
        p.properties.content_type = Some(&long);
        let e = refusal(&p, Version::V5);
        assert!(matches!(e, EncodeError::InvalidLength), "{e:?}");
    }

    #[test]
    fn a_3_1_1_client_has_no_maximum_packet_size() {
        let mut buf = BytesMut::new();
        encode(
            &publish(QoS::AtMostOnce, None, "topic"),
            Version::V3,
            3,
            &mut buf,
        )
        .expect("3.1.1 has no limit");
        assert_eq!(&buf[..], b"\x30\x08\x00\x05topicp");
    }

    #[test]
    fn the_remaining_length_takes_as_many_bytes_as_it_needs() {
        for (n, bytes) in [(127, 1), (128, 2), (16_383, 2), (16_384, 3), (2_097_152, 4)] {
            let mut buf = BytesMut::new();
            put_var_int(n, &mut buf);
            assert_eq!((buf.len(), var_int_len(n)), (bytes, bytes), "{n}");
        }
    }
}
