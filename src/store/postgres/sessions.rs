//! Postgres' `saved_sessions` (decision 024): a save is one statement, a take one
//! transaction bound by its deadline.

use bytes::Bytes;
use sqlx::{Executor, PgPool};
use tokio::time::Instant;

use crate::store::Error;
use crate::store::saved_session::{SavedSession, saturating_i64};

pub(super) async fn save(pool: &PgPool, sessions: &[SavedSession]) -> Result<(), Error> {
    let ids: Vec<&str> = sessions.iter().map(|s| s.client_id.as_str()).collect();
    let creators: Vec<Option<&str>> = sessions.iter().map(|s| s.creator.as_deref()).collect();
    let expiries: Vec<Option<i64>> = sessions.iter().map(|s| s.expires_at_ms).collect();
    let states: Vec<&[u8]> = sessions.iter().map(|s| s.state.as_ref()).collect();
    sqlx::query(
        "INSERT INTO saved_sessions (client_id, creator, expires_at_ms, state)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[])
         ON CONFLICT (client_id) DO UPDATE SET creator = excluded.creator,
             expires_at_ms = excluded.expires_at_ms, state = excluded.state",
    )
    .bind(ids)
    .bind(creators)
    .bind(expiries)
    .bind(states)
    .execute(pool)
    .await?;
    Ok(())
}

/// A row of `saved_sessions` as it is read.
type Row = (String, Option<String>, Option<i64>, Vec<u8>);

pub(super) async fn take(
    pool: &PgPool,
    limit: usize,
    max_bytes: usize,
    deadline: Instant,
) -> Result<Vec<SavedSession>, Error> {
    // In a transaction whose statements Postgres itself ends at the deadline: a delete left
    // waiting on a lock after this node gave up would otherwise commit later, and the rows
    // it took would be nobody's. Without a COMMIT the transaction rolls back.
    let mut tx = pool.begin().await?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_millis();
    if left == 0 {
        return Err(Error::timed_out());
    }
    let ms = left.min(i32::MAX as u128);
    tx.execute(sqlx::AssertSqlSafe(format!(
        "SET LOCAL statement_timeout = {ms}"
    )))
    .await?;
    // Two nodes taking at once (nodes sharing a database without a cluster) may pick the same
    // rows: the second's delete waits for the first's and then finds them gone.
    let rows: Vec<Row> = sqlx::query_as(
        "DELETE FROM saved_sessions WHERE client_id IN (
             SELECT client_id FROM (
                 SELECT client_id,
                     row_number() OVER (ORDER BY client_id) AS n,
                     sum(octet_length(state)) OVER (ORDER BY client_id) AS upto
                 FROM saved_sessions ORDER BY client_id LIMIT $1) page
             WHERE n = 1 OR upto <= $2)
         RETURNING client_id, creator, expires_at_ms, state",
    )
    .bind(saturating_i64(limit))
    .bind(saturating_i64(max_bytes))
    .fetch_all(&mut *tx)
    .await?;
    if Instant::now() >= deadline {
        return Err(Error::timed_out());
    }
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|(client_id, creator, expires_at_ms, state)| SavedSession {
            client_id,
            creator,
            expires_at_ms,
            state: Bytes::from(state),
        })
        .collect())
}
