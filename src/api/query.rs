//! Query strings, decoded strictly. axum's `Query` (serde_urlencoded) replaces bytes that are not
//! UTF-8 with U+FFFD, so `contentType=%FF` would be stored as `"\u{FFFD}"` rather than refused.
//! [`Params`] first checks that every name and value percent-decodes to UTF-8 that MQTT can carry
//! ([MQTT-1.5.4-1], [MQTT-1.5.4-2]: no U+0000), naming the parameter when one does not, and only
//! then deserializes.

use std::borrow::Cow;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use percent_encoding::percent_decode;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::topic::check_text;

/// The query string deserialized into `T`, every parameter checked first.
pub struct Params<T>(pub T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        check(parts.uri.query().unwrap_or(""))?;
        let Query(params) =
            Query::try_from_uri(&parts.uri).map_err(|e| ApiError::invalid(e.body_text()))?;
        Ok(Self(params))
    }
}

/// A `true`/`false` parameter (any case), `false` when absent.
pub fn flag(raw: Option<&str>, name: &str) -> Result<bool, ApiError> {
    match raw {
        None => Ok(false),
        Some(raw) if raw.eq_ignore_ascii_case("true") => Ok(true),
        Some(raw) if raw.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(ApiError::invalid(format!("{name} must be true or false"))),
    }
}

/// Every `name=value` pair of `query` is text: UTF-8 once percent-decoded (`+` is a space, as
/// in forms), without U+0000.
fn check(query: &str) -> Result<(), ApiError> {
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name).map_err(|()| {
            ApiError::invalid("a query parameter name is not valid UTF-8 after percent-decoding")
        })?;
        check_text(&name).map_err(|e| ApiError::invalid(format!("a query parameter name {e}")))?;
        let value = decode(value).map_err(|()| {
            ApiError::invalid(format!("{name} is not valid UTF-8 after percent-decoding"))
        })?;
        check_text(&value).map_err(|e| ApiError::invalid(format!("{name} {e}")))?;
    }
    Ok(())
}

fn decode(raw: &str) -> Result<Cow<'_, str>, ()> {
    let spaced: Cow<'_, str> = if raw.contains('+') {
        raw.replace('+', " ").into()
    } else {
        raw.into()
    };
    match percent_decode(spaced.as_bytes()).decode_utf8() {
        Ok(Cow::Borrowed(_)) => Ok(spaced),
        Ok(Cow::Owned(decoded)) => Ok(decoded.into()),
        Err(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(query: &str) -> String {
        check(query).unwrap_err().to_string()
    }

    #[test]
    fn text_parameters_pass() {
        for ok in [
            "",
            "a=1&b=",
            "contentType=text%2Fplain%3B+charset%3Dutf-8",
            "topicFilter=%C3%A9%2F%2B",
            "flag&&x=%F0%9F%98%80",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_value_that_is_not_utf8_is_refused_by_name() {
        assert_eq!(
            message("retain=true&contentType=%FF"),
            "contentType is not valid UTF-8 after percent-decoding"
        );
        assert_eq!(
            message("topicFilter=a%C3"),
            "topicFilter is not valid UTF-8 after percent-decoding"
        );
    }

    #[test]
    fn the_null_character_is_refused_by_name() {
        assert_eq!(
            message("contentType=%00"),
            "contentType must not contain the null character U+0000"
        );
        assert_eq!(
            message("responseTopic=a%00b"),
            "responseTopic must not contain the null character U+0000"
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(message("%FF=1").contains("name is not valid UTF-8"));
        assert!(message("a%00=1").contains("name must not contain the null character"));
    }
}
