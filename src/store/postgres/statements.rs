//! The statements a write batch runs, one per kind of write, each built for the batch's
//! [`Shape`]: a column whose value is the same in every row of the batch is bound once, as one
//! value, and the others as arrays that `UNNEST` turns into rows.
//!
//! Why a shape: Postgres reads `UNNEST` of several arrays as one function per array: it decodes
//! each array and copies its elements into a tuple store of its own before it joins them into
//! rows. Most columns of a batch hold one value throughout (the QoS, no content type, no expiry,
//! one owner, nothing deleted), and 16 clients storing 1,000,000 new topics cost Postgres
//! 10.2–10.6 µs of CPU per message with every column an array, 8.6–8.8 µs bound by shape, and
//! retaind 4.2 µs against 3.9 µs (decision 020). A batch's shape is one of at most 2^14 (bar the
//! topic, every column can be one value); sqlx keeps a bounded number of prepared statements per
//! connection, and a workload uses few of them.
//!
//! Parameters: `$1`..`$14` the columns of [`COLUMNS`] in order (array or one value), `$15` the
//! notices, `$16` the batch's first place (its writes already applied by earlier statements of
//! the same transaction), `$17` the time expiry is judged at (`IfMatch`, `IfNoneMatch`), `$18`
//! the `If-Match` revisions (`IfMatch`; array or one value as well).
//!
//! The ticket is the transaction id (`ticket`, a materialized CTE evaluated once, as the first
//! row is produced): taken before the statement waits for any row lock, so a statement that
//! stalls on a lock still carries the ticket of when it began; and, because the transaction
//! holds it until it ends, a watcher reading below the oldest transaction still running never
//! passes a revision that could commit later (decision 018). Each row's revision and ticket is
//! the ticket times 4096 plus its place in the batch.
//!
//! The session's shard of the counts (`retained_total`, migration 0004) is locked right after
//! the ticket is taken, before any row (`counted`): the count triggers update it at the end of
//! the statement, and a batch deciding a quota locks every shard before its rows
//! (`standing`). Counts after rows here, rows after counts there, and two nodes deadlocked
//! (`tests/store_postgres_mixed_batches.rs`); counts first everywhere, they wait in turn.
//!
//! Each change is logged in `retained_changes`, and the entry of the version it replaces is
//! removed: the write keeps the revision it replaced in `replaced_revision`, read from the row
//! it locked, so no separate read of the old rows is needed (an entry that a write committed
//! after this statement's snapshot leaves behind is found by maintenance,
//! `RetainedStore::compact_changes`). Notifications are delivered at commit, and only if it
//! commits.

use crate::store::message::WriteKind;

/// A column of the batch: its name in `retained_messages` and the type it is bound as.
pub(super) struct Column {
    pub name: &'static str,
    pub ty: &'static str,
}

const fn column(name: &'static str, ty: &'static str) -> Column {
    Column { name, ty }
}

/// The batch's columns, bound as `$1`..`$14` in this order.
pub(super) const COLUMNS: [Column; 14] = [
    column("topic", "text"),
    column("payload", "bytea"),
    column("qos", "int2"),
    column("user_properties", "text"),
    column("content_type", "text"),
    column("response_topic", "text"),
    column("correlation_data", "bytea"),
    column("payload_format", "int2"),
    column("expires_at_ms", "int8"),
    column("last_modified_ms", "int8"),
    column("last_accessed_ms", "int8"),
    column("owner", "text"),
    column("deleted", "bool"),
    column("writer_client", "text"),
];

/// The `If-Match` revisions of an `IfMatch` batch, bound as `$18`.
const IF_MATCH_COLUMN: Column = column("if_match", "int8");
const IF_MATCH_PARAM: usize = 18;

/// Which of a batch's columns hold one value in every row, and so are bound once. The topic
/// never is: its array is what gives the batch its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Shape(u16);

impl Shape {
    /// The index that stands for the `If-Match` revisions, after the columns'.
    pub const IF_MATCH: usize = COLUMNS.len();

    /// Column `index` of [`COLUMNS`] (or the `If-Match` revisions, [`Self::IF_MATCH`]) is one
    /// value if `one`. The topic never is.
    pub fn with(self, index: usize, one: bool) -> Self {
        if one && (1..=Self::IF_MATCH).contains(&index) {
            Self(self.0 | 1 << index)
        } else {
            self
        }
    }

    pub fn is_one(self, index: usize) -> bool {
        self.0 & 1 << index != 0
    }
}

/// Whether every element of `values` is the same (an empty or one-element batch's are).
pub(super) fn same<T: PartialEq>(values: &[T]) -> bool {
    values.windows(2).all(|w| w[0] == w[1])
}

const HEAD: &str = "WITH ticket AS MATERIALIZED (
SELECT pg_current_xact_id()::text::int8 * 4096 + $16::int8 AS base
), counted AS MATERIALIZED (
SELECT t.base, (SELECT count(*) FROM (SELECT 1 FROM retained_total
    WHERE shard = retained_count_shard() FOR UPDATE) l) AS locked
FROM ticket t
), applied AS (";

const TAIL: &str = "), logged AS (
INSERT INTO retained_changes (revision, topic) SELECT revision, topic FROM applied
), pruned AS (
DELETE FROM retained_changes c WHERE c.revision = ANY(ARRAY(
    SELECT replaced_revision FROM applied WHERE replaced_revision IS NOT NULL))
), notified AS (
SELECT count(pg_notify('retaind_changes', notice)) FROM UNNEST($15::text[]) AS notice
)
SELECT topic, revision FROM applied, notified";

const INSERT: &str = "
INSERT INTO retained_messages (topic, payload, qos, user_properties, content_type, response_topic,
    correlation_data, payload_format, expires_at_ms, last_modified_ms, last_accessed_ms, owner,
    deleted, writer_client, write_seq, revision, change_kind)
SELECT topic, payload, qos, user_properties, content_type, response_topic, correlation_data,
    payload_format, expires_at_ms, last_modified_ms, last_accessed_ms, owner, deleted,
    writer_client, rev, rev, 0
FROM ";

const ON_CONFLICT: &str = "
ON CONFLICT (topic) DO UPDATE SET
    payload = EXCLUDED.payload, qos = EXCLUDED.qos, user_properties = EXCLUDED.user_properties,
    content_type = EXCLUDED.content_type, response_topic = EXCLUDED.response_topic,
    correlation_data = EXCLUDED.correlation_data, payload_format = EXCLUDED.payload_format,
    expires_at_ms = EXCLUDED.expires_at_ms, last_modified_ms = EXCLUDED.last_modified_ms,
    last_accessed_ms = EXCLUDED.last_accessed_ms, owner = EXCLUDED.owner,
    deleted = EXCLUDED.deleted, writer_client = EXCLUDED.writer_client,
    write_seq = EXCLUDED.write_seq, revision = EXCLUDED.revision, change_kind = 0,
    replaced_revision = retained_messages.revision
WHERE retained_messages.write_seq < EXCLUDED.write_seq";

/// `IfNoneMatch` replaces only a tombstone or an expired message.
const ONLY_GONE: &str =
    "\n    AND (retained_messages.deleted OR retained_messages.expires_at_ms <= $17)";

const INSERT_RETURNING: &str = "
RETURNING topic, revision, replaced_revision
";

const UPDATE: &str = "
UPDATE retained_messages r SET
    payload = s.payload, qos = s.qos, user_properties = s.user_properties,
    content_type = s.content_type, response_topic = s.response_topic,
    correlation_data = s.correlation_data, payload_format = s.payload_format,
    expires_at_ms = s.expires_at_ms, last_modified_ms = s.last_modified_ms,
    last_accessed_ms = s.last_accessed_ms, owner = s.owner, deleted = s.deleted,
    write_seq = s.rev, revision = s.rev, writer_client = s.writer_client, change_kind = 0,
    replaced_revision = r.revision
FROM ";

const UPDATE_WHERE: &str = "
WHERE r.topic = s.topic AND r.revision = s.if_match
    AND NOT r.deleted AND (r.expires_at_ms IS NULL OR r.expires_at_ms > $17)
    AND r.write_seq < s.rev
RETURNING r.topic, r.revision, r.replaced_revision
";

/// The statement that applies writes of `kind` whose columns have `shape`.
pub(super) fn statement(kind: WriteKind, shape: Shape) -> String {
    let mut sql = String::with_capacity(3072);
    sql.push_str(HEAD);
    match kind {
        WriteKind::Unconditional | WriteKind::IfNoneMatch => {
            sql.push_str(INSERT);
            rows(&mut sql, shape, false);
            sql.push_str(ON_CONFLICT);
            if kind == WriteKind::IfNoneMatch {
                sql.push_str(ONLY_GONE);
            }
            sql.push_str(INSERT_RETURNING);
        }
        WriteKind::IfMatch => {
            sql.push_str(UPDATE);
            rows(&mut sql, shape, true);
            sql.push_str(UPDATE_WHERE);
        }
    }
    sql.push_str(TAIL);
    sql
}

/// The batch's rows as a table `s`, each with its revision `rev`: the arrays from `UNNEST`
/// straight into the write (with one write per statement nothing reads them twice, so no copy
/// of the batch is kept in between), and beside them the columns bound as one value.
fn rows(sql: &mut String, shape: Shape, if_match: bool) {
    let params = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| (i + 1, c, shape.is_one(i)));
    let extra = if_match.then_some((
        IF_MATCH_PARAM,
        &IF_MATCH_COLUMN,
        shape.is_one(Shape::IF_MATCH),
    ));
    let params: Vec<_> = params.chain(extra).collect();
    sql.push_str("(SELECT u.*, ");
    for (n, c, _) in params.iter().filter(|(_, _, one)| *one) {
        sql.push_str(&format!("${n}::{} AS {}, ", c.ty, c.name));
    }
    sql.push_str("t.base + u.ord AS rev\n    FROM UNNEST(");
    let arrays: Vec<_> = params.iter().filter(|(_, _, one)| !*one).collect();
    let bound: Vec<String> = arrays
        .iter()
        .map(|(n, c, _)| format!("${n}::{}[]", c.ty))
        .collect();
    sql.push_str(&bound.join(", "));
    sql.push_str(")\n    WITH ORDINALITY AS u(");
    for (_, c, _) in &arrays {
        sql.push_str(c.name);
        sql.push_str(", ");
    }
    sql.push_str("ord),\n    counted t) s");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_one() -> Shape {
        (0..=Shape::IF_MATCH).fold(Shape::default(), |s, i| s.with(i, true))
    }

    #[test]
    fn a_column_of_one_value_is_bound_once_and_the_others_as_arrays() {
        let shape = Shape::default().with(2, true).with(12, true);
        let sql = statement(WriteKind::Unconditional, shape);
        assert!(
            sql.contains("$3::int2 AS qos, $13::bool AS deleted, t.base"),
            "{sql}"
        );
        assert!(
            sql.contains("UNNEST($1::text[], $2::bytea[], $4::text[]"),
            "{sql}"
        );
        assert!(
            !sql.contains("$3::int2[]") && !sql.contains("$13::bool[]"),
            "{sql}"
        );
        assert!(
            sql.contains("AS u(topic, payload, user_properties, content_type"),
            "{sql}"
        );
        assert!(!sql.contains("u(topic, payload, qos"), "{sql}");
    }

    #[test]
    fn the_topic_is_always_an_array() {
        let sql = statement(WriteKind::IfNoneMatch, all_one());
        assert!(sql.contains("UNNEST($1::text[])"), "{sql}");
        assert!(sql.contains("AS u(topic, ord)"), "{sql}");
        assert!(sql.contains("$14::text AS writer_client"), "{sql}");
        assert!(sql.contains(ONLY_GONE), "{sql}");
    }

    #[test]
    fn if_match_revisions_are_bound_by_shape_too() {
        let arrays = statement(WriteKind::IfMatch, Shape::default());
        assert!(arrays.contains("$14::text[], $18::int8[])"), "{arrays}");
        assert!(arrays.contains("writer_client, if_match, ord)"), "{arrays}");
        let one = statement(
            WriteKind::IfMatch,
            Shape::default().with(Shape::IF_MATCH, true),
        );
        assert!(one.contains("$18::int8 AS if_match, t.base"), "{one}");
        assert!(!one.contains("$18::int8[]"), "{one}");
        // Only an `IfMatch` statement binds them at all.
        assert!(!statement(WriteKind::Unconditional, all_one()).contains("$18"));
    }

    #[test]
    fn same_is_every_element_equal() {
        assert!(same::<i16>(&[]));
        assert!(same(&[Some(1)]));
        assert!(same(&[None::<i64>, None, None]));
        assert!(!same(&[None, None, Some(3)]));
        assert!(!same(&["a", "b"]));
    }
}
