//! The 429 `ThrottlingException` of the AWS operations: [`throttle`] runs after
//! authentication and before the handler, so a throttled request stores nothing. Each route
//! names its operation where the router is built ([`RouteThrottle`]); the buckets are in
//! `rates`.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::payload::drain;
use super::rates::{Operation, Throttle};
use super::{ApiError, auth};
use crate::metrics::Metrics;

/// What the throttle of one route needs: the buckets, and which operation the route is.
#[derive(Clone)]
pub struct RouteThrottle {
    pub throttle: Throttle,
    pub operation: Operation,
    pub metrics: Metrics,
}

/// Answers 429 `ThrottlingException` when the caller has used up its rate for the route's
/// operation; runs inside [`auth::authenticate`], so the caller is known.
pub async fn throttle(State(route): State<RouteThrottle>, req: Request, next: Next) -> Response {
    let op = route.operation;
    let principal = auth::principal_name(req.extensions());
    if route.throttle.admit(op, principal, Instant::now()) {
        return next.run(req).await;
    }
    tracing::debug!(operation = op.name(), principal, "throttled");
    route.metrics.http_throttled(op.name());
    // Refused before the handler: nothing is read into the store. The body is drained so the
    // client's connection survives for its retry: see `payload`.
    drain(req.into_body()).await;
    ApiError::Throttled(op.name()).into_response()
}
