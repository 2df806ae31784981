//! What a browser says about where a request comes from, and the two rules built on it.
//!
//! Browsers attach some credentials on their own: a client certificate (like a cookie) and, when
//! no principals are configured, simply being on this machine. A page on another site could
//! make the browser send requests that carry them. So:
//!
//! - [`cross_site`] is the one test for "a browser sent this for another site's page". A client
//!   certificate does not count for such a request (see `auth` and `mqtt_websocket`), and
//!   without principals such requests are refused ([`cross_site_refusal`]).
//! - Without principals, a request must name this server by a loopback name or a name the
//!   operator allowed ([`host_refusal`], by the rules in `hosts`): a page on `rebind.evil.example`, whose DNS name was
//!   pointed at 127.0.0.1 after it loaded (DNS rebinding), is same-origin with itself and
//!   passes the cross-site test, but its requests say `Host: rebind.evil.example`.
//!
//! curl, the AWS SDKs and devices send neither `Origin` nor `Sec-Fetch-*`, and name the host
//! they were given, so none of this concerns them.

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::hosts::{normalized, split_port};
use super::payload::drain;
use super::{ApiError, ApiState, Peer};

const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Whether a browser says the request comes from another site's page. `Sec-Fetch-Site` decides
/// when present (`same-origin`, or `none` for an address typed in or a bookmark, are this
/// site); browsers that predate it send `Origin`, which must then name this server: the host
/// and port of the request's `Host` (a missing port being the default of `scheme`, the scheme
/// the request came by). Without either header it is not a browser's cross-site request.
///
/// The Origin's scheme only supplies its default port: no page can have another scheme's origin
/// on this server's own port, and MQTT libraries send an Origin too, naming the host and port
/// they connect to (paho-mqtt 1.x with `https` even over plain `ws://`).
pub(super) fn cross_site(headers: &HeaderMap, scheme: &str) -> bool {
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header(&SEC_FETCH_SITE) {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = header(&ORIGIN) else {
        return false;
    };
    // `Origin: null` (a sandboxed or local page) names no server at all.
    let origin = origin
        .split_once("://")
        .and_then(|(scheme, authority)| Some((authority, default_port(scheme)?)))
        .map(|(authority, port)| host_and_port(authority, port));
    let host = header(&HOST)
        .zip(default_port(scheme))
        .map(|(host, port)| host_and_port(host, port));
    match (origin, host) {
        (Some(origin), Some(host)) => origin != host,
        _ => true,
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// A `host[:port]` as (normalized name, port), `default` standing in for a missing port.
fn host_and_port(authority: &str, default: u16) -> (String, Option<u16>) {
    let (name, port) = split_port(authority.trim());
    let port = match port {
        None => Some(default),
        Some(port) => port.parse().ok(),
    };
    (normalized(name), port)
}

/// The scheme a request arrived by: the connection's, `http` when unknown.
fn scheme(req: &Request) -> &'static str {
    match Peer::of(req.extensions()) {
        Some(peer) if peer.is_tls() => "https",
        _ => "http",
    }
}

/// Without principals, the refusal (403 `ForbiddenException`) of a request for a host name that
/// is not this machine's nor allowed. With principals every request needs credentials a page
/// cannot borrow from the browser (a certificate does not count cross-site), so the name is free.
pub fn host_refusal(state: &ApiState, req: &Request) -> Option<ApiError> {
    if state.auth.is_enabled() {
        return None;
    }
    // HTTP/1.1 requires Host; a request without one is no browser's.
    let host = req.headers().get(HOST)?.to_str().unwrap_or("?");
    (!state.allowed_hosts.allows(host)).then(|| {
        ApiError::Forbidden(format!(
            "requests for the host {host:?} are refused: without principals, retaind answers \
             only for localhost, loopback addresses and the names in --allowed-hosts \
             (against DNS rebinding). Add the name to --allowed-hosts (RETAIND_ALLOWED_HOSTS), \
             or configure principals (--principals)"
        ))
    })
}

/// Without principals, the refusal (403 `ForbiddenException`) of a cross-site browser request:
/// anyone on this machine may call, so a page from anywhere would act for whoever opened it.
pub fn cross_site_refusal(state: &ApiState, req: &Request) -> Option<ApiError> {
    if state.auth.is_enabled() || !cross_site(req.headers(), scheme(req)) {
        return None;
    }
    Some(ApiError::Forbidden(
        "cross-site browser requests are refused: without principals anyone on this machine may \
         call, so a page from another site may not. Use the console at this server's own \
         address, or configure principals (--principals)"
            .into(),
    ))
}

/// [`cross_site_refusal`] as a layer, for routes that take no credentials of their own (the
/// AWS operations check it with their credentials, in one layer: see `auth`).
pub async fn refuse_cross_site(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    match cross_site_refusal(&state, &req) {
        None => next.run(req).await,
        Some(err) => {
            drain(req.into_body()).await;
            err.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn fetch_metadata_decides_when_present() {
        for (site, cross) in [
            ("same-origin", false),
            ("none", false),
            ("same-site", true),
            ("cross-site", true),
        ] {
            let h = headers(&[("sec-fetch-site", site), ("host", "127.0.0.1:8080")]);
            assert_eq!(cross_site(&h, "http"), cross, "{site}");
        }
        // Even with a matching Origin: the browser's own verdict wins.
        let h = headers(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert!(cross_site(&h, "http"));
    }

    #[test]
    fn without_fetch_metadata_the_origin_must_name_this_server() {
        for (origin, host, scheme) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080", "http"),
            ("HTTP://LOCALHOST:8080", "localhost:8080", "http"),
            ("https://retaind.example", "retaind.example", "https"),
            ("https://retaind.example:443", "retaind.example", "https"),
            ("http://[::1]:8080", "[::1]:8080", "http"),
            // paho-mqtt 1.x over plain ws://: this server's own host and port.
            ("https://127.0.0.1:8080", "127.0.0.1:8080", "http"),
        ] {
            let h = headers(&[("origin", origin), ("host", host)]);
            assert!(!cross_site(&h, scheme), "{origin} {host}");
        }
        for (origin, host, scheme) in [
            ("http://evil.example", "127.0.0.1:8080", "http"),
            ("null", "127.0.0.1:8080", "http"),
            ("http://127.0.0.1:8081", "127.0.0.1:8080", "http"),
            // Port 80 of the same name is another server than this one on 443.
            ("http://retaind.example", "retaind.example", "https"),
            ("https://retaind.example", "retaind.example:8443", "https"),
            ("ftp://127.0.0.1:8080", "127.0.0.1:8080", "http"),
            ("http://a", "", "http"),
        ] {
            let h = headers(&[("origin", origin), ("host", host)]);
            assert!(cross_site(&h, scheme), "{origin} {host}");
        }
        assert!(cross_site(&headers(&[("origin", "http://a")]), "http"));
    }

    #[test]
    fn clients_that_are_not_browsers_are_not_cross_site() {
        assert!(!cross_site(&headers(&[("host", "127.0.0.1:8080")]), "http"));
        assert!(!cross_site(&headers(&[]), "https"));
    }
}
