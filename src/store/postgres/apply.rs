//! What one write batch runs on Postgres: the upsert statement that applies the batch (one per
//! kind of write), takes its write ticket and notifies the other nodes, the column arrays it
//! binds, and the locked counts a quota decision starts from. The connection it runs on is the
//! caller's.

use std::collections::HashMap;

use crate::store::OwnedWrite;
use crate::store::feed;
use crate::store::message::{Condition, Revision, WriteKind};
use crate::store::quota;
use crate::store::row::{Row, encode_user_properties, last_write_per_topic};
use crate::topic::TopicName;

// The statements, put together from the parts below (`concat!` takes only literals, and a
// macro that expands to one). Parameters: `$1`..`$14` the column arrays (in `rows!`'
// order), `$15` the notices, `$16` the batch's first place (its writes already applied by
// earlier statements of the same transaction), `$17` the time expiry is judged at
// (`IfMatch`, `IfNoneMatch`), `$18` the `If-Match` revisions (`IfMatch`).
//
// The ticket is the transaction id (`ticket`, a materialized CTE evaluated once, as the first
// row is produced): taken before the statement waits for any row lock, so a statement that
// stalls on a lock still carries the ticket of when it began; and, because the transaction
// holds it until it ends, a watcher reading below the oldest transaction still running never
// passes a revision that could commit later (decision 018). Each row's revision and ticket is
// the ticket times 4096 plus its place in the batch.
//
// The session's shard of the counts (`retained_total`, migration 0004) is locked right after
// the ticket is taken, before any row (`counted`): the count triggers update it at the end of
// the statement, and a batch deciding a quota locks every shard before its rows
// (`standing`). Counts after rows here, rows after counts there, and two nodes deadlocked
// (`tests/store_postgres_mixed_batches.rs`); counts first everywhere, they wait in turn.
//
// Each change is logged in `retained_changes`, and the entry of the version it replaces is
// removed: the write keeps the revision it replaced in `replaced_revision`, read from the row
// it locked, so no separate read of the old rows is needed (an entry that a write committed
// after this statement's snapshot leaves behind is found by maintenance,
// `RetainedStore::compact_changes`). Notifications are delivered at commit, and only if it
// commits.
macro_rules! head {
    () => {
        "WITH ticket AS MATERIALIZED (
SELECT pg_current_xact_id()::text::int8 * 4096 + $16::int8 AS base
), counted AS MATERIALIZED (
SELECT t.base, (SELECT count(*) FROM (SELECT 1 FROM retained_total
    WHERE shard = retained_count_shard() FOR UPDATE) l) AS locked
FROM ticket t
), applied AS ("
    };
}

macro_rules! tail {
    () => {
        "), logged AS (
INSERT INTO retained_changes (revision, topic) SELECT revision, topic FROM applied
), pruned AS (
DELETE FROM retained_changes c WHERE c.revision = ANY(ARRAY(
    SELECT replaced_revision FROM applied WHERE replaced_revision IS NOT NULL))
), notified AS (
SELECT count(pg_notify('retaind_changes', notice)) FROM UNNEST($15::text[]) AS notice
)
SELECT topic, revision FROM applied, notified"
    };
}

/// The batch's rows as a table `s`, each with its revision `rev`, from `UNNEST` straight into
/// the write: with one write per statement nothing reads them twice, so no copy of the batch
/// is kept in between. `$extra` adds arrays after the columns, named by `$names`.
macro_rules! rows {
    ($extra:literal, $names:literal) => {
        concat!(
            "(SELECT u.*, t.base + u.ord AS rev
    FROM UNNEST($1::text[], $2::bytea[], $3::int2[], $4::text[], $5::text[], $6::text[],
        $7::bytea[], $8::int2[], $9::int8[], $10::int8[], $11::int8[], $12::text[],
        $13::bool[], $14::text[]",
            $extra,
            ")
    WITH ORDINALITY AS u(topic, payload, qos, user_properties, content_type, response_topic,
        correlation_data, payload_format, expires_at_ms, last_modified_ms, last_accessed_ms,
        owner, deleted, writer_client",
            $names,
            ", ord),
    counted t) s"
        )
    };
}

/// An insert of the batch that replaces a row only where `$also` holds (besides the ticket).
macro_rules! insert {
    ($also:literal) => {
        concat!(
            "
INSERT INTO retained_messages (topic, payload, qos, user_properties, content_type, response_topic,
    correlation_data, payload_format, expires_at_ms, last_modified_ms, last_accessed_ms, owner,
    deleted, writer_client, write_seq, revision, change_kind)
SELECT topic, payload, qos, user_properties, content_type, response_topic, correlation_data,
    payload_format, expires_at_ms, last_modified_ms, last_accessed_ms, owner, deleted,
    writer_client, rev, rev, 0
FROM ",
            rows!("", ""),
            "
ON CONFLICT (topic) DO UPDATE SET
    payload = EXCLUDED.payload, qos = EXCLUDED.qos, user_properties = EXCLUDED.user_properties,
    content_type = EXCLUDED.content_type, response_topic = EXCLUDED.response_topic,
    correlation_data = EXCLUDED.correlation_data, payload_format = EXCLUDED.payload_format,
    expires_at_ms = EXCLUDED.expires_at_ms, last_modified_ms = EXCLUDED.last_modified_ms,
    last_accessed_ms = EXCLUDED.last_accessed_ms, owner = EXCLUDED.owner,
    deleted = EXCLUDED.deleted, writer_client = EXCLUDED.writer_client,
    write_seq = EXCLUDED.write_seq, revision = EXCLUDED.revision, change_kind = 0,
    replaced_revision = retained_messages.revision
WHERE retained_messages.write_seq < EXCLUDED.write_seq",
            $also,
            "
RETURNING topic, revision, replaced_revision
"
        )
    };
}

const UPSERT: &str = concat!(head!(), insert!(""), tail!());

const CREATED: &str = concat!(
    head!(),
    insert!("\n    AND (retained_messages.deleted OR retained_messages.expires_at_ms <= $17)"),
    tail!()
);

const MATCHED: &str = concat!(
    head!(),
    "
UPDATE retained_messages r SET
    payload = s.payload, qos = s.qos, user_properties = s.user_properties,
    content_type = s.content_type, response_topic = s.response_topic,
    correlation_data = s.correlation_data, payload_format = s.payload_format,
    expires_at_ms = s.expires_at_ms, last_modified_ms = s.last_modified_ms,
    last_accessed_ms = s.last_accessed_ms, owner = s.owner, deleted = s.deleted,
    write_seq = s.rev, revision = s.rev, writer_client = s.writer_client, change_kind = 0,
    replaced_revision = r.revision
FROM ",
    rows!(", $18::int8[]", ", if_match"),
    "
WHERE r.topic = s.topic AND r.revision = s.if_match
    AND NOT r.deleted AND (r.expires_at_ms IS NULL OR r.expires_at_ms > $17)
    AND r.write_seq < s.rev
RETURNING r.topic, r.revision, r.replaced_revision
",
    tail!()
);

/// The statement that applies writes of `kind`.
fn statement(kind: WriteKind) -> &'static str {
    match kind {
        WriteKind::Unconditional => UPSERT,
        WriteKind::IfMatch => MATCHED,
        WriteKind::IfNoneMatch => CREATED,
    }
}

/// The batch's columns, one array each, in the order of `rows!`; a tombstone carries its
/// time as its expiry.
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
}

impl<'a> Columns<'a> {
    fn push(&mut self, row: Row<'a>, w: &'a OwnedWrite) {
        self.owner.push(&w.owner.name);
        self.writer_client.push(w.client.as_deref());
        self.if_match.push(match w.condition {
            Some(Condition::Revision(r)) => Some(r),
            _ => None,
        });
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

/// Applies `writes` on `conn`, one statement per kind of write among them (in the order of
/// [`WriteKind`]); returns the topics they changed, with their revisions. A topic left alone either
/// had a write with a later ticket already, or failed its write's condition. Writes of more
/// than one kind must run in a transaction ([`one_kind`]), so that they commit together.
pub(super) async fn apply_all(
    conn: &mut sqlx::PgConnection,
    node: &str,
    writes: Vec<&OwnedWrite>,
    now_ms: i64,
) -> Result<HashMap<String, Revision>, sqlx::Error> {
    let mut writes = last_write_per_topic(writes);
    // Every statement locks its rows in the same (topic) order, so two batches on different
    // nodes that share topics wait for each other instead of deadlocking. Across the kinds in
    // one transaction that no longer holds, so the write lane gives the database one kind per
    // transaction (`write_lane::apply_by_kind`).
    writes.sort_unstable_by(|a, b| (a.kind(), a.write.topic()).cmp(&(b.kind(), b.write.topic())));
    let mut applied = HashMap::with_capacity(writes.len());
    let mut first = 0;
    for part in writes.chunk_by(|a, b| a.kind() == b.kind()) {
        applied.extend(apply_kind(&mut *conn, node, part, first, now_ms).await?);
        first += part.len();
    }
    Ok(applied)
}

/// Whether `writes` are all of one kind, and so are applied by one statement.
pub(super) fn one_kind(writes: &[OwnedWrite]) -> bool {
    writes.windows(2).all(|w| w[0].kind() == w[1].kind())
}

/// Runs the [`statement`] of one kind of write for `writes` (one per topic, in topic order),
/// the batch's writes from place `first` on.
async fn apply_kind(
    conn: &mut sqlx::PgConnection,
    node: &str,
    writes: &[&OwnedWrite],
    first: usize,
    now_ms: i64,
) -> Result<Vec<(String, Revision)>, sqlx::Error> {
    let Some(kind) = writes.first().map(|w| w.kind()) else {
        return Ok(Vec::new());
    };
    let notices = feed::announce(node, writes.iter().map(|w| w.write.topic().as_str()));
    let mut cols = Columns::default();
    for w in writes {
        cols.push(Row::of(&w.write, now_ms), w);
    }
    let query = sqlx::query_as(statement(kind))
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
        .bind(notices)
        .bind(i64::try_from(first).unwrap_or(i64::MAX));
    let query = match kind {
        WriteKind::Unconditional => query,
        WriteKind::IfNoneMatch => query.bind(now_ms),
        WriteKind::IfMatch => query.bind(now_ms).bind(cols.if_match),
    };
    query.fetch_all(conn).await
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
