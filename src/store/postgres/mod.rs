//! Postgres backend: the production store. Every batch is one statement, so one round trip and
//! one commit however many messages it carries.
//!
//! This file holds the backend itself: opening it, and the reads, counts and purges, each one
//! statement on the shared pool (`pool`). A write batch's statements are `statements`, bound
//! and run by `apply`; the connections it runs on are `writers`; the change feed that keeps
//! other nodes' caches coherent is `feed`.

mod apply;
mod feed;
mod pool;
mod sessions;
mod statements;
mod writers;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Connection, FromRow, PgPool};
use tokio::time::Instant;

use self::apply::{apply_all, one_kind, standing};
use self::feed::PgChangeFeed;
use self::writers::Writers;
use crate::store::backend::{ChangeFeed, Readers, TICKET_REVISIONS, Verdict};
use crate::store::feed::{CHANNEL, everything};
use crate::store::row::{
    ChangeRow, MessageRow, Pages, PublishRow, RangeStatements, SNAPSHOT_PAGE, ScanStart,
    SummaryRow, change_columns, change_page, message_columns, publish_columns, range_statements,
};
use crate::store::saved_session::SavedSession;
use crate::store::{
    ChangePage, Error, OwnedWrite, RetainedMessage, RetainedPublish, RetainedStore,
    RetainedSummary, Revision, quota, schema,
};
use crate::topic::TopicName;

pub(in crate::store) struct PostgresStore {
    pool: PgPool,
    /// Bulk scans' connections ([`Readers::Bulk`]), apart from everything else's.
    bulk: PgPool,
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
        let migrations = schema::lenient(sqlx::migrate!("migrations/postgres"));
        migrations.run(&pool).await?;
        let found = sqlx::query_as(schema::FOUND).fetch_one(&pool).await?;
        schema::judge(schema::newest_known(&migrations), found)?;
        revisions_ahead(&pool).await?;
        let node = uuid::Uuid::new_v4().to_string().into();
        let bulk = pool::bulk(&options, max_connections, timeout);
        let writers = Writers::new(options, timeout);
        Ok(Self {
            pool,
            bulk,
            writers,
            node,
        })
    }

    /// Up to `limit` unexpired rows from `start` up to `until` (exclusive), in topic order, with
    /// one of the `statements` of a range query, on the connections of `readers`.
    async fn range<R>(
        &self,
        readers: Readers,
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
        // costs its square. Without sorting, only the ordered index scan remains. The bulk
        // connections run nothing but such ranges, and their sessions forbid sorting
        // (`pool::BULK_SETUP`); elsewhere a transaction forbids it for the one query.
        if readers == Readers::Bulk {
            return Ok(query.fetch_all(&self.bulk).await?);
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL enable_sort = off")
            .execute(&mut *tx)
            .await?;
        let rows = query.fetch_all(&mut *tx).await?;
        drop(tx); // read only: rolled back as the connection goes back (see `snapshot`)
        Ok(rows)
    }
}

impl PostgresStore {
    /// One batch on `conn`: as a single statement when it is of one kind of write and decides
    /// no quota; otherwise in a transaction, which first locks the counts for a quota decision.
    async fn run(
        &self,
        conn: &mut sqlx::PgConnection,
        writes: &[OwnedWrite],
        max_total: Option<u64>,
        now_ms: i64,
    ) -> Result<Vec<Verdict>, sqlx::Error> {
        let decides = quota::applies(writes, max_total);
        if !decides && one_kind(writes) {
            let applied = apply_all(conn, &self.node, writes.iter().collect(), now_ms).await?;
            return Ok(Verdict::of_batch(
                writes,
                vec![Ok(()); writes.len()],
                &applied,
            ));
        }
        let mut tx = conn.begin().await?;
        let admissions = if decides {
            quota::admit(writes, max_total, standing(&mut tx, writes).await?)
        } else {
            vec![Ok(()); writes.len()]
        };
        let admitted = quota::admitted(writes, &admissions);
        let applied = apply_all(&mut tx, &self.node, admitted, now_ms).await?;
        tx.commit().await?;
        Ok(Verdict::of_batch(writes, admissions, &applied))
    }
}

/// Refuses a database whose revisions are ahead of the server's transaction ids: a dump
/// restored into a younger cluster (ids start again there, while the rows keep theirs). Every
/// new revision would be below the stored ones, and so would every new write ticket: writes of
/// existing topics would be dropped as superseded, and watches would stall. `pg_upgrade` keeps
/// transaction ids and is not affected. Reads the next id without taking one.
async fn revisions_ahead(pool: &PgPool) -> Result<(), Error> {
    let (highest, next): (Option<i64>, i64) = sqlx::query_as(
        "SELECT GREATEST((SELECT max(revision) FROM retained_changes),
                         (SELECT revision FROM retained_compacted)),
                pg_snapshot_xmax(pg_current_snapshot())::text::int8",
    )
    .fetch_one(pool)
    .await?;
    match highest {
        Some(highest) if highest >= next.saturating_mul(TICKET_REVISIONS) => {
            Err(Error::config(format!(
                "the database holds revision {highest}, but this Postgres server's next transaction \
             id is {next} (revisions are transaction ids x 4096): was it restored from a dump \
             into another cluster? New writes would be dropped as older than the stored ones. \
             Advance the server's transaction ids past {} (pg_resetwal -x, server stopped) \
             before starting retaind (decision 018)",
                highest / TICKET_REVISIONS + 1
            )))
        }
        _ => Ok(()),
    }
}

/// Turns the rows `victims` selects into tombstones of `kind` (1: expiry, 2: retention), each
/// with a revision of this transaction's (see `statements`), logged, with the entries of the
/// versions they replace removed; the write ticket stays, so a write that started after the
/// message was written still replaces the tombstone. `$1`, `$2` and `$3` are the victims'.
///
/// Like a write batch (`statements`), it locks its session's shard of the counts before any
/// row, and takes its rows in topic order.
///
/// `$still` is checked again on the row's latest version as it is changed: the victims are
/// chosen on the statement's snapshot, and under READ COMMITTED a row changed meanwhile by
/// another transaction (a node recording a read, which leaves the revision as it was) is
/// re-checked only against the `UPDATE`'s own conditions.
macro_rules! tombstone_statement {
    ($victims:literal, $still:literal, $kind:literal, $at:literal) => {
        concat!(
            "WITH ticket AS MATERIALIZED (SELECT pg_current_xact_id()::text::int8 * 4096 AS base,
                 (SELECT count(*) FROM (SELECT 1 FROM retained_total
                     WHERE shard = retained_count_shard() FOR UPDATE) l) AS locked),
             victims AS MATERIALIZED (SELECT v.topic, v.revision AS old, t.base + row_number() OVER () AS rev
                 FROM (", $victims, ") v, ticket t ORDER BY v.topic),
             changed AS (
                 UPDATE retained_messages r SET deleted = true, change_kind = ", $kind, ",
                     revision = v.rev, payload = '', user_properties = NULL, content_type = NULL,
                     response_topic = NULL, correlation_data = NULL, writer_client = NULL,
                     expires_at_ms = ", $at, ", last_modified_ms = ", $at, "
                 FROM victims v WHERE r.topic = v.topic AND r.revision = v.old AND ", $still, "
                 RETURNING r.topic, r.revision),
             logged AS (INSERT INTO retained_changes (revision, topic) SELECT revision, topic FROM changed),
             pruned AS (DELETE FROM retained_changes c USING victims v, changed x
                 WHERE x.topic = v.topic AND c.revision = v.old)
             SELECT count(*) FROM changed"
        )
    };
}

/// Messages expired at or before `$1`, up to `$2`.
const EXPIRE: &str = tombstone_statement!(
    "SELECT topic, revision FROM retained_messages
     WHERE expires_at_ms <= $1 AND NOT deleted ORDER BY expires_at_ms LIMIT $2",
    "r.expires_at_ms <= $1 AND NOT r.deleted",
    "1",
    "expires_at_ms"
);

/// Messages last read and written before `$1` (whose day is `$3`), up to `$2`, dated `$4`.
const PURGE_IDLE: &str = tombstone_statement!(
    "SELECT topic, revision FROM retained_messages
     WHERE last_accessed_day <= $3 AND last_accessed_ms < $1 AND NOT deleted LIMIT $2",
    "r.last_accessed_ms < $1 AND NOT r.deleted",
    "2",
    "$4"
);

impl PostgresStore {
    /// Tells every node (this one's watches included) that changes were made outside a write
    /// batch, which announces its own.
    async fn announce_all(&self) -> Result<(), Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(everything(&self.node))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Full messages in a range: [`RetainedStore::scan`].
const SCAN: RangeStatements = range_statements!(message_columns!(), "$");
/// What subscribers receive of the messages in a range: [`RetainedStore::scan_publishes`].
/// Postgres spends about 2 µs of its CPU a row of a delivery, most of it on output rather than
/// on walking the index: reading the five columns a subscriber never sees as well made a
/// delivery measurably slower (decision 020).
const SCAN_PUBLISHES: RangeStatements = range_statements!(publish_columns!(), "$");
/// Summaries in a range: [`RetainedStore::list_range`].
const LIST_RANGE: RangeStatements = range_statements!(
    "topic, octet_length(payload)::int8 AS payload_size, qos, last_modified_ms, revision",
    "$"
);

#[async_trait]
impl RetainedStore for PostgresStore {
    /// A batch is one upsert over arrays (`UNNEST`), one round trip whatever its rows, so what
    /// it costs beyond its rows (the round trip, the commit's WAL flush, the lane's turn) is
    /// spread over more of them. Measured (decision 020): from 16 clients with 100 in flight
    /// each, 1,024 stored 59k–70k/s against 41k–52k/s for 512, at less CPU per message, and
    /// 2,048 or 4,000 were no faster.
    fn max_write_batch(&self) -> usize {
        1024
    }

    /// A page of a delivery is run by a Postgres backend at normal priority, about 2 µs of its
    /// CPU a row, in one burst; a backend committing a publish that needs a core meanwhile
    /// waits for the burst. Measured (decision 020, 1,000,000 retained, one `#` subscriber,
    /// Postgres on the same 2 cores): pages of up to 2,000 rows, as the read-ahead alone
    /// allows, kept other clients' publish p99 at 4.4–5.3 ms (2.9× idle) at 280k–340k
    /// deliveries/s; pages of 250 at 2.1–3.4 ms (1.45×) at 219k–232k/s.
    fn max_scan_rows(&self) -> u32 {
        256
    }

    async fn apply(
        &self,
        writes: &[OwnedWrite],
        max_total: Option<u64>,
        now_ms: i64,
        deadline: Instant,
    ) -> Result<Vec<Verdict>, Error> {
        crate::store::backend::fits_one_ticket(writes)?;
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
                "SELECT topic, octet_length(payload)::int8 AS payload_size, qos, last_modified_ms, revision
                 FROM retained_messages
                 WHERE NOT deleted AND (expires_at_ms IS NULL OR expires_at_ms > $1)
                 ORDER BY topic LIMIT $2",
            )
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?,
            Some(after) => sqlx::query_as(
                "SELECT topic, octet_length(payload)::int8 AS payload_size, qos, last_modified_ms, revision
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
        let rows: Vec<MessageRow> = self
            .range(Readers::Shared, &SCAN, start, until, limit, now_ms)
            .await?;
        Ok(rows.into_iter().map(MessageRow::into_message).collect())
    }

    async fn scan_publishes(
        &self,
        from: &str,
        until: Option<&str>,
        after: Option<&TopicName>,
        limit: u32,
        now_ms: i64,
        readers: Readers,
    ) -> Result<Vec<RetainedPublish>, Error> {
        let start = ScanStart::new(from, after);
        let rows: Vec<PublishRow> = self
            .range(readers, &SCAN_PUBLISHES, start, until, limit, now_ms)
            .await?;
        Ok(rows.into_iter().map(PublishRow::into_publish).collect())
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
        let rows: Vec<SummaryRow> = self
            .range(Readers::Shared, &LIST_RANGE, start, until, limit, now_ms)
            .await?;
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
        let mut pages = Pages::new(from);
        while let Some(start) = pages.next() {
            let mut query = sqlx::query_as(SCAN.pick(start, until))
                .bind(start.bound())
                .bind(now_ms)
                .bind(i64::from(SNAPSHOT_PAGE));
            if let Some(until) = until {
                query = query.bind(until);
            }
            let rows = query.fetch_all(&mut *tx).await?;
            if !pages.send(rows, &out).await {
                return Ok(pages.sent());
            }
        }
        // A read-only transaction ends as well by rollback, which dropping it queues and the
        // pool sends as the connection goes back. A `COMMIT` awaited here could be cancelled
        // on its way (the subscriber left with the last message); the transaction's drop then
        // queued a `ROLLBACK` after it, which Postgres answers with a warning
        // (`tests/store_abandoned_read_logs.rs`).
        drop(tx);
        Ok(pages.sent())
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

    async fn expire(&self, now_ms: i64, limit: u32) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(EXPIRE)
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_one(&self.pool)
            .await?;
        if n > 0 {
            self.announce_all().await?;
        }
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn purge_tombstones(&self, cutoff_ms: i64, limit: u32) -> Result<u64, Error> {
        // The outer condition is repeated so that a row written after the inner scan is
        // re-checked against its new version rather than deleted on the strength of the old one.
        let n: i64 = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM retained_messages
                 WHERE topic IN (SELECT topic FROM retained_messages
                                 WHERE expires_at_ms <= $1 AND deleted LIMIT $2)
                   AND expires_at_ms <= $1 AND deleted
                 RETURNING topic, revision),
             unlogged AS (DELETE FROM retained_changes c USING gone g WHERE c.revision = g.revision),
             marked AS (UPDATE retained_compacted
                        SET revision = GREATEST(revision, (SELECT max(revision) FROM gone))
                        WHERE EXISTS (SELECT 1 FROM gone))
             SELECT count(*) FROM gone",
        )
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn purge_idle(&self, cutoff_ms: i64, now_ms: i64, limit: u32) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(PURGE_IDLE)
            .bind(cutoff_ms)
            .bind(i64::from(limit))
            .bind(crate::store::row::day_of(cutoff_ms))
            .bind(now_ms)
            .fetch_one(&self.pool)
            .await?;
        if n > 0 {
            // Rare (nothing read for years), so the other nodes simply forget everything.
            self.announce_all().await?;
        }
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn compact_changes(
        &self,
        after: Revision,
        limit: u32,
    ) -> Result<(u64, Option<Revision>), Error> {
        let (removed, last): (i64, Option<i64>) = sqlx::query_as(
            "WITH examined AS MATERIALIZED (
                 SELECT revision, topic FROM retained_changes WHERE revision > $1
                 ORDER BY revision LIMIT $2),
             gone AS (
                 DELETE FROM retained_changes c USING examined e
                 WHERE c.revision = e.revision AND NOT EXISTS (
                     SELECT 1 FROM retained_messages m
                     WHERE m.topic = e.topic AND m.revision = e.revision)
                 RETURNING 1)
             SELECT (SELECT count(*) FROM gone), (SELECT max(revision) FROM examined)",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_one(&self.pool)
        .await?;
        Ok((u64::try_from(removed).unwrap_or(0), last))
    }

    async fn changes(
        &self,
        after: Revision,
        from: &str,
        until: Option<&str>,
        limit: u32,
        now_ms: i64,
    ) -> Result<ChangePage, Error> {
        // Read first, in a statement of its own: every transaction with an id below the oldest
        // one running has ended, and the next statement's snapshot sees all it committed.
        let below = self.settled().await? + 1;
        let rows: Vec<ChangeRow> = sqlx::query_as(concat!(
            "SELECT ",
            change_columns!(),
            " FROM retained_changes c JOIN retained_messages m
                 ON m.topic = c.topic AND m.revision = c.revision
             WHERE c.revision > $1 AND c.revision < $2 AND c.topic >= $3
                 AND ($4::text IS NULL OR c.topic < $4)
             ORDER BY c.revision LIMIT $5"
        ))
        .bind(after)
        .bind(below)
        .bind(from)
        .bind(until)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(change_page(rows, limit, below - 1, now_ms))
    }

    async fn settled(&self) -> Result<Revision, Error> {
        let below: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 * 4096")
                .fetch_one(&self.pool)
                .await?;
        Ok(below - 1)
    }

    async fn reached(&self) -> Result<Revision, Error> {
        // The first transaction id not yet given out (read without taking one): a revision
        // anyone was answered with is of a committed transaction, below it.
        let next: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8 * 4096")
                .fetch_one(&self.pool)
                .await?;
        Ok(next - 1)
    }

    async fn compacted(&self) -> Result<Revision, Error> {
        Ok(
            sqlx::query_scalar("SELECT revision FROM retained_compacted")
                .fetch_one(&self.pool)
                .await?,
        )
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

    async fn save_sessions(&self, sessions: &[SavedSession]) -> Result<(), Error> {
        sessions::save(&self.pool, sessions).await
    }

    async fn take_sessions(
        &self,
        limit: usize,
        max_bytes: usize,
        deadline: Instant,
    ) -> Result<Vec<SavedSession>, Error> {
        sessions::take(&self.pool, limit, max_bytes, deadline).await
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
