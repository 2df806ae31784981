//! Request ids and the access log: every response carries `x-amzn-RequestId`, and every
//! request produces one log line with its client's address (the one a load balancer's PROXY
//! protocol header named, behind one), method, route, status, latency and that id. The checks
//! every request must pass before routing run here too.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::payload::drain;
use super::{ApiError, ApiState, Peer, browser, request_target};

/// The id of the request being served; also the `traceId` Publish answers with.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The route template that served a response (`/topics/{*topic}`), so logs group requests by
/// route rather than by topic.
#[derive(Clone)]
struct Route(Arc<str>);

/// Runs around every request, matched or not: gives it its id, refuses what no route may see
/// (a host name this server does not answer for, a raw `#` in the target), and writes its
/// access-log line. One layer for all of it, because each `from_fn` layer costs every request
/// a clone of the router inside it and a boxed future.
pub async fn request_context(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    let id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
    let method = req.method().clone();
    let peer = Peer::of(req.extensions()).map(|p| p.addr);
    let started = Instant::now();
    req.extensions_mut().insert(RequestId(id.clone()));
    // Every line logged while the request is served carries its id.
    let span = tracing::info_span!("http", request_id = %id);
    let refusal = span.in_scope(|| {
        browser::host_refusal(&state, &req).or_else(|| request_target::fragment_refusal(&req))
    });
    let mut res = match refusal {
        None => next.run(req).instrument(span.clone()).await,
        Some(err) => {
            drain(req.into_body()).instrument(span.clone()).await;
            err.into_response()
        }
    };
    res.headers_mut().insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&id).expect("a UUID is a valid header value"),
    );
    let route = res
        .extensions()
        .get::<Route>()
        .map_or("(unmatched)", |r| &r.0);
    let took = started.elapsed();
    state
        .metrics
        .http_request(operation(route), res.status().as_u16(), took);
    tracing::info!(
        request_id = %id,
        peer = peer.as_ref().map(tracing::field::display),
        method = %method,
        route,
        status = res.status().as_u16(),
        latency_us = took.as_micros() as u64,
        "request"
    );
    res
}

/// A handler panicked: the client gets a 500 `InternalFailureException` (with this request's
/// `x-amzn-RequestId`, added on the way out), not a dropped connection, and the log says what
/// panicked, within the request's span.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a handler panicked; answered 500");
    ApiError::Panicked.into_response()
}

/// What `/metrics` counts a route's requests as: the AWS operation it serves, or else its
/// template (a bounded set either way).
fn operation(route: &str) -> &str {
    match route {
        "/retainedMessage" => "ListRetainedMessages",
        "/retainedMessage/" | "/retainedMessage/{*topic}" => "GetRetainedMessage",
        "/topics/" | "/topics/{*topic}" => "Publish",
        "/retainedMessage-watch" => "WatchRetainedMessages",
        "/connections/" | "/connections/{clientId}" => "DeleteConnection",
        other => other,
    }
}

/// Runs inside matched routes only, where axum knows the route template.
pub async fn record_route(matched: MatchedPath, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    res.extensions_mut().insert(Route(matched.as_str().into()));
    res
}
