//! SQLite backend: the zero-setup default. WAL mode lets readers run beside the one writer;
//! `synchronous=FULL` makes a commit durable before it returns, so an acknowledged publish
//! survives power loss. Writes go through a single connection because SQLite has one writer
//! anyway; group commit upstream turns many publishes into one transaction on it.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, SqlitePool};

use super::backend::Admission;
use super::quota;
use super::row::{
    MessageRow, RangeStatements, ScanStart, SummaryRow, encode_user_properties,
    last_write_per_topic, message_columns,
};
use super::{Error, OwnedWrite, RetainedMessage, RetainedStore, RetainedSummary, Write};
use crate::topic::TopicName;

pub(super) struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Held while open: no other process may use the file (see `open::lock_sqlite_file`).
    _lock: std::fs::File,
}

impl SqliteStore {
    pub(super) async fn migrate(
        writer: SqlitePool,
        reader: SqlitePool,
        lock: std::fs::File,
    ) -> Result<Self, Error> {
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        Ok(Self {
            writer,
            reader,
            _lock: lock,
        })
    }
}

const UPSERT: &str = "
INSERT INTO retained_messages (topic, payload, qos, user_properties, content_type, response_topic,
    correlation_data, payload_format, expires_at_ms, last_modified_ms, last_accessed_ms, owner)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (topic) DO UPDATE SET
    payload = excluded.payload, qos = excluded.qos, user_properties = excluded.user_properties,
    content_type = excluded.content_type, response_topic = excluded.response_topic,
    correlation_data = excluded.correlation_data, payload_format = excluded.payload_format,
    expires_at_ms = excluded.expires_at_ms, last_modified_ms = excluded.last_modified_ms,
    last_accessed_ms = excluded.last_accessed_ms, owner = excluded.owner";

/// A range query with the given bounds on `topic`: `?1` is the lower bound, `?2` now, `?3` the
/// limit and `?4` the upper bound. One statement per combination of bounds, so that SQLite
/// searches the primary key between them (`?1 IS NULL OR ...` would make it walk the table from
/// the start).
macro_rules! range_statements {
    ($columns:expr) => {
        RangeStatements {
            at: range_statement!($columns, "topic >= ?1"),
            after: range_statement!($columns, "topic > ?1"),
            at_until: range_statement!($columns, "topic >= ?1 AND topic < ?4"),
            after_until: range_statement!($columns, "topic > ?1 AND topic < ?4"),
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
            " AND (expires_at_ms IS NULL OR expires_at_ms > ?2) ORDER BY topic LIMIT ?3"
        )
    };
}

/// Full messages in a range: [`RetainedStore::scan`].
const SCAN: RangeStatements = range_statements!(message_columns!());
/// Summaries in a range: [`RetainedStore::list_range`].
const LIST_RANGE: RangeStatements =
    range_statements!("topic, length(payload) AS payload_size, qos, last_modified_ms");

impl SqliteStore {
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
        R: for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
    {
        let mut query = sqlx::query_as(statements.pick(start, until))
            .bind(start.bound())
            .bind(now_ms)
            .bind(i64::from(limit));
        if let Some(until) = until {
            query = query.bind(until);
        }
        Ok(query.fetch_all(&self.reader).await?)
    }
}

/// Applies `writes` (reduced to the last per topic) in the transaction `tx`.
async fn apply_all(tx: &mut sqlx::SqliteConnection, writes: Vec<&OwnedWrite>) -> Result<(), Error> {
    for w in last_write_per_topic(writes) {
        match &w.write {
            Write::Put(m) => {
                let p = &m.properties;
                sqlx::query(UPSERT)
                    .bind(m.topic.as_str())
                    .bind(&m.payload[..])
                    .bind(i16::from(m.qos.as_u8()))
                    .bind(encode_user_properties(&p.user_properties))
                    .bind(p.content_type.as_deref())
                    .bind(p.response_topic.as_ref().map(TopicName::as_str))
                    .bind(p.correlation_data.as_deref())
                    .bind(i16::from(p.payload_format as u8))
                    .bind(m.expires_at_ms)
                    .bind(m.last_modified_ms)
                    .bind(m.last_accessed_ms)
                    .bind(&*w.owner.name)
                    .execute(&mut *tx)
                    .await?;
            }
            Write::Delete(topic) => {
                sqlx::query("DELETE FROM retained_messages WHERE topic = ?")
                    .bind(topic.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    Ok(())
}

/// The counts a quota decision starts from. SQLite has one writer, and this runs in its
/// transaction, so nothing can change them before the batch commits.
async fn standing(
    tx: &mut sqlx::SqliteConnection,
    writes: &[OwnedWrite],
) -> Result<quota::Standing, Error> {
    let total: i64 = sqlx::query_scalar("SELECT messages FROM retained_total")
        .fetch_one(&mut *tx)
        .await?;
    let mut standing = quota::Standing {
        total: u64::try_from(total).unwrap_or(0),
        ..Default::default()
    };
    for owner in quota::owners_with_quota(writes) {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT messages FROM retained_owner_counts WHERE owner = ?")
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
        let n = n.map_or(0, |n| u64::try_from(n).unwrap_or(0));
        standing.by_owner.insert(owner.into(), n);
    }
    for w in writes {
        let topic = w.write.topic().as_str();
        let owner: Option<String> =
            sqlx::query_scalar("SELECT owner FROM retained_messages WHERE topic = ?")
                .bind(topic)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(owner) = owner {
            standing.owner_of.insert(topic.to_owned(), owner.into());
        }
    }
    Ok(standing)
}

#[async_trait]
impl RetainedStore for SqliteStore {
    async fn apply(
        &self,
        writes: &[OwnedWrite],
        max_total: Option<u64>,
    ) -> Result<Vec<Admission>, Error> {
        let mut tx = self.writer.begin().await?;
        let verdicts = if quota::applies(writes, max_total) {
            quota::admit(writes, max_total, standing(&mut tx, writes).await?)
        } else {
            vec![Ok(()); writes.len()]
        };
        let admitted = writes
            .iter()
            .zip(&verdicts)
            .filter_map(|(w, v)| v.is_ok().then_some(w));
        apply_all(&mut tx, admitted.collect()).await?;
        tx.commit().await?;
        Ok(verdicts)
    }

    async fn count(&self, owner: Option<&str>) -> Result<u64, Error> {
        let n: Option<i64> = match owner {
            None => {
                sqlx::query_scalar("SELECT messages FROM retained_total")
                    .fetch_optional(&self.reader)
                    .await?
            }
            Some(owner) => {
                sqlx::query_scalar("SELECT messages FROM retained_owner_counts WHERE owner = ?")
                    .bind(owner)
                    .fetch_optional(&self.reader)
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
        // Point lookups on one connection cost microseconds in SQLite; one statement per topic
        // is simpler than building an IN list and just as fast.
        let mut conn = self.reader.acquire().await?;
        let mut found = Vec::with_capacity(topics.len());
        for topic in topics {
            let row: Option<MessageRow> = sqlx::query_as(concat!(
                "SELECT ",
                message_columns!(),
                " FROM retained_messages
                 WHERE topic = ? AND (expires_at_ms IS NULL OR expires_at_ms > ?)"
            ))
            .bind(topic.as_str())
            .bind(now_ms)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = row {
                found.push(RetainedMessage::try_from(row)?);
            }
        }
        Ok(found)
    }

    async fn list(
        &self,
        after: Option<&TopicName>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<RetainedSummary>, Error> {
        // `topic > ''` holds for every topic (none is empty) and, unlike `?1 IS NULL OR ...`,
        // lets SQLite seek the primary key to the page instead of scanning from the start.
        let rows: Vec<SummaryRow> = sqlx::query_as(
            "SELECT topic, length(payload) AS payload_size, qos, last_modified_ms
             FROM retained_messages
             WHERE topic > ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)
             ORDER BY topic LIMIT ?3",
        )
        .bind(after.map_or("", TopicName::as_str))
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(RetainedSummary::try_from).collect()
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
        rows.into_iter().map(RetainedMessage::try_from).collect()
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
        rows.into_iter().map(RetainedSummary::try_from).collect()
    }

    async fn touch(&self, topics: &[TopicName], now_ms: i64) -> Result<(), Error> {
        let mut tx = self.writer.begin().await?;
        for topic in topics {
            sqlx::query(
                "UPDATE retained_messages SET last_accessed_ms = ?2
                 WHERE topic = ?1 AND last_accessed_ms < ?2",
            )
            .bind(topic.as_str())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn purge_expired(&self, now_ms: i64, limit: u32) -> Result<u64, Error> {
        let done = sqlx::query(
            "DELETE FROM retained_messages WHERE topic IN
             (SELECT topic FROM retained_messages WHERE expires_at_ms <= ?1 LIMIT ?2)",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn purge_idle(&self, cutoff_ms: i64, limit: u32) -> Result<u64, Error> {
        let done = sqlx::query(
            "DELETE FROM retained_messages WHERE topic IN
             (SELECT topic FROM retained_messages
              WHERE last_accessed_day <= ?3 AND last_accessed_ms < ?1 LIMIT ?2)",
        )
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .bind(super::row::day_of(cutoff_ms))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn token_key(&self, candidate: &[u8]) -> Result<Vec<u8>, Error> {
        sqlx::query(
            "INSERT INTO retaind_meta (name, value) VALUES ('token_key', ?) ON CONFLICT DO NOTHING",
        )
        .bind(candidate)
        .execute(&self.writer)
        .await?;
        let key: Vec<u8> =
            sqlx::query_scalar("SELECT value FROM retaind_meta WHERE name = 'token_key'")
                .fetch_one(&self.reader)
                .await?;
        Ok(key)
    }

    async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}
