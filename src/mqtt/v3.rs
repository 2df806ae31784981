//! MQTT 3.1.1 packets translated to and from their MQTT 5 forms, so the broker handles one
//! protocol. Going in, 3.1.1 semantics become the MQTT 5 settings that mean the same thing
//! (a persistent session never expires; subscriptions get the 3.1.1 retain behaviour). Going
//! out, MQTT 5-only fields are dropped.

use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::{self, ConnectAckReason as V3Reason, SubscribeReturnCode};
use rmqtt_codec::v5::{
    self, ConnectAckReason, PublishAck, PublishAck2, PublishAck2Reason, PublishAckReason,
    RetainHandling, SubscribeAckReason, SubscriptionOptions,
};

/// A 3.1.1 packet as the MQTT 5 packet with the same meaning.
pub(super) fn inbound(packet: v3::Packet) -> v5::Packet {
    use v5::Packet as P;
    match packet {
        v3::Packet::Connect(c) => P::Connect(Box::new(connect(*c))),
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
            topic_filters: topic_filters
                .into_iter()
                .map(|(filter, qos)| {
                    let options = SubscriptionOptions {
                        qos,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: RetainHandling::AtSubscribe,
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
        v3::Packet::Disconnect => P::Disconnect(v5::Disconnect::default()),
        // Packets only a server sends; the broker treats them as the protocol error they are.
        v3::Packet::ConnectAck(_) => P::ConnectAck(Box::default()),
        v3::Packet::SubscribeAck { packet_id, .. } => P::SubscribeAck(v5::SubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: Vec::new(),
        }),
        v3::Packet::UnsubscribeAck { packet_id } => P::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: Vec::new(),
        }),
        v3::Packet::PingResponse => P::PingResponse,
    }
}

fn connect(c: v3::Connect) -> v5::Connect {
    v5::Connect {
        clean_start: c.clean_session,
        keep_alive: c.keep_alive,
        // 3.1.1 has no session expiry: a persistent session lasts until a clean connect.
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
        cert: c.cert,
    }
}

fn ack(packet_id: std::num::NonZeroU16) -> PublishAck {
    PublishAck {
        packet_id,
        reason_code: PublishAckReason::Success,
        properties: Vec::new(),
        reason_string: None,
    }
}

fn ack2(packet_id: std::num::NonZeroU16) -> PublishAck2 {
    PublishAck2 {
        packet_id,
        reason_code: PublishAck2Reason::Success,
        properties: Vec::new(),
        reason_string: None,
    }
}

/// The 3.1.1 form of a packet the broker sends, or `None` where 3.1.1 has none.
pub(super) fn outbound(packet: v5::Packet) -> Option<v3::Packet> {
    use v5::Packet as P;
    Some(match packet {
        P::ConnectAck(a) => v3::Packet::ConnectAck(v3::ConnectAck {
            session_present: a.session_present,
            return_code: connack_code(a.reason_code),
        }),
        P::Publish(mut p) => {
            p.properties = None;
            v3::Packet::Publish(p)
        }
        P::PublishAck(a) => v3::Packet::PublishAck {
            packet_id: a.packet_id,
        },
        P::PublishReceived(a) => v3::Packet::PublishReceived {
            packet_id: a.packet_id,
        },
        P::PublishRelease(a) => v3::Packet::PublishRelease {
            packet_id: a.packet_id,
        },
        P::PublishComplete(a) => v3::Packet::PublishComplete {
            packet_id: a.packet_id,
        },
        P::SubscribeAck(a) => v3::Packet::SubscribeAck {
            packet_id: a.packet_id,
            status: a.status.into_iter().map(suback_code).collect(),
        },
        P::UnsubscribeAck(a) => v3::Packet::UnsubscribeAck {
            packet_id: a.packet_id,
        },
        P::PingResponse => v3::Packet::PingResponse,
        P::Disconnect(_)
        | P::Auth(_)
        | P::Connect(_)
        | P::Subscribe(_)
        | P::Unsubscribe(_)
        | P::PingRequest => return None,
    })
}

fn connack_code(reason: ConnectAckReason) -> V3Reason {
    match reason {
        ConnectAckReason::Success => V3Reason::ConnectionAccepted,
        ConnectAckReason::UnsupportedProtocolVersion => V3Reason::UnacceptableProtocolVersion,
        ConnectAckReason::ClientIdentifierNotValid => V3Reason::IdentifierRejected,
        ConnectAckReason::BadUserNameOrPassword => V3Reason::BadUserNameOrPassword,
        ConnectAckReason::NotAuthorized | ConnectAckReason::Banned => V3Reason::NotAuthorized,
        _ => V3Reason::ServiceUnavailable,
    }
}

fn suback_code(reason: SubscribeAckReason) -> SubscribeReturnCode {
    match reason {
        SubscribeAckReason::GrantedQos0 => SubscribeReturnCode::Success(QoS::AtMostOnce),
        SubscribeAckReason::GrantedQos1 => SubscribeReturnCode::Success(QoS::AtLeastOnce),
        SubscribeAckReason::GrantedQos2 => SubscribeReturnCode::Success(QoS::ExactlyOnce),
        _ => SubscribeReturnCode::Failure,
    }
}
