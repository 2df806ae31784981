//! The one place that knows AWS error names and HTTP statuses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::store;
use crate::topic::TopicError;

/// Every failure the HTTP API reports, named after the AWS IoT data-plane exception it becomes.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The caller could not be authenticated: the status and AWS name come from the cause.
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
    /// The caller is known but its policy does not allow the operation.
    #[error("{0}")]
    Forbidden(String),
    /// The request's precondition does not hold (a bulk delete's expected count).
    #[error("{0}")]
    Conflict(String),
    /// A conditional write's `If-Match` or `If-None-Match` does not hold; nothing was stored.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    UnknownOperation(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("the payload is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The request head was over hyper's limits (answered for hyper, see `server::refusal`).
    #[error("the request head is too large: at most {max_headers} headers in {max_bytes} bytes")]
    HeadTooLarge {
        max_headers: usize,
        max_bytes: usize,
    },
    /// The request target was over hyper's limit (answered for hyper, see `server::refusal`).
    #[error("the request target (path and query) is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    /// The body did not arrive within `--http-body-timeout` of the request's head.
    #[error("the request body did not arrive within {} seconds; nothing was stored", .0.as_secs_f64())]
    RequestTimeout(std::time::Duration),
    /// The caller exceeded its request rate for the operation named.
    #[error("rate exceeded for {0}; retry later")]
    Throttled(&'static str),
    #[error("the service is unavailable; retry later")]
    Unavailable(#[source] store::Error),
    #[error("internal failure")]
    Internal(#[source] store::Error),
    #[error("internal error: the server logged it with this response's x-amzn-RequestId")]
    Panicked,
    /// Another node of the service could not be asked for what the request needs; the cause
    /// (node ids, database errors) goes to the log only.
    #[error(
        "the node the client is connected to could not be asked; the server logged why with \
         this response's x-amzn-RequestId"
    )]
    PeerFailure(String),
    /// The node holds as many watches as `--max-watches` allows.
    #[error("this node already holds {0} watches (--max-watches); retry later or on another node")]
    TooManyWatches(usize),
    /// The caller's principal holds as many watches on this node as its `max_watches` allows.
    #[error(
        "the caller holds {0} watches on this node already, its principal's max_watches; \
         close one or retry later"
    )]
    PrincipalWatches(usize),
    /// A part the service needs besides the store is missing (`/readyz`).
    #[error("{0}")]
    NotReady(&'static str),
}

/// The body of every error response, as the AWS SDKs parse it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    pub message: String,
}

impl ApiError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidRequest(msg.into())
    }

    /// The status and the AWS error name (`x-amzn-ErrorType`).
    pub(super) fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "InvalidRequestException"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "ResourceNotFoundException"),
            Self::Unauthenticated(cause) => (
                StatusCode::from_u16(cause.http_status()).unwrap_or(StatusCode::FORBIDDEN),
                cause.aws_error_type(),
            ),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "ForbiddenException"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "ConflictException"),
            Self::PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailedException",
            ),
            Self::UnknownOperation(_) => (StatusCode::NOT_FOUND, "UnknownOperationException"),
            Self::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowedException")
            }
            Self::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLargeException",
            ),
            // The AWS name closest in meaning: the SDKs raise it by name whatever the status.
            Self::HeadTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "RequestEntityTooLargeException",
            ),
            Self::UriTooLong { .. } => (StatusCode::URI_TOO_LONG, "RequestEntityTooLargeException"),
            // The SDKs' standard retry mode retries this name as a transient error.
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "RequestTimeoutException"),
            Self::Throttled(_) | Self::PrincipalWatches(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "ThrottlingException")
            }
            Self::Unavailable(_) | Self::NotReady(_) | Self::TooManyWatches(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
            ),
            Self::Internal(_) | Self::Panicked | Self::PeerFailure(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailureException",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, name) = self.parts();
        if let Self::Unavailable(cause) | Self::Internal(cause) = &self {
            // The cause goes to the log, never to the client.
            // The store logged the failure (in summary, so that an outage does not write a line
            // per request); the access log has this request's status and id.
            tracing::debug!(error = %cause, kind = name, "request failed");
        }
        if let Self::PeerFailure(cause) = &self {
            tracing::warn!(error = %cause, "request failed");
        }
        let mut response = (
            status,
            Json(ErrorBody {
                message: self.to_string(),
            }),
        )
            .into_response();
        // botocore reads the exception name from this header (text before ':').
        response
            .headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_static(name));
        response
    }
}

impl From<store::Error> for ApiError {
    fn from(err: store::Error) -> Self {
        match err {
            store::Error::Unavailable(_) | store::Error::Closed => Self::Unavailable(err),
            // The edge refuses every value the stores cannot hold, so a value the database
            // refused is retaind's fault, not the caller's: 500, with the cause in the log.
            store::Error::Internal(_) | store::Error::Refused(_) | store::Error::Config(_) => {
                Self::Internal(err)
            }
            // Not a throttle: waiting does not help, so nothing an SDK retries by itself.
            store::Error::QuotaExceeded(_) => {
                Self::InvalidRequest(format!("{err}; nothing was stored"))
            }
            store::Error::ConditionFailed => Self::PreconditionFailed(format!(
                "{err}: its revision is not the one If-Match names, or If-None-Match: * found \
                 one; nothing was stored"
            )),
        }
    }
}

impl From<TopicError> for ApiError {
    fn from(err: TopicError) -> Self {
        Self::InvalidRequest(err.to_string())
    }
}
