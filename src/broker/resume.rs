//! A CONNECT on a node of many (decision 014): the session it resumes is taken from Postgres,
//! after the node holding it lets go, and every CONNECT records its session before the
//! CONNACK. Nothing published while a session moves is lost: the node it leaves keeps
//! queueing until the node it moves to holds its subscriptions.

use std::sync::Arc;

use super::handle::Broker;
use super::registry::Session;
use super::will::Will;
use crate::auth::Principal;
use crate::cluster::{Cluster, HeldSession, Restored, SessionError, SessionRow};
use crate::mqtt;
use crate::topic::ClientKey;

/// What a CONNECT that resumes a session set up so that what arrives meanwhile waits for it.
/// Dropped when the session is attached, with nothing left to undo; dropped before, because
/// the CONNECT failed or went away, it undoes itself.
pub(super) enum Resuming {
    /// The session is held here offline, its queue in Postgres: new messages wait in memory,
    /// behind that queue, until it is taken back.
    Paused { broker: Broker, key: ClientKey },
    /// The session is held by another node: it is made here first, with its subscriptions,
    /// and that node asked to let go only then. Both queue meanwhile; a message queued by
    /// both is delivered once (its [`crate::cluster::Stamp`]).
    Prepared {
        broker: Broker,
        session: Arc<Session>,
        /// Whether what it received goes to the stored session's queue if it is dropped:
        /// not when there was no session to resume after all.
        keep_queue: bool,
        /// Whether it stays here when dropped: the CONNECT failed after the other node let
        /// the session go ([`Resuming::hold`]).
        held: bool,
    },
}

impl Resuming {
    fn pause(broker: &Broker, key: &ClientKey) -> Option<Self> {
        broker.sessions().pause_spooling(key).then(|| Self::Paused {
            broker: broker.clone(),
            key: key.clone(),
        })
    }

    async fn prepare(
        broker: &Broker,
        key: &ClientKey,
        held: &HeldSession,
        principal: Option<&Arc<Principal>>,
    ) -> Option<Self> {
        let (session, announced) = broker.sessions().prepare(
            key,
            held.creator.clone(),
            principal.cloned(),
            &held.subscriptions,
        )?;
        let prepared = Self::Prepared {
            broker: broker.clone(),
            session,
            keep_queue: true,
            held: false,
        };
        // As a SUBACK does: the other nodes can know the filters before the holder lets go.
        for a in announced {
            let _ = a.await;
        }
        Some(prepared)
    }

    /// The CONNECT failed after the node that held the session let it go, and the copy made
    /// here is now the only one that receives for it: it stays here rather than go, or what
    /// is published for the session until its client returns would match no subscription
    /// anywhere (decision 014, "A resume that fails after the hand-over").
    fn hold(&mut self, from: &str, expiry_secs: u32, claim: u64) {
        if let Self::Prepared {
            broker,
            session,
            held,
            ..
        } = self
        {
            *held = super::kept::keep(broker, session, from, expiry_secs, claim);
        }
    }
}

impl Drop for Resuming {
    fn drop(&mut self) {
        match self {
            Self::Paused { broker, key } => broker.sessions().resume_spooling(key),
            Self::Prepared { held: true, .. } => {}
            Self::Prepared {
                broker,
                session,
                keep_queue,
                held: false,
            } => broker.sessions().discard_prepared(session, *keep_queue),
        }
    }
}

/// Resumes or ends the earlier session of `key`, wherever it is held (a clean start ends it:
/// the holder would otherwise keep queueing for it), and records this connection's session
/// and Will, in the transaction that takes the earlier one if there is one. Returns the
/// session taken back, if resumed, and what must live until it is attached.
pub(super) async fn durable_session(
    broker: &Broker,
    cluster: &Cluster,
    connect: &mqtt::Connect,
    key: &ClientKey,
    principal: Option<&Arc<Principal>>,
    will: Option<&Will>,
    claim: u64,
) -> Result<(Option<Restored>, Option<Resuming>), SessionError> {
    let creator = principal.map(|p| p.name.as_str());
    let stored_will = will.map(|w| w.stored(key));
    let row = SessionRow {
        client_id: key,
        creator,
        expiry_secs: connect.session_expiry_interval_secs,
        clean: connect.clean_start,
        will: stored_will.as_ref(),
    };
    let mut resuming = if connect.clean_start {
        None
    } else {
        Resuming::pause(broker, key)
    };
    let Some(holder) = cluster.holder(key).await? else {
        // No earlier session anywhere: this one is recorded if something of it outlives
        // its connection.
        if row.expiry_secs > 0 || row.will.is_some() {
            cluster.session_connected(&row).await?;
        }
        return Ok((None, resuming));
    };
    if resuming.is_none()
        && !connect.clean_start
        && cluster.held_elsewhere(&holder)
        && let Some(held) = &holder.session
        && held.creator.as_deref() == creator
    {
        resuming = Resuming::prepare(broker, key, held, principal).await;
    }
    let let_go = cluster.ask_to_let_go(&holder, key).await;
    let restored = match cluster.take(&row).await {
        Ok(restored) => restored,
        Err(e) => {
            if let_go
                && let Some(held) = &holder.session
                && let Some(resuming) = resuming.as_mut()
            {
                resuming.hold(&holder.node, held.expiry_secs, claim);
            }
            return Err(e);
        }
    };
    if restored.is_none()
        && let Some(Resuming::Prepared { keep_queue, .. }) = resuming.as_mut()
    {
        // No session to resume after all (it expired, another connection took it, or it was
        // another principal's): the one made for it goes now, with nothing to keep.
        *keep_queue = false;
        resuming = None;
    }
    Ok((restored, resuming))
}
