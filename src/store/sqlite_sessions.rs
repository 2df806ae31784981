//! SQLite's `saved_sessions` (decision 024): written and taken on the one write connection, each
//! call one transaction.

use bytes::Bytes;
use rusqlite::{Connection, params};
use tokio::time::Instant;

use super::Error;
use super::saved_session::{SavedSession, saturating_i64};
use super::sqlite::write_transaction;

pub(super) fn save(conn: &mut Connection, sessions: &[SavedSession]) -> Result<(), Error> {
    let tx = write_transaction(conn)?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO saved_sessions (client_id, creator, expires_at_ms, state)
             VALUES (?, ?, ?, ?)
             ON CONFLICT (client_id) DO UPDATE SET creator = excluded.creator,
                 expires_at_ms = excluded.expires_at_ms, state = excluded.state",
        )?;
        for s in sessions {
            upsert.execute(params![
                s.client_id,
                s.creator,
                s.expires_at_ms,
                s.state.as_ref()
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn take(
    conn: &mut Connection,
    limit: usize,
    max_bytes: usize,
    deadline: Instant,
) -> Result<Vec<SavedSession>, Error> {
    // The writer runs a job to its end even if its caller stopped waiting: one that starts
    // or finishes late rolls back rather than delete rows nobody will take up.
    if Instant::now() >= deadline {
        return Err(Error::timed_out());
    }
    let tx = write_transaction(conn)?;
    let taken = {
        let mut take = tx.prepare_cached(
            "DELETE FROM saved_sessions WHERE client_id IN (
                 SELECT client_id FROM (
                     SELECT client_id,
                         row_number() OVER (ORDER BY client_id) AS n,
                         sum(length(state)) OVER (ORDER BY client_id) AS upto
                     FROM saved_sessions ORDER BY client_id LIMIT ?1)
                 WHERE n = 1 OR upto <= ?2)
             RETURNING client_id, creator, expires_at_ms, state",
        )?;
        let rows = take.query_map([saturating_i64(limit), saturating_i64(max_bytes)], |row| {
            Ok(SavedSession {
                client_id: row.get(0)?,
                creator: row.get(1)?,
                expires_at_ms: row.get(2)?,
                state: Bytes::from(row.get::<_, Vec<u8>>(3)?),
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    if Instant::now() >= deadline {
        return Err(Error::timed_out());
    }
    tx.commit()?;
    Ok(taken)
}
