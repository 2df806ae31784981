//! proptest strategies for every MQTT 3.1.1 and 5.0 packet, shaped so that encode → decode must
//! give the same value back: fields the wire cannot carry (`cert`) stay `None`, a QoS 0 PUBLISH
//! has no packet id, and a v5 PUBLISH always has properties (the decoder always fills them in).

use std::fmt::Debug;
use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;
use retaind::mqtt::ByteString;
use rmqtt_codec::types::{Protocol, Publish, QoS};
use rmqtt_codec::{v3, v5};

/// Any UTF-8 text an MQTT string may hold, control characters included: the codec must carry
/// it as is. Not U+0000, which makes a packet malformed [MQTT-1.5.4-2] and which retaind
/// refuses (tests/mqtt_strings.rs).
pub fn text() -> impl Strategy<Value = ByteString> {
    "(?s)[^\\x00]{0,8}".prop_map(ByteString::from)
}

/// A 3.1.1 topic name or filter: at least one character [MQTT-4.7.3-1], which the 3.1.1
/// decoder enforces (the MQTT 5 one leaves it to the caller, for topic aliases).
fn v3_topic() -> impl Strategy<Value = ByteString> {
    "(?s)[^\\x00]{1,8}".prop_map(ByteString::from)
}

fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

/// User properties with keys drawn from a small set, so that a key often repeats: MQTT 5 keeps
/// every pair, in order [MQTT-3.3.2-18].
fn user_properties() -> impl Strategy<Value = v5::UserProperties> {
    let key = prop_oneof![
        select(vec!["k", "owner"]).prop_map(ByteString::from),
        text()
    ];
    vec((key, text()), 0..4)
}

/// Every value of a reason-code enum, read from the codec's own `TryFrom<u8>`.
fn reason<T: TryFrom<u8> + Clone + Debug + 'static>() -> impl Strategy<Value = T> {
    select(
        (0..=u8::MAX)
            .filter_map(|b| T::try_from(b).ok())
            .collect::<Vec<_>>(),
    )
}

fn qos() -> impl Strategy<Value = QoS> {
    reason()
}

fn packet_id() -> impl Strategy<Value = NonZeroU16> {
    any::<NonZeroU16>()
}

/// A Variable Byte Integer id (subscription identifier): 1 to 268,435,455.
fn varint_id() -> impl Strategy<Value = NonZeroU32> {
    (1..=0x0FFF_FFFFu32).prop_filter_map("non-zero", NonZeroU32::new)
}

fn publish(
    qos: QoS,
    topic: BoxedStrategy<ByteString>,
    properties: Option<v5::PublishProperties>,
) -> impl Strategy<Value = Publish> {
    let id = if qos == QoS::AtMostOnce {
        Just(None).boxed()
    } else {
        packet_id().prop_map(Some).boxed()
    };
    (any::<bool>(), any::<bool>(), topic, id, bytes()).prop_map(
        move |(dup, retain, topic, packet_id, payload)| Publish {
            dup,
            retain,
            qos,
            topic,
            packet_id,
            payload,
            properties: properties.clone(),
        },
    )
}

/// Subscription identifiers only in what the server sends [MQTT-3.3.4-6].
fn publish_properties(from_server: bool) -> impl Strategy<Value = v5::PublishProperties> {
    let ids = if from_server { 0..4 } else { 0..1 };
    (
        of(packet_id()),
        of(bytes()),
        of(any::<NonZeroU32>()),
        of(text()),
        user_properties(),
        any::<bool>(),
        of(text()),
        vec(varint_id(), ids),
    )
        .prop_map(
            |(alias, correlation, expiry, content_type, user, utf8, response, ids)| {
                v5::PublishProperties {
                    topic_alias: alias,
                    correlation_data: correlation,
                    message_expiry_interval: expiry,
                    content_type,
                    user_properties: user,
                    is_utf8_payload: utf8,
                    response_topic: response,
                    subscription_ids: ids,
                }
            },
        )
}

fn v5_publish(from_server: bool) -> impl Strategy<Value = Publish> {
    (qos(), publish_properties(from_server))
        .prop_flat_map(|(q, props)| publish(q, text().boxed(), Some(props)))
}

/// A PUBLISH as a server sends it to an MQTT 5 client.
pub fn v5_server_publish() -> impl Strategy<Value = Publish> {
    v5_publish(true)
}

pub fn v3_publish() -> impl Strategy<Value = Publish> {
    qos().prop_flat_map(|q| publish(q, v3_topic().boxed(), None))
}

fn v5_will() -> impl Strategy<Value = v5::LastWill> {
    let head = (qos(), any::<bool>(), text(), bytes());
    let props = (
        of(any::<u32>()),
        of(bytes()),
        of(any::<NonZeroU32>()),
        of(text()),
        user_properties(),
        of(any::<bool>()),
        of(text()),
    );
    (head, props).prop_map(
        |((qos, retain, topic, message), (delay, corr, expiry, ct, user, utf8, resp))| {
            v5::LastWill {
                qos,
                retain,
                topic,
                message,
                will_delay_interval_sec: delay,
                correlation_data: corr,
                message_expiry_interval: expiry,
                content_type: ct,
                user_properties: user,
                is_utf8_payload: utf8,
                response_topic: resp,
            }
        },
    )
}

/// A v5 CONNECT with or without will, username, password and each property. An empty client
/// id comes with Clean Start: rmqtt-codec rejects it otherwise (`InvalidClientId`), although
/// MQTT 5 lets the server choose [MQTT-3.1.3-8].
pub fn v5_connect() -> impl Strategy<Value = v5::Connect> {
    let session = (
        any::<bool>(),
        any::<u16>(),
        any::<u32>(),
        of(text()),
        of(bytes()),
    );
    let props = (
        any::<bool>(),
        any::<bool>(),
        of(any::<NonZeroU16>()),
        any::<u16>(),
        user_properties(),
        of(any::<NonZeroU32>()),
    );
    let payload = (of(v5_will()), text(), of(text()), of(bytes()));
    (session, props, payload).prop_map(
        |(
            (clean_start, keep_alive, expiry, auth_method, auth_data),
            (problem, response, receive_max, alias_max, user, max_size),
            (last_will, client_id, username, password),
        )| v5::Connect {
            clean_start: clean_start || client_id.is_empty(),
            keep_alive,
            session_expiry_interval_secs: expiry,
            auth_method,
            auth_data,
            request_problem_info: problem,
            request_response_info: response,
            receive_max,
            topic_alias_max: alias_max,
            user_properties: user,
            max_packet_size: max_size,
            last_will,
            client_id,
            username,
            password,
            cert: None,
        },
    )
}

fn v5_connack() -> impl Strategy<Value = v5::ConnectAck> {
    let a = (
        any::<bool>(),
        reason::<v5::ConnectAckReason>(),
        of(any::<u32>()),
        any::<NonZeroU16>(),
        qos(),
        of(any::<u32>()),
        of(text()),
        any::<u16>(),
    );
    let b = (
        any::<[bool; 4]>(),
        of(any::<u16>()),
        [of(text()), of(text())],
    );
    let c = (of(text()), of(bytes()), of(text()), user_properties());
    (a, b, c).prop_map(
        |(
            (session_present, reason_code, expiry, receive_max, max_qos, max_size, id, alias),
            ([retain, wildcard, sub_ids, shared], keepalive, [response_info, server_ref]),
            (auth_method, auth_data, reason_string, user),
        )| v5::ConnectAck {
            session_present,
            reason_code,
            session_expiry_interval_secs: expiry,
            receive_max,
            max_qos,
            max_packet_size: max_size,
            assigned_client_id: id,
            topic_alias_max: alias,
            retain_available: retain,
            wildcard_subscription_available: wildcard,
            subscription_identifiers_available: sub_ids,
            shared_subscription_available: shared,
            server_keepalive_sec: keepalive,
            response_info,
            server_reference: server_ref,
            auth_method,
            auth_data,
            reason_string,
            user_properties: user,
        },
    )
}

fn v5_ack() -> impl Strategy<Value = v5::PublishAck> {
    (packet_id(), reason(), user_properties(), of(text())).prop_map(|(id, code, props, rs)| {
        v5::PublishAck {
            packet_id: id,
            reason_code: code,
            properties: props,
            reason_string: rs,
        }
    })
}

fn v5_ack2() -> impl Strategy<Value = v5::PublishAck2> {
    (packet_id(), reason(), user_properties(), of(text())).prop_map(|(id, code, props, rs)| {
        v5::PublishAck2 {
            packet_id: id,
            reason_code: code,
            properties: props,
            reason_string: rs,
        }
    })
}

fn subscription_options() -> impl Strategy<Value = v5::SubscriptionOptions> {
    (qos(), any::<bool>(), any::<bool>(), reason()).prop_map(|(qos, nl, rap, rh)| {
        v5::SubscriptionOptions {
            qos,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: rh,
        }
    })
}

/// Packets only a client sends (CONNECT aside), in their MQTT 5 form.
pub fn v5_client_packet() -> impl Strategy<Value = v5::Packet> {
    use v5::Packet as P;
    let subscribe = (
        packet_id(),
        of(varint_id()),
        user_properties(),
        vec((text(), subscription_options()), 1..4),
    )
        .prop_map(|(packet_id, id, user, filters)| {
            P::Subscribe(v5::Subscribe {
                packet_id,
                id,
                user_properties: user,
                topic_filters: filters,
            })
        });
    let unsubscribe = (packet_id(), user_properties(), vec(text(), 1..4)).prop_map(
        |(packet_id, user, filters)| {
            P::Unsubscribe(v5::Unsubscribe {
                packet_id,
                user_properties: user,
                topic_filters: filters,
            })
        },
    );
    prop_oneof![
        v5_connect().prop_map(|c| P::Connect(Box::new(c))),
        v5_publish(false).prop_map(|p| P::Publish(Box::new(p))),
        v5_ack().prop_map(P::PublishAck),
        v5_ack().prop_map(P::PublishReceived),
        v5_ack2().prop_map(P::PublishRelease),
        v5_ack2().prop_map(P::PublishComplete),
        subscribe,
        unsubscribe,
        Just(P::PingRequest),
        v5_disconnect().prop_map(P::Disconnect),
        v5_auth().prop_map(P::Auth),
    ]
}

fn v5_disconnect() -> impl Strategy<Value = v5::Disconnect> {
    (
        reason(),
        of(any::<u32>()),
        of(text()),
        of(text()),
        user_properties(),
    )
        .prop_map(|(code, expiry, server_ref, rs, user)| v5::Disconnect {
            reason_code: code,
            session_expiry_interval_secs: expiry,
            server_reference: server_ref,
            reason_string: rs,
            user_properties: user,
        })
}

fn v5_auth() -> impl Strategy<Value = v5::Auth> {
    (
        reason(),
        of(text()),
        of(bytes()),
        of(text()),
        user_properties(),
    )
        .prop_map(|(code, method, data, rs, user)| v5::Auth {
            reason_code: code,
            auth_method: method,
            auth_data: data,
            reason_string: rs,
            user_properties: user,
        })
}

/// Packets only a server sends, in their MQTT 5 form.
pub fn v5_server_packet() -> impl Strategy<Value = v5::Packet> {
    use v5::Packet as P;
    let suback = (
        packet_id(),
        user_properties(),
        of(text()),
        vec(reason(), 1..4),
    )
        .prop_map(|(packet_id, props, rs, status)| {
            P::SubscribeAck(v5::SubscribeAck {
                packet_id,
                properties: props,
                reason_string: rs,
                status,
            })
        });
    let unsuback = (
        packet_id(),
        user_properties(),
        of(text()),
        vec(reason(), 1..4),
    )
        .prop_map(|(packet_id, props, rs, status)| {
            P::UnsubscribeAck(v5::UnsubscribeAck {
                packet_id,
                properties: props,
                reason_string: rs,
                status,
            })
        });
    prop_oneof![
        v5_connack().prop_map(|c| P::ConnectAck(Box::new(c))),
        v5_publish(true).prop_map(|p| P::Publish(Box::new(p))),
        v5_ack().prop_map(P::PublishAck),
        v5_ack2().prop_map(P::PublishRelease),
        suback,
        unsuback,
        Just(P::PingResponse),
        v5_disconnect().prop_map(P::Disconnect),
        v5_auth().prop_map(P::Auth),
    ]
}

/// A 3.1.1 CONNECT. An empty client id comes with a clean session, as [MQTT-3.1.3-7] requires
/// and the decoder enforces; a password only with a user name [MQTT-3.1.2-22].
pub fn v3_connect() -> impl Strategy<Value = v3::Connect> {
    let will = (qos(), any::<bool>(), text(), bytes()).prop_map(|(qos, retain, topic, message)| {
        v3::LastWill {
            qos,
            retain,
            topic,
            message,
        }
    });
    (
        any::<bool>(),
        any::<u16>(),
        of(will),
        text(),
        of(text()),
        of(bytes()),
    )
        .prop_map(
            |(clean, keep_alive, last_will, client_id, username, password)| v3::Connect {
                protocol: Protocol::default(),
                clean_session: clean || client_id.is_empty(),
                keep_alive,
                last_will,
                client_id,
                password: password.filter(|_| username.is_some()),
                username,
                cert: None,
            },
        )
}

/// Packets only a client sends (CONNECT aside), in their 3.1.1 form.
pub fn v3_client_packet() -> impl Strategy<Value = v3::Packet> {
    use v3::Packet as P;
    prop_oneof![
        v3_publish().prop_map(|p| P::Publish(Box::new(p))),
        packet_id().prop_map(|packet_id| P::PublishAck { packet_id }),
        packet_id().prop_map(|packet_id| P::PublishReceived { packet_id }),
        packet_id().prop_map(|packet_id| P::PublishRelease { packet_id }),
        packet_id().prop_map(|packet_id| P::PublishComplete { packet_id }),
        (packet_id(), vec((v3_topic(), qos()), 1..4)).prop_map(|(packet_id, topic_filters)| {
            P::Subscribe {
                packet_id,
                topic_filters,
            }
        }),
        (packet_id(), vec(v3_topic(), 1..4)).prop_map(|(packet_id, topic_filters)| {
            P::Unsubscribe {
                packet_id,
                topic_filters,
            }
        }),
        Just(P::PingRequest),
        Just(P::Disconnect),
    ]
}

/// Packets only a server sends, in their 3.1.1 form.
pub fn v3_server_packet() -> impl Strategy<Value = v3::Packet> {
    use v3::Packet as P;
    let code = prop_oneof![
        qos().prop_map(v3::SubscribeReturnCode::Success),
        Just(v3::SubscribeReturnCode::Failure),
    ];
    prop_oneof![
        (any::<bool>(), reason()).prop_map(|(session_present, return_code)| {
            P::ConnectAck(v3::ConnectAck {
                session_present,
                return_code,
            })
        }),
        v3_publish().prop_map(|p| P::Publish(Box::new(p))),
        packet_id().prop_map(|packet_id| P::PublishAck { packet_id }),
        (packet_id(), vec(code, 1..4))
            .prop_map(|(packet_id, status)| P::SubscribeAck { packet_id, status }),
        packet_id().prop_map(|packet_id| P::UnsubscribeAck { packet_id }),
        Just(P::PingResponse),
    ]
}
