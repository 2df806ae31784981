//! `GET /retainedMessage-watch`: retaind's watch of the retained set, as Server-Sent Events
//! (issue 17; decision 018, "Watch"). Not an AWS operation.
//!
//! The store's [`Watch`] gives the items in order (snapshot, `synced`, changes, progress,
//! resync); this module parses the request, admits it under the node's cap, checks each item
//! against the caller's policy as a GetRetainedMessage of its topic would be, and writes the
//! events. The stream ends when the watch does, when the service stops, or when a reload of
//! the principals removes the caller's principal.

mod events;
mod params;
mod watches;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::auth::Caller;
use super::query::Params;
use super::{ApiError, ApiState, ErrorBody};
use crate::auth::{Action, Authenticator, Credential, Principal};
use crate::metrics::ResyncReason;
use crate::store::{Resync, Watch, WatchItem};
pub use params::WatchParams;
use params::WatchRequest;
pub use watches::{WatchSettings, Watches};

/// Watches the retained messages matching a topic filter.
///
/// **retaind extension, not part of the AWS API.** A `text/event-stream` (Server-Sent Events).
/// Without `fromRevision` or `Last-Event-ID`: first the matching messages as they are (`put`
/// events without an id, in topic order), then `synced` (id and data: the snapshot's
/// revision), then every change after it in revision order. With one: the changes after that
/// revision. With `snapshot=false`: `synced` at once (the current revision), then the changes
/// after it. Events: `put` (data: the GetRetainedMessage JSON, id: its revision), `delete`
/// (`{"topic","revision","writer"?}`), `expire` and `purge` (`{"topic","revision"}`),
/// `progress` (`{"revision"}`, sent when idle, id: that revision), and `resync`
/// (`{"message","revision"}`: the watch cannot go on without a gap and ends; start again
/// without `fromRevision`). A topic changed several times between two reads may appear once,
/// with its latest state. Each event is sent only if the caller may `iot:GetRetainedMessage`
/// its topic.
#[utoipa::path(
    get,
    path = "/retainedMessage-watch",
    operation_id = "WatchRetainedMessages",
    tag = "retained messages",
    params(
        WatchParams,
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received (decimal digits): resumes after it, like fromRevision, which it overrides"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "InvalidRequestException: an invalid topicFilter, or a fromRevision or Last-Event-ID that is not decimal digits", body = ErrorBody),
        (status = 401, description = "UnauthorizedException: no credentials (when principals are configured)", body = ErrorBody),
        (status = 403, description = "ForbiddenException: unknown or wrong credentials; without principals, a request naming another host than localhost, a loopback address or --allowed-hosts, or a cross-site browser request", body = ErrorBody),
        (status = 429, description = "ThrottlingException: the caller's rate of new watches (--rate-watch-retained-messages) is used up, or its principal holds its max_watches watches on this node already", body = ErrorBody),
        (status = 503, description = "ServiceUnavailableException: the node holds --max-watches watches already, or the store is unavailable", body = ErrorBody),
    )
)]
pub async fn watch(
    State(state): State<ApiState>,
    caller: Caller,
    credential: Option<Extension<Credential>>,
    headers: HeaderMap,
    params: Result<Params<WatchParams>, ApiError>,
) -> Result<Response, ApiError> {
    let Params(params) = params?;
    let request = WatchRequest::parse(&params, &headers).map_err(ApiError::invalid)?;
    let watches = &state.watches;
    let open = watches.open(&state.metrics, caller.principal())?;
    let every = watches.settings.progress_every;
    let watch = Watch::start(
        &watches.hub,
        &state.store,
        request.filter,
        request.start,
        every,
    )
    .await?;
    let mut check = tokio::time::interval_at(Instant::now() + every, every);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = Stream {
        watch,
        standing: Standing {
            principal: caller
                .principal()
                .map(|p| Arc::<str>::from(p.name.as_str())),
            credential: credential.map(|Extension(c)| c),
        },
        state: state.clone(),
        check,
        held: 0,
        _open: open,
    };
    let events = stream::unfold(stream, |mut stream| async move {
        let event = stream.next_event().await?;
        Some((Ok::<Event, Infallible>(event), stream))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(every))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise hold events back to fill a buffer.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One watch's stream of events.
struct Stream {
    watch: Watch,
    standing: Standing,
    state: ApiState,
    /// When to check that the principal still stands while no event comes.
    check: Interval,
    /// What `retaind_watch_held_bytes` counts of this watch's [`Watch::held`], as last told.
    held: i64,
    _open: watches::Open,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.state.metrics.watch_held_bytes().dec_by(self.held);
    }
}

/// Who the watch is for, checked again at each event and each interval: a reload may end it.
struct Standing {
    /// The caller's principal by name, looked up afresh for each event so that a reload's
    /// policy applies at once; `None` when authentication is off.
    principal: Option<Arc<str>>,
    /// What the watch was opened with; a reload that takes it from the principal (a removed
    /// token, a new access key) ends the watch, as it ends an MQTT connection whose
    /// credentials changed.
    credential: Option<Credential>,
}

impl Stream {
    async fn next_event(&mut self) -> Option<Event> {
        let stop = self.state.watches.stop.clone();
        loop {
            // The watch's read goes on across checks of the principal: dropped at each one, a
            // read slower than the interval (a page of large messages, a slow database) would
            // start again forever and the watch never move.
            let item = {
                let next = self.watch.next();
                tokio::pin!(next);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        _ = self.check.tick() => {
                            self.standing.current(&self.state.auth)?;
                        }
                        item = &mut next => break item,
                    }
                }
            };
            // Told after each read: a reader that stops reading leaves it at what the watch
            // holds, which is what an operator needs to see.
            let held = i64::try_from(self.watch.held()).unwrap_or(i64::MAX);
            self.state
                .metrics
                .watch_held_bytes()
                .inc_by(held - self.held);
            self.held = held;
            let item = match item {
                Ok(Some(item)) => item,
                Ok(None) => return None,
                Err(e) => {
                    // The store logged it (in summary); the client resumes from its last id.
                    tracing::debug!(error = %e, "a watch ended on a store error");
                    return None;
                }
            };
            let principal = self.standing.current(&self.state.auth)?;
            if let WatchItem::Resync { why, .. } = &item {
                self.state.metrics.watch_resync(match why {
                    Resync::Compacted => ResyncReason::compacted,
                    Resync::Overflow => ResyncReason::overflow,
                    Resync::Ahead => ResyncReason::ahead,
                });
            }
            if let (Some(principal), Some(topic)) = (&principal, events::topic(&item))
                && !principal.allows(Action::GetRetainedMessage, topic.as_str(), None)
            {
                self.watch.withheld();
                continue;
            }
            return Some(events::event(&item));
        }
    }
}

impl Standing {
    /// `Some(None)` without authentication, `Some(principal)` while the caller's principal
    /// and the credential the watch was opened with stand, `None` once a reload has removed
    /// either: the stream ends.
    fn current(&self, auth: &Authenticator) -> Option<Option<Arc<Principal>>> {
        let Some(name) = &self.principal else {
            return Some(None);
        };
        let principal = match &self.credential {
            Some(credential) => auth.holder(credential).filter(|p| p.name == **name)?,
            None => auth.principal(name)?,
        };
        Some(Some(principal))
    }
}
