//! What one write batch runs on SQLite, in the writer's transaction (`sqlite_writer`): the
//! counts a quota decision starts from, then each write's row under the batch's write ticket.
//!
//! A statement per row: the whole transaction runs on the writer's thread, so a row costs
//! SQLite's own work and nothing more. (Over sqlx, each statement crossed threads twice, and
//! rows went in multi-row statements of up to 64 to save the crossings.)

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::backend::TICKET_REVISIONS;
use super::row::{Row, encode_user_properties, last_write_per_topic};
use super::sqlite_books::{self, Books};
use super::{Condition, OwnedWrite, Revision, quota};
use crate::topic::TopicName;

/// A message or a tombstone, replacing only a row with an earlier write ticket (see
/// `RetainedStore::apply`), and, for `If-None-Match: *` (`?17` true), only a tombstone or an
/// expired message (`?18` is now). The ticket (`?14`) is both the row's write ticket and its
/// revision. `?16` (the `If-Match` revision) is for [`UPDATE_MATCHED`].
const UPSERT: &str = "
INSERT INTO retained_messages (topic, payload, qos, user_properties, content_type,
    response_topic, correlation_data, payload_format, expires_at_ms, last_modified_ms,
    last_accessed_ms, owner, deleted, write_seq, revision, writer_client, change_kind)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, ?15, 0)
ON CONFLICT (topic) DO UPDATE SET
    payload = excluded.payload, qos = excluded.qos, user_properties = excluded.user_properties,
    content_type = excluded.content_type, response_topic = excluded.response_topic,
    correlation_data = excluded.correlation_data, payload_format = excluded.payload_format,
    expires_at_ms = excluded.expires_at_ms, last_modified_ms = excluded.last_modified_ms,
    last_accessed_ms = excluded.last_accessed_ms, owner = excluded.owner,
    deleted = excluded.deleted, write_seq = excluded.write_seq, revision = excluded.revision,
    writer_client = excluded.writer_client, change_kind = 0
WHERE retained_messages.write_seq < excluded.write_seq
    AND (NOT ?17 OR retained_messages.deleted OR retained_messages.expires_at_ms <= ?18)";

/// `If-Match`: replaces the message holding revision `?16`, unexpired at `?18`; never inserts.
/// Binds as [`UPSERT`] does (`?17` unused).
const UPDATE_MATCHED: &str = "
UPDATE retained_messages SET payload = ?2, qos = ?3, user_properties = ?4, content_type = ?5,
    response_topic = ?6, correlation_data = ?7, payload_format = ?8, expires_at_ms = ?9,
    last_modified_ms = ?10, last_accessed_ms = ?11, owner = ?12, deleted = ?13, write_seq = ?14,
    revision = ?14, writer_client = ?15, change_kind = 0
WHERE topic = ?1 AND revision = ?16 AND NOT deleted
    AND (expires_at_ms IS NULL OR expires_at_ms > ?18) AND write_seq < ?14";

/// Takes the next write ticket; a batch's revisions are the ticket times [`TICKET_REVISIONS`]
/// plus each row's place in it (migration 0005).
pub(super) fn next_ticket(tx: &Connection) -> rusqlite::Result<i64> {
    tx.prepare_cached(
        "UPDATE retained_write_seq SET value = value + 1 WHERE only_row = 1 RETURNING value",
    )?
    .query_row([], |r| r.get(0))
}

/// The counts a quota decision starts from. SQLite has one writer, and this runs in its
/// transaction, so nothing can change them before the batch commits.
pub(super) fn standing(
    tx: &Connection,
    writes: &[OwnedWrite],
) -> rusqlite::Result<quota::Standing> {
    let total: i64 = tx
        .prepare_cached("SELECT messages FROM retained_total")?
        .query_row([], |r| r.get(0))?;
    let mut standing = quota::Standing {
        total: u64::try_from(total).unwrap_or(0),
        ..Default::default()
    };
    let mut count =
        tx.prepare_cached("SELECT messages FROM retained_owner_counts WHERE owner = ?")?;
    for owner in quota::owners_with_quota(writes) {
        let n: Option<i64> = count.query_row([owner], |r| r.get(0)).optional()?;
        let n = n.map_or(0, |n| u64::try_from(n).unwrap_or(0));
        standing.by_owner.insert(owner.into(), n);
    }
    let mut owner_of =
        tx.prepare_cached("SELECT owner FROM retained_messages WHERE topic = ? AND NOT deleted")?;
    for w in writes {
        let topic = w.write.topic().as_str();
        let owner: Option<String> = owner_of.query_row([topic], |r| r.get(0)).optional()?;
        if let Some(owner) = owner {
            standing.owner_of.insert(topic.to_owned(), owner.into());
        }
    }
    Ok(standing)
}

/// Applies `writes` (reduced to the last per topic) in the transaction `tx`, under a new write
/// ticket, and keeps the books (counts, change log: `sqlite_books`). Returns the topics it
/// changed, with their revisions.
pub(super) fn apply_all(
    tx: &Connection,
    writes: Vec<&OwnedWrite>,
    now_ms: i64,
) -> rusqlite::Result<HashMap<String, Revision>> {
    let ticket = next_ticket(tx)?;
    let mut applied = HashMap::new();
    let mut books = Books::default();
    for (ord, w) in (1..).zip(last_write_per_topic(writes)) {
        let revision = ticket * TICKET_REVISIONS + ord;
        let (statement, if_match) = match w.condition {
            Some(Condition::Revision(r)) => (UPDATE_MATCHED, Some(r)),
            None | Some(Condition::Absent) => (UPSERT, None),
        };
        let absent = w.condition == Some(Condition::Absent);
        let v = Values::of(w, now_ms);
        let before = sqlite_books::prior(tx, v.topic)?;
        let changed = tx.prepare_cached(statement)?.execute(params![
            v.topic,
            v.payload,
            v.qos,
            v.user_properties,
            v.content_type,
            v.response_topic,
            v.correlation_data,
            v.payload_format,
            v.expires_at_ms,
            v.last_modified_ms,
            v.last_accessed_ms,
            v.owner,
            v.deleted,
            revision,
            v.client,
            if_match,
            absent,
            now_ms,
        ])?;
        if changed > 0 {
            books.changed(tx, v.topic, before.as_ref(), v.owner, !v.deleted, revision)?;
            applied.insert(v.topic.to_owned(), revision);
        }
    }
    books.settle(tx)?;
    Ok(applied)
}

/// One write's row, as its columns are bound.
struct Values<'a> {
    topic: &'a str,
    payload: &'a [u8],
    qos: i16,
    user_properties: Option<String>,
    content_type: Option<&'a str>,
    response_topic: Option<&'a str>,
    correlation_data: Option<&'a [u8]>,
    payload_format: i16,
    expires_at_ms: Option<i64>,
    last_modified_ms: i64,
    last_accessed_ms: i64,
    owner: &'a str,
    deleted: bool,
    client: Option<&'a str>,
}

impl<'a> Values<'a> {
    fn of(w: &'a OwnedWrite, now_ms: i64) -> Self {
        let owner = &*w.owner.name;
        let client = w.client.as_deref();
        match Row::of(&w.write, now_ms) {
            Row::Message(m) => {
                let p = &m.properties;
                Self {
                    topic: m.topic.as_str(),
                    payload: &m.payload,
                    qos: i16::from(m.qos.as_u8()),
                    user_properties: encode_user_properties(&p.user_properties),
                    content_type: p.content_type.as_deref(),
                    response_topic: p.response_topic.as_ref().map(TopicName::as_str),
                    correlation_data: p.correlation_data.as_deref(),
                    payload_format: i16::from(p.payload_format as u8),
                    expires_at_ms: m.expires_at_ms,
                    last_modified_ms: m.last_modified_ms,
                    last_accessed_ms: m.last_accessed_ms,
                    owner,
                    deleted: false,
                    client,
                }
            }
            Row::Tombstone { topic, at_ms } => Self {
                topic: topic.as_str(),
                payload: &[],
                qos: 0,
                user_properties: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                payload_format: 0,
                expires_at_ms: Some(at_ms),
                last_modified_ms: at_ms,
                last_accessed_ms: at_ms,
                owner,
                deleted: true,
                client,
            },
        }
    }
}
