//! The row shape shared by both backends, and its conversion to and from the domain types.

use bytes::Bytes;

use super::{
    ChangeKind, ChangePage, MessageProperties, PayloadFormat, Qos, RetainedChange, RetainedMessage,
    RetainedPublish, RetainedSummary, Revision, UserProperty, Writer,
};
use crate::topic::{TopicName, check_text};

/// Columns selected for a full message, as a literal so queries built with `concat!` stay
/// `&'static str` (sqlx accepts only those without an explicit safety assertion).
macro_rules! message_columns {
    () => {
        concat!(
            $crate::store::row::publish_columns!(),
            ", last_modified_ms, last_accessed_ms, revision, owner, writer_client"
        )
    };
}
pub(super) use message_columns;

/// The first columns of `message_columns!`: what a subscriber receives of a message
/// ([`super::RetainedPublish`]).
macro_rules! publish_columns {
    () => {
        "topic, payload, qos, user_properties, content_type, response_topic, correlation_data, \
         payload_format, expires_at_ms"
    };
}
pub(super) use publish_columns;

/// What a write leaves in its topic's row: a message, or a tombstone that remembers the delete
/// (and its write ticket) until the expiry purge removes it at `at_ms` plus the purge's delay.
#[derive(Debug, Clone, Copy)]
pub(super) enum Row<'a> {
    Message(&'a RetainedMessage),
    Tombstone { topic: &'a TopicName, at_ms: i64 },
}

impl<'a> Row<'a> {
    pub(super) fn of(write: &'a super::Write, now_ms: i64) -> Self {
        match write {
            super::Write::Put(m) => Self::Message(m),
            super::Write::Delete(topic) => Self::Tombstone {
                topic,
                at_ms: now_ms,
            },
        }
    }
}

/// Where a range scan starts, resolved before the query: the later of `from` (inclusive) and
/// `after` (exclusive). Each backend then runs a plain range on the primary key rather than
/// combining both bounds (and their absence) in SQL, which would hide the index from the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanStart<'a> {
    /// Topics `>= from`.
    At(&'a str),
    /// Topics `> after`.
    After(&'a str),
}

impl<'a> ScanStart<'a> {
    pub(super) fn new(from: &'a str, after: Option<&'a TopicName>) -> Self {
        // `str` compares bytewise, the order both databases use for topics.
        match after {
            Some(after) if after.as_str() >= from => Self::After(after.as_str()),
            _ => Self::At(from),
        }
    }

    pub(super) fn bound(self) -> &'a str {
        match self {
            Self::At(s) | Self::After(s) => s,
        }
    }
}

/// One SQL statement per combination of a range's bounds, all selecting the same columns, so
/// that each runs as a plain range on the primary key: Postgres' generic plan and SQLite's
/// planner both search the key between the bounds as index conditions, where one statement with
/// `?1 IS NULL OR ...` would make them walk the table from the start. Built by
/// [`range_statements!`].
pub(super) struct RangeStatements {
    /// Topics `>= start`, no upper bound.
    pub(super) at: &'static str,
    /// Topics `> start`, no upper bound.
    pub(super) after: &'static str,
    /// Topics `>= start` and `< until`.
    pub(super) at_until: &'static str,
    /// Topics `> start` and `< until`.
    pub(super) after_until: &'static str,
}

impl RangeStatements {
    pub(super) fn pick(&self, start: ScanStart<'_>, until: Option<&str>) -> &'static str {
        match (start, until) {
            (ScanStart::At(_), None) => self.at,
            (ScanStart::After(_), None) => self.after,
            (ScanStart::At(_), Some(_)) => self.at_until,
            (ScanStart::After(_), Some(_)) => self.after_until,
        }
    }
}

/// The [`RangeStatements`] selecting `$columns`, with the backend's placeholder prefix `$p`
/// (`"$"` for Postgres, `"?"` for SQLite): `{p}1` is the lower bound, `{p}2` now, `{p}3` the
/// limit and `{p}4` the upper bound.
macro_rules! range_statements {
    ($columns:expr, $p:literal) => {
        RangeStatements {
            at: $crate::store::row::range_statement!($columns, $p, concat!("topic >= ", $p, "1")),
            after: $crate::store::row::range_statement!($columns, $p, concat!("topic > ", $p, "1")),
            at_until: $crate::store::row::range_statement!(
                $columns,
                $p,
                concat!("topic >= ", $p, "1 AND topic < ", $p, "4")
            ),
            after_until: $crate::store::row::range_statement!(
                $columns,
                $p,
                concat!("topic > ", $p, "1 AND topic < ", $p, "4")
            ),
        }
    };
}
pub(super) use range_statements;

macro_rules! range_statement {
    ($columns:expr, $p:literal, $bounds:expr) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM retained_messages WHERE ",
            $bounds,
            " AND NOT deleted AND (expires_at_ms IS NULL OR expires_at_ms > ",
            $p,
            "2) ORDER BY topic LIMIT ",
            $p,
            "3"
        )
    };
}
pub(super) use range_statement;

/// Rows per query of a [`super::RetainedStore::snapshot`].
pub(super) const SNAPSHOT_PAGE: u32 = 500;

/// Where a snapshot stands: the next page to read (at most [`SNAPSHOT_PAGE`] rows, each read
/// in the snapshot's one transaction so that all read one state) and what was sent of it.
pub(super) struct Pages<'a> {
    from: &'a str,
    after: Option<TopicName>,
    sent: u64,
    done: bool,
}

impl<'a> Pages<'a> {
    pub(super) fn new(from: &'a str) -> Self {
        Self {
            from,
            after: None,
            sent: 0,
            done: false,
        }
    }

    /// Where the next page starts; `None` once the last was read.
    pub(super) fn next(&self) -> Option<ScanStart<'_>> {
        (!self.done).then(|| ScanStart::new(self.from, self.after.as_ref()))
    }

    /// Sends a page's messages to `out`, one at a time; `false` when the receiver left.
    pub(super) async fn send(
        &mut self,
        rows: Vec<MessageRow>,
        out: &tokio::sync::mpsc::Sender<RetainedMessage>,
    ) -> bool {
        self.done = rows.len() < SNAPSHOT_PAGE as usize;
        for row in rows {
            let message = row.into_message();
            self.after = Some(message.topic.clone());
            if out.send(message).await.is_err() {
                return false;
            }
            self.sent += 1;
        }
        true
    }

    /// Messages the receiver took.
    pub(super) fn sent(&self) -> u64 {
        self.sent
    }
}

/// The day (since the epoch) of a time in ms, as the `last_accessed_day` column computes it.
/// The idle purge looks rows up by day through its index, then compares exact times.
pub(super) fn day_of(ms: i64) -> i32 {
    i32::try_from(ms.div_euclid(86_400_000)).unwrap_or(i32::MAX)
}

/// A publish row's columns in the order of `publish_columns!`, read by position: a scan
/// decodes millions of rows, and reading each column by name costs a hash lookup per column.
pub(super) type PublishColumns = (
    String,
    Vec<u8>,
    i16,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    i16,
    Option<i64>,
);

/// The columns of `message_columns!` after a publish row's.
pub(super) type MessageRest = (i64, i64, i64, String, Option<String>);

/// A message row's columns in the order of `message_columns!`: a publish row's, then the rest.
pub(super) type MessageColumns = (
    String,
    Vec<u8>,
    i16,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    i16,
    Option<i64>,
    i64,
    i64,
    i64,
    String,
    Option<String>,
);

#[derive(Debug)]
pub(super) struct PublishRow(PublishColumns);

/// A message row: a publish row's columns, then the rest.
pub(super) struct MessageRow {
    publish: PublishColumns,
    rest: MessageRest,
}

// A stored row is read one at a time, and what cannot be served of it is left out of that row
// alone, with a warning naming the topic: a row written by an older release, by hand, or before
// a rule was tightened must never fail a read batch, a page or a subscription's retained
// delivery that it shares with other rows (and is never skipped, which would end a page
// early). A string MQTT cannot carry ([MQTT-1.5.4-2]: no U+0000) would make a subscriber
// disconnect every time it is delivered.

/// Reads the columns `publish_columns!` names, by position from the first.
impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for PublishRow
where
    PublishColumns: sqlx::FromRow<'r, R>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        PublishColumns::from_row(row).map(Self)
    }
}

impl From<PublishColumns> for PublishRow {
    fn from(columns: PublishColumns) -> Self {
        Self(columns)
    }
}

/// Reads the columns `message_columns!` names, by position from the first; a change row
/// (`change_columns!`) starts with the same columns.
impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for MessageRow
where
    MessageColumns: sqlx::FromRow<'r, R>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let (
            topic,
            payload,
            qos,
            props,
            content_type,
            response,
            correlation,
            format,
            expires,
            modified,
            accessed,
            revision,
            owner,
            client,
        ) = MessageColumns::from_row(row)?;
        Ok(Self {
            publish: (
                topic,
                payload,
                qos,
                props,
                content_type,
                response,
                correlation,
                format,
                expires,
            ),
            rest: (modified, accessed, revision, owner, client),
        })
    }
}

impl PublishRow {
    /// The publish, without whatever of it cannot be served.
    pub(super) fn into_publish(self) -> RetainedPublish {
        let (
            topic,
            payload,
            qos,
            user_properties,
            content_type,
            response_topic,
            correlation_data,
            payload_format,
            expires_at_ms,
        ) = self.0;
        let topic = TopicName::from_stored(topic);
        let warn = |what: &str| tracing::warn!(topic = %topic, "stored {what} left out: not a valid MQTT string");
        let user_properties = match user_properties {
            None => Vec::new(),
            Some(json) => match decode_user_properties(&json) {
                Ok(props) => {
                    let before = props.len();
                    let props: Vec<UserProperty> = props
                        .into_iter()
                        .filter(|p| check_text(&p.key).is_ok() && check_text(&p.value).is_ok())
                        .collect();
                    if props.len() < before {
                        warn("user property");
                    }
                    props
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "stored user properties left out");
                    Vec::new()
                }
            },
        };
        let content_type = content_type.filter(|c| {
            let ok = check_text(c).is_ok();
            if !ok {
                warn("content type");
            }
            ok
        });
        let response_topic = response_topic.filter(|r| {
            let ok = check_text(r).is_ok();
            if !ok {
                warn("response topic");
            }
            ok
        });
        RetainedPublish {
            qos: stored_qos(&topic, qos),
            payload: Bytes::from(payload),
            properties: MessageProperties {
                user_properties,
                content_type,
                response_topic: response_topic.map(TopicName::from_stored),
                correlation_data: correlation_data.map(Bytes::from),
                payload_format: if payload_format == 1 {
                    PayloadFormat::Utf8
                } else {
                    PayloadFormat::Unspecified
                },
            },
            expires_at_ms,
            topic,
        }
    }
}

impl MessageRow {
    pub(super) fn from_parts(publish: PublishColumns, rest: MessageRest) -> Self {
        Self { publish, rest }
    }

    /// The revision the row holds.
    pub(super) fn revision(&self) -> Revision {
        self.rest.2
    }

    /// The message, without whatever of it cannot be served.
    pub(super) fn into_message(self) -> RetainedMessage {
        let publish = PublishRow(self.publish).into_publish();
        let (last_modified_ms, last_accessed_ms, revision, owner, writer_client) = self.rest;
        RetainedMessage {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            properties: publish.properties,
            expires_at_ms: publish.expires_at_ms,
            last_modified_ms,
            last_accessed_ms,
            revision,
            writer: writer_client.map(|client| Writer {
                principal: owner.into(),
                client: client.into(),
            }),
        }
    }
}

/// A change-log entry joined to its topic's row (see `RetainedStore::changes`).
#[derive(sqlx::FromRow)]
pub(super) struct ChangeRow {
    #[sqlx(flatten)]
    message: MessageRow,
    deleted: bool,
    change_kind: i16,
}

impl ChangeRow {
    /// The change, unless it is a message that has expired since: its expiry is a change of
    /// its own, with a later revision, once maintenance records it.
    pub(super) fn into_change(self, now_ms: i64) -> Option<RetainedChange> {
        let revision = self.message.revision();
        let message = self.message.into_message();
        let (topic, writer) = (message.topic.clone(), message.writer.clone());
        let kind = match (self.deleted, self.change_kind) {
            (false, _) if message.expires_at_ms.is_some_and(|at| at <= now_ms) => return None,
            (false, _) => ChangeKind::Put(Box::new(message)),
            (true, 1) => ChangeKind::Expired,
            (true, 2) => ChangeKind::Purged,
            (true, _) => ChangeKind::Delete,
        };
        let writer = match kind {
            ChangeKind::Put(_) | ChangeKind::Delete => writer,
            ChangeKind::Expired | ChangeKind::Purged => None,
        };
        Some(RetainedChange {
            revision,
            topic,
            kind,
            writer,
        })
    }
}

/// A page of changes from rows read in revision order with `limit`, where `settled` is the
/// highest revision the read could see settled: a full page ends at its last row (later ones may
/// follow at once), a short one at `settled`.
pub(super) fn change_page(
    rows: Vec<ChangeRow>,
    limit: u32,
    settled: Revision,
    now_ms: i64,
) -> ChangePage {
    let full = rows.len() >= limit as usize;
    let last = rows.last().map(|r| r.message.revision());
    let changes = rows
        .into_iter()
        .filter_map(|r| r.into_change(now_ms))
        .collect();
    let settled = match last {
        Some(last) if full => last,
        _ => settled,
    };
    ChangePage {
        changes,
        settled,
        full,
    }
}

/// Columns selected for a change: the message's, and what kind of row it is.
macro_rules! change_columns {
    () => {
        concat!(
            "m.topic, m.payload, m.qos, m.user_properties, m.content_type, m.response_topic, \
             m.correlation_data, m.payload_format, m.expires_at_ms, m.last_modified_ms, \
             m.last_accessed_ms, m.revision, m.owner, m.writer_client, m.deleted, m.change_kind"
        )
    };
}
pub(super) use change_columns;

#[derive(sqlx::FromRow)]
pub(super) struct SummaryRow {
    topic: String,
    payload_size: i64,
    qos: i16,
    last_modified_ms: i64,
    revision: i64,
}

impl SummaryRow {
    pub(super) fn into_summary(self) -> RetainedSummary {
        let topic = TopicName::from_stored(self.topic);
        RetainedSummary {
            qos: stored_qos(&topic, self.qos),
            payload_size: self.payload_size,
            last_modified_ms: self.last_modified_ms,
            revision: self.revision,
            topic,
        }
    }
}

/// Both schemas allow only 0, 1 and 2 (a CHECK constraint); anything else was written around
/// them, and is served as 0 rather than failing the reads it shares.
fn stored_qos(topic: &TopicName, raw: i16) -> Qos {
    u8::try_from(raw)
        .ok()
        .and_then(Qos::from_u8)
        .unwrap_or_else(|| {
            tracing::warn!(%topic, qos = raw, "stored qos is not 0, 1 or 2; served as 0");
            Qos::AtMostOnce
        })
}

/// Stored as `[[key, value], ...]`: compact, ordered, duplicates kept.
pub(super) fn encode_user_properties(props: &[UserProperty]) -> Option<String> {
    if props.is_empty() {
        return None;
    }
    let pairs: Vec<(&str, &str)> = props
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    Some(serde_json::to_string(&pairs).expect("string pairs always serialize"))
}

fn decode_user_properties(json: &str) -> Result<Vec<UserProperty>, serde_json::Error> {
    let pairs: Vec<(String, String)> = serde_json::from_str(json)?;
    Ok(pairs
        .into_iter()
        .map(|(key, value)| UserProperty { key, value })
        .collect())
}

/// Keeps only the last write per topic, preserving order. After this, puts and deletes name
/// disjoint topics, so a backend may apply them in any order within one transaction.
pub(super) fn last_write_per_topic<'a>(
    writes: impl IntoIterator<Item = &'a super::OwnedWrite>,
) -> Vec<&'a super::OwnedWrite> {
    let writes: Vec<&super::OwnedWrite> = writes.into_iter().collect();
    let mut last = std::collections::HashMap::with_capacity(writes.len());
    for (i, w) in writes.iter().enumerate() {
        last.insert(w.write.topic(), i);
    }
    writes
        .iter()
        .enumerate()
        .filter(|(i, w)| last.get(w.write.topic()) == Some(i))
        .map(|(_, w)| *w)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName::from_stored(s.to_owned())
    }

    #[test]
    fn a_scan_starts_at_from_without_after() {
        assert_eq!(ScanStart::new("a/", None), ScanStart::At("a/"));
    }

    #[test]
    fn a_scan_resumes_after_a_topic_inside_the_range() {
        let after = name("a/b");
        assert_eq!(ScanStart::new("a/", Some(&after)), ScanStart::After("a/b"));
    }

    #[test]
    fn after_equal_to_from_excludes_from() {
        let after = name("a/");
        assert_eq!(ScanStart::new("a/", Some(&after)), ScanStart::After("a/"));
    }

    #[test]
    fn after_before_from_is_ignored() {
        let after = name("a");
        assert_eq!(ScanStart::new("a/", Some(&after)), ScanStart::At("a/"));
    }

    #[test]
    fn the_start_compares_multibyte_topics_by_bytes() {
        // 'é' is C3 A9 and 'z' is 7A: byte order puts "a/z" first, whatever a locale says.
        let after = name("a/z");
        assert_eq!(ScanStart::new("a/é", Some(&after)), ScanStart::At("a/é"));
        let after = name("a/éa");
        assert_eq!(
            ScanStart::new("a/é", Some(&after)),
            ScanStart::After("a/éa")
        );
    }
}
