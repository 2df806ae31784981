//! Sessions that survive their node (decision 014): persistent sessions and Wills in Postgres
//! (`cluster_sessions`), the messages queued for a session whose client is away
//! (`cluster_session_queue`), and the writer that appends those in order without holding up
//! the publish that produced them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::frame::{self, Outgoing, Routed};
use crate::store::Qos;
use crate::topic::TopicLimits;

/// A subscription as a session row keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// As the client wrote it, `$share/…` included.
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub id: Option<u32>,
}

/// A Will as a session row keeps it, for whichever node ends up publishing it.
#[derive(Debug, Clone)]
pub struct StoredWill {
    /// The publication, as a frame (its expiry counts from when it is published).
    pub publication: Routed,
    pub expiry_secs: Option<u32>,
    pub delay: Duration,
    /// Whom a retained Will is charged to.
    pub owner: String,
    pub owner_max: Option<u64>,
}

/// A session as its connection starts.
#[derive(Clone, Copy)]
pub struct SessionRow<'a> {
    pub client_id: &'a str,
    pub creator: Option<&'a str>,
    /// 0: the session ends with its connection; the row is there for its Will.
    pub expiry_secs: u32,
    /// A clean start: whatever was queued for an earlier session, and its subscriptions, go.
    pub clean: bool,
    pub will: Option<&'a StoredWill>,
}

/// What a node stopping cleanly writes back to one of its sessions' rows.
pub struct WrittenBack {
    pub client_id: Arc<str>,
    /// The QoS 2 exchanges left open, in the broker's encoding.
    pub exchanges: Option<Bytes>,
    /// A Will waiting out its delay, and how long until it is due.
    pub will: Option<(StoredWill, Duration)>,
}

/// A message queued for a session.
#[derive(Debug, Clone)]
pub struct Queued {
    pub message: Routed,
    /// The QoS and RETAIN flag it is delivered with, and the subscriptions it matched.
    pub qos: Qos,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// A session taken from Postgres by the node its client reconnected to.
#[derive(Debug)]
pub struct Restored {
    pub creator: Option<String>,
    pub subscriptions: Vec<StoredSubscription>,
    pub queued: Vec<Queued>,
    /// The QoS 2 exchanges the node that let the session go left open, in the broker's
    /// encoding ([`Sessions::let_go`], [`Sessions::write_back`]).
    pub exchanges: Option<Bytes>,
}

/// Where an earlier session (or Will) of a client id is held.
#[derive(Debug)]
pub struct Holder {
    pub node: String,
    /// Whether the node still has its heartbeat row: no other node took it for dead, so it
    /// is asked to hand the session over. A stale heartbeat is not enough to skip it: after
    /// an outage of the database every node's is stale for a moment.
    pub alive: bool,
    /// The session, when it outlives its connection.
    pub session: Option<HeldSession>,
}

/// A persistent session as its row keeps it, before it is taken.
#[derive(Debug)]
pub struct HeldSession {
    pub creator: Option<String>,
    pub subscriptions: Vec<StoredSubscription>,
    /// Its Session Expiry Interval, in seconds (`u32::MAX`: it does not expire).
    pub expiry_secs: u32,
}

/// What became of a session a node holds after a resume there failed once the node holding
/// it had let it go ([`Sessions::hold_let_go`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetGoHeld {
    /// Its row names this node now.
    Recorded,
    /// A later connection of its client, on this node, claimed the id: that connection
    /// takes it up.
    ClaimedHere,
    /// Its client came back through another node, or the row is no longer the one let go.
    Elsewhere,
}

#[derive(Debug, thiserror::Error)]
#[error("session state in the database: {0}")]
pub struct SessionError(pub(super) String);

impl From<sqlx::Error> for SessionError {
    fn from(e: sqlx::Error) -> Self {
        Self(e.to_string())
    }
}

/// What the spool writer is asked.
pub enum Spool {
    Append {
        client_id: Arc<str>,
        queued: Bytes,
        qos: Qos,
        retain: bool,
        ids: Vec<u32>,
    },
    /// Answered once everything sent before it is written.
    Flush(oneshot::Sender<()>),
}

fn outgoing(m: &Routed, expires_at_ms: Option<i64>) -> Outgoing<'_> {
    Outgoing {
        topic: &m.topic,
        payload: &m.payload,
        qos: m.qos,
        retain: m.retain,
        properties: &m.properties,
        expires_at_ms,
        origin: m.origin.as_deref(),
        shared_done: false,
    }
}

pub struct Sessions {
    pool: PgPool,
    pub(super) limits: TopicLimits,
    pub(super) timeout: Duration,
}

type QueueRow = (i64, Vec<u8>, i16, bool, Vec<i32>);
type SessionFields = (Option<String>, i64, serde_json::Value, Option<Vec<u8>>);

impl Sessions {
    pub fn new(pool: PgPool, limits: TopicLimits, timeout: Duration) -> Self {
        Self {
            pool,
            limits,
            timeout,
        }
    }

    /// `work`, given up after the database timeout.
    pub(super) async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, SessionError>>,
    ) -> Result<T, SessionError> {
        self.bounded_by(self.timeout, work).await
    }

    /// `work`, given up after `limit` (at most the database timeout: the pool's statement
    /// timeout ends anything left running past that).
    pub(super) async fn bounded_by<T>(
        &self,
        limit: Duration,
        work: impl Future<Output = Result<T, SessionError>>,
    ) -> Result<T, SessionError> {
        tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(SessionError(format!(
                "the database did not answer within {limit:?}"
            )))
        })
    }

    /// Records a session as its connection starts on `node`.
    pub async fn connected(&self, node: &str, row: &SessionRow<'_>) -> Result<(), SessionError> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            record(&mut tx, node, row).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// A connection with neither a persistent session nor a Will: any earlier session of its
    /// client id is gone.
    pub async fn forget(&self, client_id: &str) -> Result<(), SessionError> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            forget_in(&mut tx, client_id).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn set_subscriptions(
        &self,
        node: &str,
        client_id: &str,
        subscriptions: &[StoredSubscription],
    ) -> Result<(), SessionError> {
        self.bounded(async {
            sqlx::query(
                "UPDATE cluster_sessions SET subscriptions = $3 \
                 WHERE client_id = $1 AND node = $2",
            )
            .bind(client_id)
            .bind(node)
            .bind(serde_json::to_value(subscriptions).unwrap_or_default())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// The connection that claimed `client_id` at `generation` ended. A persistent session
    /// stays, offline, its Will handled by this node; any other row goes. Nothing changes if
    /// the client id was claimed again since: the row is then the newer connection's, and
    /// this may be a late try ([`super::Cluster::session_detached`] tries again).
    pub async fn detached(
        &self,
        node: &str,
        client_id: &str,
        generation: u64,
        persistent: bool,
    ) -> Result<(), SessionError> {
        self.bounded(async {
            if persistent {
                // A late record (tried again after a failure) of an end that a hand-over or
                // a stop has written after: what they wrote stays. The claim's release does
                // not change what the condition reads: it looks only for later claims.
                sqlx::query(
                    "WITH released AS (DELETE FROM cluster_clients \
                                       WHERE client_id = $1 AND generation = $3) \
                     UPDATE cluster_sessions SET connected = false, \
                       detached_at = CASE WHEN exchanges_at IS NULL THEN now() \
                         ELSE detached_at END, \
                       will = CASE WHEN will_due_at IS NULL THEN NULL ELSE will END \
                     WHERE client_id = $1 AND node = $2 \
                       AND NOT EXISTS (SELECT 1 FROM cluster_clients c \
                                       WHERE c.client_id = $1 AND c.generation > $3)",
                )
                .bind(client_id)
                .bind(node)
                .bind(generation as i64)
                .execute(&self.pool)
                .await?;
                return Ok(());
            }
            self.delete_held(node, client_id, Some(generation)).await
        })
        .await
    }

    /// Deletes `client_id`'s session, with its queue, if `node` holds it: for the end of the
    /// connection claimed at `ended` if no later one claimed the id (releasing that claim),
    /// or (`None`) if its client is away.
    async fn delete_held(
        &self,
        node: &str,
        client_id: &str,
        ended: Option<u64>,
    ) -> Result<(), SessionError> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query(
            "WITH released AS (DELETE FROM cluster_clients \
                               WHERE client_id = $1 AND generation = $3::int8) \
             DELETE FROM cluster_sessions WHERE client_id = $1 AND node = $2 \
               AND CASE WHEN $3::int8 IS NULL THEN NOT connected \
                 ELSE NOT EXISTS (SELECT 1 FROM cluster_clients c \
                                  WHERE c.client_id = $1 AND c.generation > $3) END",
        )
        .bind(client_id)
        .bind(node)
        .bind(ended.map(|g| g as i64))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if gone > 0 {
            delete_queue(&mut tx, client_id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `node` lets `client_id`'s session go to the node that resumes it (a hand-over): the
    /// QoS 2 exchanges it left open go into the row, for that node's [`Self::take`]. Not
    /// if `node` holds the client id's claim again: the client came back here since (the
    /// requester gave up waiting and took the session as stored), and the row is its new
    /// connection's.
    pub async fn let_go(
        &self,
        node: &str,
        client_id: &str,
        exchanges: &[u8],
    ) -> Result<(), SessionError> {
        self.bounded(async {
            // `greatest`: `now()` is when the statement began, and a connection's end
            // recorded meanwhile must not make these exchanges look older than it.
            sqlx::query(
                "UPDATE cluster_sessions SET exchanges = $3, \
                   exchanges_at = greatest(now(), coalesce(detached_at, now())), \
                   connected = false, detached_at = coalesce(detached_at, now()) \
                 WHERE client_id = $1 AND node = $2 \
                   AND NOT EXISTS (SELECT 1 FROM cluster_clients c \
                                   WHERE c.client_id = $1 AND c.node = $2)",
            )
            .bind(client_id)
            .bind(node)
            .bind(exchanges)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// `node` stops cleanly and writes back what it held of its offline sessions beyond
    /// their rows (decision 014): for whichever node adopts them, their open QoS 2
    /// exchanges and the Wills waiting out their delays.
    pub async fn write_back(&self, node: &str, held: &[WrittenBack]) -> Result<(), SessionError> {
        let ids: Vec<&str> = held.iter().map(|h| &*h.client_id).collect();
        let exchanges: Vec<Option<&[u8]>> = held.iter().map(|h| h.exchanges.as_deref()).collect();
        let wills: Vec<Option<&StoredWill>> =
            held.iter().map(|h| h.will.as_ref().map(|w| &w.0)).collect();
        let frames: Vec<Option<Vec<u8>>> = wills
            .iter()
            .map(|w| w.map(|w| frame::encode(&outgoing(&w.publication, None), None).to_vec()))
            .collect();
        let expiry: Vec<Option<i64>> = wills
            .iter()
            .map(|w| w.and_then(|w| w.expiry_secs).map(i64::from))
            .collect();
        let owner: Vec<Option<&str>> = wills.iter().map(|w| w.map(|w| w.owner.as_str())).collect();
        let owner_max: Vec<Option<i64>> = wills
            .iter()
            .map(|w| w.and_then(|w| w.owner_max).map(|m| m as i64))
            .collect();
        let due_in: Vec<Option<i64>> = held
            .iter()
            .map(|h| {
                h.will
                    .as_ref()
                    .map(|w| i64::try_from(w.1.as_millis()).unwrap_or(i64::MAX))
            })
            .collect();
        self.bounded(async {
            sqlx::query(
                "UPDATE cluster_sessions s SET connected = false, \
                   detached_at = coalesce(s.detached_at, now()), \
                   exchanges = coalesce(t.x, s.exchanges), \
                   exchanges_at = CASE WHEN t.x IS NULL THEN s.exchanges_at \
                     ELSE greatest(now(), s.detached_at) END, \
                   will = CASE WHEN t.due IS NULL THEN s.will ELSE t.w END, \
                   will_expiry_secs = CASE WHEN t.due IS NULL THEN s.will_expiry_secs \
                     ELSE t.we END, \
                   will_owner = CASE WHEN t.due IS NULL THEN s.will_owner ELSE t.wo END, \
                   will_owner_max = CASE WHEN t.due IS NULL THEN s.will_owner_max \
                     ELSE t.wm END, \
                   will_due_at = CASE WHEN t.due IS NULL THEN s.will_due_at \
                     ELSE now() + t.due * interval '1 millisecond' END \
                 FROM unnest($2::text[], $3::bytea[], $4::bytea[], $5::int8[], $6::text[], \
                             $7::int8[], $8::int8[]) AS t(c, x, w, we, wo, wm, due) \
                 WHERE s.client_id = t.c AND s.node = $1",
            )
            .bind(node)
            .bind(ids)
            .bind(exchanges)
            .bind(frames)
            .bind(expiry)
            .bind(owner)
            .bind(owner_max)
            .bind(due_in)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// The offline session expired on `node`, which held it.
    pub async fn expired(&self, node: &str, client_id: &str) -> Result<(), SessionError> {
        self.bounded(self.delete_held(node, client_id, None)).await
    }

    /// Of `held`, the client ids `node` no longer has: neither their session nor their claim
    /// is `node`'s. With each, whether its session lives on (held by another node).
    pub async fn not_held_by(
        &self,
        node: &str,
        held: &[Arc<str>],
    ) -> Result<Vec<(String, bool)>, SessionError> {
        let ids: Vec<&str> = held.iter().map(|id| &**id).collect();
        self.bounded(async {
            Ok(sqlx::query_as(
                "SELECT h.id, EXISTS (SELECT 1 FROM cluster_sessions s \
                                      WHERE s.client_id = h.id AND s.expiry_secs > 0) \
                 FROM unnest($1::text[]) AS h(id) \
                 WHERE NOT EXISTS (SELECT 1 FROM cluster_sessions s \
                                   WHERE s.client_id = h.id AND s.node = $2) \
                   AND NOT EXISTS (SELECT 1 FROM cluster_clients c \
                                   WHERE c.client_id = h.id AND c.node = $2)",
            )
            .bind(ids)
            .bind(node)
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// The node holding `client_id`'s session (or Will), whether it is alive, and the
    /// session's creator and subscriptions if it outlives its connection.
    pub async fn holder(&self, client_id: &str) -> Result<Option<Holder>, SessionError> {
        let row: Option<(String, bool, Option<String>, i64, serde_json::Value)> = self
            .bounded(async {
                Ok(sqlx::query_as(
                    "SELECT s.node, EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node = s.node), \
                       s.creator, s.expiry_secs, s.subscriptions \
                     FROM cluster_sessions s WHERE s.client_id = $1",
                )
                .bind(client_id)
                .fetch_optional(&self.pool)
                .await?)
            })
            .await?;
        Ok(
            row.map(|(node, alive, creator, expiry, subscriptions)| Holder {
                node,
                alive,
                session: (expiry > 0).then(|| HeldSession {
                    creator,
                    subscriptions: serde_json::from_value(subscriptions).unwrap_or_default(),
                    expiry_secs: u32::try_from(expiry).unwrap_or(u32::MAX),
                }),
            }),
        )
    }

    /// Takes the earlier session of `row`'s client id for a connection on `node` (its
    /// subscriptions and every message queued for it, in order, which leave the queue) and
    /// records the connection's own session, in one transaction: one commit, where a take and
    /// then a record were two, on the way of every CONNECT that resumes (what bounds a drain
    /// on a slow disk, decision 014). `None`: nothing to resume, as it was no persistent
    /// session, it is gone, `row` starts clean, or it was another principal's.
    pub async fn take(
        &self,
        node: &str,
        row: &SessionRow<'_>,
    ) -> Result<Option<Restored>, SessionError> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let taken = take_in(&mut tx, node, row.client_id).await?;
            // Another principal's session is not this connection's to resume: it starts
            // clean, and so does its row, or the next connection of this principal would
            // take back the other's subscriptions (never authorized for it) and queue.
            let clean = row.clean
                || taken
                    .as_ref()
                    .is_some_and(|t| t.creator.as_deref() != row.creator);
            let restored = taken.filter(|_| !clean);
            if row.expiry_secs > 0 || row.will.is_some() {
                record(&mut tx, node, &SessionRow { clean, ..*row }).await?;
            } else if restored.is_none() {
                // Nothing of this connection outlives it, and what an earlier one left goes.
                forget_in(&mut tx, row.client_id).await?;
            }
            tx.commit().await?;
            Ok(restored.map(|t| self.restored(t)))
        })
        .await
    }

    /// A resume on `node` failed after `from` let `client_id`'s session go, and `node` holds
    /// the session now: its row says so, offline and without a Will (the hand-over cancelled
    /// the earlier connection's; the failed CONNECT's was never acknowledged), unless the
    /// client id was claimed after `claim` (its client came back meanwhile) or the row is
    /// neither `from`'s nor `node`'s. It is `node`'s already when the take committed after
    /// its connection gave up waiting (its queue went with it): the row then still says
    /// connected, with the failed CONNECT's Will, and is set right the same way.
    pub async fn hold_let_go(
        &self,
        node: &str,
        from: &str,
        client_id: &str,
        claim: u64,
    ) -> Result<LetGoHeld, SessionError> {
        self.bounded(async {
            // One row per client id (its latest claim).
            let (moved, claimer): (bool, Option<String>) = sqlx::query_as(
                "WITH later AS (SELECT node FROM cluster_clients \
                                WHERE client_id = $1 AND generation > $4), \
                 moved AS (UPDATE cluster_sessions SET node = $2, connected = false, \
                             detached_at = coalesce(detached_at, now()), \
                             will = NULL, will_due_at = NULL \
                           WHERE client_id = $1 AND node IN ($2, $3) AND expiry_secs > 0 \
                             AND NOT EXISTS (SELECT 1 FROM later) RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM moved), (SELECT node FROM later)",
            )
            .bind(client_id)
            .bind(node)
            .bind(from)
            .bind(claim as i64)
            .fetch_one(&self.pool)
            .await?;
            Ok(match claimer {
                _ if moved => LetGoHeld::Recorded,
                Some(claimer) if claimer == node => LetGoHeld::ClaimedHere,
                _ => LetGoHeld::Elsewhere,
            })
        })
        .await
    }

    fn restored(&self, mut taken: Taken) -> Restored {
        taken.queue.sort_by_key(|r| r.0);
        Restored {
            creator: taken.creator,
            subscriptions: serde_json::from_value(taken.subscriptions).unwrap_or_default(),
            queued: taken
                .queue
                .into_iter()
                .filter_map(|r| self.queued(r))
                .collect(),
            exchanges: taken.exchanges.map(Bytes::from),
        }
    }

    fn queued(&self, (_, body, qos, retain, ids): QueueRow) -> Option<Queued> {
        let message = frame::decode(&Bytes::from(body), self.limits)
            .inspect_err(
                |e| tracing::warn!(error = %e, "a queued message does not decode; dropped"),
            )
            .ok()?;
        Some(Queued {
            message,
            qos: Qos::from_u8(u8::try_from(qos).ok()?)?,
            retain,
            subscription_ids: ids
                .into_iter()
                .filter_map(|i| u32::try_from(i).ok())
                .collect(),
        })
    }

    /// Nodes that hold sessions but have no heartbeat row: dead and buried, or stopped. It
    /// walks the distinct nodes of the `node` index, a probe each, rather than reading every
    /// session: every node looks at every heartbeat.
    pub async fn orphan_nodes(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<Vec<String>, SessionError> {
        Ok(sqlx::query_scalar(
            "WITH RECURSIVE holders(node) AS ( \
               (SELECT node FROM cluster_sessions ORDER BY node LIMIT 1) \
               UNION ALL \
               SELECT (SELECT s.node FROM cluster_sessions s WHERE s.node > h.node \
                       ORDER BY s.node LIMIT 1) \
               FROM holders h WHERE h.node IS NOT NULL) \
             SELECT node FROM holders h WHERE node IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node = h.node)",
        )
        .fetch_all(&mut **tx)
        .await?)
    }
}

/// A persistent session's row and queue as a take found them, before they are decoded.
struct Taken {
    creator: Option<String>,
    subscriptions: serde_json::Value,
    exchanges: Option<Vec<u8>>,
    queue: Vec<QueueRow>,
}

/// Makes `client_id`'s persistent session `node`'s, connected, and removes its queue, which
/// it returns with the session's fields; `None` if it has no persistent session.
async fn take_in(
    tx: &mut Transaction<'_, Postgres>,
    node: &str,
    client_id: &str,
) -> Result<Option<Taken>, sqlx::Error> {
    // The exchanges go with this take (they hold only as of the session's last end: see
    // migration 0015), and so does a Will waiting out its delay: the client is back.
    let found: Option<SessionFields> = sqlx::query_as(
        "UPDATE cluster_sessions s SET node = $2, connected = true, detached_at = NULL, \
           will = NULL, will_due_at = NULL, exchanges = NULL, exchanges_at = NULL \
         FROM (SELECT client_id, CASE WHEN exchanges_at >= detached_at \
                 THEN exchanges END AS exchanges \
               FROM cluster_sessions WHERE client_id = $1 FOR UPDATE) o \
         WHERE s.client_id = o.client_id AND s.expiry_secs > 0 \
         RETURNING s.creator, s.expiry_secs, s.subscriptions, o.exchanges",
    )
    .bind(client_id)
    .bind(node)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((creator, _, subscriptions, exchanges)) = found else {
        return Ok(None);
    };
    let queue = sqlx::query_as(
        "DELETE FROM cluster_session_queue WHERE client_id = $1 \
         RETURNING seq, frame, qos, retain, subscription_ids",
    )
    .bind(client_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(Some(Taken {
        creator,
        subscriptions,
        exchanges,
        queue,
    }))
}

/// Writes `row` as its connection starts on `node`.
async fn record(
    tx: &mut Transaction<'_, Postgres>,
    node: &str,
    row: &SessionRow<'_>,
) -> Result<(), sqlx::Error> {
    if row.clean {
        delete_queue(tx, row.client_id).await?;
    }
    let will = row.will;
    let will_frame = will.map(|w| frame::encode(&outgoing(&w.publication, None), None).to_vec());
    sqlx::query(
        "INSERT INTO cluster_sessions AS s (client_id, node, creator, expiry_secs, \
           connected, detached_at, subscriptions, will, will_expiry_secs, \
           will_delay_secs, will_owner, will_owner_max) \
         VALUES ($1, $2, $3, $4, true, NULL, '[]', $6, $7, $8, $9, $10) \
         ON CONFLICT (client_id) DO UPDATE SET node = EXCLUDED.node, \
           creator = EXCLUDED.creator, expiry_secs = EXCLUDED.expiry_secs, \
           connected = true, detached_at = NULL, \
           subscriptions = CASE WHEN $5 THEN '[]'::jsonb ELSE s.subscriptions END, \
           will = EXCLUDED.will, will_expiry_secs = EXCLUDED.will_expiry_secs, \
           will_delay_secs = EXCLUDED.will_delay_secs, will_owner = EXCLUDED.will_owner, \
           will_owner_max = EXCLUDED.will_owner_max, will_due_at = NULL, \
           exchanges = NULL, exchanges_at = NULL",
    )
    .bind(row.client_id)
    .bind(node)
    .bind(row.creator)
    .bind(i64::from(row.expiry_secs))
    .bind(row.clean)
    .bind(will_frame)
    .bind(will.and_then(|w| w.expiry_secs).map(i64::from))
    .bind(will.map(|w| w.delay.as_secs() as i64))
    .bind(will.map(|w| w.owner.as_str()))
    .bind(will.and_then(|w| w.owner_max).map(|m| m as i64))
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// Removes `client_id`'s session row and queue.
async fn forget_in(tx: &mut Transaction<'_, Postgres>, client_id: &str) -> Result<(), sqlx::Error> {
    delete_queue(tx, client_id).await?;
    sqlx::query("DELETE FROM cluster_sessions WHERE client_id = $1")
        .bind(client_id)
        .execute(&mut **tx)
        .await
        .map(drop)
}

async fn delete_queue(
    tx: &mut Transaction<'_, Postgres>,
    client_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM cluster_session_queue WHERE client_id = $1")
        .bind(client_id)
        .execute(&mut **tx)
        .await
        .map(drop)
}

/// Appends queued messages in the order they were handed over, a batch per statement, until
/// `shutdown`; then writes what is left.
pub async fn write_spool(
    pool: PgPool,
    timeout: Duration,
    mut spool: mpsc::Receiver<Spool>,
    bytes: Arc<super::budget::Budget>,
    lost: Arc<AtomicU64>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    let mut stopping = false;
    loop {
        let first = if stopping {
            match spool.try_recv() {
                Ok(item) => item,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                item = spool.recv() => match item {
                    Some(item) => item,
                    None => return,
                },
                () = shutdown.cancelled() => {
                    stopping = true;
                    continue;
                }
            }
        };
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Spool::Append {
                    client_id,
                    queued,
                    qos,
                    retain,
                    ids,
                } => {
                    batch.push((client_id, queued, qos, retain, ids));
                }
                Spool::Flush(done) => flushes.push(done),
            }
            next = if batch.len() < 512 {
                spool.try_recv().ok()
            } else {
                None
            };
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            // Bounded, so that a stalled database costs the messages of one batch per
            // timeout (counted), not every later one and every flush behind them; the pool's
            // statement_timeout makes sure a batch given up does not commit later.
            let failed = match tokio::time::timeout(timeout, append(&pool, &batch)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("the database did not answer within {timeout:?}")),
            };
            if let Some(error) = failed {
                lost.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(%error, messages = n, "messages queued for offline sessions could not be stored");
            }
            // Given back once written (or lost): a batch in flight is held too.
            bytes.give_back(batch.iter().map(|r| r.1.len()).sum());
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

type SpoolRow = (Arc<str>, Bytes, Qos, bool, Vec<u32>);

async fn append(pool: &PgPool, batch: &[SpoolRow]) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = batch.iter().map(|r| &*r.0).collect();
    let frames: Vec<&[u8]> = batch.iter().map(|r| &r.1[..]).collect();
    let qos: Vec<i16> = batch.iter().map(|r| r.2 as i16).collect();
    let retain: Vec<bool> = batch.iter().map(|r| r.3).collect();
    // Postgres arrays cannot be ragged: each message's identifiers travel as text.
    let subscription_ids: Vec<String> = batch
        .iter()
        .map(|r| {
            let list: Vec<String> = r.4.iter().map(u32::to_string).collect();
            format!("{{{}}}", list.join(","))
        })
        .collect();
    sqlx::query(
        "INSERT INTO cluster_session_queue (client_id, frame, qos, retain, subscription_ids) \
         SELECT c, f, q, r, s::integer[] \
         FROM unnest($1::text[], $2::bytea[], $3::int2[], $4::bool[], $5::text[]) \
           WITH ORDINALITY AS t(c, f, q, r, s, n) ORDER BY n",
    )
    .bind(ids)
    .bind(frames)
    .bind(qos)
    .bind(retain)
    .bind(subscription_ids)
    .execute(pool)
    .await
    .map(drop)
}
