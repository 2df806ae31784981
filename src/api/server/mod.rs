//! retaind's HTTP/1.1 server: accepts connections from a listener (plain or TLS) and serves the
//! router on each, with what `axum::serve` does not offer (it configures hyper with defaults
//! and no timeouts):
//!
//! - a header, a body and an idle timeout ([`HttpTimeouts`], see [`phase`]), so a client that
//!   sends part of a request, or nothing after a response, does not hold a connection forever;
//! - a shutdown deadline, after which the connections still open are dropped, so stopping
//!   always finishes;
//! - hyper's own refusals of unparsable requests answered in the AWS error shape
//!   ([`refusal`]), and a raw `#` in a request target noticed ([`request_line`]).

mod activity;
mod body;
mod connection;
mod io;
mod phase;
mod refusal;
mod request_line;
mod service;

use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::BodyTimeout;
pub use phase::HttpTimeouts;

use super::peer::PeerListener;
use crate::tcp::slots::Places;
use connection::{Settings, Stopping};

/// How long an HTTP connection keeps its place whatever newcomers arrive ([`places`]).
const GRACE: Duration = Duration::from_secs(2);

/// Places for `max` HTTP connections at once, shared by the listeners given them. When all are
/// taken, a newcomer takes the place of a connection open for more than 2 s that is between
/// requests (idle, or reading a head), from the address holding the most, oldest first; a
/// connection serving a request is never cut for it. If none can be given up, the newcomer is
/// closed at once.
pub fn places(max: usize) -> Places {
    Places::new(max, GRACE)
}

/// Serves `router` on the connections of `listener` until `shutdown` is cancelled, then lets
/// requests in flight finish for at most `shutdown_timeout` before dropping their connections.
/// Each connection holds one of `places` for its life.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    timeouts: HttpTimeouts,
    places: Places,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
) where
    L: PeerListener,
{
    let settings = Settings {
        router,
        timeouts,
        places,
        proxy: listener.proxy_protocol(),
    };
    let stopping = Stopping {
        graceful: shutdown.clone(),
        now: CancellationToken::new(),
    };
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            (io, addr) = listener.accept() => {
                let peer = L::peer(&io, addr);
                connections.spawn(connection::serve(io, peer, settings.clone(), stopping.clone()));
            }
            () = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(shutdown_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "dropping the HTTP connections still open at the shutdown deadline"
        );
        stopping.now.cancel();
        connections.wait().await;
    }
}
