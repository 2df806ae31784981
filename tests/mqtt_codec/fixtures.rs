//! Raw bytes ⇄ packet, one table for both directions, and malformed inputs with the error each
//! must give. Bytes are written out by hand from the MQTT 3.1.1 and 5.0 specifications.

use std::num::NonZeroU16;

use retaind::mqtt::{DecodeError, Error};
use rmqtt_codec::types::{Protocol, Publish, QoS};
use rmqtt_codec::{v3, v5};

/// A CONNECT for client "c1": clean session, keep alive 60 s.
pub const V3_CONNECT: &[u8] = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1";
/// The same in MQTT 5, with an empty property list.
pub const V5_CONNECT: &[u8] = b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02c1";

pub enum Wire {
    V3(v3::Packet),
    V5(v5::Packet),
}

/// Whether the codec also produces these bytes, or only accepts them (the specification allows
/// shorter forms than the one rmqtt-codec writes).
#[derive(PartialEq)]
pub enum Direction {
    Both,
    DecodeOnly,
}

pub struct Fixture {
    pub name: &'static str,
    pub bytes: &'static [u8],
    pub packet: Wire,
    pub direction: Direction,
}

fn id(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("fixture ids are non-zero")
}

fn publish(qos: QoS, retain: bool, topic: &str, packet_id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        retain,
        qos,
        topic: topic.into(),
        packet_id: packet_id.map(id),
        payload: bytes::Bytes::from_static(b"hi"),
        properties: None,
    }
}

fn v5_connect() -> v5::Connect {
    v5::Connect {
        clean_start: true,
        keep_alive: 60,
        session_expiry_interval_secs: 0,
        auth_method: None,
        auth_data: None,
        request_problem_info: true,
        request_response_info: false,
        receive_max: None,
        topic_alias_max: 0,
        user_properties: Vec::new(),
        max_packet_size: None,
        last_will: None,
        client_id: "c1".into(),
        username: None,
        password: None,
        cert: None,
    }
}

fn disconnect(reason_code: v5::DisconnectReasonCode) -> v5::Disconnect {
    v5::Disconnect {
        reason_code,
        session_expiry_interval_secs: None,
        server_reference: None,
        reason_string: None,
        user_properties: Vec::new(),
    }
}

fn v5_ack(reason_code: v5::PublishAckReason) -> v5::PublishAck {
    v5::PublishAck {
        packet_id: id(1),
        reason_code,
        properties: Vec::new(),
        reason_string: None,
    }
}

pub fn table() -> Vec<Fixture> {
    use Direction::*;
    use Wire::*;
    use v3::Packet as P3;
    use v5::Packet as P5;
    let fixture = |name, bytes, packet, direction| Fixture {
        name,
        bytes,
        packet,
        direction,
    };
    let v5_publish = |props| {
        let mut p = publish(QoS::AtMostOnce, false, "a/b", None);
        p.properties = Some(props);
        p
    };
    let v3_connect = v3::Connect {
        protocol: Protocol(4),
        clean_session: true,
        keep_alive: 60,
        client_id: "c1".into(),
        ..Default::default()
    };
    vec![
        fixture("v3 CONNECT", V3_CONNECT, V3(P3::Connect(Box::new(v3_connect))), Both),
        fixture("v5 CONNECT", V5_CONNECT, V5(P5::Connect(Box::new(v5_connect()))), Both),
        fixture(
            "v3 CONNACK unacceptable protocol version",
            b"\x20\x02\x00\x01",
            V3(P3::ConnectAck(v3::ConnectAck {
                session_present: false,
                return_code: v3::ConnectAckReason::UnacceptableProtocolVersion,
            })),
            Both,
        ),
        fixture(
            "v5 CONNACK success, defaults",
            b"\x20\x03\x00\x00\x00",
            V5(P5::ConnectAck(Box::default())),
            Both,
        ),
        fixture(
            "v3 PUBLISH QoS 1 retained",
            b"\x33\x09\x00\x03a/b\x00\x01hi",
            V3(P3::Publish(Box::new(publish(QoS::AtLeastOnce, true, "a/b", Some(1))))),
            Both,
        ),
        fixture(
            "v5 PUBLISH QoS 0, no properties",
            b"\x30\x08\x00\x03a/b\x00hi",
            V5(P5::Publish(Box::new(v5_publish(v5::PublishProperties::default())))),
            Both,
        ),
        fixture(
            "v5 PUBLISH, repeated user-property key, two subscription ids",
            b"\x30\x1b\x00\x03a/b\x13\x0b\x01\x0b\x80\x01\x26\x00\x01k\x00\x011\x26\x00\x01k\x00\x012hi",
            V5(P5::Publish(Box::new(v5_publish(v5::PublishProperties {
                user_properties: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
                subscription_ids: vec![1.try_into().expect("1"), 128.try_into().expect("128")],
                ..Default::default()
            })))),
            Both,
        ),
        fixture(
            "v5 PUBLISH, repeated user-property key, two subscription ids, properties in another order",
            b"\x30\x1b\x00\x03a/b\x13\x26\x00\x01k\x00\x011\x26\x00\x01k\x00\x012\x0b\x01\x0b\x80\x01hi",
            V5(P5::Publish(Box::new(v5_publish(v5::PublishProperties {
                user_properties: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
                subscription_ids: vec![1.try_into().expect("1"), 128.try_into().expect("128")],
                ..Default::default()
            })))),
            DecodeOnly,
        ),
        fixture(
            "v5 PUBACK, reason only",
            b"\x40\x03\x00\x01\x10",
            V5(P5::PublishAck(v5_ack(v5::PublishAckReason::NoMatchingSubscribers))),
            DecodeOnly,
        ),
        fixture(
            "v5 PUBACK success, short form",
            b"\x40\x02\x00\x01",
            V5(P5::PublishAck(v5_ack(v5::PublishAckReason::Success))),
            DecodeOnly,
        ),
        fixture(
            "v5 PUBACK success",
            b"\x40\x04\x00\x01\x00\x00",
            V5(P5::PublishAck(v5_ack(v5::PublishAckReason::Success))),
            Both,
        ),
        fixture(
            "v3 SUBSCRIBE",
            b"\x82\x08\x00\x0a\x00\x03a/#\x01",
            V3(P3::Subscribe {
                packet_id: id(10),
                topic_filters: vec![("a/#".into(), QoS::AtLeastOnce)],
            }),
            Both,
        ),
        fixture(
            "v5 SUBSCRIBE: QoS 1, NL, RAP, RH 2, subscription id 42",
            b"\x82\x0b\x00\x0a\x02\x0b\x2a\x00\x03a/#\x2d",
            V5(P5::Subscribe(v5::Subscribe {
                packet_id: id(10),
                id: 42.try_into().ok(),
                user_properties: Vec::new(),
                topic_filters: vec![(
                    "a/#".into(),
                    v5::SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: v5::RetainHandling::NoAtSubscribe,
                    },
                )],
            })),
            Both,
        ),
        fixture(
            "v3 SUBACK granted 1, failure",
            b"\x90\x04\x00\x0a\x01\x80",
            V3(P3::SubscribeAck {
                packet_id: id(10),
                status: vec![
                    v3::SubscribeReturnCode::Success(QoS::AtLeastOnce),
                    v3::SubscribeReturnCode::Failure,
                ],
            }),
            Both,
        ),
        fixture(
            "v5 SUBACK granted 1, filter invalid, sub ids unsupported",
            b"\x90\x06\x00\x0a\x00\x01\x8f\xa1",
            V5(P5::SubscribeAck(v5::SubscribeAck {
                packet_id: id(10),
                properties: Vec::new(),
                reason_string: None,
                status: vec![
                    v5::SubscribeAckReason::GrantedQos1,
                    v5::SubscribeAckReason::TopicFilterInvalid,
                    v5::SubscribeAckReason::SubscriptionIdentifiersNotSupported,
                ],
            })),
            Both,
        ),
        fixture(
            "v5 UNSUBSCRIBE",
            b"\xa2\x06\x00\x0b\x00\x00\x01a",
            V5(P5::Unsubscribe(v5::Unsubscribe {
                packet_id: id(11),
                user_properties: Vec::new(),
                topic_filters: vec!["a".into()],
            })),
            Both,
        ),
        fixture("v3 PINGREQ", b"\xc0\x00", V3(P3::PingRequest), Both),
        fixture("v5 PINGRESP", b"\xd0\x00", V5(P5::PingResponse), Both),
        fixture("v3 DISCONNECT", b"\xe0\x00", V3(P3::Disconnect), Both),
        fixture(
            "v5 DISCONNECT, short form",
            b"\xe0\x00",
            V5(P5::Disconnect(disconnect(v5::DisconnectReasonCode::NormalDisconnection))),
            DecodeOnly,
        ),
        fixture(
            "v5 DISCONNECT session taken over",
            b"\xe0\x02\x8e\x00",
            V5(P5::Disconnect(disconnect(v5::DisconnectReasonCode::SessionTakenOver))),
            Both,
        ),
        fixture(
            "v5 DISCONNECT, reason without property length",
            b"\xe0\x01\x8b",
            V5(P5::Disconnect(disconnect(v5::DisconnectReasonCode::ServerShuttingDown))),
            DecodeOnly,
        ),
        fixture(
            "v5 AUTH continue, method m",
            b"\xf0\x06\x18\x04\x15\x00\x01m",
            V5(P5::Auth(v5::Auth {
                reason_code: v5::AuthReasonCode::ContinueAuth,
                auth_method: Some("m".into()),
                auth_data: None,
                reason_string: None,
                user_properties: Vec::new(),
            })),
            Both,
        ),
    ]
}

/// A connection's bytes that must end in the given error, with the spec clause they break.
pub struct Malformed {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub expected: fn(&Error) -> bool,
}

pub fn malformed() -> Vec<Malformed> {
    let after = |connect: &[u8], rest: &[u8]| [connect, rest].concat();
    let case = |name, bytes, expected| Malformed {
        name,
        bytes,
        expected,
    };
    vec![
        // [MQTT-3.1.0-1] the first packet must be CONNECT.
        case("PINGREQ first", b"\xc0\x00".to_vec(), |e| {
            matches!(e, Error::NotConnect)
        }),
        case(
            "PUBLISH first",
            b"\x30\x08\x00\x03a/b\x00hi".to_vec(),
            |e| matches!(e, Error::NotConnect),
        ),
        // [MQTT-3.1.2-2] a protocol level we do not speak.
        case(
            "CONNECT level 6",
            b"\x10\x0e\x00\x04MQTT\x06\x02\x00\x3c\x00\x02c1".to_vec(),
            |e| matches!(e, Error::UnsupportedVersion),
        ),
        case(
            "CONNECT for another protocol",
            b"\x10\x0e\x00\x04HTTP\x04\x02\x00\x3c\x00\x02c1".to_vec(),
            |e| matches!(e, Error::UnsupportedVersion),
        ),
        // Remaining Length is at most four bytes (MQTT 3.1.1 §2.2.3, MQTT 5 §1.5.5).
        case(
            "CONNECT remaining length of five bytes",
            b"\x10\xff\xff\xff\xff\x7f".to_vec(),
            |e| matches!(e, Error::Decode(DecodeError::InvalidLength)),
        ),
        case(
            "v3 PUBLISH remaining length of five bytes",
            after(V3_CONNECT, b"\x30\xff\xff\xff\xff\x7f"),
            |e| matches!(e, Error::Decode(DecodeError::InvalidLength)),
        ),
        case(
            "v5 PUBLISH remaining length of five bytes",
            after(V5_CONNECT, b"\x30\xff\xff\xff\xff\x7f"),
            |e| matches!(e, Error::Decode(DecodeError::InvalidLength)),
        ),
        case(
            "v5 PUBLISH over the maximum packet size",
            after(V5_CONNECT, b"\x30\x81\x80\x04"),
            |e| matches!(e, Error::Decode(DecodeError::MaxSizeExceeded { .. })),
        ),
        // [MQTT-3.1.2-3] the CONNECT reserved flag must be 0.
        case(
            "v3 CONNECT reserved flag",
            b"\x10\x0e\x00\x04MQTT\x04\x03\x00\x3c\x00\x02c1".to_vec(),
            |e| matches!(e, Error::Decode(_)),
        ),
        case(
            "v5 CONNECT reserved flag",
            b"\x10\x0f\x00\x04MQTT\x05\x03\x00\x3c\x00\x00\x02c1".to_vec(),
            |e| matches!(e, Error::Decode(_)),
        ),
        // [MQTT-3.8.1-1] SUBSCRIBE's fixed-header flags are 0010.
        case(
            "v3 SUBSCRIBE reserved flags 0000",
            after(V3_CONNECT, b"\x80\x08\x00\x0a\x00\x03a/#\x01"),
            |e| matches!(e, Error::Decode(_)),
        ),
        // [MQTT-3.6.1-1] PUBREL's fixed-header flags are 0010.
        case(
            "v5 PUBREL reserved flags 0000",
            after(V5_CONNECT, b"\x60\x02\x00\x01"),
            |e| matches!(e, Error::Decode(_)),
        ),
        // [MQTT-3.3.1-4] QoS 3 is malformed.
        case(
            "v3 PUBLISH QoS 3",
            after(V3_CONNECT, b"\x36\x09\x00\x03a/b\x00\x01hi"),
            |e| matches!(e, Error::Decode(_)),
        ),
        // [MQTT-1.5.3-1] strings are well-formed UTF-8.
        case(
            "v3 PUBLISH non-UTF-8 topic",
            after(V3_CONNECT, b"\x30\x06\x00\x02\xc3\x28hi"),
            |e| matches!(e, Error::Decode(DecodeError::Utf8Error)),
        ),
        case(
            "v5 PUBLISH non-UTF-8 topic",
            after(V5_CONNECT, b"\x30\x07\x00\x02\xc3\x28\x00hi"),
            |e| matches!(e, Error::Decode(DecodeError::Utf8Error)),
        ),
        // [MQTT-2.3.1-1] packet identifiers are non-zero.
        case(
            "v3 PUBACK packet id 0",
            after(V3_CONNECT, b"\x40\x02\x00\x00"),
            |e| matches!(e, Error::Decode(_)),
        ),
        case(
            "v5 PUBLISH property length past the end",
            after(V5_CONNECT, b"\x30\x07\x00\x03a/b\x09h"),
            |e| matches!(e, Error::Decode(_)),
        ),
    ]
}
