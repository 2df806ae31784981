//! Postgres backend: the production store. Every batch is one statement, so one round trip and
//! one commit however many messages it carries.
//!
//! This file holds the backend itself: opening it, and the reads, counts and purges, each one
//! statement on the shared pool (`pool`). A write batch's statement is `apply`; the connections
//! it runs on are `writers`; the change feed that keeps other nodes' caches coherent is `feed`.

mod apply;
mod feed;
mod pool;
mod writers;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Connection, FromRow, PgPool};
use tokio::time::Instant;

use self::apply::{apply_all, standing};
use self::feed::PgChangeFeed;
use self::writers::Writers;
use crate::store::backend::{ChangeFeed, Verdict};
use crate::store::feed::{CHANNEL, everything};
use crate::store::row::{MessageRow, RangeStatements, ScanStart, SummaryRow, message_columns};
use crate::store::{Error, OwnedWrite, RetainedMessage, RetainedStore, RetainedSummary, quota};
use crate::topic::TopicName;

pub(in crate::store) struct PostgresStore {
    pool: PgPool,
    /// Write batches run on these, not on the pool.
    writers: Writers,
    /// Names this process in change notices, so it can skip its own.
    node: Arc<str>,
}

impl PostgresStore {
    /// Connects the pool and brings the schema up to date.
    pub(in crate::store) async fn open(
        options: PgConnectOptions,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let pool = pool::connect(&options, max_connections, timeout).await?;
        // sqlx takes an advisory lock, so nodes starting together migrate once.
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        let node = uuid::Uuid::new_v4().to_string().into();
        let writers = Writers::new(options, timeout);
        Ok(Self {
            pool,
            writers,
            node,
        })
    }

    /// Up to `limit` unexpired rows from `start` up to `until` (exclusive), in topic order, with
    /// one of the `statements` of a range query.
    async fn range<R>(
        &self,
        statements: &RangeStatements,
        start: ScanStart<'_>,
        until: Option<&str>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<R>, Error>
    where
        R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let mut query = sqlx::query_as(statements.pick(start, until))
            .bind(start.bound())
            .bind(now_ms)
            .bind(i64::from(limit));
        if let Some(until) = until {
            query = query.bind(until);
        }
        // Walk the primary key in order and stop after `limit` rows. Left to itself, the planner
        // may misjudge a range just filled (statistics lag behind) as small, read all of it
        // with a bitmap scan and sort it, for every page: paging through a large range then
        // costs its square. Without sorting, only the ordered index scan remains.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL enable_sort = off")
            .execute(&mut *tx)
            .await?;
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows)
    }
}

impl PostgresStore {
    /// One batch on `conn`: with a quota decision, in a transaction that first locks the counts;
    /// without, as a single statement.
    async fn run(
        &self,
        conn: &mut sqlx::PgConnection,
        writes: &[OwnedWrite],
        max_total: Option<u64>,
        now_ms: i64,
    ) -> Result<Vec<Verdict>, sqlx::Error> {
        let (admissions, superseded) = if quota::applies(writes, max_total) {
            let mut tx = conn.begin().await?;
            let admissions = quota::admit(writes, max_total, standing(&mut tx, writes).await?);
            let admitted = writes
                .iter()
                .zip(&admissions)
                .filter_map(|(w, v)| v.is_ok().then_some(w));
            let superseded = apply_all(&mut *tx, &self.node, admitted.collect(), now_ms).await?;
            tx.commit().await?;
            (admissions, superseded)
        } else {
            let superseded = apply_all(conn, &self.node, writes.iter().collect(), now_ms).await?;
            (vec![Ok(()); writes.len()], superseded)
        };
        Ok(Verdict::of_batch(writes, admissions, &superseded))
    }
}

impl PostgresStore {
    /// Expired messages (`tombstones: false`) or tombstones, whose expiry is the time of their
    /// delete, found through the expiry index.
    async fn purge_by_expiry(
        &self,
        cutoff_ms: i64,
        limit: u32,
        tombstones: bool,
    ) -> Result<u64, Error> {
        // The outer condition is repeated so that a row updated after the inner scan is
        // re-checked against its new version rather than deleted on the strength of the old one.
        let done = sqlx::query(
            "DELETE FROM retained_messages
             WHERE topic IN (SELECT topic FROM retained_messages
                             WHERE expires_at_ms <= $1 AND deleted = $3 LIMIT $2)
               AND expires_at_ms <= $1 AND deleted = $3",
        )
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .bind(tombstones)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// A range query with the given bounds on `topic`: `$1` is the lower bound, `$2` now, `$3` the
/// limit and `$4` the upper bound. One statement per combination of bounds, so that even
/// Postgres' generic plan is an index range scan on the primary key with both bounds as index
/// conditions.
macro_rules! range_statements {
    ($columns:expr) => {
        RangeStatements {
            at: range_statement!($columns, "topic >= $1"),
            after: range_statement!($columns, "topic > $1"),
            at_until: range_statement!($columns, "topic >= $1 AND topic < $4"),
            after_until: range_statement!($columns, "topic > $1 AND topic < $4"),
        }
    };
}

macro_rules! range_statement {
    ($columns:expr, $bounds:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM retained_messages WHERE ",
            $bounds,
            " AND NOT deleted AND (expires_at_ms IS NULL OR expires_at_ms > $2) ORDER BY topic LIMIT $3"
        )
    };
}

/// Rows per query of a [`RetainedStore::snapshot`].
const SNAPSHOT_PAGE: u32 = 500;

/// Full messages in a range: [`RetainedStore::scan`].
const SCAN: RangeStatements = range_statements!(message_columns!());
/// Summaries in a range: [`RetainedStore::list_range`].
const LIST_RANGE: RangeStatements =
    range_statements!("topic, octet_length(payload)::int8 AS payload_size, qos, last_modified_ms");

#[async_trait]
impl RetainedStore for PostgresStore {
    async fn apply(
        &self,
        writes: &[OwnedWrite],
        max_total: Option<u64>,
        now_ms: i64,
        deadline: Instant,
    ) -> Result<Vec<Verdict>, Error> {
        let mut writer = tokio::time::timeout_at(deadline, self.writers.take())
            .await
            .map_err(|_| Error::timed_out())??;
        let session = writer.session;
        let run = self.run(&mut writer.conn, writes, max_total, now_ms);
        match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(verdicts)) => {
                self.writers.give_back(writer);
                Ok(verdicts)
            }
            // Postgres answered with an error: the statement (and its transaction) is rolled
            // back, nothing of it can commit. The connection goes, its state being unknown.
            Ok(Err(e @ sqlx::Error::Database(_))) => Err(e.into()),
            // The connection broke mid-batch, or the deadline passed: the session may still be
            // running the batch and commit it later.
            Ok(Err(e)) => {
                drop(writer);
                self.writers.fence(&self.pool, session).await;
                Err(e.into())
            }
            Err(_) => {
                drop(writer);
                self.writers.fence(&self.pool, session).await;
                Err(Error::timed_out())
            }
        }
    }

    async fn count(&self, owner: Option<&str>) -> Result<u64, Error> {
        let n: Option<i64> = match owner {
            None => {
                sqlx::query_scalar("SELECT sum(messages)::int8 FROM retained_total")
                    .fetch_one(&self.pool)
                    .await?
            }
            Some(owner) => {
                sqlx::query_scalar(
                    "SELECT sum(messages)::int8 FROM retained_owner_counts WHERE owner = $1",
                )
                .bind(owner)
                .fetch_one(&self.pool)
                .await?
            }
        };
        Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    async fn payload_bytes(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(octet_length(payload)), 0)::int8 FROM retained_messages \
             WHERE NOT deleted",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn get_many(
        &self,
        topics: &[TopicName],
        now_ms: i64,
    ) -> Result<Vec<RetainedMessage>, Error> {
        let names: Vec<&str> = topics.iter().map(TopicName::as_str).collect();
        let rows: Vec<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM retained_messages
             WHERE topic = ANY($1::text[]) AND NOT deleted AND (expires_at_ms IS NULL OR expires_at_ms > $2)"
        ))
        .bind(names)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(MessageRow::into_message).collect())
    }

    async fn list(
        &self,
        after: Option<&TopicName>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<RetainedSummary>, Error> {
        // Two statements rather than `$1 IS NULL OR topic > $1`, which hides the index from
        // Postgres' generic plan.
        let rows: Vec<SummaryRow> = match after {
            None => sqlx::query_as(
                "SELECT topic, octet_length(payload)::int8 AS payload_size, qos, last_modified_ms
                 FROM retained_messages
                 WHERE NOT deleted AND (expires_at_ms IS NULL OR expires_at_ms > $1)
                 ORDER BY topic LIMIT $2",
            )
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?,
            Some(after) => sqlx::query_as(
                "SELECT topic, octet_length(payload)::int8 AS payload_size, qos, last_modified_ms
                 FROM retained_messages
                 WHERE topic > $3 AND NOT deleted AND (expires_at_ms IS NULL OR expires_at_ms > $1)
                 ORDER BY topic LIMIT $2",
            )
            .bind(now_ms)
            .bind(i64::from(limit))
            .bind(after.as_str())
            .fetch_all(&self.pool)
            .await?,
        };
        Ok(rows.into_iter().map(SummaryRow::into_summary).collect())
    }

    async fn scan(
        &self,
        from: &str,
        until: Option<&str>,
        after: Option<&TopicName>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<RetainedMessage>, Error> {
        let start = ScanStart::new(from, after);
        let rows: Vec<MessageRow> = self.range(&SCAN, start, until, limit, now_ms).await?;
        Ok(rows.into_iter().map(MessageRow::into_message).collect())
    }

    async fn list_range(
        &self,
        from: &str,
        until: Option<&str>,
        after: Option<&TopicName>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<RetainedSummary>, Error> {
        let start = ScanStart::new(from, after);
        let rows: Vec<SummaryRow> = self.range(&LIST_RANGE, start, until, limit, now_ms).await?;
        Ok(rows.into_iter().map(SummaryRow::into_summary).collect())
    }

    async fn snapshot(
        &self,
        from: &str,
        until: Option<&str>,
        now_ms: i64,
        out: tokio::sync::mpsc::Sender<RetainedMessage>,
    ) -> Result<u64, Error> {
        // REPEATABLE READ: every page of this transaction reads the snapshot its first
        // statement took, so writes committed meanwhile are in none of them.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        // As in `range`: walk the primary key in order rather than sort each page.
        sqlx::query("SET LOCAL enable_sort = off")
            .execute(&mut *tx)
            .await?;
        let mut after: Option<TopicName> = None;
        let mut sent = 0;
        loop {
            let start = ScanStart::new(from, after.as_ref());
            let mut query = sqlx::query_as(SCAN.pick(start, until))
                .bind(start.bound())
                .bind(now_ms)
                .bind(i64::from(SNAPSHOT_PAGE));
            if let Some(until) = until {
                query = query.bind(until);
            }
            let rows: Vec<MessageRow> = query.fetch_all(&mut *tx).await?;
            let full = rows.len() == SNAPSHOT_PAGE as usize;
            for row in rows {
                let message = row.into_message();
                after = Some(message.topic.clone());
                if out.send(message).await.is_err() {
                    return Ok(sent);
                }
                sent += 1;
            }
            if !full {
                tx.commit().await?;
                return Ok(sent);
            }
        }
    }

    async fn touch(&self, topics: &[TopicName], now_ms: i64) -> Result<(), Error> {
        let names: Vec<&str> = topics.iter().map(TopicName::as_str).collect();
        sqlx::query(
            "UPDATE retained_messages SET last_accessed_ms = $2
             WHERE topic = ANY($1::text[]) AND last_accessed_ms < $2",
        )
        .bind(names)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn purge_expired(&self, cutoff_ms: i64, limit: u32) -> Result<u64, Error> {
        self.purge_by_expiry(cutoff_ms, limit, false).await
    }

    async fn purge_tombstones(&self, cutoff_ms: i64, limit: u32) -> Result<u64, Error> {
        self.purge_by_expiry(cutoff_ms, limit, true).await
    }

    async fn purge_idle(&self, cutoff_ms: i64, limit: u32) -> Result<u64, Error> {
        let done = sqlx::query(
            "DELETE FROM retained_messages
             WHERE topic IN (SELECT topic FROM retained_messages
                             WHERE last_accessed_day <= $3 AND last_accessed_ms < $1 LIMIT $2)
               AND last_accessed_ms < $1",
        )
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .bind(crate::store::row::day_of(cutoff_ms))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            // Rare (nothing read for years), so the other nodes simply forget everything.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(everything(&self.node))
                .execute(&self.pool)
                .await?;
        }
        Ok(done.rows_affected())
    }

    async fn token_key(&self, candidate: &[u8]) -> Result<Vec<u8>, Error> {
        sqlx::query("INSERT INTO retaind_meta (name, value) VALUES ('token_key', $1) ON CONFLICT DO NOTHING")
            .bind(candidate)
            .execute(&self.pool)
            .await?;
        let key: Vec<u8> =
            sqlx::query_scalar("SELECT value FROM retaind_meta WHERE name = 'token_key'")
                .fetch_one(&self.pool)
                .await?;
        Ok(key)
    }

    async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn change_feed(&self) -> Option<Box<dyn ChangeFeed>> {
        Some(Box::new(PgChangeFeed::new(
            self.pool.clone(),
            self.node.clone(),
        )))
    }

    fn pool_connections(&self) -> Option<(u32, usize)> {
        Some((self.pool.size(), self.pool.num_idle()))
    }
}
