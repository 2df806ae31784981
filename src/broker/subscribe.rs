//! SUBSCRIBE and UNSUBSCRIBE: each filter checked against the principal and the session's
//! subscription limit, then entered in (or removed from) the subscription tree and the
//! session. No I/O: the caller reads the first retained pages and sends the answer.

use std::sync::Arc;

use super::handle::Broker;
use super::limits;
use super::registry::Session;
use super::retained::RetainedScan;
use super::session::SubOptions;
use crate::auth::{Action, Principal};
use crate::mqtt::{
    DisconnectReasonCode, QoS, RetainHandling, Subscribe, SubscribeAck, SubscribeAckReason,
    Unsubscribe, UnsubscribeAck, UnsubscribeAckReason,
};
use crate::topic::ClientKey;
use crate::topic::{FilterSpec, TopicFilter};

/// Who subscribes: the client, its session and what it may do.
pub(super) struct Subscriber<'a> {
    pub broker: &'a Broker,
    pub client: &'a ClientKey,
    pub session: &'a Arc<Session>,
    /// The connection subscribing, which must still hold the session.
    pub connection: u64,
    pub principal: Option<&'a Principal>,
}

/// The SUBACK for a SUBSCRIBE, and the retained deliveries its new subscriptions want.
pub(super) struct Subscribed {
    pub ack: SubscribeAck,
    pub retained: Vec<RetainedScan>,
    /// New filters being announced to the other nodes: the SUBACK waits for them.
    pub announcements: Vec<tokio::sync::oneshot::Receiver<()>>,
}

pub(super) fn subscribe(
    who: &Subscriber,
    s: Subscribe,
) -> Result<Subscribed, DisconnectReasonCode> {
    let max_subscriptions = who.broker.config().max_subscriptions;
    let mut status = Vec::with_capacity(s.topic_filters.len());
    let mut retained = Vec::new();
    let mut wanted_retained = Vec::new();
    let mut announcements = Vec::new();
    for (raw, opts) in s.topic_filters {
        let Ok(spec) = FilterSpec::parse(&raw) else {
            status.push(SubscribeAckReason::TopicFilterInvalid); // MQTT 5 §3.9.3: 0x8F
            continue;
        };
        if spec.share_group().is_some() && opts.no_local {
            return Err(DisconnectReasonCode::ProtocolError); // [MQTT-3.8.3-4]
        }
        let allowed = who
            .principal
            .is_none_or(|p| p.allows(Action::Subscribe, spec.filter().as_str(), Some(who.client)));
        if !allowed {
            // 3.1.1 shows this as the failure code 0x80.
            status.push(SubscribeAckReason::NotAuthorized);
            continue;
        }
        let fits =
            limits::subscription_fits(&who.session.state().subscriptions, &spec, max_subscriptions);
        if !fits {
            // Beyond --mqtt-max-subscriptions: 0x97 Quota exceeded (3.1.1: the failure code
            // 0x80); the packet's other filters are still handled.
            status.push(SubscribeAckReason::QuotaExceeded);
            continue;
        }
        let options = SubOptions {
            qos: opts.qos.into(),
            no_local: opts.no_local,
            retain_as_published: opts.retain_as_published,
            subscription_id: s.id,
        };
        let Some((previous, announced)) =
            who.broker
                .subscribe(who.session, who.connection, &spec, options)
        else {
            // Taken over since the packet was read: the connection is closing, and the
            // session is another connection's now.
            status.push(SubscribeAckReason::UnspecifiedError);
            continue;
        };
        let existed = previous.is_some();
        announcements.extend(announced);
        who.session
            .state()
            .subscriptions
            .insert(spec.clone(), options);
        status.push(match opts.qos {
            QoS::AtMostOnce => SubscribeAckReason::GrantedQos0,
            QoS::AtLeastOnce => SubscribeAckReason::GrantedQos1,
            QoS::ExactlyOnce => SubscribeAckReason::GrantedQos2,
        });
        // Retained messages go to new plain subscriptions as Retain Handling says
        // [MQTT-3.3.1-9, -10, -11], never to shared ones (MQTT 5 §4.8.2).
        let wanted = match opts.retain_handling {
            RetainHandling::AtSubscribe => true,
            RetainHandling::AtSubscribeNew => !existed,
            RetainHandling::NoAtSubscribe => false,
        };
        if wanted && spec.share_group().is_none() {
            // A filter named again later in the packet replaces this subscription, and its
            // retained delivery with it [MQTT-3.8.4-4]: one delivery per filter per packet.
            wanted_retained.retain(|(f, _): &(TopicFilter, SubOptions)| f != spec.filter());
            wanted_retained.push((spec.filter().clone(), options));
        }
    }
    for (filter, options) in wanted_retained {
        // The `$SYS` values are never in the store, but a new subscriber gets the latest as
        // if they were.
        who.broker.send_latest_status(who.session, &filter, options);
        retained.push(RetainedScan::new(filter, options));
    }
    let ack = SubscribeAck {
        packet_id: s.packet_id,
        properties: Vec::new(),
        reason_string: None,
        status,
    };
    Ok(Subscribed {
        ack,
        retained,
        announcements,
    })
}

pub(super) fn unsubscribe(who: &Subscriber, u: Unsubscribe) -> UnsubscribeAck {
    let mut status = Vec::with_capacity(u.topic_filters.len());
    for raw in u.topic_filters {
        let Ok(spec) = FilterSpec::parse(&raw) else {
            status.push(UnsubscribeAckReason::TopicFilterInvalid);
            continue;
        };
        let Some(removed) = who.broker.unsubscribe(who.session, who.connection, &spec) else {
            // Taken over since: the filter may be the new connection's now.
            status.push(UnsubscribeAckReason::UnspecifiedError);
            continue;
        };
        who.session.state().subscriptions.remove(&spec);
        status.push(if removed {
            UnsubscribeAckReason::Success
        } else {
            UnsubscribeAckReason::NoSubscriptionExisted
        });
    }
    UnsubscribeAck {
        packet_id: u.packet_id,
        properties: Vec::new(),
        reason_string: None,
        status,
    }
}
