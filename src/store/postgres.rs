//! Postgres backend: the production store. Every batch is one statement, so one round trip and
//! one commit however many messages it carries.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Connection, FromRow, PgPool};
use tokio::time::Instant;

use super::backend::{ChangeFeed, Verdict};
use super::feed;
use super::postgres_feed::PgChangeFeed;
use super::postgres_writers::Writers;
use super::quota;
use super::row::{
    MessageRow, RangeStatements, Row, ScanStart, SummaryRow, encode_user_properties,
    last_write_per_topic, message_columns,
};
use super::{Error, OwnedWrite, Owner, RetainedMessage, RetainedStore, RetainedSummary};
use crate::topic::TopicName;

/// Run by every connection the store opens, pooled or for writes. Every statement the store
/// runs has an index to use, so a sequential scan is only ever a mistake, and one that lasts:
/// a prepared statement keeps a generic plan, and one made while the table was empty (a fresh
/// database, a mass delete then vacuum) scans the table for each of its `topic = ANY($1)`
/// arrays, comparing every row with every element. Measured: with 50,000 rows, batches of 100
/// deletes kept the write lane busy for tens of seconds, until autovacuum's analyze replaced
/// the plan. Set per connection, not in the URL (`options=`), which poolers such as PgBouncer
/// may refuse.
pub(super) const SESSION_SETUP: &str = "SET enable_seqscan = off";

pub(super) struct PostgresStore {
    pool: PgPool,
    /// Write batches run on these, not on the pool.
    writers: Writers,
    /// Names this process in change notices, so it can skip its own.
    node: Arc<str>,
}

impl PostgresStore {
    pub(super) async fn migrate(
        pool: PgPool,
        options: PgConnectOptions,
        timeout: Duration,
    ) -> Result<Self, Error> {
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

/// Upserts the batch's rows (messages and tombstones), takes the batch's write ticket, and tells
/// the other nodes, in one statement; answers with the topics it left alone because a write with
/// a later ticket got there first.
///
/// The ticket is an uncorrelated subquery, so Postgres evaluates it once, as an init plan, when
/// the first row is produced: before the statement waits for any row lock. Tickets therefore
/// order the starts of statements, and a statement that stalls on a lock still carries the
/// ticket of when it began. Notifications are delivered at commit, and only if it commits.
const APPLY: &str = "
WITH upserted AS (
INSERT INTO retained_messages (topic, payload, qos, user_properties, content_type, response_topic,
    correlation_data, payload_format, expires_at_ms, last_modified_ms, last_accessed_ms, owner,
    deleted, write_seq)
SELECT u.*, (SELECT nextval('retained_write_seq'))
FROM UNNEST($1::text[], $2::bytea[], $3::int2[], $4::text[], $5::text[], $6::text[],
    $7::bytea[], $8::int2[], $9::int8[], $10::int8[], $11::int8[], $12::text[], $13::bool[]) AS u
ON CONFLICT (topic) DO UPDATE SET
    payload = EXCLUDED.payload, qos = EXCLUDED.qos, user_properties = EXCLUDED.user_properties,
    content_type = EXCLUDED.content_type, response_topic = EXCLUDED.response_topic,
    correlation_data = EXCLUDED.correlation_data, payload_format = EXCLUDED.payload_format,
    expires_at_ms = EXCLUDED.expires_at_ms, last_modified_ms = EXCLUDED.last_modified_ms,
    last_accessed_ms = EXCLUDED.last_accessed_ms, owner = EXCLUDED.owner,
    deleted = EXCLUDED.deleted, write_seq = EXCLUDED.write_seq
WHERE retained_messages.write_seq < EXCLUDED.write_seq
RETURNING topic
), notified AS (
SELECT count(pg_notify('retaind_changes', notice)) FROM UNNEST($14::text[]) AS notice
)
SELECT t FROM UNNEST($1::text[]) AS t, notified WHERE t NOT IN (SELECT topic FROM upserted)";

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

/// Full messages in a range: [`RetainedStore::scan`].
const SCAN: RangeStatements = range_statements!(message_columns!());
/// Summaries in a range: [`RetainedStore::list_range`].
const LIST_RANGE: RangeStatements =
    range_statements!("topic, octet_length(payload)::int8 AS payload_size, qos, last_modified_ms");

#[derive(Default)]
struct Columns<'a> {
    topic: Vec<&'a str>,
    payload: Vec<&'a [u8]>,
    qos: Vec<i16>,
    user_properties: Vec<Option<String>>,
    content_type: Vec<Option<&'a str>>,
    response_topic: Vec<Option<&'a str>>,
    correlation_data: Vec<Option<&'a [u8]>>,
    payload_format: Vec<i16>,
    expires_at_ms: Vec<Option<i64>>,
    last_modified_ms: Vec<i64>,
    last_accessed_ms: Vec<i64>,
    owner: Vec<&'a str>,
    deleted: Vec<bool>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, row: Row<'a>, owner: &'a Owner) {
        self.owner.push(&owner.name);
        match row {
            Row::Message(m) => {
                let p = &m.properties;
                self.topic.push(m.topic.as_str());
                self.payload.push(&m.payload);
                self.qos.push(i16::from(m.qos.as_u8()));
                self.user_properties
                    .push(encode_user_properties(&p.user_properties));
                self.content_type.push(p.content_type.as_deref());
                self.response_topic
                    .push(p.response_topic.as_ref().map(TopicName::as_str));
                self.correlation_data.push(p.correlation_data.as_deref());
                self.payload_format.push(i16::from(p.payload_format as u8));
                self.expires_at_ms.push(m.expires_at_ms);
                self.last_modified_ms.push(m.last_modified_ms);
                self.last_accessed_ms.push(m.last_accessed_ms);
                self.deleted.push(false);
            }
            Row::Tombstone { topic, at_ms } => {
                self.topic.push(topic.as_str());
                self.payload.push(&[]);
                self.qos.push(0);
                self.user_properties.push(None);
                self.content_type.push(None);
                self.response_topic.push(None);
                self.correlation_data.push(None);
                self.payload_format.push(0);
                self.expires_at_ms.push(Some(at_ms));
                self.last_modified_ms.push(at_ms);
                self.last_accessed_ms.push(at_ms);
                self.deleted.push(true);
            }
        }
    }
}

/// Runs [`APPLY`] for `writes` on `db`; returns the topics that a later write had already
/// changed, which this batch left alone.
async fn apply_all<'c, E>(
    db: E,
    node: &str,
    writes: Vec<&OwnedWrite>,
    now_ms: i64,
) -> Result<HashSet<String>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let mut writes = last_write_per_topic(writes);
    if writes.is_empty() {
        return Ok(HashSet::new());
    }
    // Every batch locks its rows in the same (topic) order, so two batches on different nodes
    // that share topics wait for each other instead of deadlocking.
    writes.sort_unstable_by(|a, b| a.write.topic().cmp(b.write.topic()));
    let notices = feed::announce(node, writes.iter().map(|w| w.write.topic().as_str()));
    let mut cols = Columns::default();
    for w in writes {
        cols.push(Row::of(&w.write, now_ms), &w.owner);
    }
    let superseded: Vec<String> = sqlx::query_scalar(APPLY)
        .bind(cols.topic)
        .bind(cols.payload)
        .bind(cols.qos)
        .bind(cols.user_properties)
        .bind(cols.content_type)
        .bind(cols.response_topic)
        .bind(cols.correlation_data)
        .bind(cols.payload_format)
        .bind(cols.expires_at_ms)
        .bind(cols.last_modified_ms)
        .bind(cols.last_accessed_ms)
        .bind(cols.owner)
        .bind(cols.deleted)
        .bind(notices)
        .fetch_all(db)
        .await?;
    Ok(superseded.into_iter().collect())
}

/// The counts a quota decision starts from, read after locking every shard of
/// `retained_total`: a connection adding messages updates one of them, so the lock waits for
/// those in progress and holds off the next ones, on every node, until this batch commits.
async fn standing(
    tx: &mut sqlx::PgConnection,
    writes: &[OwnedWrite],
) -> Result<quota::Standing, sqlx::Error> {
    let shards: Vec<i64> =
        sqlx::query_scalar("SELECT messages FROM retained_total ORDER BY shard FOR UPDATE")
            .fetch_all(&mut *tx)
            .await?;
    let total: i64 = shards.iter().sum();
    let owners = quota::owners_with_quota(writes);
    let by_owner: Vec<(String, i64)> = if owners.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT owner, sum(messages)::int8 FROM retained_owner_counts
             WHERE owner = ANY($1::text[]) GROUP BY owner",
        )
        .bind(owners)
        .fetch_all(&mut *tx)
        .await?
    };
    let topics: Vec<&str> = writes.iter().map(|w| w.write.topic().as_str()).collect();
    let owner_of: Vec<(String, String)> = sqlx::query_as(
        "SELECT topic, owner FROM retained_messages
             WHERE topic = ANY($1::text[]) AND NOT deleted",
    )
    .bind(topics)
    .fetch_all(&mut *tx)
    .await?;
    Ok(quota::Standing {
        total: u64::try_from(total).unwrap_or(0),
        by_owner: by_owner
            .into_iter()
            .map(|(o, n)| (o.into(), u64::try_from(n).unwrap_or(0)))
            .collect(),
        owner_of: owner_of.into_iter().map(|(t, o)| (t, o.into())).collect(),
    })
}

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
        .bind(super::row::day_of(cutoff_ms))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            // Rare (nothing read for years), so the other nodes simply forget everything.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(feed::CHANNEL)
                .bind(feed::everything(&self.node))
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
}
