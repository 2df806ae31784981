//! The OpenAPI description, generated from the handlers' annotations.

use utoipa::OpenApi;

use super::{bulk_delete, connections, error, health, metrics, publish, retained, watch};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "retaind",
        description = "MQTT retained messages over HTTP, wire-compatible with the AWS IoT data plane \
            (ListRetainedMessages, GetRetainedMessage, Publish, DeleteConnection). Errors carry the AWS exception name \
            in the `x-amzn-ErrorType` header and every response carries `x-amzn-RequestId`.",
        license(name = "Apache-2.0")
    ),
    paths(
        retained::list,
        retained::get,
        watch::watch,
        bulk_delete::delete_matching,
        publish::publish,
        connections::delete_connection,
        health::healthz,
        health::readyz,
        metrics::metrics
    ),
    components(schemas(error::ErrorBody))
)]
pub struct ApiDoc;

/// The document served at `/openapi.json` and committed as `openapi/openapi.json`.
pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
