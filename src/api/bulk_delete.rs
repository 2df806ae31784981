//! `DELETE /retainedMessage?topicFilter=...&expectedCount=N`: a retaind extension (AWS has no
//! delete operation) that removes every retained message matching an MQTT topic filter, guarded
//! three ways: its own policy action (`retaind:DeleteRetainedMessages`, not in `iot:*`), a
//! count the caller must state (what it was shown, by `dryRun=true`), and a bound on how many
//! one request may delete.
//!
//! Each match is deleted as an HTTP retained publish with an empty payload deletes it, through
//! the broker: the store's delete (cache, change feed to other nodes) and the empty message to
//! current subscribers, on every node of a cluster.

use axum::Json;
use axum::extract::State;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::query::{self, Params};
use super::{ApiError, ApiState, ErrorBody};
use crate::auth::Action;
use crate::broker::{Publication, PublishFrom};
use crate::store::{MessageProperties, Qos};
use crate::topic::{FilterSpec, TopicFilter, TopicName};

/// Most messages one request deletes; a filter matching more is refused (nothing deleted), so
/// a request holds a bounded list of topics and ends in bounded time.
pub const MAX_BULK_DELETE: u64 = 100_000;
/// Topics read from the store per query while counting.
const COUNT_PAGE: u32 = 1000;
/// Deletes in flight at once: they share group commits, so each wave is a few transactions.
const DELETE_WAVE: usize = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct BulkDeleteParams {
    /// The MQTT topic filter whose matching retained messages are deleted (`+` one level,
    /// `#` the rest; a leading wildcard does not match `$` topics; no `$share/`).
    /// Percent-encode it (`+` is `%2B`, `#` is `%23`).
    #[param(
        min_length = 1,
        example = "devices/+/config",
        pattern = r"^(?!\$share/)(\+|[^+#/\u0000]*)(/(\+|[^+#/\u0000]*))*(/#)?$|^#$"
    )]
    topic_filter: String,
    /// How many messages the caller expects the filter to match (what a dry run reported).
    /// Without it (and without `dryRun=true`), or when the filter matches another number,
    /// nothing is deleted (409).
    #[param(value_type = Option<u64>, minimum = 0, maximum = 4_294_967_295_u64)]
    expected_count: Option<String>,
    /// `true`: count the matches, delete nothing.
    #[param(value_type = Option<bool>)]
    dry_run: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkDeleteResponse {
    /// Unexpired retained messages the filter matched when the request counted them.
    pub matched_count: u64,
    /// Messages deleted (0 in a dry run).
    pub deleted_count: u64,
    pub dry_run: bool,
}

/// **retaind extension, not part of the AWS API.** Deletes every retained message matching a
/// topic filter, or with `dryRun=true` counts them.
#[utoipa::path(
    delete,
    path = "/retainedMessage",
    operation_id = "DeleteRetainedMessages",
    tag = "retained messages",
    params(BulkDeleteParams),
    responses(
        (status = 200, body = BulkDeleteResponse),
        (status = 400, description = "InvalidRequestException: missing or invalid topicFilter, invalid expectedCount or dryRun; or the filter matches more than 100,000 messages (narrow it); nothing was deleted", body = ErrorBody),
        (status = 401, description = "UnauthorizedException: no credentials (when principals are configured)", body = ErrorBody),
        (status = 403, description = "ForbiddenException: unknown or wrong credentials, or the policy does not allow retaind:DeleteRetainedMessages on a topicfilter/ covering the filter; without principals, a request naming another host than localhost, a loopback address or --allowed-hosts, or a cross-site browser request; nothing was deleted", body = ErrorBody),
        (status = 409, description = "ConflictException: no expectedCount (and no dryRun=true), or the filter matches another number of messages than expectedCount; nothing was deleted", body = ErrorBody),
        (status = 503, description = "ServiceUnavailableException: the store did not answer; some matches may have been deleted (count again and repeat)", body = ErrorBody),
    )
)]
pub async fn delete_matching(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Params<BulkDeleteParams>, ApiError>,
) -> Result<Json<BulkDeleteResponse>, ApiError> {
    let Params(params) = params?;
    let filter = parse_filter(&params.topic_filter)?;
    caller.authorize_filter(Action::DeleteRetainedMessages, &filter)?;
    let dry_run = query::flag(params.dry_run.as_deref(), "dryRun")?;
    let expected =
        match params.expected_count.as_deref() {
            None if dry_run => None,
            // The guard's condition is unmet rather than the request malformed: the caller
            // has not said how many it means to delete.
            None => {
                return Err(ApiError::Conflict(
                    "expectedCount is required: the number of messages a dryRun=true request \
                     reported; nothing was deleted"
                        .into(),
                ));
            }
            Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
                ApiError::invalid("expectedCount must be a whole number of messages")
            })?),
        };
    let (matched, topics) = matching(&state, &filter, !dry_run).await?;
    if dry_run {
        return Ok(Json(BulkDeleteResponse {
            matched_count: matched,
            deleted_count: 0,
            dry_run,
        }));
    }
    if expected != Some(matched) {
        return Err(ApiError::Conflict(format!(
            "topicFilter {filter} matches {matched} retained messages, not expectedCount {}; \
             nothing was deleted",
            expected.unwrap_or_default()
        )));
    }
    if matched > MAX_BULK_DELETE {
        return Err(ApiError::invalid(format!(
            "topicFilter {filter} matches {matched} retained messages, more than one request \
             deletes ({MAX_BULK_DELETE}); narrow the filter; nothing was deleted"
        )));
    }
    let from = PublishFrom::http(caller.owner());
    let mut deleted = 0;
    for wave in topics.chunks(DELETE_WAVE) {
        let deletes = wave.iter().map(|topic| {
            state
                .broker
                .publish(empty_retained(topic.clone()), from.clone())
        });
        for result in join_all(deletes).await {
            result?;
            deleted += 1;
        }
    }
    tracing::info!(%filter, deleted, "retained messages deleted by filter");
    Ok(Json(BulkDeleteResponse {
        matched_count: matched,
        deleted_count: deleted,
        dry_run,
    }))
}

fn parse_filter(raw: &str) -> Result<TopicFilter, ApiError> {
    match FilterSpec::parse(raw) {
        Ok(FilterSpec::Plain(filter)) => Ok(filter),
        Ok(FilterSpec::Shared { .. }) => Err(ApiError::invalid(
            "topicFilter must be a plain topic filter, not a shared subscription ($share/...)",
        )),
        Err(e) => Err(ApiError::invalid(format!(
            "topicFilter is not a valid MQTT topic filter: {e}"
        ))),
    }
}

/// How many unexpired messages match `filter`, and (when `collect`, up to
/// [`MAX_BULK_DELETE`]) their topics, walking the filter's range of the store.
async fn matching(
    state: &ApiState,
    filter: &TopicFilter,
    collect: bool,
) -> Result<(u64, Vec<TopicName>), ApiError> {
    let (from, until) = filter.scan_range();
    let mut after: Option<TopicName> = None;
    let (mut count, mut topics) = (0u64, Vec::new());
    loop {
        let page = state
            .store
            .list_range(&from, until.as_deref(), after.as_ref(), COUNT_PAGE)
            .await?;
        let full = page.len() == COUNT_PAGE as usize;
        for row in page {
            if filter.matches(&row.topic) {
                count += 1;
                if collect && count <= MAX_BULK_DELETE {
                    topics.push(row.topic.clone());
                }
            }
            after = Some(row.topic);
        }
        if !full {
            return Ok((count, topics));
        }
    }
}

/// What an HTTP `POST /topics/{topic}?retain=true` with an empty body publishes.
fn empty_retained(topic: TopicName) -> Publication {
    Publication {
        topic,
        payload: bytes::Bytes::new(),
        qos: Qos::AtMostOnce,
        retain: true,
        properties: MessageProperties::default(),
        expiry_secs: None,
    }
}
