//! What one write batch runs on Postgres: the single upsert statement that applies the batch,
//! takes its write ticket and notifies the other nodes, the column arrays it binds, and the
//! locked counts a quota decision starts from. The connection it runs on is the caller's.

use std::collections::HashMap;

use crate::store::OwnedWrite;
use crate::store::feed;
use crate::store::message::{Condition, Revision};
use crate::store::quota;
use crate::store::row::{Row, encode_user_properties, last_write_per_topic};
use crate::topic::TopicName;

/// Applies the batch's rows (messages and tombstones), numbers them, logs their revisions and
/// tells the other nodes, in one statement; answers with the topics it changed and their new
/// revisions. A topic it left alone either had a write with a later ticket already, or failed
/// its write's condition.
///
/// The ticket is the transaction id (`ticket`, a materialized CTE evaluated once, as the first
/// row is produced): taken before the statement waits for any row lock, so a statement that
/// stalls on a lock still carries the ticket of when it began; and, because the transaction
/// holds it until it ends, a watcher reading below the oldest transaction still running never
/// passes a revision that could commit later (decision 018). Each row's revision and ticket is
/// the ticket times 4096 plus its place in the batch.
///
/// Three inserts, one per kind of write, because a condition must be checked against the row
/// the write replaces, and `ON CONFLICT ... WHERE` sees only table columns:
/// - `matched`: `If-Match`, an update of the row holding that revision, never an insert;
/// - `created`: `If-None-Match: *`, an insert, or a replacement of a tombstone or an expired
///   message;
/// - `upserted`: everything else.
///
/// Each change is logged in `retained_changes`, and the entry of the version it replaces is
/// removed (`old` is read before the writes; an entry a concurrent write leaves behind is
/// found by maintenance, `RetainedStore::compact_changes`).
///
/// The session's shard of the counts (`retained_total`, migration 0004) is locked right after
/// the ticket is taken, before any row (`counted`): the count triggers update it at the end of
/// the statement, and a batch deciding a quota locks every shard before its rows
/// (`standing`). Counts after rows here, rows after counts there, and two nodes deadlocked
/// (`tests/store_postgres_mixed_batches.rs`); counts first everywhere, they wait in turn.
///
/// Notifications are delivered at commit, and only if it commits.
const APPLY: &str = "
WITH ticket AS MATERIALIZED (SELECT pg_current_xact_id()::text::int8 * 4096 AS base),
counted AS MATERIALIZED (
SELECT t.base, (SELECT count(*) FROM (SELECT 1 FROM retained_total
    WHERE shard = retained_count_shard() FOR UPDATE) l) AS locked
FROM ticket t
), src AS MATERIALIZED (
SELECT u.*, t.base + u.ord AS rev
FROM UNNEST($1::text[], $2::bytea[], $3::int2[], $4::text[], $5::text[], $6::text[],
    $7::bytea[], $8::int2[], $9::int8[], $10::int8[], $11::int8[], $12::text[], $13::bool[],
    $14::text[], $15::int8[], $16::bool[])
    WITH ORDINALITY AS u(topic, payload, qos, user_properties, content_type, response_topic,
        correlation_data, payload_format, expires_at_ms, last_modified_ms, last_accessed_ms,
        owner, deleted, writer_client, if_match, if_absent, ord),
    counted t
), old AS MATERIALIZED (
SELECT r.topic, r.revision FROM retained_messages r WHERE r.topic = ANY($1::text[])
), matched AS (
UPDATE retained_messages r SET
    payload = s.payload, qos = s.qos, user_properties = s.user_properties,
    content_type = s.content_type, response_topic = s.response_topic,
    correlation_data = s.correlation_data, payload_format = s.payload_format,
    expires_at_ms = s.expires_at_ms, last_modified_ms = s.last_modified_ms,
    last_accessed_ms = s.last_accessed_ms, owner = s.owner, deleted = s.deleted,
    write_seq = s.rev, revision = s.rev, writer_client = s.writer_client, change_kind = 0
FROM src s
WHERE s.if_match IS NOT NULL AND r.topic = s.topic AND r.revision = s.if_match
    AND NOT r.deleted AND (r.expires_at_ms IS NULL OR r.expires_at_ms > $17)
    AND r.write_seq < s.rev
RETURNING r.topic, r.revision
), upserted AS (
INSERT INTO retained_messages (topic, payload, qos, user_properties, content_type, response_topic,
    correlation_data, payload_format, expires_at_ms, last_modified_ms, last_accessed_ms, owner,
    deleted, writer_client, write_seq, revision, change_kind)
SELECT topic, payload, qos, user_properties, content_type, response_topic, correlation_data,
    payload_format, expires_at_ms, last_modified_ms, last_accessed_ms, owner, deleted,
    writer_client, rev, rev, 0
FROM src WHERE if_match IS NULL AND NOT if_absent
ON CONFLICT (topic) DO UPDATE SET
    payload = EXCLUDED.payload, qos = EXCLUDED.qos, user_properties = EXCLUDED.user_properties,
    content_type = EXCLUDED.content_type, response_topic = EXCLUDED.response_topic,
    correlation_data = EXCLUDED.correlation_data, payload_format = EXCLUDED.payload_format,
    expires_at_ms = EXCLUDED.expires_at_ms, last_modified_ms = EXCLUDED.last_modified_ms,
    last_accessed_ms = EXCLUDED.last_accessed_ms, owner = EXCLUDED.owner,
    deleted = EXCLUDED.deleted, writer_client = EXCLUDED.writer_client,
    write_seq = EXCLUDED.write_seq, revision = EXCLUDED.revision, change_kind = 0
WHERE retained_messages.write_seq < EXCLUDED.write_seq
RETURNING topic, revision
), created AS (
INSERT INTO retained_messages (topic, payload, qos, user_properties, content_type, response_topic,
    correlation_data, payload_format, expires_at_ms, last_modified_ms, last_accessed_ms, owner,
    deleted, writer_client, write_seq, revision, change_kind)
SELECT topic, payload, qos, user_properties, content_type, response_topic, correlation_data,
    payload_format, expires_at_ms, last_modified_ms, last_accessed_ms, owner, deleted,
    writer_client, rev, rev, 0
FROM src WHERE if_match IS NULL AND if_absent
ON CONFLICT (topic) DO UPDATE SET
    payload = EXCLUDED.payload, qos = EXCLUDED.qos, user_properties = EXCLUDED.user_properties,
    content_type = EXCLUDED.content_type, response_topic = EXCLUDED.response_topic,
    correlation_data = EXCLUDED.correlation_data, payload_format = EXCLUDED.payload_format,
    expires_at_ms = EXCLUDED.expires_at_ms, last_modified_ms = EXCLUDED.last_modified_ms,
    last_accessed_ms = EXCLUDED.last_accessed_ms, owner = EXCLUDED.owner,
    deleted = EXCLUDED.deleted, writer_client = EXCLUDED.writer_client,
    write_seq = EXCLUDED.write_seq, revision = EXCLUDED.revision, change_kind = 0
WHERE retained_messages.write_seq < EXCLUDED.write_seq
    AND (retained_messages.deleted OR retained_messages.expires_at_ms <= $17)
RETURNING topic, revision
), applied AS (
SELECT * FROM matched UNION ALL SELECT * FROM upserted UNION ALL SELECT * FROM created
), logged AS (
INSERT INTO retained_changes (revision, topic) SELECT revision, topic FROM applied
), pruned AS (
DELETE FROM retained_changes c USING old o, applied a
WHERE a.topic = o.topic AND c.revision = o.revision
), notified AS (
SELECT count(pg_notify('retaind_changes', notice)) FROM UNNEST($18::text[]) AS notice
)
SELECT topic, revision FROM applied, notified";

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
    writer_client: Vec<Option<&'a str>>,
    if_match: Vec<Option<i64>>,
    if_absent: Vec<bool>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, row: Row<'a>, w: &'a OwnedWrite) {
        self.owner.push(&w.owner.name);
        self.writer_client.push(w.client.as_deref());
        self.if_match.push(match w.condition {
            Some(Condition::Revision(r)) => Some(r),
            _ => None,
        });
        self.if_absent.push(w.condition == Some(Condition::Absent));
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

/// Runs [`APPLY`] for `writes` on `db`; returns the topics it changed, with their revisions.
pub(super) async fn apply_all<'c, E>(
    db: E,
    node: &str,
    writes: Vec<&OwnedWrite>,
    now_ms: i64,
) -> Result<HashMap<String, Revision>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let mut writes = last_write_per_topic(writes);
    if writes.is_empty() {
        return Ok(HashMap::new());
    }
    // Every batch locks its rows in the same (topic) order, so two batches on different nodes
    // that share topics wait for each other instead of deadlocking. That holds per part of the
    // statement (`matched`, `upserted`, `created` run one after another), so a batch carries
    // one kind of write only: the write lane applies a mixed batch kind by kind, each in its
    // own transaction (`write_lane::apply_by_kind`).
    writes.sort_unstable_by(|a, b| a.write.topic().cmp(b.write.topic()));
    let notices = feed::announce(node, writes.iter().map(|w| w.write.topic().as_str()));
    let mut cols = Columns::default();
    for w in writes {
        cols.push(Row::of(&w.write, now_ms), w);
    }
    let applied: Vec<(String, Revision)> = sqlx::query_as(APPLY)
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
        .bind(cols.writer_client)
        .bind(cols.if_match)
        .bind(cols.if_absent)
        .bind(now_ms)
        .bind(notices)
        .fetch_all(db)
        .await?;
    Ok(applied.into_iter().collect())
}

/// The counts a quota decision starts from, read after locking every shard of
/// `retained_total`: a connection adding messages updates one of them, so the lock waits for
/// those in progress and holds off the next ones, on every node, until this batch commits.
pub(super) async fn standing(
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
