//! One connected client's protocol state, without its socket: what each packet it sends does
//! to the broker and its session, and what is to be sent back ([`Client::apply`], into an
//! [`Outbox`]); its publishes waiting for the store (`settling`) and what else goes out to it
//! (`outbound`). The connection's loop (`connection`) reads, applies and writes; nothing here
//! touches the transport.

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::admission::may_publish;
use super::conditional;
use super::config::BrokerConfig;
use super::end::End;
use super::handle::Broker;
use super::inbound_publish::{self, Aliases};
use super::inbound_qos::{Ack, Admitted, Answer, InboundQos, Refusal, Why};
use super::limits::ConnectionSlot;
use super::outbound::Outbound;
use super::principal_connections::PrincipalPlace;
use super::publish_rate::PublishBucket;
use super::registry::{Session, Sessions, StopReason};
use super::retained::{RetainedFeed, Tries};
use super::settling::{Settled, Settling};
use super::subscribe::{self, Subscriber};
use super::wake::Wake;
use super::will::{Ended, Will};
use crate::auth::{Credential, Principal};
use crate::cluster::Restored;
use crate::metrics::DropReason;
use crate::mqtt::{
    ByteString, Disconnect, DisconnectReasonCode, Packet, Publish, PublishAck, PublishAck2,
    PublishAck2Reason, PublishAckReason, QoS,
};
use crate::rate::TokenBucket;
use crate::store::{self, OwnedWrite, Owner, WriteBatch};
use crate::topic::ClientKey;

/// What a connection waits on besides its socket, borrowed apart so that one `select!` can
/// wait on all of it.
pub(super) struct Waits<'a> {
    /// Cancelled when the connection must close (taken over, kicked, shutdown).
    pub stop: &'a CancellationToken,
    pub settling: &'a mut Settling,
    pub retained: &'a mut RetainedFeed,
    /// Notified when something was queued for the client.
    pub wake: &'a Wake,
}

/// What applying packets produced for the connection to do, in order.
#[derive(Default)]
pub(super) struct Outbox {
    pub packets: Vec<Packet>,
    /// The client acknowledged a message sent to it: it still takes what is sent.
    pub took: bool,
}

impl Outbox {
    fn send(&mut self, packet: Packet) {
        self.packets.push(packet);
    }
}

/// What a connection knows once its CONNECT is accepted (see `accept`).
pub(super) struct Joined {
    pub broker: Broker,
    pub v5: bool,
    pub key: ClientKey,
    pub principal: Option<Arc<Principal>>,
    /// The credential besides its MQTT ones that let it in (see
    /// [`TransportIdentity::credential`](super::admission::TransportIdentity::credential)).
    pub credential: Option<Credential>,
    pub will: Option<Will>,
    pub session_expiry: u32,
    pub problem_info: bool,
    /// The client's Receive Maximum (3.1.1: none).
    pub client_window: u16,
    pub slot: ConnectionSlot,
    /// Its place under its principal's `max_connections`, if it has one.
    pub principal_place: Option<PrincipalPlace>,
    /// The generation of its claim on the client id, service-wide (0: a single node).
    pub claim: u64,
    /// Its session as another node (or this one) left it in Postgres, when it resumes one.
    pub restored: Option<Restored>,
}

/// A client past CONNECT, until its connection ends.
pub(super) struct Client {
    broker: Broker,
    cfg: BrokerConfig,
    v5: bool,
    key: ClientKey,
    /// Whom this client's retained publishes are charged to, and the principal (the
    /// session's, which a reload may replace) it was worked out from.
    owner: (Owner, Option<Arc<Principal>>),
    session: Arc<Session>,
    connection: u64,
    /// Cancelled when the connection must close (taken over, kicked, shutdown).
    stop: CancellationToken,
    stop_reason: StopReason,
    will: Option<Will>,
    session_expiry: u32,
    /// Whether the client accepts reason strings beyond CONNACK, PUBLISH and DISCONNECT
    /// (MQTT 5 Request Problem Information).
    problem_info: bool,
    aliases: Aliases,
    inbound: InboundQos,
    pending: Settling,
    /// Retained writes of the packets being read, queued together at the end of the burst.
    writes: Option<WriteBatch>,
    outbound: Outbound,
    /// Its PUBLISH rate, `--mqtt-max-publish-rate`.
    publish_rate: TokenBucket,
    /// Its principal's, shared with the principal's other connections
    /// (`--mqtt-publish-rate-per-principal`).
    principal_publish_rate: Option<PublishBucket>,
    /// This connection's place under `--mqtt-max-connections`, freed when it is dropped.
    _slot: ConnectionSlot,
    /// Its place under its principal's `max_connections`, freed when it is dropped.
    _principal_place: Option<PrincipalPlace>,
    /// Its claim on the client id, released when it ends (0: a single node).
    claim: u64,
}

impl Client {
    /// Attaches the client to its session; true with it if the session was resumed.
    pub fn join(joined: Joined, clean_start: bool) -> (Self, bool) {
        let Joined {
            broker,
            v5,
            key,
            principal,
            credential,
            will,
            session_expiry,
            problem_info,
            client_window,
            slot,
            principal_place,
            claim,
            restored,
        } = joined;
        let cfg = broker.config().clone();
        let attached = broker.attach(key.clone(), clean_start, principal.clone(), claim, restored);
        attached.session.set_credential(credential);
        // Authenticated under principals a reload has just replaced: judged as the reload
        // judges the sessions it finds (see `reauthorize`), credential included.
        if broker.reauthorize_session(&attached.session) == Some(false) {
            attached.session.revoke();
        }
        let client = Self {
            outbound: Outbound::new(
                attached.session.clone(),
                attached.stop.clone(),
                usize::from(client_window.min(cfg.max_inflight.max(1))),
                broker.store().clone(),
                cfg.topic_limits,
                broker.metrics().clone(),
                broker.read_ahead().clone(),
            ),
            inbound: InboundQos::new(v5, cfg.receive_maximum),
            publish_rate: TokenBucket::new(cfg.max_publish_rate, std::time::Instant::now()),
            principal_publish_rate: broker.inner.publish_rates.bucket(
                principal.as_ref().map(|p| p.name.as_str()),
                std::time::Instant::now(),
            ),
            owner: (Owner::of(principal.as_deref()), principal),
            broker,
            cfg,
            v5,
            key,
            session: attached.session,
            connection: attached.connection,
            stop: attached.stop,
            stop_reason: attached.stop_reason,
            will,
            session_expiry,
            problem_info,
            aliases: Aliases::default(),
            pending: Settling::default(),
            writes: None,
            _slot: slot,
            _principal_place: principal_place,
            claim,
        };
        (client, attached.session_present)
    }

    pub fn key(&self) -> &ClientKey {
        &self.key
    }

    pub fn v5(&self) -> bool {
        self.v5
    }

    /// Applies one packet from the client; what is to be sent back goes to `out`.
    pub async fn apply(&mut self, packet: Packet, out: &mut Outbox) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => self.on_publish(*p, out),
            Packet::PublishAck(a) => {
                out.took |= self.session.state().acknowledge(a.packet_id);
                Ok(())
            }
            Packet::PublishReceived(a) => {
                if u8::from(a.reason_code) >= 0x80 {
                    // The client refused the message: the exchange ends here [MQTT-4.4.0-2].
                    self.session.state().forget(a.packet_id);
                    return Ok(());
                }
                let known = self.session.state().received(a.packet_id);
                out.took |= known;
                out.send(Packet::PublishRelease(ack2(a.packet_id, known)));
                Ok(())
            }
            Packet::PublishRelease(r) => {
                let mut state = self.session.state();
                let known = self.inbound.released(state.awaiting_release(), r.packet_id);
                drop(state);
                out.send(Packet::PublishComplete(ack2(r.packet_id, known)));
                Ok(())
            }
            Packet::PublishComplete(c) => {
                out.took |= self.session.state().completed(c.packet_id);
                Ok(())
            }
            Packet::Subscribe(s) => {
                let subscribed =
                    subscribe::subscribe(&self.subscriber(self.principal().as_deref()), s)
                        .map_err(End::Close)?;
                // The first page of each filter's retained messages is read now, before
                // SUBACK: the subscription's view of the retained state is taken at subscribe
                // time, so a message published after SUBACK arrives once, live, and never
                // again as a retained copy read later. Further pages (large wildcard
                // subscriptions) are read while these are sent.
                for scan in subscribed.retained {
                    if !self.outbound.room_for_retained() {
                        // Held to the allowance however many filters one SUBSCRIBE names:
                        // these first pages are read after the SUBACK, as the queue drains.
                        self.outbound.feed().defer(scan);
                        continue;
                    }
                    let store = self.broker.store();
                    let read =
                        self.outbound
                            .feed()
                            .read(scan, store, self.cfg.topic_limits, Tries::Once);
                    self.outbound.fetched(read.await)?;
                }
                self.outbound.fetch_retained();
                // Once the other nodes know the filters, what they publish reaches it. The
                // cluster bounds each announcement; a node without NATS answers at once.
                for announced in subscribed.announcements {
                    let _ = announced.await;
                }
                self.store_subscriptions().await;
                out.send(Packet::SubscribeAck(subscribed.ack));
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                let ack = subscribe::unsubscribe(&self.subscriber(self.principal().as_deref()), u);
                self.store_subscriptions().await;
                out.send(Packet::UnsubscribeAck(ack));
                Ok(())
            }
            Packet::PingRequest => {
                out.send(Packet::PingResponse);
                Ok(())
            }
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

    fn subscriber<'a>(&'a self, principal: Option<&'a Principal>) -> Subscriber<'a> {
        Subscriber {
            broker: &self.broker,
            client: &self.key,
            session: &self.session,
            connection: self.connection,
            principal,
        }
    }

    /// The principal now in force for this client (a reload may have replaced it).
    fn principal(&self) -> Option<Arc<Principal>> {
        self.session.principal()
    }

    /// Whom a retained write is charged to, under the principal in force.
    fn owner(&mut self) -> Owner {
        let principal = self.principal();
        let (owner, of) = &mut self.owner;
        let same = match (&principal, &*of) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            *owner = Owner::of(principal.as_deref());
            *of = principal;
        }
        owner.clone()
    }

    fn on_publish(&mut self, mut p: Publish, out: &mut Outbox) -> Result<(), End> {
        if p.dup && p.qos == QoS::AtMostOnce {
            return Err(End::Close(DisconnectReasonCode::MalformedPacket)); // [MQTT-3.3.1-2]
        }
        self.broker.metrics().mqtt_received(p.qos as u8);
        let ack = p.packet_id.map(|id| (p.qos, id));
        self.inbound.check_room(ack).map_err(End::Close)?;
        // Taken out before the message is built from the properties, so that neither the
        // store nor a subscriber sees them. A malformed one is refused below, once the publish
        // is counted, so that its answer takes its turn behind earlier publishes.
        let condition = match p.properties.as_mut() {
            Some(props) => conditional::take(&mut props.user_properties, p.retain),
            None => Ok(None),
        };
        let now = self.broker.store().clock().now_ms();
        let message =
            match inbound_publish::message(p, &mut self.aliases, &self.cfg, &self.key, now) {
                Ok(message) => message,
                Err(refusal) => return self.refuse_now(ack, refusal, out),
            };
        let mut state = self.session.state();
        let admitted = self.inbound.admit(state.awaiting_release(), ack);
        drop(state);
        if admitted == Admitted::Duplicate {
            // Acknowledged in order behind the original's own PUBREC.
            self.pending.answer(ack, PublishAckReason::Success, None);
            return Ok(());
        }
        // The clock is read only when a rate applies: this is every publish's path.
        let over_rate = if self.publish_rate.limits()
            && !self.publish_rate.try_take(std::time::Instant::now())
        {
            Some(DropReason::publish_rate)
        } else if let Some(principal) = &self.principal_publish_rate
            && !principal.try_take(std::time::Instant::now())
        {
            Some(DropReason::principal_publish_rate)
        } else {
            None
        };
        let refusal = if let Some(reason) = over_rate {
            // Over --mqtt-max-publish-rate or its principal's rate. 0x96 Message rate too high
            // is not a PUBACK/PUBREC code (MQTT 5 §3.4.2.1, §3.5.2.1), so MQTT 5 gets 0x97
            // Quota exceeded.
            let quota = PublishAckReason::QuotaExceeded;
            Some((Refusal::Dropped(quota), reason))
        } else if !may_publish(
            self.principal().as_deref(),
            &message.topic,
            message.retain,
            &self.key,
        ) {
            Some((
                Refusal::Dropped(PublishAckReason::NotAuthorized),
                DropReason::policy,
            ))
        } else {
            // Counted whatever its QoS: a QoS 0 publisher hears nothing, so this count is
            // how an operator learns that a client sends conditions retaind cannot read.
            condition.as_ref().err().map(|malformed| {
                (
                    Refusal::Unreadable(malformed.why()),
                    DropReason::malformed_condition,
                )
            })
        };
        if let Some((refusal, dropped)) = refusal {
            self.broker.metrics().mqtt_dropped(dropped, 1);
            let mut state = self.session.state();
            let answer = self.inbound.refused(state.awaiting_release(), ack, refusal);
            drop(state);
            // Answered in order behind earlier publishes.
            let (ack, reason, why) = match answer {
                Answer::Ack { ack, reason, why } => (Some(ack), reason, why),
                _ => (None, PublishAckReason::Success, None),
            };
            self.pending.answer(ack, reason, why);
            return Ok(());
        }
        // A malformed condition was refused just above.
        let condition = condition.unwrap_or_default();
        let write = message.retained_write(now);
        let message = Arc::new(message);
        match write {
            None if self.pending.is_empty() => {
                let settled = Settled {
                    message: Some(message),
                    ack,
                    reason: PublishAckReason::Success,
                    why: None,
                    condition: None,
                    result: Ok(()),
                };
                self.settle(settled, out)
            }
            write => {
                // Retained writes commit before the acknowledgement [MQTT-3.3.1-5]; everything
                // from this client settles in order behind them, so per-topic order holds.
                // Queued with the rest of the burst being read (`submit_writes`), so that
                // they commit together.
                let committed = write.map(|w| {
                    let write = OwnedWrite {
                        write: w,
                        owner: self.owner(),
                        client: Some(self.key.clone()),
                        condition,
                    };
                    let store = self.broker.store();
                    let answer = self
                        .writes
                        .get_or_insert_with(|| store.batch())
                        .add_owned(write);
                    async move { answer.await.map(drop) }
                });
                self.pending.push(message, ack, condition, committed);
                Ok(())
            }
        }
    }

    /// Answers a publish refused before it was counted, at once.
    fn refuse_now(
        &mut self,
        ack: Option<Ack>,
        refusal: Refusal,
        out: &mut Outbox,
    ) -> Result<(), End> {
        let answer = self
            .inbound
            .refused(self.session.state().awaiting_release(), ack, refusal);
        self.answer(answer, out)
    }

    fn answer(&self, answer: Answer, out: &mut Outbox) -> Result<(), End> {
        match answer {
            Answer::Nothing => Ok(()),
            Answer::Ack {
                ack: (qos, id),
                reason,
                why,
            } => {
                out.send(self.publish_ack(qos, id, reason, why));
                Ok(())
            }
            Answer::Close(reason) => Err(End::Close(reason)),
            Answer::Hangup => Err(End::Lost),
        }
    }

    /// Acknowledges and routes a publish the store has settled.
    pub fn settle(&mut self, settled: Settled, out: &mut Outbox) -> Result<(), End> {
        let refusal = match settled.result {
            Ok(()) => {
                if let Some(message) = settled.message {
                    self.broker.route(message);
                }
                if is_qos2(settled.ack) {
                    self.inbound
                        .stored(self.session.state().awaiting_release(), settled.ack);
                }
                if let Some((qos, id)) = settled.ack {
                    self.inbound.acknowledged(qos, settled.reason);
                    out.send(self.publish_ack(qos, id, settled.reason, settled.why));
                }
                return Ok(());
            }
            Err(store::Error::QuotaExceeded(quota)) => {
                // Refused and delivered to nobody, like a denied publish. Logged per publish,
                // so a client past its quota cannot fill the log.
                tracing::debug!(client = %self.key, %quota, "a retained publish was refused");
                self.broker.metrics().mqtt_dropped(DropReason::quota, 1);
                Refusal::Dropped(PublishAckReason::QuotaExceeded)
            }
            // The store fails only conditional writes so; `None` cannot be, and would be
            // answered as a write not stored.
            Err(store::Error::ConditionFailed) => match settled.condition {
                Some(condition) => {
                    // Not stored and delivered to nobody, as HTTP's 412. Counted whatever the
                    // QoS, as the quota is.
                    tracing::debug!(client = %self.key, ?condition, "a conditional publish's condition did not hold");
                    self.broker
                        .metrics()
                        .mqtt_dropped(DropReason::precondition, 1);
                    Refusal::Unmet(condition)
                }
                None => Refusal::NotStored,
            },
            Err(e) => {
                // Logged by the store, once per failed batch and in summary.
                tracing::debug!(error = %e, "a retained publish could not be stored");
                Refusal::NotStored
            }
        };
        let mut state = self.session.state();
        let answer = self
            .inbound
            .refused(state.awaiting_release(), settled.ack, refusal);
        drop(state);
        if let Answer::Ack {
            ack: (qos, _),
            reason,
            ..
        } = answer
        {
            self.inbound.acknowledged(qos, reason);
        }
        self.answer(answer, out)
    }

    /// The PUBACK (QoS 1) or PUBREC (QoS 2) of a publish, saying why only to a client that
    /// asked for problem information [MQTT-3.1.2-29].
    fn publish_ack(
        &self,
        qos: QoS,
        id: NonZeroU16,
        reason: PublishAckReason,
        why: Option<Why>,
    ) -> Packet {
        let reason_string = why.filter(|_| self.problem_info).map(|why| match why {
            Why::Text(text) => ByteString::from_static(text),
            why => ByteString::from(why.to_string()),
        });
        let ack = PublishAck {
            packet_id: id,
            reason_code: reason,
            properties: Vec::new(),
            reason_string,
        };
        if qos == QoS::ExactlyOnce {
            Packet::PublishReceived(ack)
        } else {
            Packet::PublishAck(ack)
        }
    }

    fn on_disconnect(&mut self, d: Disconnect) -> End {
        if let Some(secs) = d.session_expiry_interval_secs {
            // [MQTT-3.14.2-2] a session that was to end with the connection cannot be extended.
            if self.session_expiry == 0 && secs != 0 {
                return End::Close(DisconnectReasonCode::ProtocolError);
            }
            self.session_expiry = super::limits::session_expiry(secs, self.cfg.max_session_expiry);
        }
        End::ClientDisconnect {
            // [MQTT-3.14.4-3] a normal DISCONNECT discards the Will; 0x04 asks for it.
            keep_will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
        }
    }

    /// Publishes waiting for the store.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// The payload bytes of the publishes [`Client::waiting`].
    pub fn waiting_bytes(&self) -> usize {
        self.pending.bytes()
    }

    pub fn waits(&mut self) -> Waits<'_> {
        Waits {
            stop: &self.stop,
            settling: &mut self.pending,
            retained: self.outbound.feed(),
            wake: &self.session.wake,
        }
    }

    /// A publish whose store write is already done, if the next one is.
    pub fn settled_now(&mut self) -> Option<Settled> {
        self.pending.next_now()
    }

    /// Queues the retained writes of the packets just read, so that they commit together.
    pub async fn submit_writes(&mut self) {
        if let Some(writes) = self.writes.take() {
            writes.submit().await;
        }
    }

    /// Why the connection was asked to close.
    /// Cancelled when the connection is to end (taken over, drained, the node stopping).
    pub fn stop_signal(&self) -> &CancellationToken {
        &self.stop
    }

    pub fn stop_reason(&self) -> DisconnectReasonCode {
        self.stop_reason.get()
    }

    pub fn shutting_down(&self) -> bool {
        self.broker.shutdown_signal().is_cancelled()
    }

    /// Where a drain tells the client to go (`--mqtt-server-reference`), if anywhere.
    pub fn server_reference(&self) -> Option<&str> {
        self.broker.config().server_reference.as_deref()
    }

    /// What goes to the client besides answers.
    pub fn outbound(&mut self) -> &mut Outbound {
        &mut self.outbound
    }

    /// Ends the client's part: publishes already read still reach the store and the
    /// subscribers, the session is left to expire, and the Will goes out if asked to.
    pub async fn leave(&mut self, publish_will: bool) {
        while let Some(settled) = self.pending.drain().await {
            match (settled.result, settled.message) {
                (Ok(()), message) => {
                    if let Some(message) = message {
                        self.broker.route(message);
                    }
                    if is_qos2(settled.ack) {
                        self.inbound
                            .stored(self.session.state().awaiting_release(), settled.ack);
                    }
                }
                // Not stored, and no one to tell: a QoS 2 id is forgotten, so that the resend
                // after the client's return is stored rather than taken for a duplicate.
                (Err(_), _) => {
                    let _ = self.inbound.refused(
                        self.session.state().awaiting_release(),
                        settled.ack,
                        Refusal::NotStored,
                    );
                }
            }
        }
        // An operator's disconnect may end the session and keep the Will back.
        let (discard, no_will) = self.stop_reason.ousted();
        let publish_will = publish_will && !no_will;
        let expiry = if discard {
            Duration::ZERO
        } else {
            Duration::from_secs(u64::from(self.session_expiry))
        };
        self.broker
            .detach(&self.session, self.connection, self.claim, expiry);
        // Taken over by a connection on another node that resumes the session: as after a
        // take-over here, a delayed Will is not published (MQTT 5, 3.1.3.2.2).
        let resumed_elsewhere = self.session.resumed_elsewhere()
            && self
                .will
                .as_ref()
                .is_some_and(|w| !w.delay.min(expiry).is_zero());
        if publish_will
            && !resumed_elsewhere
            && !self.session.adopted_elsewhere()
            && self.will_still_allowed()
            && let Some(will) = self.will.take()
        {
            let ended = Ended::now(&self.broker, self.connection, self.claim);
            self.broker
                .publish_will(will, self.key.clone(), ended, expiry);
        }
    }

    /// A Will was checked at CONNECT; a reload since may have removed the principal (its
    /// connection was closed for it: no Will) or its right to publish there.
    fn will_still_allowed(&self) -> bool {
        let Some(will) = &self.will else {
            return true;
        };
        let Some(principal) = self.principal() else {
            return true;
        };
        self.broker.still_stands(&principal).is_some_and(|now| {
            may_publish(
                Some(&now),
                &will.publication.topic,
                will.publication.retain,
                &self.key,
            )
        })
    }

    /// The CONNACK could not be sent: the connection ends before it began, without its Will,
    /// and the session is kept for its expiry as at any other end of a connection. It may be
    /// a session resumed with what it held for the client (before 2026-12-06 it was ended at
    /// once, queue and subscriptions, when the client vanished during the CONNECT).
    pub fn abandon(&self) {
        let expiry = Duration::from_secs(u64::from(self.session_expiry));
        self.broker
            .detach(&self.session, self.connection, self.claim, expiry);
    }

    /// A persistent session's subscriptions, written through to Postgres before the SUBACK
    /// or UNSUBACK when the node is one of many, so that any node can resume the session.
    async fn store_subscriptions(&mut self) {
        let Some(cluster) = self.broker.cluster() else {
            return;
        };
        if self.session_expiry == 0 {
            return;
        }
        let stored = Sessions::stored_subscriptions(&self.session);
        if let Err(e) = cluster.session_subscriptions(&self.key, &stored).await {
            tracing::warn!(client = %self.key, error = %e, "the session's subscriptions could not be stored; another node resuming it would not have them");
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

/// Whether `ack` is a QoS 2 exchange's: only those await PUBREL, so only they need the
/// session's lock once settled (not taken for every QoS 1 publish).
fn is_qos2(ack: Option<(QoS, std::num::NonZeroU16)>) -> bool {
    matches!(ack, Some((QoS::ExactlyOnce, _)))
}
