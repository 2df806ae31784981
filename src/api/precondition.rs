//! The conditional headers of a retained publish (compare-and-set, issue 17; decision 018):
//! `If-Match: "<revision>"` and `If-None-Match: *`, parsed into the store's [`Condition`], and
//! the `ETag` that names a revision.
//!
//! Pure: headers in, a condition or a message for the client out. The store checks the
//! condition; this module only says what was asked.
//!
//! Only the forms retaind's `ETag`s can meet are accepted. A revision is one number, so an
//! entity-tag list, a weak tag (`W/"7"`, which RFC 9110 §13.1.1 never lets `If-Match` match),
//! an unquoted or non-numeric tag, and `If-Match: *` would each either never match or not
//! say which revision the caller read: refusing them (400) tells the caller at once, where a
//! 412 would send it to re-read and retry in vain.

use axum::http::{HeaderMap, HeaderValue};

use super::ApiError;
use crate::store::{self, Condition, Revision, parse_revision};
use crate::topic::TopicName;

pub const IF_MATCH: &str = "if-match";
pub const IF_NONE_MATCH: &str = "if-none-match";

/// The `ETag` value naming `revision`: a strong entity tag, the decimal number quoted.
pub fn etag(revision: Revision) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).expect("digits and quotes are a valid header")
}

/// A publish's failure, with the 412 of a condition that did not hold saying which one.
/// `asked` is the publish's condition and topic, if it had one.
pub fn failed(err: store::Error, asked: Option<&(Condition, TopicName)>) -> ApiError {
    let message = match (&err, asked) {
        (store::Error::ConditionFailed, Some((Condition::Revision(revision), topic))) => format!(
            "the retained message of topic {topic} is not revision {revision} (it changed, or \
             there is none): read it again; nothing was stored"
        ),
        (store::Error::ConditionFailed, Some((Condition::Absent, topic))) => format!(
            "topic {topic} has a retained message and If-None-Match: * asked for none; \
             nothing was stored"
        ),
        _ => return err.into(),
    };
    ApiError::PreconditionFailed(message)
}

/// The condition a publish's headers ask for, if any. `retain` is whether the publish is
/// retained: a condition is about the topic's retained message, so it needs one.
pub fn condition(headers: &HeaderMap, retain: bool) -> Result<Option<Condition>, ApiError> {
    let if_match = single(headers, IF_MATCH)?;
    let if_none_match = single(headers, IF_NONE_MATCH)?;
    let condition = match (if_match, if_none_match) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "send If-Match or If-None-Match, not both: a retained message cannot both \
                 have a revision and be absent",
            ));
        }
        (Some(tag), None) => Condition::Revision(revision(tag)?),
        (None, Some("*")) => Condition::Absent,
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "If-None-Match must be * (store only if the topic has no retained message)",
            ));
        }
    };
    if !retain {
        return Err(ApiError::invalid(
            "If-Match and If-None-Match apply to retained publishes only: add retain=true",
        ));
    }
    Ok(Some(condition))
}

/// The one value of header `name`, if sent. Sent twice, it is a list (RFC 9110 §5.3).
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::invalid(format!(
            "{name} must be sent once, with one value"
        )));
    }
    let value = value
        .to_str()
        .map_err(|_| ApiError::invalid(format!("{name} must be ASCII")))?;
    // Taken as it arrives: the HTTP parser has already stripped the optional whitespace
    // around a field value (RFC 9110 §5.5), so what is left must be exactly the form.
    Ok(Some(value))
}

/// The revision named by an `If-Match` value: exactly `"<digits>"`, as an `ETag` shows it.
fn revision(tag: &str) -> Result<Revision, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "If-Match must be one strong entity tag holding a revision, as the ETag of \
             GetRetainedMessage shows it (\"1234\"); got {tag:?}"
        ))
    };
    // At most 16 digits, as the OpenAPI pattern of `If-Match` says.
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(parse_revision)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn parse(pairs: &[(&'static str, &'static str)]) -> Result<Option<Condition>, String> {
        condition(&headers(pairs), true).map_err(|e| e.to_string())
    }

    #[test]
    fn no_header_is_no_condition() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(condition(&headers(&[]), false).ok(), Some(None));
    }

    #[test]
    fn if_match_names_a_revision() {
        assert_eq!(
            parse(&[(IF_MATCH, "\"1234\"")]),
            Ok(Some(Condition::Revision(1234)))
        );
        assert_eq!(
            parse(&[(IF_MATCH, "\"0\"")]),
            Ok(Some(Condition::Revision(0)))
        );
        assert_eq!(
            parse(&[(IF_MATCH, "\"9999999999999999\"")]),
            Ok(Some(Condition::Revision(9_999_999_999_999_999)))
        );
    }

    #[test]
    fn if_none_match_star_asks_for_absence() {
        assert_eq!(parse(&[(IF_NONE_MATCH, "*")]), Ok(Some(Condition::Absent)));
    }

    #[test]
    fn etag_and_if_match_round_trip() {
        let tag = etag(987_654_321);
        assert_eq!(tag, "\"987654321\"");
        let mut map = HeaderMap::new();
        map.insert(IF_MATCH, tag);
        assert_eq!(
            condition(&map, true).ok(),
            Some(Some(Condition::Revision(987_654_321)))
        );
    }

    #[test]
    fn malformed_if_match_is_refused() {
        for value in [
            "1234",
            "W/\"1234\"",
            "w/\"1234\"",
            "\"1234\", \"1235\"",
            "*",
            "\"\"",
            "\"",
            "\"12a4\"",
            "\"-1\"",
            "\"+1\"",
            "\"007\"",
            "\"1 2\"",
            "'1234'",
            "\"10000000000000000\"",
            "\"9223372036854775808\"",
        ] {
            let mut map = HeaderMap::new();
            map.insert(IF_MATCH, HeaderValue::from_static(value));
            let err = condition(&map, true).expect_err(value);
            assert!(matches!(err, ApiError::InvalidRequest(_)), "{value}: {err}");
        }
    }

    #[test]
    fn malformed_if_none_match_is_refused() {
        for value in ["\"1234\"", "W/\"1234\"", "*, \"1\"", "", "**"] {
            let mut map = HeaderMap::new();
            map.insert(IF_NONE_MATCH, HeaderValue::from_static(value));
            let err = condition(&map, true).expect_err(value);
            assert!(
                matches!(err, ApiError::InvalidRequest(_)),
                "{value:?}: {err}"
            );
        }
    }

    #[test]
    fn a_header_sent_twice_is_a_list() {
        let err = parse(&[(IF_MATCH, "\"1\""), (IF_MATCH, "\"2\"")]).unwrap_err();
        assert!(err.contains("once"), "{err}");
        let err = parse(&[(IF_NONE_MATCH, "*"), (IF_NONE_MATCH, "*")]).unwrap_err();
        assert!(err.contains("once"), "{err}");
    }

    #[test]
    fn both_headers_are_refused() {
        let err = parse(&[(IF_MATCH, "\"1\""), (IF_NONE_MATCH, "*")]).unwrap_err();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn a_condition_needs_a_retained_publish() {
        for pairs in [[(IF_MATCH, "\"1\"")], [(IF_NONE_MATCH, "*")]] {
            let err = condition(&headers(&pairs), false).unwrap_err();
            assert!(err.to_string().contains("retain=true"), "{err}");
        }
    }

    #[test]
    fn a_failed_condition_says_which() {
        let topic = TopicName::parse("cfg/a".to_owned(), Default::default()).unwrap();
        let by_revision = (Condition::Revision(42), topic.clone());
        let err = failed(store::Error::ConditionFailed, Some(&by_revision));
        assert!(matches!(err, ApiError::PreconditionFailed(_)), "{err}");
        assert!(
            err.to_string().contains("cfg/a is not revision 42"),
            "{err}"
        );
        let absent = (Condition::Absent, topic);
        let err = failed(store::Error::ConditionFailed, Some(&absent));
        assert!(err.to_string().contains("If-None-Match: *"), "{err}");
        // Other failures keep their own mapping.
        let err = failed(store::Error::Closed, Some(&absent));
        assert!(matches!(err, ApiError::Unavailable(_)), "{err}");
    }

    #[test]
    fn a_non_ascii_value_is_refused() {
        let mut map = HeaderMap::new();
        map.insert(IF_MATCH, HeaderValue::from_bytes(b"\"1\xff\"").unwrap());
        assert!(condition(&map, true).is_err());
    }
}
