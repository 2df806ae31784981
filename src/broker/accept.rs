//! A CONNECT accepted or refused: the client id, the authentication method, the credentials
//! (see `admission`), the node's connection limit, the principal's and the Will checked in
//! that order, then its turn under the connect rates awaited (`connect_rate`), then
//! the session joined and the CONNACK that says how.

use std::net::IpAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use super::admission::{TransportIdentity, authenticate, may_publish};
use super::client::{Client, Joined};
use super::connect_rate::Turn;
use super::handle::Broker;
use super::limits::{self, GOODBYE_TIMEOUT};
use super::resume::durable_session;
use super::will::{Will, will};
use crate::metrics::{ConnectRate as Rate, ConnectRefusal as Refusal};
use crate::mqtt::{self, ConnectAck, ConnectAckReason, Framed, Packet, Version};
use crate::store::Owner;
use crate::topic::ClientKey;

/// A client let in: its state, the CONNACK to send it, and how long it may stay silent.
pub(super) struct Accepted {
    pub client: Client,
    pub connack: ConnectAck,
    /// 1.5 × the keep alive it is held to [MQTT-3.1.2-22]; `None`: it may stay silent.
    pub silence: Option<Duration>,
}

/// Checks a CONNECT; a refused one is answered here and the connection closed.
pub(super) async fn accept<T>(
    broker: Broker,
    framed: &mut Framed<T>,
    mut connect: mqtt::Connect,
    identity: Option<TransportIdentity>,
    source: Option<IpAddr>,
) -> Option<Accepted>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = broker.config().clone();
    let v5 = framed.version() == Version::V5;
    let mut assigned = None;
    let key: ClientKey = if connect.client_id.is_empty() {
        // [MQTT-3.1.3-8] a client without an id cannot ask to resume a session (the codec
        // already refuses most such CONNECTs; this covers the rest).
        if !connect.clean_start {
            refuse(&broker, framed, Refusal::client_id).await;
            return None;
        }
        let id = format!("retaind-{}", uuid::Uuid::new_v4().simple());
        assigned = Some(id.clone());
        id.into()
    } else {
        Arc::from(&*connect.client_id)
    };
    tracing::Span::current().record("client", tracing::field::display(&key));
    // MQTT 5 enhanced authentication (AUTH exchanges) is not offered: a client that names a
    // method expects it to be carried out, and taking it in on its password alone, or on
    // nothing, would let it believe it authenticated so [MQTT-4.12.0-1].
    if connect.auth_method.is_some() {
        refuse(&broker, framed, Refusal::authentication_method).await;
        return None;
    }
    // The node's cap on connections. On a full node a client id connected here may still
    // take its own place over (as under a principal's limit below), so a CONNECT gets one of
    // the take-overs' places while its credentials are checked: the answer to anyone else must
    // not say whether an id is connected here before they have shown they may use it, and the
    // CONNECTs being checked stay bounded. With those places taken too it is refused at once,
    // whatever its client id.
    let live = &broker.inner.live;
    let (mut slot, full) = match live.try_acquire(cfg.max_connections) {
        Some(slot) => (slot, false),
        None => match live.try_acquire_for_takeover(cfg.max_connections) {
            Some(slot) => (slot, true),
            None => {
                too_many_connections(&broker, framed, &key).await;
                return None;
            }
        },
    };
    let credential = identity.as_ref().and_then(TransportIdentity::credential);
    let principal = match authenticate(&broker, &connect, &key, identity, source).await {
        Ok(principal) => principal,
        Err(reason) => {
            refuse_as(&broker, framed, reason, credentials_refusal(reason)).await;
            return None;
        }
    };
    if full && !broker.sessions().get(&key).is_some_and(|s| s.is_online()) {
        // A place may have come free while the credentials were checked (up to 2 s and a
        // check): the take-overs' place goes back (it counts among the connections), and
        // one under the cap is this CONNECT's.
        drop(slot);
        match live.try_acquire(cfg.max_connections) {
            Some(place) => slot = place,
            None => {
                too_many_connections(&broker, framed, &key).await;
                return None;
            }
        }
    }
    // Counted by client id: an id already connected under the principal takes its own
    // connection over, so it is let in at the limit (`principal_connections`).
    let principal_place = match principal.as_ref() {
        Some(p) => match p.limits.connections {
            None => None,
            Some(max) => match broker
                .inner
                .principal_connections
                .try_acquire(&p.name, &key, max)
            {
                Some(place) => Some(place),
                None => {
                    tracing::debug!(client = %key, principal = %p.name, "the principal's connections are all taken");
                    refuse(&broker, framed, Refusal::principal_connections).await;
                    return None;
                }
            },
        },
        None => None,
    };
    let will = match connect.last_will.as_ref() {
        None => None,
        Some(w) => match will(w, &cfg) {
            // A Will the client could not publish itself is refused up front.
            Ok(will)
                if !may_publish(
                    principal.as_deref(),
                    &will.publication.topic,
                    will.publication.retain,
                    &key,
                ) =>
            {
                refuse(&broker, framed, Refusal::not_authorized).await;
                return None;
            }
            Ok(will) => Some(Will {
                owner: Owner::of(principal.as_deref()),
                ..will
            }),
            Err(reason) => {
                refuse_as(&broker, framed, reason, Refusal::will).await;
                return None;
            }
        },
    };
    // An id the broker assigned has no earlier connections to pace.
    let by_client_id = match assigned {
        None => broker.inner.connect_rates.turn(&key, Instant::now()),
        Some(_) => Turn::Now,
    };
    let paced = match by_client_id {
        Turn::Refused => Err(Refusal::client_id_rate),
        by_client_id => {
            let name = principal.as_ref().map(|p| p.name.as_str());
            let by_principal = broker
                .inner
                .principal_connect_rates
                .turn(name, Instant::now());
            if by_principal == Turn::Refused {
                // A refused CONNECT takes no turn (decision 028): its client id's goes back.
                if assigned.is_none() {
                    broker.inner.connect_rates.give_back(&key);
                }
                Err(Refusal::principal_rate)
            } else {
                // Both turns were given at once: the CONNECT waits for the later.
                let (client_id, principal) = tokio::join!(
                    await_turn(&broker, by_client_id, Rate::client_id),
                    await_turn(&broker, by_principal, Rate::principal)
                );
                client_id.and(principal)
            }
        }
    };
    if let Err(why) = paced {
        refuse(&broker, framed, why).await;
        return None;
    }
    let client_window = if v5 {
        connect.receive_max.map_or(u16::MAX, NonZeroU16::get)
    } else {
        u16::MAX
    };
    if let Some(max) = connect.max_packet_size {
        framed.set_max_outbound_size(max.get());
    }
    let keep_alive = limits::keep_alive(connect.keep_alive, cfg.max_keep_alive);
    // Held to the maximum before anything stores or uses it (its session row too).
    let asked_expiry = connect.session_expiry_interval_secs;
    connect.session_expiry_interval_secs =
        limits::session_expiry(asked_expiry, cfg.max_session_expiry);
    // One client id, one connection, service-wide: the claim commits before the CONNACK,
    // and the node holding the id is told to close its connection (decision 014).
    let claim = match broker.cluster() {
        None => 0,
        Some(cluster) => match cluster.claim(&key, !connect.clean_start).await {
            Ok(generation) => generation,
            Err(e) => {
                tracing::warn!(client = %key, error = %e, "refusing a CONNECT: its client id cannot be claimed");
                // MQTT 5: 0x88 Server unavailable (3.1.1: 0x03).
                refuse(&broker, framed, Refusal::unavailable).await;
                return None;
            }
        },
    };
    // `_resuming` lives until the session is attached or the CONNECT goes no further.
    let (restored, _resuming) = match broker.cluster() {
        None => (None, None),
        Some(cluster) => {
            match durable_session(
                &broker,
                cluster,
                &connect,
                &key,
                principal.as_ref(),
                will.as_ref(),
                claim,
            )
            .await
            {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(client = %key, error = %e, "refusing a CONNECT: its session cannot be stored");
                    refuse(&broker, framed, Refusal::unavailable).await;
                    return None;
                }
            }
        }
    };
    let joined = Joined {
        broker,
        v5,
        key,
        principal,
        credential,
        will,
        session_expiry: connect.session_expiry_interval_secs,
        problem_info: connect.request_problem_info,
        client_window,
        slot,
        principal_place,
        claim,
        restored,
    };
    let (client, session_present) = Client::join(joined, connect.clean_start);
    let connack = ConnectAck {
        session_present,
        reason_code: ConnectAckReason::Success,
        receive_max: NonZeroU16::new(cfg.receive_maximum).unwrap_or(NonZeroU16::MAX),
        max_packet_size: Some(cfg.max_packet_bytes),
        assigned_client_id: assigned.map(Into::into),
        topic_alias_max: cfg.topic_alias_maximum,
        // [MQTT-3.2.2-21] the client must use this instead of what it asked for.
        server_keepalive_sec: (keep_alive != connect.keep_alive).then_some(keep_alive),
        // MQTT 5 §3.2.2.3.2: the server says when it uses another expiry than the client's.
        session_expiry_interval_secs: (connect.session_expiry_interval_secs != asked_expiry)
            .then_some(connect.session_expiry_interval_secs),
        ..ConnectAck::default()
    };
    Some(Accepted {
        client,
        connack,
        silence: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
    })
}

/// Refuses a CONNECT on a full node [MQTT-3.2.2-6]: CONNACK 0x89 Server busy (3.1.1: 0x03),
/// then closed.
async fn too_many_connections<T>(broker: &Broker, framed: &mut Framed<T>, key: &ClientKey)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    tracing::debug!(client = %key, "too many connections");
    refuse(broker, framed, Refusal::server_busy).await;
}

/// Waits for a CONNECT's turn under `rate` (`connect_rate`), or says why not: the turn is too
/// far off, or the node began to stop meanwhile (no new session then).
async fn await_turn(broker: &Broker, turn: Turn, rate: Rate) -> Result<(), Refusal> {
    match turn {
        Turn::Now => Ok(()),
        Turn::After(wait) => {
            broker.metrics().mqtt_connect_paced(rate);
            tracing::debug!(?wait, ?rate, "CONNECT waits for its turn");
            tokio::select! {
                () = tokio::time::sleep(wait) => Ok(()),
                () = broker.stopping_signal().cancelled() => Err(Refusal::unavailable),
            }
        }
        Turn::Refused => Err(match rate {
            Rate::client_id => Refusal::client_id_rate,
            Rate::principal => Refusal::principal_rate,
        }),
    }
}

/// Why `authenticate` refused, for the metrics.
fn credentials_refusal(reason: ConnectAckReason) -> Refusal {
    match reason {
        ConnectAckReason::BadUserNameOrPassword => Refusal::bad_credentials,
        ConnectAckReason::ConnectionRateExceeded => Refusal::source_failures,
        ConnectAckReason::ServerBusy => Refusal::server_busy,
        ConnectAckReason::ServerUnavailable => Refusal::unavailable,
        _ => Refusal::not_authorized,
    }
}

/// Refuses a CONNECT with the code that says `why`.
async fn refuse<T>(broker: &Broker, framed: &mut Framed<T>, why: Refusal)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let reason = match why {
        Refusal::client_id => ConnectAckReason::ClientIdentifierNotValid,
        Refusal::authentication_method => ConnectAckReason::BadAuthenticationMethod,
        Refusal::server_busy => ConnectAckReason::ServerBusy,
        // 3.1.1 has no such code: 0x03 Server unavailable.
        Refusal::principal_connections => ConnectAckReason::QuotaExceeded,
        Refusal::bad_credentials => ConnectAckReason::BadUserNameOrPassword,
        Refusal::not_authorized => ConnectAckReason::NotAuthorized,
        // 3.1.1 has no such code: 0x03 Server unavailable.
        Refusal::source_failures | Refusal::client_id_rate | Refusal::principal_rate => {
            ConnectAckReason::ConnectionRateExceeded
        }
        Refusal::will => ConnectAckReason::ImplementationSpecificError,
        Refusal::unavailable => ConnectAckReason::ServerUnavailable,
    };
    refuse_as(broker, framed, reason, why).await;
}

/// Answers a CONNECT with a refusal [MQTT-3.2.2-6] and leaves the connection to close.
async fn refuse_as<T>(
    broker: &Broker,
    framed: &mut Framed<T>,
    reason: ConnectAckReason,
    why: Refusal,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    broker.metrics().mqtt_connect_refused(why);
    // In the connection's span: the line names the client id, when the CONNECT had one.
    tracing::debug!(?reason, "CONNECT refused");
    let connack = ConnectAck {
        reason_code: reason,
        ..ConnectAck::default()
    };
    let _ = tokio::time::timeout(
        GOODBYE_TIMEOUT,
        framed.send(Packet::ConnectAck(Box::new(connack))),
    )
    .await;
    framed.close(GOODBYE_TIMEOUT).await;
}
