//! A CONNECT accepted or refused: the client id, the connection limit, the credentials (see
//! `admission`) and the Will checked in that order, then the session joined and the CONNACK
//! that says how.

use std::net::IpAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::admission::{TransportIdentity, authenticate, may_publish};
use super::client::{Client, Joined};
use super::handle::Broker;
use super::limits::{self, GOODBYE_TIMEOUT};
use super::will::{Will, will};
use crate::auth::Principal;
use crate::cluster::{Cluster, Restored, Routed, SessionError, SessionRow, StoredWill};
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
    connect: mqtt::Connect,
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
            refuse(framed, ConnectAckReason::ClientIdentifierNotValid).await;
            return None;
        }
        let id = format!("retaind-{}", uuid::Uuid::new_v4().simple());
        assigned = Some(id.clone());
        id.into()
    } else {
        Arc::from(&*connect.client_id)
    };
    // A global cap on connections, checked before the costly password hash.
    // [MQTT-3.2.2-6] refused with CONNACK 0x89 Server busy (3.1.1: 0x03), then closed.
    let Some(slot) = broker.inner.live.try_acquire(cfg.max_connections) else {
        tracing::debug!(client = %key, "too many connections");
        refuse(framed, ConnectAckReason::ServerBusy).await;
        return None;
    };
    let principal = match authenticate(&broker, &connect, &key, identity, source).await {
        Ok(principal) => principal,
        Err(reason) => {
            refuse(framed, reason).await;
            return None;
        }
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
                refuse(framed, ConnectAckReason::NotAuthorized).await;
                return None;
            }
            Ok(will) => Some(Will {
                owner: Owner::of(principal.as_deref()),
                ..will
            }),
            Err(reason) => {
                refuse(framed, reason).await;
                return None;
            }
        },
    };
    let client_window = if v5 {
        connect.receive_max.map_or(u16::MAX, NonZeroU16::get)
    } else {
        u16::MAX
    };
    if let Some(max) = connect.max_packet_size {
        framed.set_max_outbound_size(max.get());
    }
    let keep_alive = limits::keep_alive(connect.keep_alive, cfg.max_keep_alive);
    // One client id, one connection, service-wide: the claim commits before the CONNACK,
    // and the node holding the id is told to close its connection (decision 014).
    let claim = match broker.cluster() {
        None => 0,
        Some(cluster) => match cluster.claim(&key, !connect.clean_start).await {
            Ok(generation) => generation,
            Err(e) => {
                tracing::warn!(client = %key, error = %e, "refusing a CONNECT: its client id cannot be claimed");
                // MQTT 5: 0x88 Server unavailable (3.1.1: 0x03).
                refuse(framed, ConnectAckReason::ServerUnavailable).await;
                return None;
            }
        },
    };
    // Lives until the session is attached or the CONNECT goes no further.
    let _paused = (broker.cluster().is_some() && !connect.clean_start)
        .then(|| PausedSpool::new(&broker, &key))
        .flatten();
    let restored = match broker.cluster() {
        None => None,
        Some(cluster) => {
            match durable_session(cluster, &connect, &key, principal.as_deref(), will.as_ref())
                .await
            {
                Ok(restored) => restored,
                Err(e) => {
                    tracing::warn!(client = %key, error = %e, "refusing a CONNECT: its session cannot be stored");
                    refuse(framed, ConnectAckReason::ServerUnavailable).await;
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
        will,
        session_expiry: connect.session_expiry_interval_secs,
        problem_info: connect.request_problem_info,
        client_window,
        slot,
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
        ..ConnectAck::default()
    };
    Some(Accepted {
        client,
        connack,
        silence: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
    })
}

/// A node of many keeps sessions that outlive their connection, and Wills, in Postgres
/// (decision 014): a CONNECT that resumes takes its session from there (asking the node that
/// holds it to let go), and every CONNECT records its session before the CONNACK.
async fn durable_session(
    cluster: &Cluster,
    connect: &mqtt::Connect,
    key: &ClientKey,
    principal: Option<&Principal>,
    will: Option<&Will>,
) -> Result<Option<Restored>, SessionError> {
    // A node holding an earlier session of this id lets go of it either way: a clean start
    // discards it, but the holder would otherwise keep queueing for it.
    let earlier = cluster.resume(key).await?;
    let existed = earlier.is_some();
    let restored = earlier
        .and_then(|e| e.restored)
        .filter(|_| !connect.clean_start);
    let expiry = connect.session_expiry_interval_secs;
    if expiry == 0 && will.is_none() {
        // Nothing of this connection outlives it; what an earlier one left goes, if any.
        if existed && restored.is_none() {
            cluster.session_forget(key).await?;
        }
        return Ok(restored);
    }
    let stored_will = will.map(|w| StoredWill {
        publication: Routed {
            topic: w.publication.topic.clone(),
            payload: w.publication.payload.clone(),
            qos: w.publication.qos,
            retain: w.publication.retain,
            properties: w.publication.properties.clone(),
            expires_at_ms: None,
            origin: Some(key.clone()),
            shared_done: false,
        },
        expiry_secs: w.publication.expiry_secs,
        delay: w.delay,
        owner: w.owner.name.to_string(),
        owner_max: w.owner.max_messages,
    });
    let row = SessionRow {
        client_id: key,
        creator: principal.map(|p| p.name.as_str()),
        expiry_secs: expiry,
        clean: connect.clean_start,
        will: stored_will.as_ref(),
    };
    match cluster.session_connected(&row).await {
        Ok(()) => Ok(restored),
        // Taken already: it is this node's in Postgres, and its queue is in hand.
        Err(e) if restored.is_some() => {
            tracing::warn!(client = %key, error = %e, "the resumed session's Will and expiry could not be stored");
            Ok(restored)
        }
        Err(e) => Err(e),
    }
}

/// A CONNECT resuming a session that this node holds offline, its queue in Postgres: new
/// messages for it wait in memory while the queue is taken back, and go to Postgres again if
/// the CONNECT fails (or is dropped) before the session is attached, which ends the pause.
struct PausedSpool {
    broker: Broker,
    key: ClientKey,
}

impl PausedSpool {
    fn new(broker: &Broker, key: &ClientKey) -> Option<Self> {
        broker.sessions().pause_spooling(key).then(|| Self {
            broker: broker.clone(),
            key: key.clone(),
        })
    }
}

impl Drop for PausedSpool {
    fn drop(&mut self) {
        // Nothing to do once attached: the session no longer spools.
        self.broker.sessions().resume_spooling(&self.key);
    }
}

/// Answers a CONNECT with a refusal [MQTT-3.2.2-6] and leaves the connection to close.
async fn refuse<T>(framed: &mut Framed<T>, reason: ConnectAckReason)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
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
