//! The export format: NDJSON, one retained message per line, every field the store keeps but
//! `last_accessed_ms` (a read time, which the importing store sets afresh). Pure.
//!
//! ```json
//! {"topic":"devices/1/config","payload":"eyJvbiI6dHJ1ZX0=","qos":1,
//!  "userProperties":[{"key":"owner","value":"ops"}],"contentType":"application/json",
//!  "responseTopic":"devices/1/ack","correlationData":"AQI=","payloadFormatIndicator":"UTF8_DATA",
//!  "messageExpiresAt":1900000000000,"lastModifiedTime":1767225600000}
//! ```
//!
//! `payload` and `correlationData` are standard base64; times are epoch milliseconds; optional
//! fields are left out when the message has none. Unknown fields are refused rather than
//! dropped, so a file from a newer release never loses a property silently.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::{
    MAX_USER_PROPERTY_BYTES, MessageProperties, PayloadFormat, Qos, RetainedMessage, UserProperty,
    user_properties_wire_len,
};
use crate::topic::{TopicLimits, TopicName, check_text};

const UTF8_DATA: &str = "UTF8_DATA";
const UNSPECIFIED_BYTES: &str = "UNSPECIFIED_BYTES";
/// MQTT 5 binary data carries a two-byte length.
const MAX_CORRELATION_BYTES: usize = 65_535;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Line {
    pub topic: String,
    /// Base64.
    pub payload: String,
    pub qos: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_properties: Vec<UserProperty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<String>,
    /// `UTF8_DATA` or `UNSPECIFIED_BYTES` (the default), as AWS names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format_indicator: Option<String>,
    /// Epoch ms at which the message expires; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_expires_at: Option<i64>,
    /// Epoch ms of the message's last update.
    pub last_modified_time: i64,
}

impl Line {
    pub fn of(m: &RetainedMessage) -> Self {
        let p = &m.properties;
        Self {
            topic: m.topic.to_string(),
            payload: STANDARD.encode(&m.payload),
            qos: m.qos.as_u8(),
            user_properties: p.user_properties.clone(),
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.as_ref().map(ToString::to_string),
            correlation_data: p.correlation_data.as_ref().map(|c| STANDARD.encode(c)),
            payload_format_indicator: (p.payload_format == PayloadFormat::Utf8)
                .then(|| UTF8_DATA.to_owned()),
            message_expires_at: m.expires_at_ms,
            last_modified_time: m.last_modified_ms,
        }
    }

    /// The line as written to a file, without its newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a line always serializes")
    }

    /// Parses one line of a file; the error says what is wrong, for a person.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not a line of the export format: {e}"))
    }

    /// The message this line describes, checked as the server checks a retained publish:
    /// what a server within `limits` would store and serve. `last_accessed_ms` is `now_ms`.
    pub fn into_message(
        self,
        limits: TopicLimits,
        max_payload_bytes: usize,
        now_ms: i64,
    ) -> Result<RetainedMessage, String> {
        let topic =
            TopicName::parse(self.topic, limits).map_err(|e| format!("invalid topic: {e}"))?;
        if topic.is_reserved() {
            return Err(format!(
                "invalid topic {topic}: retained messages cannot be stored on topics that start with '$'"
            ));
        }
        let payload = STANDARD
            .decode(self.payload.as_bytes())
            .map_err(|e| format!("payload is not base64: {e}"))?;
        if payload.is_empty() {
            return Err("payload is empty: an empty retained message is a delete".into());
        }
        if payload.len() > max_payload_bytes {
            return Err(format!(
                "payload is {} bytes, more than the limit of {max_payload_bytes}",
                payload.len()
            ));
        }
        let qos = Qos::from_u8(self.qos)
            .ok_or_else(|| format!("qos must be 0, 1 or 2, not {}", self.qos))?;
        for p in &self.user_properties {
            check_text(&p.key)
                .and(check_text(&p.value))
                .map_err(|e| format!("user property {e}"))?;
        }
        if user_properties_wire_len(&self.user_properties) > MAX_USER_PROPERTY_BYTES {
            return Err(format!(
                "user properties take more than {MAX_USER_PROPERTY_BYTES} bytes in MQTT 5"
            ));
        }
        if let Some(c) = &self.content_type {
            check_text(c).map_err(|e| format!("contentType {e}"))?;
        }
        let response_topic = self
            .response_topic
            .map(|r| TopicName::parse(r, limits))
            .transpose()
            .map_err(|e| format!("invalid responseTopic: {e}"))?;
        let correlation_data = self
            .correlation_data
            .map(|c| STANDARD.decode(c.as_bytes()))
            .transpose()
            .map_err(|e| format!("correlationData is not base64: {e}"))?;
        if correlation_data
            .as_ref()
            .is_some_and(|c| c.len() > MAX_CORRELATION_BYTES)
        {
            return Err(format!(
                "correlationData is longer than {MAX_CORRELATION_BYTES} bytes"
            ));
        }
        let payload_format = match self.payload_format_indicator.as_deref() {
            None | Some(UNSPECIFIED_BYTES) => PayloadFormat::Unspecified,
            Some(UTF8_DATA) => PayloadFormat::Utf8,
            Some(other) => {
                return Err(format!(
                    "payloadFormatIndicator must be {UTF8_DATA} or {UNSPECIFIED_BYTES}, not {other:?}"
                ));
            }
        };
        if payload_format == PayloadFormat::Utf8 && std::str::from_utf8(&payload).is_err() {
            return Err("payload is declared UTF8_DATA but is not valid UTF-8".into());
        }
        if self.last_modified_time < 0 {
            return Err("lastModifiedTime must be epoch milliseconds, not negative".into());
        }
        Ok(RetainedMessage {
            topic,
            payload: Bytes::from(payload),
            qos,
            properties: MessageProperties {
                user_properties: self.user_properties,
                content_type: self.content_type,
                response_topic,
                correlation_data: correlation_data.map(Bytes::from),
                payload_format,
            },
            expires_at_ms: self.message_expires_at,
            last_modified_ms: self.last_modified_time,
            last_accessed_ms: now_ms.max(self.last_modified_time),
            revision: 0,
            writer: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600_000;

    fn full_message() -> RetainedMessage {
        RetainedMessage {
            topic: TopicName::parse("devices/1/config", TopicLimits::default()).unwrap(),
            payload: Bytes::from_static("{\"on\":true}".as_bytes()),
            qos: Qos::AtLeastOnce,
            properties: MessageProperties {
                user_properties: vec![
                    UserProperty {
                        key: "k".into(),
                        value: "1".into(),
                    },
                    UserProperty {
                        key: "k".into(),
                        value: "2".into(),
                    },
                ],
                content_type: Some("application/json".into()),
                response_topic: Some(
                    TopicName::parse("devices/1/ack", TopicLimits::default()).unwrap(),
                ),
                correlation_data: Some(Bytes::from_static(&[0, 1, 255])),
                payload_format: PayloadFormat::Utf8,
            },
            expires_at_ms: Some(NOW + 60_000),
            last_modified_ms: NOW - 5,
            last_accessed_ms: NOW,
            revision: 0,
            writer: None,
        }
    }

    fn parse(text: &str) -> Result<RetainedMessage, String> {
        Line::parse(text)?.into_message(TopicLimits::default(), 16, NOW)
    }

    fn line_with(field: &str, value: serde_json::Value) -> String {
        let mut json = serde_json::to_value(Line::of(&full_message())).unwrap();
        json[field] = value;
        json.to_string()
    }

    #[test]
    fn every_property_survives_a_line() {
        let m = full_message();
        let text = Line::of(&m).to_json();
        assert!(!text.contains('\n'));
        assert_eq!(parse(&text).unwrap(), m);
    }

    #[test]
    fn optional_fields_are_left_out_when_absent() {
        let mut m = full_message();
        m.properties = MessageProperties::default();
        m.expires_at_ms = None;
        let text = Line::of(&m).to_json();
        assert_eq!(
            text,
            r#"{"topic":"devices/1/config","payload":"eyJvbiI6dHJ1ZX0=","qos":1,"lastModifiedTime":1767225599995}"#
        );
        assert_eq!(parse(&text).unwrap(), m);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            ("{\"topic\": ".to_owned(), "not a line of the export format"),
            (line_with("payload", "!!".into()), "payload is not base64"),
            (line_with("topic", "a/+/b".into()), "invalid topic"),
            (line_with("topic", "$SYS/x".into()), "start with '$'"),
            (
                line_with("payload", STANDARD.encode([1u8; 17]).into()),
                "payload is 17 bytes, more than the limit of 16",
            ),
            (line_with("qos", 7.into()), "qos must be 0, 1 or 2, not 7"),
            (line_with("payload", "".into()), "empty retained message"),
            (line_with("colour", "red".into()), "unknown field `colour`"),
            (
                line_with("payloadFormatIndicator", "TEXT".into()),
                "payloadFormatIndicator",
            ),
            (line_with("contentType", "a\u{0}b".into()), "contentType"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).expect_err(&text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn a_utf8_declared_payload_must_be_utf8() {
        let text = line_with("payload", STANDARD.encode([0xffu8, 0xfe]).into());
        let err = parse(&text).unwrap_err();
        assert!(err.contains("UTF8_DATA"), "{err}");
    }
}
