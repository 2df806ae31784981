//! The service hyper calls for each request of one connection. It tells the connection's
//! [`Activity`] when a request starts and when its response is done, gives the request its
//! body deadline, its [`Peer`] (as `ConnectInfo`, as `axum::serve` would) and, when the target
//! as sent had a `#`, the [`RawFragment`] mark; then hands it to the router.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use tower::ServiceExt;

use super::activity::Activity;
use super::body::{Deadline, Finished, InFlight};
use super::request_line;
use crate::api::Peer;
use crate::api::request_target::RawFragment;

pub(super) struct ConnectionService {
    pub(super) router: Router,
    pub(super) peer: Peer,
    pub(super) activity: Arc<Activity>,
    pub(super) body_timeout: Duration,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Finished>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<Finished>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> ResponseFuture {
        let (in_flight, line) = InFlight::start(self.activity.clone());
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer.clone()));
        if line.is_some_and(|line| {
            request_line::cut_fragment(&line, &parts.method, &parts.uri).is_some()
        }) {
            parts.extensions.insert(RawFragment);
        }
        let body = Body::new(Deadline::new(body, self.body_timeout));
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(Request::from_parts(parts, body)).await?;
            Ok(response.map(|body| Finished::new(body, in_flight)))
        })
    }
}
