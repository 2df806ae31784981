//! `GET /metrics`: the server's metrics in the Prometheus text format (decision 015). With
//! principals, the caller needs `retaind:Metrics`; without, the server listens on loopback
//! only, as for every route.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::{ApiError, ApiState, ErrorBody};
use crate::auth::Action;

/// The server's metrics in the Prometheus text format, version 0.0.4 (see the README for
/// the list). With principals, the caller's policy must allow `retaind:Metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "Metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, description = "UnauthorizedException: no credentials (when principals are configured)", body = ErrorBody),
        (status = 403, description = "ForbiddenException: unknown or wrong credentials, or the policy does not allow retaind:Metrics", body = ErrorBody),
    )
)]
pub async fn metrics(State(state): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    caller.authorize(Action::Metrics, None)?;
    // The store's count is read here, not in a probe: probes cannot wait.
    match state.store.count(None).await {
        Ok(n) => {
            state
                .metrics
                .gauges()
                .retained_messages
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Err(e) => tracing::warn!(error = %e, "the retained count for /metrics could not be read"),
    }
    match state.store.payload_bytes().await {
        Ok(n) => {
            state
                .metrics
                .gauges()
                .retained_bytes
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Err(e) => tracing::warn!(error = %e, "the retained bytes for /metrics could not be read"),
    }
    let page = state.metrics.render();
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], page).into_response())
}
