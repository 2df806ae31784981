//! The MQTT packet codec: every packet type survives encode → decode, through rmqtt-codec and
//! through retaind's own decoding path (`retaind::mqtt::Codec`: version detection, then the
//! version's codec, then 3.1.1 → 5 translation). Byte-level fixtures pin the wire format in both
//! directions, and malformed inputs must give an error, never a panic.
//!
//! These tests guard rmqtt-codec upgrades (docs/decisions/004-mqtt-codec.md) as much as our code.

mod mqtt_codec {
    pub mod fixtures;
    pub mod strategies;
}

use bytes::BytesMut;
use bytestring::ByteString;
use mqtt_codec::fixtures::{self, Direction, Wire};
use mqtt_codec::strategies::*;
use proptest::prelude::*;
use retaind::mqtt::{Codec, OutgoingProperties, OutgoingPublish, decode_stream};
use rmqtt_codec::error::EncodeError;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::{v3, v5};
use tokio_util::codec::{Decoder, Encoder};

/// Generous: strategies make packets of a few hundred bytes at most.
const MAX_PACKET_SIZE: u32 = 64 * 1024;

fn v5_encode(packet: v5::Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    let result = v5::Codec::new(MAX_PACKET_SIZE, 0).encode(packet, &mut buf);
    assert!(result.is_ok(), "encode: {result:?}");
    buf
}

fn v3_encode(packet: v3::Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    let result = v3::Codec::new(MAX_PACKET_SIZE).encode(packet, &mut buf);
    assert!(result.is_ok(), "encode: {result:?}");
    buf
}

/// The single packet `buf` holds, decoded by rmqtt-codec; the whole buffer must be consumed.
fn v5_decode(mut buf: BytesMut) -> Result<v5::Packet, TestCaseError> {
    let decoded = v5::Codec::new(MAX_PACKET_SIZE, 0).decode(&mut buf);
    let Ok(Some((packet, _))) = decoded else {
        return Err(TestCaseError::fail(format!("decode: {decoded:?}")));
    };
    prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(packet)
}

fn v3_decode(mut buf: BytesMut) -> Result<v3::Packet, TestCaseError> {
    let decoded = v3::Codec::new(MAX_PACKET_SIZE).decode(&mut buf);
    let Ok(Some((packet, _))) = decoded else {
        return Err(TestCaseError::fail(format!("decode: {decoded:?}")));
    };
    prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(packet)
}

/// Feeds `bytes` to one `Codec` in two reads split at `split`, as a socket might deliver them,
/// and checks that the result is the same as decoding the whole buffer at once.
fn decode_split(bytes: &[u8], split: usize) -> Result<Vec<v5::Packet>, TestCaseError> {
    let (whole, error) = decode_stream(&mut BytesMut::from(bytes), MAX_PACKET_SIZE);
    prop_assert!(error.is_none(), "decode: {error:?}");

    let split = split % (bytes.len() + 1);
    let mut codec = Codec::new(MAX_PACKET_SIZE);
    let mut buf = BytesMut::from(&bytes[..split]);
    let mut packets = Vec::new();
    for rest in [&bytes[split..], &[]] {
        while let Some(packet) = codec
            .decode(&mut buf)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
        {
            packets.push(packet);
        }
        buf.extend_from_slice(rest);
    }
    prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    prop_assert_eq!(&packets, &whole);
    Ok(whole)
}

/// What retaind's decoder must make of a 3.1.1 packet: the MQTT 5 packet with the same meaning.
/// Written out here, independently of `src/mqtt/v3.rs`, as the specification of that mapping.
fn v3_meaning(packet: v3::Packet) -> v5::Packet {
    use v5::Packet as P;
    let ack = |packet_id| v5::PublishAck {
        packet_id,
        reason_code: v5::PublishAckReason::Success,
        properties: Vec::new(),
        reason_string: None,
    };
    let ack2 = |packet_id| v5::PublishAck2 {
        packet_id,
        reason_code: v5::PublishAck2Reason::Success,
        properties: Vec::new(),
        reason_string: None,
    };
    match packet {
        v3::Packet::Connect(c) => P::Connect(Box::new(v5::Connect {
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            // A 3.1.1 persistent session lasts until a clean connect.
            session_expiry_interval_secs: if c.clean_session { 0 } else { u32::MAX },
            auth_method: None,
            auth_data: None,
            request_problem_info: true,
            request_response_info: false,
            receive_max: None,
            topic_alias_max: 0,
            user_properties: Vec::new(),
            max_packet_size: None,
            last_will: c.last_will.map(|w| v5::LastWill {
                qos: w.qos,
                retain: w.retain,
                topic: w.topic,
                message: w.message,
                will_delay_interval_sec: None,
                correlation_data: None,
                message_expiry_interval: None,
                content_type: None,
                user_properties: Vec::new(),
                is_utf8_payload: None,
                response_topic: None,
            }),
            client_id: c.client_id,
            username: c.username,
            password: c.password,
            cert: None,
        })),
        v3::Packet::Publish(p) => P::Publish(p),
        v3::Packet::PublishAck { packet_id } => P::PublishAck(ack(packet_id)),
        v3::Packet::PublishReceived { packet_id } => P::PublishReceived(ack(packet_id)),
        v3::Packet::PublishRelease { packet_id } => P::PublishRelease(ack2(packet_id)),
        v3::Packet::PublishComplete { packet_id } => P::PublishComplete(ack2(packet_id)),
        v3::Packet::Subscribe {
            packet_id,
            topic_filters,
        } => P::Subscribe(v5::Subscribe {
            packet_id,
            id: None,
            user_properties: Vec::new(),
            // 3.1.1 subscriptions always get retained messages, and see their own publishes.
            topic_filters: topic_filters
                .into_iter()
                .map(|(filter, qos)| {
                    let options = v5::SubscriptionOptions {
                        qos,
                        ..Default::default()
                    };
                    (filter, options)
                })
                .collect(),
        }),
        v3::Packet::Unsubscribe {
            packet_id,
            topic_filters,
        } => P::Unsubscribe(v5::Unsubscribe {
            packet_id,
            user_properties: Vec::new(),
            topic_filters,
        }),
        v3::Packet::PingRequest => P::PingRequest,
        v3::Packet::Disconnect => P::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::NormalDisconnection,
            session_expiry_interval_secs: None,
            server_reference: None,
            reason_string: None,
            user_properties: Vec::new(),
        }),
        other => panic!("{other:?} is not a packet a client sends"),
    }
}

proptest! {
    #[test]
    fn v5_client_packets_round_trip_through_rmqtt_codec(packet in v5_client_packet()) {
        prop_assert_eq!(v5_decode(v5_encode(packet.clone()))?, packet);
    }

    #[test]
    fn v5_server_packets_round_trip_through_rmqtt_codec(packet in v5_server_packet()) {
        prop_assert_eq!(v5_decode(v5_encode(packet.clone()))?, packet);
    }

    #[test]
    fn v3_connect_round_trips_through_rmqtt_codec(connect in v3_connect()) {
        let packet = v3::Packet::Connect(Box::new(connect));
        prop_assert_eq!(v3_decode(v3_encode(packet.clone()))?, packet);
    }

    #[test]
    fn v3_client_packets_round_trip_through_rmqtt_codec(packet in v3_client_packet()) {
        prop_assert_eq!(v3_decode(v3_encode(packet.clone()))?, packet);
    }

    #[test]
    fn v3_server_packets_round_trip_through_rmqtt_codec(packet in v3_server_packet()) {
        prop_assert_eq!(v3_decode(v3_encode(packet.clone()))?, packet);
    }

    /// A v5 session as retaind reads it, however the bytes are split: CONNECT, then packets
    /// that come back unchanged.
    #[test]
    fn v5_client_packets_decode_unchanged_through_retaind(
        connect in v5_connect(),
        packets in proptest::collection::vec(v5_client_packet(), 0..4),
        split in any::<usize>(),
    ) {
        let connect = v5::Packet::Connect(Box::new(connect));
        let mut bytes = v5_encode(connect.clone());
        for packet in &packets {
            bytes.extend_from_slice(&v5_encode(packet.clone()));
        }
        let decoded = decode_split(&bytes, split)?;
        let expected: Vec<_> = std::iter::once(connect).chain(packets).collect();
        prop_assert_eq!(decoded, expected);
    }

    /// A 3.1.1 session as retaind reads it: each packet as the MQTT 5 packet that means the same.
    #[test]
    fn v3_client_packets_decode_as_their_v5_meaning_through_retaind(
        connect in v3_connect(),
        packets in proptest::collection::vec(v3_client_packet(), 0..4),
        split in any::<usize>(),
    ) {
        let connect = v3::Packet::Connect(Box::new(connect));
        let mut bytes = v3_encode(connect.clone());
        for packet in &packets {
            bytes.extend_from_slice(&v3_encode(packet.clone()));
        }
        let decoded = decode_split(&bytes, split)?;
        let expected: Vec<_> = std::iter::once(connect).chain(packets).map(v3_meaning).collect();
        prop_assert_eq!(decoded, expected);
    }

    /// What retaind sends a 3.1.1 client is the 3.1.1 packet with the same meaning; PUBLISH
    /// loses its MQTT 5 properties.
    #[test]
    fn v3_server_packets_encode_through_retaind(packet in v3_server_packet()) {
        // 6 is a reserved return code, which the broker never sends.
        prop_assume!(!matches!(
            packet,
            v3::Packet::ConnectAck(v3::ConnectAck { return_code: v3::ConnectAckReason::Reserved, .. })
        ));
        let mut codec = Codec::new(MAX_PACKET_SIZE);
        let connect = v3::Connect { clean_session: true, ..Default::default() };
        let decoded = codec.decode(&mut v3_encode(v3::Packet::Connect(Box::new(connect))));
        prop_assert!(matches!(decoded, Ok(Some(v5::Packet::Connect(_)))), "{:?}", decoded);
        let mut buf = BytesMut::new();
        codec.encode(v3_meaning_of_server(&packet), &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(v3_decode(buf)?, packet);
    }
}

/// A codec that has read a CONNECT of `version` (3.1.1 when false).
fn connected(v5: bool) -> Codec {
    let mut codec = Codec::new(MAX_PACKET_SIZE);
    let mut connect = if v5 {
        let connect = v5::Connect {
            clean_start: true,
            ..Default::default()
        };
        v5_encode(v5::Packet::Connect(Box::new(connect)))
    } else {
        let connect = v3::Connect {
            clean_session: true,
            ..Default::default()
        };
        v3_encode(v3::Packet::Connect(Box::new(connect)))
    };
    let decoded = codec.decode(&mut connect);
    assert!(
        matches!(decoded, Ok(Some(v5::Packet::Connect(_)))),
        "{decoded:?}"
    );
    codec
}

/// `p` as the broker hands it to the codec: borrowed, never with a Topic Alias.
fn outgoing(p: &Publish) -> OutgoingPublish<'_, (ByteString, ByteString)> {
    let props = p
        .properties
        .as_ref()
        .expect("a PUBLISH for an MQTT 5 client");
    OutgoingPublish {
        dup: p.dup,
        qos: p.qos,
        retain: p.retain,
        topic: &p.topic,
        packet_id: p.packet_id,
        payload: &p.payload,
        properties: OutgoingProperties {
            correlation_data: props.correlation_data.as_deref(),
            message_expiry_interval: props.message_expiry_interval,
            content_type: props.content_type.as_deref(),
            utf8_payload: props.is_utf8_payload,
            response_topic: props.response_topic.as_deref(),
            subscription_ids: &props.subscription_ids,
            user_properties: &props.user_properties,
        },
    }
}

fn without_alias(mut p: Publish) -> Publish {
    if let Some(props) = p.properties.as_mut() {
        props.topic_alias = None;
    }
    p
}

proptest! {
    /// The PUBLISH packets the broker sends are written by retaind from borrowed parts
    /// (`OutgoingPublish`), not by the codec: byte for byte what the codec writes, for both
    /// versions (3.1.1 without the properties).
    #[test]
    fn outgoing_publishes_are_the_codecs_bytes(
        publish in v5_server_publish().prop_map(without_alias),
        v5 in any::<bool>(),
    ) {
        let expected = if v5 {
            v5_encode(v5::Packet::Publish(Box::new(publish.clone())))
        } else {
            let v3_form = Publish { properties: None, ..publish.clone() };
            v3_encode(v3::Packet::Publish(Box::new(v3_form)))
        };
        let mut buf = BytesMut::new();
        connected(v5).encode(outgoing(&publish), &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(buf, expected);
    }

    /// MQTT 5's Maximum Packet Size counts the whole packet, its fixed header included
    /// [MQTT-3.1.2-24]: a PUBLISH one byte over it is refused and nothing is written; one
    /// that fits exactly is sent. 3.1.1 has no such limit.
    #[test]
    fn an_outgoing_publish_over_the_clients_maximum_packet_size_is_refused(
        publish in v5_server_publish().prop_map(without_alias),
        slack in -3i64..=3,
    ) {
        let size = v5_encode(v5::Packet::Publish(Box::new(publish.clone()))).len() as i64;
        let max = u32::try_from(size + slack).expect("a positive size");
        let mut codec = connected(true);
        codec.set_max_outbound_size(max);
        let mut buf = BytesMut::new();
        let result = codec.encode(outgoing(&publish), &mut buf);
        if slack >= 0 {
            prop_assert!(result.is_ok(), "{:?}", result);
            prop_assert_eq!(buf.len() as i64, size);
        } else {
            prop_assert!(
                matches!(result, Err(retaind::mqtt::Error::Encode(EncodeError::OverMaxPacketSize { size: s, max: m })) if i64::from(s) == size && m == max),
                "{:?}", result
            );
            prop_assert!(buf.is_empty());
        }
    }
}

/// The MQTT 5 packet the broker would build to send `packet` to a 3.1.1 client.
fn v3_meaning_of_server(packet: &v3::Packet) -> v5::Packet {
    use v5::Packet as P;
    match packet.clone() {
        v3::Packet::ConnectAck(a) => P::ConnectAck(Box::new(v5::ConnectAck {
            session_present: a.session_present,
            reason_code: match a.return_code {
                v3::ConnectAckReason::ConnectionAccepted => v5::ConnectAckReason::Success,
                v3::ConnectAckReason::UnacceptableProtocolVersion => {
                    v5::ConnectAckReason::UnsupportedProtocolVersion
                }
                v3::ConnectAckReason::IdentifierRejected => {
                    v5::ConnectAckReason::ClientIdentifierNotValid
                }
                v3::ConnectAckReason::BadUserNameOrPassword => {
                    v5::ConnectAckReason::BadUserNameOrPassword
                }
                v3::ConnectAckReason::NotAuthorized => v5::ConnectAckReason::NotAuthorized,
                v3::ConnectAckReason::ServiceUnavailable | v3::ConnectAckReason::Reserved => {
                    v5::ConnectAckReason::ServerUnavailable
                }
            },
            ..Default::default()
        })),
        v3::Packet::Publish(mut p) => {
            p.properties = Some(v5::PublishProperties {
                content_type: Some("text/plain".into()),
                ..Default::default()
            });
            P::Publish(p)
        }
        v3::Packet::PublishAck { packet_id } => P::PublishAck(v5::PublishAck {
            packet_id,
            reason_code: v5::PublishAckReason::Success,
            properties: Vec::new(),
            reason_string: None,
        }),
        v3::Packet::SubscribeAck { packet_id, status } => P::SubscribeAck(v5::SubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: status
                .into_iter()
                .map(|s| match s {
                    v3::SubscribeReturnCode::Success(QoS::AtMostOnce) => {
                        v5::SubscribeAckReason::GrantedQos0
                    }
                    v3::SubscribeReturnCode::Success(QoS::AtLeastOnce) => {
                        v5::SubscribeAckReason::GrantedQos1
                    }
                    v3::SubscribeReturnCode::Success(QoS::ExactlyOnce) => {
                        v5::SubscribeAckReason::GrantedQos2
                    }
                    v3::SubscribeReturnCode::Failure => v5::SubscribeAckReason::NotAuthorized,
                })
                .collect(),
        }),
        v3::Packet::UnsubscribeAck { packet_id } => P::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: Vec::new(),
        }),
        v3::Packet::PingResponse => P::PingResponse,
        other => panic!("{other:?} is not a packet a server sends"),
    }
}

#[test]
fn fixtures_decode_to_their_packet() {
    for f in fixtures::table() {
        let mut buf = BytesMut::from(f.bytes);
        match f.packet {
            Wire::V3(packet) => {
                let decoded = v3::Codec::new(MAX_PACKET_SIZE).decode(&mut buf);
                assert!(
                    matches!(decoded, Ok(Some((ref p, _))) if *p == packet),
                    "{}: {decoded:?}",
                    f.name
                );
            }
            Wire::V5(packet) => {
                let decoded = v5::Codec::new(MAX_PACKET_SIZE, 0).decode(&mut buf);
                assert!(
                    matches!(decoded, Ok(Some((ref p, _))) if *p == packet),
                    "{}: {decoded:?}",
                    f.name
                );
            }
        }
        assert!(buf.is_empty(), "{}: {} bytes left over", f.name, buf.len());
    }
}

#[test]
fn fixtures_encode_to_their_bytes() {
    for f in fixtures::table()
        .into_iter()
        .filter(|f| f.direction == Direction::Both)
    {
        let encoded = match f.packet {
            Wire::V3(packet) => v3_encode(packet),
            Wire::V5(packet) => v5_encode(packet),
        };
        assert_eq!(&encoded[..], f.bytes, "{}", f.name);
    }
}

#[test]
fn malformed_input_ends_decoding_with_an_error() {
    for m in fixtures::malformed() {
        let (_, error) = decode_stream(&mut BytesMut::from(&m.bytes[..]), MAX_PACKET_SIZE);
        assert!(
            error.as_ref().is_some_and(m.expected),
            "{}: {error:?}",
            m.name
        );
    }
}

/// Every prefix of a malformed input is either incomplete or already an error: a read that
/// stops short never panics.
#[test]
fn every_prefix_of_malformed_input_decodes_without_panic() {
    for m in fixtures::malformed() {
        for end in 0..=m.bytes.len() {
            let _ = decode_stream(&mut BytesMut::from(&m.bytes[..end]), MAX_PACKET_SIZE);
        }
    }
}

/// A 3.1.1 SUBSCRIBE over the packet-size limit is refused for its size however much of it has
/// arrived, even when the part that has arrived shows reserved option bits: the outcome must not
/// depend on how the bytes were split into reads (found by fuzz/run.sh).
#[test]
fn an_oversized_v3_subscribe_is_refused_for_its_size_in_one_read_or_many() {
    const MAX: u32 = 16;
    let connect = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1";
    // Packet id 1, filter "aaaaaaaaaaaaaaaaaaaa" with options 0xFF: 25 bytes, over the limit.
    let mut subscribe = vec![0x82, 25, 0, 1, 0, 20];
    subscribe.extend_from_slice(&[b'a'; 20]);
    subscribe.push(0xFF);
    let input = [&connect[..], &subscribe].concat();
    let outcome = |reads: &[&[u8]]| {
        let mut codec = Codec::new(MAX);
        let mut buf = BytesMut::new();
        for read in reads {
            buf.extend_from_slice(read);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => return format!("{e:?}"),
                }
            }
        }
        "no error".to_owned()
    };
    let whole = outcome(&[&input]);
    assert!(whole.contains("MaxSizeExceeded"), "{whole}");
    for split in 0..input.len() {
        assert_eq!(
            outcome(&[&input[..split], &input[split..]]),
            whole,
            "split at {split}"
        );
    }
}
