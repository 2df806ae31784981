//! The HTTP API: the AWS IoT data-plane operations for retained messages, health probes, the
//! OpenAPI document with its browsable UI, and the web console's files.
//!
//! MQTT over WebSocket (`/mqtt`) is handed to the broker once upgraded.
//!
//! Handlers translate between HTTP and the store or broker; AWS error names live in [`error`] alone.
//! Who may call is decided in [`auth`]: credentials in a middleware, policies per handler.
//! How often each caller may call is [`throttle`]'s, in a middleware after `auth`'s.
//! This module must not reach into the database directly.

mod auth;
mod browser;
mod bulk_delete;
mod connections;
mod console;
mod error;
mod health;
mod hosts;
mod incoming;
mod metrics;
mod mqtt5_headers;
mod mqtt_websocket;
mod openapi;
mod page_token;
mod payload;
mod peer;
mod precondition;
mod publish;
mod query;
mod rates;
mod request_context;
mod request_target;
mod retained;
mod server;
mod state;
mod throttle;
mod topic_path;
mod watch;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Uri};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{MethodRouter, delete, get, post};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_swagger_ui::SwaggerUi;

pub use bulk_delete::{BulkDeleteResponse, MAX_BULK_DELETE};
pub use error::{ApiError, ErrorBody};
pub use hosts::AllowedHosts;
pub use incoming::HttpIncoming;
pub use openapi::spec;
pub use page_token::PageTokens;
pub use peer::{Peer, Transport};
use rates::Operation::{
    DeleteConnection, GetRetainedMessage, ListRetainedMessages, Publish, WatchRetainedMessages,
};
pub use rates::{RateLimits, Throttle};
pub use request_context::RequestId;
pub use server::{HttpTimeouts, places as http_places, serve};
pub use state::{ApiState, Shared};
use throttle::RouteThrottle;
use topic_path::TopicPath;
pub use watch::{WatchSettings, Watches};

pub fn router(state: ApiState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] with `extra` routes served under the same layers (request ids and logs, metrics,
/// the host and target checks, panics answered as 500): for tests.
pub fn router_with(state: ApiState, extra: Router<ApiState>) -> Router {
    // The AWS operations need credentials when principals are configured. The probes, the
    // OpenAPI document, the console's files (which hold no data) and its session-info (which
    // says only whether to sign in) do not; MQTT over WebSocket authenticates in its CONNECT,
    // like MQTT over TCP, or by a presigned upgrade URL it checks itself. See decisions 007
    // and 008. Without principals, a browser may not use either for another site's page, and
    // no route answers for a host name that is not this machine's (see `browser`).
    // Each AWS route counts against its operation's rate, checked after credentials (or,
    // without principals, the cross-site rule): layers run last-added first.
    let op = |operation, route: MethodRouter<ApiState>| {
        let rate = RouteThrottle {
            throttle: state.throttle.clone(),
            operation,
            metrics: state.metrics.clone(),
        };
        route.route_layer(from_fn_with_state(rate, throttle::throttle))
    };
    let operations = Router::new()
        .route(
            "/retainedMessage",
            // The bulk delete is retaind's own (no AWS rate applies); guarded by its action.
            op(ListRetainedMessages, get(retained::list)).delete(bulk_delete::delete_matching),
        )
        .route(
            "/retainedMessage/",
            op(GetRetainedMessage, get(empty_topic)),
        )
        .route(
            "/retainedMessage/{*topic}",
            op(GetRetainedMessage, get(retained::get)),
        )
        .route(
            "/retainedMessage-watch",
            op(WatchRetainedMessages, get(watch::watch)),
        )
        .route(
            "/connections/{clientId}",
            op(DeleteConnection, delete(connections::delete_connection)),
        )
        .route(
            "/connections/",
            op(DeleteConnection, delete(empty_client_id)),
        )
        .route("/topics/", op(Publish, post(empty_topic)))
        .route("/topics/{*topic}", op(Publish, post(publish::publish)))
        // Not an AWS operation, so not throttled; guarded like one (`retaind:Metrics`).
        .route("/metrics", get(metrics::metrics))
        .route_layer(from_fn_with_state(state.clone(), auth::authenticate));
    let websocket = Router::new()
        .route("/mqtt", get(mqtt_websocket::upgrade))
        .route_layer(from_fn_with_state(
            state.clone(),
            browser::refuse_cross_site,
        ));
    Router::new()
        .merge(operations)
        .merge(websocket)
        .merge(extra)
        .route("/", get(console::index))
        .route("/console/session-info", get(console::session_info))
        .route("/console/{file}", get(console::asset))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        // A panic in a route is answered inside `record_route`, so its 500 is counted under
        // its operation; the outer layer below answers one anywhere else (the fallbacks).
        .route_layer(CatchPanicLayer::custom(request_context::panicked))
        .route_layer(from_fn(request_context::record_route))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec()))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        // Inside `request_context`: the 500 gets the request's id and access-log line.
        .layer(CatchPanicLayer::custom(request_context::panicked))
        .layer(from_fn_with_state(
            state.clone(),
            request_context::request_context,
        ))
        .with_state(state)
}

// The handlers below answer without needing the body, but read it anyway: see `payload::drain`.

async fn empty_topic(body: Body) -> ApiError {
    payload::drain(body).await;
    crate::topic::TopicError::Empty.into()
}

async fn empty_client_id(body: Body) -> ApiError {
    payload::drain(body).await;
    ApiError::invalid("the client id is empty")
}

async fn unknown_route(method: Method, uri: Uri, body: Body) -> ApiError {
    payload::drain(body).await;
    ApiError::UnknownOperation(format!("no operation at {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri, body: Body) -> ApiError {
    payload::drain(body).await;
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
