//! Connections that only run write batches, kept apart from the shared pool.
//!
//! The pool costs every borrowed connection two extra round trips: sqlx pings a connection
//! when it comes back (in a spawned task) and again before lending it out. Against a batch
//! that takes a millisecond, that is a tenth of the Postgres work and a third of the wake-ups.
//! A write connection is used by one batch at a time and simply put back. One that failed,
//! or whose batch was abandoned mid-statement (a timeout), is in an unknown state: it is
//! dropped, and the next batch connects afresh. One that sat idle for a while is pinged
//! before use, as the pool would, so that a database restart or an idle-session timeout
//! costs a reconnect, not a failed batch; under load, nothing is pinged.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor};

use super::Error;
use super::postgres::SESSION_SETUP;

/// Write connections also skip planning each batch. A prepared statement is planned afresh
/// for every execution while Postgres judges a plan for the exact arrays cheaper than its
/// generic plan, which for `UNNEST` of array parameters it always does; the generic plan is
/// the same (insert from the arrays, the primary key as conflict arbiter) and planning was
/// a third of each batch's Bind. With sequential scans off, the `topic = ANY($1)` lookups
/// are index scans in the generic plan too.
const WRITER_SETUP: &str = "SET plan_cache_mode = force_generic_plan";

/// A connection idle longer than this is pinged before its next batch.
const TRUST_IDLE_FOR: Duration = Duration::from_secs(1);

pub(super) struct Writers {
    options: PgConnectOptions,
    /// With when each was last put back.
    idle: Mutex<Vec<(PgConnection, Instant)>>,
}

impl Writers {
    pub(super) fn new(options: PgConnectOptions) -> Self {
        Self {
            options,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle write connection that answers, or a new one.
    pub(super) async fn take(&self) -> Result<PgConnection, Error> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let Some((mut conn, since)) = idle else {
                break;
            };
            if since.elapsed() < TRUST_IDLE_FOR || conn.ping().await.is_ok() {
                return Ok(conn);
            }
        }
        let mut conn = self.options.connect().await?;
        conn.execute(SESSION_SETUP).await?;
        conn.execute(WRITER_SETUP).await?;
        Ok(conn)
    }

    /// Returns a connection whose last batch finished, committed or rolled back.
    pub(super) fn give_back(&self, conn: PgConnection) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((conn, Instant::now()));
    }
}
