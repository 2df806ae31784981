//! ListRetainedMessages and GetRetainedMessage, and retaind's extension to ListRetainedMessages:
//! narrowing the listing to a topic filter or prefix (see [`list_filter`]).

mod list_filter;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::ETAG;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::precondition;
use super::query::Params;
use super::{ApiError, ApiState, ErrorBody, TopicPath};
use crate::auth::Action;
use crate::store::{PayloadFormat, RetainedMessage, RetainedSummary, UserProperty, Writer};
use crate::topic::TopicName;
use list_filter::{FilteredPage, Selection, WALK_LIMITS};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 200;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    max_results: Option<String>,
    /// The `nextToken` of the previous page (a token this service issued).
    #[param(pattern = "^[A-Za-z0-9_-]*$")]
    next_token: Option<String>,
    /// **retaind extension, not part of the AWS API; AWS SDKs don't send it.** Lists only the
    /// topics matching this MQTT topic filter: `+` matches one level, `#` the rest (including
    /// the parent level: `a/#` matches `a`), and a leading wildcard does not match `$` topics.
    /// Shared subscriptions (`$share/...`) are refused. Percent-encode it: `+` is `%2B` and
    /// `#` is `%23` in a query string. A page may hold fewer than `maxResults` topics, even
    /// none, and still carry a `nextToken`: one request reads at most 10,000 stored topics.
    #[param(
        min_length = 1,
        example = "devices/+/config",
        pattern = r"^(?!\$share/)(\+|[^+#/\u0000]*)(/(\+|[^+#/\u0000]*))*(/#)?$|^#$"
    )]
    topic_filter: Option<String>,
    /// **retaind extension, not part of the AWS API; AWS SDKs don't send it.** Lists only the
    /// topics that start with these characters (a literal prefix, no wildcards; `devices/a`
    /// matches `devices/a/x` and `devices/ab`). With `topicFilter` too, a topic must match
    /// both. Not empty. Pages behave as with `topicFilter`.
    #[param(min_length = 1, example = "devices/", pattern = r"^[^\u0000]+$")]
    topic_prefix: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListRetainedMessagesResponse {
    /// Retained messages in byte order of topic, without payloads.
    pub retained_topics: Vec<RetainedMessageSummary>,
    /// Present when more topics follow; pass it back to get the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetainedMessageSummary {
    pub topic: String,
    /// Payload size in bytes.
    pub payload_size: i64,
    pub qos: u8,
    /// Epoch milliseconds of the last update.
    pub last_modified_time: i64,
    /// **retaind extension, not part of the AWS API** (the SDKs ignore it): the revision of
    /// the message, as GetRetainedMessage's `ETag` shows it.
    pub revision: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GetRetainedMessageResponse {
    pub topic: String,
    /// The payload, base64-encoded.
    #[schema(format = Byte)]
    pub payload: String,
    pub qos: u8,
    /// Epoch milliseconds of the last update.
    pub last_modified_time: i64,
    /// Base64 of a JSON array of single-key objects, e.g. `[{"deviceName":"alpha"}]`; absent
    /// when the message has no user properties.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub user_properties: Option<String>,
    /// **retaind extension, not part of the AWS API** (the SDKs ignore it), as are the fields
    /// below, each absent when the message does not carry it: the MQTT 5 content type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The MQTT 5 response topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    /// The MQTT 5 correlation data, base64-encoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub correlation_data: Option<String>,
    /// `UTF8_DATA` when the message's MQTT 5 payload format indicator says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^UTF8_DATA$")]
    pub payload_format_indicator: Option<String>,
    /// Epoch milliseconds at which the message expires (MQTT 5 message expiry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_expires_at: Option<i64>,
    /// The revision of the message (decision 018): the number in the `ETag` header, which
    /// Publish's `If-Match` may name.
    pub revision: i64,
    /// Who wrote this revision; absent for messages stored before revisions existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer: Option<MessageWriter>,
}

/// Who wrote a revision (**retaind extension**).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageWriter {
    /// The principal the write was charged to; absent when authentication is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The MQTT client id of the publisher (of the Will's client), or `HTTP` for the HTTP API.
    pub client_id: String,
}

/// Lists retained messages, one page at a time.
#[utoipa::path(
    get,
    path = "/retainedMessage",
    operation_id = "ListRetainedMessages",
    tag = "retained messages",
    params(ListParams),
    responses(
        (status = 200, body = ListRetainedMessagesResponse),
        (status = 400, description = "InvalidRequestException: bad maxResults, a nextToken this service did not issue, or an invalid topicFilter or topicPrefix", body = ErrorBody),
        (status = 401, description = "UnauthorizedException: no credentials (when principals are configured)", body = ErrorBody),
        (status = 403, description = "ForbiddenException: unknown or wrong credentials, or the policy does not allow iot:ListRetainedMessages; without principals, a request naming another host than localhost, a loopback address or --allowed-hosts, or a cross-site browser request", body = ErrorBody),
        (status = 429, description = "ThrottlingException: the caller's ListRetainedMessages rate (--rate-list-retained-messages) is used up", body = ErrorBody),
        (status = 503, description = "ServiceUnavailableException", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Params<ListParams>, ApiError>,
) -> Result<Json<ListRetainedMessagesResponse>, ApiError> {
    caller.authorize(Action::ListRetainedMessages, None)?;
    let Params(params) = params?;
    let page_size = match params.max_results.as_deref() {
        None => DEFAULT_PAGE_SIZE,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "maxResults must be an integer from 1 to {MAX_PAGE_SIZE}"
                ))
            })?,
    };
    let after = match params.next_token.as_deref() {
        None | Some("") => None,
        Some(token) => Some(
            state
                .tokens
                .redeem(token)
                .ok_or_else(|| ApiError::invalid("nextToken was not issued by this service"))?,
        ),
    };
    let selection = Selection::parse(
        params.topic_filter.as_deref(),
        params.topic_prefix.as_deref(),
    )
    .map_err(ApiError::invalid)?;
    let (page, next_after) = match selection {
        None => list_all(&state, after, page_size).await?,
        Some(selection) => list_selected(&state, &selection, after, page_size).await?,
    };
    Ok(Json(ListRetainedMessagesResponse {
        retained_topics: page.into_iter().map(RetainedMessageSummary::from).collect(),
        next_token: next_after.map(|topic| state.tokens.issue(&topic)),
    }))
}

/// A page of the plain (AWS) listing, and the topic the next page starts after, if any.
async fn list_all(
    state: &ApiState,
    after: Option<TopicName>,
    page_size: u32,
) -> Result<(Vec<RetainedSummary>, Option<TopicName>), ApiError> {
    // One extra row tells whether another page follows without a second query.
    let mut page = state.store.list(after.as_ref(), page_size + 1).await?;
    if page.len() > page_size as usize {
        page.truncate(page_size as usize);
        let next_after = page.last().map(|last| last.topic.clone());
        Ok((page, next_after))
    } else {
        Ok((page, None))
    }
}

/// A page of the listing narrowed to `selection`, read from the store range that holds it.
async fn list_selected(
    state: &ApiState,
    selection: &Selection,
    after: Option<TopicName>,
    page_size: u32,
) -> Result<(Vec<RetainedSummary>, Option<TopicName>), ApiError> {
    let (from, until) = selection.range();
    let mut page = FilteredPage::new(selection, page_size, after, WALK_LIMITS);
    while let Some((after, limit)) = page.next_read() {
        let rows = state
            .store
            .list_range(&from, until.as_deref(), after, limit)
            .await?;
        page.take(rows);
    }
    Ok(page.finish())
}

/// Gets the retained message of one topic, payload included.
#[utoipa::path(
    get,
    path = "/retainedMessage/{topic}",
    operation_id = "GetRetainedMessage",
    tag = "retained messages",
    params(("topic" = String, Path, description = "The topic, percent-encoded as one path segment (`a%2Fb`); literal slashes are accepted too. At most 256 UTF-8 bytes and 8 levels (the defaults of --max-topic-bytes and --max-topic-levels), no `+`, `#` or U+0000", min_length = 1, max_length = 256, pattern = r"^[^+#/\u0000]*(/[^+#/\u0000]*){0,7}$")),
    responses(
        (status = 200, body = GetRetainedMessageResponse, headers(("ETag" = String, description = "**retaind extension.** The message's revision as a strong entity tag, `\"<digits>\"` (the JSON `revision` quoted): send it back as Publish's If-Match to replace or delete this message only if no one changed it since"))),
        (status = 400, description = "InvalidRequestException: not a valid topic name", body = ErrorBody),
        (status = 401, description = "UnauthorizedException: no credentials (when principals are configured)", body = ErrorBody),
        (status = 403, description = "ForbiddenException: unknown or wrong credentials, or the policy does not allow iot:GetRetainedMessage on the topic; without principals, a request naming another host than localhost, a loopback address or --allowed-hosts, or a cross-site browser request", body = ErrorBody),
        (status = 404, description = "ResourceNotFoundException: no retained message on this topic", body = ErrorBody),
        (status = 429, description = "ThrottlingException: the caller's GetRetainedMessage rate (--rate-get-retained-message) is used up", body = ErrorBody),
        (status = 503, description = "ServiceUnavailableException", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    TopicPath(topic): TopicPath,
) -> Result<
    (
        [(axum::http::HeaderName, HeaderValue); 1],
        Json<GetRetainedMessageResponse>,
    ),
    ApiError,
> {
    caller.authorize(Action::GetRetainedMessage, Some(&topic))?;
    match state.store.get(topic.clone()).await? {
        Some(msg) => Ok((
            [(ETAG, precondition::etag(msg.revision))],
            Json((&msg).into()),
        )),
        None => Err(ApiError::NotFound(format!(
            "no retained message on topic {topic}"
        ))),
    }
}

impl From<RetainedSummary> for RetainedMessageSummary {
    fn from(s: RetainedSummary) -> Self {
        Self {
            topic: s.topic.to_string(),
            payload_size: s.payload_size,
            qos: s.qos.as_u8(),
            last_modified_time: s.last_modified_ms,
            revision: s.revision,
        }
    }
}

impl From<&RetainedMessage> for GetRetainedMessageResponse {
    fn from(m: &RetainedMessage) -> Self {
        let props = &m.properties;
        Self {
            payload: STANDARD.encode(&m.payload),
            qos: m.qos.as_u8(),
            last_modified_time: m.last_modified_ms,
            user_properties: aws_user_properties(&props.user_properties),
            content_type: props.content_type.clone(),
            response_topic: props.response_topic.as_ref().map(|t| t.to_string()),
            correlation_data: props.correlation_data.as_ref().map(|c| STANDARD.encode(c)),
            payload_format_indicator: (props.payload_format == PayloadFormat::Utf8)
                .then(|| "UTF8_DATA".to_owned()),
            message_expires_at: m.expires_at_ms,
            revision: m.revision,
            writer: m.writer.as_ref().map(MessageWriter::from),
            topic: m.topic.to_string(),
        }
    }
}

impl From<&Writer> for MessageWriter {
    fn from(w: &Writer) -> Self {
        Self {
            principal: (!w.principal.is_empty()).then(|| w.principal.to_string()),
            client_id: w.client.to_string(),
        }
    }
}

/// AWS's wire form: base64 of `[{"key":"value"}, ...]`, one object per property.
fn aws_user_properties(props: &[UserProperty]) -> Option<String> {
    if props.is_empty() {
        return None;
    }
    let objects: Vec<serde_json::Value> = props
        .iter()
        .map(|p| serde_json::json!({ p.key.as_str(): p.value.as_str() }))
        .collect();
    Some(STANDARD.encode(serde_json::to_vec(&objects).expect("JSON values always serialize")))
}
