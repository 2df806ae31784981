//! Taking up the sessions of nodes that are gone (decision 014): a survivor makes them its
//! own in Postgres, a batch per transaction, then holds them and publishes the Wills of the
//! clients that were connected.
//!
//! A batch whose COMMIT goes unanswered (the database timeout, a connection lost) may have
//! committed. Given up as failed, its sessions would be this node's in the database and held
//! nowhere: their Wills never published, nothing queued for them. So the batch is kept, with
//! its transaction's id, until Postgres says (`txid_status`) whether it committed: if so it is
//! taken up then, less what changed meanwhile; if not, its sessions are orphans again and
//! the next pass adopts them anew.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sqlx::PgPool;

use super::frame;
use super::sessions::{SessionError, Sessions, StoredSubscription, StoredWill};

/// Sessions adopted in one transaction: a dead node may have held a hundred thousand, more
/// than one statement does within the database timeout.
const ADOPT_BATCH: usize = 1_000;
/// Batches in doubt kept at most; past it the oldest is given up (logged). Each is a
/// commit unanswered, so this many means the database has been failing for minutes.
const MAX_IN_DOUBT: usize = 64;

/// A session of a node that is gone, adopted by this one.
#[derive(Debug)]
pub struct Adopted {
    pub client_id: Arc<str>,
    pub creator: Option<String>,
    pub expiry_secs: u32,
    /// How long its client has been away (since its node died, if it was connected).
    pub away: Duration,
    pub subscriptions: Vec<StoredSubscription>,
    /// The Will of a client that was connected when its node died, to be published after its
    /// delay; or, from a node stopped cleanly, one that waited out its delay there, its
    /// `delay` what was left of it.
    pub will: Option<StoredWill>,
    /// Messages already queued for it, and their frames' bytes.
    pub queued: usize,
    pub queued_bytes: usize,
}

/// A batch whose COMMIT was sent and not answered.
pub struct InDoubt {
    /// Its transaction, as `txid_current()` gave it.
    xid: i64,
    adopted: Vec<Adopted>,
}

/// What a node's adoptions carry from one heartbeat pass to the next.
#[derive(Default)]
pub struct Ledger {
    /// Batches whose COMMIT went unanswered, until the database says what became of them.
    in_doubt: Vec<InDoubt>,
    /// Adoptions and questions the database failed or did not answer since it last answered
    /// one. With the database slow or away they fail a beat apart, pass after pass: only the
    /// first of a run is logged, and its end.
    unanswered: u64,
    /// Every such failure so far.
    failures: u64,
}

impl Ledger {
    /// Batches in doubt.
    pub fn in_doubt(&self) -> usize {
        self.in_doubt.len()
    }

    /// Adoptions and questions about those in doubt that failed or went unanswered.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Counts a failure; true for the first of a run, the one to log.
    fn failed(&mut self) -> bool {
        self.failures += 1;
        self.unanswered += 1;
        self.unanswered == 1
    }

    /// Nothing is left to adopt or settle (another node took the sessions, or they ended):
    /// a run of failures ends without an answer, so that the next one is logged.
    pub fn idle(&mut self) {
        if self.unanswered > 0 {
            tracing::info!(
                failures = self.unanswered,
                "no sessions of nodes that are gone are left for this node to adopt; the failures since the database last answered an adoption end here"
            );
            self.unanswered = 0;
        }
    }

    /// The database answered: ends a run of failures, saying how long it was.
    fn answered(&mut self) {
        if self.unanswered > 0 {
            tracing::info!(
                failures = self.unanswered,
                "the database answers adoptions again (of the failures since it last did, only the first was logged)"
            );
            self.unanswered = 0;
        }
    }
}

/// Why a batch was not adopted.
enum Unadopted {
    /// Nothing was committed.
    Failed(SessionError),
    /// The COMMIT was sent; whether it took is not known.
    InDoubt(InDoubt, SessionError),
}

impl From<SessionError> for Unadopted {
    fn from(e: SessionError) -> Self {
        Self::Failed(e)
    }
}

/// `work`, given up at `deadline` (the end of the database timeout for the whole
/// transaction, `timeout` from its start, or of the heartbeat pass, if sooner).
async fn before<T>(
    deadline: tokio::time::Instant,
    timeout: Duration,
    work: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout_at(deadline, work).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(SessionError(format!(
            "the database did not answer within {timeout:?}"
        ))),
    }
}

/// Whether this node still takes up the sessions of nodes that are gone. It stops before a
/// stopping node writes back what its offline sessions hold (their delayed Wills among it):
/// a session adopted after that would be held only by a node about to exit, its Will cleared
/// from the database by the adoption, and the node adopting it next would find none.
#[derive(Default)]
pub struct Adopting {
    stopped: AtomicBool,
    /// Held by a heartbeat pass while it adopts or settles.
    pass: tokio::sync::Mutex<()>,
}

impl Adopting {
    /// Starts no more adoptions, and waits for the one running (if any) to end.
    pub async fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        drop(self.pass.lock().await);
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Held while a pass adopts; `None` once stopped.
    pub async fn start(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let pass = self.pass.lock().await;
        (!self.stopped()).then_some(pass)
    }
}

/// How long a heartbeat pass may go on adopting.
pub struct Within<'a> {
    /// Batches are started for this long.
    pub budget: Duration,
    /// The pass's end: a batch still running then is given up (or, its COMMIT sent, in
    /// doubt), so that the next heartbeat comes in time however slow the database.
    pub deadline: tokio::time::Instant,
    /// No batch is started once the node stops.
    pub adopting: &'a Adopting,
}

impl Within<'_> {
    fn may_start(&self) -> bool {
        tokio::time::Instant::now() < self.deadline && !self.adopting.stopped()
    }
}

/// Adopts the sessions of `orphans` a batch at a time, handing each batch to `adopted`,
/// within `within`, so that the next heartbeat is not held up: the rest is adopted at the
/// next passes. A batch in doubt joins the ledger's.
pub async fn adopt(
    pool: &PgPool,
    node: &str,
    orphans: &[String],
    sessions: &Sessions,
    within: &Within<'_>,
    ledger: &mut Ledger,
    adopted: &impl Fn(Vec<Adopted>),
) {
    let started = Instant::now();
    while started.elapsed() < within.budget && within.may_start() {
        let batch = match sessions
            .adopt(pool, node, orphans, ADOPT_BATCH, within.deadline)
            .await
        {
            Ok(batch) => batch,
            Err(Unadopted::Failed(e)) => {
                if ledger.failed() {
                    tracing::warn!(error = %e, "cannot adopt the sessions of nodes that are gone; trying again at every heartbeat (logged again once the database answers)");
                }
                return;
            }
            Err(Unadopted::InDoubt(batch, e)) => {
                if ledger.failed() {
                    tracing::warn!(
                        error = %e, sessions = batch.adopted.len(),
                        "no answer to the commit of adopted sessions; asking the database what became of it at the next heartbeat"
                    );
                }
                keep_in_doubt(&mut ledger.in_doubt, batch);
                return;
            }
        };
        ledger.answered();
        let n = batch.len();
        if n > 0 {
            tracing::info!(sessions = n, "adopted sessions of nodes that are gone");
            adopted(batch);
        }
        if n < ADOPT_BATCH {
            return;
        }
    }
}

/// Adds `batch` to `in_doubt`, giving up the oldest past [`MAX_IN_DOUBT`].
fn keep_in_doubt(in_doubt: &mut Vec<InDoubt>, batch: InDoubt) {
    if in_doubt.len() >= MAX_IN_DOUBT {
        let given_up = in_doubt.remove(0);
        tracing::error!(
            sessions = given_up.adopted.len(),
            "giving up on an adoption still in doubt; if it committed, its sessions are held nowhere until their clients come back"
        );
    }
    in_doubt.push(batch);
}

/// Asks the database what became of the ledger's batches in doubt: hands those committed to
/// `adopted` (less what is no longer this node's to take up), drops those rolled back, and
/// keeps those it cannot tell yet, or has no time left to ask about within `within` (by
/// the heartbeat pass's end, and before the node stops).
pub async fn settle(
    pool: &PgPool,
    node: &str,
    sessions: &Sessions,
    within: &Within<'_>,
    ledger: &mut Ledger,
    adopted: &impl Fn(Vec<Adopted>),
) {
    let mut kept = Vec::new();
    for batch in std::mem::take(&mut ledger.in_doubt) {
        if !within.may_start() {
            // Asked at the next pass: this one's time is up.
            kept.push(batch);
            continue;
        }
        let limit = sessions
            .timeout
            .min(within.deadline - tokio::time::Instant::now());
        let settled = sessions.settle(pool, node, batch, limit).await;
        if settled.is_ok() {
            ledger.answered();
        }
        match settled {
            Ok(Settled::Committed(batch)) => {
                tracing::info!(
                    sessions = batch.len(),
                    "adopted sessions of nodes that are gone (their commit's answer was lost)"
                );
                if !batch.is_empty() {
                    adopted(batch);
                }
            }
            Ok(Settled::RolledBack) => {
                tracing::info!(
                    "an adoption in doubt did not commit; its sessions are adopted anew"
                );
            }
            Ok(Settled::Open(batch)) => kept.push(batch),
            Err((batch, e)) => {
                if ledger.failed() {
                    tracing::warn!(error = %e, "cannot tell yet whether an adoption committed; asking again at every heartbeat (logged again once the database answers)");
                }
                kept.push(batch);
            }
        }
    }
    ledger.in_doubt = kept;
}

/// What became of a batch in doubt.
enum Settled {
    /// It committed: what of it is still to take up.
    Committed(Vec<Adopted>),
    RolledBack,
    /// Its transaction is still open (the database has not yet seen the connection go).
    Open(InDoubt),
}

#[derive(sqlx::FromRow)]
struct AdoptRow {
    client_id: String,
    creator: Option<String>,
    expiry_secs: i64,
    subscriptions: serde_json::Value,
    connected: bool,
    will: Option<Vec<u8>>,
    will_expiry_secs: Option<i64>,
    will_delay_secs: Option<i64>,
    will_owner: Option<String>,
    will_owner_max: Option<i64>,
    away: f64,
    /// Seconds until a Will written back by a clean stop is due (negative: overdue).
    will_due_in: Option<f64>,
    queued: i64,
    queued_bytes: i64,
}

impl Sessions {
    /// At most `limit` sessions of the `orphans` (nodes without a heartbeat row, as
    /// [`Self::orphan_nodes`] found them) become `node`'s, offline, their Wills cleared (the
    /// adopter publishes them), in a transaction of their own on `pool` (the adoptions'). One
    /// survivor adopts each session: the update locks its row, and the others skip it. The
    /// whole transaction is bounded by the database timeout, and ends by `pass_end`.
    async fn adopt(
        &self,
        pool: &PgPool,
        node: &str,
        orphans: &[String],
        limit: usize,
        pass_end: tokio::time::Instant,
    ) -> Result<Vec<Adopted>, Unadopted> {
        let now = tokio::time::Instant::now();
        let deadline = (now + self.timeout).min(pass_end);
        let t = deadline - now;
        let mut tx = before(deadline, t, pool.begin()).await?;
        let xid: i64 = before(
            deadline,
            t,
            sqlx::query_scalar("SELECT txid_current()").fetch_one(&mut *tx),
        )
        .await?;
        let rows: Vec<AdoptRow> = before(
            deadline,
            t,
            sqlx::query_as(
                "WITH orphans AS ( \
                   SELECT client_id, connected, will, will_expiry_secs, will_delay_secs, \
                     will_owner, will_owner_max, \
                     extract(epoch FROM now() - coalesce(detached_at, now()))::float8 AS away, \
                     extract(epoch FROM will_due_at - now())::float8 AS will_due_in \
                   FROM cluster_sessions s \
                   WHERE s.node = ANY($2) \
                     AND NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node = s.node) \
                   LIMIT $3 \
                   FOR UPDATE SKIP LOCKED), \
                 queues AS ( \
                   SELECT q.client_id, count(*) AS queued, \
                     sum(octet_length(q.frame))::int8 AS queued_bytes \
                   FROM cluster_session_queue q JOIN orphans o USING (client_id) \
                   GROUP BY q.client_id) \
                 UPDATE cluster_sessions s SET node = $1, connected = false, \
                   detached_at = coalesce(s.detached_at, now()), will = NULL, \
                   will_due_at = NULL \
                 FROM orphans o LEFT JOIN queues q USING (client_id) \
                 WHERE s.client_id = o.client_id \
                 RETURNING s.client_id, s.creator, s.expiry_secs, s.subscriptions, o.connected, \
                   o.will, o.will_expiry_secs, o.will_delay_secs, o.will_owner, o.will_owner_max, \
                   o.away, o.will_due_in, coalesce(q.queued, 0) AS queued, \
                   coalesce(q.queued_bytes, 0) AS queued_bytes",
            )
            .bind(node)
            .bind(orphans)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx),
        )
        .await?;
        // Kept only for their Wills: gone once those are in hand.
        let will_only: Vec<&str> = rows
            .iter()
            .filter(|r| r.expiry_secs <= 0)
            .map(|r| r.client_id.as_str())
            .collect();
        if !will_only.is_empty() {
            before(
                deadline,
                t,
                sqlx::query("DELETE FROM cluster_sessions WHERE client_id = ANY($1)")
                    .bind(&will_only)
                    .execute(&mut *tx),
            )
            .await?;
            before(
                deadline,
                t,
                sqlx::query("DELETE FROM cluster_session_queue WHERE client_id = ANY($1)")
                    .bind(&will_only)
                    .execute(&mut *tx),
            )
            .await?;
        }
        let adopted: Vec<Adopted> = rows.iter().map(|r| self.adopted(r)).collect();
        match before(deadline, t, tx.commit()).await {
            Ok(()) => Ok(adopted),
            Err(e) if adopted.is_empty() => Err(e.into()),
            Err(e) => Err(Unadopted::InDoubt(InDoubt { xid, adopted }, e)),
        }
    }

    fn adopted(&self, r: &AdoptRow) -> Adopted {
        Adopted {
            client_id: Arc::from(r.client_id.as_str()),
            creator: r.creator.clone(),
            expiry_secs: u32::try_from(r.expiry_secs.max(0)).unwrap_or(u32::MAX),
            away: Duration::from_secs_f64(r.away.max(0.0)),
            subscriptions: serde_json::from_value(r.subscriptions.clone()).unwrap_or_default(),
            will: self.will(r),
            queued: usize::try_from(r.queued).unwrap_or(0),
            queued_bytes: usize::try_from(r.queued_bytes).unwrap_or(0),
        }
    }

    /// The Will of a client that was connected when its node died, due after its delay; or
    /// one its node, stopped cleanly, wrote back while it waited out its delay, due when it
    /// was (`will_due_at` counts only for a client that is not connected: see migration 0015).
    fn will(&self, r: &AdoptRow) -> Option<StoredWill> {
        let delay = if r.connected {
            Duration::from_secs(r.will_delay_secs.unwrap_or(0).max(0) as u64)
        } else {
            Duration::try_from_secs_f64(r.will_due_in?.max(0.0)).unwrap_or_default()
        };
        let body = r.will.as_ref()?;
        let publication = frame::decode(&Bytes::from(body.clone()), self.limits).ok()?;
        Some(StoredWill {
            publication,
            expiry_secs: r.will_expiry_secs.and_then(|s| u32::try_from(s).ok()),
            delay,
            owner: r.will_owner.clone().unwrap_or_default(),
            owner_max: r.will_owner_max.and_then(|m| u64::try_from(m).ok()),
        })
    }

    /// What became of `batch`. Committed, a session is still to take up unless its client
    /// came back meanwhile (a claim on its id, anywhere) or its row changed hands (another
    /// node's now, or, for a session kept only for its Will, a new session's); such a
    /// session's Will is not published late either: its client is back.
    async fn settle(
        &self,
        pool: &PgPool,
        node: &str,
        batch: InDoubt,
        limit: Duration,
    ) -> Result<Settled, (InDoubt, SessionError)> {
        let ids: Vec<&str> = batch.adopted.iter().map(|a| &*a.client_id).collect();
        let answer = self
            .bounded_by(limit, async {
                let status: Option<String> = sqlx::query_scalar("SELECT txid_status($1)")
                    .bind(batch.xid)
                    .fetch_one(pool)
                    .await?;
                if status.as_deref() != Some("committed") {
                    return Ok((status, Vec::new()));
                }
                let rows: Vec<(String, Option<String>, bool)> = sqlx::query_as(
                    "SELECT c.client_id, s.node, \
                       EXISTS (SELECT 1 FROM cluster_clients k WHERE k.client_id = c.client_id) \
                     FROM unnest($1::text[]) AS c(client_id) \
                     LEFT JOIN cluster_sessions s USING (client_id)",
                )
                .bind(&ids)
                .fetch_all(pool)
                .await?;
                Ok((status, rows))
            })
            .await;
        let (status, rows) = match answer {
            Ok(answer) => answer,
            Err(e) => return Err((batch, e)),
        };
        match status.as_deref() {
            Some("committed") => {}
            Some("aborted") => return Ok(Settled::RolledBack),
            Some(_) => return Ok(Settled::Open(batch)),
            None => {
                tracing::error!(
                    sessions = batch.adopted.len(),
                    "an adoption in doubt is too old for the database to tell; given up"
                );
                return Ok(Settled::RolledBack);
            }
        }
        let still_ours = |a: &Adopted| {
            rows.iter()
                .find(|(id, _, _)| id.as_str() == &*a.client_id)
                .is_some_and(|(_, holder, claimed)| {
                    !claimed
                        && if a.expiry_secs == 0 {
                            holder.is_none()
                        } else {
                            holder.as_deref() == Some(node)
                        }
                })
        };
        Ok(Settled::Committed(
            batch.adopted.into_iter().filter(still_ours).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_in_doubt_are_kept_up_to_a_bound_the_oldest_given_up_first() {
        let mut in_doubt = Vec::new();
        for xid in 0..MAX_IN_DOUBT as i64 + 3 {
            let adopted = Vec::new();
            keep_in_doubt(&mut in_doubt, InDoubt { xid, adopted });
        }
        assert_eq!(in_doubt.len(), MAX_IN_DOUBT);
        assert_eq!(in_doubt[0].xid, 3);
        assert_eq!(in_doubt.last().unwrap().xid, MAX_IN_DOUBT as i64 + 2);
    }

    #[test]
    fn only_the_first_failure_of_a_run_is_to_be_logged_and_every_one_is_counted() {
        let mut ledger = Ledger::default();
        ledger.answered();
        assert!(ledger.failed(), "the first failure");
        assert!(!ledger.failed());
        assert!(!ledger.failed());
        ledger.answered();
        assert!(
            ledger.failed(),
            "the first failure after an answer starts a new run"
        );
        ledger.answered();
        ledger.answered();
        assert!(ledger.failed());
        ledger.idle();
        assert!(ledger.failed(), "a run ended with nothing left to adopt");
        assert_eq!(ledger.failures(), 6);
    }
}
