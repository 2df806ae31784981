//! How one write batch runs on Postgres: its columns gathered, bound to the statement of its
//! kind and shape (`statements`: the upsert that applies the batch, takes its write ticket and
//! notifies the other nodes), and run; and the locked counts a quota decision starts from. The
//! connection it runs on is the caller's.

use std::collections::HashMap;

use crate::store::OwnedWrite;
use crate::store::feed;
use crate::store::message::{Condition, Revision, WriteKind};
use crate::store::quota;
use crate::store::row::{Row, encode_user_properties, last_write_per_topic};
use crate::topic::TopicName;

use super::statements::{Shape, same, statement};

/// The batch's columns, one array each, in the order of
/// [`COLUMNS`](super::statements::COLUMNS); a tombstone carries its
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

/// The statement for `$kind` writes of `$cols`' [`Shape`], with the columns bound: column
/// `$i` of [`COLUMNS`](super::statements::COLUMNS) is the field `$field`, bound as `$i+1`, its
/// one value if every row holds the same, else the array. Every column is named once, here.
macro_rules! shaped {
    ($kind:expr, $cols:ident, $($i:literal $field:ident),+) => {{
        let shape = Shape::default()
            $(.with($i, same(&$cols.$field)))+
            .with(Shape::IF_MATCH, $kind == WriteKind::IfMatch && same(&$cols.if_match));
        // Put together from constants and numbers only: nothing a client sent is in it.
        let query = sqlx::query_as(sqlx::AssertSqlSafe(statement($kind, shape)));
        $(
            let query = if shape.is_one($i) {
                query.bind($cols.$field.into_iter().next())
            } else {
                query.bind($cols.$field)
            };
        )+
        (shape, query)
    }};
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
    let (shape, query) = shaped!(
        kind,
        cols,
        0 topic,
        1 payload,
        2 qos,
        3 user_properties,
        4 content_type,
        5 response_topic,
        6 correlation_data,
        7 payload_format,
        8 expires_at_ms,
        9 last_modified_ms,
        10 last_accessed_ms,
        11 owner,
        12 deleted,
        13 writer_client
    );
    let query = query
        .bind(notices)
        .bind(i64::try_from(first).unwrap_or(i64::MAX));
    let query = match kind {
        WriteKind::Unconditional => query,
        WriteKind::IfNoneMatch => query.bind(now_ms),
        WriteKind::IfMatch if shape.is_one(Shape::IF_MATCH) => {
            query.bind(now_ms).bind(cols.if_match.into_iter().next())
        }
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
