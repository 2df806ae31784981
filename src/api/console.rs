//! The web console: static files from `console/`, compiled into the binary so `cargo run`
//! serves them with no build step and no internet. `GET /` is the page, `GET /console/{file}`
//! its scripts and styles, `GET /console/session-info` whether it must ask for credentials.
//!
//! Everything the console does goes through the public HTTP API and MQTT over WebSocket, like
//! any other client; this module only hands out files and must not grow API logic. The files
//! stay public with principals configured: they hold no data (decision 008).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ApiError, ApiState};

/// Scripts and styles come from this origin only, and no inline script runs, so an injected
/// `<script>` or `onclick=` in a topic or payload cannot execute. `connect-src` admits the API
/// (`'self'`) and MQTT over WebSocket (`ws:`/`wss:`, which older browsers do not count as
/// `'self'`).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self' ws: wss:; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../console/index.html"),
};

/// What `/console/{file}` serves; any other name is the API's usual unknown-route 404.
const ASSETS: &[Asset] = &[
    INDEX,
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../console/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/api.js"),
    },
    Asset {
        name: "session.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/session.js"),
    },
    Asset {
        name: "format.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/format.js"),
    },
    Asset {
        name: "overview.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/overview.js"),
    },
    Asset {
        name: "prom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/prom.js"),
    },
    Asset {
        name: "watch.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/watch.js"),
    },
    Asset {
        name: "mqtt-ws.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/mqtt-ws.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../console/favicon.svg"),
    },
];

/// `GET /`: the console page.
pub async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// What the console may learn before anyone signs in: whether to ask for credentials. Nothing
/// else (no principal names, no credential kinds), since anyone can call it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionInfo {
    auth_required: bool,
}

/// `GET /console/session-info`: `{"authRequired": true}` when principals are configured.
pub async fn session_info(State(state): State<ApiState>) -> Response {
    let mut response = Json(SessionInfo {
        auth_required: state.auth.is_enabled(),
    })
    .into_response();
    // A restart with or without `--principals` changes the answer: never reuse a stale one.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /console/{file}`.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(asset) => serve(asset, &headers),
        None => ApiError::UnknownOperation(format!("no console file {file}")).into_response(),
    }
}

/// Answers with the file, or 304 when the browser's copy is current. `no-cache` makes the
/// browser revalidate on every load, so a new binary's console is picked up at once, and the
/// ETag keeps those revalidations to a 304 without a body.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = etag(asset.body);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("a quoted hex digest is a valid header value"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A strong validator from the file's bytes. Computed per request: the files are a few KiB,
/// and hashing them costs microseconds, less than keeping a table in sync.
fn etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_name_is_unique_and_has_a_body() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
            assert!(
                ASSETS[i + 1..].iter().all(|b| b.name != a.name),
                "{} is listed twice",
                a.name
            );
        }
    }

    #[test]
    fn the_page_loads_no_inline_script_and_no_inline_handler() {
        // The CSP would block them; this says why the page would be broken.
        let html = std::str::from_utf8(INDEX.body).unwrap();
        for script in html.split("<script").skip(1) {
            let tag_end = script.find('>').unwrap();
            assert!(script[..tag_end].contains("src="), "inline <script>");
            assert!(
                script[tag_end + 1..].starts_with("</script>"),
                "inline <script>"
            );
        }
        // ` onclick=`, ` onload=`...: an attribute name that starts with "on".
        let inline_handler = html.match_indices(" on").any(|(at, _)| {
            let name: String = html[at + 3..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            !name.is_empty() && html[at + 3 + name.len()..].starts_with('=')
        });
        assert!(!inline_handler, "inline event handler attribute");
        assert!(!html.contains(" style="), "inline style attribute");
    }

    #[test]
    fn a_matching_if_none_match_gets_304() {
        let tag = etag(INDEX.body);
        let mut req = HeaderMap::new();
        req.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&tag).unwrap());
        assert_eq!(serve(&INDEX, &req).status(), StatusCode::NOT_MODIFIED);
        req.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(serve(&INDEX, &req).status(), StatusCode::OK);
    }
}
