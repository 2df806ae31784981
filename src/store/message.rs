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
}

/// What a listing shows of a message: everything but the payload and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedSummary {
    pub topic: TopicName,
    pub payload_size: i64,
    pub qos: Qos,
    pub last_modified_ms: i64,
}

/// One change to the store. A batch of these is applied atomically, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
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
            max_messages: p.max_retained_messages,
        })
    }
}

/// A write and whom it is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedWrite {
    pub write: Write,
    pub owner: Owner,
}

impl From<Write> for OwnedWrite {
    fn from(write: Write) -> Self {
        Self {
            write,
            owner: Owner::anonymous(),
        }
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
