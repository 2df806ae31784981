//! Persistent sessions across a restart of a single node (decision 024).
//!
//! At a stop, once no connection is left and nothing routes any more, every persistent
//! session held offline is saved in the store: its subscriptions, its unacknowledged messages
//! with their packet ids, its queue, the QoS 2 ids its client sent that await PUBREL, and the
//! Will it waits out the delay of (published when due, unless the client returns first). At
//! the next start, before any connection or HTTP publish is taken, the saved sessions are
//! taken (read and deleted) and held offline again until their client returns or they
//! expire, as if the node had never stopped. A node of many (`--cluster-url`) keeps its
//! sessions in Postgres all along and writes back only what their rows lack (`exchanges`).
//!
//! The state is one blob per session, which the store does not read: a version byte, then
//! [`State`] in postcard, each message a frame of the cluster's (the one codec retaind has for
//! a message at rest). A row this release cannot read is dropped alone, with a warning.

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::handle::Broker;
use super::inbound_qos::AwaitingRelease;
use super::message::{Delivery, Message, Publication};
use super::registry::{NEVER, Session};
use super::session::Inflight;
use super::will::{Ended, Pending, Will};
use crate::cluster::{FrameError, Outgoing, StoredSubscription, decode_frame, encode_frame};
use crate::store::{self, Owner, Qos, SESSION_BYTES_PER_CALL, SESSIONS_PER_CALL, SavedSession};
use crate::topic::{ClientKey, TopicLimits};

/// The encoding's version, the blob's first byte.
const VERSION: u8 = 1;

/// How long a stop spends saving sessions at most; what is left is lost, and logged.
const SAVE_FOR: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
struct State {
    subscriptions: Vec<StoredSubscription>,
    /// In send order.
    inflight: Vec<SavedInflight>,
    queue: Vec<SavedDelivery>,
    awaiting_release: Vec<u16>,
    /// The Will waiting out its delay, part of the session's state (MQTT 5, 4.1).
    will: Option<SavedWill>,
}

#[derive(Serialize, Deserialize)]
struct SavedWill {
    /// The publication as a frame: no expiry instant, no origin.
    frame: Vec<u8>,
    /// Its Message Expiry Interval, which counts from when it is published.
    expiry_secs: Option<u32>,
    due_at_ms: i64,
    owner: String,
    owner_max: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct SavedInflight {
    packet_id: u16,
    /// QoS 2: PUBREC received, PUBREL sent.
    released: bool,
    delivery: SavedDelivery,
}

#[derive(Serialize, Deserialize)]
pub(super) struct SavedDelivery {
    frame: Vec<u8>,
    qos: u8,
    retain: bool,
    subscription_ids: Vec<u32>,
}

/// Why a saved session was dropped at start.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unreadable {
    #[error("saved in session format {0}; this release reads format {VERSION}")]
    Version(u8),
    #[error("its state does not decode")]
    State,
}

/// A saved session, read back.
pub(super) struct Decoded {
    pub subscriptions: Vec<StoredSubscription>,
    pub inflight: Vec<Inflight>,
    pub queue: Vec<Delivery>,
    pub awaiting_release: AwaitingRelease,
    /// The Will waiting out its delay, and when it is due (epoch ms).
    pub will: Option<(Will, i64)>,
    /// Why each message left out (the Will included) was.
    pub dropped: Vec<FrameError>,
}

/// `session`, with the Will it waits out, as a row of the store.
pub(super) fn encode(session: &Session, will: Option<&Pending>) -> SavedSession {
    let subscriptions = super::registry::Sessions::stored_subscriptions(session);
    let state = session.state();
    let (inflight, queue, awaiting) = state.to_save();
    let state = State {
        subscriptions,
        inflight: inflight
            .iter()
            .map(|i| SavedInflight {
                packet_id: i.packet_id.get(),
                released: i.released,
                delivery: saved_delivery(&i.delivery),
            })
            .collect(),
        queue: queue.iter().map(saved_delivery).collect(),
        awaiting_release: awaiting.settled_ids().map(NonZeroU16::get).collect(),
        will: will.map(saved_will),
    };
    // Plain strings, integers and byte vectors into a Vec: serializing cannot fail.
    let blob = postcard::to_extend(&state, vec![VERSION]).unwrap_or_default();
    SavedSession {
        client_id: session.key.to_string(),
        creator: session.creator().map(str::to_owned),
        expires_at_ms: Some(session.expires_at_ms()).filter(|&at| at != NEVER),
        state: Bytes::from(blob),
    }
}

fn saved_will(pending: &Pending) -> SavedWill {
    let p = &pending.will.publication;
    let publication = Outgoing {
        topic: &p.topic,
        payload: &p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: &p.properties,
        expires_at_ms: None,
        origin: None,
        shared_done: false,
    };
    SavedWill {
        frame: encode_frame(&publication, None).to_vec(),
        expiry_secs: p.expiry_secs,
        due_at_ms: pending.due_at_ms,
        owner: pending.will.owner.name.to_string(),
        owner_max: pending.will.owner.max_messages,
    }
}

fn read_will(w: SavedWill, limits: TopicLimits) -> Result<(Will, i64), FrameError> {
    let routed = decode_frame(&Bytes::from(w.frame), limits)?;
    let will = Will {
        publication: Publication {
            topic: routed.topic,
            payload: routed.payload,
            qos: routed.qos,
            retain: routed.retain,
            properties: routed.properties,
            expiry_secs: w.expiry_secs,
        },
        // Counted from the start that restores it: see `Broker::restore_one`.
        delay: Duration::ZERO,
        owner: Owner {
            name: w.owner.into(),
            max_messages: w.owner_max,
        },
    };
    Ok((will, w.due_at_ms))
}

pub(super) fn saved_delivery(d: &Delivery) -> SavedDelivery {
    let m = &d.message;
    SavedDelivery {
        frame: encode_frame(&m.outgoing(), m.stamp.get().copied()).to_vec(),
        qos: d.qos as u8,
        retain: d.retain,
        subscription_ids: d.subscription_ids.iter().map(|i| i.get()).collect(),
    }
}

/// A row's state, as [`encode`] wrote it. A message that does not decode (sent in another
/// frame version, or with a topic past this start's limits) is left out alone, and counted.
pub(super) fn decode(blob: &[u8], limits: TopicLimits) -> Result<Decoded, Unreadable> {
    let (&version, rest) = blob.split_first().ok_or(Unreadable::State)?;
    if version != VERSION {
        return Err(Unreadable::Version(version));
    }
    let state: State = postcard::from_bytes(rest).map_err(|_| Unreadable::State)?;
    let mut dropped = Vec::new();
    let mut inflight = Vec::with_capacity(state.inflight.len());
    for i in state.inflight {
        let packet_id = NonZeroU16::new(i.packet_id).ok_or(Unreadable::State)?;
        match delivery(i.delivery, limits)? {
            Ok(delivery) => inflight.push(Inflight {
                packet_id,
                released: i.released,
                delivery,
            }),
            Err(e) => dropped.push(e),
        }
    }
    let mut queue = Vec::with_capacity(state.queue.len());
    for d in state.queue {
        match delivery(d, limits)? {
            Ok(delivery) => queue.push(delivery),
            Err(e) => dropped.push(e),
        }
    }
    let awaiting_release = state
        .awaiting_release
        .into_iter()
        .map(|id| NonZeroU16::new(id).ok_or(Unreadable::State))
        .collect::<Result<_, _>>()?;
    let will = match state.will.map(|w| read_will(w, limits)) {
        Some(Ok(will)) => Some(will),
        Some(Err(e)) => {
            dropped.push(e);
            None
        }
        None => None,
    };
    Ok(Decoded {
        subscriptions: state.subscriptions,
        inflight,
        queue,
        awaiting_release,
        will,
        dropped,
    })
}

/// A saved message; the inner error is its frame's alone.
pub(super) fn delivery(
    d: SavedDelivery,
    limits: TopicLimits,
) -> Result<Result<Delivery, FrameError>, Unreadable> {
    let qos = Qos::from_u8(d.qos).ok_or(Unreadable::State)?;
    let routed = match decode_frame(&Bytes::from(d.frame), limits) {
        Ok(routed) => routed,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(Delivery {
        message: Arc::new(Message::routed(routed)),
        qos,
        retain: d.retain,
        subscription_ids: d
            .subscription_ids
            .into_iter()
            .filter_map(std::num::NonZeroU32::new)
            .collect(),
    }))
}

/// Rows in writes of at most [`SESSIONS_PER_CALL`] sessions and [`SESSION_BYTES_PER_CALL`]
/// bytes (a larger session alone), made as they are written: the sessions are not encoded
/// all at once beside themselves.
fn writes(rows: impl Iterator<Item = SavedSession>) -> impl Iterator<Item = Vec<SavedSession>> {
    let mut rows = rows.peekable();
    std::iter::from_fn(move || {
        let first = rows.next()?;
        let mut bytes = first.state.len();
        let mut write = vec![first];
        while write.len() < SESSIONS_PER_CALL {
            let Some(next) = rows.next_if(|r| bytes + r.state.len() <= SESSION_BYTES_PER_CALL)
            else {
                break;
            };
            bytes += next.state.len();
            write.push(next);
        }
        Some(write)
    })
}

/// The sessions a stop saves, encoded one by one as the writes take them.
struct Rows<'a> {
    broker: &'a Broker,
    sessions: std::slice::Iter<'a, &'a Arc<Session>>,
}

impl Iterator for Rows<'_> {
    type Item = SavedSession;

    fn next(&mut self) -> Option<SavedSession> {
        let session = self.sessions.next()?;
        let key = &session.key;
        // A Will whose client resumed the session since is not due any more.
        let will = self
            .broker
            .inner
            .pending_wills
            .get(key)
            .filter(|w| !self.broker.resumed_since(key, w.ended.connection()));
        Some(encode(session, will.as_ref()))
    }
}

/// What a start made of the saved sessions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionsRestored {
    /// Held offline again, until their clients return.
    pub restored: usize,
    /// Expired while the node was stopped.
    pub expired: usize,
    /// Dropped: saved by a release that encodes sessions otherwise, or damaged.
    pub unreadable: usize,
    /// Messages left out of restored sessions (sent in another frame version, or with a
    /// topic past this start's limits).
    pub messages_dropped: usize,
}

impl Broker {
    /// Saves every persistent session held offline, for the next start (decision 024). Called
    /// once the connections are closed and nothing routes any more. A node of many has its
    /// sessions in Postgres already: it writes back only what their rows lack (`exchanges`).
    pub async fn save_sessions(&self) {
        if let Some(cluster) = self.cluster() {
            return self.write_back_sessions(cluster).await;
        }
        let store = &self.inner.store;
        let now = store.clock().now_ms();
        let offline = self.sessions().offline();
        // A connection still open past the shutdown's grace has not detached: its session's
        // expiry is its connection's to know, and the session goes unsaved.
        let still_connected = self.sessions().held().saturating_sub(offline.len());
        if still_connected > 0 {
            tracing::warn!(
                sessions = still_connected,
                "sessions whose connections did not close in time are not saved"
            );
        }
        let saving: Vec<&Arc<Session>> =
            offline.iter().filter(|s| s.expires_at_ms() > now).collect();
        if saving.is_empty() {
            return;
        }
        let rows = Rows {
            broker: self,
            sessions: saving.iter(),
        };
        let until = tokio::time::Instant::now() + SAVE_FOR;
        let mut saved = 0;
        let mut failure = None;
        for write in writes(rows) {
            if tokio::time::Instant::now() >= until {
                break;
            }
            if let Err(e) = store.save_sessions(&write).await {
                failure = Some(e);
                break;
            }
            saved += write.len();
        }
        let lost = saving.len() - saved;
        match failure {
            None if lost == 0 => {
                tracing::info!(
                    sessions = saved,
                    "persistent sessions saved for the next start"
                );
            }
            failure => {
                let error = failure.map(|e| e.to_string());
                tracing::error!(
                    saved,
                    lost,
                    error,
                    "some persistent sessions could not be saved: their clients will start clean"
                );
            }
        }
    }

    /// Takes the sessions the last stop saved and holds them offline again (decision 024).
    /// Called before any connection is taken. A node of many has none to take.
    pub async fn restore_sessions(&self) -> Result<SessionsRestored, store::Error> {
        let mut counts = SessionsRestored::default();
        if self.cluster().is_some() {
            return Ok(counts);
        }
        let limits = self.inner.config.topic_limits;
        loop {
            let taken = self
                .inner
                .store
                .take_sessions(SESSIONS_PER_CALL, SESSION_BYTES_PER_CALL)
                .await;
            let rows = match taken {
                Ok(rows) => rows,
                Err(e) => {
                    // This start will not run: what earlier pages took goes back for the next.
                    if counts.restored > 0 {
                        self.save_sessions().await;
                    }
                    return Err(e);
                }
            };
            if rows.is_empty() {
                break;
            }
            let now = self.inner.store.clock().now_ms();
            // A maximum lowered since the stop holds from this start.
            let max = self.inner.config.max_session_expiry;
            let latest = if max == 0 {
                NEVER
            } else {
                now + i64::from(max) * 1000
            };
            for row in rows {
                let expires_at = row.expires_at_ms.unwrap_or(NEVER).min(latest);
                if expires_at <= now {
                    counts.expired += 1;
                    continue;
                }
                match decode(&row.state, limits) {
                    Ok(decoded) => {
                        if let Some(first) = decoded.dropped.first() {
                            tracing::warn!(client = %row.client_id, messages = decoded.dropped.len(), error = %first, "messages of a saved session could not be read back and were dropped; the session is restored without them");
                            counts.messages_dropped += decoded.dropped.len();
                        }
                        self.restore_one(row.client_id, row.creator, expires_at, decoded, now);
                        counts.restored += 1;
                    }
                    Err(e) => {
                        tracing::warn!(client = %row.client_id, error = %e, "a saved session was dropped: its client will start clean");
                        counts.unreadable += 1;
                    }
                }
            }
        }
        if counts != SessionsRestored::default() {
            tracing::info!(
                restored = counts.restored,
                expired = counts.expired,
                unreadable = counts.unreadable,
                messages_dropped = counts.messages_dropped,
                "persistent sessions saved at the last stop taken up"
            );
        }
        Ok(counts)
    }

    fn restore_one(
        &self,
        client_id: String,
        creator: Option<String>,
        expires_at: i64,
        decoded: Decoded,
        now: i64,
    ) {
        let Decoded {
            subscriptions,
            inflight,
            queue,
            awaiting_release,
            will,
            dropped: _,
        } = decoded;
        let key = ClientKey::from(client_id);
        let principal = self.creator_principal(creator.as_deref());
        let restored = self.sessions().restore(
            key.clone(),
            creator,
            principal,
            expires_at,
            &subscriptions,
            |state| state.restore(inflight, queue, awaiting_release),
        );
        let Some(session) = restored else {
            return;
        };
        if expires_at != NEVER {
            let left = u64::try_from(expires_at - now).unwrap_or(0);
            self.expire_after(&session, 0, Duration::from_millis(left));
        }
        // Due when it was due: published then unless the client returns first (a connection
        // attaches the session, restored unattached).
        if let Some((mut will, due_at_ms)) = will {
            will.delay = Duration::from_millis(u64::try_from(due_at_ms - now).unwrap_or(0));
            self.publish_will(will, key, Ended::now(self, 0, 0), Duration::MAX);
        }
    }
}

#[cfg(test)]
mod tests;
