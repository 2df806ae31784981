//! The web console's files as the server hands them out: the page at `/`, its assets under
//! `/console/`, with the headers that keep the browser safe and current. What the console does
//! in a browser is tested by `tests/browser/`.

mod common;

use common::{Backend, fresh_db, spawn_app, spawn_app_with, test_config};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_serves_the_console_page_with_a_strict_content_security_policy() {
    let app = spawn_app(Backend::Sqlite).await;
    let res = app.get("/").await;
    assert_eq!(res.status(), 200);
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-cache");
    assert!(header("etag").starts_with('"'));
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "connect-src 'self' ws: wss:",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/console/app.js"></script>"#));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_served_with_their_content_types() {
    let app = spawn_app(Backend::Sqlite).await;
    for (path, content_type) in [
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/mqtt-ws.js", "text/javascript; charset=utf-8"),
        ("/console/session.js", "text/javascript; charset=utf-8"),
        ("/console/overview.js", "text/javascript; charset=utf-8"),
        ("/console/prom.js", "text/javascript; charset=utf-8"),
        ("/console/style.css", "text/css; charset=utf-8"),
        ("/console/index.html", "text/html; charset=utf-8"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], content_type, "{path}");
        assert_eq!(res.headers()["x-content-type-options"], "nosniff", "{path}");
        assert!(!res.bytes().await.unwrap().is_empty(), "{path}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_asset_is_revalidated_with_304() {
    let app = spawn_app(Backend::Sqlite).await;
    let first = app.get("/console/app.js").await;
    let etag = first.headers()["etag"].clone();
    let again = app
        .http
        .get(app.url("/console/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_console_file_is_the_usual_unknown_route_404() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in [
        "/console/x",
        "/console/",
        "/console/../Cargo.toml",
        "/nowhere",
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 404, "{path}");
        assert_eq!(
            res.headers()["x-amzn-errortype"],
            "UnknownOperationException",
            "{path}"
        );
    }
    let wrong_method = app.publish("/console/app.js", "").await;
    assert_eq!(wrong_method.status(), 405);
    app.stop().await;
}

/// What an anonymous visitor learns from `/console/session-info`: that body, and nothing more.
async fn session_info(app: &common::TestApp) -> Value {
    let res = app.get("/console/session-info").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_info_says_no_sign_in_without_principals() {
    let app = spawn_app(Backend::Sqlite).await;
    assert_eq!(session_info(&app).await, json!({ "authRequired": false }));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_info_says_sign_in_with_principals_and_needs_no_credentials() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("auth.toml");
    // Any token's SHA-256: session-info must answer without one.
    std::fs::write(
        &path,
        r#"
[[principals]]
name = "console-user"
api_tokens_sha256 = ["b6f2e0ff4e8c2dbf9e3bc4c0ae80e6e5b31ad0a8e1e4a8b2bd1b5c0c8e6d0f11"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
"#,
    )
    .expect("writing the config");
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    let app = spawn_app_with(db, config).await;

    // Exactly this object: no principal names, no credential kinds.
    assert_eq!(session_info(&app).await, json!({ "authRequired": true }));
    // The console's files stay public too; the API behind them does not.
    assert_eq!(app.get("/").await.status(), 200);
    assert_eq!(app.get("/console/session.js").await.status(), 200);
    assert_eq!(app.get("/retainedMessage").await.status(), 401);
    app.stop().await;
}
