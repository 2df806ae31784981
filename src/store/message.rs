use bytes::Bytes;

use crate::auth::Principal;
use crate::topic::TopicName;

/// MQTT quality of service. Stored with a retained message and capped by each subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Qos {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl Qos {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// MQTT 5 Payload Format Indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum PayloadFormat {
    #[default]
    Unspecified = 0,
    Utf8 = 1,
}

/// One MQTT 5 user property. Order and duplicate keys are significant, so these live in a Vec.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserProperty {
    pub key: String,
    pub value: String,
}

/// AWS IoT's limit on the user properties of one message, measured as they travel in an MQTT 5
/// packet ([`user_properties_wire_len`]).
pub const MAX_USER_PROPERTY_BYTES: usize = 8 * 1024;

/// What user properties take in an MQTT 5 packet: per property, its identifier byte and two
/// strings with their two-byte lengths. Counting the framing, not just the text, means many
/// empty properties cannot slip under a limit that would stop their content.
pub fn user_properties_wire_len(props: &[UserProperty]) -> usize {
    props
        .iter()
        .map(|p| 1 + 2 + p.key.len() + 2 + p.value.len())
        .sum()
}

/// The MQTT 5 properties a retained message carries to its future subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageProperties {
    pub user_properties: Vec<UserProperty>,
    pub content_type: Option<String>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub payload_format: PayloadFormat,
}

/// A retained message as stored: one per topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedMessage {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: Qos,
    pub properties: MessageProperties,
    /// When the MQTT 5 Message Expiry Interval runs out (epoch ms); `None` never expires.
    pub expires_at_ms: Option<i64>,
    pub last_modified_ms: i64,
    /// The later of the last update and the last recorded read; drives the retention purge.
    pub last_accessed_ms: i64,
    /// The revision the store gave the write that left this message (see [`Revision`]); 0 for
    /// a message not yet stored.
    pub revision: Revision,
    /// Who wrote it, when the store knows (rows written before revisions existed do not).
    pub writer: Option<Writer>,
}

/// What a subscriber receives of a retained message: a retained delivery reads only this of
/// each row, since a page of a large delivery costs the database in proportion to what it
/// returns (decision 020).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedPublish {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: Qos,
    pub properties: MessageProperties,
    /// When the MQTT 5 Message Expiry Interval runs out (epoch ms); `None` never expires.
    pub expires_at_ms: Option<i64>,
}

impl From<RetainedMessage> for RetainedPublish {
    fn from(m: RetainedMessage) -> Self {
        Self {
            topic: m.topic,
            payload: m.payload,
            qos: m.qos,
            properties: m.properties,
            expires_at_ms: m.expires_at_ms,
        }
    }
}

/// A service-wide number the store gives every change to the retained set (a put, a delete, an
/// expiry): strictly increasing in the order changes become visible, on every node and across
/// restarts. Decision 018 says how.
pub type Revision = i64;

/// Revisions stay below 2^53 (decision 018), so 16 decimal digits hold every one.
pub const MAX_REVISION_DIGITS: usize = 16;

/// A revision as clients write it back (HTTP `If-Match`, MQTT `retaind-if-match`): canonical
/// decimal digits only. No sign, space or leading zero: `007` is no revision this service gave,
/// and reading it as 7 would match one the client never saw.
pub fn parse_revision(digits: &str) -> Option<Revision> {
    let canonical = !digits.is_empty()
        && digits.len() <= MAX_REVISION_DIGITS
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// Who made a change: the principal it was charged to (empty when authentication is off) and
/// where it came from, the MQTT client id or [`Writer::HTTP`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub principal: std::sync::Arc<str>,
    pub client: std::sync::Arc<str>,
}

impl Writer {
    /// The client named for writes made over the HTTP API.
    pub const HTTP: &'static str = "HTTP";
}

/// What must hold for a write to be applied (compare-and-set). Checked by the database, at the
/// moment the write is applied, against the topic's latest row on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The topic's retained message is the one with this revision (`If-Match`).
    Revision(Revision),
    /// The topic has no retained message (`If-None-Match: *`).
    Absent,
}

/// What a listing shows of a message: everything but the payload and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedSummary {
    pub topic: TopicName,
    pub payload_size: i64,
    pub qos: Qos,
    pub last_modified_ms: i64,
    pub revision: Revision,
}

/// One change to the store. A batch of these is applied atomically, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
// A write moves by value through the write queue and into the cache; boxing the message would
// cost an allocation per write to save the bytes of the rare delete.
#[allow(clippy::large_enum_variant)]
pub enum Write {
    Put(RetainedMessage),
    Delete(TopicName),
}

impl Write {
    pub fn topic(&self) -> &TopicName {
        match self {
            Self::Put(msg) => &msg.topic,
            Self::Delete(topic) => topic,
        }
    }
}

/// Who a retained write is charged to: the principal whose publish made it, and how many
/// retained messages that principal may keep. The empty name is everyone when authentication
/// is off.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    pub name: std::sync::Arc<str>,
    /// `None`: no quota of its own (the service-wide one still applies).
    pub max_messages: Option<u64>,
}

impl Owner {
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Whom a principal's retained publishes are charged to; everyone is the one anonymous
    /// owner when authentication is off (no principal).
    pub fn of(principal: Option<&Principal>) -> Self {
        principal.map_or_else(Self::anonymous, |p| Self {
            name: p.name.as_str().into(),
            max_messages: p.limits.retained_messages,
        })
    }
}

/// A write, whom it is charged to, where it came from, and what must hold for it to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedWrite {
    pub write: Write,
    pub owner: Owner,
    /// The MQTT client id, or [`Writer::HTTP`]; `None` when no one in particular (tools, tests).
    pub client: Option<std::sync::Arc<str>>,
    pub condition: Option<Condition>,
}

impl OwnedWrite {
    pub fn new(write: Write, owner: Owner) -> Self {
        Self {
            write,
            owner,
            client: None,
            condition: None,
        }
    }

    pub(super) fn kind(&self) -> WriteKind {
        match self.condition {
            None => WriteKind::Unconditional,
            Some(Condition::Revision(_)) => WriteKind::IfMatch,
            Some(Condition::Absent) => WriteKind::IfNoneMatch,
        }
    }
}

/// The kinds of write, in the order a batch applies them. A database applies each with a
/// statement of its own, because a condition is checked against the row the write replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum WriteKind {
    /// No condition: an insert, or a replacement of whatever the topic holds.
    Unconditional,
    /// `If-Match`: an update of the row holding that revision, never an insert.
    IfMatch,
    /// `If-None-Match: *`: an insert, or a replacement of a tombstone or an expired message.
    IfNoneMatch,
}

impl WriteKind {
    pub(super) const ALL: [Self; 3] = [Self::Unconditional, Self::IfMatch, Self::IfNoneMatch];
}

impl From<Write> for OwnedWrite {
    fn from(write: Write) -> Self {
        Self::new(write, Owner::anonymous())
    }
}

/// Why a write was refused: storing it would keep more retained messages than allowed.
/// Nothing of it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    #[error("the service keeps at most {limit} retained messages")]
    Service { limit: u64 },
    #[error("principal {owner:?} may keep at most {limit} retained messages")]
    Owner {
        owner: std::sync::Arc<str>,
        limit: u64,
    },
}
