//! The Publish body: read up to the configured limit, never buffered beyond it.
//!
//! An oversized body is answered with 413 *after* its remaining bytes have been read and thrown
//! away (up to [`DRAIN_LIMIT`]). Clients such as boto3 send the whole body before they read the
//! response; closing the connection on them mid-body surfaces as a broken pipe and a retry loop
//! instead of `RequestEntityTooLargeException`. Past the drain limit the connection is closed:
//! reading gigabytes to be polite is not worth it.

use axum::body::Body;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_LENGTH, EXPECT};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::ApiError;
use super::server::BodyTimeout;

/// Most bytes read and discarded from an oversized body before answering 413.
pub const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// The configured payload limit, as handlers' state provides it.
#[derive(Debug, Clone, Copy)]
pub struct MaxPayload(pub usize);

pub struct Payload(pub Bytes);

impl<S> FromRequest<S> for Payload
where
    S: Send + Sync,
    MaxPayload: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let MaxPayload(limit) = MaxPayload::from_ref(state);
        let (parts, body) = req.into_parts();
        read_limited(&parts.headers, body, limit).await.map(Self)
    }
}

/// Reads a whole body of at most `limit` bytes; a larger one is 413 (after draining it, as the
/// module documentation explains). Also used by authentication, which must hash the body
/// before any handler runs.
pub(super) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = ApiError::TooLarge { limit };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A client that asked "100-continue" has not sent the body and will not: answer now.
    let waits_for_continue = headers.contains_key(EXPECT);
    if declared.is_some_and(|n| n > limit as u64) {
        if !waits_for_continue && declared.is_some_and(|n| n <= DRAIN_LIMIT as u64) {
            drain(body).await;
        }
        return Err(too_large);
    }
    let mut stream = body.into_data_stream();
    let mut payload = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(read_error)?;
        if payload.len() + chunk.len() > limit {
            drain(Body::from_stream(stream)).await;
            return Err(too_large);
        }
        payload.extend_from_slice(&chunk);
    }
    Ok(payload.freeze())
}

/// A body that stopped short: too slow (`--http-body-timeout`, 408), or broken.
fn read_error(err: axum::Error) -> ApiError {
    match std::error::Error::source(&err).and_then(|e| e.downcast_ref::<BodyTimeout>()) {
        Some(BodyTimeout(timeout)) => ApiError::RequestTimeout(*timeout),
        None => ApiError::invalid(format!("could not read the request body: {err}")),
    }
}

/// Reads and discards a body (up to [`DRAIN_LIMIT`]), so that an error answered before the
/// body was needed leaves the connection usable for the client's next request.
pub(super) async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        read += chunk.len();
        if read > DRAIN_LIMIT {
            return;
        }
    }
}
