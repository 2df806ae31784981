//! The `x-amz-mqtt5-*` request headers of Publish, decoded into MQTT 5 properties.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::Value;

use super::ApiError;
use crate::store::{
    MAX_USER_PROPERTY_BYTES, PayloadFormat, UserProperty, user_properties_wire_len,
};
use crate::topic::check_text;

pub const USER_PROPERTIES: &str = "x-amz-mqtt5-user-properties";
pub const PAYLOAD_FORMAT: &str = "x-amz-mqtt5-payload-format-indicator";
pub const CORRELATION_DATA: &str = "x-amz-mqtt5-correlation-data";

/// MQTT binary data and strings carry a two-byte length.
pub const MAX_CORRELATION_DATA_BYTES: usize = 65_535;

/// Base64 of a JSON array of single-key objects, `[{"k":"v"},{"k2":"v2"}]`.
///
/// boto3 JSON-encodes whatever it is given, so a caller who passes the array as a JSON *string*
/// (as boto3's own documentation shows) sends base64 of a string literal that holds the array.
/// Both forms are accepted: a decoded string is parsed once more.
///
/// Keys and values are MQTT UTF-8 strings ([MQTT-1.5.4-2]: no U+0000), and together they must
/// fit [`MAX_USER_PROPERTY_BYTES`] as an MQTT 5 packet frames them.
pub fn user_properties(header: &str) -> Result<Vec<UserProperty>, ApiError> {
    let bad = |why: &str| ApiError::invalid(format!("{USER_PROPERTIES} {why}"));
    let raw = STANDARD
        .decode(header.trim())
        .map_err(|_| bad("must be base64-encoded JSON"))?;
    let mut json: Value =
        serde_json::from_slice(&raw).map_err(|_| bad("must be base64-encoded JSON"))?;
    if let Value::String(inner) = &json {
        json = serde_json::from_str(inner).map_err(|_| bad("holds a string that is not JSON"))?;
    }
    let Value::Array(items) = json else {
        return Err(bad(
            "must be a JSON array of objects such as [{\"key\":\"value\"}]",
        ));
    };
    let mut props = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(map) = item else {
            return Err(bad(
                "must be a JSON array of objects such as [{\"key\":\"value\"}]",
            ));
        };
        for (key, value) in map {
            let Value::String(value) = value else {
                return Err(bad("values must be strings"));
            };
            check_text(&key).map_err(|e| bad(&format!("key {key:?} {e}")))?;
            check_text(&value).map_err(|e| bad(&format!("value of key {key:?} {e}")))?;
            props.push(UserProperty { key, value });
        }
    }
    if user_properties_wire_len(&props) > MAX_USER_PROPERTY_BYTES {
        return Err(bad(&format!(
            "exceed {MAX_USER_PROPERTY_BYTES} bytes in total, counting 5 bytes of MQTT framing \
             per property besides its key and value"
        )));
    }
    Ok(props)
}

pub fn payload_format(header: &str) -> Result<PayloadFormat, ApiError> {
    match header.trim() {
        "UNSPECIFIED_BYTES" => Ok(PayloadFormat::Unspecified),
        "UTF8_DATA" => Ok(PayloadFormat::Utf8),
        _ => Err(ApiError::invalid(format!(
            "{PAYLOAD_FORMAT} must be UNSPECIFIED_BYTES or UTF8_DATA"
        ))),
    }
}

pub fn correlation_data(header: &str) -> Result<Bytes, ApiError> {
    let data = STANDARD
        .decode(header.trim())
        .map_err(|_| ApiError::invalid(format!("{CORRELATION_DATA} must be base64-encoded")))?;
    if data.len() > MAX_CORRELATION_DATA_BYTES {
        return Err(ApiError::invalid(format!(
            "{CORRELATION_DATA} must decode to at most {MAX_CORRELATION_DATA_BYTES} bytes"
        )));
    }
    Ok(Bytes::from(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    fn pairs(props: &[UserProperty]) -> Vec<(&str, &str)> {
        props
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect()
    }

    #[test]
    fn user_properties_from_a_json_array() {
        let props = user_properties(&b64(
            r#"[{"deviceName":"alpha"},{"deviceCnt":"45"},{"deviceName":"beta"}]"#,
        ))
        .unwrap();
        assert_eq!(
            pairs(&props),
            [
                ("deviceName", "alpha"),
                ("deviceCnt", "45"),
                ("deviceName", "beta")
            ]
        );
    }

    #[test]
    fn user_properties_from_a_json_string_holding_the_array() {
        let doubly = serde_json::to_string(r#"[{"a":"1"}]"#).unwrap();
        assert_eq!(
            pairs(&user_properties(&b64(&doubly)).unwrap()),
            [("a", "1")]
        );
    }

    #[test]
    fn malformed_user_properties_are_rejected() {
        for bad in [
            "%%%".to_owned(),
            b64("not json"),
            b64(r#"{"a":"1"}"#),
            b64(r#"[{"a":1}]"#),
            b64(r#"["a"]"#),
            b64(&serde_json::to_string("not json inside").unwrap()),
        ] {
            assert!(
                matches!(user_properties(&bad), Err(ApiError::InvalidRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn user_properties_over_the_size_limit_are_rejected() {
        let big = format!(r#"[{{"k":"{}"}}]"#, "v".repeat(MAX_USER_PROPERTY_BYTES));
        assert!(user_properties(&b64(&big)).is_err());
    }

    #[test]
    fn many_empty_user_properties_are_over_the_size_limit() {
        // Nothing but framing: 5 bytes each on the wire.
        let fits = MAX_USER_PROPERTY_BYTES / 5;
        let empty = |n: usize| b64(&format!("[{}]", vec![r#"{"":""}"#; n].join(",")));
        assert_eq!(user_properties(&empty(fits)).unwrap().len(), fits);
        assert!(user_properties(&empty(fits + 1)).is_err());
        assert!(user_properties(&empty(20_000)).is_err());
    }

    #[test]
    fn the_null_character_is_refused_in_keys_and_values() {
        for bad in [r#"[{"a\u0000":"v"}]"#, r#"[{"k":"\u0000"}]"#] {
            let err = user_properties(&b64(bad)).unwrap_err().to_string();
            assert!(
                err.contains("must not contain the null character U+0000"),
                "{err}"
            );
        }
    }

    #[test]
    fn payload_format_names() {
        assert_eq!(payload_format("UTF8_DATA").unwrap(), PayloadFormat::Utf8);
        assert_eq!(
            payload_format("UNSPECIFIED_BYTES").unwrap(),
            PayloadFormat::Unspecified
        );
        assert!(payload_format("utf8").is_err());
    }

    #[test]
    fn correlation_data_is_base64() {
        assert_eq!(
            &correlation_data(&STANDARD.encode([0u8, 255, 7])).unwrap()[..],
            [0, 255, 7]
        );
        assert!(correlation_data("***").is_err());
    }
}
