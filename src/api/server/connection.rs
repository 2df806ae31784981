//! Drives one HTTP/1.1 connection: hyper serves it, and this closes it when its phase's
//! deadline passes ([`super::phase`], watched by a small task of its own), starts hyper's
//! graceful shutdown when the server stops, and drops it when the shutdown deadline passes.

use std::pin::pin;
use std::sync::Arc;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::activity::Activity;
use super::io::ObservedIo;
use super::phase::HttpTimeouts;
use super::refusal::{MAX_HEAD_BYTES, MAX_HEADERS};
use super::service::ConnectionService;
use crate::api::Peer;
use crate::tcp::proxy::ProxyProtocol;
use crate::tcp::slots::Places;

/// What every connection of a server shares.
#[derive(Clone)]
pub(super) struct Settings {
    pub(super) router: Router,
    pub(super) timeouts: HttpTimeouts,
    pub(super) places: Places,
    /// The PROXY protocol header to read first, from the balancers it names.
    pub(super) proxy: Option<ProxyProtocol>,
}

/// When the server is stopping: first `graceful` (finish what is in flight, take nothing new),
/// then `now` (drop the connection).
#[derive(Clone)]
pub(super) struct Stopping {
    pub(super) graceful: CancellationToken,
    pub(super) now: CancellationToken,
}

pub(super) async fn serve<I>(mut io: I, mut peer: Peer, settings: Settings, stopping: Stopping)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new(Instant::now());
    let serving = activity.clone();
    let Some(place) = settings
        .places
        .enter(Some(peer.addr.ip()), move || serving.is_busy())
    else {
        tracing::debug!(addr = %peer.addr, "closed: every place for HTTP connections is taken");
        return;
    };
    if let Some(proxy) = settings
        .proxy
        .as_ref()
        .filter(|p| p.expects(peer.addr.ip()))
    {
        // Within the time a request's head has: the header comes before it.
        let said = tokio::select! {
            said = proxy.client(&mut io, peer.addr, Instant::now() + settings.timeouts.header) => said,
            () = place.given_up.cancelled() => return,
            () = stopping.graceful.cancelled() => return,
        };
        // A refusal is counted and logged by `client`.
        let Ok(client) = said else {
            return;
        };
        place.moved_to(client.ip());
        peer.addr = client;
    }
    let addr = peer.addr;
    let service = ConnectionService {
        router: settings.router,
        peer,
        activity: activity.clone(),
        body_timeout: settings.timeouts.body,
    };
    let io = TokioIo::new(ObservedIo::new(io, activity.clone()));
    let connection = http1::Builder::new()
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES)
        // hyper's own header timer would also run while the connection is idle: ours, below,
        // tells the two apart.
        .header_read_timeout(None)
        .serve_connection(io, service)
        // An upgrade to MQTT over WebSocket completes this future and leaves the socket to
        // the broker, out of reach of the HTTP timeouts.
        .with_upgrades();
    let mut connection = pin!(connection);
    // The deadlines are watched by a task of their own: a wake-up of this task re-polls hyper's
    // connection and, through it, the request in flight and every layer of the router.
    let expired = CancellationToken::new();
    let _watchdog = AbortOnDropHandle::new(tokio::spawn(watch(
        addr,
        activity.clone(),
        settings.timeouts,
        expired.clone(),
    )));
    let mut draining = false;
    loop {
        tokio::select! {
            done = connection.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%addr, error = %e, "HTTP connection ended with an error");
                }
                // Upgraded or closed: an upgraded socket's reads are MQTT, not heads.
                activity.retire();
                return;
            }
            () = expired.cancelled() => return,
            () = place.given_up.cancelled() => {
                tracing::debug!(%addr, "closed an HTTP connection between requests to make room for another address");
                return;
            }
            () = stopping.graceful.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            () = stopping.now.cancelled() => {
                tracing::debug!(%addr, "dropping an HTTP connection at the shutdown deadline");
                return;
            }
        }
    }
}

/// Cancels `expired` once the connection's phase deadline ([`super::phase`]) has passed. It
/// looks at the connection now and then rather than being told of each request: a wake-up per
/// request costs more than the looks.
async fn watch(
    addr: std::net::SocketAddr,
    activity: Arc<Activity>,
    timeouts: HttpTimeouts,
    expired: CancellationToken,
) {
    loop {
        match activity.look(Instant::now(), &timeouts) {
            Ok(next) => sleep_until(next).await,
            Err(why) => {
                tracing::debug!(%addr, timeout = why.name(), "closing an HTTP connection");
                expired.cancel();
                return;
            }
        }
    }
}
