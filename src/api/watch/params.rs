//! What a watch request asks for: its topic filter and where it starts. Parsed once here;
//! every refusal is a 400 `InvalidRequestException` naming the parameter.

use axum::http::HeaderMap;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::store::{Revision, WatchStart};
use crate::topic::{FilterSpec, TopicFilter};

/// The query of `GET /retainedMessage-watch`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct WatchParams {
    /// The MQTT topic filter to watch (default `#`, every topic not starting with `$`): `+`
    /// matches one level, `#` the rest. Shared subscriptions (`$share/...`) are refused.
    /// Percent-encode it (`+` is `%2B`, `#` is `%23`).
    #[param(min_length = 1, example = "devices/+/config")]
    topic_filter: Option<String>,
    /// Start after this revision instead of from a snapshot: the changes after it, in revision
    /// order. Decimal digits. A `Last-Event-ID` header takes precedence (a reconnecting
    /// EventSource sends it with the URL it first used).
    #[param(value_type = Option<String>, pattern = "^[0-9]{1,18}$", example = "123456789")]
    from_revision: Option<String>,
    /// `false`: no snapshot; the stream starts with `synced` (the current revision) and gives
    /// the changes after it. For a client that has just listed what it needs. Default `true`;
    /// ignored when resuming (fromRevision or Last-Event-ID).
    #[param(value_type = Option<bool>)]
    snapshot: Option<String>,
}

/// A watch request, parsed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct WatchRequest {
    pub filter: TopicFilter,
    pub start: WatchStart,
}

impl WatchRequest {
    pub(super) fn parse(params: &WatchParams, headers: &HeaderMap) -> Result<Self, String> {
        let filter = match params.topic_filter.as_deref() {
            None => TopicFilter::parse("#").map_err(|e| e.to_string())?,
            Some(raw) => match FilterSpec::parse(raw) {
                Ok(FilterSpec::Plain(filter)) => filter,
                Ok(FilterSpec::Shared { .. }) => {
                    return Err("topicFilter must be a plain topic filter, not a shared \
                                subscription ($share/...)"
                        .to_owned());
                }
                Err(e) => return Err(format!("topicFilter is not a valid MQTT topic filter: {e}")),
            },
        };
        let last_event_id = match headers.get("last-event-id") {
            None => None,
            Some(value) => {
                let value = value
                    .to_str()
                    .map_err(|_| "Last-Event-ID must be a revision (decimal digits)".to_owned())?;
                // An EventSource that has seen no id yet may send it empty: no position.
                (!value.is_empty())
                    .then(|| revision("Last-Event-ID", value))
                    .transpose()?
            }
        };
        let from = match last_event_id {
            Some(from) => Some(from),
            None => params
                .from_revision
                .as_deref()
                .map(|raw| revision("fromRevision", raw))
                .transpose()?,
        };
        let snapshot = match params.snapshot.as_deref() {
            None => true,
            Some(raw) if raw.eq_ignore_ascii_case("true") => true,
            Some(raw) if raw.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err("snapshot must be true or false".to_owned()),
        };
        let start = match from {
            Some(from) => WatchStart::After(from),
            None if snapshot => WatchStart::Snapshot,
            None => WatchStart::Now,
        };
        Ok(Self { filter, start })
    }
}

/// A revision as a client writes it: 1 to 18 decimal digits (every revision fits, and no
/// sign, space or exponent slips through).
fn revision(name: &str, raw: &str) -> Result<Revision, String> {
    if raw.is_empty() || raw.len() > 18 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{name} must be a revision: 1 to 18 decimal digits, as an event's id"
        ));
    }
    raw.parse()
        .map_err(|_| format!("{name} must be a revision: 1 to 18 decimal digits"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn params(filter: Option<&str>, from: Option<&str>) -> WatchParams {
        WatchParams {
            topic_filter: filter.map(str::to_owned),
            from_revision: from.map(str::to_owned),
            snapshot: None,
        }
    }

    fn parse(
        filter: Option<&str>,
        from: Option<&str>,
        last: Option<&str>,
    ) -> Result<WatchRequest, String> {
        let mut headers = HeaderMap::new();
        if let Some(last) = last {
            headers.insert("last-event-id", HeaderValue::from_str(last).unwrap());
        }
        WatchRequest::parse(&params(filter, from), &headers)
    }

    #[test]
    fn without_a_filter_everything_is_watched_from_a_snapshot() {
        let request = parse(None, None, None).unwrap();
        assert_eq!(request.filter.as_str(), "#");
        assert_eq!(request.start, WatchStart::Snapshot);
    }

    #[test]
    fn last_event_id_wins_over_from_revision() {
        assert_eq!(
            parse(None, Some("5"), Some("9")).unwrap().start,
            WatchStart::After(9)
        );
        assert_eq!(
            parse(None, Some("5"), Some("")).unwrap().start,
            WatchStart::After(5)
        );
    }

    #[test]
    fn revisions_are_digits_only() {
        for bad in [
            "",
            "-1",
            "+1",
            "1e3",
            " 1",
            "0x10",
            "1.0",
            "9999999999999999999",
        ] {
            assert!(parse(None, Some(bad), None).is_err(), "{bad:?}");
        }
        assert!(parse(None, None, Some("abc")).is_err());
        assert_eq!(
            parse(None, Some("0"), None).unwrap().start,
            WatchStart::After(0)
        );
    }

    #[test]
    fn snapshot_false_starts_now_unless_resuming() {
        let with = |snapshot: &str, from: Option<&str>| {
            let mut p = params(None, from);
            p.snapshot = Some(snapshot.to_owned());
            WatchRequest::parse(&p, &HeaderMap::new())
        };
        assert_eq!(with("false", None).unwrap().start, WatchStart::Now);
        assert_eq!(with("FALSE", None).unwrap().start, WatchStart::Now);
        assert_eq!(with("true", None).unwrap().start, WatchStart::Snapshot);
        assert_eq!(
            with("false", Some("7")).unwrap().start,
            WatchStart::After(7)
        );
        for bad in ["", "0", "no", "yes"] {
            assert!(with(bad, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shared_and_malformed_filters_are_refused() {
        assert!(parse(Some("$share/g/a"), None, None).is_err());
        assert!(parse(Some("a/#/b"), None, None).is_err());
        assert!(parse(Some(""), None, None).is_err());
    }
}
