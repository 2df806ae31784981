//! The row shape shared by both backends, and its conversion to and from the domain types.

use bytes::Bytes;

use super::{
    Error, MessageProperties, PayloadFormat, Qos, RetainedMessage, RetainedSummary, UserProperty,
};
use crate::topic::TopicName;

/// Columns selected for a full message, as a literal so queries built with `concat!` stay
/// `&'static str` (sqlx accepts only those without an explicit safety assertion).
macro_rules! message_columns {
    () => {
        "topic, payload, qos, user_properties, content_type, response_topic, correlation_data, \
         payload_format, expires_at_ms, last_modified_ms, last_accessed_ms"
    };
}
pub(super) use message_columns;

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
/// that each runs as a plain range on the primary key. Built by each backend's
/// `range_statements!` macro, which knows its placeholder syntax.
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

/// The day (since the epoch) of a time in ms, as the `last_accessed_day` column computes it.
/// The idle purge looks rows up by day through its index, then compares exact times.
pub(super) fn day_of(ms: i64) -> i32 {
    i32::try_from(ms.div_euclid(86_400_000)).unwrap_or(i32::MAX)
}

#[derive(sqlx::FromRow)]
pub(super) struct MessageRow {
    topic: String,
    payload: Vec<u8>,
    qos: i16,
    user_properties: Option<String>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    payload_format: i16,
    expires_at_ms: Option<i64>,
    last_modified_ms: i64,
    last_accessed_ms: i64,
}

impl TryFrom<MessageRow> for RetainedMessage {
    type Error = Error;

    fn try_from(row: MessageRow) -> Result<Self, Error> {
        let user_properties = match row.user_properties {
            Some(json) => decode_user_properties(&json)?,
            None => Vec::new(),
        };
        Ok(Self {
            qos: decode_qos(row.qos)?,
            topic: TopicName::from_stored(row.topic),
            payload: Bytes::from(row.payload),
            properties: MessageProperties {
                user_properties,
                content_type: row.content_type,
                response_topic: row.response_topic.map(TopicName::from_stored),
                correlation_data: row.correlation_data.map(Bytes::from),
                payload_format: if row.payload_format == 1 {
                    PayloadFormat::Utf8
                } else {
                    PayloadFormat::Unspecified
                },
            },
            expires_at_ms: row.expires_at_ms,
            last_modified_ms: row.last_modified_ms,
            last_accessed_ms: row.last_accessed_ms,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SummaryRow {
    topic: String,
    payload_size: i64,
    qos: i16,
    last_modified_ms: i64,
}

impl TryFrom<SummaryRow> for RetainedSummary {
    type Error = Error;

    fn try_from(row: SummaryRow) -> Result<Self, Error> {
        Ok(Self {
            topic: TopicName::from_stored(row.topic),
            payload_size: row.payload_size,
            qos: decode_qos(row.qos)?,
            last_modified_ms: row.last_modified_ms,
        })
    }
}

fn decode_qos(raw: i16) -> Result<Qos, Error> {
    u8::try_from(raw)
        .ok()
        .and_then(Qos::from_u8)
        .ok_or_else(|| Error::Internal(format!("stored qos {raw} is not 0, 1 or 2").into()))
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

fn decode_user_properties(json: &str) -> Result<Vec<UserProperty>, Error> {
    let pairs: Vec<(String, String)> = serde_json::from_str(json).map_err(|e| {
        Error::Internal(format!("stored user properties are not valid: {e}").into())
    })?;
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
