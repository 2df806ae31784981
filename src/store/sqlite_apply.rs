//! What one write batch runs on SQLite: each write's row, under the batch's write ticket, in
//! the writer's transaction.
//!
//! Unconditional writes, nearly all of them, go in multi-row statements: sqlx runs each
//! statement on the connection's worker thread, and a statement per row cost two thread
//! switches per row, which bounded a fleet storing retained messages to about 15k rows/s on
//! two cores (issue 18, docs/benchmarks.md). A batch of up to 512 rows now takes at most 13
//! statements, in chunks of [`CHUNKS`] rows, whose texts are prepared once each. Conditional
//! writes keep a statement each: their condition decides per row.

use std::collections::HashMap;
use std::sync::OnceLock;

use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Row as _, Sqlite};

use super::row::{Row, encode_user_properties, last_write_per_topic};
use super::{Condition, OwnedWrite, Revision};
use crate::topic::TopicName;

/// The columns every statement here writes, in the order each row binds them: the first 13,
/// then the write ticket (`write_seq` and `revision` alike) and the writer's client.
const COLUMNS: &str = "topic, payload, qos, user_properties, content_type, response_topic, \
     correlation_data, payload_format, expires_at_ms, last_modified_ms, last_accessed_ms, owner, \
     deleted, write_seq, revision, writer_client, change_kind";
/// Values bound per row with numbered placeholders (the ticket is bound once, named twice)...
const NUMBERED: usize = 15;
/// ...and with anonymous ones (the ticket bound twice).
const ANONYMOUS: usize = 16;

/// On a conflict, what a newer write replaces (every column it carries).
const REPLACE: &str = "
    payload = excluded.payload, qos = excluded.qos, user_properties = excluded.user_properties,
    content_type = excluded.content_type, response_topic = excluded.response_topic,
    correlation_data = excluded.correlation_data, payload_format = excluded.payload_format,
    expires_at_ms = excluded.expires_at_ms, last_modified_ms = excluded.last_modified_ms,
    last_accessed_ms = excluded.last_accessed_ms, owner = excluded.owner,
    deleted = excluded.deleted, write_seq = excluded.write_seq, revision = excluded.revision,
    writer_client = excluded.writer_client, change_kind = 0";

/// A message or a tombstone, replacing only a row with an earlier write ticket (see
/// `RetainedStore::apply`), and, for `If-None-Match: *` (`?17` true), only a tombstone or an
/// expired message (`?18` is now). `?16` (the `If-Match` revision) is for `UPDATE_MATCHED`.
fn upsert_one() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "INSERT INTO retained_messages ({COLUMNS}) VALUES {} ON CONFLICT (topic) DO UPDATE SET \
             {REPLACE} WHERE retained_messages.write_seq < excluded.write_seq \
             AND (NOT ?17 OR retained_messages.deleted OR retained_messages.expires_at_ms <= ?18)",
            values(Some(0))
        )
    })
}

/// `If-Match`: replaces the message holding revision `?16`, unexpired at `?18`; never inserts.
/// Binds as `upsert_one` does (`?17` unused).
const UPDATE_MATCHED: &str = "
UPDATE retained_messages SET payload = ?2, qos = ?3, user_properties = ?4, content_type = ?5,
    response_topic = ?6, correlation_data = ?7, payload_format = ?8, expires_at_ms = ?9,
    last_modified_ms = ?10, last_accessed_ms = ?11, owner = ?12, deleted = ?13, write_seq = ?14,
    revision = ?14, writer_client = ?15, change_kind = 0
WHERE topic = ?1 AND revision = ?16 AND NOT deleted
    AND (expires_at_ms IS NULL OR expires_at_ms > ?18) AND write_seq < ?14";

/// Rows per multi-row statement, largest first: any number of rows is a sum of these with at
/// most one chunk of each size below the largest.
const CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// Unconditional writes of `rows` distinct topics, each replacing only a row with an earlier
/// write ticket; answers with the topics it wrote.
fn upsert_many(rows: usize) -> &'static str {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        CHUNKS
            .iter()
            .map(|&n| {
                let values: Vec<String> = (0..n).map(|_| values(None)).collect();
                format!(
                    "INSERT INTO retained_messages ({COLUMNS}) VALUES {} ON CONFLICT (topic) DO \
                     UPDATE SET {REPLACE} WHERE retained_messages.write_seq < excluded.write_seq \
                     RETURNING topic",
                    values.join(", ")
                )
            })
            .collect()
    });
    let i = CHUNKS
        .iter()
        .position(|&n| n == rows)
        .expect("a chunk size");
    &texts[i]
}

/// One row's placeholders: numbered in a single-row statement (`?14`, the ticket, twice),
/// anonymous in a multi-row one. sqlx looks up every parameter's name when it binds, and SQLite
/// finds a numbered name by walking the statement's list of them, so numbered placeholders cost
/// the square of their count: 40% of the writer's time with 960 of them in a statement.
fn values(row: Option<usize>) -> String {
    match row {
        Some(row) => {
            let p = |i: usize| format!("?{}", row * NUMBERED + i);
            let first: Vec<String> = (1..=13).map(p).collect();
            format!("({}, {}, {}, {}, 0)", first.join(", "), p(14), p(14), p(15))
        }
        None => format!("({}0)", "?, ".repeat(ANONYMOUS)),
    }
}

/// Binds one row's values, for [`values`]'s numbered placeholders or its anonymous ones.
fn bind_row<'q>(
    query: Query<'q, Sqlite, SqliteArguments>,
    w: &'q OwnedWrite,
    revision: Revision,
    now_ms: i64,
    numbered: bool,
) -> Query<'q, Sqlite, SqliteArguments> {
    let query = match Row::of(&w.write, now_ms) {
        Row::Message(m) => {
            let p = &m.properties;
            query
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
                .bind(false)
        }
        Row::Tombstone { topic, at_ms } => query
            .bind(topic.as_str())
            .bind(&[][..])
            .bind(0i16)
            .bind(None::<String>)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(None::<&[u8]>)
            .bind(0i16)
            .bind(Some(at_ms))
            .bind(at_ms)
            .bind(at_ms)
            .bind(&*w.owner.name)
            .bind(true),
    };
    let query = query.bind(revision);
    let query = if numbered {
        query
    } else {
        query.bind(revision)
    };
    query.bind(w.client.as_deref())
}

/// Applies `writes` (reduced to the last per topic) in the transaction `tx`, under a new write
/// ticket; triggers log each change (migration 0005). Returns the topics it changed, with
/// their revisions.
pub(super) async fn apply_all(
    tx: &mut sqlx::SqliteConnection,
    writes: Vec<&OwnedWrite>,
    now_ms: i64,
) -> Result<HashMap<String, Revision>, sqlx::Error> {
    let ticket: i64 = sqlx::query_scalar(
        "UPDATE retained_write_seq SET value = value + 1 WHERE only_row = 1 RETURNING value",
    )
    .fetch_one(&mut *tx)
    .await?;
    let mut applied = HashMap::new();
    let mut plain = Vec::new();
    for (ord, w) in (1..).zip(last_write_per_topic(writes)) {
        let revision = ticket * 4096 + ord;
        let statement = match w.condition {
            None => {
                plain.push((w, revision));
                continue;
            }
            Some(Condition::Revision(_)) => UPDATE_MATCHED,
            Some(Condition::Absent) => upsert_one(),
        };
        let if_match = match w.condition {
            Some(Condition::Revision(r)) => Some(r),
            _ => None,
        };
        let done = bind_row(sqlx::query(statement), w, revision, now_ms, true)
            .bind(if_match)
            .bind(w.condition == Some(Condition::Absent))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() > 0 {
            applied.insert(w.write.topic().as_str().to_owned(), revision);
        }
    }
    let mut rest = &plain[..];
    while !rest.is_empty() {
        let size = CHUNKS
            .into_iter()
            .find(|&n| n <= rest.len())
            .expect("1 is a chunk size");
        let (chunk, tail) = rest.split_at(size);
        let query = chunk
            .iter()
            .fold(sqlx::query(upsert_many(size)), |q, (w, revision)| {
                bind_row(q, w, *revision, now_ms, false)
            });
        for row in query.fetch_all(&mut *tx).await? {
            let topic: String = row.try_get(0)?;
            if let Some((_, revision)) = chunk
                .iter()
                .find(|(w, _)| w.write.topic().as_str() == topic)
            {
                applied.insert(topic, *revision);
            }
        }
        rest = tail;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_statement_has_a_row_of_placeholders_per_write() {
        for n in CHUNKS {
            let text = upsert_many(n);
            assert_eq!(text.matches('?').count(), n * ANONYMOUS, "{n} rows");
            assert_eq!(text.matches("0)").count(), n, "{n} rows");
            assert!(
                !text.contains("?1"),
                "{n} rows: anonymous placeholders only"
            );
        }
        assert!(upsert_one().contains("?15, 0)") && upsert_one().contains("?17"));
    }
}
