//! Connections that only run write batches, kept apart from the shared pool, and the fence
//! that makes sure a batch given up at its deadline can never commit afterwards.
//!
//! The pool costs every borrowed connection two extra round trips: sqlx pings a connection
//! when it comes back (in a spawned task) and again before lending it out. Against a batch
//! that takes a millisecond, that is a tenth of the Postgres work and a third of the wake-ups.
//! A write connection is used by one batch at a time and simply put back. One that failed is
//! dropped, and the next batch connects afresh. One that sat idle for a while is pinged
//! before use, as the pool would, so that a database restart or an idle-session timeout
//! costs a reconnect, not a failed batch; under load, nothing is pinged.
//!
//! A batch abandoned mid-statement (its deadline passed, or the connection broke) may still
//! be running in its database session: waiting for a row lock, say, which might be released
//! minutes later. Closing our end does not stop it, because Postgres notices a vanished client
//! only when it next talks to it. So the session is terminated from another connection, and
//! the call waits until it is gone (`pg_terminate_backend` with a timeout, Postgres 14 and
//! later); only then is the batch's outcome settled. As a second line, the session's own
//! `statement_timeout` and `idle_in_transaction_session_timeout` end it even if this node
//! cannot reach the database to terminate it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};

use super::pool::SESSION_SETUP;
use crate::store::Error;

/// Write connections also skip planning each batch. A prepared statement is planned afresh
/// for every execution while Postgres judges a plan for the exact arrays cheaper than its
/// generic plan, which for `UNNEST` of array parameters it always does; the generic plan is
/// the same (insert from the arrays, the primary key as conflict arbiter) and planning was
/// a third of each batch's Bind. With sequential scans off, the `topic = ANY($1)` lookups
/// are index scans in the generic plan too.
const WRITER_SETUP: &str = "SET plan_cache_mode = force_generic_plan";

/// A connection idle longer than this is pinged before its next batch.
const TRUST_IDLE_FOR: Duration = Duration::from_secs(1);

/// How long one `pg_terminate_backend` call waits for the session to exit.
const TERMINATE_WAIT_MS: i64 = 1000;

/// Which database session runs a write connection: its process id and start time (in
/// microseconds since the epoch), so that a process id reused by a later session is never
/// mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Session {
    pid: i32,
    started_us: i64,
}

pub(super) struct WriteConn {
    pub(super) conn: PgConnection,
    pub(super) session: Session,
}

pub(super) struct Writers {
    options: PgConnectOptions,
    /// How long a statement may run, also enforced by the database on these sessions.
    timeout: Duration,
    /// With when each was last put back.
    idle: Mutex<Vec<(WriteConn, Instant)>>,
}

impl Writers {
    pub(super) fn new(options: PgConnectOptions, timeout: Duration) -> Self {
        Self {
            options,
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle write connection that answers, or a new one.
    pub(super) async fn take(&self) -> Result<WriteConn, Error> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let Some((mut writer, since)) = idle else {
                break;
            };
            if since.elapsed() < TRUST_IDLE_FOR || writer.conn.ping().await.is_ok() {
                return Ok(writer);
            }
        }
        let mut conn = self.options.connect().await?;
        conn.execute(SESSION_SETUP).await?;
        conn.execute(WRITER_SETUP).await?;
        // Whole milliseconds, at least one: 0 would mean no limit.
        let ms = self.timeout.as_millis().clamp(1, i32::MAX as u128);
        conn.execute(sqlx::AssertSqlSafe(format!(
            "SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}"
        )))
        .await?;
        let (pid, started_us) = sqlx::query_as(
            "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8
             FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await?;
        Ok(WriteConn {
            conn,
            session: Session { pid, started_us },
        })
    }

    /// Returns a connection whose last batch finished, committed or rolled back.
    pub(super) fn give_back(&self, writer: WriteConn) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((writer, Instant::now()));
    }

    /// Returns once `session` can no longer commit anything: it has been terminated, or it is
    /// gone already (it finished, or the database restarted). Retries while the database cannot
    /// be reached, until the session's own timeouts must have ended whatever it was running.
    pub(super) async fn fence(&self, pool: &PgPool, session: Session) {
        let started = Instant::now();
        // A statement runs at most `timeout`, and the batch's transaction, when it has one,
        // has a few statements and idle gaps each bounded the same way.
        let give_up = self.timeout * 4;
        let mut pause = Duration::from_millis(10);
        loop {
            let terminated: Result<Option<bool>, sqlx::Error> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid, $3) FROM pg_stat_activity
                 WHERE pid = $1 AND (extract(epoch FROM backend_start) * 1000000)::int8 = $2",
            )
            .bind(session.pid)
            .bind(session.started_us)
            .bind(TERMINATE_WAIT_MS)
            .fetch_optional(pool)
            .await;
            match terminated {
                Ok(None | Some(true)) => return,
                Ok(Some(false)) => {}
                Err(e) => {
                    tracing::debug!(error = %e, pid = session.pid, "fence: cannot reach the database yet")
                }
            }
            if started.elapsed() >= give_up {
                tracing::warn!(
                    pid = session.pid,
                    "an abandoned write batch's database session could not be terminated; \
                     its statement timeout has ended it by now"
                );
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}
