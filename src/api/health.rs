//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The store answers, and so does NATS when the node is one of many; a load balancer should
/// send traffic here only while this is 200.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "ServiceUnavailableException: the store does not answer, or the node lost NATS and cannot reach the other nodes", body = ErrorBody),
    )
)]
pub async fn readyz(State(state): State<ApiState>) -> Result<Json<Health>, ApiError> {
    state.store.ping().await?;
    if state.broker.cluster().is_some_and(|c| !c.is_connected()) {
        return Err(ApiError::NotReady(
            "cluster: disconnected: this node cannot reach NATS, so it cannot reach the other nodes",
        ));
    }
    Ok(Json(Health { status: "ready" }))
}
