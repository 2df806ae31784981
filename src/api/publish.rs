//! Publish: `POST /topics/{topic}`. A retained publish is committed before the 200.

use axum::extract::State;
use axum::http::header::ETAG;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::AppendHeaders;
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::mqtt5_headers::{self, CORRELATION_DATA, PAYLOAD_FORMAT, USER_PROPERTIES};
use super::payload::Payload;
use super::precondition;
use super::query::{self, Params};
use super::{ApiError, ApiState, ErrorBody, RequestId, TopicPath};
use crate::auth::Action;
use crate::broker::{Publication, PublishFrom};
use crate::store::{MessageProperties, PayloadFormat, Qos};
use crate::topic::{TopicLimits, TopicName};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PublishParams {
    /// 0, 1 or 2 (default 0). AWS accepts 0 and 1; retaind's broker also serves 2.
    #[param(value_type = Option<u8>, minimum = 0, maximum = 2)]
    qos: Option<String>,
    /// `true` stores the message as the topic's retained message; with an empty body it deletes it.
    #[param(value_type = Option<bool>)]
    retain: Option<String>,
    /// MQTT 5 content type (a UTF-8 string, e.g. a MIME type).
    #[param(pattern = r"^[^\u0000]*$")]
    content_type: Option<String>,
    /// MQTT 5 response topic: a topic name, as the topic (no wildcards, within the same limits).
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^+#/\u0000]*(/[^+#/\u0000]*){0,7}$"
    )]
    response_topic: Option<String>,
    /// MQTT 5 message expiry in seconds; 0 or absent means the message never expires.
    #[param(value_type = Option<u32>, minimum = 0)]
    message_expiry: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishResponse {
    pub message: String,
    /// The request id, also sent as `x-amzn-RequestId`.
    pub trace_id: String,
}

/// Reads a publish request into what the broker publishes, every field checked.
fn publication(
    topic: TopicName,
    params: PublishParams,
    headers: &HeaderMap,
    payload: Bytes,
    limits: TopicLimits,
) -> Result<Publication, ApiError> {
    let qos = match params.qos.as_deref() {
        None => Qos::AtMostOnce,
        Some(raw) => raw
            .parse::<u8>()
            .ok()
            .and_then(Qos::from_u8)
            .ok_or_else(|| ApiError::invalid("qos must be 0, 1 or 2"))?,
    };
    let retain = query::flag(params.retain.as_deref(), "retain")?;
    let expiry_secs = match params.message_expiry.as_deref() {
        None => None,
        Some(raw) => match raw.parse::<u32>() {
            Ok(0) => None,
            Ok(secs) => Some(secs),
            Err(_) => {
                return Err(ApiError::invalid(format!(
                    "messageExpiry must be a whole number of seconds from 0 to {}",
                    u32::MAX
                )));
            }
        },
    };
    let response_topic = params
        .response_topic
        .map(|raw| TopicName::parse(raw, limits))
        .transpose()
        .map_err(|e| ApiError::invalid(format!("responseTopic: {e}")))?;
    let header = |name: &str| -> Result<Option<&str>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| ApiError::invalid(format!("{name} must be ASCII")))
            })
            .transpose()
    };
    let properties = MessageProperties {
        user_properties: header(USER_PROPERTIES)?
            .map(mqtt5_headers::user_properties)
            .transpose()?
            .unwrap_or_default(),
        payload_format: header(PAYLOAD_FORMAT)?
            .map(mqtt5_headers::payload_format)
            .transpose()?
            .unwrap_or_default(),
        correlation_data: header(CORRELATION_DATA)?
            .map(mqtt5_headers::correlation_data)
            .transpose()?,
        content_type: params.content_type,
        response_topic,
    };
    if properties.payload_format == PayloadFormat::Utf8 && std::str::from_utf8(&payload).is_err() {
        // MQTT 5 receivers may reject such a message (0x99); refuse it here, at the source.
        return Err(ApiError::invalid(
            "payload is declared UTF8_DATA but is not valid UTF-8",
        ));
    }
    if retain && topic.is_reserved() {
        return Err(ApiError::invalid(
            "retained messages cannot be stored on topics that start with '$'",
        ));
    }
    Ok(Publication {
        topic,
        payload,
        qos,
        retain,
        properties,
        expiry_secs,
    })
}

/// Publishes a message to a topic; with `retain=true` it becomes (or, empty, removes) the
/// topic's retained message, durably, before the response.
#[utoipa::path(
    post,
    path = "/topics/{topic}",
    operation_id = "Publish",
    tag = "publish",
    params(
        ("topic" = String, Path, description = "The topic, percent-encoded as one path segment (`a%2Fb`); literal slashes are accepted too. At most 256 UTF-8 bytes and 8 levels (the defaults of --max-topic-bytes and --max-topic-levels), no `+`, `#` or U+0000; with retain=true, not starting with `$`", min_length = 1, max_length = 256, pattern = r"^[^+#/\u0000]*(/[^+#/\u0000]*){0,7}$"),
        PublishParams,
        ("x-amz-mqtt5-user-properties" = Option<String>, Header, nullable = false, description = "Base64 of a JSON array of single-key objects with string values, e.g. `[{\"deviceName\":\"alpha\"}]`; at most 8 KiB as MQTT 5 frames them (5 bytes per property besides its key and value), no U+0000", pattern = r"^[A-Za-z0-9+/]*={0,2}$"),
        ("x-amz-mqtt5-payload-format-indicator" = Option<String>, Header, nullable = false, description = "`UNSPECIFIED_BYTES` or `UTF8_DATA`; `UTF8_DATA` requires a payload that is UTF-8", pattern = "^(UNSPECIFIED_BYTES|UTF8_DATA)$"),
        ("x-amz-mqtt5-correlation-data" = Option<String>, Header, nullable = false, description = "Base64 (standard, padded) of at most 65,535 bytes of correlation data", max_length = 87_380, pattern = r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "**retaind extension, not part of the AWS API.** Store (or, with an empty body, delete) the retained message only if the topic's retained message is the one with this revision: its `ETag` as GetRetainedMessage or a retained Publish answered it, one strong entity tag of at most 16 decimal digits in double quotes. Needs retain=true; not with If-None-Match. If the topic holds another revision, or none: 412 and nothing stored or delivered. Weak tags (`W/`), lists, `*` and unquoted values are 400", pattern = r#"^"(0|[1-9][0-9]{0,15})"$"#),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "**retaind extension, not part of the AWS API.** `*`: store only if the topic has no retained message (create-only); with an empty body, succeed only if there is none to delete. Needs retain=true; not with If-Match. If the topic has a retained message: 412 and nothing stored or delivered. Any other value is 400", pattern = r"^\*$"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The payload bytes; empty with retain=true deletes the retained message"),
    responses(
        (status = 200, body = PublishResponse, headers(("ETag" = String, description = "**retaind extension.** On a retained publish that stored a message (not a delete, not a non-retained publish): its revision, `\"<digits>\"`, the value GetRetainedMessage's ETag will show and If-Match may name. Absent when a later write replaced the message before this one was answered"))),
        (status = 400, description = "InvalidRequestException: invalid topic, parameter or header (a malformed If-Match or If-None-Match, both at once, or either without retain=true); or a retained publish that would exceed the quota on stored retained messages (--max-retained-messages, or the principal's max_retained_messages), in which case nothing was stored", body = ErrorBody),
        (status = 401, description = "UnauthorizedException: no credentials (when principals are configured)", body = ErrorBody),
        (status = 403, description = "ForbiddenException: unknown or wrong credentials, or the policy does not allow iot:Publish (and, with retain=true, iot:RetainPublish) on the topic; a topic under `$SYS` (the broker's own status, whatever the policy); without principals, a request naming another host than localhost, a loopback address or --allowed-hosts, or a cross-site browser request", body = ErrorBody),
        (status = 408, description = "RequestTimeoutException: the body did not arrive within --http-body-timeout of the request's head; nothing was stored", body = ErrorBody),
        (status = 412, description = "PreconditionFailedException (retaind extension): If-Match named another revision than the topic's retained message has (or it has none), or If-None-Match: * found one; nothing was stored or delivered", body = ErrorBody),
        (status = 413, description = "RequestEntityTooLargeException: payload over the configured limit", body = ErrorBody),
        (status = 429, description = "ThrottlingException: the caller's Publish rate (--rate-publish) is used up; nothing was stored", body = ErrorBody),
        (status = 503, description = "ServiceUnavailableException: the store did not answer, or has no room (a full disk); the publish may or may not have been stored (one refused for room was not)", body = ErrorBody),
    )
)]
pub async fn publish(
    State(state): State<ApiState>,
    Extension(request_id): Extension<RequestId>,
    caller: Caller,
    topic: Result<TopicPath, ApiError>,
    params: Result<Params<PublishParams>, ApiError>,
    headers: HeaderMap,
    Payload(payload): Payload,
) -> Result<
    (
        AppendHeaders<Option<(HeaderName, HeaderValue)>>,
        Json<PublishResponse>,
    ),
    ApiError,
> {
    // Everything is checked only once the body has been read: an answer sent while the client
    // is still sending would make the server drop the connection under the client's next
    // request (boto3 reuses connections).
    let TopicPath(topic) = topic?;
    let Params(params) = params?;
    let publish = publication(topic, params, &headers, payload, state.topic_limits)?;
    let condition = precondition::condition(&headers, publish.retain)?;
    // As on AWS, a retained publish needs both actions.
    caller.authorize(Action::Publish, Some(&publish.topic))?;
    if publish.retain {
        caller.authorize(Action::RetainPublish, Some(&publish.topic))?;
    }
    if publish.topic.is_broker_status() {
        // As over MQTT: the broker alone publishes its status there, whatever the policy.
        return Err(ApiError::Forbidden(
            "topics under $SYS are the broker's own status: no client may publish to them".into(),
        ));
    }
    // Only a put leaves a message whose revision a later If-Match can name; a delete's
    // revision is a tombstone's.
    let put = publish.retain && !publish.payload.is_empty();
    let from = PublishFrom {
        condition,
        ..PublishFrom::http(caller.owner())
    };
    let asked = condition.map(|c| (c, publish.topic.clone()));
    let revision = state
        .broker
        .publish(publish, from)
        .await
        .map_err(|e| precondition::failed(e, asked.as_ref()))?;
    let etag = revision
        .filter(|_| put)
        .map(|r| (ETAG, precondition::etag(r)));
    Ok((
        AppendHeaders(etag),
        Json(PublishResponse {
            message: "OK".into(),
            trace_id: request_id.0.to_string(),
        }),
    ))
}
