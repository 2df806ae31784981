//! What a connection does with each packet the client sends.

use std::num::NonZeroU16;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::admission::may_publish;
use super::connection::{Connection, End};
use super::limits;
use super::message::Message;
use super::retained::RetainedScan;
use super::session::SubOptions;
use super::wire;
use crate::auth::Action;
use crate::mqtt::{
    ByteString, Disconnect, DisconnectReasonCode, Packet, Publish, PublishAck, PublishAck2,
    PublishAck2Reason, PublishAckReason, QoS, RetainHandling, Subscribe, SubscribeAck,
    SubscribeAckReason, Unsubscribe, UnsubscribeAck, UnsubscribeAckReason,
};
use crate::store;
use crate::topic::{FilterSpec, TopicError, TopicName};

/// An inbound publish once the store has (or has not) taken its retained write.
pub(super) struct Settled {
    /// The message to route; `None` for a resent QoS 2 publish that was routed already.
    pub message: Option<Arc<Message>>,
    pub ack: Option<(QoS, NonZeroU16)>,
    /// What the acknowledgement says when the store took the write (not authorized, for a
    /// publish that was dropped).
    pub reason: PublishAckReason,
    pub result: Result<(), crate::store::Error>,
}

/// The reason string of a publish refused for its user properties.
const USER_PROPERTIES_TOO_LARGE: &str = "user properties over 8192 bytes";

/// Why an inbound PUBLISH is refused.
enum Refusal {
    /// Answer with this reason in PUBACK/PUBREC when there is one (MQTT 5, QoS ≥ 1); otherwise
    /// close the connection with it.
    Reject(DisconnectReasonCode),
    /// Always close: the packet breaks the protocol.
    Close(DisconnectReasonCode),
    /// A valid publish retaind will not take: MQTT 5 QoS 1/2 gets this reason in PUBACK/PUBREC
    /// (with `why` as its reason string, if the client asked for them); QoS 0 is dropped.
    Drop {
        reason: PublishAckReason,
        why: &'static str,
    },
}

impl<T> Connection<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub(super) async fn handle(&mut self, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => self.on_publish(*p).await,
            Packet::PublishAck(a) => {
                if self.session.state().acknowledge(a.packet_id) {
                    self.watch.acknowledged();
                }
                Ok(())
            }
            Packet::PublishReceived(a) => {
                if u8::from(a.reason_code) >= 0x80 {
                    // The client refused the message: the exchange ends here [MQTT-4.3.3-?].
                    self.session.state().forget(a.packet_id);
                    return Ok(());
                }
                let known = self.session.state().received(a.packet_id);
                if known {
                    self.watch.acknowledged();
                }
                self.write(Packet::PublishRelease(ack2(a.packet_id, known)))
                    .await
                    .map(drop)
            }
            Packet::PublishRelease(r) => {
                let known = self.session.state().release_incoming_qos2(r.packet_id);
                if known {
                    self.unacked_in = self.unacked_in.saturating_sub(1);
                }
                self.write(Packet::PublishComplete(ack2(r.packet_id, known)))
                    .await
                    .map(drop)
            }
            Packet::PublishComplete(c) => {
                if self.session.state().completed(c.packet_id) {
                    self.watch.acknowledged();
                }
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s).await,
            Packet::Unsubscribe(u) => self.on_unsubscribe(u).await,
            Packet::PingRequest => self.write(Packet::PingResponse).await.map(drop),
            Packet::Disconnect(d) => Err(self.on_disconnect(d)),
            // [MQTT-3.1.0-2] a second CONNECT; AUTH without an authentication method; and
            // packets only a server sends.
            Packet::Connect(_)
            | Packet::Auth(_)
            | Packet::ConnectAck(_)
            | Packet::SubscribeAck(_)
            | Packet::UnsubscribeAck(_)
            | Packet::PingResponse => Err(End::Close(DisconnectReasonCode::ProtocolError)),
        }
    }

    async fn on_publish(&mut self, p: Publish) -> Result<(), End> {
        if p.dup && p.qos == QoS::AtMostOnce {
            return Err(End::Close(DisconnectReasonCode::MalformedPacket)); // [MQTT-3.3.1-2]
        }
        let ack = p.packet_id.map(|id| (p.qos, id));
        if ack.is_some() && self.v5 && self.unacked_in >= usize::from(self.cfg.receive_maximum) {
            return Err(End::Close(DisconnectReasonCode::ReceiveMaximumExceeded)); // [MQTT-3.3.4-9]
        }
        let message = match self.inbound_message(p) {
            Ok(message) => message,
            Err(Refusal::Reject(reason)) if self.v5 && ack.is_some() => {
                let (qos, id) = ack.unwrap_or((QoS::AtMostOnce, NonZeroU16::MIN));
                let packet = publish_ack(qos, id, ack_reason(reason));
                return self.write(packet).await.map(drop);
            }
            Err(Refusal::Drop { reason, why }) => {
                let Some((qos, id)) = ack else {
                    return Ok(());
                };
                let mut packet = publish_ack(qos, id, reason);
                if let Packet::PublishAck(a) | Packet::PublishReceived(a) = &mut packet {
                    // [MQTT-3.1.2-29] only to a client that asked for problem information.
                    a.reason_string = self.problem_info.then(|| ByteString::from_static(why));
                }
                return self.write(packet).await.map(drop);
            }
            Err(Refusal::Reject(reason) | Refusal::Close(reason)) => {
                return Err(End::Close(reason));
            }
        };
        if let Some((qos, id)) = ack {
            if qos == QoS::ExactlyOnce && !self.session.state().begin_incoming_qos2(id) {
                // A resend of a QoS 2 publish not yet released: acknowledge, deliver nothing
                // again [MQTT-4.3.3-10]. In order behind the original's own PUBREC.
                self.pending.push_back(Box::pin(async move {
                    Settled {
                        message: None,
                        ack,
                        reason: PublishAckReason::Success,
                        result: Ok(()),
                    }
                }));
                return Ok(());
            }
            self.unacked_in += 1;
        }
        let refusal = if !self.publish_rate.try_take(std::time::Instant::now()) {
            // [issue 5] over --mqtt-max-publish-rate. 0x96 Message rate too high is not a
            // PUBACK/PUBREC code [MQTT-3.4.2.1, 3.5.2.1], so MQTT 5 gets 0x97 Quota exceeded.
            Some(PublishAckReason::QuotaExceeded)
        } else if !may_publish(self.principal.as_deref(), &message, &self.client) {
            Some(PublishAckReason::NotAuthorized)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            // [issue 5] dropped. MQTT 5 says why; 3.1.1 has no way to, so the publish is
            // acknowledged as usual and goes nowhere. In order behind earlier publishes.
            let reason = if self.v5 {
                refusal
            } else {
                PublishAckReason::Success
            };
            if self.v5
                && let Some((QoS::ExactlyOnce, id)) = ack
            {
                // A refused QoS 2 exchange ends at PUBREC; no PUBREL follows.
                self.session.state().release_incoming_qos2(id);
            }
            self.pending.push_back(Box::pin(async move {
                Settled {
                    message: None,
                    ack,
                    reason,
                    result: Ok(()),
                }
            }));
            return Ok(());
        }
        let write = message.retained_write(self.broker.store().clock().now_ms());
        let message = Arc::new(message);
        match write {
            None if self.pending.is_empty() => {
                let settled = Settled {
                    message: Some(message),
                    ack,
                    reason: PublishAckReason::Success,
                    result: Ok(()),
                };
                self.settle(settled).await
            }
            write => {
                // Retained writes commit before the acknowledgement [MQTT-3.3.1-5]; everything
                // from this client settles in order behind them, so per-topic order holds.
                // Queued with the rest of the burst being read (`handle_burst`), so that
                // they commit together.
                let committed = write.map(|w| {
                    let owner = self.owner.clone();
                    let store = self.broker.store();
                    self.writes
                        .get_or_insert_with(|| store.batch())
                        .add(w, owner)
                });
                self.pending.push_back(Box::pin(async move {
                    let result = match committed {
                        Some(committed) => committed.await,
                        None => Ok(()),
                    };
                    Settled {
                        message: Some(message),
                        ack,
                        reason: PublishAckReason::Success,
                        result,
                    }
                }));
                Ok(())
            }
        }
    }

    /// Validates an inbound PUBLISH and turns it into a message.
    fn inbound_message(&mut self, p: Publish) -> Result<Message, Refusal> {
        use DisconnectReasonCode as R;
        let props = p.properties.unwrap_or_default();
        let topic = match props.topic_alias {
            Some(alias) if alias.get() > self.cfg.topic_alias_maximum => {
                return Err(Refusal::Close(R::TopicAliasInvalid)); // [MQTT-3.3.2-9]
            }
            Some(alias) if p.topic.is_empty() => match self.aliases.get(&alias.get()) {
                Some(topic) => topic.clone(),
                None => return Err(Refusal::Close(R::ProtocolError)),
            },
            alias => {
                let topic = self.topic_name(&p.topic)?;
                if let Some(alias) = alias {
                    self.aliases.insert(alias.get(), topic.clone());
                }
                topic
            }
        };
        if p.payload.len() > self.cfg.max_payload_bytes {
            return Err(Refusal::Close(R::PacketTooLarge));
        }
        if p.retain && topic.is_reserved() {
            // Like the HTTP API: `$` topics belong to the server [MQTT-4.7.2-1].
            return Err(Refusal::Reject(R::TopicNameInvalid));
        }
        // [MQTT-3.3.2-?] a payload declared UTF-8 must be UTF-8.
        if props.is_utf8_payload && std::str::from_utf8(&p.payload).is_err() {
            return Err(Refusal::Reject(R::PayloadFormatInvalid));
        }
        let properties = wire::message_properties(
            &props.user_properties,
            props.content_type.as_ref(),
            props.response_topic.as_ref(),
            props.correlation_data.as_ref(),
            props.is_utf8_payload,
            self.cfg.topic_limits,
        )
        .map_err(|_| Refusal::Close(R::ProtocolError))?;
        if store::user_properties_wire_len(&properties.user_properties)
            > store::MAX_USER_PROPERTY_BYTES
        {
            // The limit the HTTP API applies, measured the same way. 0x83: the
            // publish is valid but not accepted; no PUBACK code names a size limit.
            return Err(Refusal::Drop {
                reason: PublishAckReason::ImplementationSpecificError,
                why: USER_PROPERTIES_TOO_LARGE,
            });
        }
        let now = self.broker.store().clock().now_ms();
        Ok(Message {
            topic,
            payload: p.payload,
            qos: p.qos.into(),
            retain: p.retain,
            properties,
            expires_at_ms: props
                .message_expiry_interval
                .map(|s| now + i64::from(s.get()) * 1000),
            origin: Some(self.client.clone()),
            wire: Default::default(),
        })
    }

    fn topic_name(&self, raw: &ByteString) -> Result<TopicName, Refusal> {
        use DisconnectReasonCode as R;
        TopicName::parse(&**raw, self.cfg.topic_limits).map_err(|e| match e {
            // [MQTT-3.3.2-1] a topic name is required without an alias.
            TopicError::Empty => Refusal::Close(R::ProtocolError),
            // [MQTT-3.3.2-2] wildcards never appear in topic names.
            TopicError::Wildcard => Refusal::Close(R::TopicNameInvalid),
            // [MQTT-1.5.4-2] U+0000 in a UTF-8 string makes the packet malformed.
            TopicError::NullCharacter => Refusal::Close(R::MalformedPacket),
            TopicError::TooLong { .. } | TopicError::TooManyLevels { .. } => {
                Refusal::Reject(R::TopicNameInvalid)
            }
        })
    }

    /// Acknowledges and routes a publish the store has settled.
    pub(super) async fn settle(&mut self, settled: Settled) -> Result<(), End> {
        match settled.result {
            Ok(()) => {
                if let Some(message) = settled.message {
                    self.broker.route(message);
                }
                if let Some((qos, id)) = settled.ack {
                    let refused = u8::from(settled.reason) >= 0x80;
                    if qos == QoS::AtLeastOnce || refused {
                        self.unacked_in = self.unacked_in.saturating_sub(1);
                    }
                    self.write(publish_ack(qos, id, settled.reason)).await?;
                }
                Ok(())
            }
            Err(store::Error::QuotaExceeded(quota)) => {
                // [issue 5] refused and delivered to nobody, like a denied publish: MQTT 5
                // says 0x97 Quota exceeded; 3.1.1 cannot say it, and closing would only make
                // the client resend, so it is acknowledged and dropped.
                // Per publish, so a client past its quota cannot fill the log.
                tracing::debug!(client = %self.client, %quota, "a retained publish was refused");
                let Some((qos, id)) = settled.ack else {
                    return Ok(());
                };
                if qos == QoS::AtLeastOnce || self.v5 {
                    // A QoS 2 exchange acknowledged as usual stays open until PUBREL.
                    self.unacked_in = self.unacked_in.saturating_sub(1);
                }
                let reason = if self.v5 {
                    if qos == QoS::ExactlyOnce {
                        self.session.state().release_incoming_qos2(id);
                    }
                    PublishAckReason::QuotaExceeded
                } else {
                    PublishAckReason::Success
                };
                self.write(publish_ack(qos, id, reason)).await.map(drop)
            }
            Err(e) => {
                // Logged by the store, once per failed batch and in summary.
                tracing::debug!(error = %e, "a retained publish could not be stored");
                let Some((qos, id)) = settled.ack else {
                    return Ok(());
                };
                if !self.v5 {
                    // 3.1.1 has no way to say "not stored": close, and the client resends.
                    return Err(End::Lost);
                }
                self.unacked_in = self.unacked_in.saturating_sub(1);
                if qos == QoS::ExactlyOnce {
                    self.session.state().release_incoming_qos2(id);
                }
                self.write(publish_ack(qos, id, PublishAckReason::UnspecifiedError))
                    .await
                    .map(drop)
            }
        }
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), End> {
        let mut status = Vec::with_capacity(s.topic_filters.len());
        let mut first_pages = Vec::new();
        for (raw, opts) in s.topic_filters {
            let Ok(spec) = FilterSpec::parse(&raw) else {
                status.push(SubscribeAckReason::TopicFilterInvalid); // [MQTT-3.8.3-?]
                continue;
            };
            if spec.share_group().is_some() && opts.no_local {
                return Err(End::Close(DisconnectReasonCode::ProtocolError)); // [MQTT-3.8.3-4]
            }
            let allowed = self.principal.as_ref().is_none_or(|p| {
                p.allows(
                    Action::Subscribe,
                    spec.filter().as_str(),
                    Some(&self.client),
                )
            });
            if !allowed {
                // [issue 5] 3.1.1 shows this as the failure code 0x80.
                status.push(SubscribeAckReason::NotAuthorized);
                continue;
            }
            let fits = limits::subscription_fits(
                &self.session.state().subscriptions,
                &spec,
                self.cfg.max_subscriptions,
            );
            if !fits {
                // [issue 5] beyond --mqtt-max-subscriptions: 0x97 Quota exceeded (3.1.1: the
                // failure code 0x80); the packet's other filters are still handled.
                status.push(SubscribeAckReason::QuotaExceeded);
                continue;
            }
            let options = SubOptions {
                qos: opts.qos.into(),
                no_local: opts.no_local,
                retain_as_published: opts.retain_as_published,
                subscription_id: s.id,
            };
            let existed = self
                .broker
                .subscriptions_write()
                .insert(&self.client, &spec, options)
                .is_some();
            self.session
                .state()
                .subscriptions
                .insert(spec.clone(), options);
            status.push(match opts.qos {
                QoS::AtMostOnce => SubscribeAckReason::GrantedQos0,
                QoS::AtLeastOnce => SubscribeAckReason::GrantedQos1,
                QoS::ExactlyOnce => SubscribeAckReason::GrantedQos2,
            });
            // Retained messages go to new plain subscriptions as Retain Handling says, never
            // to shared ones [MQTT-3.3.1-9, -10, -11; MQTT-4.8.2-?].
            let wanted = match opts.retain_handling {
                RetainHandling::AtSubscribe => true,
                RetainHandling::AtSubscribeNew => !existed,
                RetainHandling::NoAtSubscribe => false,
            };
            if wanted && spec.share_group().is_none() {
                first_pages.push(RetainedScan::new(spec.filter().clone(), options));
            }
        }
        // The first page of each filter's retained messages is read now, before SUBACK: the
        // subscription's view of the retained state is taken at subscribe time, so a message
        // published after SUBACK arrives once, live, and never again as a retained copy read
        // later. Further pages (large wildcard subscriptions) are read while these are sent.
        for scan in first_pages {
            let page = scan
                .fetch(self.broker.store().clone(), self.cfg.topic_limits)
                .await;
            self.fetched(page)?;
        }
        let suback = SubscribeAck {
            packet_id: s.packet_id,
            properties: Vec::new(),
            reason_string: None,
            status,
        };
        self.write(Packet::SubscribeAck(suback)).await.map(drop)
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), End> {
        let mut status = Vec::with_capacity(u.topic_filters.len());
        for raw in u.topic_filters {
            let Ok(spec) = FilterSpec::parse(&raw) else {
                status.push(UnsubscribeAckReason::TopicFilterInvalid);
                continue;
            };
            let removed = self
                .broker
                .subscriptions_write()
                .remove(&self.client, &spec)
                .is_some();
            self.session.state().subscriptions.remove(&spec);
            status.push(if removed {
                UnsubscribeAckReason::Success
            } else {
                UnsubscribeAckReason::NoSubscriptionExisted
            });
        }
        let unsuback = UnsubscribeAck {
            packet_id: u.packet_id,
            properties: Vec::new(),
            reason_string: None,
            status,
        };
        self.write(Packet::UnsubscribeAck(unsuback)).await.map(drop)
    }

    fn on_disconnect(&mut self, d: Disconnect) -> End {
        if let Some(secs) = d.session_expiry_interval_secs {
            // [MQTT-3.14.2-2] a session that was to end with the connection cannot be extended.
            if self.session_expiry == 0 && secs != 0 {
                return End::Close(DisconnectReasonCode::ProtocolError);
            }
            self.session_expiry = secs;
        }
        End::ClientDisconnect {
            // [MQTT-3.14.4-3] a normal DISCONNECT discards the Will; 0x04 asks for it.
            keep_will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
        }
    }
}

fn ack2(packet_id: NonZeroU16, known: bool) -> PublishAck2 {
    PublishAck2 {
        packet_id,
        reason_code: if known {
            PublishAck2Reason::Success
        } else {
            PublishAck2Reason::PacketIdNotFound
        },
        properties: Vec::new(),
        reason_string: None,
    }
}

fn publish_ack(qos: QoS, packet_id: NonZeroU16, reason_code: PublishAckReason) -> Packet {
    let ack = PublishAck {
        packet_id,
        reason_code,
        properties: Vec::new(),
        reason_string: None,
    };
    if qos == QoS::ExactlyOnce {
        Packet::PublishReceived(ack)
    } else {
        Packet::PublishAck(ack)
    }
}

fn ack_reason(reason: DisconnectReasonCode) -> PublishAckReason {
    match reason {
        DisconnectReasonCode::TopicNameInvalid => PublishAckReason::TopicNameInvalid,
        DisconnectReasonCode::PayloadFormatInvalid => PublishAckReason::PayloadFormatInvalid,
        DisconnectReasonCode::QuotaExceeded => PublishAckReason::QuotaExceeded,
        _ => PublishAckReason::UnspecifiedError,
    }
}
