//! What GetRetainedMessage answers, read into an export's [`Line`]: AWS's five fields, and
//! retaind's extension fields when the service is retaind.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::Line;
use crate::store::UserProperty;

/// GetRetainedMessage's answer, with retaind's extension fields when the service is retaind
/// (AWS IoT Core sends only the first five).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fetched {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    qos: u8,
    last_modified_time: i64,
    user_properties: Option<String>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<String>,
    payload_format_indicator: Option<String>,
    message_expires_at: Option<i64>,
}

impl Fetched {
    /// The line an export writes for it; `Err` says why it cannot be read (for a person).
    pub fn into_line(self) -> Result<Line, String> {
        let user_properties = match self.user_properties.as_deref() {
            None | Some("") => Vec::new(),
            Some(b64) => aws_user_properties(b64)
                .map_err(|why| format!("{}: userProperties {why}", self.topic))?,
        };
        Ok(Line {
            topic: self.topic,
            payload: self.payload,
            qos: self.qos,
            user_properties,
            content_type: self.content_type,
            response_topic: self.response_topic,
            correlation_data: self.correlation_data,
            payload_format_indicator: self.payload_format_indicator,
            message_expires_at: self.message_expires_at,
            last_modified_time: self.last_modified_time,
        })
    }

    pub fn last_modified_time(&self) -> i64 {
        self.last_modified_time
    }
}

/// AWS's form: base64 of `[{"key":"value"}, ...]`, one single-key object per property.
fn aws_user_properties(b64: &str) -> Result<Vec<UserProperty>, String> {
    let json = STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| format!("is not base64: {e}"))?;
    let objects: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(&json)
        .map_err(|e| format!("is not a JSON array of objects: {e}"))?;
    let mut props = Vec::new();
    for object in objects {
        for (key, value) in object {
            let value = value
                .as_str()
                .ok_or_else(|| format!("value of {key:?} is not a string"))?
                .to_owned();
            props.push(UserProperty { key, value });
        }
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_user_properties_keep_order_and_repeats() {
        let b64 = STANDARD.encode(r#"[{"k":"1"},{"k":"2"},{"a":"x"}]"#);
        let props = aws_user_properties(&b64).unwrap();
        let pairs: Vec<(&str, &str)> = props
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(pairs, [("k", "1"), ("k", "2"), ("a", "x")]);
    }
}
