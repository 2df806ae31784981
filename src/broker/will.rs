//! Will messages: checked like a PUBLISH when the client connects, published when its
//! connection ends badly, after the Will Delay unless the session resumes first.
//!
//! A retained Will is stored before it is delivered, like any retained publish; when the
//! database cannot store it for now, it is tried again ([`Patience`]) until it is stored, the
//! client connects again (its new state is then newer than the Will), or the broker stops.
//! Nobody else can retry it: the client is gone, and a Will that marks a device offline
//! (retained, as fleets use it) would otherwise leave it "online" for good.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::admission::may_publish;
use super::config::BrokerConfig;
use super::handle::{Broker, PublishFrom};
use super::message::{Message, Publication};
use super::patience::Patience;
use super::wire;
use crate::cluster::{Budget, Routed, StoredWill};
use crate::mqtt::{ConnectAckReason, LastWill};
use crate::store::{self, Owner};
use crate::topic::ClientKey;
use crate::topic::TopicName;

/// A Will message and how long after the connection ends it is published.
#[derive(Debug, Clone)]
pub(super) struct Will {
    /// Made a message only when published: its expiry counts from then, as the Will's Message
    /// Expiry Interval is "sent as the Publication Expiry Interval when the Server publishes
    /// the Will Message" (MQTT 5, 3.1.3.2.4).
    pub publication: Publication,
    pub delay: Duration,
    /// Whom a retained Will is charged to: the client's principal.
    pub owner: Owner,
}

impl Will {
    /// As a session's row keeps it (decision 014), published by `client`.
    pub fn stored(&self, client: &ClientKey) -> StoredWill {
        let p = &self.publication;
        StoredWill {
            publication: Routed {
                topic: p.topic.clone(),
                payload: p.payload.clone(),
                qos: p.qos,
                retain: p.retain,
                properties: p.properties.clone(),
                expires_at_ms: None,
                origin: Some(client.clone()),
                shared_done: false,
                stamp: None,
            },
            expiry_secs: p.expiry_secs,
            delay: self.delay,
            owner: self.owner.name.to_string(),
            owner_max: self.owner.max_messages,
        }
    }
}

/// The Will of a CONNECT, checked like a PUBLISH would be.
pub(super) fn will(w: &LastWill, cfg: &BrokerConfig) -> Result<Will, ConnectAckReason> {
    let topic = TopicName::parse(&*w.topic, cfg.topic_limits)
        .map_err(|_| ConnectAckReason::TopicNameInvalid)?;
    if w.retain && topic.is_reserved() {
        return Err(ConnectAckReason::TopicNameInvalid);
    }
    if w.message.len() > cfg.max_payload_bytes {
        return Err(ConnectAckReason::PacketTooLarge);
    }
    let utf8 = w.is_utf8_payload.unwrap_or(false);
    if utf8 && std::str::from_utf8(&w.message).is_err() {
        return Err(ConnectAckReason::PayloadFormatInvalid);
    }
    let properties = wire::message_properties(
        &w.user_properties,
        w.content_type.as_ref(),
        w.response_topic.as_ref(),
        w.correlation_data.as_ref(),
        utf8,
        cfg.topic_limits,
    )
    .map_err(|_| ConnectAckReason::ProtocolError)?;
    // The user-property limit of a PUBLISH (and of the HTTP API) holds for a Will.
    if store::user_properties_wire_len(&properties.user_properties) > store::MAX_USER_PROPERTY_BYTES
    {
        return Err(ConnectAckReason::ImplementationSpecificError);
    }
    Ok(Will {
        publication: Publication {
            topic,
            payload: w.message.clone(),
            qos: w.qos.into(),
            retain: w.retain,
            properties,
            expiry_secs: w.message_expiry_interval.map(NonZeroU32::get),
        },
        delay: Duration::from_secs(u64::from(w.will_delay_interval_sec.unwrap_or(0))),
        owner: Owner::anonymous(),
    })
}

impl Broker {
    /// [MQTT-3.1.2-8] publishes a Will, after its delay unless the session was resumed in
    /// the meantime or ended first [MQTT-3.1.3-9].
    pub(super) fn publish_will(
        &self,
        will: Will,
        client: ClientKey,
        ended: Ended,
        expiry: Duration,
    ) {
        let delay = will.delay.min(expiry);
        // Held before this returns: a stop that follows at once finds it, and saves it with
        // the session (decision 024).
        let delayed = !delay.is_zero();
        let (session_ended, resumed) = delayed
            .then(|| self.hold_will(&client, &will, delay, ended))
            .unzip();
        let broker = self.clone();
        tokio::spawn(async move {
            if delayed {
                if broker.will_delay(delay, session_ended).await.is_none() {
                    return;
                }
                broker.inner.pending_wills.release(&client, ended);
                if resumed.is_some_and(|r| r.load(Ordering::Acquire))
                    || broker.resumed_since(&client, ended.connection)
                {
                    return;
                }
            }
            broker.publish_will_now(will, client, ended).await;
        });
    }

    /// Publishes the Will of a client whose node died while it was connected (decision 014),
    /// from the node that adopted its session: after the Will Delay (at most the session
    /// expiry), unless a connection resumed the session here or on another node first.
    pub(super) fn publish_adopted_will(
        &self,
        client: ClientKey,
        will: StoredWill,
        expiry: Duration,
    ) {
        let persistent = !expiry.is_zero();
        let will = Will {
            publication: Publication {
                topic: will.publication.topic,
                payload: will.publication.payload,
                qos: will.publication.qos,
                retain: will.publication.retain,
                properties: will.publication.properties,
                expiry_secs: will.expiry_secs,
            },
            delay: will.delay,
            owner: Owner {
                name: will.owner.into(),
                max_messages: will.owner_max,
            },
        };
        // The dead node's claims went with it: any claim of the id is a connection since, and
        // a connection that resumed the session here attached it to another than 0.
        let ended = Ended::now(self, 0, 0);
        let delay = will.delay.min(expiry);
        let (session_ended, resumed) = (persistent && !delay.is_zero())
            .then(|| self.hold_will(&client, &will, delay, ended))
            .unzip();
        let broker = self.clone();
        tokio::spawn(async move {
            let Some(ended_first) = broker.will_delay(delay, session_ended).await else {
                return;
            };
            broker.inner.pending_wills.release(&client, ended);
            if resumed.is_some_and(|r| r.load(Ordering::Acquire)) {
                return;
            }
            if persistent && !ended_first && !broker.sessions().still_adopted(&client) {
                return;
            }
            broker.publish_will_now(will, client, ended).await;
        });
    }

    /// A Will is judged again when it is due, under the principals in force then: a reload
    /// during its delay, or before its node died and another adopted it, may have taken away
    /// its owner's right to publish there, or the owner.
    fn may_publish_will_now(&self, will: &Will, client: &str) -> bool {
        let auth = self.auth();
        if !auth.is_enabled() {
            return true;
        }
        auth.principal(&will.owner.name).is_some_and(|owner| {
            may_publish(
                Some(&owner),
                &will.publication.topic,
                will.publication.retain,
                client,
            )
        })
    }

    /// Holds `will` as waiting out `delay` (a stop saves it with its session, decision 024);
    /// the returned signal says the session ended first.
    fn hold_will(
        &self,
        client: &ClientKey,
        will: &Will,
        delay: Duration,
        ended: Ended,
    ) -> (Arc<Notify>, Arc<AtomicBool>) {
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        let due_at_ms = self.store().clock().now_ms().saturating_add(delay_ms);
        self.inner
            .pending_wills
            .hold(client, will, due_at_ms, ended)
    }

    /// Waits out a Will's `delay` unless its session ends first [MQTT-3.1.3-9], ended to make
    /// room for other offline sessions (`session_ended`, `--mqtt-max-offline-sessions`):
    /// whether it ended first, or `None` if the broker began shutting down (no Will then).
    async fn will_delay(
        &self,
        delay: Duration,
        session_ended: Option<Arc<Notify>>,
    ) -> Option<bool> {
        let Some(session_ended) = session_ended else {
            return self.sleep_unless_stopped(delay).await.then_some(false);
        };
        tokio::select! {
            in_time = self.sleep_unless_stopped(delay) => in_time.then_some(false),
            () = session_ended.notified() => Some(true),
        }
    }

    /// Waits `delay`; false if the broker began shutting down first (no Will then).
    async fn sleep_unless_stopped(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.shutdown_signal().cancelled() => false,
        }
    }

    /// Publishes `will` now; while the database cannot store a retained one, tries again
    /// until the client whose connection `ended` connects again.
    async fn publish_will_now(&self, will: Will, client: ClientKey, ended: Ended) {
        let mut patience = Patience::default();
        let mut held = None;
        loop {
            // Judged at each try: a reload while the database was away counts.
            if !self.may_publish_will_now(&will, &client) {
                tracing::info!(
                    %client,
                    topic = will.publication.topic.as_str(),
                    "the Will is not published: its principal may no longer publish there"
                );
                return;
            }
            let Err(mut error) = self.publish_will_once(&will, &client).await else {
                return;
            };
            if held.is_none() {
                held = Held::take(&self.inner.wills_waiting, &will);
                if held.is_none() {
                    tracing::debug!(%client, %error, "the Will message could not be stored, and the Wills waiting for the database already hold 64 MiB");
                    return;
                }
            }
            // Tried again only once it is known that the client has not connected since,
            // whose new state the Will must not overwrite, nor (with several nodes) has
            // another node taken the Will over.
            let mut heard_since = self.cluster().map(|c| c.heard().written);
            loop {
                let timeout = self.store().timeout();
                let Some(wait) = patience.wait_after(&error, timeout, Instant::now()) else {
                    tracing::debug!(%client, %error, "the Will message could not be stored");
                    return;
                };
                tracing::debug!(%client, %error, ?wait, "storing the Will message again");
                if !self.sleep_unless_stopped(wait).await {
                    return;
                }
                match self.may_try_again(&client, ended, heard_since).await {
                    Ok(Verdict::TryAgain) => break,
                    Ok(Verdict::NotYet) => {}
                    Ok(Verdict::Drop(why)) => {
                        tracing::info!(%client, "the Will is not published: {why}");
                        return;
                    }
                    Err(e) => {
                        error = e;
                        heard_since = self.cluster().map(|c| c.heard().written);
                    }
                }
            }
        }
    }

    /// Stores (if retained) and delivers the Will once; its expiry counts from now.
    async fn publish_will_once(&self, will: &Will, client: &ClientKey) -> Result<(), store::Error> {
        let now = self.store().clock().now_ms();
        let message = Message::published(will.publication.clone(), Some(client.clone()), now);
        let from = PublishFrom {
            owner: will.owner.clone(),
            client: Some(client.clone()),
            condition: None,
        };
        self.publish_message(message, from, now).await.map(drop)
    }

    /// Whether a Will that failed to be stored may be tried again: not if a connection with
    /// `client`'s id has started since the one that `ended`, here or (with `--cluster-url`)
    /// on any node by the claims in the database, nor if the other nodes took this node for
    /// dead meanwhile (the node that adopted the session publishes its Will). With several
    /// nodes that is known only from the database and a heartbeat pass that began after the
    /// failure (`heard_since`: the passes written then), and not known while the database
    /// cannot answer.
    async fn may_try_again(
        &self,
        client: &ClientKey,
        ended: Ended,
        heard_since: Option<u64>,
    ) -> Result<Verdict, store::Error> {
        if self.resumed_since(client, ended.connection) {
            return Ok(Verdict::Drop(CONNECTED_AGAIN));
        }
        let (Some(cluster), Some(heard_since)) = (self.cluster(), heard_since) else {
            return Ok(Verdict::TryAgain);
        };
        let heard = cluster.heard();
        if heard.taken_for_dead > ended.taken_for_dead {
            return Ok(Verdict::Drop(
                "the other nodes took this node for dead, and the node that adopted the session publishes it",
            ));
        }
        // Two passes: the second began after the failure, when the database answered.
        if heard.written < heard_since + 2 {
            return Ok(Verdict::NotYet);
        }
        match cluster.claimed_since(client, ended.claim).await {
            Ok(true) => Ok(Verdict::Drop(CONNECTED_AGAIN)),
            Ok(false) => Ok(Verdict::TryAgain),
            Err(e) => Err(store::Error::Unavailable(e.to_string().into())),
        }
    }
}

const CONNECTED_AGAIN: &str = "its client connected again while the database could not store it";

/// The most that Wills waiting to be stored again may hold, topics and payloads: past it, a
/// Will the database cannot store is given up at once, as every one was before they waited.
pub(super) const WILLS_WAITING_BYTES: usize = 64 << 20;

/// A waiting Will's share of [`WILLS_WAITING_BYTES`], given back when it stops waiting.
struct Held<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl<'a> Held<'a> {
    fn take(budget: &'a Budget, will: &Will) -> Option<Self> {
        let bytes = will.publication.topic.as_str().len() + will.publication.payload.len();
        // Built only once taken: a `Held` gives back what it holds when dropped.
        budget.take(bytes).then(|| Self { budget, bytes })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// The Wills waiting out their delay, by client id: part of the session's state, which a stop
/// saves (decision 024). At most one per client id, the latest connection's.
#[derive(Default)]
pub(super) struct PendingWills(Mutex<HashMap<ClientKey, Pending>>);

/// A Will waiting out its delay.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub will: Will,
    /// When it is due (epoch ms).
    pub due_at_ms: i64,
    /// Told when the session ends before then (see [`PendingWills::session_ended`]), or is
    /// resumed.
    pub session_ended: Arc<Notify>,
    /// Set when a new connection resumed the session before the delay passed: the Will is
    /// not published [MQTT-3.1.3-9], even if that session ends before the delay would have.
    pub resumed: Arc<AtomicBool>,
    /// The connection whose end made it due: it tells this wait from a later one of the same
    /// client id (each connection of a client id here has a number of its own).
    pub ended: Ended,
}

impl PendingWills {
    /// `will` waits until `due_at_ms`, in place of any earlier wait of `client`'s, or until
    /// the returned signal says the session ended first.
    fn hold(
        &self,
        client: &ClientKey,
        will: &Will,
        due_at_ms: i64,
        ended: Ended,
    ) -> (Arc<Notify>, Arc<AtomicBool>) {
        let session_ended = Arc::new(Notify::new());
        let resumed = Arc::new(AtomicBool::new(false));
        let pending = Pending {
            will: will.clone(),
            due_at_ms,
            ended,
            session_ended: session_ended.clone(),
            resumed: resumed.clone(),
        };
        self.lock().insert(client.clone(), pending);
        (session_ended, resumed)
    }

    /// A new connection resumed `client`'s session: the Will it waits out, if any, is not
    /// published [MQTT-3.1.3-9], and its wait ends now. Before 2026-12-06 this was judged
    /// only when the delay was over, by whether a session held for the client id was
    /// attached since: a session resumed and then ended within the delay (the new connection
    /// left with no session expiry) was no longer held, and the Will went out.
    pub fn resumed(&self, client: &str) {
        if let Some(p) = self.lock().remove(client) {
            p.resumed.store(true, Ordering::Release);
            p.session_ended.notify_one();
        }
    }

    /// `client`'s session ended before its expiry: the Will it waits out, if any, is due now.
    pub fn session_ended(&self, client: &str) {
        if let Some(p) = self.lock().get(client) {
            // A permit: the wait may not have begun yet.
            p.session_ended.notify_one();
        }
    }

    /// The wait for the Will of the connection that `ended` is over, unless a later one of
    /// the client replaced it.
    fn release(&self, client: &ClientKey, ended: Ended) {
        let mut pending = self.lock();
        if pending
            .get(client)
            .is_some_and(|p| p.ended.connection == ended.connection)
        {
            pending.remove(client);
        }
    }

    /// The Will `client` waits out, if any.
    pub fn get(&self, client: &str) -> Option<Pending> {
        self.lock().get(client).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Pending>> {
        // Inserts and removes of whole entries: a panic cannot leave the map torn.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The connection whose end made a Will due: its number on this node and, with
/// `--cluster-url`, the generation of its claim on the client id and how many times this node
/// had been taken for dead then ([`crate::cluster::Heard`]). For the Will of an adopted
/// session, whose connection was on a node now dead: 0, 0, and the count at the adoption.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ended {
    connection: u64,
    claim: u64,
    taken_for_dead: u64,
}

impl Ended {
    /// The connection's number on this node.
    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// The connection `connection` of a node that is not one of many.
    #[cfg(test)]
    pub fn on_a_single_node(connection: u64) -> Self {
        Self {
            connection,
            claim: 0,
            taken_for_dead: 0,
        }
    }

    /// The connection `connection`, whose claim had `claim`, ends now on `broker`'s node.
    pub fn now(broker: &Broker, connection: u64, claim: u64) -> Self {
        Self {
            connection,
            claim,
            taken_for_dead: broker.cluster().map_or(0, |c| c.heard().taken_for_dead),
        }
    }
}

/// Whether a Will that could not be stored may be tried again now.
enum Verdict {
    TryAgain,
    /// Not known yet: no heartbeat pass has begun since the failure.
    NotYet,
    /// No: why, for the log.
    Drop(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MessageProperties, Qos};
    use crate::topic::TopicLimits;

    fn will(payload: usize) -> Will {
        Will {
            publication: Publication {
                topic: TopicName::parse("status/d", TopicLimits::default()).unwrap(),
                payload: vec![b'x'; payload].into(),
                qos: Qos::AtLeastOnce,
                retain: true,
                properties: MessageProperties::default(),
                expiry_secs: None,
            },
            delay: Duration::ZERO,
            owner: Owner::anonymous(),
        }
    }

    #[test]
    fn wills_wait_for_the_database_within_their_budget_and_give_it_back() {
        // Topic (8 bytes) and payload count.
        let budget = Budget::new(100);
        let first = Held::take(&budget, &will(42)).expect("50 of 100");
        let second = Held::take(&budget, &will(42)).expect("100 of 100");
        assert!(Held::take(&budget, &will(0)).is_none(), "full");
        drop(first);
        assert!(
            Held::take(&budget, &will(43)).is_none(),
            "51 do not fit in 50"
        );
        let third = Held::take(&budget, &will(42)).expect("50 given back");
        drop((second, third));
        assert!(
            Held::take(&budget, &will(1000)).is_some(),
            "alone, any size"
        );
    }
}
